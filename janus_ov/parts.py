"""The OpenVINO IR parts of a converted Janus model: the one place that names them.

Every converted model directory holds these seven IRs (`<name>.xml` + `<name>.bin`).
Shapes use N = images, B = rows, T = new tokens, P = cached tokens, H = text hidden size,
V = text vocabulary, K = image codebook size (16384 in real checkpoints).

| part            | inputs                                                          | outputs                               |
|-----------------|-----------------------------------------------------------------|---------------------------------------|
| vision          | pixel_values f32 [N,3,384,384]                                  | image_embeds f32 [N,576,H]            |
| text_embeddings | input_ids i64 [B,T]                                             | inputs_embeds f32 [B,T,H]             |
| language_model  | inputs_embeds f32 [B,T,H], attention_mask i64 [B,P+T],          | last_hidden_state f32 [B,T,H]         |
|  (stateful)     | position_ids i64 [B,T], beam_idx i32 [B]                        |  (after the final RMSNorm)            |
| lm_head         | hidden_states f32 [B,T,H]                                       | logits f32 [B,T,V]                    |
| gen_embeddings  | image_ids i64 [B,T]                                             | inputs_embeds f32 [B,T,H]             |
| gen_head        | hidden_states f32 [2N,H] (N conditional rows, then N            | logits f32 [N,K]                      |
|                 | unconditional rows), cfg_weight f32 []                          |  = uncond + w * (cond - uncond)       |
| vq_decoder      | image_ids i64 [N,576], or [N,R*24]: the top R of the 24 token   | images f32 [N,3,384,384] (about -1..1)|
|                 | rows (a preview of the rows made so far)                        |  or [N,3,R*16,384]                    |

The language model's IR keeps its KV cache as OpenVINO state (one state per layer for keys and
one for values): `reset_state()` on its infer request starts a new sequence; `beam_idx`
gathers the cached rows at every call, so passing `arange(B)` keeps them and a permutation
reorders them. That is the portable form on disk; at run time the runtime rewrites it into a
PagedAttention model with a cache it owns (kv_cache.py), which is faster on CPU.
Batch and lengths are dynamic everywhere.
"""

PARTS = ("vision", "text_embeddings", "language_model", "lm_head", "gen_embeddings", "gen_head", "vq_decoder")

INPUTS = {
    "vision": ("pixel_values",),
    "text_embeddings": ("input_ids",),
    "language_model": ("inputs_embeds", "attention_mask", "position_ids", "beam_idx"),
    "lm_head": ("hidden_states",),
    "gen_embeddings": ("image_ids",),
    "gen_head": ("hidden_states", "cfg_weight"),
    "vq_decoder": ("image_ids",),
}

OUTPUTS = {
    "vision": ("image_embeds",),
    "text_embeddings": ("inputs_embeds",),
    "language_model": ("last_hidden_state",),
    "lm_head": ("logits",),
    "gen_embeddings": ("inputs_embeds",),
    "gen_head": ("logits",),
    "vq_decoder": ("images",),
}

WEIGHT_FORMATS = ("int4", "int4-sym128", "int8", "fp16", "fp32")  # compress.py says what each one means


def weight_types(ov_model) -> dict:
    """Element type -> number of weight values: how a part's weights are stored (for tests/notes)."""
    import numpy as np

    counts: dict = {}
    for op in ov_model.get_ops():
        if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2:
            key = op.get_output_element_type(0).get_type_name()
            counts[key] = counts.get(key, 0) + int(np.prod(op.get_output_shape(0)))
    return counts


def int4_group_size(ov_model) -> int | None:
    """How many input channels share one scale in a part's int4 weights, or None if it has none
    grouped: NNCF stores grouped int4 weights as [out, groups, group] (and their zero points as
    [out, groups, 1]); per-channel int4, such as the screened head's, is [out, in]."""
    sizes = [op.get_output_shape(0)[2] for op in ov_model.get_ops()
             if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in ("u4", "i4")
             and len(op.get_output_shape(0)) == 3]
    return max(sizes) if sizes and max(sizes) > 1 else None


def integer_weights(ov_model) -> bool:
    """Whether a part's weights are int4/int8. Weights only (rank >= 2): the PagedAttention rewrite
    itself adds empty u8 constants, which once made fp16 models count as integer ones."""
    return any(t in weight_types(ov_model) for t in ("u4", "i4", "u8", "i8"))
