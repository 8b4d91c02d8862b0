"""How much batching changes the numbers: the same sequence alone and as one row of a batched
language-model call, on a converted model (the scheduler's claim "same seeds, same results" holds
exactly only where the kernels do not depend on the number of rows).

    PYTHONPATH=. python -m benchmarks.batching_tolerance --ir DIR [--rows 2,4,8] [--steps 32]

For each batch size: prefill a prompt alone and beside other prompts, then decode `--steps`
greedy tokens of it alone and beside other rows (each fed its own tokens); reports the largest
logit difference (absolute, and over the logits' standard deviation) and how many greedy steps
picked the same token, feeding each path its own choice.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _run(ctx, prompts, steps, rows):
    """Greedy-decode prompts[:rows] together; row 0's logits per step and its tokens."""
    lengths = [len(p) for p in prompts[:rows]]
    ctx.start([n + steps + 1 for n in lengths])
    embeds = np.concatenate([np.array(ctx.embed_text(p[None])[0]) for p in prompts[:rows]])
    hidden = np.array(ctx.language_model(embeds, lengths))
    logits_0, tokens_0 = [], []
    for _ in range(steps):
        logits = np.array(ctx.lm_head(hidden[:, None])[:, 0])  # [rows,V]
        logits_0.append(logits[0])
        ids = logits.argmax(-1)
        tokens_0.append(int(ids[0]))
        hidden = np.array(ctx.language_model(np.array(ctx.embed_text(ids[None].astype(np.int64))[0])))
    return np.array(logits_0), tokens_0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.batching_tolerance", description=__doc__.splitlines()[0])
    p.add_argument("--ir", required=True)
    p.add_argument("--rows", default="2,4,8")
    p.add_argument("--steps", type=int, default=32)
    args = p.parse_args(argv)
    from janus_ov.pipeline import JanusPipeline

    pipe = JanusPipeline.from_converted(args.ir, batching=False)
    pipe.runtime.wait_warm()
    texts = ["Tell me about lighthouses and the sea.", "Write a poem about a fox in the snow.",
             "What is the capital of France?", "Describe a sunset over the mountains in detail.",
             "How do bees make honey?", "Explain photosynthesis simply.", "A story about a robot.",
             "List three colours of the rainbow."]
    prompts = [pipe.tokenizer.encode_chat(f"<|User|>: {t}\n\n<|Assistant|>:", num_images=0) for t in texts]
    with pipe.runtime.context() as ctx:
        alone_logits, alone_tokens = _run(ctx, prompts, args.steps, 1)
        again_logits, _ = _run(ctx, prompts, args.steps, 1)
        out = {"alone_vs_alone_max_abs": float(np.abs(alone_logits - again_logits).max())}
        for rows in map(int, args.rows.split(",")):
            logits, tokens = _run(ctx, prompts, args.steps, rows)
            same = next((i for i, (a, b) in enumerate(zip(alone_tokens, tokens)) if a != b), len(tokens))
            diff = np.abs(logits[:same] - alone_logits[:same]) if same else np.abs(logits[:1] - alone_logits[:1])
            out[f"rows_{rows}"] = {"max_abs_logit_diff": float(diff.max()),
                                   "max_diff_over_logit_std": float(diff.max() / alone_logits.std()),
                                   "greedy_tokens_identical_until_step": same, "steps": args.steps,
                                   "first_step_top2_gap": float(np.diff(np.sort(alone_logits[0])[-2:])[0])}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
