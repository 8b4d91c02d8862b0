"""The run-time language model (the stateful IR rewritten to PagedAttention, kv_cache.py)
computes what transformers computes, for rows of different lengths, in any chunking, across
cache blocks, and its cache tensors are sized per request.

Tolerance as test_convert's fp32 parts: relative error <= 1e-3 (measured ~1e-6).
"""

import numpy as np
import pytest
import torch
from conftest import AMX, F32

from janus_ov.runtime import Runtime

FP32_TOL = 1e-3


def rel_error(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def cosine(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def torch_lm(tiny_model_dir):
    from transformers import JanusForConditionalGeneration

    model = JanusForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model.model.language_model


@pytest.fixture(scope="module")
def runtime(tiny_ir_fp32):
    return Runtime(tiny_ir_fp32, ov_config=F32, max_concurrency=2)


def reference(torch_lm, embeds: np.ndarray) -> np.ndarray:
    """Hidden states of one whole sequence [T,H], no cache."""
    with torch.no_grad():
        return torch_lm(inputs_embeds=torch.from_numpy(embeds[None])).last_hidden_state[0].numpy()


def sequences(torch_lm, lengths, seed=0):
    return sequences_of(torch_lm.config.hidden_size, lengths, seed)


def sequences_of(width, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, width)).astype(np.float32) for n in lengths]


def feed(ctx, rows, chunks):
    """Feed every row's tokens in `chunks` (a list of per-row chunk lengths per call); return
    the last hidden state of each row after each call."""
    done, outputs = [0] * len(rows), []
    for lengths in chunks:
        embeds = np.concatenate([row[d:d + n] for row, d, n in zip(rows, done, lengths)])
        outputs.append(np.array(ctx.language_model(embeds, lengths)))
        done = [d + n for d, n in zip(done, lengths)]
    return outputs


@pytest.mark.parametrize("chunks", [
    [[70, 41, 5]],                                # one prefill call, three rows of different lengths
    [[64, 31, 3], [1, 1, 1], [5, 9, 1]],          # prefill, a step, then a chunk crossing a block boundary
    [[1, 1, 1]] * 40,                              # token by token
], ids=["prefill", "mixed", "token-by-token"])
def test_rows_of_different_lengths_match_transformers(runtime, torch_lm, chunks):
    totals = np.sum(chunks, axis=0)
    rows = sequences(torch_lm, totals)
    refs = [reference(torch_lm, row) for row in rows]
    with runtime.context() as ctx:
        ctx.start(totals)
        outputs = feed(ctx, rows, chunks)
    done = np.cumsum(chunks, axis=0)
    for out, ends in zip(outputs, done):
        expected = np.stack([ref[end - 1] for ref, end in zip(refs, ends)])
        assert rel_error(out, expected) <= FP32_TOL


def test_start_begins_new_sequences_in_the_same_context(runtime, torch_lm):
    long_rows = sequences(torch_lm, [100, 100], seed=1)
    rows = sequences(torch_lm, [7], seed=2)
    with runtime.context() as ctx:
        ctx.start([100, 100])
        feed(ctx, long_rows, [[100, 100]])
        ctx.start([8])
        out = feed(ctx, rows, [[6], [1]])
    ref = reference(torch_lm, rows[0])
    assert rel_error(out[0][0], ref[5]) <= FP32_TOL
    assert rel_error(out[1][0], ref[6]) <= FP32_TOL


def test_a_row_cannot_outgrow_its_capacity(runtime, torch_lm):
    rows = sequences(torch_lm, [40])
    with runtime.context() as ctx:
        ctx.start([33])  # two blocks of 32: room for 64 in memory, but 33 were asked for
        feed(ctx, rows, [[33]])
        with pytest.raises(ValueError, match="KV cache"):
            feed(ctx, [rows[0][33:]], [[1]])


