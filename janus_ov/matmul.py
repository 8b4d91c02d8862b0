"""The language model's int4 matmuls: our own operation in place of the CPU plugin's, for steps.

A decode or image step multiplies 1-8 rows by every weight of the language model, so it lasts as
long as the weights take to stream from memory, and the plugin's int4 kernels stream them at about
half of what the memory gives (figures: benchmarks/results/design-measurements.md). On CPUs with
AVX-512 VNNI, `replace_int4_matmuls` swaps each MatMul whose weights are NNCF's INT4_ASYM with
groups of 64 (our recipe) or INT4_SYM with groups of 64 or 128 (`int4-sym128`) for matmul.cpp's
operation, which takes the weights over in a layout of its own (repacked at load; the IR's copy
is then dropped). Prompt-sized calls run through it too: rows go 8 at a time over each few
blocks of weights while they are in cache, within 3 % of the plugin's kernels on a 668-token prompt,
so one compiled model serves every call and the weights are held once.
Other weights (int8, other recipes, shapes the kernel does not take) keep the plugin's matmuls.
"""

from __future__ import annotations

import os

import numpy as np
import openvino as ov

from . import native
from .tuning import cpu_flags

OP_TYPE = "JanusInt4MatMul"
GROUP = 64  # the kernel's group of inputs per scale: our recipe's (compress.py); 128 is taken as two
# Calls of this many rows or more run on AMX's tiles where the CPU has them (design-measurements.md).
AMX_ROWS = 3


def wanted(device: str, config: dict, cpu: set | None = None) -> bool:
    """Whether a language model compiled with `config` on `device` should get our int4 matmuls: CPUs
    with AVX-512 VNNI (cpu: feature flags, default this machine's), f32 activations (as streaming_config
    gives integer weights), unless JANUS_OV_MATMUL=plugin (A/B runs)."""
    flags = cpu_flags() if cpu is None else cpu
    return (device.startswith("CPU") and {"avx512_vnni", "avx512bw"} <= flags
            and config.get("INFERENCE_PRECISION_HINT") == "f32" and os.environ.get("JANUS_OV_MATMUL", "own") == "own")


def amx_rows(cpu: set | None = None) -> int:
    """Rows from which a call runs on AMX's tiles instead of vpdpbusd: AMX_ROWS on CPUs with AMX-INT8
    (cpu: feature flags, default this machine's), unless JANUS_OV_MATMUL_AMX=off (A/B runs); 0 (never)
    elsewhere."""
    flags = cpu_flags() if cpu is None else cpu
    return AMX_ROWS if "amx_int8" in flags and os.environ.get("JANUS_OV_MATMUL_AMX", "on") == "on" else 0


def prepare(device: str, config: dict) -> bool:
    """Build (if need be) and load our operation where `wanted`. True if it is loaded."""
    dll = native.load(config.get("CACHE_DIR")) if wanted(device, config) else None
    if dll is None or not hasattr(dll, "janus_matmul_pack"):
        return False
    dll.janus_matmul_amx_rows(amx_rows())  # False, and the vector kernel for every call, if the OS refuses AMX
    return True


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
        if not key:
            raise MemoryError(f"no memory to repack the int4 weights of {node.get_friendly_name()} ({n} x {k})")
        ours = native.new_node(OP_TYPE, {"weights": key}, [node.input_value(0)])
        dll.janus_matmul_forget(key)  # the node holds the weights now, as long as a graph holds it
        ours.set_friendly_name(node.get_friendly_name())
        node.output(0).replace(ours.output(0))
        swapped += 1
    if swapped:
        model.validate_nodes_and_infer_types()
    return swapped


def _int4_constants(matmul) -> tuple | None:
    """(u, zero point or None, scale) Constants of a MatMul x @ W^T with f32 x and W decompressed from
    int4 in groups along K, one f16 scale per group, N a multiple of 16: NNCF's INT4_ASYM with groups of
    64 (W = (u - zero point) * scale, both u4) or INT4_SYM with groups of 64 or 128 (W = i * scale, i4);
    None for any other MatMul."""
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
    weights, scale = sorted((node.input_value(i).get_node() for i in (0, 1)), key=lambda n: n.get_type_name() == "Constant")
    if scale.get_type_name() != "Constant" or scale.get_element_type() != ov.Type.f16:
        return None
    if weights.get_type_name() == "Subtract":  # asymmetric
        u, zero = (_int4_constant(weights.input_value(i).get_node(), ov.Type.u4) for i in (0, 1))
        groups_of = (GROUP,)
    else:
        u, zero, groups_of = _int4_constant(weights, ov.Type.i4), None, (GROUP, 2 * GROUP)
    if u is None or (weights.get_type_name() == "Subtract" and zero is None):
        return None
    n, groups, group = u.get_output_shape(0)
    if group not in groups_of or n % 16 or list(scale.get_output_shape(0)) != [n, groups, 1] \
            or (zero is not None and list(zero.get_output_shape(0)) != [n, groups, 1]):
        return None
    return u, zero, scale


def _int4_weights(matmul) -> tuple | None:
    """(u, scale, zero point, N, K) for the kernel (janus_matmul_pack) of a MatMul `_int4_constants`
    takes: u and the zero points u4 as OpenVINO packs them, two to a byte, one f16 scale and zero point
    per 64 along K. Symmetric weights become u = i + 8 with zero point 8; groups of 128, two of 64."""
    constants = _int4_constants(matmul)
    if constants is None:
        return None
    u, zero, scale = constants
    n, groups, group = u.get_output_shape(0)
    data = np.ascontiguousarray(u.get_data()).view(np.uint8)  # i4 comes as int8 bytes
    scales = np.ascontiguousarray(scale.get_data()).view(np.uint16).reshape(n, groups)
    if zero is None:
        data = data ^ np.uint8(0x88)  # each nibble's two's complement i -> i + 8
        zeros = np.full(n * groups * group // GROUP // 2, 0x88, np.uint8)
    else:
        zeros = np.ascontiguousarray(zero.get_data())
    scales = np.ascontiguousarray(np.repeat(scales, group // GROUP, axis=1))
    return data, scales, zeros, n, groups * group


def _int4_constant(node, kind):
    """The 3-d Constant of element type `kind` behind a Convert, else None."""
    if node.get_type_name() != "Convert":
        return None
    constant = node.input_value(0).get_node()
    if constant.get_type_name() != "Constant" or constant.get_element_type() != kind:
        return None
    return constant if len(constant.get_output_shape(0)) == 3 else None
