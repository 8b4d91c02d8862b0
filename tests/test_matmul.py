"""Our int4 matmul operation (janus_ov/matmul.cpp) in place of the CPU plugin's, for steps.

Checked against a numpy reference of what the kernel documents (NNCF's INT4_ASYM weights, group 64;
activations quantized to int8 per row and group), against the plugin's own compressed MatMul on the
same weights, and in the runtime, where one model with them serves prompts and steps.
Skipped on CPUs without AVX-512 VNNI (the runtime keeps the plugin's matmuls there) and without g++.
"""

import os
import shutil
import sys

import nncf
import numpy as np
import openvino as ov
import pytest
from openvino import opset13 as ops

from janus_ov import matmul
from janus_ov.tuning import cpu_flags

STEPS = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"}
pytestmark = [pytest.mark.skipif(not {"avx512_vnni", "avx512bw"} <= cpu_flags(), reason="the operation is used on "
                                 "CPUs with AVX-512 VNNI only"),
              pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build it with (the runtime then keeps "
                                 "the plugin's matmuls)")]


def compressed(shapes, mode=nncf.CompressWeightsMode.INT4_ASYM, group=64, seed=0) -> ov.Model:
    """x [-1, -1, K] times each (N, K) weight of `shapes` (one output each), compressed by NNCF as
    compress.py compresses the language model."""
    rng = np.random.default_rng(seed)
    x = ops.parameter([-1, -1, shapes[0][1]], np.float32, name="x")
    outs = []
    for n, k in shapes:
        w = ops.constant((rng.standard_normal((n, k)) * 0.05).astype(np.float16))
        source = x if k == shapes[0][1] else ops.parameter([-1, -1, k], np.float32)
        outs.append(ops.matmul(source, ops.convert(w, np.float32), False, True))
    params = [x] + [o.input_value(0).get_node() for o in outs if o.input_value(0).get_node() is not x]
    model = ov.Model(outs, params)
    if mode == nncf.CompressWeightsMode.INT8_ASYM:  # by channel, nothing to choose
        return nncf.compress_weights(model, mode=mode)
    return nncf.compress_weights(model, mode=mode, group_size=group, ratio=1.0, all_layers=True)


def ours(model: ov.Model) -> int:
    assert matmul.prepare("CPU", STEPS)
    return matmul.replace_int4_matmuls(model)


