"""Final weight types of each converted part: `--weights int4 | int8 | fp16 | fp32`.

PLAN says what each part gets. It was decided by measurement (tiny model: error against the
fp32 export; full-size Janus-Pro-1B: bytes) and by how often each part's weights are read:

- language_model: the bulk of the bytes (1.2 B params in Pro-1B, 6.5 B in Pro-7B) and read
  in full for every token, so decoding is memory-bound on it. int4 = NNCF INT4_ASYM, group
  size 64, ratio 1.0, as the reference OpenVINO notebook does (NNCF keeps its last matmul in
  INT8 by default, as the notebook does too).
- lm_head (V x H, 0.42 GB in fp16 for Pro-1B) is read in full for every text token: INT8
  per-channel halves those bytes for a logit error far below the int4 LM's. The logits are where a
  model's output distribution is most sensitive (hence NNCF's "last layer in INT8" rule), so the
  ones that decide a token stay INT8: `int8-screened` (screened_head.py) ranks the vocabulary with
  per-channel INT4 weights, another ~0.1 GB less per token, and recomputes the best 64 from INT8.
- gen_head (H x H + H x 16384, 67 MB fp16) is read for every image step (576 per image):
  INT8 for the same reason as lm_head.
- text_embeddings (a Gather: only the looked-up rows are read) is large on disk and in RAM
  (0.42 GB fp16): INT8 halves it; the error is the int8 rounding of a row.
- vision (SigLIP-L, 0.3 B params, run once per image): INT8 per-channel, as optimum-intel
  does for the vision encoders of int4 VLMs: half the bytes, faster int8 kernels, and the
  plugin's repacked copy in RAM halves with it; the error it adds to image embeddings is far
  below the int4 LM's.
- vq_decoder (convolutions at 384x384, run once per image, compute-bound; its output is
  pixels users look at, and INT8 weights cost 11 % relative error there): fp16.
- gen_embeddings is tiny (16384 x 8 codebook + an MLP): fp16.
`int4-sym128` is int4 with NNCF's data-free default recipe for the language model (INT4_SYM, group
size 128: what optimum-intel applies by default), whose kernels are faster on some CPUs; its output
deviation against fp32 beside int4's: benchmarks/results/ (recipe_deviation).
`int8` is int4 with the language model in INT8_ASYM; `fp16` / `fp32` leave every part in that
float type.

The errors and sizes behind each choice: figures in benchmarks/results/design-measurements.md.
Float weights become fp16 in every format but fp32 (OpenVINO's save-time
compression, which keeps constants fp16 cannot hold in f32).
"""

from __future__ import annotations

_INT4_PLAN = {
    "vision": "int8",
    "text_embeddings": "int8",
    "language_model": "int4",
    "lm_head": "int8-screened",
    "gen_embeddings": "fp16",
    "gen_head": "int8",
    "vq_decoder": "fp16",
}

PLAN = {
    "int4": _INT4_PLAN,
    "int4-sym128": {**_INT4_PLAN, "language_model": "int4-sym128"},
    "int8": {**_INT4_PLAN, "language_model": "int8"},
    "fp16": dict.fromkeys(_INT4_PLAN, "fp16"),
    "fp32": dict.fromkeys(_INT4_PLAN, "fp32"),
}


def compress(ov_model, part_name: str, weights: str):
    """Give `ov_model`'s weights their final type for `weights`; returns the compressed model."""
    return compress_as(ov_model, PLAN[weights][part_name])


# NNCF's arguments for each integer weight type (ratio 1.0: every int4 candidate layer in int4).
RECIPES = {
    "int8": {"mode": "INT8_ASYM"},
    "int4": {"mode": "INT4_ASYM", "group_size": 64, "ratio": 1.0},  # the reference notebook's recipe
    # NNCF's data-free default. "adjust": a matmul whose input width 128 does not divide (none in the
    # real checkpoints; the tiny model's 64-wide ones) gets the largest group size that does.
    "int4-sym128": {"mode": "INT4_SYM", "group_size": 128, "ratio": 1.0, "group_size_fallback": "adjust"},
    # The screen of int8-screened: one scale per row is enough to rank (and is the fastest int4 kernel);
    # all_layers: NNCF would otherwise keep a model's last matmul out of int4.
    "int4-channel": {"mode": "INT4_SYM", "group_size": -1, "ratio": 1.0, "all_layers": True},
}


def nncf_arguments(mode: str) -> dict:
    """nncf.compress_weights keyword arguments of a RECIPES entry."""
    import nncf

    if mode not in RECIPES:
        raise ValueError(f"unknown weight mode {mode!r}")
    recipe = dict(RECIPES[mode])
    recipe["mode"] = getattr(nncf.CompressWeightsMode, recipe["mode"])
    if "group_size_fallback" in recipe:
        recipe["advanced_parameters"] = nncf.AdvancedCompressionParameters(
            group_size_fallback_mode=nncf.GroupSizeFallbackMode(recipe.pop("group_size_fallback")))
    return recipe


def compress_as(ov_model, mode: str):
    """Apply one weight type ("fp32", "fp16", "int8-screened" or a key of RECIPES) to every weight of `ov_model`."""
    import nncf

    if mode in ("fp32", "fp16"):
        set_float_weights(ov_model, "f32" if mode == "fp32" else "f16")
        return ov_model
    if mode == "int8-screened":
        ov_model = _screened(ov_model)
    else:
        ov_model = nncf.compress_weights(ov_model, **nncf_arguments(mode))
    set_float_weights(ov_model, "f16")  # whatever NNCF left in bf16 (e.g. nothing to compress)
    return ov_model


def _screened(ov_model):
    """The lm_head rebuilt by screened_head.py, its exact rows INT8 and its screen per-channel INT4."""
    import nncf

    from .screened_head import EXACT, SCREEN, screened

    ov_model = screened(ov_model)
    ov_model = nncf.compress_weights(ov_model, **nncf_arguments("int8"), ignored_scope=nncf.IgnoredScope(names=[SCREEN]))
    return nncf.compress_weights(ov_model, **nncf_arguments("int4-channel"), ignored_scope=nncf.IgnoredScope(names=[EXACT]))


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
