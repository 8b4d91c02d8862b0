"""Conversion to OpenVINO IR: every part matches the PyTorch module it came from.

Tolerances (relative error = max|ov - torch| / max|torch|, tiny random model):
- fp32 export: <= 1e-3 for every part (the issue's bar; measured ~1e-6).
- fp16 export: <= 2e-2 for every part (fp16 weights carry ~3 significant digits).
Compressed exports (int8/int4) are checked in test_compress_* against the fp32 export.
"""

import json

import numpy as np
import openvino as ov
import pytest
import torch
from conftest import F32

from janus_ov import parts
from janus_ov.errors import ConversionError, ModelNotFoundError
from janus_ov.model_info import ModelInfo
from janus_ov.parts import int4_group_size

FP32_TOL, FP16_TOL = 1e-3, 2e-2
CORE = ov.Core()


@pytest.fixture(scope="module")
def torch_model(tiny_model_dir):
    from transformers import JanusForConditionalGeneration

    return JanusForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny_ir_fp16(tiny_model_dir, tmp_path_factory):
    from janus_ov.convert import convert_checkpoint

    return convert_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("tiny-ir-fp16"), weights="fp16", progress=None)


def compile_part(ir_dir, name):
    return CORE.compile_model(ir_dir / f"{name}.xml", "CPU", F32)


