"""The real repos' own small files (tests/data/real-metadata, copied from shared/fixtures): what a
conversion makes of them -- format, template, special ids, preprocessing, prompt ids -- equals the
reference processor of each format (DeepSeek's, reproduced in deepseek_reference.py, for the three
original-format repos; transformers' JanusProcessor for the community repo). Then one checkpoint per
format with the real files and shrunk random weights, through export -> chat -> image.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from deepseek_reference import VLChatProcessor
from PIL import Image

from janus_ov import prompts
from janus_ov.checkpoint import read_metadata
from janus_ov.deepseek_format import is_original_format
from janus_ov.images import load_image, preprocess, resized_size
from janus_ov.tokenizer import JanusTokenizer

REAL = Path(__file__).parent / "data" / "real-metadata"
TINY_ORIGINAL = Path(__file__).parent / "data" / "tiny-janus-original"
ORIGINAL = {"deepseek-ai--Janus-1.3B": ("legacy", 2048), "deepseek-ai--Janus-Pro-1B": ("pro", 2048),
            "deepseek-ai--Janus-Pro-7B": ("pro", 4096)}
COMMUNITY = "deepseek-community--Janus-Pro-1B"
# What `tokenizers` assigns at run time (the JSON files declare ids 13 higher; see the fixtures' SOURCES.md).
RUNTIME_IDS = dict(bos_id=100000, eos_id=100001, pad_id=100002, boi_id=100003, eoi_id=100580, image_id=100581)
# Aspect ratios where rounding and truncating the shorter side disagree, and where they agree.
SIZES = [(500, 333), (333, 500), (384, 384), (640, 480), (1920, 1080), (1000, 7), (7, 1000), (1, 1),
         (383, 384), (385, 200), (100, 101), (1280, 853), (853, 1280), (777, 555), (3, 2), (2048, 1365)]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: every resize difference shows in the pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], -1)
    noisy = base + rng.normal(0, 20, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def janus_tokenizer(model_dir: Path, **kwargs):
    from tokenizers import Tokenizer

    info, tokenizer_json = read_metadata(model_dir, **kwargs)
    return info, JanusTokenizer(Tokenizer.from_str(tokenizer_json), info)


def image_rows(info, tok, prompt: str, negative):
    """The two CFG rows' prompt ids, as JanusPipeline.generate_images builds them."""
    from janus_ov.text_to_image import unconditional_ids

    cond = tok.encode_image_prompt(prompts.image_prompt(prompt, info))
    if negative is None:
        return cond, unconditional_ids(cond, info)
    return cond, tok.encode_image_prompt(prompts.image_prompt(negative, info))


@pytest.fixture(scope="module")
def community_processor():
    from transformers import JanusProcessor

    return JanusProcessor.from_pretrained(REAL / COMMUNITY)


# ----------------------------------------------------------------------------- metadata, all four repos

@pytest.mark.parametrize("name", [*ORIGINAL, COMMUNITY])
def test_format_template_ids_and_preprocessing(name):
    info, tok = janus_tokenizer(REAL / name)
    style, hidden = ORIGINAL.get(name, ("pro", 2048))
    assert is_original_format(REAL / name) == (name in ORIGINAL)
    assert (info.prompt_style, info.hidden_size) == (style, hidden)
    assert {k: getattr(info, k) for k in RUNTIME_IDS} == RUNTIME_IDS
    assert (info.vocab_size, info.codebook_size, info.num_image_tokens) == (102400, 16384, 576)
    assert (info.image_size, info.min_size, info.image_mean, info.image_std) == (384, 14, [0.5] * 3, [0.5] * 3)
    assert info.background_color == [127, 127, 127]
    assert info.image_resize == ("deepseek" if name in ORIGINAL else "transformers")
    assert info.system_prompt.startswith("You are a helpful language and vision assistant.")
    assert tok.tokenizer.encode("<image_placeholder>", add_special_tokens=False).ids == [100581]


