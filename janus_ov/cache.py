"""Convert a model once, keep the OpenVINO IR in a cache, and never load a bad entry.

Layout of the cache root (default ~/.cache/janus_ov, or $XDG_CACHE_HOME/janus_ov, or $JANUS_OV_CACHE):

    <name>/                 one published entry: 7 IR parts, model_info.json, tokenizer.json, manifest.json
    .tmp-<name>-<id>/       a build in progress; renamed to <name>/ only when complete (atomic publish)
    .locks/<name>.lock      held while building <name> (flock: the OS frees it if the builder dies)
    .verified/<hash>.json   "these files were fully checksummed while they had this size/mtime/ctime/inode"

An entry's name comes from a key: model id + resolved revision (or the content hash of a local
checkpoint) + weight format + EXPORTER_VERSION. A directory that already holds a converted model
(manifest.json, made by `python -m janus_ov export` or downloaded from the Hub) is used in place.
Nothing here imports torch: only a real conversion does (inside convert.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from .errors import ConversionError, InvalidInputError, JanusError
from .model_info import FILE_NAME as MODEL_INFO
from .parts import PARTS, WEIGHT_FORMATS
from .resolve import MANIFEST, Resolved, resolve

# Bump whenever the IR layout or anything the runtime reads from an export changes:
# entries and exports made by another version are then rebuilt / refused, never misread.
EXPORTER_VERSION = 5  # 2: INT8 vision encoder in the int4/int8 formats; 3: VQ decoder takes any number of token rows;
# 4: DeepSeek-format repos get their own resize rule, prompt style from sft_format, Janus-1.3B's image tag;
# 5: the screened lm_head (screened_head.py) in the integer formats
MANIFEST_FORMAT = 1
ENV_VAR = "JANUS_OV_CACHE"
REQUIRED_FILES = tuple(f"{p}.{ext}" for p in PARTS for ext in ("xml", "bin")) + (MODEL_INFO, "tokenizer.json")


def default_cache_dir() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "janus_ov"


def ensure_converted(model: str, weights: str = "int4", cache_dir=None, progress=print) -> Path:
    """A directory holding the converted `model` (IR parts + model_info.json + tokenizer.json +
    manifest.json). Converts only when no trustworthy cache entry exists."""
    say = progress or (lambda *_: None)
    if weights not in WEIGHT_FORMATS:
        raise InvalidInputError(f"Unknown weight format '{weights}'; choose one of {', '.join(WEIGHT_FORMATS)}.")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    # Weights are fetched only if a conversion turns out to be needed (a Hub model already in the
    # cache is not downloaded again).
    resolved = resolve(model, progress=progress is not None, fetch_weights=False)
    if resolved.is_export:
        return _use_export(resolved.path, weights, root, say)

    entry = root / entry_name(resolved, weights)
    expect = {"key_material": resolved.key_material, "weights": weights}
    if verify(entry, root, expect) is None:
        say(f"Using the converted model in {entry}")
        return entry
    with entry_lock(root, entry.name, say):
        problem = verify(entry, root, expect)  # another process may have built it while we waited
        if problem is None:
            say(f"Using the converted model in {entry} (built by another process)")
            return entry
        if entry.exists():
            say(f"Not using the cached model in {entry}: {problem}. Rebuilding it.")
            _discard(entry, root)
        _clean_stale_builds(root, own=entry.name)
        if resolved.revision:  # a Hub snapshot: fetch the weights of exactly this commit
            resolved = resolve(f"{resolved.source}@{resolved.revision}", progress=progress is not None)
        build(resolved, weights, entry, root, say)
    return entry


def entry_name(resolved: Resolved, weights: str) -> str:
    key = json.dumps([resolved.key_material, weights, EXPORTER_VERSION])
    readable = resolved.source.replace("/", "--") if resolved.revision else Path(resolved.source).name
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', readable)[:80]}-{weights}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


# ---------------------------------------------------------------- building

def build(resolved: Resolved, weights: str, dest: Path, tmp_root: Path, say) -> Path:
    """Convert into a fresh temporary directory under `tmp_root`, then publish it as `dest` with one
    atomic rename. A crash at any point leaves either no `dest` or the previous one, never half of one."""
    # For a full-disk message: the room there was, and what was left when it failed (measured before
    # staged() removes the partial build, after which the disk looks roomy).
    free_at_start, free_at_failure = _free(tmp_root), None
    try:
        with staged(dest, tmp_root) as tmp:
            try:
                from . import convert  # imports torch lazily: only here, when a conversion is really needed

                say(f"Converting {resolved.source} to OpenVINO IR with {weights} weights; this is done once, "
                    f"later launches load {dest}")
                convert.convert_checkpoint(resolved.path, tmp, weights=weights, progress=say)
                missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
                if missing:
                    raise ConversionError(f"The conversion of {resolved.source} did not produce {', '.join(missing)}.")
                _write_manifest(tmp, resolved, weights)
            except Exception:
                free_at_failure = _free(tmp_root)
                raise
    except JanusError:
        raise
    except MemoryError:
        raise ConversionError(f"Ran out of memory converting {resolved.source}. Close other programs, or use a "
                              f"converted model (`python -m janus_ov export` on a bigger machine).") from None
    except BaseException as e:
        if not isinstance(e, Exception):
            raise  # KeyboardInterrupt / SystemExit: clean up and let them through
        if full := disk_full(tmp_root, e, resolved.path, free_at_start, free_at_failure):
            raise ConversionError(f"Converting {resolved.source} failed: {full}") from None
        raise ConversionError(f"Converting {resolved.source} to OpenVINO IR failed ({type(e).__name__}: {e}). "
                              f"Nothing was cached; check the checkpoint is complete and supported.") from e
    _stamp(dest, tmp_root, json.loads((dest / MANIFEST).read_text(encoding="utf-8")))  # we just hashed every file ourselves
    say(f"Saved the converted model to {dest}")
    return dest


def disk_full(root: Path, error: BaseException, source: Path | None = None, free_at_start: int | None = None,
              free_at_failure: int | None = None) -> str | None:
    """A readable sentence if `error` came from a full disk under `root` (OpenVINO's writer says only
    "basic_ios::clear: iostream error", safetensors "No space left on device"), else None.
    free_at_start / free_at_failure: free bytes before the work began (the room there was to fill) and
    when it failed (default: now)."""
    import errno

    text = f"{error} {error.__cause__ or ''}"
    if getattr(error, "errno", None) != errno.ENOSPC and not any(
            words in text for words in ("No space left", "iostream error", "ENOSPC")):
        return None
    free = _free(root) if free_at_failure is None else free_at_failure
    if free is None:
        return None
    if "iostream error" in text and free > 2**30:
        return None  # not the disk, then
    room = f"{_size(free)} free" if free_at_start is None else f"{_size(free_at_start)} were free when the conversion started"
    need = ""
    if source is not None and Path(source).is_dir():
        size = sum(f.stat().st_size for f in Path(source).rglob("*") if f.is_file())
        need = f"; leave at least the checkpoint's size, {_size(size)}, free there"
    return (f"the disk holding {root} is full ({room}{need}). Nothing was cached: free some "
            f"space, or set {ENV_VAR} / --cache-dir to a disk with room.")


def _free(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{max(n, 0) / 2**20:.0f} MiB"


def _write_manifest(directory: Path, resolved: Resolved, weights: str) -> dict:
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {
        "format": MANIFEST_FORMAT,
        "exporter_version": EXPORTER_VERSION,
        "versions": {name: _version(name) for name in ("openvino", "nncf", "transformers", "torch", "huggingface_hub")},
        "source": resolved.source,
        "revision": resolved.revision,
        "key_material": resolved.key_material,
        "weights": weights,
        "parts": list(PARTS),
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_id": uuid.uuid4().hex,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)  # reads package metadata; does not import the package
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- verification

def verify(directory: Path, stamp_root: Path, expect: dict | None = None) -> str | None:
    """Why `directory` must not be loaded, or None if it is a complete, intact converted model.

    Every load checks the manifest (format, exporter version, `expect`ed key), that every file is
    present with its recorded size, and the SHA-256 of every file except the .bin weights (KBs to a
    few MB). The .bin files (up to GBs) are fully hashed only when they changed since the last full
    check: a stamp records their size, mtime, ctime and inode at that time. Writing a byte changes
    ctime and ctime cannot be set back by anyone, so a flipped byte (same size) always triggers a
    full hash, while an untouched multi-GB model starts without reading its weights twice.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return "it does not exist"
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        return "its manifest.json is missing"
    except (ValueError, KeyError, TypeError) as e:
        return f"its manifest.json is unreadable ({type(e).__name__})"
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("exporter_version") != EXPORTER_VERSION:
        return (f"it was made by exporter version {manifest.get('exporter_version')}, this janus_ov needs "
                f"version {EXPORTER_VERSION}")
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            return f"its manifest says {key} {manifest.get(key)!r}, expected {value!r}"
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        return f"its manifest lacks {', '.join(missing)}"
    for name, meta in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {meta['size']}"
    trusted = _stamp_matches(directory, stamp_root, manifest)
    for name in files:
        if (not trusted or not name.endswith(".bin")) and _sha256(directory / name) != files[name]["sha256"]:
            return f"{name} is corrupt (its checksum does not match the manifest)"
    if not trusted:
        _stamp(directory, stamp_root, manifest)
    return None


