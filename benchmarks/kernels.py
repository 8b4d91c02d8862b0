"""How fast OpenVINO's own kernels can go on this machine, apart from our pipeline.

The language model of Janus-Pro-1B / Janus-1.3B without attention: 24 layers of its seven
matmuls (q, k, v, o: 2048x2048; gate, up: 2048x5632; down: 5632x2048), random weights
compressed exactly as our int4 export (NNCF INT4_ASYM, group 64), run with the batch rows a
chat token (1), one image step (2 CFG rows), two images (4) and four images (8 rows) use. The weight bytes
read per call divided by its time is the rate the int4 kernels stream weights at: the
practical ceiling of our decode, below the numpy bandwidth of benchmarks/bandwidth.py.

--sweep asks whether anything within reach moves that ceiling: the CPU plugin's own settings
on our recipe (dynamic-quantization group, bf16 activations, one thread), and the other int4
recipes NNCF offers (symmetric, group 128, per channel) -- which would be a change of the
shipped recipe, not a setting.

--ours times janus_ov's own int4 matmul operation (matmul.cpp, as the runtime's language model
uses it) against the plugin's on the same weights, the two taking turns call by call, also at
prompt-sized row counts (prompts run on ours too).

--static times our chain compiled as the runtime compiles its language model, with a dynamic
row count, against the same chain reshaped to each row count before compiling: what the plugin's
per-call work on dynamic shapes costs our operations (a step's row count is known in advance).

    python -m benchmarks.kernels            # our recipe, default settings: one JSON line
    python -m benchmarks.kernels --sweep    # settings and recipes (~6 min on 2 cores)
    python -m benchmarks.kernels --ours [--recipe int4_sym_g128]  # the plugin's int4 matmuls against ours (~2 min)
    python -m benchmarks.kernels --static   # our chain, dynamic row count against static (~1 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from .report import in_turns

LAYERS, HIDDEN, MLP = 24, 2048, 5632
ROWS = (1, 2, 4, 8)

# NNCF arguments per recipe; SHIPPED is what janus_ov/compress.py uses.
SHIPPED = "int4_asym_g64"
RECIPES = {
    "int4_asym_g64": ("INT4_ASYM", 64),
    "int4_sym_g64": ("INT4_SYM", 64),
    "int4_asym_g128": ("INT4_ASYM", 128),
    "int4_asym_per_channel": ("INT4_ASYM", -1),
    "int4_sym_g128": ("INT4_SYM", 128),  # --weights int4-sym128
}
# CPU plugin settings tried on the shipped recipe ({} = what the runtime uses).
SETTINGS = {
    "default": {},
    "dynamic_quantization_off": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"},
    "dynamic_quantization_group_64": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"},
    "bf16_activations": {"INFERENCE_PRECISION_HINT": "bf16"},
    "one_thread": {"INFERENCE_NUM_THREADS": "1"},
}


def build_matmul_chain(recipe: str = SHIPPED, layers: int = LAYERS, hidden: int = HIDDEN, mlp: int = MLP):
    """(compressed ov.Model of the matmul chain, weight bytes it holds)."""
    import nncf
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)

    def linear(x, k, n):  # fp16 weights + Convert, as our traced IR holds them before compression
        weight = ops.constant((rng.standard_normal((n, k)) * 0.02).astype(np.float16))
        return ops.matmul(x, ops.convert(weight, np.float32), False, True)

    x = h = ops.parameter([-1, hidden], np.float32, name="x")
    for _ in range(layers):
        attn = linear(ops.add(ops.add(linear(h, hidden, hidden), linear(h, hidden, hidden)), linear(h, hidden, hidden)),
                      hidden, hidden)
        h = ops.add(h, attn)
        gated = ops.multiply(ops.swish(linear(h, hidden, mlp)), linear(h, hidden, mlp))
        h = ops.add(h, linear(gated, mlp, hidden))
    mode, group_size = RECIPES[recipe]
    model = nncf.compress_weights(ov.Model([h], [x]), mode=getattr(nncf.CompressWeightsMode, mode),
                                  group_size=group_size, ratio=1.0, all_layers=True)
    return model, weight_bytes(model)


def weight_bytes(model) -> int:
    """Bytes of the model's constants (u4 packed two to a byte): what each call streams."""
    return sum(op.get_byte_size() for op in model.get_ops() if op.get_type_name() == "Constant")


def time_rows(model, nbytes: int, settings: dict, rows=ROWS, reps: int = 30) -> dict:
    """Median ms per call and the weight GB/s it implies, per batch row count."""
    import numpy as np
    import openvino as ov

    request = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", **settings}).create_infer_request()
    out = {}
    for m in rows:
        x = np.random.default_rng(1).standard_normal((m, model.inputs[0].get_partial_shape()[1].get_length()))
        x = x.astype(np.float32)
        for _ in range(5):
            request.infer({0: x})
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            request.infer({0: x})
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        # three significant digits, not fixed decimals: a tiny chain on a slow, busy CI box reads
        # well under 0.05 GB/s, which one decimal place rounded to 0.0
        out[m] = {"ms": float(f"{ms:.3g}"), "weights_gb_per_s": float(f"{nbytes / ms / 1e6:.3g}")}
    return out


def measure(rows=ROWS, reps: int = 30) -> dict:
    """Our recipe with the runtime's settings."""
    model, nbytes = build_matmul_chain()
    return {"weight_bytes": nbytes, "rows": time_rows(model, nbytes, {}, rows, reps)}


