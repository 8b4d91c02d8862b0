"""The anchor for our chat decode speed: OpenVINO GenAI's own LLMPipeline on a plain Llama with exactly
our language model's weights, beside our pipeline, same prompt length and forced output length, each
in a fresh process (issue 21).

    python -m benchmarks.genai_anchor [--checkpoint DIR] [--ir OUR_IR] [--recipe asym64|sym128]
                                      [--prompt-tokens 640] [--tokens 128] [--repeats 3] [--venv DIR]

1. From a transformers-format Janus checkpoint (default: the random Janus-Pro-1B of benchmarks.models)
   its language model and LM head are written as a LlamaForCausalLM folder, and optimum-intel exports
   that with the NNCF recipe asked for (asym64: INT4_ASYM group 64 ratio 1.0, our default; sym128:
   INT4_SYM group 128, optimum's data-free default). Cached in benchmarks/models/genai-llama-<recipe>.
2. GenAI and our pipeline each decode --tokens forced tokens after a --prompt-tokens prompt, --repeats
   times, alternating, a fresh process each. GenAI with f32 inference precision (its best on CPUs with
   bf16: 12.6 against 8.1 tokens/s on the Intel kind), ours as shipped (its runtime picks f32 for the
   parts that stream integer weights, runtime.streaming_config).

optimum-intel and openvino-genai are this benchmark's own requirements (benchmarks/requirements-genai.txt),
installed in their own virtual environment (--venv, default /work/genai-venv) so that the app's pinned
transformers is never touched: the export and the GenAI runs happen there, ours in this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .models import MODELS_DIR, default_path
from .report import machine, machine_slug
from .run import RESULTS

REPO = Path(__file__).resolve().parents[1]

RECIPES = {"asym64": ["--weight-format", "int4", "--group-size", "64", "--ratio", "1.0"],
           "sym128": ["--weight-format", "int4", "--sym", "--group-size", "128", "--ratio", "1.0"]}


def write_llama(checkpoint: Path, out: Path) -> Path:
    """The checkpoint's language model + LM head as a plain Llama (config, weights, tokenizer)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["text_config"]
    config.update(architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tensors = {}
    for shard in sorted(checkpoint.glob("model-*.safetensors")) or [checkpoint / "model.safetensors"]:
        with safe_open(shard, "pt") as f:
            for key in f.keys():
                if key.startswith("model.language_model."):
                    tensors["model." + key.removeprefix("model.language_model.")] = f.get_tensor(key)
                elif key == "lm_head.weight":
                    tensors[key] = f.get_tensor(key)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (checkpoint / name).exists():
            shutil.copy(checkpoint / name, out / name)
    return out


def export(llama: Path, recipe: str, venv: Path) -> Path:
    out = MODELS_DIR / f"genai-llama-{recipe}"
    if not (out / "openvino_model.xml").exists():
        subprocess.run([str(venv / "bin" / "optimum-cli"), "export", "openvino", "--model", str(llama),
                        "--task", "text-generation-with-past", *RECIPES[recipe], str(out)], check=True)
    return out


GENAI_RUN = r"""
import json, sys, numpy as np, openvino as ov, openvino_genai as g
path, n_prompt, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pipe = g.LLMPipeline(path, "CPU", INFERENCE_PRECISION_HINT="f32")
def prompt(seed):
    ids = np.random.default_rng(seed).integers(1000, 90000, (1, n_prompt), dtype=np.int64)
    return g.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
config = g.GenerationConfig(max_new_tokens=n_new, min_new_tokens=n_new, ignore_eos=True, do_sample=False)
pipe.generate(prompt(1), config)  # warm-up, on another prompt: no prefix of the measured one is cached
m = pipe.generate(prompt(0), config).perf_metrics
print(json.dumps({"ttft_s": m.get_ttft().mean / 1e3, "tpot_ms": m.get_tpot().mean,
                  "tokens_per_s": m.get_throughput().mean}))
"""

OURS_RUN = r"""
import json, sys
from janus_ov.pipeline import JanusPipeline
ir, n_prompt, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pipe = JanusPipeline.from_converted(ir)  # as shipped: the runtime picks f32 for the parts that stream int weights
pipe.runtime.wait_warm()
def prompt(words):
    text, count = "", 0
    while count < n_prompt:  # the whole prompt (system prompt and template included) at n_prompt tokens
        text += words[len(text) % len(words)] + " "
        count = len(pipe._chat_inputs([{"role": "user", "content": text}], n_new)[0])
    return [{"role": "user", "content": text}]
# Warm-up on another prompt: no prefix of the measured one is cached (only the system prompt's).
pipe.chat(prompt("river bridge town market bread cheese".split()), max_new_tokens=n_new)
s = pipe.chat(prompt("lighthouse keeper storm night lamp sea rock ship".split()), max_new_tokens=n_new).stats
assert s["new_tokens"] == n_new, s
print(json.dumps({"ttft_s": s["time_to_first_token_s"], "tpot_ms": 1e3 / s["decode_tokens_per_s"],
                  "tokens_per_s": s["decode_tokens_per_s"], "prompt_tokens": s["prompt_tokens"]}))
"""


# --same-process: both pipelines in one process of the GenAI venv (ours needs no torch or transformers
# to serve a converted model), requests alternating seconds apart: a VM's slow and fast spells then
# hit both sides alike, which separate processes minutes apart cannot promise.
SAME_PROCESS_RUN = r"""
import json, sys, numpy as np, openvino as ov, openvino_genai as g
from janus_ov.pipeline import JanusPipeline
genai_path, ir, n_prompt, n_new, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
genai = g.LLMPipeline(genai_path, "CPU", INFERENCE_PRECISION_HINT="f32")
ours = JanusPipeline.from_converted(ir)
ours.runtime.wait_warm()
config = g.GenerationConfig(max_new_tokens=n_new, min_new_tokens=n_new, ignore_eos=True, do_sample=False)
words = "lighthouse keeper storm night lamp sea rock ship river bridge town market bread cheese".split()
def genai_run(seed):
    ids = np.random.default_rng(seed).integers(1000, 90000, (1, n_prompt), dtype=np.int64)
    m = genai.generate(g.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config).perf_metrics
    return {"ttft_s": m.get_ttft().mean / 1e3, "tpot_ms": m.get_tpot().mean, "tokens_per_s": m.get_throughput().mean}
def ours_run(seed):
    rng, text, count = np.random.default_rng(seed), "", 0
    while count < n_prompt:  # a new conversation each time: only the system prompt can come from the cache
        text += words[rng.integers(len(words))] + " "
        count = len(ours._chat_inputs([{"role": "user", "content": text}], n_new)[0])
    s = ours.chat([{"role": "user", "content": text}], max_new_tokens=n_new).stats
    assert s["new_tokens"] == n_new, s
    return {"ttft_s": s["time_to_first_token_s"], "tpot_ms": 1e3 / s["decode_tokens_per_s"],
            "tokens_per_s": s["decode_tokens_per_s"], "prompt_tokens": s["prompt_tokens"]}
genai_run(10 ** 6), ours_run(10 ** 6)  # warm-up
for i in range(repeats):
    print(json.dumps({"genai": genai_run(i), "ours": ours_run(i)}), flush=True)
"""


def run(python: str, code: str, *args) -> dict:
    out = subprocess.run([python, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=1800,
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode:
        raise SystemExit(f"run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.genai_anchor", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=default_path("janus-pro-1b"))
    p.add_argument("--ir", type=Path, required=True, help="our converted model (int4 cache entry) of the checkpoint")
    p.add_argument("--recipe", choices=RECIPES, default="asym64")
    p.add_argument("--prompt-tokens", type=int, default=640)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--venv", type=Path, default=Path("/work/genai-venv"))
    p.add_argument("--same-process", action="store_true", help="both pipelines in one process, requests "
                   "alternating (see SAME_PROCESS_RUN); the default is a fresh process per run")
    args = p.parse_args(argv)

    genai_dir = export(write_llama(args.checkpoint, MODELS_DIR / "genai-llama-source"), args.recipe, args.venv)
    venv_python = str(args.venv / "bin" / "python")
    runs = {"genai": [], "ours": []}
    if args.same_process:
        argv = [genai_dir, args.ir, args.prompt_tokens, args.tokens, args.repeats]
        out = subprocess.run([venv_python, "-c", SAME_PROCESS_RUN, *map(str, argv)], capture_output=True, text=True, timeout=3600,
                             cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONPATH": str(REPO)})
        if out.returncode:
            raise SystemExit(f"run failed:\n{out.stderr[-3000:]}")
        for line in out.stdout.strip().splitlines():
            pair = json.loads(line)
            for side in runs:
                runs[side].append(pair[side])
    for i in range(0 if args.same_process else args.repeats):  # alternating, each in a fresh process
        runs["genai"].append(run(venv_python, GENAI_RUN, genai_dir, args.prompt_tokens, args.tokens))
        runs["ours"].append(run(sys.executable, OURS_RUN, args.ir, args.prompt_tokens, args.tokens))
        print(f"round {i + 1}: genai {runs['genai'][-1]}  ours {runs['ours'][-1]}", flush=True)
    summary = {k: {m: statistics.median(r[m] for r in v) for m in ("ttft_s", "tpot_ms", "tokens_per_s")}
               for k, v in runs.items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "recipe": args.recipe,
              "mode": "same process, alternating requests" if args.same_process else "a fresh process per run",
              "prompt_tokens": args.prompt_tokens, "tokens": args.tokens, "runs": runs, "median": summary,
              "ours_vs_genai_tokens_per_s": summary["ours"]["tokens_per_s"] / summary["genai"]["tokens_per_s"]}
    tag = "-same-process" if args.same_process else ""
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-{machine_slug()}-genai-anchor-{args.recipe}{tag}.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2), f"\nours / genai tokens/s: {result['ours_vs_genai_tokens_per_s']:.2f}",
          f"\nwritten {out}")


if __name__ == "__main__":
    main()
