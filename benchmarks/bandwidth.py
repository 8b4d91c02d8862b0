"""This machine's memory read bandwidth, and the decode rate it allows.

Decoding one token reads every language-model weight once (plus the LM head), so on a CPU
the rate can never beat bandwidth / bytes-per-token. We measure the bandwidth the way the
model reads weights: streaming once through an array far larger than the caches, with 1
and 2 threads (numpy reductions release the GIL), and take the best of a few simple
read-only kernels (they differ in how much arithmetic hides the memory time).

    python -m benchmarks.bandwidth [--gib 1] [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np

# Read-only reductions over the same bytes; the fastest one is closest to the memory limit.
KERNELS = {
    "sum_f64": lambda a: a.view(np.float64).sum(),
    "max_f32": lambda a: a.view(np.float32).max(),
    "or_u64": lambda a: np.bitwise_or.reduce(a.view(np.uint64)),
}


def _timed(kernel, parts) -> float:
    if len(parts) == 1:
        t0 = time.perf_counter()
        kernel(parts[0])
        return time.perf_counter() - t0
    threads = [threading.Thread(target=kernel, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def measure(gib: float = 1.0, reps: int = 7, threads=(1, 2)) -> dict:
    """Read bandwidth in GB/s (1e9 bytes/s): best and median over `reps`, per thread count."""
    nbytes = int(gib * 1024**3) // 64 * 64
    data = np.ones(nbytes // 8, dtype=np.float64).view(np.uint8)  # ones: touched, no denormals
    out = {"array_bytes": nbytes, "reps": reps}
    for n in threads:
        parts = np.array_split(data, n)
        parts = [p[: len(p) // 8 * 8] for p in parts]
        per_kernel = {}
        for name, kernel in KERNELS.items():
            kernel(parts[0][: 1 << 20])  # warm the code path, not the data
            rates = [nbytes / _timed(kernel, parts) / 1e9 for _ in range(reps)]
            per_kernel[name] = {"best": round(max(rates), 2), "median": round(statistics.median(rates), 2)}
        best = max(per_kernel, key=lambda k: per_kernel[k]["median"])
        out[f"threads_{n}"] = {"kernel": best, **per_kernel[best], "kernels": per_kernel}
    medians = [out[f"threads_{n}"]["median"] for n in threads]
    bests = [out[f"threads_{n}"]["best"] for n in threads]
    out["gbps_median"] = max(medians)  # the bound uses the best thread count's median
    out["gbps_best"] = max(bests)
    return out


def bound_rate(bytes_per_step: float, gbps: float) -> float:
    """Steps per second if every step must stream `bytes_per_step` from memory."""
    return gbps * 1e9 / bytes_per_step if bytes_per_step else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bandwidth", description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.gib, args.reps), indent=2))


if __name__ == "__main__":
    main()
