"""Final weight types of each converted part (fp32 / fp16 / int8 / int4)."""

from __future__ import annotations


def compress(ov_model, part_name: str, weights: str):
    """Give `ov_model`'s weights their final type for `weights`; returns the (same) model."""
    set_float_weights(ov_model, "f32" if weights == "fp32" else "f16")
    return ov_model


def set_float_weights(ov_model, target: str) -> None:
    """Re-type the bf16 weight constants left by 16-bit tracing, one constant at a time.

    Doing it per constant keeps the extra memory to one tensor. The Convert to f32 that
    follows each weight stays, so fp16 weights are decompressed by the plugin as usual.
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    dtype = np.float32 if target == "f32" else np.float16
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.bf16:
            continue
        values = bf16_to_f32(op.get_data())
        if dtype is np.float16:
            values = np.clip(values, -65504, 65504).astype(np.float16)
        replacement = ops.constant(values)
        replacement.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(replacement.output(0))
    ov_model.validate_nodes_and_infer_types()


def bf16_to_f32(raw):
    """OpenVINO hands bf16 constant data out as 16-bit words; bf16 is the top half of an f32."""
    import numpy as np

    return (np.ascontiguousarray(raw).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
