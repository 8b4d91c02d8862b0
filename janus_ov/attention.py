"""The language model's attention: our own operation in place of the CPU plugin's PagedAttention.

kv_cache.compile_paged turns the stateful language model into a PagedAttention model with
OpenVINO's own transformation; on CPUs with AVX-512 this module then swaps each PagedAttention node
for ours (attention.cpp): the same inputs and cache layout, a faster kernel for what our steps do
most -- one new token for each of several sequences, as every CFG image step is (the plugin's
attention costs 2.5-3x ours there; figures: benchmarks/results/design-measurements.md).

The operation is C++ (attention.cpp), built and loaded by native.py. Without a compiler, on CPUs
without AVX-512, or where a build fails, the plugin's PagedAttention stays: the same results.
"""

from __future__ import annotations

import os
import weakref

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from . import native
from .kv_cache import BLOCK_SIZE
from .tuning import cpu_flags

OP_TYPE = "JanusPagedAttention"
# Plugin settings that change the KV cache's layout from the one attention.cpp reads and writes.
CACHE_SETTINGS = ("KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION", "KEY_CACHE_QUANT_MODE",
                  "VALUE_CACHE_QUANT_MODE", "KEY_CACHE_GROUP_SIZE", "VALUE_CACHE_GROUP_SIZE")

_kept: dict = {}  # (slot, layer) -> the (keys, values) tensors registered: alive while registered


def wanted(device: str, config: dict) -> bool:
    """Whether a language model compiled with `config` on `device` should get our operation: on CPUs
    with AVX-512 (on AVX2 alone the kernel is unmeasured against the plugin's), with the plugin's
    default cache layout (the one attention.cpp reads) and f32 activations -- as streaming_config
    gives int4 and int8 language models; in bf16 the bookkeeping the graph hands the operation as
    floats would lose digits (662 tokens became 664) -- unless JANUS_OV_ATTENTION=plugin (A/B runs)."""
    return (device.startswith("CPU") and "avx512f" in cpu_flags() and not any(k in config for k in CACHE_SETTINGS)
            and config.get("INFERENCE_PRECISION_HINT") == "f32" and os.environ.get("JANUS_OV_ATTENTION", "own") == "own")


def prepare(device: str, config: dict) -> bool:
    """Build (if need be) and load our operation where `wanted` (native.load). True if it is loaded."""
    return wanted(device, config) and native.load(config.get("CACHE_DIR")) is not None


def bound(request: ov.InferRequest, tensors: dict) -> None:
    """Tell `request`'s attention operations the cache tensors (name -> tensor: key_cache.<layer>,
    value_cache.<layer>) just bound to it. Requests without our operations are left alone.

    A request gets a slot in the library's registry on first use, its number bound once as the
    request's `attention_slot` input; the slot closes with the request. The registry also keeps the
    tensors themselves alive here, so whatever else rebinds the request, no operation can read freed
    memory."""
    if not any(port.get_any_name() == "attention_slot" for port in request.get_compiled_model().inputs):
        return
    slot = getattr(request, "janus_attention_slot", None)
    if slot is None:
        slot = request.janus_attention_slot = native.loaded().janus_attention_open()
        request.set_tensor("attention_slot", ov.Tensor(np.array([slot], np.int32)))
        weakref.finalize(request, _close, native.loaded(), slot)
    for name, keys in tensors.items():
        if name.startswith("key_cache."):
            layer = int(name.split(".")[1])
            values = tensors[f"value_cache.{layer}"]
            blocks, kv_heads, _, size = keys.shape
            _kept[(slot, layer)] = (keys, values)
            native.loaded().janus_attention_bind(slot, layer, keys.data.ctypes.data, values.data.ctypes.data, blocks, kv_heads,
                                                 size)


def _close(dll, slot: int) -> None:
    dll.janus_attention_close(slot)  # the library that opened the slot, even if another is loaded by now
    for key in [k for k in _kept if k[0] == slot]:
        del _kept[key]


