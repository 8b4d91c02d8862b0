"""JanusTokenizer and StreamDecoder against transformers' JanusProcessor (the reference) on the tiny model."""

import shutil

import numpy as np
import pytest
from conftest import chat_template
from PIL import Image

from janus_ov import prompts
from janus_ov.errors import InvalidInputError, JanusError, ModelNotFoundError
from janus_ov.tiny import _CORPUS
from janus_ov.tokenizer import JanusTokenizer


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    from transformers import GenerationConfig, JanusConfig, JanusProcessor

    from janus_ov.checkpoint import model_info_from

    processor = JanusProcessor.from_pretrained(tiny_model_dir)
    info = model_info_from(JanusConfig.from_pretrained(tiny_model_dir),
                           GenerationConfig.from_pretrained(tiny_model_dir), processor)
    return processor, info


@pytest.fixture(scope="module")
def tok(ref, tiny_model_dir, tmp_path_factory):
    """A JanusTokenizer read the serving way: tokenizer.json + model_info.json in one directory."""
    processor, info = ref
    out = tmp_path_factory.mktemp("tok")
    shutil.copy(tiny_model_dir / "tokenizer.json", out)
    info.save(out)
    return JanusTokenizer.from_dir(out)


IMG = Image.new("RGB", (64, 48), (200, 30, 30))


CONVERSATIONS = {
    "one_image": [{"role": "user", "content": "Describe the image in detail.", "images": [IMG]}],
    "two_turns_two_images": [
        {"role": "user", "content": "What is in this picture?", "images": [IMG]},
        {"role": "assistant", "content": "A cat sitting on a red sofa."},
        {"role": "user", "content": "Compare the two images. 中文的句子", "images": [IMG]},
    ],
    "two_images_one_turn": [{"role": "user", "content": "Compare the two images.", "images": [IMG, IMG]}],
    "text_only": [{"role": "user", "content": "Hello 🙂"}],
    "images_only": [{"role": "user", "content": "", "images": [IMG, IMG]}],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_encode_chat_equals_processor(ref, tok, name):
    processor, info = ref
    messages = CONVERSATIONS[name]
    images = prompts.collect_images(messages)
    expected = processor(text=chat_template(processor, messages), images=images or None,
                         return_tensors="np")["input_ids"][0]
    ids = tok.encode_chat(prompts.chat_prompt(messages, info), num_images=len(images))
    assert ids.dtype == np.int64
    assert ids[0] == info.bos_id
    np.testing.assert_array_equal(ids, expected)
    assert int((ids == info.image_id).sum()) == len(images) * info.num_image_tokens
    assert int((ids == info.boi_id).sum()) == int((ids == info.eoi_id).sum()) == len(images)
    assert tok.count_chat_tokens(prompts.chat_prompt(messages, info)) == len(ids)


@pytest.mark.parametrize("text", ["A dog running under the rain.", "  一只猫 on a sofa, 4k  "])
def test_encode_image_prompt_equals_processor(ref, tok, text):
    processor, info = ref
    ref_text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": text}]}],
                                             add_generation_prompt=True)
    expected = processor(text=ref_text, generation_mode="image", return_tensors="np")["input_ids"][0]
    ids = tok.encode_image_prompt(prompts.image_prompt(text, info))
    np.testing.assert_array_equal(ids, expected)
    assert ids[0] == info.bos_id and ids[-1] == info.boi_id


def test_placeholder_count_must_match_images(ref, tok):
    _, info = ref
    prompt = prompts.chat_prompt([{"role": "user", "content": "Two?", "images": [IMG, IMG]}], info)
    assert len(tok.encode_chat(prompt, num_images=2)) > 2 * info.num_image_tokens
    with pytest.raises(InvalidInputError, match="2 image placeholder.*1 image"):
        tok.encode_chat(prompt, num_images=1)
    with pytest.raises(InvalidInputError, match="cannot contain image placeholders"):
        tok.encode_image_prompt(prompt)


def test_decode_equals_processor(ref, tok):
    processor, info = ref
    rng = np.random.default_rng(0)
    ids = rng.integers(0, info.vocab_size, size=300).tolist()
    for skip in (True, False):
        assert tok.decode(ids, skip_special=skip) == processor.tokenizer.decode(ids, skip_special_tokens=skip)
    text = "Describe the image. 中文的句子 🙂🐱"
    assert tok.decode(tok.encode_chat(text)) == text  # BOS is skipped


def test_from_dir_errors(tmp_path, tok):
    with pytest.raises(ModelNotFoundError, match="no tokenizer.json"):
        JanusTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="no model_info.json"):
        JanusTokenizer.from_dir(tmp_path)
    tok.info.save(tmp_path)
    with pytest.raises(JanusError, match="unreadable"):
        JanusTokenizer.from_dir(tmp_path)