def rel_error(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# --------------------------------------------------------------------------------------------
# Layout and metadata


def test_export_has_every_part_with_documented_names(tiny_ir_fp32):
    for name in parts.PARTS:
        model = CORE.read_model(tiny_ir_fp32 / f"{name}.xml")
        assert [p.get_any_name() for p in model.inputs] == list(parts.INPUTS[name])
        assert [p.get_any_name() for p in model.outputs] == list(parts.OUTPUTS[name])
        assert (tiny_ir_fp32 / f"{name}.bin").stat().st_size > 0
    assert (tiny_ir_fp32 / "tokenizer.json").is_file()


def test_shapes_are_dynamic_where_parts_says(tiny_ir_fp32):
    lm = CORE.read_model(tiny_ir_fp32 / "language_model.xml")
    for port in lm.inputs:
        assert port.get_partial_shape()[0].is_dynamic, port.get_any_name()
    assert lm.input("inputs_embeds").get_partial_shape()[1].is_dynamic
    assert lm.input("attention_mask").get_partial_shape()[1].is_dynamic
    assert lm.input("beam_idx").get_element_type() == ov.Type.i32
    assert len(lm.get_sinks()) == 2 * 2  # keys and values of the tiny model's 2 layers
    vision = CORE.read_model(tiny_ir_fp32 / "vision.xml")
    assert str(vision.input(0).get_partial_shape()) == "[?,3,384,384]"
    vq = CORE.read_model(tiny_ir_fp32 / "vq_decoder.xml")
    assert str(vq.input(0).get_partial_shape()) == "[?,?]"  # whole images or the top rows (previews)
    assert vq.input(0).get_element_type() == ov.Type.i64


def test_model_info_and_tokenizer_come_from_the_checkpoint(tiny_ir_fp32, tiny_model_dir, torch_model):
    from tokenizers import Tokenizer

    from janus_ov.tiny import BOI, BOS, EOI, EOS, IMAGE_TOKEN, PAD

    info = ModelInfo.load(tiny_ir_fp32)
    tok = Tokenizer.from_file(str(tiny_ir_fp32 / "tokenizer.json"))
    assert (info.bos_id, info.eos_id, info.pad_id) == tuple(map(tok.token_to_id, (BOS, EOS, PAD)))
    assert (info.image_id, info.boi_id, info.eoi_id) == tuple(map(tok.token_to_id, (IMAGE_TOKEN, BOI, EOI)))
    assert info.prompt_style == "pro"
    assert info.system_prompt.startswith("You are a helpful language and vision assistant.")
    assert not info.system_prompt.endswith("\n")
    text = torch_model.config.text_config
    assert (info.hidden_size, info.vocab_size) == (text.hidden_size, text.vocab_size)
    assert info.codebook_size == torch_model.config.vq_config.num_embeddings
    assert info.num_image_tokens == 576 and info.image_size == 384 and info.min_size == 14
    processor = json.loads((tiny_model_dir / "processor_config.json").read_text(encoding="utf-8"))["image_processor"]
    assert info.image_mean == processor["image_mean"] and info.image_std == processor["image_std"]
    assert info.rescale_factor == pytest.approx(processor["rescale_factor"])
    assert info.background_color == processor["background_color"]


def test_bad_arguments_give_clear_errors(tiny_model_dir, tmp_path):
    from janus_ov.convert import convert_checkpoint

    with pytest.raises(ConversionError, match="weight format"):
        convert_checkpoint(tiny_model_dir, tmp_path / "out", weights="int3", progress=None)
    with pytest.raises(ModelNotFoundError, match="not a Janus checkpoint"):
        convert_checkpoint(tmp_path, tmp_path / "out", weights="fp32", progress=None)


# --------------------------------------------------------------------------------------------
# Stateless parts: OV output vs the PyTorch module


def part_cases(model):
    """(part name, OV inputs, PyTorch reference output) for every stateless part."""
    rng = np.random.default_rng(0)
    text, vq = model.config.text_config, model.config.vq_config
    janus = model.model
    pixels = rng.uniform(-1, 1, (2, 3, 384, 384)).astype(np.float32)
    ids = rng.integers(0, text.vocab_size, (2, 5))
    image_ids = rng.integers(0, vq.num_embeddings, (2, 7))
    hidden = rng.standard_normal((2, 5, text.hidden_size)).astype(np.float32)
    cfg_rows = rng.standard_normal((4, text.hidden_size)).astype(np.float32)
    vq_ids = rng.integers(0, vq.num_embeddings, (2, 576))
    t = torch.from_numpy
    with torch.no_grad():
        head = janus.generation_head(t(cfg_rows))
        cases = [
            ("vision", [pixels], janus.get_image_features(t(pixels)).pooler_output),
            ("text_embeddings", [ids], janus.language_model.embed_tokens(t(ids))),
            ("lm_head", [hidden], model.lm_head(t(hidden))),
            ("gen_embeddings", [image_ids], model.prepare_embeddings_for_image_generation(t(image_ids))),
            ("gen_head", [cfg_rows, np.float32(3.5)], head[2:] + 3.5 * (head[:2] - head[2:])),
            ("vq_decoder", [vq_ids], janus.vqmodel.decode(t(vq_ids))),
            ("vq_decoder", [vq_ids[:, :5 * 24]], decode_top_rows(janus.vqmodel, t(vq_ids[:, :5 * 24]), 5)),
        ]
    return [(name, inputs, ref.numpy()) for name, inputs, ref in cases]


def decode_top_rows(vq, image_ids, rows):
    """transformers' own decode of a token grid `rows` high (the IR was traced on whole images,
    24 rows: this shows the row count did not freeze into the graph)."""
    whole = list(vq.quantize.quant_state_dims)
    vq.quantize.quant_state_dims = [rows, whole[1]]
    try:
        return vq.decode(image_ids)
    finally:
        vq.quantize.quant_state_dims = whole


@pytest.mark.parametrize("fmt,tol", [("fp32", FP32_TOL), ("fp16", FP16_TOL)])
def test_stateless_parts_match_pytorch(fmt, tol, torch_model, request):
    ir_dir = request.getfixturevalue("tiny_ir_fp32" if fmt == "fp32" else "tiny_ir_fp16")
    for name, inputs, ref in part_cases(torch_model):
        got = compile_part(ir_dir, name)(inputs)[0]
        assert rel_error(got, ref) <= tol, (fmt, name, rel_error(got, ref))


def test_gen_head_cfg_weight_is_an_input(tiny_ir_fp32, torch_model):
    rows = np.random.default_rng(1).standard_normal((2, torch_model.config.text_config.hidden_size), np.float32)
    head = compile_part(tiny_ir_fp32, "gen_head")
    with torch.no_grad():
        cond, uncond = torch_model.model.generation_head(torch.from_numpy(rows)).numpy()
    for weight in (0.0, 1.0, 5.0):
        got = head([rows, np.float32(weight)])[0]
        assert got.shape == (1, torch_model.config.vq_config.num_embeddings)
        assert rel_error(got[0], uncond + weight * (cond - uncond)) <= FP32_TOL


# --------------------------------------------------------------------------------------------
# Stateful language model


def lm_inputs(model, batch, length, pad=(), seed=0):
    """Random embeddings with left padding: row i has pad[i] leading masked positions (as CFG uses)."""
    rng = np.random.default_rng(seed)
    embeds = rng.standard_normal((batch, length, model.config.text_config.hidden_size)).astype(np.float32)
    mask = np.ones((batch, length), np.int64)
    for row, n in enumerate(pad):
        mask[row, :n] = 0
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    return embeds, mask, positions


def torch_lm(model, embeds, mask, positions):
    t = torch.from_numpy
    with torch.no_grad():
        out = model(inputs_embeds=t(embeds), attention_mask=t(mask), position_ids=t(positions))
        hidden = model.model(inputs_embeds=t(embeds), attention_mask=t(mask), position_ids=t(positions))
    return hidden.last_hidden_state.numpy(), out.logits.numpy()


def ov_lm(request_, embeds, mask, positions, chunks, beam_idx=None, start=0):
    """Feed tokens start.. in chunks of the given lengths; return the concatenated hidden states."""
    batch, outputs = embeds.shape[0], []
    for n in chunks:
        end = start + n
        result = request_.infer({
            "inputs_embeds": embeds[:, start:end], "attention_mask": mask[:, :end],
            "position_ids": positions[:, start:end],
            "beam_idx": np.arange(batch, dtype=np.int32) if beam_idx is None else beam_idx,
        })
        outputs.append(result["last_hidden_state"].copy())
        start = end
    assert start == embeds.shape[1]
    return np.concatenate(outputs, axis=1)


@pytest.fixture(scope="module")
def lm_request(tiny_ir_fp32):
    return compile_part(tiny_ir_fp32, "language_model").create_infer_request()


@pytest.mark.parametrize("chunks", [[9], [1] * 9, [5, 1, 1, 1, 1], [2, 3, 1, 3], [8, 1]])
@pytest.mark.parametrize("pad", [(), (0, 3)], ids=["batch1", "batch2-left-padded"])
def test_lm_prefill_then_steps_matches_full_sequence(torch_model, tiny_ir_fp32, lm_request, chunks, pad):
    embeds, mask, positions = lm_inputs(torch_model, max(len(pad), 1), sum(chunks), pad)
    ref_hidden, ref_logits = torch_lm(torch_model, embeds, mask, positions)
    lm_request.reset_state()
    hidden = ov_lm(lm_request, embeds, mask, positions, chunks)
    logits = compile_part(tiny_ir_fp32, "lm_head")([hidden])[0]
    valid = mask.astype(bool)  # outputs at padded positions are never used
    assert rel_error(hidden[valid], ref_hidden[valid]) <= FP32_TOL
    assert rel_error(logits[valid], ref_logits[valid]) <= FP32_TOL
    assert (logits[valid].argmax(-1) == ref_logits[valid].argmax(-1)).all()


def test_lm_reset_state_starts_a_new_sequence(torch_model, lm_request):
    first = lm_inputs(torch_model, 1, 6, seed=1)
    second = lm_inputs(torch_model, 1, 4, seed=2)
    lm_request.reset_state()
    ov_lm(lm_request, *first, [6])
    lm_request.reset_state()
    hidden = ov_lm(lm_request, *second, [3, 1])
    assert rel_error(hidden, torch_lm(torch_model, *second)[0]) <= FP32_TOL


def test_lm_beam_idx_reorders_the_cache(torch_model, lm_request):
    embeds, mask, positions = lm_inputs(torch_model, 2, 6, seed=3)
    lm_request.reset_state()
    ov_lm(lm_request, embeds[:, :5], mask[:, :5], positions[:, :5], [5])
    # Swap the rows: row 0 now continues sequence 1 and vice versa.
    swapped = np.ascontiguousarray(embeds[::-1])
    step = ov_lm(lm_request, swapped, mask, positions, [1], beam_idx=np.array([1, 0], np.int32), start=5)
    ref = torch_lm(torch_model, swapped, mask, positions)[0][:, 5:]
    assert rel_error(step, ref) <= FP32_TOL
    # Duplicating a row (what beam search does) works too.
    lm_request.reset_state()
    ov_lm(lm_request, embeds[:, :5], mask[:, :5], positions[:, :5], [5])
    dup = np.ascontiguousarray(embeds[[0, 0]])
    step = ov_lm(lm_request, dup, mask, positions, [1], beam_idx=np.array([0, 0], np.int32), start=5)
    assert rel_error(step, torch_lm(torch_model, dup, mask, positions)[0][:, 5:]) <= FP32_TOL


def test_lm_fp16_export_within_tolerance(torch_model, tiny_ir_fp16):
    embeds, mask, positions = lm_inputs(torch_model, 2, 7, (0, 2), seed=4)
    request_ = compile_part(tiny_ir_fp16, "language_model").create_infer_request()
    hidden = ov_lm(request_, embeds, mask, positions, [4, 1, 1, 1])
    valid = mask.astype(bool)
    assert rel_error(hidden[valid], torch_lm(torch_model, embeds, mask, positions)[0][valid]) <= FP16_TOL


# --------------------------------------------------------------------------------------------
# Compressed exports (int4 default, int8): they run and stay within stated tolerances.
# Tiny-model tolerances (random weights amplify quantization noise far more than trained ones):
# - parts kept in fp16 by the plan: relative error <= FP16_TOL;
# - INT8 parts (lm_head, gen_head, text_embeddings, vision): relative error <= 2e-2 (measured <= 0.011);
# - language model, logits through the fp32 lm_head, cosine similarity to PyTorch's:
#   INT8 mean >= 0.99 (measured 0.999), INT4 mean >= 0.85 (measured 0.91; argmax agreement 0.48 -
#   a 2-layer random model with int4 noise is that chaotic, a trained model is far less).
INT8_TOL = 2e-2
# The screened lm_head (int8-screened): its logits as a whole carry the int4 screen's error (measured
# 0.086); the ones that decide a token are the INT8 exact pass's (screened_head.py, its own test below).
SCREENED_TOL = 0.15
LM_COSINE = {"fp16": 0.9999, "int8": 0.99, "int4": 0.85, "int4-sym128": 0.85}


@pytest.fixture(scope="module")
def tiny_ir_int4(tiny_model_dir, tmp_path_factory):
    from janus_ov.convert import convert_checkpoint

    return convert_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("tiny-ir-int4"), weights="int4", progress=None)


