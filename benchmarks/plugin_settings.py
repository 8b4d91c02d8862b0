"""The language model's calls under several CPU-plugin settings, the settings taking turns.

Each setting gets its own compiled PagedAttention model of one IR, on top of what the runtime itself
chooses (runtime.streaming_config; "shipped" adds nothing). Per round every setting runs each task
once, in turn, so this VM's slow and fast spells hit them alike:
- prefill: one call over a --prompt-tokens prompt (the first token's cost; several lengths, comma-separated:
  one task each, where a second model for prompts would take over; 0: none);
- decode N: --calls calls of N rows, --past-tokens cached per row (1 row: a chat token; 2: one
  image's CFG step; 8: four images').
It prints medians in ms per call.

    python -m benchmarks.plugin_settings --ir DIR --setting dq32='{"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}'
                                         [--rounds 7] [--prompt-tokens 640] [--rows 1,2,8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from .report import in_turns


def tasks(core, ir: Path, setting: dict, prompts, past: int, rows, calls: int) -> dict:
    """name -> callable for one setting's compiled language model; each returns the seconds its
    calls took (the cache set-up before them is not timed)."""
    from janus_ov.kv_cache import PagedKVCache, compile_paged
    from janus_ov.runtime import compile_config, streaming_config

    from .step_profile import bind_cache

    model = core.read_model(str(ir / "language_model.xml"))
    config = streaming_config(model, "CPU", compile_config("CPU", setting, None))
    hidden = model.input("inputs_embeds").get_partial_shape()[-1].get_length()  # before the paged rewrite
    request = compile_paged(core, model, "CPU", config).create_infer_request()
    kv = PagedKVCache(request)
    embeds = (np.random.default_rng(0).standard_normal((max(*prompts, *rows), hidden)) * 0.02).astype(np.float32)

    def prefill(n):
        def run():
            kv.start([n + 1])
            inputs = {"inputs_embeds": embeds[:n], **kv.step_inputs(np.array([n], np.int32))}
            t0 = time.perf_counter()
            request.infer(inputs)
            return time.perf_counter() - t0
        return run

    def decode(n):
        def run():
            inputs = {"inputs_embeds": embeds[:n], **bind_cache(request, past, n, kv)}
            t0 = time.perf_counter()
            for _ in range(calls):
                request.infer(inputs)
            return time.perf_counter() - t0
        return run

    prefills = {"prefill" if len(prompts) == 1 else f"prefill_{n}": prefill(n) for n in prompts if n}
    return {**prefills, **{f"decode_{n}": decode(n) for n in rows}}


def measure(ir: Path, settings: dict, rounds: int = 7, prompts=(640,), past: int = 300,
            rows=(1, 2, 8), calls: int = 5) -> dict:
    import openvino as ov

    core = ov.Core()
    runs = {name: tasks(core, ir, setting, prompts, past, rows, calls) for name, setting in settings.items()}
    for task in runs.values():  # the first calls pay weight repacking and JIT
        for run in task.values():
            run()
    times = {name: {t: [] for t in task} for name, task in runs.items()}
    for i in range(rounds):
        for t in times[next(iter(runs))]:
            for name in in_turns(runs, i):
                times[name][t].append(runs[name][t]())
    return {name: {t: round(statistics.median(v) * 1e3 / (1 if t.startswith("prefill") else calls), 2) for t, v in per.items()}
            for name, per in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.plugin_settings", description=__doc__.splitlines()[0])
    p.add_argument("--ir", type=Path, required=True)
    p.add_argument("--setting", action="append", default=[], help="NAME=JSON of plugin settings (repeatable)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--prompt-tokens", default="640", help="e.g. 32,64,640: one prefill task per length")
    p.add_argument("--past-tokens", type=int, default=300)
    p.add_argument("--rows", default="1,2,8")
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args(argv)
    settings = {"shipped": {}, **{n: json.loads(v) for n, v in (s.split("=", 1) for s in args.setting)}}
    prompts = tuple(map(int, args.prompt_tokens.split(",")))
    result = measure(args.ir, settings, args.rounds, prompts, args.past_tokens,
                     tuple(map(int, args.rows.split(","))), args.calls)
    from .report import machine

    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "ir": str(args.ir),
                      "settings": settings, "rounds": args.rounds, "prompt_tokens": args.prompt_tokens,
                      "past_tokens": args.past_tokens, "calls": args.calls, "ms_per_call": result}, indent=1))
    return result


if __name__ == "__main__":
    main()
