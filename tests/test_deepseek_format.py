"""DeepSeek's original "multi_modality" checkpoints load as transformers' Janus (janus_ov/deepseek_format.py).

Fixtures (tests/data, copied byte-identical from the shared fixtures, see FIXTURES.md): a tiny
random checkpoint written by DeepSeek's own code, as model.safetensors and as pytorch_model.bin,
and the name/shape list of the full-size Janus-1.3B checkpoint.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from janus_ov import deepseek_format
from janus_ov.errors import ConversionError

DATA = Path(__file__).resolve().parent / "data"
TINY_ST = DATA / "tiny-janus-original"
TINY_BIN = DATA / "tiny-janus-original-bin"
FULL_PARAMS = DATA / "janus-1.3b-original-params.json"
DROPPED = ("vision_model.vision_tower.attn_pool.", "gen_vision_model.quantize.codebook_used")


def source_tensors(model_dir: Path) -> dict:
    """The original tensors as stored, read independently of janus_ov.deepseek_format."""
    if (model_dir / "model.safetensors").is_file():
        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    return torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module", params=[TINY_ST, TINY_BIN], ids=["safetensors", "bin"])
def loaded_fp32(request):
    model, info, tokenizer_json = deepseek_format.load_parts(request.param, dtype=torch.float32)
    return request.param, model, info, tokenizer_json


def copy_checkpoint(tmp_path: Path, src: Path = TINY_ST, name: str = "ckpt") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    for path in dst.iterdir():
        path.chmod(0o644)  # the shared fixtures are read-only
    return dst


def rewrite_safetensors(model_dir: Path, edit) -> None:
    tensors = source_tensors(model_dir)
    edit(tensors)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------- detection

def test_detects_original_format_only(tmp_path, tiny_model_dir):
    assert deepseek_format.is_original_format(TINY_ST)
    assert deepseek_format.is_original_format(TINY_BIN)
    assert not deepseek_format.is_original_format(tiny_model_dir)  # transformers format
    assert not deepseek_format.is_original_format(tmp_path)  # no config.json
    (tmp_path / "config.json").write_text("{not json")
    assert not deepseek_format.is_original_format(tmp_path)


def test_supported_models_list():
    assert deepseek_format.SUPPORTED_MODELS == ("deepseek-ai/Janus-Pro-1B", "deepseek-ai/Janus-Pro-7B", "deepseek-ai/Janus-1.3B",
                                         "deepseek-community/Janus-Pro-1B", "deepseek-community/Janus-Pro-7B")


# --------------------------------------------------------------------------- (1) full-size mapping

def full_size_config() -> dict:
    """Janus-1.3B's config.json: the fixture's, with the real language model (DeepSeek-LLM 1.3B)."""
    config = json.loads((TINY_ST / "config.json").read_text(encoding="utf-8"))
    config["language_config"] = {"hidden_size": 2048, "intermediate_size": 5632, "max_position_embeddings": 16384,
                                 "model_type": "llama", "num_attention_heads": 16, "num_hidden_layers": 24,
                                 "num_key_value_heads": 16, "torch_dtype": "bfloat16", "vocab_size": 102400}
    return config


def test_full_size_janus_1_3b_maps_onto_transformers_janus():
    from transformers import JanusForConditionalGeneration

    shapes = {k: tuple(v["shape"]) for k, v in json.loads(FULL_PARAMS.read_text(encoding="utf-8")).items()}
    assert len(shapes) == 882
    # The run-time ids of the real Janus-1.3B files (the JSON declares pad/boi/eoi 13 higher: 100015/100016/100593).
    info, _ = deepseek_format.read_metadata(DATA / "real-metadata" / "deepseek-ai--Janus-1.3B")
    ids = {"bos": info.bos_id, "eos": info.eos_id, "pad": info.pad_id, "image": info.image_id, "boi": info.boi_id,
           "eoi": info.eoi_id}
    assert ids == {"bos": 100000, "eos": 100001, "pad": 100002, "image": 100581, "boi": 100003, "eoi": 100580}
    config = deepseek_format.build_config(full_size_config(), shapes, ids)
    vision, vq, text = config.vision_config, config.vq_config, config.text_config
    # Sizes read from the tensors are Janus-1.3B's: SigLIP-L/16 384, VQ-16, DeepSeek-LLM 1.3B.
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1024, 24, 16)
    assert (vision.image_size, vision.patch_size, vision.num_image_tokens, vision.depth) == (384, 16, 576, 2)
    assert vision.hidden_size * vision.mlp_ratio == 4096
    assert (vq.base_channels, list(vq.channel_multiplier), vq.num_res_blocks) == (128, [1, 1, 2, 2, 4], 2)
    assert (vq.latent_channels, vq.embed_dim, vq.num_embeddings, vq.num_hidden_layers) == (256, 8, 16384, 2)
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size, text.intermediate_size) == (2048, 24, 102400, 5632)
    assert config.tie_word_embeddings is False

    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapping = deepseek_format.plan(shapes, model_shapes, vq.num_embeddings)

    dropped = sorted(name for name, (targets, _) in mapping.items() if not targets)
    assert dropped and all(name.startswith(DROPPED) for name in dropped)
    assert len(dropped) == 14  # attn_pool: 13 tensors; codebook_used: 1
    produced = [t for targets, _ in mapping.values() for t in targets]
    assert len(produced) == len(set(produced))  # each transformers tensor set exactly once ...
    assert set(produced) == set(model_shapes)  # ... and none left unset (onto)
    # The only tensors not in the state dict are derived, non-persistent buffers: rebuilt, not loaded.
    derived = {n for n, _ in model.named_buffers()} - set(model_shapes)
    assert derived == {"model.vision_model.embeddings.position_ids", "model.language_model.rotary_emb.inv_freq",
                       "model.language_model.rotary_emb.original_inv_freq"}
    # Spot checks of the renames that are easy to get wrong.
    assert mapping["vision_model.vision_tower.blocks.23.attn.qkv.weight"][0] == [
        f"model.vision_model.encoder.layers.23.self_attn.{p}_proj.weight" for p in "qkv"]
    assert mapping["gen_vision_model.decoder.conv_blocks.0.upsample.conv.weight"][0] == [
        "model.vqmodel.decoder.up.0.upsample.conv.weight"]
    assert mapping["gen_vision_model.encoder.mid.2.conv1.weight"][0] == ["model.vqmodel.encoder.mid.block_2.conv1.weight"]
    assert mapping["aligner.layers.2.bias"][0] == ["model.aligner.hidden_layers.0.bias"]
    assert mapping["language_model.lm_head.weight"][0] == ["lm_head.weight"]


# --------------------------------------------------------------------------- (2) tiny checkpoints load

def test_tiny_checkpoints_load_in_stored_dtype():
    for model_dir in (TINY_ST, TINY_BIN):
        model, info, _ = deepseek_format.load_parts(model_dir)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert not model.training
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_original_checkpoint_loads_through_load_checkpoint():
    from janus_ov.checkpoint import Checkpoint, load_checkpoint

    ckpt = load_checkpoint(TINY_BIN)  # routes DeepSeek's format to deepseek_format.load_parts
    assert isinstance(ckpt, Checkpoint)
    assert type(ckpt.model).__name__ == "JanusForConditionalGeneration"
    assert ckpt.info.codebook_size == 256


def test_parameters_equal_source_tensors(loaded_fp32):
    model_dir, model, _, _ = loaded_fp32
    src = source_tensors(model_dir)
    params = model.state_dict()

    def same(target, tensor):
        torch.testing.assert_close(params[target], tensor.float(), rtol=0, atol=0, msg=target)

    tower, layer = "vision_model.vision_tower.", "model.vision_model.encoder.layers."
    for i in range(2):
        qkv_w, qkv_b = src[f"{tower}blocks.{i}.attn.qkv.weight"], src[f"{tower}blocks.{i}.attn.qkv.bias"]
        for j, p in enumerate("qkv"):
            same(f"{layer}{i}.self_attn.{p}_proj.weight", qkv_w[j * 128:(j + 1) * 128])
            same(f"{layer}{i}.self_attn.{p}_proj.bias", qkv_b[j * 128:(j + 1) * 128])
        same(f"{layer}{i}.self_attn.projection_layer.weight", src[f"{tower}blocks.{i}.attn.proj.weight"])
        same(f"{layer}{i}.layer_norm2.bias", src[f"{tower}blocks.{i}.norm2.bias"])
    same("model.vision_model.embeddings.position_embedding.weight", src[tower + "pos_embed"][0])
    same("model.vision_model.post_layernorm.weight", src[tower + "norm.weight"])
    same("model.aligner.hidden_layers.0.weight", src["aligner.layers.2.weight"])
    same("model.generation_aligner.fc1.bias", src["gen_aligner.layers.0.bias"])
    same("model.generation_head.proj_out.weight", src["gen_head.output_mlp_projector.weight"])
    same("model.generation_embeddings.weight", src["gen_embed.weight"])
    same("model.vqmodel.decoder.up.0.attn.1.q.weight", src["gen_vision_model.decoder.conv_blocks.0.attn.1.q.weight"])
    same("model.vqmodel.decoder.mid.attn_1.proj_out.bias", src["gen_vision_model.decoder.mid.1.proj_out.bias"])
    same("model.vqmodel.encoder.down.3.downsample.conv.weight",
         src["gen_vision_model.encoder.conv_blocks.3.downsample.conv.weight"])
    same("model.vqmodel.quantize.embedding.weight", src["gen_vision_model.quantize.embedding.weight"][:256])
    same("model.language_model.layers.1.self_attn.k_proj.weight", src["language_model.model.layers.1.self_attn.k_proj.weight"])
    same("lm_head.weight", src["language_model.lm_head.weight"])
    same("model.language_model.embed_tokens.weight", src["language_model.model.embed_tokens.weight"])


def siglip_reference(src: dict, pixels: torch.Tensor) -> torch.Tensor:
    """DeepSeek's vision path (timm SigLIP ViT, fused qkv, then the GELU MLP aligner) from the raw tensors."""
    w = {k: v.float() for k, v in src.items()}
    t = "vision_model.vision_tower."
    x = F.conv2d(pixels, w[t + "patch_embed.proj.weight"], w[t + "patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2) + w[t + "pos_embed"]
    heads = 2
    for i in range(2):
        b = f"{t}blocks.{i}."
        h = F.layer_norm(x, (128,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (z.unflatten(-1, (heads, 64)).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1) @ v
        x = x + F.linear(att.transpose(1, 2).flatten(2), w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
        h = F.layer_norm(x, (128,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])),
                     w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
        x = x + h
    x = F.layer_norm(x, (128,), w[t + "norm.weight"], w[t + "norm.bias"], eps=1e-6)
    x = F.gelu(F.linear(x, w["aligner.layers.0.weight"], w["aligner.layers.0.bias"]))
    return F.linear(x, w["aligner.layers.2.weight"], w["aligner.layers.2.bias"])


@torch.no_grad()
def test_vision_path_matches_original_computation(loaded_fp32):
    model_dir, model, _, _ = loaded_fp32
    pixels = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = model.model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(ours, siglip_reference(source_tensors(model_dir), pixels), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_generation_path_matches_original_computation(loaded_fp32):
    model_dir, model, _, _ = loaded_fp32
    w = {k: v.float() for k, v in source_tensors(model_dir).items()}
    ids = torch.tensor([[0, 5, 255, 17]])
    # prepare_gen_img_embeds = gen_aligner(gen_embed(ids))
    ref = F.linear(F.gelu(F.linear(w["gen_embed.weight"][ids], w["gen_aligner.layers.0.weight"],
                                   w["gen_aligner.layers.0.bias"])),
                   w["gen_aligner.layers.2.weight"], w["gen_aligner.layers.2.bias"])
    ours = model.model.generation_aligner(model.model.generation_embeddings(ids))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # VisionHead: vision_head(gelu(output_mlp_projector(h)))
    hidden = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    ref = F.linear(F.gelu(F.linear(hidden, w["gen_head.output_mlp_projector.weight"],
                                   w["gen_head.output_mlp_projector.bias"])),
                   w["gen_head.vision_head.weight"], w["gen_head.vision_head.bias"])
    torch.testing.assert_close(model.model.generation_head(hidden), ref, rtol=1e-5, atol=1e-5)
    # VQ get_codebook_entry (l2-normalised rows) for every id the head can emit.
    codes = torch.arange(576).remainder(256).reshape(1, 576)
    ref = F.normalize(w["gen_vision_model.quantize.embedding.weight"], dim=-1)[codes]
    ref = ref.reshape(1, 24, 24, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(model.model.vqmodel.quantize.get_codebook_entry(codes), ref, rtol=1e-6, atol=1e-6)
    image = model.model.vqmodel.decode(codes)
    assert image.shape == (1, 3, 384, 384) and torch.isfinite(image).all()


def test_model_info_and_tokenizer(loaded_fp32):
    from tokenizers import Tokenizer

    model_dir, model, info, tokenizer_json = loaded_fp32
    tok = Tokenizer.from_str(tokenizer_json)
    assert info.prompt_style == "pro"  # sft_format "deepseek" and a tokenizer with <|User|>/<|Assistant|>
    assert info.system_prompt.startswith("You are a helpful language and vision assistant.")
    expected = {"bos_id": "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "eos_id": "<\uff5cend\u2581of\u2581sentence\uff5c>",
                "pad_id": "<\uff5c\u2581pad\u2581\uff5c>", "image_id": "<image_placeholder>",
                "boi_id": "<begin_of_image>", "eoi_id": "<end_of_image>"}
    for field, token in expected.items():
        assert getattr(info, field) == tok.token_to_id(token), field
    assert tok.encode("User: hi").ids[0] == info.bos_id
    assert (info.hidden_size, info.vocab_size, info.codebook_size, info.num_image_tokens) == (64, 384, 256, 576)
    assert (info.image_size, info.min_size, info.do_normalize, info.background_color) == (384, 14, True, [127] * 3)
    assert info.image_mean == [0.5] * 3 and info.image_std == [0.5] * 3
    assert model.config.image_token_id == info.image_id
    assert model.generation_config.generation_kwargs == {"boi_token_id": info.boi_id}


def test_prompt_style_from_hub_cache_path_and_name_without_sft_format(tmp_path):
    """The files decide (sft_format); only a snapshot without the field falls back to its path, width, tokens."""
    snapshot = tmp_path / "hub" / "models--deepseek-ai--Janus-1.3B" / "snapshots" / "0123abc"
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(TINY_BIN, snapshot)
    assert deepseek_format.load_parts(snapshot)[1].prompt_style == "pro"  # its sft_format "deepseek" decides
    processor = json.loads((snapshot / "processor_config.json").read_text(encoding="utf-8"))
    del processor["sft_format"]
    (snapshot / "processor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    assert deepseek_format.load_parts(snapshot)[1].prompt_style == "legacy"  # the Hub cache path names Janus-1.3B
    style = deepseek_format.prompt_style_for
    assert style(tmp_path / "models" / "Janus-1.3B", {}, True, 2048) == "legacy"
    assert style(tmp_path / "janus_pro_7b", {}, False, 4096) == "pro"
    assert style(tmp_path / "my-model", {}, False, 4096) == "pro"  # only Janus-Pro-7B is 4096 wide
    assert style(tmp_path / "my-model", {}, False, 2048) == "legacy"
    assert style(tmp_path / "my-model", {}, True, 2048) == "pro"  # only Janus-Pro tokenizers have role tokens
    assert style(tmp_path / "Janus-Pro-1B", {"sft_format": "deepseek_old"}, True, 2048) == "legacy"


def test_follows_preprocessor_config(tmp_path):
    model_dir = copy_checkpoint(tmp_path)
    pre = json.loads((model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
    pre.update(do_normalize=False, image_mean=[0.48145466, 0.4578275, 0.40821073], min_size=20)
    del pre["background_color"]  # DeepSeek's processor derives it from image_mean
    (model_dir / "preprocessor_config.json").write_text(json.dumps(pre))
    _, info, _ = deepseek_format.load_parts(model_dir)
    assert info.do_normalize is False and info.min_size == 20
    assert info.background_color == [122, 116, 104]


def test_adds_bos_when_tokenizer_file_does_not(tmp_path):
    from tokenizers import Tokenizer

    model_dir = copy_checkpoint(tmp_path)
    data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = None
    (model_dir / "tokenizer.json").write_text(json.dumps(data))
    assert Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("hi").ids[0] != 353
    _, info, tokenizer_json = deepseek_format.load_parts(model_dir)
    ids = Tokenizer.from_str(tokenizer_json).encode("hi <image_placeholder>").ids
    assert ids[0] == info.bos_id and ids.count(info.bos_id) == 1 and ids[-1] == info.image_id


# --------------------------------------------------------------------------- (3) bad checkpoints

def test_unexpected_key_is_named(tmp_path):
    model_dir = copy_checkpoint(tmp_path)
    rewrite_safetensors(model_dir, lambda t: t.update({"vision_model.vision_tower.extra_head.weight": torch.zeros(2)}))
    with pytest.raises(ConversionError, match=r"vision_model\.vision_tower\.extra_head\.weight"):
        deepseek_format.load_parts(model_dir)


def test_unexpected_layer_is_named(tmp_path):
    # An aligner with a tensor at an activation's slot (layers.1) cannot be DeepSeek's mlp_gelu.
    model_dir = copy_checkpoint(tmp_path)
    rewrite_safetensors(model_dir, lambda t: t.update({"aligner.layers.1.weight": torch.zeros(64, 64)}))
    with pytest.raises(ConversionError, match=r"aligner\.layers\.1\.weight"):
        deepseek_format.load_parts(model_dir)


def test_wrong_shape_is_named(tmp_path):
    model_dir = copy_checkpoint(tmp_path)
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    rewrite_safetensors(model_dir, lambda t: t.update({key: torch.zeros(128, 65, dtype=torch.bfloat16)}))
    with pytest.raises(ConversionError, match=r"language_model\.model\.layers\.1\.mlp\.up_proj\.weight.*\(128, 65\)"):
        deepseek_format.load_parts(model_dir)


def test_missing_key_is_named(tmp_path):
    model_dir = copy_checkpoint(tmp_path)
    rewrite_safetensors(model_dir, lambda t: t.pop("language_model.model.norm.weight"))
    with pytest.raises(ConversionError, match=r"missing.*model\.language_model\.norm\.weight"):
        deepseek_format.load_parts(model_dir)


def test_missing_structural_key_is_named(tmp_path):
    model_dir = copy_checkpoint(tmp_path)
    rewrite_safetensors(model_dir, lambda t: t.pop("gen_embed.weight"))
    with pytest.raises(ConversionError, match=r"no tensor 'gen_embed\.weight'"):
        deepseek_format.load_parts(model_dir)


def test_unexpected_key_in_bin_is_named(tmp_path):
    model_dir = copy_checkpoint(tmp_path, TINY_BIN)
    state = source_tensors(model_dir)
    state["gen_head.extra.weight"] = torch.zeros(3)
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"gen_head\.extra\.weight"):
        deepseek_format.load_parts(model_dir)


def test_missing_files_are_reported(tmp_path):
    model_dir = copy_checkpoint(tmp_path)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="no weights"):
        deepseek_format.load_parts(model_dir)
    model_dir = copy_checkpoint(tmp_path, TINY_BIN, "sharded")
    (model_dir / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"gen_embed.weight": "pytorch_model-00001-of-00002.bin"}}))
    with pytest.raises(ConversionError, match="pytorch_model-00001-of-00002.bin"):
        deepseek_format.load_parts(model_dir)


def test_sharded_bin_checkpoint_loads(tmp_path):
    model_dir = copy_checkpoint(tmp_path, TINY_BIN)
    state = source_tensors(model_dir)
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, model_dir / file)
    (model_dir / "pytorch_model.bin").unlink()
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (model_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model, _, _ = deepseek_format.load_parts(model_dir)
    torch.testing.assert_close(model.lm_head.weight, state["language_model.lm_head.weight"], rtol=0, atol=0)


def test_tokenizer_from_other_model_is_refused(tmp_path):
    model_dir = copy_checkpoint(tmp_path)

    def shrink_vocab(t):
        for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
            t[key] = t[key][:300].clone()

    rewrite_safetensors(model_dir, shrink_vocab)
    with pytest.raises(ConversionError, match="300-row embedding table"):
        deepseek_format.load_parts(model_dir)


def test_private_language_config_keys_are_ignored(tmp_path):
    model_dir = copy_checkpoint(tmp_path)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["language_config"]["_attn_implementation"] = "flash_attention_2"  # not available on CPU
    (model_dir / "config.json").write_text(json.dumps(config))
    model, _, _ = deepseek_format.load_parts(model_dir, dtype="float32")
    assert model.config.text_config._attn_implementation != "flash_attention_2"
    assert model.lm_head.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[353, 20, 30]])).logits).all()


