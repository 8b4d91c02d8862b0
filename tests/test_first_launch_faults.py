"""A first launch killed (SIGKILL) or starved of disk at each of its stages: the next launch always
recovers and no half-written entry is ever trusted. The fast part; every stage as an independent
trial, repeated, with random kill times and a sweep of free space, is benchmarks/first_launch_faults.py,
whose machinery this module uses (kill points, cache inspection, the judges).

A launch is faulted where the real code gets to (its progress messages, Python audit events, NNCF's
per-weight function; the fake Hub stalls a download), never by changing janus_ov. Conversions are
the cost (~35 s of a core each), so the faults form one chain, each followed by the next launch,
which must clean it up before it gets to its own fault, ending with a normal launch that must load
and answer (Hub cache and model cache on one tmpfs, a model from the fake Hub):

    Hub cache full -> download killed midway -> killed inside NNCF's compression of the language
    model -> model cache full -> killed just after the rename -> normal launch

Beside it, a local checkpoint is converted into an empty cache and killed at the rename: every file
is written and closed, manifest.json too (verify accepts the staged dir), exactly what a clean
launch publishes one rename later. That is the clean build everything is compared with, file by
file and by a greedy answer. (The launch after a kill at the rename is one more conversion: the
script runs it.) Without root (no tmpfs) the chain runs on an ordinary directory, no full disks.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fakehub import FakeHub

from benchmarks import first_launch_faults as flf

WEIGHTS = "int8"  # NNCF compresses five of the seven parts, without int4's slower search


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A small tmpfs (or a plain directory, and the reason, without root)."""
    point = tmp_path_factory.mktemp("disk") / "tmpfs"
    why = flf.mount_tmpfs(point, "64m")
    yield point, why
    flf.umount(point)


@pytest.fixture(scope="module")
def chains(tiny_model_dir, disk, tmp_path_factory):
    point, no_tmpfs = disk
    hub = FakeHub()
    hub.repos[flf.REPO_ID] = tiny_model_dir
    try:
        with ThreadPoolExecutor(2) as pool:
            chain = pool.submit(run_chain, hub, point, no_tmpfs)
            clean = pool.submit(run_clean_build, tiny_model_dir, tmp_path_factory.mktemp("clean"))
            steps, (rename, reference) = chain.result(), clean.result()
    finally:
        hub.close()
    order = list(steps)  # the order the chain ran them
    return {"steps": {**steps, "at_rename": rename}, "next": dict(zip(order, order[1:])), "reference": reference,
            "no_tmpfs": no_tmpfs}


def step(launch, root: Path, **extra) -> dict:
    return {"launch": launch, "after": flf.state(root), "root": root, **extra}


def run_chain(hub, disk: Path, no_tmpfs) -> dict:
    root, hf = disk / "cache", disk / "hf"
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": hf}
    steps = {}
    if not no_tmpfs:
        filler = flf.fill(disk, leave_free=1 << 20)  # the 7 MB checkpoint cannot be downloaded
        steps["disk:hub-cache"] = step(flf.run(flf.REPO_ID, root, WEIGHTS, **env), root,
                                       partials=[p.name for p in flf.hub_partials(hf)])
        filler.unlink()
    steps["download"] = step(flf.kill_mid_download(hub, hf, flf.REPO_ID, root, WEIGHTS, HF_ENDPOINT=hub.url), root,
                             partials=[p.name for p in flf.hub_partials(hf)])
    kill = "compress:language_model"
    steps[kill] = step(flf.run(flf.REPO_ID, root, WEIGHTS, kill=kill, **env), root)
    if not no_tmpfs:
        # Room for what the killed build left (the next launch removes it first) and 64 KiB more:
        # model_info.json and tokenizer.json fit, the first part (vision) does not. The script
        # sweeps the room left from nothing to one page short.
        left = sum(flf.allocated(p) for p in root.glob(".tmp-*"))
        filler = flf.fill(disk, leave_free=left + (64 << 10))
        steps["disk:cache"] = step(flf.run(flf.REPO_ID, root, WEIGHTS, **env), root)
        filler.unlink()  # make room
    steps["after_rename"] = step(flf.run(flf.REPO_ID, root, WEIGHTS, kill="after_rename", **env), root,
                                 stamps=sorted(p.name for p in (root / ".verified").glob("*")))
    steps["recovery"] = step(flf.run(flf.REPO_ID, root, WEIGHTS, chat=True, hard_exit=True, **env), root,
                             partials=[p.name for p in flf.hub_partials(hf)], hf=hf)
    return steps


