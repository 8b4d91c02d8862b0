"""A Hugging Face Space installs requirements.txt as it is and runs app.py with SPACE_ID set."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_requirements_resolve_to_the_cpu_torch(tmp_path):
    """The torch lines of requirements.txt (with their index option) as pip resolves them: the CPU
    build, never PyPI's CUDA one. Only those lines: resolving the whole file takes minutes."""
    lines = [line for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
             if line.startswith("--extra-index-url") or line.split("==")[0].strip() == "torch"]
    assert any(line.startswith("torch==") for line in lines), lines
    torch_only = tmp_path / "torch-requirements.txt"
    torch_only.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                          "--quiet", "--report", str(report), "-r", str(torch_only)],
                         capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    chosen = {item["metadata"]["name"]: item["metadata"]["version"]
              for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
    assert chosen["torch"].endswith("+cpu"), chosen


def test_on_a_space_the_app_listens_on_all_interfaces(monkeypatch):
    import app

    for name in ("GRADIO_SERVER_NAME", "JANUS_MODEL", "JANUS_OV_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/janus-studio")
    args = app.parse_args([])
    assert args.server_name == "0.0.0.0"  # the Space's proxy must reach the app
    assert args.model == "deepseek-ai/Janus-Pro-1B" and args.weights == "int4"
    monkeypatch.delenv("SPACE_ID")
    assert app.parse_args([]).server_name == "127.0.0.1"  # elsewhere only this machine
