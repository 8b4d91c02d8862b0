"""Run the benchmark: OpenVINO (int4/int8/fp16) and PyTorch (fp32/bf16) side by side.

    python -m benchmarks.run                 # full run on the full-size random Janus-Pro-1B
    python -m benchmarks.run --quick         # smoke test on the tiny model (about two minutes)

Every measurement runs in a fresh child process (`--child`), so each peak RSS is that task's
own and no warm cache or allocator state leaks from one task into the next. Results go to
benchmarks/results/<date>-<machine>.json and .md; child logs to benchmarks/results/raw/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
MARK = "BENCH_RESULT "


# ---------------------------------------------------------------- child side

def peak_rss() -> int:
    """This process's peak resident memory, in bytes.

    VmHWM belongs to the process's own address space, created fresh at exec; ru_maxrss can
    instead carry the parent's RSS over from fork(), so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(spec: dict) -> None:
    """Run one task in this (fresh) process and print its result as the last stdout line."""
    import psutil

    process_start = psutil.Process().create_time()
    module, task, kwargs = spec["module"], spec["task"], dict(spec.get("kwargs", {}))
    if module == "ov":
        from . import ov_bench as mod
        if task == "warm_start":
            kwargs["process_start"] = process_start
    elif module == "pt":
        from . import pytorch_reference as mod
    else:
        from . import bandwidth as mod
    t0 = time.perf_counter()
    result = mod.measure(**kwargs) if module == "bw" else mod.run_task(task, **kwargs)
    result["task_s"] = time.perf_counter() - t0
    result["process_s"] = time.time() - process_start
    result["peak_rss_bytes"] = peak_rss()
    print(MARK + json.dumps(result, default=str), flush=True)


# ---------------------------------------------------------------- parent side

class Runner:
    def __init__(self, raw_dir: Path, timeout: float, env: dict):
        self.raw_dir = raw_dir
        self.timeout = timeout
        self.env = env
        raw_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, module: str, task: str, **kwargs) -> dict:
        """Run a task in a child; returns its result, or {"error": ...} (the run goes on)."""
        spec = json.dumps({"module": module, "task": task, "kwargs": kwargs}, default=str)
        log = self.raw_dir / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--child", spec], cwd=REPO, env=self.env,
                                  capture_output=True, encoding="utf-8", errors="replace", timeout=self.timeout)
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out, err, code = e.stdout or "", (e.stderr or "") + f"\nTIMEOUT after {self.timeout} s", -1
            out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
        wall = time.perf_counter() - t0
        log.write_text(f"$ {spec}\n--- stdout\n{out}\n--- stderr\n{err}\n--- exit {code}, {wall:.1f} s\n", encoding="utf-8")
        lines = [line for line in out.splitlines() if line.startswith(MARK)]
        if code != 0 or not lines:
            tail = (err.strip().splitlines() or ["no output"])[-1]
            print(f"    FAILED ({tail}); log: {log}", flush=True)
            return {"error": tail, "log": str(log), "wall_s": wall}
        result = json.loads(lines[-1][len(MARK):])
        result["wall_s"] = wall
        print(f"    done in {wall:.1f} s", flush=True)
        return result


def prepare_model(args) -> Path:
    """The checkpoint to measure, built in a child process: the parent must stay small, as
    every child it starts inherits its memory map until exec."""
    if args.model_dir:
        return Path(args.model_dir)
    if args.quick:
        path = HERE / "models" / "tiny-random"
        if not (path / "config.json").exists():
            subprocess.run([sys.executable, "-m", "janus_ov", "tiny", "--output", str(path)], cwd=REPO, check=True)
        return path
    from .models import default_path

    subprocess.run([sys.executable, "-m", "benchmarks.models", "--model", args.model], cwd=REPO, check=True)
    return default_path(args.model)