@pytest.mark.parametrize("config", [F32, {}], ids=["f32", "default-u8-cache"])
def test_start_can_keep_the_first_blocks_while_the_cache_grows(tiny_ir_fp32, torch_lm, config):
    row = sequences(torch_lm, [300], seed=4)[0]
    ref = reference(torch_lm, row)
    with Runtime(tiny_ir_fp32, ov_config=config, max_concurrency=1, warm_up=False).context() as ctx:
        ctx.start([80])
        feed(ctx, [row], [[80]])
        ctx.start([300], keep=64)  # 3 blocks -> 10: new tensors, the first 2 blocks copied over
        assert ctx.req["language_model"].get_tensor("key_cache.0").get_shape()[0] >= 10
        out = feed(ctx, [row[64:]], [[200], [1], [35]])
    for got, end in zip(out, (264, 265, 300)):
        if config:
            assert rel_error(got[0], ref[end - 1]) <= FP32_TOL
        else:
            assert cosine(got[0], ref[end - 1]) >= 0.99


@pytest.mark.parametrize("config", [F32, {}], ids=["f32", "default-u8-cache"])
def test_copied_rows_go_on_like_prefilled_ones(tiny_ir_fp32, torch_lm, config):
    """A prompt prefilled in one row and copied into others (text_to_image's image batches):
    every copy then continues with its own tokens exactly as if it had been prefilled."""
    prompt, other = sequences(torch_lm, [45, 20], seed=6)  # 45: a whole block and part of the next
    steps = sequences(torch_lm, [3, 3, 3, 3], seed=7)
    with Runtime(tiny_ir_fp32, ov_config=config, max_concurrency=1, warm_up=False).context() as ctx:
        ctx.start([48, 48, 48, 23])
        first = ctx.language_model(np.concatenate([prompt, other]), [45, 0, 0, 20])  # rows 1 and 2 get none
        assert first.shape == (2, torch_lm.config.hidden_size)
        with pytest.raises(ValueError, match="copy"):
            ctx.kv.copy_row(0, [3])  # row 3 holds tokens already (and has room for 23 only)
        ctx.kv.copy_row(0, [1, 2])
        outputs = feed(ctx, steps, [[1, 1, 1, 1]] * 3)
    for i, out in enumerate(outputs):
        for row, start in enumerate([prompt, prompt, prompt, other]):
            ref = reference(torch_lm, np.concatenate([start, steps[row][:i + 1]]))[-1]
            if config:
                assert rel_error(out[row], ref) <= FP32_TOL, (i, row)
            else:
                assert cosine(out[row], ref) >= 0.99, (i, row)


def test_start_keeps_only_whole_blocks_of_one_row(runtime, torch_lm):
    with runtime.context() as ctx:
        ctx.start([40, 40])
        feed(ctx, sequences(torch_lm, [40, 40]), [[40, 40]])
        with pytest.raises(ValueError, match="keep"):
            ctx.start([80], keep=32)  # two rows cached: whose tokens would be kept?
        ctx.start([80])
        feed(ctx, sequences(torch_lm, [40]), [[40]])
        for keep in (16, 64):  # not a whole block; more than is cached
            with pytest.raises(ValueError, match="keep"):
                ctx.start([80], keep=keep)


def test_cache_tensors_grow_and_are_given_back(runtime):
    with runtime.context() as ctx:
        def blocks():
            return ctx.req["language_model"].get_tensor("key_cache.0").get_shape()[0]

        ctx.start([600] * 16)  # an 8-image batch: 16 rows of 19 blocks
        assert blocks() >= 16 * 19
        ctx.start([10])  # one block needed; up to 4 may be kept for reuse, not 304
        assert blocks() <= 4


def test_default_precision_stays_close_to_transformers(tiny_ir_fp32, torch_lm):
    """The serving config (plugin defaults: u8 KV cache, bf16 where the CPU has it) over a
    sequence long enough to fill several quantized blocks."""
    rows = sequences(torch_lm, [150, 90], seed=3)
    ref = np.stack([reference(torch_lm, row)[-1] for row in rows])
    with Runtime(tiny_ir_fp32, max_concurrency=1, warm_up=False).context() as ctx:
        ctx.start([150, 90])
        out = feed(ctx, rows, [[120, 60], [1, 1], [29, 29]])[-1]
    assert cosine(out, ref).min() >= 0.99


