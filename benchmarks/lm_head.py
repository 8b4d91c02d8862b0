"""The LM head alone: plain INT8 against the screened head (janus_ov/screened_head.py), issue 21.

    PYTHONPATH=. python -m benchmarks.lm_head --ir DIR_OF_AN_FP32_EXPORT [--rows 1,4] [--calls 60] [--samples 256]

Builds both heads from the fp32 export's lm_head with our own compression (compress.compress_as:
"int8" and "int8-screened", plus the screen alone, "int4-channel"), compiles them as the runtime does
(f32 activations), then reports
- ms per call at each row count, the heads called alternately, medians (the first 10 calls dropped);
- the deviation of each from the fp32 head on the same random hidden states (unit variance, as the
  final RMSNorm gives): error of the fp32 head's 8 largest logits and of all of them, top-1
  agreement, KL(fp32 || head) at temperature 1;
- where the fp32 head's top token falls in the screen's own ranking (0 = first): the screen loses it
  only past screened_head.CANDIDATES.
Random weights give flat, near-uniform logits: the hardest case for a screen (a trained head's top
tokens stand far clearer), and the one where the int4 tail weighs most in the KL.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .report import machine, machine_slug
from .run import RESULTS

F32 = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
HEADS = ("int8", "int8-screened", "int4-channel")  # the last: the screen alone, for its ranking


def build(fp32_ir: Path) -> dict:
    import openvino as ov

    from janus_ov.compress import compress_as

    core = ov.Core()
    return {mode: core.compile_model(compress_as(core.read_model(fp32_ir / "lm_head.xml"), mode), "CPU", F32)
            for mode in HEADS} | {"fp32": core.compile_model(fp32_ir / "lm_head.xml", "CPU", F32)}


def timings(compiled: dict, rows: int, calls: int, width: int) -> dict:
    requests = {mode: compiled[mode].create_infer_request() for mode in ("int8", "int8-screened")}
    x = np.random.default_rng(rows).standard_normal((rows, 1, width)).astype(np.float32)
    ms = {mode: [] for mode in requests}
    for _ in range(calls):
        for mode, request in requests.items():
            t = time.perf_counter()
            request.infer([x])
            ms[mode].append(1e3 * (time.perf_counter() - t))
    return {mode: round(float(np.median(v[10:])), 2) for mode, v in ms.items()}


def deviation(compiled: dict, samples: int, width: int) -> dict:
    from janus_ov.screened_head import CANDIDATES

    x = np.random.default_rng(0).standard_normal((samples, 1, width)).astype(np.float32)
    logits = {mode: np.asarray(c([x])[0][:, 0], np.float64) for mode, c in compiled.items()}
    ref = logits.pop("fp32")
    top = np.argsort(-ref, axis=-1)[:, :8]
    p = _softmax(ref)
    out = {}
    for mode, got in logits.items():
        out[mode] = {
            "top8_rel_error": _rel(np.take_along_axis(got, top, -1), np.take_along_axis(ref, top, -1)),
            "all_rel_error": _rel(got, ref),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()),
            "kl_t1": float(np.mean(np.sum(p * (np.log(p) - np.log(_softmax(got))), -1))),
        }
    screen = logits["int4-channel"]
    rank = (screen > np.take_along_axis(screen, ref.argmax(-1)[:, None], -1)).sum(-1)
    out["screen_rank_of_top1"] = {"max": int(rank.max()), "p99": float(np.percentile(rank, 99)),
                                  "candidates": CANDIDATES}
    return out


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _rel(got, ref) -> float:
    return round(float(np.linalg.norm(got - ref) / np.linalg.norm(ref)), 5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ir", required=True, help="a converted model in the fp32 format (its lm_head is the reference)")
    ap.add_argument("--rows", default="1,4")
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--out", default=None, help="results file (default: results/<date>-<machine>-lm-head.json)")
    args = ap.parse_args(argv)
    ir = Path(args.ir)
    compiled = build(ir)
    width = compiled["fp32"].input(0).get_partial_shape()[2].get_length()
    report = {"machine": machine(), "ir": str(ir), "ms_per_call": {}, "deviation": deviation(compiled, args.samples, width)}
    for rows in [int(r) for r in args.rows.split(",")]:
        report["ms_per_call"][f"{rows} rows"] = timings(compiled, rows, args.calls, width)
    out = Path(args.out) if args.out else RESULTS / f"{time.strftime('%Y-%m-%d')}-{machine_slug()}-lm-head.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
