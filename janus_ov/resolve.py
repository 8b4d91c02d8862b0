"""Turn a model argument (Hub id[@revision] or local directory) into a local directory.

Hub ids are fetched with huggingface_hub (token from HF_TOKEN, only the files a conversion
needs, the Hub's own progress bars) into the standard Hub cache, so offline use and sharing
with other HF tools just work. Every failure becomes one ModelNotFoundError paragraph that
says what happened and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_MODEL = "deepseek-ai/Janus-Pro-1B"  # the Janus most users know; original format (deepseek_format.py)
MANIFEST = "manifest.json"  # present in a folder that already holds a converted model (see cache.py)

# Small files describing a checkpoint (or an export); fetched first, and hashed fully for local dirs.
META_PATTERNS = ["config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "chat_template.json", "chat_template.jinja", "*.safetensors.index.json",
                 "pytorch_model*.bin.index.json", MANIFEST, "model_info.json"]
WEIGHT_PATTERNS = ["*.safetensors", "pytorch_model*.bin"]
JANUS_MODEL_TYPES = ("janus", "multi_modality")  # transformers format / DeepSeek's original format

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WHAT_TO_DO = ("pass a local directory that holds a Janus checkpoint or a converted model, "
               "or run with --tiny-demo to try everything on a tiny random model")


@dataclass
class Resolved:
    path: Path  # local directory: a checkpoint, or an export holding manifest.json
    source: str  # the Hub id, or the absolute local path
    revision: str | None  # Hub commit sha; None for local directories
    key_material: str  # identifies the exact weights: "hub:<id>@<sha>" or "local:<content hash>"

    @property
    def is_export(self) -> bool:
        return (self.path / MANIFEST).is_file()


def resolve(model: str, progress: bool = True, fetch_weights: bool = True) -> Resolved:
    """`fetch_weights=False` fetches only a Hub repo's small files (enough to know its commit and
    whether it ships an export), so a model that is already converted is not downloaded again."""
    model = str(model).strip()
    path = Path(model).expanduser()
    if path.exists():
        return _resolve_local(path)
    repo_id, _, revision = model.partition("@")
    if not _HUB_ID.match(repo_id) or model.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"The model path '{model}' does not exist. Check the path, {_WHAT_TO_DO}. "
                                 f"A Hub id looks like '{DEFAULT_MODEL}' (optionally '@<revision>').")
    return _resolve_hub(repo_id, revision or None, progress, fetch_weights)


# ---------------------------------------------------------------- local directories

def _resolve_local(path: Path) -> Resolved:
    path = path.resolve()
    if not path.is_dir():
        raise ModelNotFoundError(f"'{path}' is a file, not a model directory; {_WHAT_TO_DO}.")
    if not (path / MANIFEST).is_file():
        problem = _janus_checkpoint_problem(path)
        if problem:
            raise ModelNotFoundError(
                f"'{path}' is not a Janus checkpoint: {problem}. A checkpoint folder holds config.json "
                f"(model_type 'janus' or 'multi_modality'), the tokenizer and *.safetensors or pytorch_model*.bin "
                f"weights; a converted folder holds the manifest.json written by `python -m janus_ov export`. "
                f"Pass such a folder or a Hub id such as '{DEFAULT_MODEL}', or run with --tiny-demo to try "
                f"everything on a tiny random model.")
    return Resolved(path, str(path), None, "local:" + content_key(path))


def _janus_checkpoint_problem(path: Path) -> str | None:
    config = path / "config.json"
    if not config.is_file():
        return "it has no config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError) as e:
        return f"its config.json is not valid JSON ({e})"
    if model_type not in JANUS_MODEL_TYPES:
        return f"its config.json says model_type '{model_type}', not 'janus' or 'multi_modality'"
    if not _matching_files(path, WEIGHT_PATTERNS):
        return "it has no weight files (*.safetensors or pytorch_model*.bin)"
    return None


def _matching_files(root: Path, patterns) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                  p.relative_to(root).parts) and any(fnmatch(p.relative_to(root).as_posix(), pat) for pat in patterns))


_SAMPLE_THRESHOLD = 8 << 20
_SAMPLES, _SAMPLE_SIZE = 32, 64 << 10


def content_key(root: Path) -> str:
    """A hash of what a conversion reads from `root`, cheap enough to compute on every launch.

    Config and tokenizer files are hashed fully. Weight files are hashed by name, size and 32
    evenly spaced 64 KiB samples (first and last included): a full SHA-256 of a 15 GB 7B
    checkpoint would cost seconds to minutes on every start. Sampling still catches any
    re-saved or fine-tuned checkpoint, since new weights change bytes everywhere. We avoid
    mtimes on purpose: copying a checkpoint (cp, rsync, docker layers) changes them and would
    force a pointless multi-minute reconversion.
    """
    digest = hashlib.sha256()
    for file in _matching_files(root, META_PATTERNS + WEIGHT_PATTERNS):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(file, "rb") as f:
            if size <= _SAMPLE_THRESHOLD:
                digest.update(f.read())
                continue
            for i in range(_SAMPLES):
                f.seek((size - _SAMPLE_SIZE) * i // (_SAMPLES - 1))
                digest.update(f.read(_SAMPLE_SIZE))
    return digest.hexdigest()


# ---------------------------------------------------------------- Hugging Face Hub

def _resolve_hub(repo_id: str, revision: str | None, progress: bool, fetch_weights: bool) -> Resolved:
    # Two passes: the small files first; if they include a manifest the repo already ships a
    # converted model and we fetch exactly its files instead of the PyTorch weights.
    snapshot = _download(repo_id, revision, META_PATTERNS, progress)
    sha = snapshot.name  # snapshot folders are named after the resolved commit
    manifest = snapshot / MANIFEST
    if manifest.is_file():
        patterns = sorted(json.loads(manifest.read_text(encoding="utf-8")).get("files", {}))
    else:
        problem = _janus_checkpoint_problem_meta(snapshot)
        if problem:
            raise ModelNotFoundError(f"The Hub repo '{repo_id}' is not a Janus checkpoint: {problem}. Use a Janus "
                                     f"model such as '{DEFAULT_MODEL}', or {_WHAT_TO_DO}.")
        patterns = WEIGHT_PATTERNS if fetch_weights else None
    if patterns:
        snapshot = _download(repo_id, sha, patterns, progress)  # pinned: both passes see the same commit
    return Resolved(snapshot, repo_id, sha, f"hub:{repo_id}@{sha}")


def _janus_checkpoint_problem_meta(path: Path) -> str | None:
    problem = _janus_checkpoint_problem(path)
    return None if problem and "no weight files" in problem else problem  # weights come in pass two


def _download(repo_id: str, revision: str | None, patterns, progress: bool) -> Path:
    from huggingface_hub import snapshot_download

    sweep_dead_partials(repo_id)
    kwargs = {} if progress else {"tqdm_class": _SilentTqdm()}
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, **kwargs))
    except Exception as e:  # noqa: BLE001 - every Hub failure becomes one clear paragraph
        raise _hub_error(e, repo_id, revision) from None


def sweep_dead_partials(repo_id: str) -> list[Path]:
    """Delete the partial blobs a killed download of `repo_id` left in the Hub cache; returns them.

    huggingface_hub downloads each file to a process-unique `<etag>.<id>.incomplete` blob while it
    holds `.locks/<repo>/<etag>.lock`, and never resumes or removes one whose process died: a killed
    first launch would leave up to gigabytes there for good. A partial whose lock we can take has no
    live writer (a download under way holds it), so it goes.
    """
    from filelock import FileLock, Timeout
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    blobs = Path(constants.HF_HUB_CACHE) / folder / "blobs"
    removed = []
    for etag in sorted({p.name.split(".")[0] for p in blobs.glob("*.incomplete")}):
        lock = FileLock(Path(constants.HF_HUB_CACHE) / ".locks" / folder / f"{etag}.lock")
        try:
            with lock.acquire(timeout=0):
                for partial in blobs.glob(f"{etag}.*incomplete"):
                    partial.unlink(missing_ok=True)
                    removed.append(partial)
        except (Timeout, OSError):
            continue  # being downloaded right now, or not ours to touch
    return removed


def _SilentTqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def _hub_error(e: Exception, repo_id: str, revision: str | None) -> Exception:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"'{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    token = "HF_TOKEN is set, but that account has no access" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"
    if isinstance(e, GatedRepoError):
        return ModelNotFoundError(
            f"The Hub repo '{repo_id}' is gated: you must accept its conditions on "
            f"{constants.ENDPOINT}/{repo_id} and set HF_TOKEN to an access token of that account ({token}). "
            f"Alternatively {_WHAT_TO_DO}.")
    if isinstance(e, RevisionNotFoundError):
        return ModelNotFoundError(f"The Hub repo '{repo_id}' has no revision '{revision}'. Use a branch, tag or "
                                  f"commit that exists, or drop '@{revision}' to use the main branch.")
    if isinstance(e, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"No model '{repo_id}' was found on the Hub, and there is no local directory of that name. Check the "
            f"spelling (e.g. '{DEFAULT_MODEL}'); if the repo is private, set HF_TOKEN ({token}). "
            f"Or {_WHAT_TO_DO}.")
    offline = constants.HF_HUB_OFFLINE
    if offline or isinstance(e, LocalEntryNotFoundError) or type(e).__name__ == "IncompleteSnapshotError":
        why = ("the Hub is switched off (HF_HUB_OFFLINE=1)" if offline else
               f"the Hugging Face Hub at {constants.ENDPOINT} cannot be reached")
        fix = "unset HF_HUB_OFFLINE" if offline else "check your internet connection, proxy and HF_ENDPOINT"
        return ModelNotFoundError(
            f"Cannot fetch {where}: {why}, and it is not (completely) in the local Hub cache "
            f"({constants.HF_HUB_CACHE}). To fix it, {fix} and try again, or {_WHAT_TO_DO}.")
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", "?")
        return ModelNotFoundError(f"The Hugging Face Hub answered HTTP {status} while fetching {where}: "
                                  f"{str(e).splitlines()[0]}. Try again later, or {_WHAT_TO_DO}.")
    if isinstance(e, OSError):  # disk full, permissions on the Hub cache, ...
        return ModelNotFoundError(f"Could not store {where} in the Hub cache ({constants.HF_HUB_CACHE}): {e}. "
                                  f"Free space or point HF_HOME elsewhere, or {_WHAT_TO_DO}.")
    return ModelNotFoundError(f"Could not fetch {where} from the Hub ({type(e).__name__}: {e}). Try again, or {_WHAT_TO_DO}.")
