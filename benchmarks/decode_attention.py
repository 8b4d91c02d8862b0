"""A decode-attention kernel of our own against the CPU plugin's PagedAttention, on the same cache.

Issue 21, item 3: four images cost far more than one mostly because attention over 8 CFG rows
grows 3.4x (Zen 5) while the matmuls grow 1.2-1.4x; the plugin takes a slower path once a call
has as many sequences as threads (design-measurements.md). This measures our kernel (the decode path of
janus_ov/attention.cpp, built as the runtime builds it) against the plugin's, outside the model:
- the check: layer 0's attention output of a real decode step, computed by the plugin inside the
  language model (an extra model output) and by our kernel from the same query and the cache the
  plugin wrote; max relative difference;
- the times: the plugin's PagedAttention per step (its own profiling counters, all layers) against
  our kernel over all layers' caches, for 1, 2 and 8 rows of --past-tokens each, taking turns.

    python -m benchmarks.decode_attention --ir DIR [--past-tokens 300] [--rows 1,2,8] [--rounds 7]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def load() -> ctypes.CDLL:
    """The runtime's own build of janus_ov/native.cpp (built now if this machine has none)."""
    from janus_ov import native

    path = native.library(None)
    if path is None:
        raise SystemExit("native.cpp cannot be built here (see the message above)")
    dll = ctypes.CDLL(str(path))
    p, i = ctypes.c_void_p, ctypes.c_int
    dll.janus_decode_attention.argtypes = [p, i, i, i, p, p, i, p, p, p, ctypes.c_float, p]
    return dll


def attention(dll, q: np.ndarray, keys: np.ndarray, values: np.ndarray, inputs: dict, heads: int,
              scale: float) -> np.ndarray:
    """Our kernel's output for q [rows, heads * S] over one layer's cache tensors."""
    rows, width = q.shape
    out = np.empty_like(q)
    arrays = [np.ascontiguousarray(inputs[k]) for k in ("past_lens", "block_indices", "block_indices_begins")]
    dll.janus_decode_attention(q.ctypes.data, rows, heads, width // heads, keys.ctypes.data, values.ctypes.data,
                               keys.shape[1], *(a.ctypes.data for a in arrays), scale, out.ctypes.data)
    return out


def paged_with_layer0(core, ir: Path, profiled: bool):
    """The language model as the runtime compiles it, with layer 0's attention query and output as
    extra outputs; and that layer's softmax scale."""
    import openvino as ov
    from openvino._offline_transformations import paged_attention_transformation

    from janus_ov.runtime import compile_config, streaming_config

    model = core.read_model(str(ir / "language_model.xml"))
    # f32 as our kernel computes (and as the runtime compiles int4 and int8 language models anyway).
    settings = {"PERF_COUNT": profiled, "INFERENCE_PRECISION_HINT": "f32"}
    config = streaming_config(model, "CPU", compile_config("CPU", settings, None))
    paged_attention_transformation(model)  # the plugin's PagedAttention: the other side of the comparison
    first = next(op for op in model.get_ordered_ops() if op.get_type_name() == "PagedAttentionExtension")
    model.add_results([ov.opset13.result(first.input_value(0)), ov.opset13.result(first.output(0))])
    scale = float(first.input_value(9).get_node().get_data())
    return core.compile_model(model, "CPU", config), scale


def one_size(core, dll, ir: Path, rows: int, past: int, rounds: int, steps: int) -> dict:
    from .step_profile import bind_cache, by_layer_type

    compiled, scale = paged_with_layer0(core, ir, profiled=True)
    request = compiled.create_infer_request()
    # A profiled model must not prefill itself (its counters would keep the prefill's times).
    filler = paged_with_layer0(core, ir, profiled=False)[0].create_infer_request()
    inputs = bind_cache(request, past, rows, fill=filler)
    hidden = compiled.output(0).get_partial_shape()[-1].get_length()
    embeds = (np.random.default_rng(1).standard_normal((rows, hidden)) * 0.02).astype(np.float32)
    result = request.infer({"inputs_embeds": embeds, **inputs})
    q, reference = (result[compiled.outputs[i]].reshape(rows, -1).astype(np.float32) for i in (-2, -1))
    layers = sorted({p.get_any_name().split(".")[1] for p in compiled.inputs
                     if p.get_any_name().startswith("key_cache.")}, key=int)
    caches = [(request.get_tensor(f"key_cache.{n}").data, request.get_tensor(f"value_cache.{n}").data) for n in layers]
    heads = caches[0][0].shape[1]
    ours = attention(dll, q, *caches[0], inputs, heads, scale)
    error = float(np.abs(ours - reference).max() / np.abs(reference).max())

    plugin_ms, ours_ms = [], []
    for _ in range(rounds):
        ms = 0.0
        for _ in range(steps):
            request.infer({"inputs_embeds": embeds, **inputs})
            ms += by_layer_type(request).get("PagedAttentionExtension", 0.0)
        plugin_ms.append(ms / steps)
        t0 = time.perf_counter()
        for _ in range(steps):
            for keys, values in caches:
                attention(dll, q, keys, values, inputs, heads, scale)
        ours_ms.append((time.perf_counter() - t0) * 1e3 / steps)
    plugin, mine = statistics.median(plugin_ms), statistics.median(ours_ms)
    return {"rows": rows, "past_tokens": past, "layers": len(caches), "max_rel_diff_layer0": error,
            "plugin_ms_per_step": round(plugin, 2), "ours_ms_per_step": round(mine, 2),
            "plugin_over_ours": round(plugin / mine, 2),
            "ours_us_per_cached_token_row": round(mine * 1e3 / (rows * (past + 1)), 2),
            "plugin_us_per_cached_token_row": round(plugin * 1e3 / (rows * (past + 1)), 2)}


def measure(ir: Path, rows=(1, 2, 8), past: int = 300, rounds: int = 7, steps: int = 5) -> dict:
    import openvino as ov

    from janus_ov.tuning import cpu_flags

    core, dll = ov.Core(), load()
    sizes = [one_size(core, dll, ir, n, past, rounds, steps) for n in rows]
    return {"kernel_isa": "avx512" if "avx512f" in cpu_flags() else "portable", "sizes": sizes}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_attention", description=__doc__.splitlines()[0])
    p.add_argument("--ir", type=Path, required=True)
    p.add_argument("--past-tokens", type=int, default=300)
    p.add_argument("--rows", default="1,2,8")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    result = measure(args.ir, tuple(map(int, args.rows.split(","))), args.past_tokens, args.rounds, args.steps)
    from .report import machine

    command = "python -m benchmarks.decode_attention " + " ".join(sys.argv[1:] if argv is None else argv)
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "ir": str(args.ir),
                      "command": command, **result}, indent=1))
    return result


if __name__ == "__main__":
    main()