# ---- the prompt model: a second compiled language model for prompt-sized calls (runtime.prompt_config) ----

def test_prompt_model_only_with_amx_integer_weights_and_no_chosen_precision(tiny_ir_lm_int4, tiny_ir_fp32):
    import openvino as ov

    from janus_ov.runtime import prompt_config

    core = ov.Core()
    int4, fp32 = (core.read_model(d / "language_model.xml") for d in (tiny_ir_lm_int4, tiny_ir_fp32))
    base = {"PERFORMANCE_HINT": "LATENCY"}
    assert prompt_config(int4, "CPU", base, cpu=AMX) == {**base, "INFERENCE_PRECISION_HINT": "bf16"}
    # AVX-512 VNNI without AMX (Zen 4, Zen 5): one model, whose int4 matmuls are ours (matmul.py).
    assert prompt_config(int4, "CPU", base, cpu=AMX - {"amx_bf16", "amx_int8", "amx_tile"} | {"avx512bw"}) is None
    assert prompt_config(int4, "CPU", base, cpu={"avx2", "avx_vnni"}) is None  # AVX2: one model, the plugin's
    assert prompt_config(int4, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}, cpu=AMX) is None  # the caller's choice
    assert prompt_config(int4, "GPU", base, cpu=AMX) is None
    assert prompt_config(fp32, "CPU", base, cpu=AMX) is None  # float weights: no integer kernels to leave
    # Only while the weights fit twice with room to spare (the second model holds them again).
    assert prompt_config(int4, "CPU", base, cpu=AMX, free=3 * 10**9, weights=10**9) is not None
    assert prompt_config(int4, "CPU", base, cpu=AMX, free=3 * 10**9 - 1, weights=10**9) is None


def test_prompt_model_writes_the_cache_the_language_model_reads(tiny_ir_lm_int4, monkeypatch):
    """With the prompt model, calls of >= PROMPT_TOKENS tokens run on it and the others on the language
    model, over the same cache tensors: every output matches one model doing it all. On a CPU without
    bf16 the prompt model computes in f32 and the match is closer still."""
    from janus_ov import runtime as rt

    monkeypatch.setenv("JANUS_OV_MATMUL", "plugin")  # where ours run the language model there is no prompt model
    rows = sequences_of(64, [165, 43], seed=9)
    chunks = [[70, 0], [0, 40], [1, 1], [1, 1], [29, 0], [64, 1]]  # 70: prompt model; 29 and 2-row steps: the LM

    def run(flags):
        monkeypatch.setattr(rt, "cpu_flags", lambda: flags)
        runtime = rt.Runtime(tiny_ir_lm_int4, max_concurrency=1, warm_up=False)
        with runtime.context() as ctx:
            ctx.start([170, 45])
            used = []
            outputs = []
            done = [0, 0]
            for lengths in chunks:
                embeds = np.concatenate([row[d:d + n] for row, d, n in zip(rows, done, lengths)])
                used.append(ctx.lm_part(sum(lengths)))
                outputs.append(np.array(ctx.language_model(embeds, lengths)))
                done = [d + n for d, n in zip(done, lengths)]
        return runtime, used, outputs

    two, used, got = run(AMX)
    assert two.prompt_model is not None and rt.cache_ports(two.prompt_model) == rt.cache_ports(two.compiled["language_model"])
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert two.prompt_model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    step = "language_model"  # the plugin's matmuls: no copies for steps (STEP_TOKENS)
    assert used == ["prompt_model", "language_model", step, step, "language_model", "prompt_model"]
    one, used_one, want = run(frozenset())
    assert one.prompt_model is None and set(used_one) == {"language_model", step}
    for i, (g, w) in enumerate(zip(got, want)):
        assert (cosine(g, w) >= 0.99).all(), (i, cosine(g, w))

