"""The measuring side of benchmarks.genai_anchor: run in a child process, prints one JSON line per round.

    python -m benchmarks.anchor_child SIDES GENAI_DIR OUR_IR PROMPT_TOKENS NEW_TOKENS ROUNDS

SIDES: "genai", "ours", or several of genai, ours, genai_bare, ours_bare, comma-separated (all in this
process, requests alternating). The bare sides are each graph's decode step alone, its inputs bound once
(benchmarks.step_profile, after a PROMPT_TOKENS cache): what each pipeline adds over its own calls. Each side is
loaded once, warmed up on a prompt of another seed (so no prefix of a measured prompt is cached),
then measured ROUNDS times on new prompts. Only the sides asked for are imported: GenAI needs its
own venv (benchmarks/requirements-genai.txt), ours needs neither torch nor transformers to serve a
converted model, so both fit in that venv.
"""

from __future__ import annotations

import json
import sys

import numpy as np

WARM_UP_SEED = 10**6
WORDS = "lighthouse keeper storm night lamp sea rock ship river bridge town market bread cheese".split()


def genai_side(path: str, n_prompt: int, n_new: int):
    """run(seed) -> figures of LLMPipeline (f32: its best on CPUs with bf16) on n_prompt random token ids."""
    import openvino as ov
    import openvino_genai as g

    pipe = g.LLMPipeline(path, "CPU", INFERENCE_PRECISION_HINT="f32")
    config = g.GenerationConfig(max_new_tokens=n_new, min_new_tokens=n_new, ignore_eos=True, do_sample=False)

    def run(seed):
        ids = np.random.default_rng(seed).integers(1000, 90000, (1, n_prompt), dtype=np.int64)
        m = pipe.generate(g.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config).perf_metrics
        return {"ttft_s": m.get_ttft().mean / 1e3, "tpot_ms": m.get_tpot().mean, "tokens_per_s": m.get_throughput().mean}

    return run


def ours_side(ir: str, n_prompt: int, n_new: int):
    """run(seed) -> figures of our chat as shipped on a new conversation of n_prompt tokens (system prompt
    and template included; only the system prompt can come from the cache)."""
    from janus_ov.pipeline import JanusPipeline

    pipe = JanusPipeline.from_converted(ir)
    pipe.runtime.wait_warm()

    def run(seed):
        rng, text, count = np.random.default_rng(seed), "", 0
        while count < n_prompt:
            text += WORDS[rng.integers(len(WORDS))] + " "
            count = len(pipe._chat_inputs([{"role": "user", "content": text}], n_new)[0])
        s = pipe.chat([{"role": "user", "content": text}], max_new_tokens=n_new).stats
        assert s["new_tokens"] == n_new, s
        return {"ttft_s": s["time_to_first_token_s"], "tpot_ms": 1e3 / s["decode_tokens_per_s"],
                "tokens_per_s": s["decode_tokens_per_s"], "prompt_tokens": s["prompt_tokens"]}

    return run


def bare_side(name: str, path: str, n_prompt: int, n_new: int):
    """run(seed) -> the median ms of n_new decode steps of a graph alone (step_profile's chat step)."""
    import statistics
    import time
    from pathlib import Path

    import openvino as ov

    from . import step_profile

    maker = step_profile.genai if name == "genai_bare" else step_profile.ours
    step, _ = maker(ov.Core(), Path(path), n_prompt)

    def run(seed):
        times = []
        for _ in range(n_new):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        tpot_ms = 1e3 * statistics.median(times)
        return {"tpot_ms": tpot_ms, "tokens_per_s": 1e3 / tpot_ms}

    return run


def main(argv=None):
    sides, genai_dir, ir, n_prompt, n_new, rounds = argv or sys.argv[1:]
    n_prompt, n_new = int(n_prompt), int(n_new)
    makers = {"genai": lambda: genai_side(genai_dir, n_prompt, n_new), "ours": lambda: ours_side(ir, n_prompt, n_new),
              "genai_bare": lambda: bare_side("genai_bare", genai_dir, n_prompt, n_new),
              "ours_bare": lambda: bare_side("ours_bare", ir, n_prompt, n_new)}
    runs = {side: makers[side]() for side in sides.split(",")}
    for run in runs.values():
        run(WARM_UP_SEED)
    for i in range(int(rounds)):
        print(json.dumps({side: run(i) for side, run in runs.items()}), flush=True)


if __name__ == "__main__":
    main()