@pytest.fixture(scope="module")
def tiny_lm_int8(tiny_model_dir, tmp_path_factory):
    """Only the language model differs between the int4 and int8 plans; convert just it."""
    from janus_ov.checkpoint import load_checkpoint
    from janus_ov.convert import convert_part

    out = tmp_path_factory.mktemp("tiny-lm-int8")
    convert_part(load_checkpoint(tiny_model_dir).model, "language_model", out, "int8")
    return out


@pytest.fixture(scope="module")
def tiny_lm_int4_sym128(tiny_model_dir, tmp_path_factory):
    """int4-sym128 differs from int4 in the language model alone."""
    from janus_ov.checkpoint import load_checkpoint
    from janus_ov.convert import convert_part

    out = tmp_path_factory.mktemp("tiny-lm-int4-sym128")
    convert_part(load_checkpoint(tiny_model_dir).model, "language_model", out, "int4-sym128")
    return out


def test_int4_export_parts_stay_close_to_pytorch(tiny_ir_int4, torch_model):
    from janus_ov.compress import PLAN

    tolerance = {"fp16": FP16_TOL, "int8": INT8_TOL, "int8-screened": SCREENED_TOL}
    for name, inputs, ref in part_cases(torch_model):
        got = compile_part(tiny_ir_int4, name)(inputs)[0]
        assert rel_error(got, ref) <= tolerance[PLAN["int4"][name]], (name, rel_error(got, ref))