def reference(node, x: np.ndarray) -> np.ndarray:
    """A compressed MatMul's output as the kernel documents it, from the node's own constants:
    w = (u - z) * s, x quantized symmetrically to int8 per row and group of 64, its step in f32 as the
    kernel takes it (ties to even, as the CPU rounds)."""
    u, scale, zero, n, k = matmul._int4_weights(node)
    u = np.stack([u & 15, u >> 4], -1).reshape(n, k // 64, 64).astype(np.float64)
    zero = np.stack([zero & 15, zero >> 4], -1).reshape(n, k // 64, 1).astype(np.float64)
    w = (u - zero) * scale.view(np.float16).astype(np.float64).reshape(n, k // 64, 1)
    rows = x.reshape(-1, k // 64, 64).astype(np.float32)
    step = np.abs(rows).max(-1, keepdims=True) / np.float32(127)
    step = np.where(step > 0, step, np.float32(1))
    q = np.rint(rows * (np.float32(1) / step)).astype(np.float64) * step
    return (q.reshape(-1, k) @ w.reshape(n, k).T).reshape(*x.shape[:-1], n)


def matmuls(model: ov.Model) -> list:
    """The model's MatMul nodes, in the order of its outputs."""
    nodes = [r.input_value(0).get_node() for r in model.get_results()]
    return [n for n in nodes if n.get_type_name() == "MatMul"]


def relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


SHAPES = [(48, 192), (16, 64), (32, 192)]  # 3 channel blocks x 3 groups, 1 x 1, 2 x 3


RECIPES = {"asym64": (nncf.CompressWeightsMode.INT4_ASYM, 64), "sym64": (nncf.CompressWeightsMode.INT4_SYM, 64),
           "sym128": (nncf.CompressWeightsMode.INT4_SYM, 128)}


@pytest.fixture(params=["vnni", "amx"])
def kernel(request):
    """Each of the kernel's paths for every call: vpdpbusd, and AMX's tiles (on CPUs with AMX-INT8)."""
    if request.param == "amx" and "amx_int8" not in cpu_flags():
        pytest.skip("no AMX on this CPU")
    assert matmul.prepare("CPU", STEPS)
    dll = matmul.native.loaded()
    assert dll.janus_matmul_amx_rows(1 if request.param == "amx" else 0)
    yield request.param
    dll.janus_matmul_amx_rows(matmul.amx_rows())


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 21])
def test_it_computes_what_it_documents_and_what_the_plugins_computes(rows, recipe, kernel):
    """Every row count the kernel treats apart (one pass of <= 8 rows; more in passes of 8 over each
    run of weight blocks), weights of 1 and 3 groups and 1 to 3 channel blocks, two leading dims, and
    each int4 recipe it takes (symmetric weights shifted to u4 with zero point 8; groups of 128 as two),
    on each of its paths."""
    mode, group = RECIPES[recipe]
    shapes = SHAPES if group == 64 else [(48, 256), (16, 128), (32, 256)]
    model, fresh = compressed(shapes, mode, group), compressed(shapes, mode, group)  # one to take over, one to read
    assert ours(model) == 3 and not matmuls(model)
    mine = ov.Core().compile_model(model, "CPU", STEPS)
    plugin = ov.Core().compile_model(compressed(shapes, mode, group), "CPU", STEPS)
    rng = np.random.default_rng(rows)
    k, k_small = shapes[0][1], shapes[1][1]
    x = (rng.standard_normal((1, rows, k)) * rng.uniform(0.1, 10, (1, rows, 1))).astype(np.float32)
    x[0, 0, :64] = 0  # a group of zeros: a step of 0 is no division by zero
    x_small = rng.standard_normal((1, rows, k_small)).astype(np.float32)
    got, theirs = mine({0: x, 1: x_small}), plugin({0: x, 1: x_small})
    assert len(matmuls(fresh)) == 3
    for i, node in enumerate(matmuls(fresh)):
        expected = reference(node, x if shapes[i][1] == k else x_small)
        assert got[i].shape == (1, rows, shapes[i][0])
        assert relative(got[i], expected) < 1e-5, i
        assert relative(got[i], theirs[i]) < 1e-3, i  # the plugin quantizes activations much as we do


def test_only_the_int4_recipes_it_takes_are_taken():
    """INT4_ASYM with groups of 64 and INT4_SYM with groups of 64 or 128, output channels in 16s: ours.
    Asymmetric groups of 128, int8 by channel and 40 output channels keep the plugin's MatMul."""
    C = nncf.CompressWeightsMode
    for model in (compressed([(32, 128)]), compressed([(32, 128)], C.INT4_SYM), compressed([(32, 256)], C.INT4_SYM, 128)):
        assert ours(model) == 1
    for model in (compressed([(32, 256)], group=128), compressed([(32, 128)], C.INT8_ASYM), compressed([(40, 128)])):
        assert ours(model) == 0 and len(matmuls(model)) == 1


def test_the_weights_live_while_a_compiled_model_holds_them():
    """The graph's nodes own the repacked weights (the registry lets go once they are read): a compiled
    model outlives the ov.Model it came from, and compiled twice from one graph they share them."""
    import gc

    model = compressed(SHAPES)
    want = [reference(n, np.ones((1, 2, n.input_value(0).get_partial_shape()[2].get_length()), np.float32))
            for n in matmuls(compressed(SHAPES))]
    ours(model)
    first, second = (ov.Core().compile_model(model, "CPU", STEPS) for _ in range(2))
    del model
    gc.collect()
    inputs = {0: np.ones((1, 2, 192), np.float32), 1: np.ones((1, 2, 64), np.float32)}
    assert len(want) == 3
    for compiled in (first, second):
        out = compiled(inputs)
        for i, w in enumerate(want):
            assert relative(out[i], w) < 1e-5


def test_amx_for_several_rows_only_where_the_cpu_has_it(monkeypatch):
    """AMX's tiles from AMX_ROWS rows on CPUs with AMX-INT8, never elsewhere or when switched off; a
    build without AMX refuses them and keeps the vector kernel."""
    assert matmul.amx_rows({"avx512_vnni", "avx512bw", "amx_tile", "amx_int8"}) == matmul.AMX_ROWS
    assert matmul.amx_rows({"avx512_vnni", "avx512bw"}) == 0
    monkeypatch.setenv("JANUS_OV_MATMUL_AMX", "off")
    assert matmul.amx_rows({"amx_int8"}) == 0
    assert matmul.prepare("CPU", STEPS)
    dll = matmul.native.loaded()
    assert dll.janus_matmul_amx_rows(0)
    assert dll.janus_matmul_amx_rows(2) == ("amx_int8" in cpu_flags())
    monkeypatch.delenv("JANUS_OV_MATMUL_AMX")
    dll.janus_matmul_amx_rows(matmul.amx_rows())  # as the runtime has it


def test_wanted_on_avx512_vnni_with_f32_activations(monkeypatch):
    flags = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}
    assert matmul.wanted("CPU", STEPS, flags)
    assert not matmul.wanted("CPU", STEPS, {"avx2", "avx_vnni"})  # AVX2 machines keep the plugin's
    assert not matmul.wanted("CPU", {"INFERENCE_PRECISION_HINT": "bf16"}, flags)
    assert not matmul.wanted("GPU", STEPS, flags)
    monkeypatch.setenv("JANUS_OV_MATMUL", "plugin")
    assert not matmul.wanted("CPU", STEPS, flags)


def test_the_runtime_runs_every_call_on_ours(tiny_ir_lm_int4, monkeypatch):
    """On this CPU (no AMX) the runtime compiles the language model with our matmuls and our
    attention, for prompts and steps alike, plus copies for the steps' token counts (STEP_TOKENS) that
    calls of those sizes run on. Every output of a chat-like run (prompts of several rows, steps, a
    follow-up) matches the model with the plugin's matmuls (JANUS_OV_MATMUL=plugin), and the copies
    give what the one model gives alone."""
    from janus_ov import runtime as rt

    monkeypatch.setattr(rt, "cpu_flags", lambda: cpu_flags() - {"amx_bf16"})  # as on an AMD kind
    ir = ov.Core().read_model(tiny_ir_lm_int4 / "language_model.xml")
    width = ir.input("inputs_embeds").get_partial_shape()[-1].get_length()

    def run():
        runtime = rt.Runtime(tiny_ir_lm_int4, max_concurrency=1, warm_up=False)
        rng = np.random.default_rng(3)
        with runtime.context() as ctx:
            ctx.start([180, 50])
            outputs = [np.array(ctx.language_model(rng.standard_normal((sum(n), width)).astype(np.float32), n))
                       for n in ([90, 40], [1, 1], [1, 1], [3, 1], [7, 1], [1, 0], [66, 1])]
        return runtime, outputs

    ours, got = run()
    assert ours.prompt_model is None and set(ours.step_models) == set(rt.STEP_TOKENS)
    types = {op.get_type_name() for op in ours._paged["language_model"][0].get_ops()}
    assert matmul.OP_TYPE in types and "JanusPagedAttention" in types
    with ours.context() as ctx:
        assert [ctx.lm_part(n) for n in (1, 2, 3, 90)] == ["language_model.1", "language_model.2"] + ["language_model"] * 2
    for tokens in rt.STEP_TOKENS:  # static all through: no shape left to infer at a call
        assert not any(op.get_output_partial_shape(0).is_dynamic for op in ours._paged[f"language_model.{tokens}"][0].get_ops()
                       if op.get_type_name() == matmul.OP_TYPE)
    monkeypatch.setattr(rt, "STEP_TOKENS", ())
    _, alone = run()
    for g, a in zip(got, alone):
        np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("JANUS_OV_MATMUL", "plugin")
    plugin, want = run()
    assert matmul.OP_TYPE not in {op.get_type_name() for op in plugin._paged["language_model"][0].get_ops()}
    assert plugin.step_models == {}
    for i, (g, w) in enumerate(zip(got, want)):
        cos = (g * w).sum(-1) / np.linalg.norm(g, axis=-1) / np.linalg.norm(w, axis=-1)
        assert (cos >= 0.99).all(), (i, cos)


def test_on_amx_cpus_our_matmuls_serve_prompts_too(tiny_ir_lm_int4, monkeypatch):
    """On a CPU with AMX our int4 matmuls leave no room for the bf16 prompt model: one model serves every
    call, so a request's numbers do not depend on what else shares its calls (a prompt ran in bf16 or
    f32 depending on the call's size before), and the weights are held once."""
    from conftest import AMX

    from janus_ov import runtime as rt

    monkeypatch.setattr(rt, "cpu_flags", lambda: AMX)
    runtime = rt.Runtime(tiny_ir_lm_int4, max_concurrency=1, warm_up=False)
    assert runtime.prompt_model is None and set(runtime._paged) == {"language_model", *map(rt.step_part, rt.STEP_TOKENS)}
    assert matmul.OP_TYPE in {op.get_type_name() for op in runtime._paged["language_model"][0].get_ops()}
    with runtime.context() as ctx:
        assert ctx.lm_part(rt.PROMPT_TOKENS + 10) == "language_model"


def test_without_a_compiler_one_model_with_the_plugins_matmuls_serves(tiny_ir_lm_int4, tmp_path, monkeypatch, capsys):
    """A machine without g++: our operations cannot be built, and the language model serves with the
    plugin's matmuls, as before."""
    from janus_ov import native
    from janus_ov import runtime as rt

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(native, "_reader", None)  # as in a new process
    monkeypatch.setattr(native, "_dll", None)
    runtime = rt.Runtime(tiny_ir_lm_int4, max_concurrency=1, warm_up=False, cache_dir=tmp_path / "compiled")
    assert "using the plugin's own operations" in capsys.readouterr().out
    # One language model, with the plugin's matmuls; on AMX CPUs its bf16 prompt model beside it, as always.
    amx = "amx_bf16" in rt.cpu_flags()
    assert (runtime.prompt_model is not None) == amx
    assert set(runtime._paged) == {"language_model", *(["prompt_model"] if amx else [])}
    assert matmul.OP_TYPE not in {op.get_type_name() for op in runtime._paged["language_model"][0].get_ops()}
    width = ov.Core().read_model(tiny_ir_lm_int4 / "language_model.xml").input("inputs_embeds").get_partial_shape()[-1]
    with runtime.context() as ctx:
        ctx.start([80])
        out = ctx.language_model(np.ones((70, width.get_length()), np.float32), [70])
    assert np.isfinite(out).all()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_packed_weights_are_advised_huge_pages():
    """Every call streams the packed weights, a core faster over 2 MiB pages: a matrix of 2 MiB or more
    is packed onto whole huge pages, advised before it is written. In a child: in this process, freed
    matrices' advised memory may be reused, so the advised total need not grow."""
    import subprocess

    code = """
import numpy as np
from janus_ov import matmul, native
from janus_ov.memory import advised_huge
assert matmul.prepare("CPU", {"INFERENCE_PRECISION_HINT": "f32"})
n, k = 2048, 4096  # 4 MiB packed
u = np.random.default_rng(0).integers(0, 256, n * k // 2, dtype=np.uint8)
scale, zero = np.full(n * k // 64, np.float16(0.01)).view(np.uint16), np.full(n * k // 128, 0x88, np.uint8)
before = advised_huge()
key = native.loaded().janus_matmul_pack(u.ctypes.data, scale.ctypes.data, zero.ctypes.data, n, k)
print("id", key, "advised", advised_huge() - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(os.getcwd())})
    assert out.returncode == 0, out.stderr
    _, key, _, advised = out.stdout.split()
    assert int(key) > 0 and int(advised) >= 2048 * 4096 // 2


def test_weights_that_do_not_fit_in_memory_fail_with_a_clear_error():
    """Repacking needs the weights' size again: where the allocation fails the call says so, instead
    of writing through a null pointer (a process with its address space capped, in a child)."""
    import subprocess

    code = """
import resource, numpy as np
from janus_ov import matmul, native
assert matmul.prepare("CPU", {"INFERENCE_PRECISION_HINT": "f32"})
n, k = 16384, 16384  # 128 MB of u4
u, scale, zero = np.zeros(n * k // 2, np.uint8), np.zeros(n * k // 64, np.uint16), np.zeros(n * k // 128, np.uint8)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 64 * 2**20, resource.RLIM_INFINITY))
print("id", native.loaded().janus_matmul_pack(u.ctypes.data, scale.ctypes.data, zero.ctypes.data, n, k))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(os.getcwd())})
    assert out.returncode == 0 and "id 0" in out.stdout, out.stderr