def _stamp_path(directory: Path, stamp_root: Path) -> Path:
    return stamp_root / ".verified" / (hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:32] + ".json")


def _file_ids(directory: Path, manifest: dict) -> dict:
    ids = {}
    for name in manifest["files"]:
        st = (directory / name).stat()
        ids[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return ids


def _stamp_matches(directory: Path, stamp_root: Path, manifest: dict) -> bool:
    try:
        stamp = json.loads(_stamp_path(directory, stamp_root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == {"build_id": manifest.get("build_id"), "files": _file_ids(directory, manifest)}


def _stamp(directory: Path, stamp_root: Path, manifest: dict) -> None:
    path = _stamp_path(directory, stamp_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps({"build_id": manifest.get("build_id"), "files": _file_ids(directory, manifest)}))
        os.replace(tmp, path)
    except OSError:
        pass  # read-only cache root: we simply verify fully again next time


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- ready-made exports

def _use_export(directory: Path, weights: str, stamp_root: Path, say) -> Path:
    problem = verify(directory, stamp_root)
    if problem:
        raise ConversionError(
            f"The converted model in {directory} cannot be used: {problem}. It was not loaded. Export it again "
            f"with `python -m janus_ov export --model <checkpoint> --output {directory}`, or pass the original "
            f"checkpoint (a Hub id or folder) to convert it into the cache.")
    have = json.loads((directory / MANIFEST).read_text(encoding="utf-8")).get("weights")
    note = "" if have == weights else f" (it holds {have} weights; the requested {weights} does not apply)"
    say(f"Using the converted model in {directory}{note}")
    return directory


# ---------------------------------------------------------------- locking and cleanup

@contextmanager
def staged(dest: Path, tmp_root: Path):
    """A fresh temporary directory under `tmp_root` to build `dest` in; when the block completes it is
    published as `dest` with one atomic rename, otherwise removed. A crash at any point leaves either
    no `dest` or the previous one, never half of one (and `_clean_stale_builds` sweeps the litter)."""
    tmp = tmp_root / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.rename(tmp, dest)  # atomic on one filesystem; fails if dest exists, which the caller removed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class entry_lock:
    """An exclusive per-entry lock. flock-based, so a lock left by a killed process is free again."""

    def __init__(self, root: Path, name: str, say):
        from filelock import FileLock, Timeout

        try:
            (root / ".locks").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConversionError(f"Cannot write to the model cache {root} ({e.strerror}). Set {ENV_VAR} to a "
                                  f"writable directory, or pass a converted model folder.") from None
        self.lock, self.timeout, self.name, self.say = FileLock(root / ".locks" / f"{name}.lock"), Timeout, name, say

    def __enter__(self):
        try:
            self.lock.acquire(timeout=1)
        except self.timeout:
            self.say(f"Waiting for another process that is converting {self.name}...")
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _discard(path: Path, root: Path) -> None:
    # Rename first (atomic), so nobody can see a half-deleted entry under its real name.
    trash = root / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_stale_builds(root: Path, own: str) -> None:
    """Remove temporary build dirs left by killed processes. A build dir is live only while its
    builder holds the entry's lock: ours we hold, others we probe without waiting."""
    from filelock import FileLock, Timeout

    for tmp in root.glob(".t*-*"):
        if not tmp.name.startswith((".tmp-", ".trash-")):
            continue
        name = tmp.name.split("-", 1)[1].rsplit("-", 1)[0]
        if name == own or tmp.name.startswith(".trash-"):
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        try:
            with FileLock(root / ".locks" / f"{name}.lock", timeout=0):
                shutil.rmtree(tmp, ignore_errors=True)
        except Timeout:
            pass  # someone is building it right now