def run_clean_build(model_dir: Path, work: Path) -> tuple[dict, dict]:
    """The kill at the rename, and the clean build it leaves (copied aside, then loaded for its answer)."""
    root = work / "cache"
    rename = step(flf.run(model_dir, root, WEIGHTS, kill="at_rename"), root)
    staged = next(root.glob(".tmp-*"))
    shutil.copytree(staged, work / "reference" / staged.name)
    # A directory holding a manifest is loaded in place, as an export; verify() checks every file first.
    answer = flf.run(work / "reference" / staged.name, work / "scratch", WEIGHTS, chat=True, hard_exit=True)
    assert answer.done, answer.stderr[-3000:]
    reference = {"root": str(work / "reference"), "name": staged.name, "answer": answer.done["answer"]}
    return {**rename, "staged": staged.name}, reference


CHAIN = ["disk:hub-cache", "download", "compress:language_model", "disk:cache", "after_rename"]
FAULTS = CHAIN + ["at_rename"]


def get(chains, name: str) -> dict:
    if name not in chains["steps"]:
        pytest.skip(f"needs a tmpfs: {chains['no_tmpfs']}")
    return chains["steps"][name]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- every stage

@pytest.mark.parametrize("stage", FAULTS)
def test_after_a_fault_nothing_half_written_is_trusted(chains, stage):
    s = get(chains, stage)
    after = s["after"]
    assert flf.judge_fault(stage, s["launch"], after, chains["reference"]) == []
    if stage != "after_rename":
        assert after["published"] == {}, "nothing may be published before the rename"
    assert after["locks_free"]


@pytest.mark.parametrize("stage", CHAIN)
def test_the_next_launch_cleans_up_after_a_fault(chains, stage):
    """The next launch removes what the fault left before it gets to its own fault (or to the end)."""
    fault, following = get(chains, stage), chains["steps"][chains["next"][stage]]
    assert not set(fault["after"]["staged"]) & set(following["after"]["staged"])
    own = following["launch"].kill == "compress:language_model"  # its own unfinished staged dir
    assert following["after"]["litter"] == [] or (own and len(following["after"]["litter"]) == 1)
    if following["launch"].kill:  # it got as far as its own fault (a download is killed from outside)
        assert following["launch"].returncode == -signal.SIGKILL
        assert following["launch"].killed_at == following["launch"].kill or following["launch"].kill == "download"


def test_the_normal_launch_at_the_end_recovers(chains):
    """Loads, answers as the clean build does, leaves no litter (flf.judge_recovery)."""
    s = chains["steps"]["recovery"]
    assert flf.judge_recovery(s["launch"], chains["steps"]["after_rename"]["after"], s["root"],
                              chains["reference"]) == []
    # The entry was complete (killed after its rename): loaded as it is, not converted again,
    # every byte checked since the kill came before its stamp.
    assert not s["launch"].converted and s["launch"].done["torch"] is False
    assert s["launch"].done["answer"] and s["launch"].done["answer"] == chains["reference"]["answer"]


# ---------------------------------------------------------------- stage by stage

def test_a_full_hub_cache_fails_clearly_and_leaves_nothing(chains):
    s = get(chains, "disk:hub-cache")
    launch = s["launch"]
    assert launch.returncode == 3 and "Traceback" not in launch.stderr, launch.stderr[-2000:]
    assert "Could not store 'org/tiny'" in launch.error and "No space left on device" in launch.error
    assert "Free space or point HF_HOME elsewhere" in launch.error
    assert not launch.converted and s["partials"] == []  # huggingface_hub removes its partial file on errors