def test_screened_head_scores_the_deciding_logits_in_int8(tiny_ir_int4, torch_model):
    """The int4 screen must never lose a token that matters: the reference's 8 largest logits of every
    row come out with INT8 precision (here: better than the plain INT8 head's, the exact pass runs in
    f32 on the dequantized rows), and so does the argmax. Screened and plain INT8 heads side by side."""
    from janus_ov.compress import compress_as
    from janus_ov.convert import trace_part
    from janus_ov.screened_head import CANDIDATES

    hidden_size, vocab = torch_model.config.text_config.hidden_size, torch_model.config.text_config.vocab_size
    assert vocab > 4 * CANDIDATES  # else the screen would keep most of the vocabulary
    hidden = np.random.default_rng(3).standard_normal((256, 1, hidden_size)).astype(np.float32)
    with torch.no_grad():
        ref = torch_model.lm_head(torch.from_numpy(hidden)).numpy()[:, 0]
    screened = compile_part(tiny_ir_int4, "lm_head")([hidden])[0][:, 0]
    plain = CORE.compile_model(compress_as(trace_part(torch_model, "lm_head"), "int8"), "CPU",
                               {"INFERENCE_PRECISION_HINT": "f32"})([hidden])[0][:, 0]
    top = np.argsort(-ref, axis=-1)[:, :8]

    def top_error(logits):
        return rel_error(np.take_along_axis(logits, top, -1), np.take_along_axis(ref, top, -1))

    assert top_error(screened) <= INT8_TOL and top_error(screened) <= 1.2 * top_error(plain), \
        (top_error(screened), top_error(plain))
    assert SCREENED_TOL >= rel_error(screened, ref) > 5 * rel_error(plain, ref)  # the tail is the screen's
    agree = (screened.argmax(-1) == ref.argmax(-1)).mean()
    assert agree >= (plain.argmax(-1) == ref.argmax(-1)).mean() - 0.01 and agree >= 0.95, agree


