"""`python app.py --tiny-demo` as a separate server process, for the tests and the soak benchmark.

The server gets a free port on 127.0.0.1, Hub access off, Gradio analytics off, and none of the
JANUS_* variables of the caller's environment: the flags passed decide, not whoever runs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 900  # the first launch builds and converts the tiny model; slow on a busy machine
CALLERS_SETTINGS = ("JANUS_AUTH", "JANUS_SHARE", "JANUS_MODEL", "JANUS_WEIGHTS", "JANUS_MAX_IMAGES", "JANUS_QUEUE_SIZE")


class AppDidNotStart(RuntimeError):
    """app.py exited or did not answer in time; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(cache_dir: Path, log_path: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Launch app.py in tiny-demo mode with `extra` flags (`env`: extra environment); return
    (process, url) once it answers HTTP, else AppDidNotStart."""
    port = free_port()
    cmd = [sys.executable, str(REPO / "app.py"), "--tiny-demo", "--cache-dir", str(cache_dir), "--port", str(port),
           "--server-name", "127.0.0.1", *extra]
    env = {**{k: v for k, v in os.environ.items() if k not in CALLERS_SETTINGS}, "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "w", encoding="utf-8") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AppDidNotStart(f"app.py exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
    stop_app(proc)
    raise AppDidNotStart(f"app.py did not serve within {STARTUP_TIMEOUT_S} s:\n{_tail(log_path)}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(log_path: Path) -> str:
    return log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