def test_image_prompt_must_leave_room_for_the_image(ref, tok):
    _, info = ref
    room = info.max_position_embeddings - info.num_image_tokens
    words = " ".join(["cat"] * (room + 10))
    with pytest.raises(InvalidInputError, match="context window of 2048 tokens"):
        tok.encode_image_prompt(prompts.image_prompt(words, info))


def _stream(tok, ids, skip_special=True):
    dec = tok.stream_decoder(skip_special)
    pieces = [dec.push(i) for i in ids]
    return pieces, dec.flush()


def test_stream_multibyte_text_reassembles(tok):
    text = _CORPUS[-1]  # Chinese, Japanese, Greek, Russian, emoji
    ids = tok.tokenizer.encode(text, add_special_tokens=False).ids
    # The premise: some single tokens are fragments of a character.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    pieces, rest = _stream(tok, ids)
    assert "".join(pieces) + rest == tok.decode(ids) == text
    assert rest == ""
    for piece in pieces:
        assert "\ufffd" not in piece  # never half a character
        piece.encode("utf-8")  # and always valid text
    # Text is released as soon as it is complete: every emitted prefix is a prefix of the answer.
    emitted = ""
    for k, piece in enumerate(pieces, 1):
        emitted += piece
        assert tok.decode(ids[:k]).startswith(emitted)
        assert len(tok.decode(ids[:k]).rstrip("\ufffd")) == len(emitted)


def test_stream_skips_special_tokens(ref, tok):
    _, info = ref
    body = tok.tokenizer.encode("猫 🙂 cat", add_special_tokens=False).ids
    ids = [info.bos_id] + body[:3] + [info.image_id] + body[3:] + [info.eos_id]
    for skip in (True, False):
        pieces, rest = _stream(tok, ids, skip)
        assert "".join(pieces) + rest == tok.decode(ids, skip_special=skip)


def test_stream_random_ids_reassemble(ref, tok):
    """Arbitrary model output (also invalid UTF-8): pieces + flush == decode(all ids), always."""
    _, info = ref
    rng = np.random.default_rng(1)
    for _ in range(200):
        ids = rng.integers(0, info.vocab_size, size=int(rng.integers(1, 40))).tolist()
        pieces, rest = _stream(tok, ids)
        assert "".join(pieces) + rest == tok.decode(ids)


def test_stream_cost_stays_constant(tok):
    """push() decodes a short window, not the whole answer: the window never grows with length."""
    ids = tok.tokenizer.encode(" ".join(_CORPUS) * 5, add_special_tokens=False).ids
    dec = tok.stream_decoder()
    longest = 0
    for i in ids:
        dec.push(i)
        longest = max(longest, len(dec._ids))
    assert len(ids) > 1000 and longest <= 5


def test_legacy_original_checkpoint_matches_deepseek_processing():
    """The legacy template (Janus-1.3B's User/Assistant, here chosen by the prompt_style override) on the
    original-format fixture: DeepSeek's VLChatProcessor tokenises the sft prompt with the checkpoint's
    tokenizer (BOS added) and replaces each <image_placeholder> by boi + 576 x image + eoi."""
    from pathlib import Path

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from janus_ov.deepseek_format import read_metadata

    fixture = Path(__file__).parent / "data" / "tiny-janus-original"
    info, tokenizer_json = read_metadata(fixture, prompt_style="legacy")
    assert info.prompt_style == "legacy"
    tok = JanusTokenizer(Tokenizer.from_str(tokenizer_json), info)
    messages = [{"role": "user", "content": "Describe the image.", "images": [IMG]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "And this one? 中文", "images": [IMG]}]
    sft = (info.system_prompt + "\n\nUser: <image_placeholder>\nDescribe the image.\n\nAssistant: A cat."
           + "<\uff5cend\u2581of\u2581sentence\uff5c>User: <image_placeholder>\nAnd this one? 中文\n\nAssistant:")
    prompt = prompts.chat_prompt(messages, info)
    assert prompt == sft
    ds_ids = AutoTokenizer.from_pretrained(fixture).encode(sft)
    expected = []
    for t in ds_ids:
        expected += [info.boi_id] + [info.image_id] * info.num_image_tokens + [info.eoi_id] \
            if t == info.image_id else [t]
    np.testing.assert_array_equal(tok.encode_chat(prompt, num_images=2), expected)
    gen = AutoTokenizer.from_pretrained(fixture).encode("User: A red apple\n\nAssistant:<begin_of_image>")
    np.testing.assert_array_equal(tok.encode_image_prompt(prompts.image_prompt("A red apple", info)), gen)
