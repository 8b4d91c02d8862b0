"""Shared fixtures: one tiny random Janus checkpoint and its fp32 IR, built once per test session;
a pipeline on that IR and transformers' PyTorch model of the checkpoint, once per module; the
helpers several modules use (`from conftest import F32, chat_template`)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"
ARTIFACTS = REPO / "tests" / "artifacts"

# Tests never touch the network; a Hub id that is not cached must fail fast and clearly.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# OpenVINO's and NNCF's usage telemetry (openvino_telemetry) is on unless declined, and declined in CI
# runs, which it knows by CI=true alone. Left on, it sends ~30 events per converted part from
# background threads, which on our machines (no route to its server) made a tiny model's conversion
# take 14-18 s instead of 6-7 (benchmarks/results/design-measurements.md). Subprocesses inherit it.
if os.environ.get("CI", "").lower() != "true":
    os.environ["CI"] = "true"


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


# The flags of a CPU with AMX (the Intel Xeon kind), for the run time's choices made from them.
AMX = frozenset({"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"})


@pytest.fixture(scope="session")
def tiny_ir_lm_int4(tiny_model_dir, tiny_ir_fp32, tmp_path_factory):
    """The fp32 tiny IR with an int4 language model (the prompt model is for integer weights only)."""
    import shutil

    from janus_ov.checkpoint import load_checkpoint
    from janus_ov.convert import convert_part

    out = tmp_path_factory.mktemp("tiny-ir-lm-int4")
    shutil.copytree(tiny_ir_fp32, out, dirs_exist_ok=True)
    convert_part(load_checkpoint(tiny_model_dir).model, "language_model", out, "int4")
    return out


# Full precision for parity with PyTorch: no bf16 arithmetic, no u8 KV cache.
F32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}


@pytest.fixture(scope="module")
def pipe(tiny_ir_fp32, tmp_path_factory):
    from janus_ov.pipeline import JanusPipeline

    return JanusPipeline(tiny_ir_fp32, ov_config=F32, compile_cache_dir=tmp_path_factory.mktemp("compiled"))


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """transformers' fp32 Janus of the tiny checkpoint and its JanusProcessor."""
    import torch
    from transformers import JanusForConditionalGeneration, JanusProcessor

    model = JanusForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from threads; spare the shared cores
    yield model, JanusProcessor.from_pretrained(tiny_model_dir)
    torch.set_num_threads(threads)


def chat_template(processor, messages) -> str:
    """Our message format -> transformers' chat template text (a turn's images, then its text)."""
    conv = []
    for m in messages:
        content = [{"type": "image"} for _ in m.get("images", [])]
        if m["content"]:
            content.append({"type": "text", "text": m["content"]})
        conv.append({"role": m["role"], "content": content})
    return processor.apply_chat_template(conv, add_generation_prompt=True)
