"""prompts.py: the reference prompt formats ("pro" = transformers' Janus chat template, "legacy" = DeepSeek's
"deepseek" sft format), conversation validation and the context-window policy."""

import dataclasses
import shutil

import pytest
from conftest import chat_template

from janus_ov import prompts
from janus_ov.errors import InvalidInputError
from janus_ov.tokenizer import JanusTokenizer

EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    from transformers import GenerationConfig, JanusConfig, JanusProcessor

    from janus_ov.checkpoint import model_info_from

    processor = JanusProcessor.from_pretrained(tiny_model_dir)
    info = model_info_from(JanusConfig.from_pretrained(tiny_model_dir),
                           GenerationConfig.from_pretrained(tiny_model_dir), processor)
    assert info.prompt_style == "pro" and info.system_prompt
    return processor, info


@pytest.fixture(scope="module")
def tok(ref, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    shutil.copy(tiny_model_dir / "tokenizer.json", out)
    ref[1].save(out)
    return JanusTokenizer.from_dir(out)


def _reference_pro(processor, messages, generation_mode="text"):
    """What transformers' JanusProcessor feeds its tokenizer: chat template (a turn's images, then its
    text), with DEFAULT_SYSTEM_PROMPT prepended in text mode (use_default_system_prompt=True)."""
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    text = chat_template(processor, messages)
    return DEFAULT_SYSTEM_PROMPT + text if generation_mode == "text" else text


def _reference_legacy(system, turns):
    """DeepSeek's VLChatProcessor.apply_sft_template_for_multi_turn_prompts with sft_format "deepseek"
    (sep "\\n\\n", sep2 = EOS), roles as Janus-1.3B's examples write them, and an empty Assistant turn last."""
    conversation = turns + [("Assistant", "")]
    out = system + "\n\n" if system else ""
    for i, (role, message) in enumerate(conversation):
        message = message.strip()
        out += f"{role}: {message}" + ("\n\n", EOS)[i % 2] if message else f"{role}:"
    return out.strip()


IMG = object()  # chat_prompt only counts images; any object stands for one

PRO_CASES = {
    "one_image": [{"role": "user", "content": "Describe.", "images": [IMG]}],
    "two_images": [{"role": "user", "content": "Compare the two images.", "images": [IMG, IMG]}],
    "three_images_no_text": [{"role": "user", "content": "", "images": [IMG, IMG, IMG]}],
    "text_only": [{"role": "user", "content": "Hello there"}],
    "multi_turn": [
        {"role": "user", "content": "What is in this picture?", "images": [IMG]},
        {"role": "assistant", "content": "A cat sitting on a red sofa."},
        {"role": "user", "content": "And in these two?", "images": [IMG, IMG]},
        {"role": "assistant", "content": "A dog and a bicycle."},
        {"role": "user", "content": "中文的句子 🙂"},
    ],
    "surrounding_whitespace": [{"role": "user", "content": "  Describe.  \n", "images": [IMG]},
                               {"role": "assistant", "content": " Fine. "},
                               {"role": "user", "content": "\tMore "}],
}


@pytest.mark.parametrize("name", sorted(PRO_CASES))
def test_pro_chat_prompt_equals_transformers(ref, name):
    processor, info = ref
    messages = PRO_CASES[name]
    if name == "surrounding_whitespace":  # the template keeps leading blanks after an image; we strip them
        expected = _reference_pro(processor, [{**m, "content": m["content"].strip()} for m in messages])
    else:
        expected = _reference_pro(processor, messages)
    assert prompts.chat_prompt(messages, info) == expected


def test_pro_examples_literally(ref):
    _, info = ref
    bare = dataclasses.replace(info, system_prompt="")
    assert prompts.chat_prompt(PRO_CASES["one_image"], bare) == \
        "<|User|>: <image_placeholder>\nDescribe.\n\n<|Assistant|>:"
    assert prompts.chat_prompt(PRO_CASES["one_image"], info).startswith(info.system_prompt + "\n\n<|User|>: ")
    assert prompts.chat_prompt(PRO_CASES["multi_turn"][:3], bare) == (
        "<|User|>: <image_placeholder>\nWhat is in this picture?\n\n<|Assistant|>: A cat sitting on a red sofa."
        + EOS + "<|User|>: <image_placeholder>\n\n<image_placeholder>\nAnd in these two?\n\n<|Assistant|>:")


@pytest.mark.parametrize("text", ["A dog running under the rain.", "  an astronaut riding a horse, 4k \n"])
def test_pro_image_prompt_equals_transformers(ref, text):
    processor, info = ref
    expected = _reference_pro(processor, [{"role": "user", "content": text.strip()}], generation_mode="image")
    assert prompts.image_prompt(text, info) == expected == f"<|User|>: {text.strip()}\n\n<|Assistant|>:"


def test_legacy_formats_equal_deepseek(ref):
    _, info = ref
    legacy = dataclasses.replace(info, prompt_style="legacy")
    one = [{"role": "user", "content": "Convert the formula into latex code.", "images": [IMG]}]
    assert prompts.chat_prompt(one, legacy) == _reference_legacy(
        info.system_prompt, [("User", "<image_placeholder>\nConvert the formula into latex code.")])
    assert prompts.chat_prompt(one, legacy) == (
        info.system_prompt + "\n\nUser: <image_placeholder>\nConvert the formula into latex code.\n\nAssistant:")
    multi = PRO_CASES["multi_turn"]
    assert prompts.chat_prompt(multi, legacy) == _reference_legacy(info.system_prompt, [
        ("User", "<image_placeholder>\nWhat is in this picture?"), ("Assistant", "A cat sitting on a red sofa."),
        ("User", "<image_placeholder>\n\n<image_placeholder>\nAnd in these two?"),
        ("Assistant", "A dog and a bicycle."), ("User", "中文的句子 🙂")])
    # Text to image: one user turn, empty system prompt, then <begin_of_image> (added by the tokenizer).
    assert prompts.image_prompt("A red apple", legacy) == _reference_legacy("", [("User", "A red apple")])
    assert prompts.image_prompt("A red apple", legacy) == "User: A red apple\n\nAssistant:"


def test_collect_images_in_prompt_order():
    a, b, c = object(), object(), object()
    messages = [{"role": "user", "content": "x", "images": [a, b]}, {"role": "assistant", "content": "y"},
                {"role": "user", "content": "z", "images": [c]}]
    assert prompts.collect_images(messages) == [a, b, c]


BAD = {
    "not_a_list": ({"role": "user", "content": "hi"}, "list"),
    "empty": ([], "empty"),
    "unknown_role": ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
    "system_role": ([{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}], "unknown role"),
    "two_users": ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
    "starts_with_assistant": ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
    "ends_with_assistant": ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "end with a user"),
    "whitespace_user": ([{"role": "user", "content": "  \n\t"}], "empty: give some text or an image"),
    "none_content_no_image": ([{"role": "user", "content": None}], "empty"),
    "assistant_images": ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "images": [IMG]},
                          {"role": "user", "content": "c"}], "cannot carry images"),
    "content_not_str": ([{"role": "user", "content": ["hi"]}], "must be a string"),
    "images_not_list": ([{"role": "user", "content": "hi", "images": "cat.png"}], "must be a list"),
    "message_not_dict": (["hi"], "must be a dict"),
    "typed_placeholder": ([{"role": "user", "content": "see <image_placeholder>"}], "reserved"),
}


