"""A step copy against the dynamic language model, inside the real pipeline.

The image steps of real text-to-image requests take turns, call by call, between the language model's
copy compiled for their token count (runtime.STEP_TOKENS) and the dynamic language model, through the
same KV cache in one process: the machine's drift hits both sides alike, and each call is the
pipeline's own (written cache, heads and sampling between calls). Prints each side's median wall
time per call. Both sides compute the same numbers (tests/test_matmul.py), so the images are the
pipeline's usual ones.

    python -m benchmarks.step_copies --ir DIR [--images 4] [--requests 2] [--add-copy]

--add-copy first adds the steps' token count (2 x --images) to STEP_TOKENS: a copy the runtime does
not ship yet, measured before it is taken.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

from .report import in_turns, machine


def measure(ir, images: int = 4, requests: int = 2, add_copy: bool = False) -> dict:
    """{"tokens", "copy_ms", "dynamic_ms", "dynamic_over_copy", "calls"}: the median ms per call of
    each side over `requests` requests of `images` images."""
    import janus_ov.runtime as rt
    from janus_ov.pipeline import JanusPipeline

    tokens = 2 * images  # the CFG rows: one conditional and one unconditional row per image
    shipped = rt.STEP_TOKENS
    if add_copy and tokens not in shipped:
        rt.STEP_TOKENS = (*shipped, tokens)
    try:
        pipe = JanusPipeline.from_converted(ir)
    finally:
        rt.STEP_TOKENS = shipped  # read only while a runtime loads
    pipe.runtime.wait_warm()
    if tokens not in pipe.runtime.step_models:
        raise SystemExit(f"no step copy for {tokens} tokens here (copies exist only where our int4 matmuls run "
                         f"the language model; STEP_TOKENS = {shipped}): nothing to compare.")
    sides, calls, times = (rt.step_part(tokens), "language_model"), [0], defaultdict(list)
    lm_part, run = rt.Context.lm_part, rt.Context._run

    def alternating(ctx, n):
        if n != tokens:
            return lm_part(ctx, n)
        calls[0] += 1
        return in_turns(sides, (calls[0] - 1) // 2)[(calls[0] - 1) % 2]

    def timed(ctx, part, inputs):
        t0 = time.perf_counter()
        out = run(ctx, part, inputs)
        if part in sides and len(inputs["inputs_embeds"]) == tokens:
            times[part].append(time.perf_counter() - t0)
        return out

    rt.Context.lm_part, rt.Context._run = alternating, timed
    try:
        for seed in range(requests):
            pipe.generate_images("a lighthouse on a rock at night", num_images=images, seed=seed)
    finally:
        rt.Context.lm_part, rt.Context._run = lm_part, run
    copy, dynamic = (1e3 * statistics.median(times[side]) for side in sides)
    return {"tokens": tokens, "copy_ms": round(copy, 2), "dynamic_ms": round(dynamic, 2),
            "dynamic_over_copy": round(dynamic / copy, 3), "calls": {side: len(times[side]) for side in sides}}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_copies", description=__doc__.splitlines()[0])
    parser.add_argument("--ir", required=True, help="a converted model folder (cache entry or export)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--add-copy", action="store_true", help="add a copy for the steps' token count first")
    args = parser.parse_args(argv)
    res = {"machine": machine(), "ir": str(args.ir), "images": args.images, "requests": args.requests,
           "added_copy": args.add_copy, **measure(args.ir, args.images, args.requests, args.add_copy)}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