def test_janus_1_3b_gets_the_image_tag_deepseek_adds():
    """Its tokenizer has no <image_placeholder>; DeepSeek's VLChatProcessor adds it as id 100581."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(REAL / "deepseek-ai--Janus-1.3B" / "tokenizer.json"))
    assert raw.token_to_id("<image_placeholder>") is None and raw.get_vocab_size() == 100581
    ref = VLChatProcessor(REAL / "deepseek-ai--Janus-1.3B")
    info, _ = read_metadata(REAL / "deepseek-ai--Janus-1.3B")
    assert (info.image_id, info.boi_id, info.eoi_id, info.pad_id) == \
        (ref.image_id, ref.image_start_id, ref.image_end_id, ref.pad_id)


def conversations(user: str, assistant: str):
    """(a) one image + question, (b) two turns with two images, as ours and as DeepSeek's messages."""
    one = [{"role": "user", "content": "What is in this picture?", "images": [0]}]
    two = one + [{"role": "assistant", "content": "A cat on a red sofa, 中文 🙂."},
                 {"role": "user", "content": "And in this one?", "images": [1]}]
    ours = {"one_image": one, "two_turns_two_images": two}
    theirs = {k: [{"role": user if m["role"] == "user" else assistant,
                   "content": ("<image_placeholder>\n" if m.get("images") else "") + m["content"]} for m in v]
              + [{"role": assistant, "content": ""}] for k, v in ours.items()}
    return ours, theirs


@pytest.mark.parametrize("name", list(ORIGINAL))
def test_original_prompt_ids_equal_deepseek_processor(name):
    info, tok = janus_tokenizer(REAL / name)
    ref = VLChatProcessor(REAL / name)
    ours, theirs = conversations(*ref.roles)
    for case, messages in ours.items():
        ids = tok.encode_chat(prompts.chat_prompt(messages, info), num_images=len(prompts.collect_images(messages)))
        assert ids.tolist() == ref.chat_ids(theirs[case]), case
    for text in ("A red fox in the snow, watercolor", "  a lighthouse on a cliff at dusk, 中文 \n"):
        cond = tok.encode_image_prompt(prompts.image_prompt(text, info))
        assert cond.tolist() == ref.image_prompt_ids(text)
    cond, uncond = image_rows(info, tok, "A red fox in the snow", None)
    assert uncond.tolist() == ref.unconditional_ids(cond.tolist())
    cond, uncond = image_rows(info, tok, "A red fox in the snow", "blurry, low quality")
    assert cond.tolist() == ref.image_prompt_ids("A red fox in the snow")
    assert uncond.tolist() == ref.image_prompt_ids("blurry, low quality")  # a negative prompt: its own prompt


def test_community_prompt_ids_equal_janus_processor(community_processor):
    import torch

    processor = community_processor
    info, tok = janus_tokenizer(REAL / COMMUNITY)
    ours, _ = conversations("<|User|>", "<|Assistant|>")
    for case, messages in ours.items():
        conv = [{"role": m["role"], "content": [{"type": "image"}] * len(m.get("images", []))
                 + [{"type": "text", "text": m["content"]}]} for m in messages]
        text = processor.apply_chat_template(conv, add_generation_prompt=True)
        n = len(prompts.collect_images(messages))
        expected = processor(text=text, images=[picture(64, 48, i) for i in range(n)])["input_ids"][0]
        assert tok.encode_chat(prompts.chat_prompt(messages, info), num_images=n).tolist() == list(expected), case
    for negative in (None, "blurry, low quality"):
        cond, uncond = image_rows(info, tok, "A red fox in the snow", negative)
        prompt = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "text", "text": "A red fox in the snow"}]}], add_generation_prompt=True)
        ref = processor(text=prompt, generation_mode="image", return_tensors="pt")["input_ids"]
        assert cond.tolist() == ref[0].tolist()
        if negative is None:  # JanusForConditionalGeneration.generate's unconditional row
            keep = (ref == info.bos_id) | (ref == info.boi_id)
            assert uncond.tolist() == torch.where(keep, ref, info.pad_id)[0].tolist()
        else:
            neg = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": negative}]}],
                                                add_generation_prompt=True)
            assert uncond.tolist() == processor(text=neg, generation_mode="image", return_tensors="pt")["input_ids"][0].tolist()


def test_pro_files_decide_the_template_whatever_the_folder_is_called(tmp_path):
    for name, style in (("model-a", "pro"), ("Janus-1.3B-copy", "pro")):
        shutil.copytree(REAL / "deepseek-ai--Janus-Pro-1B", tmp_path / name)
        assert read_metadata(tmp_path / name)[0].prompt_style == style
    shutil.copytree(REAL / "deepseek-ai--Janus-1.3B", tmp_path / "Janus-Pro-renamed")
    assert read_metadata(tmp_path / "Janus-Pro-renamed")[0].prompt_style == "legacy"
    assert read_metadata(tmp_path / "model-a", prompt_style="legacy")[0].prompt_style == "legacy"


