"""The language model's attention: our own operation in place of the CPU plugin's PagedAttention.

kv_cache.compile_paged turns the stateful language model into a PagedAttention model with
OpenVINO's own transformation; on CPUs with AVX-512 this module then swaps each PagedAttention node
for ours (attention.cpp): the same inputs and cache layout, a faster kernel for what our steps do
most -- one new token for each of several sequences, as every CFG image step is (the plugin's
attention costs 2.5-3x ours there; figures: benchmarks/results/design-measurements.md).

The operation is C++ built here, at first use on a machine, with the system's g++ against the
headers and TBB that the OpenVINO wheel ships (a few seconds, once: the library is kept beside the
compiled-model cache, keyed by the source, the OpenVINO version and this CPU). Without a compiler, on
CPUs without AVX-512, or where a build fails, the plugin's PagedAttention stays: the same results.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from .kv_cache import BLOCK_SIZE
from .tuning import cpu_flags, machine_key

SOURCE = Path(__file__).with_name("attention.cpp")
OP_TYPE, OP_VERSION = "JanusPagedAttention", "janus_ov"
# Plugin settings that change the KV cache's layout from the one attention.cpp reads and writes.
CACHE_SETTINGS = ("KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION", "KEY_CACHE_QUANT_MODE",
                  "VALUE_CACHE_QUANT_MODE", "KEY_CACHE_GROUP_SIZE", "VALUE_CACHE_GROUP_SIZE")

_lock = threading.Lock()
_reader = None  # a Core that reads our operation's IR (False: the library cannot be had here)
_dll = None  # the library, for its slot registry
_kept: dict = {}  # (slot, layer) -> the (keys, values) tensors registered: alive while registered


def wanted(device: str, config: dict) -> bool:
    """Whether a language model compiled with `config` on `device` should get our operation: on CPUs
    with AVX-512 (on AVX2 alone the kernel is unmeasured against the plugin's), with the plugin's
    default cache layout (the one attention.cpp reads) and f32 activations -- as streaming_config
    gives int4 and int8 language models; in bf16 the bookkeeping the graph hands the operation as
    floats would lose digits (662 tokens became 664) -- unless JANUS_OV_ATTENTION=plugin (A/B runs)."""
    return (device.startswith("CPU") and "avx512f" in cpu_flags() and not any(k in config for k in CACHE_SETTINGS)
            and config.get("INFERENCE_PRECISION_HINT") == "f32" and os.environ.get("JANUS_OV_ATTENTION", "own") == "own")


def library(build_dir: str | Path | None) -> Path | None:
    """This machine's build of attention.cpp (built now if there is none), or None if it cannot be
    built here. build_dir: where builds are kept (None: a temporary folder, for this process)."""
    import openvino

    root = Path(openvino.__file__).parent
    key = hashlib.sha256(SOURCE.read_bytes() + machine_key().encode()).hexdigest()[:16]
    folder = Path(build_dir) if build_dir else Path(tempfile.gettempdir()) / f"janus-ov-{os.getuid()}"
    target = folder / f"libjanus_attention-{key}.so"
    if target.is_file():
        return target
    core_lib = sorted((root / "libs").glob("libopenvino.so.*"))
    tbb_lib = sorted((root / "libs").glob("libtbb.so.*"))
    if not (core_lib and tbb_lib and (root / "include" / "openvino" / "op" / "op.hpp").is_file()):
        print("janus_ov: this OpenVINO wheel has no headers or libraries to build attention.cpp with; "
              "using the plugin's PagedAttention.")
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{target.name}.{os.getpid()}.{threading.get_ident()}"
        subprocess.run(["g++", "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd",
                        f"-I{root / 'include'}", str(SOURCE), f"-L{root / 'libs'}", f"-l:{core_lib[0].name}",
                        f"-l:{tbb_lib[0].name}", f"-Wl,-rpath,{root / 'libs'}", "-o", str(partial)],
                       check=True, capture_output=True, text=True, timeout=300)
        os.replace(partial, target)  # whole or absent: a reader never loads a half-written library
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or err
        print(f"janus_ov: could not build attention.cpp ({str(detail).strip()[:300]}); using the plugin's PagedAttention.")
        return None
    return target


def prepare(device: str, config: dict) -> bool:
    """Build (if need be) and load our operation where `wanted`. True if it is loaded.

    It is loaded into a Core of this module's own, which only reads our operation's one-node IR
    (`_new_node`), never into the Core that compiles: OpenVINO's IR reader shares its extensions
    between threads, so an extension in the compiling Core crashed the runtime's parallel compiles.
    The compiled model needs none: the plugin runs the node's own `evaluate`."""
    global _reader, _dll
    if not wanted(device, config):
        return False
    with _lock:
        if _reader is None:
            path = library(config.get("CACHE_DIR"))
            if path is None:
                _reader = False
                return False
            reader = ov.Core()
            reader.add_extension(str(path))
            # The same file OpenVINO loaded, opened here too for its slot registry: the same loaded copy.
            _dll = ctypes.CDLL(str(path))
            _dll.janus_attention_open.restype = ctypes.c_int
            _dll.janus_attention_bind.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                  ctypes.c_int64, ctypes.c_int, ctypes.c_int]
            _reader = reader
    return bool(_reader)


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
        slot = request.janus_attention_slot = _dll.janus_attention_open()
        request.set_tensor("attention_slot", ov.Tensor(np.array([slot], np.int32)))
        weakref.finalize(request, _close, slot)
    for name, keys in tensors.items():
        if name.startswith("key_cache."):
            layer = int(name.split(".")[1])
            values = tensors[f"value_cache.{layer}"]
            blocks, kv_heads, _, size = keys.shape
            _kept[(slot, layer)] = (keys, values)
            _dll.janus_attention_bind(slot, layer, keys.data.ctypes.data, values.data.ctypes.data, blocks, kv_heads, size)


