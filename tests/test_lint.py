"""The code style the project agreed on (pyproject.toml's [tool.ruff]) holds everywhere."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    run = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO, capture_output=True, encoding="utf-8")
    assert run.returncode == 0, run.stdout + run.stderr