def test_a_blank_answer_is_a_turn_the_conversation_goes_on_from(ref):
    """The model may answer with its end token at once: the follow-up's prompt holds that empty turn,
    closed as every answer is, and the new question after it."""
    follow_up = [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}, {"role": "user", "content": "b"}]
    text = prompts.chat_prompt(follow_up, ref[1])
    answered = prompts.chat_prompt([{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"},
                                    {"role": "user", "content": "b"}], ref[1])
    assert text == answered.replace(": x" + prompts.EOS_TEXT, ": " + prompts.EOS_TEXT) and text != answered


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_conversations(ref, name):
    messages, match = BAD[name]
    with pytest.raises(InvalidInputError, match=match):
        prompts.chat_prompt(messages, ref[1])


@pytest.mark.parametrize("prompt,match", [("", "empty"), ("   \n", "empty"), (None, "string"),
                                          ("a <begin_of_image> b", "reserved")])
def test_bad_image_prompts(ref, prompt, match):
    with pytest.raises(InvalidInputError, match=match):
        prompts.image_prompt(prompt, ref[1])


def test_unknown_prompt_style(ref):
    with pytest.raises(InvalidInputError, match="prompt style"):
        prompts.chat_prompt(PRO_CASES["text_only"], dataclasses.replace(ref[1], prompt_style="chatml"))


def test_roles_are_case_insensitive(ref):
    messages = [{"role": "User", "content": "hi"}]
    assert prompts.chat_prompt(messages, ref[1]) == prompts.chat_prompt([{"role": "user", "content": "hi"}], ref[1])


# ------------------------------------------------------------------------- context-window policy

def test_fit_conversation_keeps_what_fits(ref, tok):
    _, info = ref
    messages = PRO_CASES["multi_turn"]
    assert prompts.fit_conversation(messages, info, tok, max_new_tokens=100) == \
        prompts.validate_messages(messages)


def test_fit_conversation_drops_oldest_whole_turns(ref, tok):
    _, info = ref
    messages = PRO_CASES["multi_turn"]
    n = [tok.count_chat_tokens(prompts.chat_prompt(messages[k:], info)) for k in (0, 2, 4)]
    assert n[0] > n[1] > n[2]
    for k, window in ((2, n[1] + 10), (4, n[2] + 10)):
        small = dataclasses.replace(info, max_position_embeddings=window)
        fitted = prompts.fit_conversation(messages, small, tok, max_new_tokens=10)
        assert fitted == prompts.validate_messages(messages[k:])
        assert fitted[0]["role"] == "user" and fitted[-1]["content"] == messages[-1]["content"]
        # The system prompt is still there.
        assert prompts.chat_prompt(fitted, small).startswith(info.system_prompt)
        assert tok.count_chat_tokens(prompts.chat_prompt(fitted, small)) + 10 <= window


def test_fit_conversation_last_turn_too_long(ref, tok):
    _, info = ref
    messages = [{"role": "user", "content": "Describe.", "images": [IMG, IMG, IMG, IMG]}]
    small = dataclasses.replace(info, max_position_embeddings=2048)  # 4 images = 2312 tokens
    with pytest.raises(InvalidInputError, match="context window is 2048 tokens"):
        prompts.fit_conversation(messages, small, tok, max_new_tokens=16)
    # max_new_tokens counts too.
    one = [{"role": "user", "content": "Describe.", "images": [IMG]}]
    needed = tok.count_chat_tokens(prompts.chat_prompt(one, small))
    assert prompts.fit_conversation(one, small, tok, max_new_tokens=2048 - needed) == prompts.validate_messages(one)
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        prompts.fit_conversation(one, small, tok, max_new_tokens=2048 - needed + 1)


@pytest.mark.parametrize("bad", [0, -5, 1.5, None, True, "10"])
def test_fit_conversation_rejects_bad_max_new_tokens(ref, tok, bad):
    with pytest.raises(InvalidInputError, match="max_new_tokens must be a positive integer"):
        prompts.fit_conversation(PRO_CASES["text_only"], ref[1], tok, max_new_tokens=bad)


def test_a_callers_system_prompt_takes_the_checkpoints_place(ref):
    """As DeepSeek's conversation templates do (set_system_message): "{system}\\n\\n" before the first turn,
    in both styles; "" leaves no system prompt. (transformers' Janus template instead writes a system
    message as "System: ...<eos>"; the models were trained on DeepSeek's format.)"""
    _, info = ref
    one = prompts.validate_messages(PRO_CASES["one_image"])
    for style in ("pro", "legacy"):
        styled = dataclasses.replace(info, prompt_style=style)
        default, custom = prompts.render(one, styled), prompts.render(one, styled, "Answer in French.")
        assert custom == "Answer in French.\n\n" + default.removeprefix(info.system_prompt + "\n\n")
        assert prompts.render(one, styled, "") == prompts.render(one, dataclasses.replace(styled, system_prompt=""))
    with pytest.raises(InvalidInputError, match="system prompt"):
        prompts.render(one, info, "see <image_placeholder>")
