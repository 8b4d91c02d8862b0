"""Decode speed (and with --images, image time) and peak memory of a converted model, in one fresh
process: for A/B runs of two commits' code on the same IR, or of two IRs (run them alternating).

    PYTHONPATH=. python -m benchmarks.quick_decode --ir DIR [--tokens 96] [--repeats 2] [--images 1,4]
                                                   [--prompt-repeat 8] [--ov-config JSON]

The prompt is one sentence --prompt-repeat times (its token count is in the output: 372 for 8 with the
random models' filler tokenizer, which splits words finer than the real one); the first chat's time to
first token is reported too (the later ones find the prompt in the prefix cache). --ov-config passes
CPU-plugin settings to the pipeline, e.g. the settings a change replaced, for an A/B on one checkout.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quick_decode", description=__doc__.splitlines()[0])
    parser.add_argument("--ir", required=True, help="a converted model folder (cache entry or export)")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", default="", help="e.g. 1,4: also time one text-to-image batch of each size")
    parser.add_argument("--prompt-repeat", type=int, default=8)
    parser.add_argument("--ov-config", type=json.loads, default=None)
    args = parser.parse_args(argv)
    t0 = time.time()
    from janus_ov.pipeline import JanusPipeline

    pipe = JanusPipeline.from_converted(args.ir, ov_config=args.ov_config)
    pipe.runtime.wait_warm()
    ready = time.time() - t0
    messages = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper. " * args.prompt_repeat}]
    chats = [pipe.chat(messages, max_new_tokens=args.tokens).stats for _ in range(args.repeats)]
    rates = [s["decode_tokens_per_s"] for s in chats]
    images = {}
    for n in filter(None, args.images.split(",")):
        t1 = time.perf_counter()
        stats = pipe.generate_images("a lighthouse on a rock at night", num_images=int(n), seed=0).stats
        images[n] = {"total_s": time.perf_counter() - t1, "steps_s": stats["steps_s"]}
    with open("/proc/self/status", encoding="utf-8") as status:
        hwm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    print(json.dumps({"ready_warm_s": ready, "prompt_tokens": chats[0]["prompt_tokens"],
                      "first_ttft_s": chats[0]["time_to_first_token_s"], "decode_tokens_per_s": rates,
                      "peak_rss_gib": hwm_kib / 2**20,
                      **({"images": images} if images else {})}))


if __name__ == "__main__":
    main()
