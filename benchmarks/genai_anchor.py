"""The anchor for our chat decode speed: OpenVINO GenAI's own LLMPipeline on a plain Llama with exactly
our language model's weights, beside our pipeline, same prompt length and forced output length, each
in a fresh process (issue 21).

    python -m benchmarks.genai_anchor [--checkpoint DIR] [--ir OUR_IR] [--recipe asym64|sym128]
                                      [--prompt-tokens 640] [--tokens 128] [--repeats 3] [--venv DIR]
                                      [--same-process [--bare]]

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
transformers is never touched: the export and the GenAI runs happen there, ours in this interpreter
(with --same-process both sides run in one process there). The measuring code is benchmarks/anchor_child.py.
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


def child(python: str, sides: str, genai_dir: Path, ir: Path, prompt_tokens: int, tokens: int, rounds: int) -> list:
    """Rounds of benchmarks.anchor_child in a fresh process of `python`: [{side: figures}, ...]."""
    argv = [sides, genai_dir, ir, prompt_tokens, tokens, rounds]
    out = subprocess.run([python, "-m", "benchmarks.anchor_child", *map(str, argv)], capture_output=True, text=True,
                         timeout=3600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        raise SystemExit(f"run failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.strip().splitlines() if line.startswith("{")]


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
                   "alternating: a VM's slow and fast spells then hit both sides alike; the default is a fresh "
                   "process per run")
    p.add_argument("--bare", action="store_true", help="with --same-process: also each graph's decode step alone "
                   "(inputs bound once), to show what each pipeline adds over its own calls")
    args = p.parse_args(argv)

    genai_dir = export(write_llama(args.checkpoint, MODELS_DIR / "genai-llama-source"), args.recipe, args.venv)
    venv_python = str(args.venv / "bin" / "python")
    runs = {"genai": [], "ours": [], **({"genai_bare": [], "ours_bare": []} if args.bare else {})}
    if args.same_process:  # one process of the GenAI venv, requests alternating (anchor_child)
        rounds = child(venv_python, ",".join(runs), genai_dir, args.ir, args.prompt_tokens, args.tokens, args.repeats)
    else:  # alternating, each side in a fresh process of its own interpreter
        rounds = []
        for i in range(args.repeats):
            rounds.append({**child(venv_python, "genai", genai_dir, args.ir, args.prompt_tokens, args.tokens, 1)[0],
                           **child(sys.executable, "ours", genai_dir, args.ir, args.prompt_tokens, args.tokens, 1)[0]})
            print(f"round {i + 1}: {rounds[-1]}", flush=True)
    for pair in rounds:
        for side in runs:
            runs[side].append(pair[side])
    summary = {k: {m: statistics.median(r[m] for r in v) for m in ("ttft_s", "tpot_ms", "tokens_per_s") if m in v[0]}
               for k, v in runs.items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "recipe": args.recipe,
              "mode": "same process, alternating requests" if args.same_process else "a fresh process per run",
              "prompt_tokens": args.prompt_tokens, "tokens": args.tokens, "runs": runs, "median": summary,
              "ours_vs_genai_tokens_per_s": summary["ours"]["tokens_per_s"] / summary["genai"]["tokens_per_s"]}
    ahead = sum(o["tokens_per_s"] > g["tokens_per_s"] for g, o in zip(runs["genai"], runs["ours"]))
    result["ours_ahead_in_pairs"] = f"{ahead} of {len(rounds)}"
    tag = ("-same-process" if args.same_process else "") + ("-bare" if args.bare else "")
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-{machine_slug()}-genai-anchor-{args.recipe}{tag}.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2), f"\nours / genai tokens/s: {result['ours_vs_genai_tokens_per_s']:.2f}",
          f"\nwritten {out}")


if __name__ == "__main__":
    main()