def _close(slot: int) -> None:
    _dll.janus_attention_close(slot)
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
    if not nodes or any(s is None for s in shapes) or not _reader:
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
    step, rows = ops.constant(np.array([1], np.int64)), ops.constant(np.array([-1, width_q], np.int64))
    block = BLOCK_SIZE["CPU"]
    for node, (kv_heads, size) in zip(nodes, shapes):
        layer = int(node.input_value(3).get_any_name().split(".")[-1])  # key_cache.<layer>
        scale = float(node.input_value(9).get_node().get_data())
        packed = ops.concat([book] + [ops.reshape(node.input_value(i), flat, False) for i in (0, 1, 2)], 0)
        ours = _new_node(packed, layer, width_q // size, scale)
        out = ops.slice(ops.reshape(ours, heads, False), start, stop, step, zero)
        node.output(0).replace(ops.reshape(out, rows, False).output(0))
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
    """Our operation on `packed`: read from a one-node IR (Python cannot construct a C++
    operation directly), then moved onto the language model's graph."""
    xml = ('<?xml version="1.0"?><net name="t" version="11"><layers>'
           '<layer id="0" name="packed" type="Parameter" version="opset1"><data shape="?" element_type="f32"/>'
           '<output><port id="0" precision="FP32"><dim>-1</dim></port></output></layer>'
           f'<layer id="1" name="attention" type="{OP_TYPE}" version="{OP_VERSION}">'
           f'<data layer="{layer}" heads="{heads}" scale="{scale!r}"/>'
           '<input><port id="0"><dim>-1</dim></port></input>'
           '<output><port id="1" precision="FP32"><dim>-1</dim></port></output></layer>'
           '<layer id="2" name="out" type="Result" version="opset1"><input><port id="0"><dim>-1</dim>'
           '</port></input></layer></layers><edges><edge from-layer="0" from-port="0" to-layer="1" to-port="0"/>'
           '<edge from-layer="1" from-port="1" to-layer="2" to-port="0"/></edges></net>')
    with _lock:
        template = _reader.read_model(xml, ov.Tensor(ov.Type.u8, [0]))  # a weights tensor: `xml` is the IR's text
    node = next(op for op in template.get_ordered_ops() if op.get_type_name() == OP_TYPE)
    node.set_arguments([packed.output(0)])
    node.validate_and_infer_types()
    node.set_friendly_name(f"attention.{layer}")
    return node