def test_a_download_killed_midway_leaves_nothing_in_the_cache(chains, tiny_model_dir):
    s = get(chains, "download")
    launch = s["launch"]
    size = (tiny_model_dir / flf.MODEL_FILE).stat().st_size
    assert launch.returncode == -signal.SIGKILL and size // 2 <= launch.extra["sent_bytes"] < size
    assert len(s["partials"]) == 1  # the client's partial file existed when it was killed
    assert not launch.converted and s["after"]["staged"] == {} and s["after"]["published"] == {}


def test_the_launch_after_a_killed_download_fetches_the_whole_file(chains, tiny_model_dir):
    hf = get(chains, "recovery")["hf"]
    snapshot = hf / "hub" / "models--org--tiny" / "snapshots" / FakeHub.sha(tiny_model_dir) / flf.MODEL_FILE
    assert sha256(snapshot) == sha256(tiny_model_dir / flf.MODEL_FILE)
    assert get(chains, "compress:language_model")["launch"].converted  # it had the weights to convert


def test_a_kill_during_compression_leaves_an_unfinished_staged_build(chains):
    s = get(chains, "compress:language_model")
    assert s["launch"].killed_at == "compress:language_model" and s["launch"].returncode == -signal.SIGKILL
    assert s["launch"].messages[-1] == f"Converting language_model ({WEIGHTS})"
    (name, verdict), = s["after"]["staged"].items()  # the killed download's launch left none
    assert verdict == "its manifest.json is missing"
    files = set(s["after"]["staged_files"][name])
    assert {"vision.xml", "vision.bin", "text_embeddings.xml", "text_embeddings.bin"} <= files
    assert not files & {"language_model.xml", "language_model.bin"}


def test_a_complete_build_is_not_published_before_its_rename(chains):
    """Killed with every file and the manifest written: `verify` would accept the staged dir, but
    only a renamed (published) entry is ever loaded; the next launch rebuilds (the script checks
    that it does not adopt it: a new build id)."""
    s = get(chains, "at_rename")
    assert s["launch"].killed_at == "at_rename" and s["launch"].returncode == -signal.SIGKILL
    assert s["after"]["published"] == {} and s["after"]["locks_free"]
    (name, verdict), = s["after"]["staged"].items()
    assert verdict is None and "manifest.json" in s["after"]["staged_files"][name]


def test_a_kill_after_the_rename_leaves_a_complete_entry(chains):
    s = get(chains, "after_rename")
    assert s["launch"].killed_at == "after_rename" and s["launch"].returncode == -signal.SIGKILL
    assert not any(m.startswith("Saved the converted model") for m in s["launch"].messages)
    (name, verdict), = s["after"]["published"].items()
    assert verdict is None and s["after"]["litter"] == [] and s["after"]["staged"] == {}
    assert flf.files_of(s["root"] / name) == flf.files_of(Path(chains["reference"]["root"]) / chains["reference"]["name"])
    assert s["stamps"] == []  # killed before the stamp: the next launch checks every byte


def test_a_full_cache_disk_fails_clearly_and_leaves_nothing(chains):
    s = get(chains, "disk:cache")
    launch = s["launch"]
    assert launch.returncode == 3 and "Traceback" not in launch.stderr, launch.stderr[-2000:]
    assert launch.error.startswith("Converting ") and f"the disk holding {s['root']} is full" in launch.error
    assert "MiB were free when the conversion started" in launch.error and "0.0 GiB" not in launch.error
    assert "Nothing was cached" in launch.error and "JANUS_OV_CACHE" in launch.error
    assert f"Converting vision ({WEIGHTS})" in launch.messages  # it filled while converting, not before
    assert s["after"]["published"] == {} and s["after"]["staged"] == {} and s["after"]["litter"] == []


def test_a_killed_download_leaves_no_partial_file_in_the_hub_cache(chains):
    """huggingface_hub never resumes or removes a killed process's <etag>.<id>.incomplete blob; the
    next launch's download sweeps it (resolve.sweep_dead_partials)."""
    assert get(chains, "recovery")["partials"] == []