def run(args) -> dict:
    started = time.time()
    model_dir = prepare_model(args)
    tag = "tiny" if args.quick else args.model
    cache_root = Path(args.cache_dir)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JANUS_OV_CACHE=str(cache_root / "default"), TOKENIZERS_PARALLELISM="false")
    stamp = datetime.now(timezone.utc)
    out_dir = Path(args.out)
    name = f"{stamp:%Y-%m-%d}-{report.machine_slug()}" + ("-quick" if args.quick else f"-{tag}")
    run_ = Runner(out_dir / "raw" / name, args.timeout, env)

    res = {"date": stamp.isoformat(timespec="seconds"), "model": tag, "model_dir": str(model_dir),
           "machine": report.machine(), "note": args.note, "quick": args.quick,
           "settings": {"runs": args.runs, "new_tokens": args.new_tokens, "weights": args.weights,
                        "pytorch": args.pytorch, "images": args.images},
           "bandwidth": {}, "openvino": {}, "pytorch": {}}
    bw = dict(gib=0.25 if args.quick else 1.0, reps=3 if args.quick else 7)
    res["bandwidth"]["start"] = run_("bandwidth-start", "bw", "measure", **bw)

    for weights in args.weights:
        cache_dir = cache_root / f"{tag}-{weights}"
        if not args.keep_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)  # conversion is measured from scratch
        ov = res["openvino"][weights] = {}
        ov["convert"] = run_(f"ov-{weights}-convert", "ov", "convert", model_dir=str(model_dir), weights=weights,
                             cache_dir=str(cache_dir))
        if "error" in ov["convert"]:
            continue
        common = dict(model_dir=str(model_dir), weights=weights, cache_dir=str(cache_dir))
        # The first launch after conversion also compiles and fills OpenVINO's model cache.
        starts = [run_(f"ov-{weights}-start{i}", "ov", "warm_start", **common) for i in range(args.runs + 1)]
        ov["warm_start"] = {"first": starts[0], "runs": starts[1:]}
        ov["chat"] = run_(f"ov-{weights}-chat", "ov", "chat", runs=args.runs, new_tokens=args.new_tokens,
                          warmup=not args.quick, **common)
        for n in args.images:
            ov[f"image_{n}"] = run_(f"ov-{weights}-image{n}", "ov", "image", runs=args.runs, num_images=n, **common)
        ov["vq_decode"] = run_(f"ov-{weights}-vq", "ov", "vq_decode", ir_dir=ov["convert"]["ir_dir"], runs=args.runs)
        if args.profile:
            ov["profile"] = run_(f"ov-{weights}-profile", "ov", "profile", new_tokens=args.new_tokens, **common)

    if args.pytorch_from:  # PyTorch figures of an earlier run on the same machine (said so in the report)
        earlier = json.loads(Path(args.pytorch_from).read_text(encoding="utf-8"))
        res["pytorch"] = earlier.get("pytorch", {})
        res["pytorch_from"] = {"file": str(args.pytorch_from), "date": earlier.get("date"), "note": earlier.get("note"),
                               "bandwidth": earlier.get("bandwidth")}
    for dtype in args.pytorch:
        pt = res["pytorch"][dtype] = {}
        pt["chat"] = run_(f"pt-{dtype}-chat", "pt", "chat", model_dir=str(model_dir), dtype=dtype, runs=args.runs,
                          new_tokens=args.new_tokens)
        for n in args.pytorch_images.get(dtype, []):
            pt[f"image_{n}"] = run_(f"pt-{dtype}-image{n}", "pt", "image", model_dir=str(model_dir), dtype=dtype,
                                    runs=args.pytorch_image_runs, num_images=n)

    res["bandwidth"]["end"] = run_("bandwidth-end", "bw", "measure", **bw)
    res["machine"]["load_end"] = report.load_average()
    res["total_s"] = time.time() - started
    report.summarize(res)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
    (out_dir / f"{name}.md").write_text(report.markdown(res), encoding="utf-8")
    print(f"wrote {out_dir / name}.json and .md in {res['total_s'] / 60:.1f} min")
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model, one run of each measurement (smoke test)")
    p.add_argument("--model", default="janus-pro-1b", choices=["janus-pro-1b", "janus-pro-7b"],
                   help="full-size random-weight model to build/use (7B needs ~20 GB of RAM for PyTorch)")
    p.add_argument("--model-dir", help="use this checkpoint instead of a built random one")
    p.add_argument("--weights", default=None, help="OpenVINO weight formats, comma-separated (default int4,int8,fp16)")
    p.add_argument("--pytorch", default=None, help="PyTorch dtypes, comma-separated, or 'none' (default fp32,bf16)")
    p.add_argument("--pytorch-images", default=None,
                   help="PyTorch text-to-image runs as dtype:n[+n], e.g. 'bf16:1' (default) or 'bf16:1+4,fp32:1'")
    p.add_argument("--pytorch-image-runs", type=int, default=1, help="runs per PyTorch image measurement")
    p.add_argument("--images", default="1,4", help="OpenVINO batch sizes for text to image")
    p.add_argument("--runs", type=int, default=None, help="runs per measurement (default 3; --quick 1)")
    p.add_argument("--new-tokens", type=int, default=None, help="forced reply length (default 128; --quick 16)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the per-part time breakdown (one extra chat + image per weight format)")
    p.add_argument("--keep-cache", action="store_true",
                   help="reuse converted models already in --cache-dir (conversion then shows as 'cached')")
    p.add_argument("--pytorch-from", help="take the PyTorch figures from an earlier results JSON (use with --pytorch none)")
    p.add_argument("--note", default="", help="a remark stored with the results (e.g. 'CPU shared, noisy')")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per child task")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--cache-dir", default=str(HERE / "models" / "ov-cache"),
                   help="where converted models and compiled blobs go (emptied per weight format)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    q = args.quick
    weights = args.weights or ("int4" if q else "int4,int8,fp16")
    args.weights = [] if weights == "none" else weights.split(",")
    pytorch = args.pytorch or ("fp32" if q else "fp32,bf16")
    args.pytorch = [] if pytorch == "none" else pytorch.split(",")
    images = args.pytorch_images if args.pytorch_images is not None else ("" if q else "bf16:1")
    args.pytorch_images = {d: [int(n) for n in ns.split("+")] for d, ns in
                           (item.split(":") for item in images.split(",") if item)}
    args.images = [int(n) for n in args.images.split(",") if n]
    args.runs = args.runs or (1 if q else 3)
    args.new_tokens = args.new_tokens or (16 if q else 128)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    run(args)


if __name__ == "__main__":
    main()
