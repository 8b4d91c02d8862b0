"""The language model's calls inside real text-to-image requests, measured in the pipeline itself.

Each call is the pipeline's own: over a KV cache its earlier steps wrote (each new key can widen its
block's quantization ranges), with the heads and sampling between calls. Two measurements:

--profile: the pipeline compiled with the CPU plugin's profiling counters; per token count of the
language model's calls, the median wall ms and the mean ms per executed layer type
(step_profile.by_layer_type: our attention and our matmuls apart). What step_profile's isolated steps
cannot show: writing new keys into a cache that grows step by step.

--against-dynamic: the steps take turns, call by call, between the language model's copy compiled for
their token count (runtime.STEP_TOKENS) and the dynamic language model, in one process, so the
machine's drift hits both alike; the median ms of each. Both compute the same numbers
(tests/test_matmul.py). --add-copy first adds the steps' token count (2 x --images) to STEP_TOKENS:
a copy the runtime does not ship yet, measured before it is taken.

    python -m benchmarks.pipeline_steps --ir DIR --profile [--images 4] [--requests 1]
    python -m benchmarks.pipeline_steps --ir DIR --against-dynamic [--images 4] [--requests 2] [--add-copy]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

from .report import in_turns, machine
from .step_profile import by_layer_type

PROMPT = "a lighthouse on a rock at night"


@contextmanager
def watching(on_call, route=None):
    """While open, every call of a pipeline part reports on_call(ctx, part, inputs, seconds); route(ctx,
    tokens) -> part name, if given, picks the language model for each call instead of Context.lm_part."""
    import janus_ov.runtime as rt

    lm_part, run = rt.Context.lm_part, rt.Context._run

    def timed(ctx, part, inputs):
        t0 = time.perf_counter()
        out = run(ctx, part, inputs)
        on_call(ctx, part, inputs, time.perf_counter() - t0)
        return out

    rt.Context._run = timed
    if route is not None:
        rt.Context.lm_part = lambda ctx, tokens: route(ctx, tokens) or lm_part(ctx, tokens)
    try:
        yield
    finally:
        rt.Context.lm_part, rt.Context._run = lm_part, run


def load(ir, ov_config=None, extra_tokens=()):
    """The pipeline, warm; extra_tokens: step copies to compile beyond STEP_TOKENS (this load only)."""
    import janus_ov.runtime as rt
    from janus_ov.pipeline import JanusPipeline

    shipped = rt.STEP_TOKENS
    rt.STEP_TOKENS = (*shipped, *(t for t in extra_tokens if t not in shipped))
    try:
        pipe = JanusPipeline.from_converted(ir, ov_config=ov_config)
    finally:
        rt.STEP_TOKENS = shipped  # read only while a runtime loads
    pipe.runtime.wait_warm()
    return pipe


def _is_lm(part: str) -> bool:
    return part == "language_model" or part.startswith("language_model.")


def profile(ir, images: int = 4, requests: int = 1) -> dict:
    """tokens per call -> {"calls", "wall_ms" (median), "layers_ms" (mean per call)} of the language
    model's step calls (a prompt's call has more tokens than any step: left out)."""
    pipe = load(ir, ov_config={"PERF_COUNT": "YES"})
    walls, layers = defaultdict(list), defaultdict(lambda: defaultdict(float))

    def on_call(ctx, part, inputs, seconds):
        tokens = len(inputs["inputs_embeds"]) if _is_lm(part) else 0
        if 0 < tokens <= 2 * images:
            walls[tokens].append(seconds)
            for kind, ms in by_layer_type(ctx.req[part]).items():
                layers[tokens][kind] += ms

    with watching(on_call):
        for seed in range(requests):
            pipe.generate_images(PROMPT, num_images=images, seed=seed)
    return {tokens: {"calls": len(w), "wall_ms": round(1e3 * statistics.median(w), 2),
                     "layers_ms": {k: round(v / len(w), 3) for k, v in sorted(layers[tokens].items(), key=lambda kv: -kv[1])}}
            for tokens, w in sorted(walls.items())}


def against_dynamic(ir, images: int = 4, requests: int = 2, add_copy: bool = False) -> dict:
    """{"tokens", "copy_ms", "dynamic_ms", "dynamic_over_copy", "calls"}: the median ms per call of
    each side over `requests` requests of `images` images."""
    import janus_ov.runtime as rt

    tokens = 2 * images  # the CFG rows: one conditional and one unconditional row per image
    pipe = load(ir, extra_tokens=(tokens,) if add_copy else ())
    if tokens not in pipe.runtime.step_models:
        raise SystemExit(f"no step copy for {tokens} tokens here (copies exist only where our int4 matmuls run "
                         f"the language model; STEP_TOKENS = {rt.STEP_TOKENS}): nothing to compare.")
    sides, turn, times = (rt.step_part(tokens), "language_model"), [0], defaultdict(list)

    def route(ctx, n):
        if n != tokens:
            return None
        turn[0] += 1
        return in_turns(sides, (turn[0] - 1) // 2)[(turn[0] - 1) % 2]

    def on_call(ctx, part, inputs, seconds):
        if part in sides and len(inputs["inputs_embeds"]) == tokens:
            times[part].append(seconds)

    with watching(on_call, route):
        for seed in range(requests):
            pipe.generate_images(PROMPT, num_images=images, seed=seed)
    copy, dynamic = (1e3 * statistics.median(times[side]) for side in sides)
    return {"tokens": tokens, "copy_ms": round(copy, 2), "dynamic_ms": round(dynamic, 2),
            "dynamic_over_copy": round(dynamic / copy, 3), "calls": {side: len(times[side]) for side in sides}}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_steps", description=__doc__.splitlines()[0])
    parser.add_argument("--ir", required=True, help="a converted model folder (cache entry or export)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--profile", action="store_true", help="ms per layer type of the steps' calls")
    mode.add_argument("--against-dynamic", action="store_true", help="the steps' copy against the dynamic model")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--requests", type=int, default=None, help="default: 1 with --profile, 2 otherwise")
    parser.add_argument("--add-copy", action="store_true", help="with --against-dynamic: a copy for the steps' "
                        "token count first")
    args = parser.parse_args(argv)
    res = {"machine": machine(), "ir": str(args.ir), "images": args.images}
    if args.profile:
        res["steps"] = profile(args.ir, args.images, args.requests or 1)
    else:
        res.update(added_copy=args.add_copy, **against_dynamic(args.ir, args.images, args.requests or 2, args.add_copy))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
