"""Our attention operation (janus_ov/attention.cpp) in place of the CPU plugin's PagedAttention.

Both run in real compiled language models over the same kind of u8 cache: the tiny model's fp32
language model with f32 activations (the operation's case; with int4 weights the plugin's int8
quantization of activations turns differences of 1e-6 into whole steps of its grid now and then,
0.7 %, which says nothing about attention). Ours must give the plugin's results, read and write a
cache the plugin's model shares, and refuse bookkeeping that would reach outside the bound tensors.
Skipped on CPUs without AVX-512, where the runtime keeps the
plugin's operation (and where there is no g++).
"""

import os
import shutil

import numpy as np
import openvino as ov
import pytest

from janus_ov import native
from janus_ov.kv_cache import PagedKVCache, bind_tensors, compile_paged
from janus_ov.runtime import compile_config, streaming_config
from janus_ov.tuning import cpu_flags

pytestmark = [pytest.mark.skipif("avx512f" not in cpu_flags(), reason="the operation is used on AVX-512 CPUs only"),
              pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build it with (the runtime then keeps "
                                 "the plugin's operation)")]


def compiled(ir, which: str, monkeypatch) -> ov.CompiledModel:
    """The tiny language model compiled as the runtime compiles an int4 one (f32 activations), with
    our attention or the plugin's."""
    monkeypatch.setenv("JANUS_OV_ATTENTION", which)
    core = ov.Core()
    model = core.read_model(str(ir / "language_model.xml"))
    config = compile_config("CPU", {"INFERENCE_PRECISION_HINT": "f32"}, None)
    return compile_paged(core, model, "CPU", streaming_config(model, "CPU", config))


def uses_ours(model: ov.CompiledModel) -> bool:
    types = {op.get_rt_info()["layerType"].astype(str) for op in model.get_runtime_model().get_ordered_ops()}
    return "attention_slot" in {p.get_any_name() for p in model.inputs} and "PagedAttention" not in types


@pytest.fixture(scope="module")
def models(tiny_ir_fp32):
    with pytest.MonkeyPatch.context() as mp:
        ours, plugin = compiled(tiny_ir_fp32, "own", mp), compiled(tiny_ir_fp32, "plugin", mp)
    assert uses_ours(ours) and not uses_ours(plugin)
    return ours, plugin


def calls(width: int):
    """(lengths per row, embeddings) of a run that covers what the scheduler sends: prompts of three
    rows across block boundaries (one partial block each), a call mixing a prompt chunk with decoding
    rows, a row that gets nothing, then decode steps (a block fills up and a new one starts)."""
    rng = np.random.default_rng(0)
    plan = [[45, 70, 3], [1, 20, 1], [1, 0, 1]] + [[1, 1, 1]] * 14
    return [(np.array(p, np.int32), (rng.standard_normal((sum(p), width)) * 0.5).astype(np.float32)) for p in plan]


def run(requests, caches, plan) -> list:
    """Each call on requests[i % len(requests)] (all bound to caches[0]'s tensors): hidden states."""
    out = []
    for i, (lengths, embeds) in enumerate(plan):
        request = requests[i % len(requests)]
        out.append(request.infer({"inputs_embeds": embeds, **caches[0].step_inputs(lengths)})[0].copy())
        caches[0].advance(lengths)
    return out


def fresh(request, also=()) -> PagedKVCache:
    kv = PagedKVCache(request, also=also)
    kv.start([120, 120, 40])
    return kv


def width(model) -> int:
    return model.output(0).get_partial_shape()[-1].get_length()


def test_ours_gives_the_plugins_results(models):
    ours, plugin = models
    plan = calls(width(plugin))
    a, b = plugin.create_infer_request(), ours.create_infer_request()
    expected, got = run([a], [fresh(a)], plan), run([b], [fresh(b)], plan)
    for e, g in zip(expected, got):
        assert np.abs(e - g).max() <= 1e-4 * np.abs(e).max()


def test_a_cache_written_by_either_is_read_by_the_other(models):
    """The runtime's prompt model (on CPUs with AMX) keeps the plugin's operation and shares the
    cache with ours: calls alternate between the two models here, in both orders."""
    ours, plugin = models
    plan = calls(width(plugin))
    reference = plugin.create_infer_request()
    expected = run([reference], [fresh(reference)], plan)
    for order in ((plugin, ours), (ours, plugin)):
        first, second = (m.create_infer_request() for m in order)
        kv = fresh(first, also=[second])
        for e, g in zip(expected, run([first, second], [kv], plan)):
            assert np.abs(e - g).max() <= 1e-4 * np.abs(e).max()