@pytest.mark.parametrize("src, file", [(TINY_ST, "model.safetensors"), (TINY_BIN, "pytorch_model.bin")])
def test_truncated_weight_file_is_reported(tmp_path, src, file):
    model_dir = copy_checkpoint(tmp_path, src)
    data = (model_dir / file).read_bytes()
    (model_dir / file).write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(ConversionError, match=file.replace(".", r"\.")):
        deepseek_format.load_parts(model_dir)


# --------------------------------------------------------------------------- (4) no pickled code

class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bin_with_pickled_code_is_refused(tmp_path):
    model_dir = copy_checkpoint(tmp_path, TINY_BIN)
    marker = tmp_path / "code-was-executed"
    state = source_tensors(model_dir)
    state["gen_embed.weight"] = Exploit(marker)
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="weights_only"):
        deepseek_format.load_parts(model_dir)
    assert not marker.exists()


def test_bin_with_non_tensor_entry_is_refused(tmp_path):
    model_dir = copy_checkpoint(tmp_path, TINY_BIN)
    state = source_tensors(model_dir)
    state["step"] = 1000  # plain data passes weights_only, but it is not a weight
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="'step' is a int, not a tensor"):
        deepseek_format.load_parts(model_dir)


# --------------------------------------------------------------------------- (5) convert and run