def test_folder_name_breaks_the_tie_only_without_sft_format(tmp_path):
    for source, folder, style in (("deepseek-ai--Janus-Pro-1B", "snap-Janus-1.3B", "legacy"),
                                  ("deepseek-ai--Janus-Pro-1B", "model-b", "pro"),  # has the role tokens
                                  ("deepseek-ai--Janus-1.3B", "model-c", "legacy"),
                                  ("deepseek-ai--Janus-1.3B", "Janus-Pro-old", "pro")):
        target = tmp_path / folder
        shutil.copytree(REAL / source, target)
        config = json.loads((target / "processor_config.json").read_text(encoding="utf-8"))
        del config["sft_format"]
        (target / "processor_config.json").write_text(json.dumps(config), encoding="utf-8")
        assert read_metadata(target)[0].prompt_style == style, folder
    # A snapshot from before Janus-Pro: "deepseek" then wrote User/Assistant, and its tokenizer has no role tokens.
    old = tmp_path / "old-1.3b"
    shutil.copytree(REAL / "deepseek-ai--Janus-1.3B", old)
    config = json.loads((old / "processor_config.json").read_text(encoding="utf-8"))
    (old / "processor_config.json").write_text(json.dumps({**config, "sft_format": "deepseek"}), encoding="utf-8")
    assert read_metadata(old)[0].prompt_style == "legacy"


def test_unknown_sft_format_is_refused_with_the_way_out(tmp_path):
    from janus_ov.errors import ConversionError

    target = tmp_path / "m"
    shutil.copytree(REAL / "deepseek-ai--Janus-Pro-1B", target)
    config = json.loads((target / "processor_config.json").read_text(encoding="utf-8"))
    (target / "processor_config.json").write_text(json.dumps({**config, "sft_format": "chatml"}), encoding="utf-8")
    with pytest.raises(ConversionError, match="sft_format 'chatml'.*prompt_style"):
        read_metadata(target)
    assert read_metadata(target, prompt_style="pro")[0].prompt_style == "pro"


# ----------------------------------------------------------------------------- pixels, bit for bit

def test_resize_rules_differ_where_the_issue_says():
    assert resized_size(500, 333, 384, 14, "deepseek") == (384, 255)
    assert resized_size(500, 333, 384, 14, "transformers") == (384, 256)


@pytest.mark.parametrize("name", list(ORIGINAL))
def test_original_pixels_equal_deepseek_image_processor(name):
    info, _ = read_metadata(REAL / name)
    ref = VLChatProcessor(REAL / name).image_processor
    differ = 0
    for i, (w, h) in enumerate(SIZES):
        im = picture(w, h, i)
        ours = preprocess([load_image(im)], info)
        np.testing.assert_array_equal(ours, ref([im]).astype(np.float32), err_msg=f"{w}x{h}")
        differ += resized_size(w, h, 384, 14, "deepseek") != resized_size(w, h, 384, 14, "transformers")
    assert differ >= 4  # the sizes cover the cases where the two rules part


def test_community_pixels_equal_janus_image_processor(community_processor):
    """transformers' JanusImageProcessor as AutoImageProcessor loads it here (the PIL backend: torchvision
    cannot be installed beside our CPU torch wheel)."""
    info, _ = read_metadata(REAL / COMMUNITY)
    image_processor = community_processor.image_processor
    for i, (w, h) in enumerate(SIZES):
        im = picture(w, h, i)
        expected = image_processor(images=[im], return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(preprocess([load_image(im)], info), expected, err_msg=f"{w}x{h}")


# ----------------------------------------------------------------------------- end to end, shrunk weights

def shrunk_original(real: Path, out: Path, seed: int = 0) -> Path:
    """The real repo's small files + the tiny DeepSeek-written weights with a full 102400-row vocabulary."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(real, out)
    config = json.loads((real / "config.json").read_text(encoding="utf-8"))
    tiny = json.loads((TINY_ORIGINAL / "config.json").read_text(encoding="utf-8"))["language_config"]
    config["language_config"] = {k: v for k, v in tiny.items() if not k.startswith("_")} | {"vocab_size": 102400}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tensors = load_file(str(TINY_ORIGINAL / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        tensors[name] = (torch.randn(102400, 64, generator=gen) * 0.2).to(torch.bfloat16)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def shrunk_community(real: Path, out: Path, seed: int = 0) -> Path:
    """transformers' Janus at the tiny model's widths, with the real repo's tokenizer, processor and configs."""
    import torch
    from transformers import JanusForConditionalGeneration

    from janus_ov.tiny import build_config

    config = build_config(102400, RUNTIME_IDS["image_id"], RUNTIME_IDS["pad_id"], RUNTIME_IDS["bos_id"],
                          RUNTIME_IDS["eos_id"])
    config.text_config.initializer_range = 0.2
    torch.manual_seed(seed)
    JanusForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(out)
    for f in real.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each format's shrunk checkpoint exported once (fp32 weights: compared with PyTorch below)."""
    from janus_ov.export import export

    root = tmp_path_factory.mktemp("real-files")
    made = {}
    for name, build in (("deepseek-ai--Janus-1.3B", shrunk_original), (COMMUNITY, shrunk_community)):
        checkpoint = build(REAL / name, root / name)
        made[name] = (checkpoint, export(str(checkpoint), root / f"{name}-ov", weights="fp32",
                                         cache_dir=root / "cache", progress=None))
    return made


def greedy_reference(checkpoint: Path, input_ids: list, pixel_values: np.ndarray, steps: int) -> list:
    """PyTorch greedy decoding of the loaded checkpoint on the reference processor's inputs."""
    import torch

    from janus_ov.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint, dtype=torch.float32).model
    info = read_metadata(checkpoint)[0]
    with torch.no_grad():
        image_embeds = model.model.get_image_features(pixel_values=torch.from_numpy(pixel_values)).pooler_output
        out = []
        for _ in range(steps):
            ids = torch.tensor([input_ids + out])
            embeds = model.model.language_model.embed_tokens(ids)
            embeds[ids == info.image_id] = image_embeds.reshape(-1, embeds.shape[-1])
            token = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
            if token == info.eos_id:
                break
            out.append(token)
    return out