def test_bookkeeping_outside_the_bound_cache_fails_the_call(models):
    ours, _ = models
    request = ours.create_infer_request()
    kv = fresh(request)
    inputs = kv.step_inputs(np.array([5, 0, 0], np.int32))
    embeds = np.zeros((5, width(ours)), np.float32)
    request.infer({"inputs_embeds": embeds, **inputs})  # a valid call first
    past_the_end = {**inputs, "block_indices": inputs["block_indices"] + 10_000}
    with pytest.raises(RuntimeError, match="JanusPagedAttention"):
        request.infer({"inputs_embeds": embeds, **past_the_end})
    # A request whose cache was never bound (no slot of its own yet): refused too.
    with pytest.raises(RuntimeError):
        ours.create_infer_request().infer({"inputs_embeds": embeds, **inputs})


def test_rebinding_tells_the_operation_the_new_tensors(models):
    """A cache that grows is bound anew (PagedKVCache._reserve); attention must follow it, not the
    old tensors, which the request no longer holds."""
    ours, plugin = models
    plan = calls(width(plugin))[:3]
    reference = plugin.create_infer_request()
    kv_ref = PagedKVCache(reference)
    request = ours.create_infer_request()
    kv = PagedKVCache(request)
    for cache in (kv, kv_ref):
        cache.start([8, 8, 8])  # small: the next start must bind larger tensors
        cache.start([120, 120, 40])
    expected, got = run([reference], [kv_ref], plan), run([request], [kv], plan)
    for e, g in zip(expected, got):
        assert np.abs(e - g).max() <= 1e-4 * np.abs(e).max()
    tensors = {n: request.get_tensor(n) for n in ("key_cache.0", "value_cache.0")}
    bind_tensors([request], tensors)  # binding the same tensors again changes nothing
    assert request.infer({"inputs_embeds": plan[0][1][:1], **kv.step_inputs(np.array([1, 0, 0], np.int32))})


def test_the_library_is_built_once_and_whole(tmp_path):
    first = native.library(tmp_path)
    assert first is not None and first.parent == tmp_path
    stamp = first.stat().st_mtime_ns
    assert native.library(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no partial build left behind


def test_without_a_compiler_the_plugins_operation_serves(tiny_ir_lm_int4, tmp_path, monkeypatch, capsys):
    """A machine without g++ (a bare container): the build fails with a message, the language model
    compiles with the plugin's PagedAttention and serves as before."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert native.library(tmp_path / "build") is None
    assert "using the plugin's own operations" in capsys.readouterr().out
    monkeypatch.setattr(native, "_reader", None)  # as in a new process
    monkeypatch.setattr(native, "_dll", None)
    core = ov.Core()
    model = core.read_model(str(tiny_ir_lm_int4 / "language_model.xml"))
    config = streaming_config(model, "CPU", compile_config("CPU", {}, tmp_path / "build"))
    model = compile_paged(core, model, "CPU", config)
    assert not uses_ours(model)
    request = model.create_infer_request()
    kv = fresh(request)
    request.infer({"inputs_embeds": np.zeros((3, width(model)), np.float32), **kv.step_inputs(np.array([3, 0, 0], np.int32))})


def test_the_runtime_serves_chats_and_images_with_it(tiny_ir_lm_int4, tmp_path):
    from janus_ov.pipeline import JanusPipeline

    pipe = JanusPipeline(tiny_ir_lm_int4, compile_cache_dir=tmp_path / "compiled")
    assert uses_ours(pipe.runtime.compiled["language_model"])
    assert pipe.chat([{"role": "user", "content": "Hello there"}], max_new_tokens=6)
    images = pipe.generate_images("a red square", seed=1, num_images=2)
    assert len(images) == 2 and images[0].size == (384, 384)


def test_a_shared_library_in_a_shed_folder_keeps_its_relocations(tmp_path):
    """The runtime sheds mapped pages of files in the model and cache folders (memory.py), and our
    library is built in the cache folder: its read-only relocated tables were written at load, and
    dropping them once crashed the process (a null virtual call). They must stay."""
    import subprocess
    import sys

    library = native.library(None)
    copy = tmp_path / library.name
    shutil.copy(library, copy)
    code = f"""
import openvino as ov
from openvino import opset13 as ops
from janus_ov import attention, native
from janus_ov.memory import drop_mapped_pages
native._reader = ov.Core()
native._reader.add_extension({str(copy)!r})
drop_mapped_pages([{str(tmp_path)!r}])
packed = ops.parameter([-1, -1], ov.Type.f32)
node = attention._new_node(packed, 0, 4, 0.25)  # the operation's factory and virtual tables, from the library
ov.Model([node], [packed]).validate_nodes_and_infer_types()
print("alive")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(os.getcwd())})
    assert out.returncode == 0 and "alive" in out.stdout, out.stderr


