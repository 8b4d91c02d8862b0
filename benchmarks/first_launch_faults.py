"""A first launch killed (SIGKILL) or starved of disk at each of its stages, then launched again.

A first launch downloads a checkpoint from the Hub, converts it part by part to OpenVINO IR
(compressing weights with NNCF), writes manifest.json and renames the staged directory into
the cache (janus_ov/cache.py). Every stage is faulted here, and the next, normal launch must
recover: it loads, its files and greedy answer equal a clean build's, no staging or temp
litter is left, and no half-written entry is ever trusted (`verify` accepts a published
entry only when it is complete).

Faults are placed by watching what the real launch does, never by changing janus_ov:

| stage              | where the launch is SIGKILLed                                                      |
|--------------------|------------------------------------------------------------------------------------|
| download           | mid-file: the fake Hub has sent half of model.safetensors and stalls               |
| after:<part>       | that part's IR is saved (the converter announces the next part)                    |
| compress:<part>    | inside NNCF's compression of that part (its second weight)                         |
| before_manifest    | every part saved, manifest.json not opened yet (= after:vq_decoder)                |
| at_rename          | manifest.json written and closed, the staged dir not renamed yet                   |
| after_rename       | the entry published, its verification stamp not written yet                        |
| random             | at a uniformly random time within a clean first launch's duration                  |
| disk:<where>:<n>   | no kill: the model (or Hub) cache is on a tmpfs with n bytes free; room is made    |

The in-process points use what a launch does anyway: its `progress` messages, Python audit
events (open / os.rename / os.mkdir, `sys.addaudithook`) and, for NNCF, a profile hook on
its per-weight function; the process then SIGKILLs itself, which is what a kill from outside
at that instant does. This module is also the launched process (`--child`).

The suite runs a fast subset (tests/test_first_launch_faults.py); this script runs every stage
as an independent trial (victim, then a recovery launch) `--rounds` times, plus random kill
times and a sweep of free space, and writes benchmarks/results/<date>-<machine>-first-launch-faults.json:

    python -m benchmarks.first_launch_faults --rounds 3          # needs root for the tmpfs sweep
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("vision", "text_embeddings", "language_model", "lm_head", "gen_embeddings", "gen_head", "vq_decoder")
MODEL_FILE = "model.safetensors"
REPO_ID = "org/tiny"
MARK = "@@first-launch "  # prefixes the launched process's event lines (libraries print to stdout too)
CHAT = [{"role": "user", "content": "Describe a cat on a sofa."}]
CHAT_TOKENS = 12


def all_stages() -> list[str]:
    """Every stage, in the order a first launch reaches them."""
    stages = ["download"]
    for part in PARTS[:-1]:
        if part in ("vision", "language_model"):
            stages.append(f"compress:{part}")
        stages.append(f"after:{part}")
    return stages + ["before_manifest", "at_rename", "after_rename"]


# ---------------------------------------------------------------- the launched process

def _emit(event: str, **data) -> None:
    sys.stdout.write(MARK + json.dumps({"event": event, "t": round(time.time(), 3), **data}) + "\n")
    sys.stdout.flush()


class KillPoint:
    """Kills this process at one stage of ensure_converted (see the table in the module doc)."""

    def __init__(self, stage: str | None):
        self.stage = "before_manifest" if stage == f"after:{PARTS[-1]}" else stage
        self.renamed = self.manifest = False
        self.compressions = 0
        sys.addaudithook(self.audit)  # also tells where a full disk stopped a launch (the manifest or before)

    def die(self, landed: str | None = None) -> None:
        _emit("kill", stage=landed or self.stage)
        os.kill(os.getpid(), signal.SIGKILL)

    def progress(self, message: str) -> None:
        _emit("progress", message=message)
        kind, _, part = (self.stage or "").partition(":")
        if kind == "after" and message.startswith(f"Converting {PARTS[PARTS.index(part) + 1]} ("):
            self.die()
        if kind == "compress" and message.startswith(f"Converting {part} ("):
            sys.setprofile(self.profile)  # only while this part is traced and compressed (main thread)
        elif kind == "compress" and message.startswith("Converting ") and sys.getprofile():
            self.die(f"after:{part}")  # the part had fewer than two weights to compress: say so

    def profile(self, frame, event, arg) -> None:
        # NNCF's OpenVINO backend builds one compressed constant per weight in this method.
        if event == "call" and frame.f_code.co_name == "_create_compression_subgraph":
            self.compressions += 1
            if self.compressions == 2:
                self.die()

    def audit(self, event: str, args) -> None:
        if event not in ("open", "os.rename", "os.mkdir") or not args or not isinstance(args[0], (str, os.PathLike)):
            return
        path = os.fspath(args[0])
        if not isinstance(path, str):
            return
        if event == "open" and not self.manifest and path.endswith("/manifest.json") \
                and Path(path).parent.name.startswith(".tmp-") and "w" in str(args[1]):
            self.manifest = True
            _emit("manifest")
            if self.stage == "before_manifest":
                self.die()
        elif event == "os.rename" and Path(path).name.startswith(".tmp-"):
            if self.stage == "at_rename":
                self.die()
            self.renamed = True
        elif self.stage == "after_rename" and self.renamed and "/.verified" in path:
            self.die()  # the first write after the rename is the stamp's directory


def child(spec: dict) -> int:
    """One launch: ensure_converted (or, with chat, what the app does: from_pretrained + one greedy answer)."""
    point = KillPoint(spec.get("kill"))
    _emit("start", pid=os.getpid())
    from janus_ov.errors import JanusError

    try:
        if not spec.get("chat"):
            from janus_ov.cache import ensure_converted

            path = ensure_converted(spec["model"], weights=spec["weights"], cache_dir=spec["cache"],
                                    progress=point.progress)
            _emit("done", path=str(path), torch="torch" in sys.modules)
            return 0
        from janus_ov.pipeline import JanusPipeline

        pipe = JanusPipeline.from_pretrained(spec["model"], weights=spec["weights"], cache_dir=spec["cache"],
                                             progress=point.progress)
        answer = str(pipe.chat(CHAT, max_new_tokens=CHAT_TOKENS))
        pipe.close()
        _emit("done", path=str(pipe.model_dir), answer=answer, torch="torch" in sys.modules)
        if spec.get("hard_exit"):
            # About 1 exit in 12 after a chat aborts in teardown ("terminate called without an active
            # exception", a defect of its own, counted by the script); the suite skips teardown.
            os._exit(0)
        return 0
    except JanusError as e:  # what the app shows the user
        _emit("error", message=str(e), type=type(e).__name__)
        return 3


# ---------------------------------------------------------------- launching and killing

@dataclass
class Launch:
    kill: str | None  # the kill point asked for (None: a normal launch)
    returncode: int
    events: list
    stderr: str
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def messages(self) -> list[str]:
        return [e["message"] for e in self.events if e["event"] == "progress"]

    @property
    def killed_at(self) -> str | None:
        return next((e["stage"] for e in self.events if e["event"] == "kill"), None)

    @property
    def done(self) -> dict | None:
        return next((e for e in self.events if e["event"] == "done"), None)

    @property
    def error(self) -> str | None:
        return next((e["message"] for e in self.events if e["event"] == "error"), None)

    @property
    def crashed_at_exit(self) -> bool:
        """Finished its work, then aborted in interpreter teardown (see child())."""
        return self.done is not None and self.returncode == -signal.SIGABRT

    @property
    def converted(self) -> bool:
        return any(m.startswith("Converting ") and "to OpenVINO IR" in m for m in self.messages)

    def summary(self) -> dict:
        return {"kill": self.kill, "killed_at": self.killed_at, "returncode": self.returncode,
                "seconds": round(self.seconds, 2), "converted": self.converted, "error": self.error,
                "answered": bool(self.done and "answer" in self.done), "crashed_at_exit": self.crashed_at_exit,
                "last_message": (self.messages or [None])[-1], **self.extra}


def launch_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "JANUS_OV_"))}
    # A stalled download must wait for our kill, not time out and retry on its own.
    env.update(PYTHONPATH=str(REPO), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DOWNLOAD_TIMEOUT="120",
               TOKENIZERS_PARALLELISM="false", PYTHONIOENCODING="utf-8")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(model, cache: Path, weights: str, kill: str | None = None, chat: bool = False, hard_exit: bool = False,
          **env):
    spec = {"model": str(model), "cache": str(cache), "weights": weights, "kill": kill, "chat": chat,
            "hard_exit": hard_exit}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.first_launch_faults", "--child", json.dumps(spec)],
                            cwd=REPO, env=launch_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            encoding="utf-8", errors="replace")
    proc.started, proc.kill_point = time.perf_counter(), kill
    return proc


def finish(proc, timeout: float = 900) -> Launch:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    events = [json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK)]
    return Launch(proc.kill_point, proc.returncode, events, err[-4000:], time.perf_counter() - proc.started)


def run(model, cache: Path, weights: str, kill: str | None = None, chat: bool = False, hard_exit: bool = False,
        **env) -> Launch:
    return finish(start(model, cache, weights, kill, chat, hard_exit, **env))


def hub_partials(hf_home: Path) -> list[Path]:
    """huggingface_hub's partial downloads (`<etag>.<id>.incomplete` blobs)."""
    return sorted(Path(hf_home).rglob("*.incomplete")) if Path(hf_home).exists() else []