@pytest.mark.parametrize("name", ["deepseek-ai--Janus-1.3B", COMMUNITY])
def test_real_files_export_chat_and_draw(exported, name, tmp_path, monkeypatch, community_processor):
    from janus_ov.model_info import ModelInfo
    from janus_ov.pipeline import JanusPipeline

    monkeypatch.setenv("JANUS_OV_CACHE", str(tmp_path / "cache"))
    checkpoint, ir_dir = exported[name]
    info = ModelInfo.load(ir_dir)
    assert {k: getattr(info, k) for k in RUNTIME_IDS} == RUNTIME_IDS
    assert info.prompt_style == ("legacy" if name in ORIGINAL else "pro")

    pipe = JanusPipeline.from_pretrained(str(ir_dir), ov_config={"INFERENCE_PRECISION_HINT": "f32",
                                                                 "KV_CACHE_PRECISION": "f32"})
    image = picture(500, 333, 7)  # a size where DeepSeek's and transformers' resizing differ
    question = "What is in this picture?"
    tokens = []
    pipe_ids = pipe._chat_inputs([{"role": "user", "content": question, "images": [image]}], 8)
    if name in ORIGINAL:
        ref = VLChatProcessor(checkpoint)
        user, assistant = ref.roles
        ref_ids = ref.chat_ids([{"role": user, "content": f"<image_placeholder>\n{question}"},
                                {"role": assistant, "content": ""}])
        ref_pixels = ref.image_processor([image]).astype(np.float32)
    else:
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = community_processor.apply_chat_template(conv, add_generation_prompt=True)
        out = community_processor(text=text, images=[image], return_tensors="np")
        ref_ids, ref_pixels = out["input_ids"][0].tolist(), out["pixel_values"]
    assert pipe_ids[0].tolist() == ref_ids
    np.testing.assert_array_equal(pipe_ids[1], ref_pixels)
    answer = pipe.chat([{"role": "user", "content": question, "images": [image]}], max_new_tokens=6)
    tokens = greedy_reference(checkpoint, ref_ids, ref_pixels, steps=6)
    assert answer == pipe.tokenizer.decode(tokens) and tokens

    images = pipe.generate_images("a lighthouse on a cliff at dusk", num_images=1, seed=5)
    assert [im.size for im in images] == [(384, 384)]
    assert np.asarray(images[0], dtype=np.float32).std() > 1.0

    other = {"legacy": "pro", "pro": "legacy"}[info.prompt_style]  # --prompt-style overrides the files
    overridden = JanusPipeline.from_converted(ir_dir, prompt_style=other)
    assert overridden.info.prompt_style == overridden.tokenizer.info.prompt_style == other
    roles = {"pro": "<|User|>: ", "legacy": "User: "}
    assert roles[other] in prompts.chat_prompt([{"role": "user", "content": "hi"}], overridden.info)


def test_bad_prompt_style_is_refused_before_any_conversion(tmp_path):
    from janus_ov.errors import InvalidInputError
    from janus_ov.pipeline import JanusPipeline

    with pytest.raises(InvalidInputError, match="prompt_style must be one of pro, legacy"):
        JanusPipeline.from_pretrained(str(REAL / COMMUNITY), prompt_style="chatml", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())