def against_ours(rows=(1, 2, 4, 8, 16, 32, 64), reps: int = 15, **shape) -> dict:
    """Median ms per call of the chain with the plugin's matmuls and with ours (same weights, the
    runtime's step settings), taking turns; and the largest difference of their outputs after one
    layer (a random chain of 24 layers overflows float32)."""
    import numpy as np
    import openvino as ov

    from janus_ov import matmul

    def pair(**chain):
        plugin, nbytes = build_matmul_chain(**chain)
        ours, _ = build_matmul_chain(**chain)  # the same seed: the same weights
        swapped = matmul.replace_int4_matmuls(ours)
        return nbytes, swapped, {name: ov.Core().compile_model(m, "CPU", config).create_infer_request()
                                 for name, m in (("plugin", plugin), ("ours", ours))}

    config = _ours_config()
    nbytes, swapped, requests = pair(**shape)
    _, _, one_layer = pair(**{**shape, "layers": 1})
    out = {"weight_bytes": nbytes, "matmuls_swapped": swapped, "config": config, "rows": {}}
    for m in rows:
        x = np.random.default_rng(1).standard_normal((m, requests["ours"].get_compiled_model().inputs[0]
                                                      .get_partial_shape()[1].get_length())).astype(np.float32)
        first = {name: r.infer({0: x})[0].copy() for name, r in one_layer.items()}
        ms = _median_ms(requests, x, reps)
        diff = np.abs(first["ours"] - first["plugin"]).max() / np.abs(first["plugin"]).max()
        out["rows"][m] = {**{f"{n}_ms": float(f"{v:.3g}") for n, v in ms.items()},
                          "plugin_over_ours": round(ms["plugin"] / ms["ours"], 2),
                          "ours_weights_gb_per_s": float(f"{nbytes / ms['ours'] / 1e6:.3g}"),
                          "max_relative_difference_one_layer": float(f"{diff:.2g}")}
    return out


def _median_ms(requests: dict, x, reps: int) -> dict:
    """name -> median ms of `reps` calls of each request on `x`, taking turns (in_turns)."""
    times = {name: [] for name in requests}
    for i in range(reps):
        for name, r in in_turns(requests.items(), i):
            t0 = time.perf_counter()
            r.infer({0: x})
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def _ours_config() -> dict:
    """The runtime's settings for an int4 language model, once our operations are loaded."""
    from janus_ov import matmul
    from janus_ov.runtime import streaming_config

    config = {"PERFORMANCE_HINT": "LATENCY", **streaming_config(build_matmul_chain(layers=1)[0], "CPU", {})}
    if not matmul.prepare("CPU", config):
        raise SystemExit("our int4 matmul is not used on this CPU (it needs AVX-512 VNNI) or cannot be built")
    return config


def static_rows(rows=(1, 8), reps: int = 30, **shape) -> dict:
    """Median ms per call of our chain compiled with a dynamic row count and of the same chain
    compiled for each row count, taking turns."""
    import numpy as np
    import openvino as ov

    from janus_ov import matmul

    config = _ours_config()

    def compiled(static_rows=None):
        model, _ = build_matmul_chain(**shape)
        matmul.replace_int4_matmuls(model)
        if static_rows is not None:
            model.reshape({model.inputs[0]: ov.PartialShape([static_rows, model.inputs[0].get_partial_shape()[1]])})
        return ov.Core().compile_model(model, "CPU", config).create_infer_request()

    dynamic, out = compiled(), {"config": config, "rows": {}}
    for m in rows:
        requests = {"dynamic": dynamic, "static": compiled(m)}
        x = np.random.default_rng(1).standard_normal((m, dynamic.get_compiled_model().inputs[0]
                                                      .get_partial_shape()[1].get_length())).astype(np.float32)
        # equal_nan: a random chain of 24 layers overflows float32
        same = np.array_equal(dynamic.infer({0: x})[0], requests["static"].infer({0: x})[0], equal_nan=True)
        ms = _median_ms(requests, x, reps)
        out["rows"][m] = {**{f"{n}_ms": float(f"{v:.3g}") for n, v in ms.items()}, "same_outputs": same}
    return out


def sweep(rows=ROWS, reps: int = 30, **shape) -> dict:
    """Every setting on our recipe, then every other recipe with the default settings."""
    out = {"settings": {}, "recipes": {}}
    for recipe in RECIPES:
        model, nbytes = build_matmul_chain(recipe, **shape)
        for name, settings in (SETTINGS if recipe == SHIPPED else {"default": {}}).items():
            result = {"weight_bytes": nbytes, "rows": time_rows(model, nbytes, settings, rows, reps)}
            if recipe == SHIPPED:
                out["settings"][name] = result
            if name == "default":
                out["recipes"][recipe] = result
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", action="store_true", help="CPU plugin settings and NNCF recipes")
    parser.add_argument("--ours", action="store_true", help="the plugin's int4 matmuls against janus_ov's own")
    parser.add_argument("--recipe", choices=RECIPES, default=SHIPPED, help="with --ours: the weights' recipe")
    parser.add_argument("--static", action="store_true", help="our chain: a dynamic row count against static ones")
    args = parser.parse_args()
    result = (sweep() if args.sweep else against_ours(recipe=args.recipe) if args.ours else static_rows() if args.static
              else measure())
    print(json.dumps(result, indent=1 if args.ours or args.static else None))