def kill_mid_download(hub, hf_home: Path, model, cache: Path, weights: str, **env) -> Launch:
    """A launch SIGKILLed while model.safetensors is half downloaded: the fake Hub has sent half the
    file and stalls, and the client's partial file exists. (huggingface_hub writes in 10 MiB chunks,
    so for the tiny model the half is still in the client's buffer and the partial file is empty.)"""
    size = (Path(hub.repos[REPO_ID]) / MODEL_FILE).stat().st_size
    hub.stall(MODEL_FILE, size // 2)
    proc = start(model, cache, weights, HF_HOME=hf_home, **env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if hub.stalled.is_set() and hub.sent.get(MODEL_FILE, 0) >= size // 2 and hub_partials(hf_home):
            break
        time.sleep(0.05)
    partial = sum(p.stat().st_size for p in hub_partials(hf_home) if p.exists())
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    result = finish(proc)
    hub.release()
    result.kill = "download"
    result.extra = {"sent_bytes": hub.sent.get(MODEL_FILE, 0), "file_bytes": size, "partial_file_bytes": partial}
    return result


def kill_at_random(model, cache: Path, weights: str, within_s: float, rng: random.Random, **env) -> Launch:
    delay = rng.uniform(0, within_s)
    proc = start(model, cache, weights, **env)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    result = finish(proc)
    result.kill, result.extra = "random", {"delay_s": round(delay, 2)}
    return result


# ---------------------------------------------------------------- looking at a cache

def published(root: Path) -> list[Path]:
    """What a launch could load: the entries under their real names ('compiled' is OpenVINO's blob cache)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "compiled")


def litter(root: Path) -> list[str]:
    """Staging, trash and temp files a finished launch must not leave behind."""
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    return found + [f".verified/{p.name}" for p in (root / ".verified").glob("*.tmp")]


def files_of(directory: Path) -> dict:
    """name -> sha256 of every file the manifest lists (the manifest itself left out)."""
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    return {name: meta["sha256"] for name, meta in manifest["files"].items()}


def build_id(directory: Path) -> str | None:
    try:
        return json.loads((directory / "manifest.json").read_text(encoding="utf-8")).get("build_id")
    except (OSError, ValueError):
        return None


def locks_free(root: Path) -> bool:
    """A killed builder's lock must be free again (flock dies with its process)."""
    from filelock import FileLock, Timeout

    try:
        for lock in (root / ".locks").glob("*.lock"):
            with FileLock(lock, timeout=10):
                pass
    except Timeout:
        return False
    return True


def state(root: Path) -> dict:
    """The cache as a killed or failed launch left it. `verify` runs with stamps kept elsewhere, so
    looking changes nothing the next launch reads."""
    from janus_ov.cache import verify

    with tempfile.TemporaryDirectory() as stamps:
        entries = {p.name: verify(p, Path(stamps)) for p in published(root)}
        staging = {p.name: verify(p, Path(stamps)) for p in sorted(root.glob(".tmp-*"))} if root.is_dir() else {}
    return {"root": str(root), "published": entries, "staged": staging,
            "staged_files": {n: sorted(p.name for p in (root / n).iterdir()) for n in staging},
            "staged_build_ids": [build_id(root / n) for n in staging], "litter": litter(root),
            "locks_free": locks_free(root)}


# ---------------------------------------------------------------- judging a fault and its recovery

def judge_fault(stage: str, victim: Launch, after: dict, reference: dict) -> list[str]:
    """What is wrong with the cache a faulted launch left. A published entry must be complete and
    equal to the clean build: that is the only thing a later launch ever trusts."""
    problems = []
    if stage.startswith("disk:"):
        problems += _judge_disk_error(victim)
    elif stage != "random" and victim.returncode != -signal.SIGKILL:
        problems.append(f"the launch was not killed at {stage} (returncode {victim.returncode}, "
                        f"killed_at {victim.killed_at}): {victim.stderr[-800:]}")
    for name, verdict in after["published"].items():
        if verdict is not None:
            continue  # published but refused: the next launch must rebuild it (checked there)
        if files_of(Path(after["root"]) / name) != files_of(Path(reference["root"]) / reference["name"]):
            problems.append(f"HALF-WRITTEN ENTRY TRUSTED: verify accepts {name} but its files differ from a clean build")
    if after["published"] and stage not in ("after_rename", "random") and not stage.startswith("disk:"):
        problems.append(f"an entry was published before the rename: {sorted(after['published'])}")
    if stage.startswith("disk:") and victim.error and (after["published"] or after["litter"]):
        problems.append(f"a failed build left {sorted(after['published'])} / {after['litter']} on the full disk")
    if not after["locks_free"]:
        problems.append("the dead launch's entry lock is still held")
    return problems


def _judge_disk_error(victim: Launch) -> list[str]:
    if victim.returncode == 0 and victim.done:
        return []  # there was room enough
    if victim.returncode != 3 or not victim.error:
        return [f"a full disk gave returncode {victim.returncode}, not a clear error: {victim.stderr[-500:]}"]
    problems = [] if disk_message_is_clear(victim.error) else [f"unclear full-disk message: {victim.error!r}"]
    return problems + (["a traceback reached the user"] if "Traceback" in victim.stderr else [])


def message_notes(victim: Launch) -> list[str]:
    """Numbers in a full-disk message that mislead (reported, not counted as failures)."""
    notes = []
    error = victim.error or ""
    if "is full (" in error and "when the conversion started" not in error:
        notes.append("gives the free space measured after the failed build was removed, not the room there was")
    if "0.0 GiB" in error:
        notes.append("gives a size as 0.0 GiB")
    return notes


def disk_message_is_clear(message: str) -> bool:
    """Names the disk (or the Hub cache) and says it is out of space, with what to do."""
    text = message.lower()
    return ("is full" in text or "no space left" in text) and ("free" in text or "space" in text) and "/" in message


def judge_recovery(recovery: Launch, after: dict, root: Path, reference: dict) -> list[str]:
    """The normal launch after a fault: loads, equals the clean build, leaves no litter, and never
    adopts a staged dir (its build id is new) or a refused entry."""
    from janus_ov.cache import verify

    done = recovery.done
    if done is None or (recovery.returncode != 0 and not recovery.crashed_at_exit):
        return [f"the next launch failed (returncode {recovery.returncode}): {recovery.error or recovery.stderr[-1500:]}"]
    path = Path(done["path"])
    problems = []
    if path.parent != root or path.name.startswith("."):
        problems.append(f"the next launch loaded {path}, not a published entry of {root}")
        return problems
    complete_before = [n for n, verdict in after["published"].items() if verdict is None]
    if recovery.converted == (path.name in complete_before):
        problems.append(f"converted={recovery.converted} although a complete entry existed: {complete_before}")
    with tempfile.TemporaryDirectory() as stamps:
        if (verdict := verify(path, Path(stamps))) is not None:
            problems.append(f"the loaded entry does not verify: {verdict}")
            return problems
    if files_of(path) != files_of(Path(reference["root"]) / reference["name"]):
        problems.append("the recovered entry's files differ from a clean build's")
    if reference.get("answer") is not None and done.get("answer") != reference["answer"]:
        problems.append(f"answer {done.get('answer')!r} differs from a clean cache's {reference['answer']!r}")
    if build_id(path) in [b for b in after["staged_build_ids"] if b]:
        problems.append("the next launch published a staged dir of the killed launch (adopted, not rebuilt)")
    if litter(root):
        problems.append(f"litter left after the next launch: {litter(root)}")
    return problems


# ---------------------------------------------------------------- a small disk

def mount_tmpfs(point: Path, size: str) -> str | None:
    """Mounts a tmpfs of `size` at `point`; the error text if that is not possible (needs root)."""
    point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True,
                          encoding="utf-8", errors="replace")
    return (done.stderr.strip() or f"mount exited {done.returncode}") if done.returncode else None


def umount(point: Path) -> None:
    subprocess.run(["umount", str(point)], check=False, capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, leave_free: int, name: str = "filler.bin") -> Path:
    """A file that leaves `leave_free` bytes of room on `disk` (rounded to its pages)."""
    filler = disk / name
    size = max(free_bytes(disk) - leave_free, 0)
    with open(filler, "wb") as f:
        if size:
            os.posix_fallocate(f.fileno(), 0, size)
    return filler


def allocated(directory: Path, page: int = 4096) -> int:
    """The bytes a directory's files take on a tmpfs (each file rounded up to whole pages)."""
    return sum(-(-p.stat().st_size // page) * page for p in directory.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the script's trials

class Bench:
    """Independent trials: each gets its own cache (and Hub cache), a victim and a recovery launch."""

    def __init__(self, args, work: Path):
        sys.path.insert(0, str(REPO / "tests"))  # the loopback fake Hub lives with the tests
        from fakehub import FakeHub

        from janus_ov.tiny import build_tiny_model

        self.args, self.work, self.rng = args, work, random.Random(args.seed)
        self.model_dir = build_tiny_model(work / "tiny-janus")
        self.hub = FakeHub()
        self.hub.repos[REPO_ID] = self.model_dir
        self.reference = self.clean_reference()

    def close(self):
        self.hub.close()

    def env(self, hf_home: Path) -> dict:
        return {"HF_ENDPOINT": self.hub.url, "HF_HOME": hf_home}

    def clean_reference(self) -> dict:
        """A clean first launch (no faults) from the fake Hub, with a greedy answer."""
        root, hf = self.work / "clean" / "cache", self.work / "clean" / "hf"
        result = run(REPO_ID, root, self.args.weights, chat=True, **self.env(hf))
        if result.returncode or not result.done:
            raise SystemExit(f"the clean first launch failed: {result.stderr[-3000:]}")
        path = Path(result.done["path"])
        t = {e["message"]: e["t"] for e in result.events if e["event"] == "progress"}
        start = next(e["t"] for e in result.events if e["event"] == "start")
        saved = next(v for m, v in t.items() if m.startswith("Saved the converted model"))
        return {"root": str(root), "name": path.name, "answer": result.done["answer"], "seconds": result.seconds,
                "conversion_s": round(saved - start, 2), "bytes": sum(p.stat().st_size for p in path.iterdir()),
                "tmpfs_bytes": allocated(path)}

    def trial(self, stage: str, index: int) -> dict:
        work = self.work / f"{index:03d}-{stage.replace(':', '-')}"
        root, hf = work / "cache", work / "hf"
        if stage.startswith("disk:"):
            return self.disk_trial(stage, work)
        if stage == "download":
            victim = self.download_victim(root, hf)
        elif stage == "random":
            # Killed within the time a clean first launch took to publish (+1 s to start), unless told.
            within = self.args.random_within or self.reference["conversion_s"] + 1
            victim = kill_at_random(REPO_ID, root, self.args.weights, within, self.rng, **self.env(hf))
        else:
            victim = run(REPO_ID, root, self.args.weights, kill=stage, **self.env(hf))
        return self.recover(stage, victim, root, hf, work)

    def download_victim(self, root: Path, hf: Path) -> Launch:
        """Stalls are per file name on a hub: a hub of its own keeps other trials' downloads whole."""
        from fakehub import FakeHub

        hub = FakeHub()
        hub.repos[REPO_ID] = self.model_dir
        try:
            return kill_mid_download(hub, hf, REPO_ID, root, self.args.weights, HF_ENDPOINT=hub.url)
        finally:
            hub.close()

    def recover(self, stage: str, victim: Launch, root: Path, hf: Path, work: Path) -> dict:
        after = {**state(root), "root": str(root)}
        partials = len(hub_partials(hf))
        recovery = run(REPO_ID, root, self.args.weights, chat=True, **self.env(hf))
        problems = judge_fault(stage, victim, after, self.reference)
        problems += judge_recovery(recovery, after, root, self.reference)
        hub_litter = [p.name for p in hub_partials(hf)]
        record = {"stage": stage, "landed": landed(victim, after), "victim": victim.summary(),
                  "after_fault": {k: after[k] for k in ("published", "staged", "litter")},
                  "hub_partials_after_fault": partials, "recovery": recovery.summary(),
                  "hub_partials_after_recovery": hub_litter, "problems": problems, "ok": not problems,
                  "notes": message_notes(victim)}
        if not self.args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return record

    def disk_trial(self, stage: str, work: Path) -> dict:
        """`disk:cache:<bytes>`: the model cache on a tmpfs with that much room; `disk:hub:<bytes>`:
        the Hub cache on it instead. A normal launch, then the filler is deleted and one more."""
        _, where, leave = stage.split(":")
        disk = work / "disk"
        if (why := mount_tmpfs(disk, str(int(leave) + 3 * self.reference["tmpfs_bytes"] + (32 << 20)))) is not None:
            return {"stage": stage, "skipped": why, "ok": True, "problems": []}
        try:
            root = disk / "cache" if where == "cache" else work / "cache"
            # A full model cache is not about the download: use the clean launch's complete Hub cache.
            hf = disk / "hf" if where == "hub" else self.work / "clean" / "hf"
            filler = fill(disk, int(leave))
            victim = run(REPO_ID, root, self.args.weights, **self.env(hf))
            victim.extra = {"free_bytes": int(leave)}
            filler.unlink()  # make room
            return {**self.recover(stage, victim, root, hf, work), "free_bytes": int(leave), "disk": where}
        finally:
            umount(disk)
            shutil.rmtree(work, ignore_errors=True)

    def disk_sizes(self) -> list[str]:
        """Room left, from nothing to one page short: the Hub cache fills with the small files done
        or halfway through the weights; the model cache fills in the first parts, in the large VQ
        decoder, on the very last page; and one with room enough, as a control."""
        need = self.reference["tmpfs_bytes"]
        model = (Path(self.model_dir) / MODEL_FILE).stat().st_size
        hub = [f"disk:hub:{n}" for n in (64 << 10, model // 2)]
        return hub + [f"disk:cache:{n}" for n in (16 << 10, need // 20, need // 3, need - 4096, need + (1 << 20))]


def landed(victim: Launch, after: dict) -> str:
    """Where a kill really landed, from the launch's last message and what it left on disk."""
    if victim.killed_at:
        return victim.killed_at
    if victim.kill == "download" and victim.returncode == -signal.SIGKILL:
        return f"download ({victim.extra['sent_bytes']} of {victim.extra['file_bytes']} bytes sent)"
    if victim.returncode == 0:
        return "finished before the kill"
    if victim.error and any(e["event"] == "manifest" for e in victim.events):
        return "failed: writing manifest.json"
    if victim.error:
        return f"failed: {victim.messages[-1] if victim.messages else 'before converting'}"
    if after["published"]:
        return "after_rename"
    if any(v is None for v in after["staged"].values()):
        return "at_rename"
    last = (victim.messages or ["(before any message)"])[-1]
    return f"during: {last}"


def summarize(records: list[dict], bench: Bench, args, seconds: float) -> dict:
    from benchmarks import report

    by_stage: dict = {}
    for r in records:
        s = by_stage.setdefault(r["stage"].rsplit(":", 1)[0] if r["stage"].startswith("disk:") else r["stage"], {
            "trials": 0, "ok": 0, "skipped": 0, "victim_s": [], "recovery_s": [], "landed": {}, "problems": []})
        s["trials"] += 1
        s["ok"] += r["ok"]
        if r.get("skipped"):
            s["skipped"] += 1
            continue
        s["victim_s"].append(r["victim"]["seconds"])
        s["recovery_s"].append(r["recovery"]["seconds"])
        s["landed"][r["landed"]] = s["landed"].get(r["landed"], 0) + 1
        s["problems"] += r["problems"]
    for s in by_stage.values():
        for key in ("victim_s", "recovery_s"):
            s[key] = round(statistics.median(s[key]), 2) if s[key] else None
    hub_litter = sum(bool(r.get("hub_partials_after_recovery")) for r in records)
    notes = sorted({n for r in records for n in r.get("notes", [])})
    exit_crashes = sum(bool(r.get("recovery", {}).get("crashed_at_exit")) for r in records)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": report.machine(),
            "settings": {"rounds": args.rounds, "weights": args.weights, "random": args.random, "seed": args.seed,
                         "stages": args.stages, "disk": not args.no_disk},
            "reference": {k: bench.reference[k] for k in ("answer", "seconds", "conversion_s", "bytes", "tmpfs_bytes")},
            "seconds": round(seconds, 1), "trials": len(records), "failed": sum(not r["ok"] for r in records),
            "trials_with_hub_partials_left": hub_litter, "recoveries_crashed_at_exit": exit_crashes,
            "message_notes": notes, "by_stage": by_stage,
            "records": records}


def plan(bench: Bench, args) -> list[str]:
    one_round = []
    for stage in args.stages.split(",") if args.stages else ["disk", *all_stages(), "random"]:
        if stage == "disk":
            one_round += [] if args.no_disk else bench.disk_sizes()
        else:
            one_round += [stage] * (args.random if stage == "random" else 1)
    return one_round * args.rounds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=1, help="how many times every trial is repeated")
    parser.add_argument("--weights", default="int8", help="weight format of the launches (int4: slower NNCF)")
    parser.add_argument("--stages", default="", help="comma-separated subset of: disk (the free-space sweep), "
                        + ", ".join(all_stages()) + ", random (default: all)")
    parser.add_argument("--random", type=int, default=3, help="kills at random times per round")
    parser.add_argument("--random-within", type=float, default=0.0,
                        help="random kills within this many seconds of the start (default: the clean launch's "
                             "conversion time, which a busy machine stretches)")
    parser.add_argument("--no-disk", action="store_true", help="skip the tmpfs free-space sweep")
    parser.add_argument("--jobs", type=int, default=2, help="trials run at once")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--keep", action="store_true", help="keep each trial's cache for a look")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    return bench_main(args)


def bench_main(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks import report

    started = time.perf_counter()
    out = Path(args.out) / f"{datetime.now(timezone.utc):%Y-%m-%d}-{report.machine_slug()}-first-launch-faults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="first-launch-faults-") as work:
        bench = Bench(args, Path(work))
        try:
            trials = plan(bench, args)
            print(f"clean first launch: {bench.reference['seconds']:.1f} s; {len(trials)} trials", flush=True)
            records = []
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                for record in pool.map(bench.trial, trials, range(len(trials))):
                    records.append(record)
                    print(f"{record['stage']:>26}  {'ok ' if record['ok'] else 'BAD'}  "
                          f"{record.get('landed', record.get('skipped', ''))}  {'; '.join(record['problems'])}",
                          flush=True)
                    # Written after every trial: a run stopped early still leaves its results.
                    result = summarize(records, bench, args, time.perf_counter() - started)
                    write(out, {**result, "complete": len(records) == len(trials), "planned": len(trials)})
        finally:
            bench.close()
    print(json.dumps({k: result[k] for k in ("seconds", "trials", "failed", "trials_with_hub_partials_left")}))
    print(f"wrote {out}")
    return 1 if result["failed"] else 0


def write(path: Path, result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