def lm_logit_cosine(ir_dir, torch_model) -> float:
    embeds, mask, positions = lm_inputs(torch_model, 2, 12, (0, 3), seed=5)
    request_ = compile_part(ir_dir, "language_model").create_infer_request()
    hidden = ov_lm(request_, embeds, mask, positions, [8, 1, 1, 1, 1])
    valid = mask.astype(bool)
    with torch.no_grad():
        logits = torch_model.lm_head(torch.from_numpy(hidden[valid])).numpy()
    ref = torch_lm(torch_model, embeds, mask, positions)[1][valid]
    cosine = (logits * ref).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(ref, axis=-1)
    return float(cosine.mean())


@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4", "int4-sym128"])
def test_compressed_language_model_stays_close(fmt, torch_model, request):
    ir_dir = request.getfixturevalue({"fp16": "tiny_ir_fp16", "int8": "tiny_lm_int8", "int4": "tiny_ir_int4",
                                      "int4-sym128": "tiny_lm_int4_sym128"}[fmt])
    assert lm_logit_cosine(ir_dir, torch_model) >= LM_COSINE[fmt]


def test_run_time_precision_follows_each_parts_weights_and_work(tiny_ir_int4, tiny_ir_fp16):
    """f32 activations for the parts that stream integer weights at every step (the plugin's int8
    kernels then run), the plugin's own default (bf16 where the CPU has it) for float weights and for
    the compute-bound parts: f32 made fp16 steps 2.6x slower, the vision encoder 1.2x and the VQ decoder 1.9x."""
    from janus_ov.runtime import STREAMING, Runtime

    default = CORE.compile_model(tiny_ir_fp16 / "vq_decoder.xml", "CPU").get_property("INFERENCE_PRECISION_HINT")
    for ir_dir in (tiny_ir_int4, tiny_ir_fp16):
        compiled = Runtime(ir_dir, warm_up=False).compiled
        for part, model in compiled.items():
            f32 = ir_dir == tiny_ir_int4 and part in STREAMING
            assert model.get_property("INFERENCE_PRECISION_HINT") == (ov.Type.f32 if f32 else default), (ir_dir, part)
    assert set(STREAMING) == {"language_model", "lm_head", "gen_head"}
    # The caller's choice wins.
    chosen = Runtime(tiny_ir_int4, ov_config={"INFERENCE_PRECISION_HINT": "bf16"}, warm_up=False).compiled
    if default == ov.Type.bf16:
        assert chosen["lm_head"].get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def test_weight_types_follow_the_plan(tiny_ir_int4, tiny_lm_int8, tiny_lm_int4_sym128, tiny_ir_fp16, tiny_ir_fp32,
                                     torch_model):
    from janus_ov.parts import weight_types

    def types(ir_dir, name):
        counts = weight_types(CORE.read_model(ir_dir / f"{name}.xml"))
        return {k: v / sum(counts.values()) for k, v in counts.items()}

    # int4: NNCF keeps only the LM's last matmul in INT8 (the notebook's recipe).
    assert types(tiny_ir_int4, "language_model").get("u4", 0) >= 0.75
    assert types(tiny_lm_int8, "language_model").get("u8", 0) >= 0.95
    # int4-sym128: signed int4 without zero points (NNCF's INT4_SYM), the same last matmul in INT8.
    sym = types(tiny_lm_int4_sym128, "language_model")
    assert sym.get("i4", 0) >= 0.75 and "u4" not in sym, sym
    for name in ("gen_head", "text_embeddings"):
        assert types(tiny_ir_int4, name).get("u8", 0) >= 0.95, name
    # The screened lm_head: the whole [V,H] weight twice, per-channel INT4 (the screen) and INT8 (the exact rows).
    head, (vocab, width) = weight_types(CORE.read_model(tiny_ir_int4 / "lm_head.xml")), torch_model.lm_head.weight.shape
    assert head["i4"] == vocab * width and head["u8"] == vocab * width + vocab, head  # u8: the rows + their zero points
    # Vision: every matmul and the patch convolution INT8 (with fp16 per-channel scales); only the
    # position table stays fp16 (0.2 % of the full-size encoder's weights, a quarter of the tiny one's).
    float_tables = [op.get_output_shape(0) for op in CORE.read_model(tiny_ir_int4 / "vision.xml").get_ops()
                    if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f16
                    and len(op.get_output_shape(0)) >= 2 and op.get_output_shape(0)[1] > 1]
    assert float_tables == [list(torch_model.model.vision_model.embeddings.position_embedding.weight.shape)]
    for name in ("vq_decoder", "gen_embeddings"):
        assert types(tiny_ir_int4, name).get("f16", 0) >= 0.95, name
    for name in parts.PARTS:
        assert types(tiny_ir_fp16, name).get("f16", 0) >= 0.95, name
        assert set(types(tiny_ir_fp32, name)) <= {"f32", "i64", "i32"}, name