def replace_paged_attention(model: ov.Model) -> bool:
    """Swap every PagedAttention node of `model` (after paged_attention_transformation) for ours,
    where `prepare` has loaded it.
    The cache tensors stay model inputs in the plugin's layout, bound as before (kv_cache.bind_tensors,
    which also tells our operations, `bound`); a new input `attention_slot` says which registry slot. False, and
    the model untouched, if it is not loaded or a node is not one the kernel takes."""
    nodes = [op for op in model.get_ordered_ops() if op.get_type_name() == "PagedAttentionExtension"]
    shapes = [_heads(node) for node in nodes]
    if not nodes or any(s is None for s in shapes) or native.loaded() is None:
        return False
    first = nodes[0]
    slot = ops.parameter([1], ov.Type.i32, name="attention_slot")
    slot.output(0).get_tensor().set_names({"attention_slot"})
    size = shapes[0][1]
    book = _bookkeeping(first, slot, size)
    # Every layer's output: the q part of its operation's output (the same span for all layers: one
    # token count, one query width), sliced as rows of one head, where the plugin copies row by row (a
    # slice of the flat vector copied element by element: 32 ms over a 668-token prompt's layers).
    i64, zero = ov.Type.i64, ops.constant(np.array([0], np.int64))
    width_q = first.input_value(0).get_partial_shape()[1].get_length()
    flat, heads = ops.constant(np.array([-1], np.int64)), ops.constant(np.array([-1, size], np.int64))
    start = ops.gather(ops.shape_of(ops.reshape(book, heads, False), i64), zero, 0)
    stop = ops.add(start, ops.gather(ops.shape_of(ops.reshape(first.input_value(0), heads, False), i64), zero, 0))
    step = ops.constant(np.array([1], np.int64))
    block = BLOCK_SIZE["CPU"]
    for node, (kv_heads, size) in zip(nodes, shapes):
        layer = int(node.input_value(3).get_any_name().split(".")[-1])  # key_cache.<layer>
        scale = float(node.input_value(9).get_node().get_data())
        packed = ops.concat([book] + [ops.reshape(node.input_value(i), flat, False) for i in (0, 1, 2)], 0)
        ours = _new_node(packed, layer, width_q // size, scale)
        out = ops.slice(ops.reshape(ours, heads, False), start, stop, step, zero)
        # To the queries' own shape: static where the model's token count is (kv_cache.with_tokens).
        node.output(0).replace(ops.reshape(out, ops.shape_of(node.input_value(0), i64), False).output(0))
        keys, values = (node.input_value(i).get_node() for i in (3, 4))
        keys.set_element_type(ov.Type.u8)
        keys.set_partial_shape(ov.PartialShape([-1, kv_heads, block + 8, size]))
        values.set_element_type(ov.Type.u8)
        values.set_partial_shape(ov.PartialShape([-1, kv_heads, block, size + 8]))
    model.add_parameters([slot])
    model.validate_nodes_and_infer_types()
    return True



def _bookkeeping(node, slot, size: int):
    """The bookkeeping every layer's operation reads first (attention.cpp: PagedAttention), as f32,
    built once from the PagedAttention inputs they replace, padded to whole rows of `size` (one head);
    its first value is its padded length."""
    i32 = ov.Type.i32
    past, begins, blocks, tables = (node.input_value(i) for i in (5, 6, 7, 8))
    first = ops.constant(np.array([0], np.int32))
    count = lambda x: ops.gather(ops.shape_of(x, i32), first, 0)  # noqa: E731 - [1] i32
    body = ops.concat([slot, count(node.input_value(0)), count(past), count(blocks), past, begins, tables, blocks], 0)
    row, one = ops.constant(np.array([size], np.int32)), ops.constant(np.array([1], np.int32))
    length = ops.multiply(ops.divide(ops.add(count(body), row), row), row)  # ceil((len + 1) / size) * size
    padding = ops.subtract(length, ops.add(count(body), one))
    flat = ops.convert(ops.concat([length, body], 0), ov.Type.f32)
    return ops.pad(flat, ops.constant(np.array([0], np.int32)), padding, "constant")


def _heads(node) -> tuple[int, int] | None:
    """(kv heads, head size) of a PagedAttention node the kernel takes, else None: no sliding window,
    ALiBi or score outputs in use, keys and values of one size (a multiple of 16, at most 256)."""
    info = node.get_rt_info()
    try:
        kv_heads, size = int(info["num_k_heads"].astype(int)), int(info["k_head_size"].astype(int))
        value_size = int(info["v_head_size"].astype(int))
    except (KeyError, RuntimeError, TypeError, ValueError):
        return None
    constants = {i: node.input_value(i).get_node() for i in (10, 11)}  # sliding window, ALiBi slopes
    if any(c.get_type_name() != "Constant" for c in constants.values()):
        return None
    if int(constants[10].get_data().reshape(-1)[0] if constants[10].get_data().size else 0) != 0:
        return None
    if constants[11].get_data().size or any(node.output(i).get_target_inputs() for i in range(1, node.get_output_size())):
        return None
    if size != value_size or size % 16 or size > 256:
        return None
    return kv_heads, size


def _new_node(packed, layer: int, heads: int, scale: float):
    """Our operation on `packed`, moved onto the language model's graph."""
    node = native.new_node(OP_TYPE, {"layer": layer, "heads": heads, "scale": repr(scale)}, [packed])
    node.set_friendly_name(f"attention.{layer}")
    return node
