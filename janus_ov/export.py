"""`python -m janus_ov export --model ID|PATH --weights int4 --output DIR`: convert once, for shipping.

The export goes through the cache (so converting happens at most once per machine, and the app
can use it too), then the verified entry is copied next to DIR and renamed into place: DIR either
holds a complete export or is left as it was. The result loads anywhere with
`--model DIR`, without torch, transformers or a network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

from .cache import MANIFEST, ensure_converted, verify
from .errors import InvalidInputError, JanusError
from .parts import WEIGHT_FORMATS
from .resolve import DEFAULT_MODEL


def export(model: str, output, weights: str = "int4", cache_dir=None, force: bool = False, progress=print) -> Path:
    say = progress or (lambda *_: None)
    output = Path(output).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"--output {output} is a file; give a directory path.")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise InvalidInputError(f"--output {output} already exists and is not empty. Choose a new directory, or "
                                f"pass --force to replace it.")
    entry = ensure_converted(model, weights=weights, cache_dir=cache_dir, progress=progress)
    if entry.resolve() == output:
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead_exports(output)
    tag = f"{output.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # the pid tells a killed export's litter
    tmp, old = output.parent / f".tmp-export-{tag}", output.parent / f".old-export-{tag}"
    try:
        shutil.copytree(entry, tmp)
        problem = verify(tmp, tmp / ".verify")  # a private stamp dir: always a full check of the copy
        shutil.rmtree(tmp / ".verify", ignore_errors=True)
        if problem:
            raise JanusError(f"The copy of {entry} in {tmp} is damaged ({problem}); nothing was exported. "
                             f"Check the disk and try again.")
        if output.exists():
            os.rename(output, old)
        os.rename(tmp, output)  # atomic publish
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    manifest = json.loads((output / MANIFEST).read_text(encoding="utf-8"))
    size = sum(f["size"] for f in manifest["files"].values())
    say(f"Exported {manifest['source']} ({manifest['weights']}, {size / 2**20:.1f} MiB) to {output}. "
        f"Load it with --model {output} (no torch or network needed).")
    return output


def _sweep_dead_exports(output: Path) -> None:
    """Remove what an export to `output` killed mid-way left beside it (a partial copy; the previous
    output set aside, which goes back in place if the new one never arrived)."""
    for kind in (".old-export-", ".tmp-export-"):  # old first: it may restore the output
        for path in output.parent.glob(f"{kind}{output.name}-*-*"):
            pid = path.name.rsplit("-", 2)[-2]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == ".old-export-" and not output.exists():
                os.rename(path, output)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m janus_ov export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id[@revision] or local checkpoint "
                        f"directory (default {DEFAULT_MODEL})")
    parser.add_argument("--weights", default="int4", choices=WEIGHT_FORMATS, help="weight format (default int4)")
    parser.add_argument("--output", required=True, help="directory to write the converted model to")
    parser.add_argument("--cache-dir", default=None, help="conversion cache (default $JANUS_OV_CACHE or "
                        "~/.cache/janus_ov)")
    parser.add_argument("--force", action="store_true", help="replace --output if it is not empty")
    args = parser.parse_args(argv)
    try:
        export(args.model, args.output, weights=args.weights, cache_dir=args.cache_dir, force=args.force)
    except JanusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
