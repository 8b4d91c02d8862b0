"""Two versions of our int4 matmul kernel (janus_ov/matmul.cpp) on the chain of Janus-Pro-1B's 168
matmuls, alone: one standalone binary per version (benchmarks/matmul_chain.cpp), a fresh process per
run, the versions taking turns. Each version's outputs are first checked equal to its own vector
(VNNI) kernel's where AMX takes a call, so a faster version is not a wrong one.

    python -m benchmarks.matmul_chain --against REV [--rows 1,2,4,8,16,64] [--rounds 4] [--layers 24] [--out FILE]

REV: a git revision whose matmul.cpp is the "before"; the working tree's is the "after". Rows from
matmul.AMX_ROWS on run on AMX's tiles where the CPU has them. Needs g++ (as the runtime's build).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .report import in_turns, machine

HERE = Path(__file__).parent
REPO = HERE.parent


def build(source: Path, binary: Path) -> None:
    from janus_ov.native import compile_command

    command = compile_command(HERE / "matmul_chain.cpp")
    if command is None:
        raise SystemExit("this OpenVINO wheel has no headers or libraries to build with")
    subprocess.run([*command, f'-DMATMUL_SOURCE="{source}"', "-o", str(binary)], check=True, timeout=600)


def run(binary: Path, *args) -> dict:
    """The binary's one line of JSON for `args` (matmul_chain.cpp: ROWS AMX_ROWS REPEATS LAYERS, or ROWS AMX_ROWS check)."""
    out = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"{binary.name} {' '.join(map(str, args))}: exit {out.returncode} {out.stderr[-300:]}")
    return json.loads(out.stdout)


def main(argv=None):
    from janus_ov import matmul

    parser = argparse.ArgumentParser(prog="python -m benchmarks.matmul_chain", description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git revision of the matmul.cpp to compare with")
    parser.add_argument("--rows", default="1,2,4,8,16,64")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10, help="chains per run")
    parser.add_argument("--layers", type=int, default=24, help="layers of the chain (24: the model's)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    amx_rows = matmul.amx_rows()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = tmp / "matmul_before.cpp"
        before.write_text(subprocess.run(["git", "show", f"{args.against}:janus_ov/matmul.cpp"], cwd=REPO, check=True,
                                         capture_output=True, text=True).stdout)
        binaries = {"before": tmp / "before", "after": tmp / "after"}
        build(before, binaries["before"])
        build(REPO / "janus_ov" / "matmul.cpp", binaries["after"])
        checks = {name: [run(b, rows, amx_rows, "check")["equal"] for rows in (3, 8, 11)]
                  for name, b in binaries.items()} if amx_rows else {}
        if not all(all(c) for c in checks.values()):
            raise SystemExit(f"outputs differ from the vector kernel's: {checks}")
        rows = [int(r) for r in args.rows.split(",")]
        times = {name: {r: [] for r in rows} for name in binaries}
        for i in range(args.rounds):
            for r in rows:
                for name in in_turns(binaries, i):
                    times[name][r].append(run(binaries[name], r, amx_rows, args.repeats, args.layers)["median_ms"])
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "against": args.against, "layers": args.layers,
              "amx_rows": amx_rows, "equal_to_vector_kernel_at_3_8_11_rows": checks or "no AMX here",
              "median_chain_ms": {name: {r: round(statistics.median(t), 2) for r, t in per.items()}
                                  for name, per in times.items()},
              "runs_ms": times}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
