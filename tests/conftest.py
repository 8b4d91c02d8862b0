"""Shared fixtures: one tiny random Janus checkpoint and its fp32 IR, built once per test session."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"
ARTIFACTS = REPO / "tests" / "artifacts"

# Tests never touch the network; a Hub id that is not cached must fail fast and clearly.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from janus_ov.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-janus"))


@pytest.fixture(scope="session")
def tiny_ir_fp32(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model converted with uncompressed fp32 weights (for parity with PyTorch)."""
    from janus_ov.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("tiny-ir-fp32")
    convert_checkpoint(tiny_model_dir, out, weights="fp32")
    return out


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