@pytest.fixture(scope="module")
def original_ir(tmp_path_factory):
    """The tiny original (.bin) checkpoint converted by the normal path, fp32 weights."""
    from janus_ov.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("tiny-original-ir")
    convert_checkpoint(TINY_BIN, out, weights="fp32", progress=None)
    return out


def compiled(ir_dir: Path, part: str):
    import openvino as ov

    return ov.Core().compile_model(str(ir_dir / f"{part}.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def test_converted_original_matches_original_computation(original_ir):
    from janus_ov.model_info import ModelInfo

    info = ModelInfo.load(original_ir)
    assert info.prompt_style == "pro" and info.codebook_size == 256 and info.bos_id == 353
    w = {k: v.float() for k, v in source_tensors(TINY_BIN).items()}

    pixels = torch.rand(1, 3, 384, 384, generator=torch.Generator().manual_seed(2)) * 2 - 1
    embeds = compiled(original_ir, "vision")([pixels.numpy()])[0]
    ref = siglip_reference(w, pixels)
    torch.testing.assert_close(torch.from_numpy(embeds), ref, rtol=1e-3, atol=1e-3)

    ids = torch.tensor([[3, 250, 7]])
    gen = compiled(original_ir, "gen_embeddings")([ids.numpy()])[0]
    ref = F.linear(F.gelu(F.linear(w["gen_embed.weight"][ids], w["gen_aligner.layers.0.weight"],
                                   w["gen_aligner.layers.0.bias"])),
                   w["gen_aligner.layers.2.weight"], w["gen_aligner.layers.2.bias"])
    torch.testing.assert_close(torch.from_numpy(gen), ref, rtol=1e-3, atol=1e-3)

    hidden = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))  # 1 conditional row, 1 unconditional
    logits = compiled(original_ir, "gen_head")([hidden.numpy(), torch.tensor(5.0).numpy()])[0]
    head = F.linear(F.gelu(F.linear(hidden, w["gen_head.output_mlp_projector.weight"],
                                    w["gen_head.output_mlp_projector.bias"])),
                    w["gen_head.vision_head.weight"], w["gen_head.vision_head.bias"])
    ref = head[1:] + 5.0 * (head[:1] - head[1:])
    torch.testing.assert_close(torch.from_numpy(logits), ref, rtol=1e-3, atol=1e-3)


SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
                 "the user provides, and assist the user with a variety of tasks using natural language.")


@torch.no_grad()
def reference_greedy(model, tokenizer_json: str, question: str, image, steps: int) -> list:
    """Greedy answer of the PyTorch model to DeepSeek's "deepseek" prompt, built as VLChatProcessor builds it."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    ids = tok.encode(f"{SYSTEM}\n\n<|User|>: <image_placeholder>\n{question}\n\n<|Assistant|>:").ids
    at = ids.index(356)  # the placeholder becomes <begin_of_image> + 576 x <image_placeholder> + <end_of_image>
    ids = ids[:at] + [358] + [356] * 576 + [359] + ids[at + 1:]
    # A 384x384 image needs no resize or padding: only rescale and normalise (mean = std = 0.5).
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    image_embeds = model.model.get_image_features(pixel_values=pixels).pooler_output[0]
    out = []
    for _ in range(steps):
        input_ids = torch.tensor([ids + out])
        embeds = model.model.language_model.embed_tokens(input_ids)
        embeds[input_ids == 356] = image_embeds
        token = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
        if token == 354:  # <｜end▁of▁sentence｜>
            break
        out.append(token)
    return out


def test_converted_original_chats_and_draws(original_ir, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image
    from tokenizers import Tokenizer

    from janus_ov.pipeline import JanusPipeline

    monkeypatch.setenv("JANUS_OV_CACHE", str(tmp_path / "cache"))  # compiled blobs stay out of ~/.cache
    pipe = JanusPipeline.from_converted(original_ir, ov_config={"INFERENCE_PRECISION_HINT": "f32",
                                                                 "KV_CACHE_PRECISION": "f32"})
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (384, 384, 3), dtype=np.uint8))
    question = "What is in this picture?"
    answer = pipe.chat([{"role": "user", "content": question, "images": [image]}], max_new_tokens=12)

    model, _, tokenizer_json = deepseek_format.load_parts(TINY_BIN, dtype=torch.float32)
    ref_ids = reference_greedy(model, tokenizer_json, question, image, steps=12)
    expected = Tokenizer.from_str(tokenizer_json).decode(ref_ids, skip_special_tokens=True)
    assert len(expected) > 0
    assert answer == expected

    images = pipe.generate_images("a red fox in the snow", num_images=2, seed=3)
    assert [im.size for im in images] == [(384, 384)] * 2
    pixels = [np.asarray(im, dtype=np.float32) for im in images]
    assert all(p.std() > 1.0 for p in pixels)  # not a flat image
    assert np.abs(pixels[0] - pixels[1]).mean() > 1.0  # two samples differ
