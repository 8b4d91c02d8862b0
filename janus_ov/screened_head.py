"""The LM head as a screen and an exact pass: int4 weights rank the vocabulary, int8 weights score the best.

Every chat token reads the whole lm_head (vocabulary x hidden: 102400 x 2048 in Pro-1B), about a
fifth of the bytes a decode step streams. The logits that decide a token are few: greedy decoding
takes the largest, and top-p sampling keeps a nucleus of a handful. So the head runs in two passes
inside one graph (the idea of SVD-softmax, Shim et al. 2017, with int4 as the cheap preview):

1. screen: all V logits from per-channel INT4 weights (half the bytes of INT8);
2. exact: the CANDIDATES largest of them are recomputed from the INT8 weights (a Gather of those
   rows: 64 of 102400) and written back over their screened values.

The output keeps the part's contract (logits f32 [B,T,V]): the candidates carry INT8 logits, as
the plain INT8 head gave, and the rest int4 ones. Greedy decoding is unchanged as long as the INT8
argmax is among the screen's top CANDIDATES; sampling sees INT8 values wherever the probability
mass is and int4 ones in the tail. How far down the screen's ranking the true top token falls, and
the speed of both heads: benchmarks/results/design-measurements.md.
"""

from __future__ import annotations

CANDIDATES = 64
SCREEN = "lm_head/screen"  # node names, for the compression passes (compress.py)
EXACT = "lm_head/exact_rows"


def screened(ov_model, candidates: int = CANDIDATES):
    """The traced lm_head (hidden_states [B,T,H] -> MatMul with the [V,H] weight -> logits [B,T,V])
    rebuilt as screen + exact pass, with two copies of the weight for the compression to type apart."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    matmul = _the_matmul(ov_model)
    weight = matmul.input_value(1)  # the float weight [V,H] (a Convert of the 16-bit constant)
    vocab, width = weight.get_shape()
    constant = weight.get_node()
    if constant.get_type_name() == "Convert":
        constant = constant.input_value(0).get_node()
    # Its own copy of the stored constant: one constant feeding both passes would get one type.
    exact_weight = ops.convert(ov.op.Constant(constant.get_tensor_view()), ov.Type.f32)

    hidden = ov_model.input("hidden_states")
    flat = ops.reshape(hidden, ops.constant(np.array([-1, width], np.int64)), special_zero=False)  # [R,H]
    scores = ops.matmul(flat, weight, transpose_a=False, transpose_b=True)  # [R,V]
    scores.set_friendly_name(SCREEN)
    top = ops.topk(scores, ops.constant(np.int64(min(candidates, vocab))), axis=1, mode="max", sort="none",
                   index_element_type=ov.Type.i32)
    rows = ops.gather(exact_weight, top.output(1), ops.constant(np.int64(0)))  # [R,C,H]
    rows.set_friendly_name(EXACT)
    exact = ops.matmul(rows, ops.unsqueeze(flat, ops.constant(np.int64(2))), False, False)  # [R,C,1]
    mixed = ops.scatter_elements_update(scores, top.output(1), ops.squeeze(exact, ops.constant(np.int64(2))),
                                        ops.constant(np.int64(1)))
    lead = ops.gather(ops.shape_of(hidden, output_type="i64"), ops.constant(np.array([0, 1], np.int64)),
                      ops.constant(np.int64(0)))
    logits = ops.reshape(mixed, ops.concat([lead, ops.constant(np.array([vocab], np.int64))], axis=0), False)
    logits.output(0).get_tensor().set_names(ov_model.output(0).get_names())
    return ov.Model([logits], [hidden.get_node()], "lm_head")


def _the_matmul(ov_model):
    matmuls = [op for op in ov_model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    if len(matmuls) != 1 or not matmuls[0].get_attributes()["transpose_b"]:
        raise ValueError(f"expected the traced lm_head: one MatMul with a [V,H] weight, got {len(matmuls)} MatMuls")
    return matmuls[0]
