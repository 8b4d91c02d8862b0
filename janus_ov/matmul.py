"""The language model's int4 matmuls: our own operation in place of the CPU plugin's, for steps.

A decode or image step multiplies 1-8 rows by every weight of the language model, so it lasts as
long as the weights take to stream from memory, and the plugin's int4 kernels stream them at about
half of what the memory gives (figures: benchmarks/results/design-measurements.md). On CPUs with
AVX-512 VNNI, `replace_int4_matmuls` swaps each MatMul whose weights are NNCF's INT4_ASYM with
groups of 64 (our recipe) for matmul.cpp's operation, which takes the weights over in a layout of
its own (repacked at load; the IR's copy is then dropped). Prompts are compute-bound, where the
plugin's kernels are the faster: the runtime runs them on a second compiled model that keeps the
plugin's matmuls (runtime.prompt_config), and uses ours only when it has that model.
Other weights (int8, other recipes, shapes the kernel does not take) keep the plugin's matmuls.
"""

from __future__ import annotations

import os

import numpy as np
import openvino as ov

from . import native
from .tuning import cpu_flags

OP_TYPE = "JanusInt4MatMul"
GROUP = 64  # the only group size the kernel takes: our recipe's (compress.py)


def wanted(device: str, config: dict, cpu: set | None = None) -> bool:
    """Whether a language model compiled with `config` on `device` should get our int4 matmuls: CPUs
    with AVX-512 VNNI (cpu: feature flags, default this machine's), f32 activations (as streaming_config
    gives integer weights), unless JANUS_OV_MATMUL=plugin (A/B runs)."""
    flags = cpu_flags() if cpu is None else cpu
    return (device.startswith("CPU") and {"avx512_vnni", "avx512bw"} <= flags
            and config.get("INFERENCE_PRECISION_HINT") == "f32" and os.environ.get("JANUS_OV_MATMUL", "own") == "own")


def prepare(device: str, config: dict) -> bool:
    """Build (if need be) and load our operation where `wanted`. True if it is loaded."""
    dll = native.load(config.get("CACHE_DIR")) if wanted(device, config) else None
    return dll is not None and hasattr(dll, "janus_matmul_pack")


def replace_int4_matmuls(model: ov.Model) -> int:
    """Swap every MatMul of `model` with int4 weights the kernel takes for ours (after `prepare`);
    returns how many."""
    dll = native.loaded()
    swapped = 0
    for node in model.get_ordered_ops():
        weights = _int4_weights(node) if node.get_type_name() == "MatMul" else None
        if weights is None:
            continue
        u, scale, zero, n, k = weights
        key = dll.janus_matmul_pack(u.ctypes.data, scale.ctypes.data, zero.ctypes.data, n, k)
        ours = native.new_node(OP_TYPE, {"weights": key}, [node.input_value(0)])
        dll.janus_matmul_forget(key)  # the node holds the weights now, as long as a graph holds it
        ours.set_friendly_name(node.get_friendly_name())
        node.output(0).replace(ours.output(0))
        swapped += 1
    if swapped:
        model.validate_nodes_and_infer_types()
    return swapped


def _int4_weights(matmul) -> tuple | None:
    """(u, scale, zero point, N, K) of a MatMul x @ W^T with f32 x and W = (u - zero point) * scale
    decompressed from u4 constants in groups of 64 along K (scale f16, one per group), N a multiple
    of 16; None for any other MatMul. u and the zero points as OpenVINO packs u4, two to a byte."""
    attributes = matmul.get_attributes()
    if attributes.get("transpose_a") or not attributes.get("transpose_b"):
        return None
    if matmul.get_input_element_type(0) != ov.Type.f32:
        return None
    node = matmul.input_value(1).get_node()
    while node.get_type_name() in ("Convert", "Reshape"):
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Multiply":
        return None
    subtract, scale = sorted((node.input_value(i).get_node() for i in (0, 1)), key=lambda n: n.get_type_name() != "Subtract")
    if subtract.get_type_name() != "Subtract" or scale.get_type_name() != "Constant":
        return None
    u, zero = (_u4_constant(subtract.input_value(i).get_node()) for i in (0, 1))
    if u is None or zero is None or scale.get_element_type() != ov.Type.f16:
        return None
    n, groups, group = u.get_output_shape(0)
    if group != GROUP or n % 16 or list(zero.get_output_shape(0)) != [n, groups, 1] \
            or list(scale.get_output_shape(0)) != [n, groups, 1]:
        return None
    return (np.ascontiguousarray(u.get_data()), np.ascontiguousarray(scale.get_data()).view(np.uint16),
            np.ascontiguousarray(zero.get_data()), n, groups * group)


def _u4_constant(node):
    """The u4 Constant behind a Convert, else None."""
    if node.get_type_name() != "Convert":
        return None
    constant = node.input_value(0).get_node()
    if constant.get_type_name() != "Constant" or constant.get_element_type() != ov.Type.u4:
        return None
    return constant if len(constant.get_output_shape(0)) == 3 else None