def reference_decode(q, keys, values, past, blocks, tables, scale):
    """What the decode kernel must give, from the cache layout as attention.cpp documents it: keys
    [blocks, kv heads, 8 + 32, S] (f32 scale[S], zero point[S], then 32 rows of u8), values [blocks,
    kv heads, 32, 8 + S] (f32 scale, zero point, S u8 per row); x = (u - zero point) * scale."""
    n_blocks, kv_heads, _, S = keys.shape
    heads = q.shape[1] // S
    k_params = keys[:, :, :8].reshape(n_blocks, kv_heads, -1).view(np.float32)  # [blocks, kv heads, 2S]
    k = (keys[:, :, 8:].astype(np.float32) - k_params[:, :, None, S:]) * k_params[:, :, None, :S]
    v_params = values[..., :8].reshape(n_blocks, kv_heads, 32, 8).view(np.float32)  # [..., 2]
    v = (values[..., 8:].astype(np.float32) - v_params[..., 1:]) * v_params[..., :1]
    out = np.empty_like(q)
    for row in range(len(q)):
        table, kv = blocks[tables[row]:tables[row + 1]], past[row] + 1
        for h in range(heads):
            hk = h // (heads // kv_heads)
            k_row = np.concatenate(k[table, hk])[:kv].astype(np.float64)
            v_row = np.concatenate(v[table, hk])[:kv].astype(np.float64)
            s = k_row @ q[row, h * S:(h + 1) * S] * scale
            p = np.exp(s - s.max())
            out[row, h * S:(h + 1) * S] = p @ v_row / p.sum()
    return out


@pytest.mark.parametrize("S, heads, kv_heads", [(128, 16, 16), (64, 8, 4), (16, 4, 4), (48, 2, 2)])
def test_the_decode_kernel_reads_the_cache_layout_at_every_head_size(S, heads, kv_heads):
    """The decode path the full-size models take (head size 128; the tiny model's is 16), grouped
    query heads, a head size with no vector form (48: the portable loops), and rows whose lengths end
    on, before and after block edges, over blocks in shuffled order -- against numpy."""
    from benchmarks.decode_attention import load

    dll, rng = load(), np.random.default_rng(0)
    past = np.array([0, 30, 31, 32, 63, 299], np.int32)  # cached tokens before each row's new one
    per_row = (past + 1 + 31) // 32
    n_blocks = int(per_row.sum()) + 3  # and some blocks nobody reads
    keys = rng.integers(0, 256, (n_blocks, kv_heads, 40, S), dtype=np.uint8)
    keys[:, :, :8] = np.concatenate([rng.uniform(0.005, 0.02, (n_blocks, kv_heads, S)),
                                     rng.uniform(100, 150, (n_blocks, kv_heads, S))], -1).astype(np.float32) \
        .view(np.uint8).reshape(n_blocks, kv_heads, 8, S)
    values = rng.integers(0, 256, (n_blocks, kv_heads, 32, 8 + S), dtype=np.uint8)
    values[..., :8] = np.stack([rng.uniform(0.005, 0.02, (n_blocks, kv_heads, 32)),
                                rng.uniform(100, 150, (n_blocks, kv_heads, 32))], -1).astype(np.float32) \
        .view(np.uint8).reshape(n_blocks, kv_heads, 32, 8)
    blocks = rng.permutation(n_blocks).astype(np.int32)
    tables = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    q = rng.standard_normal((len(past), heads * S)).astype(np.float32)
    out = np.empty_like(q)
    dll.janus_decode_attention(q.ctypes.data, len(q), heads, S, keys.ctypes.data, values.ctypes.data, kv_heads,
                               past.ctypes.data, blocks.ctypes.data, tables.ctypes.data, 0.1, out.ctypes.data)
    expected = reference_decode(q, keys, values, past, blocks, tables, 0.1)
    assert np.abs(out - expected).max() <= 1e-5 * np.abs(expected).max()