def test_compression_shrinks_the_export(tiny_ir_int4, tiny_lm_int8, tiny_ir_fp16, tiny_ir_fp32):
    def size(ir_dir, name="language_model"):
        return (ir_dir / f"{name}.bin").stat().st_size

    assert size(tiny_ir_int4) < size(tiny_lm_int8) < size(tiny_ir_fp16) < size(tiny_ir_fp32)
    # The screened lm_head stores its weight in INT8 and in INT4: 1.5 bytes per weight against fp16's 2.
    assert 0.7 * size(tiny_ir_fp16, "lm_head") < size(tiny_ir_int4, "lm_head") < 0.8 * size(tiny_ir_fp16, "lm_head")


@pytest.mark.parametrize("mode, element, groups", [("int4", "u4", 4), ("int4-sym128", "i4", 2)])
def test_each_int4_recipe_groups_a_real_width_as_named(mode, element, groups):
    """The real checkpoints' widths (2048, 4096, 5632, 11008) divide by 64 and 128: no group is adjusted
    there. A 256-wide matmul: the notebook's recipe makes 4 asymmetric groups of 64, NNCF's default 2
    symmetric groups of 128."""
    import openvino.opset13 as ops

    from janus_ov.compress import compress_as

    rng = np.random.default_rng(0)

    def linear(h, rows):
        weight = ops.constant((rng.standard_normal((rows, 256)) * 0.02).astype(np.float16))
        return ops.matmul(h, ops.convert(weight, np.float32), False, True)

    x = ops.parameter([-1, 256], np.float32)
    model = compress_as(ov.Model([linear(linear(x, 256), 8)], [x]), mode)  # NNCF keeps the last one INT8
    shapes = [list(op.get_output_shape(0)) for op in model.get_ops()
              if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == element]
    assert [256, groups, 256 // groups] in shapes, shapes  # (asymmetric: and its u4 zero points)
    assert int4_group_size(model) == 256 // groups  # what the run time reads from an IR (streaming_config)


def test_only_the_language_model_has_activation_groups_to_choose(tiny_ir_int4, tmp_path):
    """The heads stream integer weights too (f32 activations), but the screened head's int4 is per channel
    and the generation head's int8: no group to measure (tuning.py), whatever the record says."""
    from janus_ov.runtime import streaming_config

    for part in ("lm_head", "gen_head"):
        model = CORE.read_model(tiny_ir_int4 / f"{part}.xml")
        assert int4_group_size(model) is None
        assert streaming_config(model, "CPU", {"CACHE_DIR": str(tmp_path)}) == {
            "INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": str(tmp_path)}
    assert not list(tmp_path.iterdir())
