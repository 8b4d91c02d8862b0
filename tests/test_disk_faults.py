"""A full or read-only cache disk gives one clear sentence and leaves nothing half-written (issue 18):
the tiny demo's build and a real conversion, on small tmpfs mounts (a full disk that is really full).

Mounting needs root (our machines and CI run as root); elsewhere these tests are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mount(tmp_path):
    """mount(size, read_only=False) -> a fresh tmpfs directory of that size, unmounted afterwards."""
    mounted = []

    def make(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        # OpenVINO's telemetry forks a child per event (ov.convert_model sends some) and gives it up to
        # 3 s to reach the network; the fork inherits our open files on the tmpfs, so it can hold the
        # mount busy for that long after a conversion. Wait for it, then detach the mount regardless.
        for _ in range(20):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(point)], check=False)


def _tiny_demo(cache: Path):
    return subprocess.run([sys.executable, str(REPO / "app.py"), "--tiny-demo", "--cache-dir", str(cache)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_tiny_demo_on_a_full_disk_says_so(mount):
    cache = mount("1m")
    run = _tiny_demo(cache)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "Could not build the tiny demo model" in run.stderr and "is full" in run.stderr, run.stderr[-2000:]
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".locks")] == []  # no staging left behind


def test_tiny_demo_on_a_read_only_disk_says_so(mount):
    run = _tiny_demo(mount("1m", read_only=True))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "Cannot write to the model cache" in run.stderr, run.stderr[-2000:]


def test_a_conversion_on_a_full_disk_names_the_disk(tiny_model_dir, mount):
    from janus_ov.cache import ensure_converted
    from janus_ov.errors import ConversionError

    cache = mount("3m")  # the lock and the first parts fit, the whole model does not
    with pytest.raises(ConversionError, match="is full") as err:
        ensure_converted(str(tiny_model_dir), weights="int4", cache_dir=cache, progress=None)
    assert str(cache) in str(err.value) and "Nothing was cached" in str(err.value)
    # The room there was to fill (not what is free once the partial build is gone), and the checkpoint's
    # size in a unit that shows it (the tiny one is well under 0.1 GiB).
    room = re.search(r"\((\d+) MiB were free when the conversion started; leave at least the checkpoint's size, "
                     r"(\d+) MiB, free there\)", str(err.value))
    assert room and int(room.group(1)) <= 3 and int(room.group(2)) >= 1, str(err.value)
    assert [p for p in cache.iterdir() if p.name != ".locks"] == []  # no half-written entry, no staging
