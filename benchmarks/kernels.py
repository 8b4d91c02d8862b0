"""How fast OpenVINO's own kernels can go on this machine, apart from our pipeline.

The language model of Janus-Pro-1B / Janus-1.3B without attention: 24 layers of its seven
matmuls (q, k, v, o: 2048x2048; gate, up: 2048x5632; down: 5632x2048), random weights
compressed exactly as our int4 export (NNCF INT4_ASYM, group 64), run with the batch rows a
chat token (1), one image step (2 CFG rows) and four images (8 rows) use. The weight bytes
read per call divided by its time is the rate the int4 kernels stream weights at: the
practical ceiling of our decode, below the numpy bandwidth of benchmarks/bandwidth.py.

    python -m benchmarks.kernels            # prints one JSON line
"""

from __future__ import annotations

import json
import statistics
import time

LAYERS, HIDDEN, MLP = 24, 2048, 5632


def build_matmul_chain(layers: int = LAYERS, hidden: int = HIDDEN, mlp: int = MLP):
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
    model = ov.Model([h], [x])
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=64, ratio=1.0,
                                  all_layers=True)
    params = layers * (4 * hidden * hidden + 3 * hidden * mlp)
    return model, params


def measure(rows=(1, 2, 8), reps: int = 30) -> dict:
    import numpy as np
    import openvino as ov

    model, params = build_matmul_chain()
    weight_bytes = params // 2 + params // 64 * 5 // 2  # u4 weights + per group an fp16 scale and a u4 zero point
    request = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    out = {"params": params, "weight_bytes": weight_bytes, "rows": {}}
    for m in rows:
        x = np.random.default_rng(1).standard_normal((m, HIDDEN)).astype(np.float32)
        for _ in range(5):
            request.infer({0: x})
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            request.infer({0: x})
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        out["rows"][m] = {"ms": round(ms, 2), "weights_gb_per_s": round(weight_bytes / ms / 1e6, 1)}
    return out


if __name__ == "__main__":
    print(json.dumps(measure()))
