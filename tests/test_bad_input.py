"""Bad input gets a clear InvalidInputError (a ValueError) before any work is done, and the
pipeline stays usable: the same good request gives the same answer right after every failure.

Context-window policy: the oldest whole exchanges are dropped until prompt + max_new_tokens
fits; only if the last user turn alone does not fit is that an error."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from janus_ov.errors import InvalidInputError

GOOD = [{"role": "user", "content": "Hello, what can you do?"}]


def _png(size=(64, 48), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_answer(pipe):
    return pipe.chat(GOOD, max_new_tokens=6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-images")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(1).integers(0, 256, 500,
                                                                                                       np.uint8)))
    (d / "garbage.jpg").write_bytes(b"this is not an image at all")
    (d / "empty.png").write_bytes(b"")
    big = _png((400, 300), seed=2)
    (d / "truncated.png").write_bytes(big[: len(big) // 2])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    # Decompression bomb: 20000 x 20000 pixels, a few kB on disk (1-bit, all zero).
    Image.new("1", (20000, 20000)).save(d / "bomb.png")
    assert (d / "bomb.png").stat().st_size < 1_000_000
    return d


def _chat_with_image(image):
    return lambda p, f: p.chat([{"role": "user", "content": "What is this?", "images": [image(f)]}],
                               max_new_tokens=4)


def _chat(messages=GOOD, **kwargs):
    return lambda p, f: p.chat(messages, **{"max_new_tokens": 4, **kwargs})


def _image(prompt="a cat", **kwargs):
    return lambda p, f: p.generate_images(prompt, **kwargs)


CASES = {
    # images referenced by a turn
    "missing_image": _chat_with_image(lambda f: f / "does-not-exist.png"),
    "corrupt_png": _chat_with_image(lambda f: f / "corrupt.png"),
    "garbage_jpg": _chat_with_image(lambda f: f / "garbage.jpg"),
    "empty_file": _chat_with_image(lambda f: f / "empty.png"),
    "truncated_png": _chat_with_image(lambda f: f / "truncated.png"),
    "truncated_jpg": _chat_with_image(lambda f: f / "truncated.jpg"),
    "bomb_20000x20000": _chat_with_image(lambda f: f / "bomb.png"),
    "image_bytes_garbage": _chat_with_image(lambda f: b"\x00\x01\x02garbage"),
    "image_wrong_type": _chat_with_image(lambda f: 12345),
    # prompts and conversations
    "chat_empty": _chat(messages=[{"role": "user", "content": ""}]),
    "chat_whitespace": _chat(messages=[{"role": "user", "content": "  \n\t  "}]),
    "chat_no_messages": _chat(messages=[]),
    "chat_not_a_list": _chat(messages="hello"),
    "chat_ends_with_assistant": _chat(messages=[*GOOD, {"role": "assistant", "content": "Hi."}]),
    "chat_bad_role": _chat(messages=[{"role": "system", "content": "hi"}]),
    "last_turn_longer_than_context": _chat(messages=[{"role": "user", "content": "cat sofa " * 2000}]),
    "last_turn_too_many_images": lambda p, f: p.chat(
        [{"role": "user", "content": "Compare.", "images": [_png(seed=i) for i in range(4)]}], max_new_tokens=4),
    "image_prompt_empty": _image(""),
    "image_prompt_whitespace": _image("   \n "),
    "image_prompt_none": _image(None),
    "image_prompt_too_long": _image("cat sofa " * 1000),
    # sampling parameters
    **{f"max_new_tokens={v!r}": _chat(max_new_tokens=v) for v in (0, -3, 2.5, "10", True, 10**9, float("nan"))},
    **{f"temperature={v!r}": _chat(temperature=v) for v in (-0.5, 5.5, math.nan, math.inf, "hot", None)},
    **{f"top_p={v!r}": _chat(top_p=v, temperature=1.0) for v in (0, -0.1, 1.5, math.nan, None)},
    **{f"seed={v!r}": _chat(seed=v, temperature=1.0) for v in (-1, 1.5, "seven")},
    **{f"num_images={v!r}": _image(num_images=v) for v in (0, -1, 9, 1.5, math.nan, "2", None)},
    **{f"cfg_weight={v!r}": _image(cfg_weight=v) for v in (0.5, 0, -3, 21, math.nan, math.inf, None)},
    **{f"image_temperature={v!r}": _image(temperature=v) for v in (-1, math.nan, math.inf, 50)},
    "image_seed_negative": _image(seed=-5),
    "image_callback_not_callable": _image(callback="print"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_clearly_and_pipeline_stays_usable(pipe, files, good_answer, case):
    with pytest.raises(InvalidInputError) as err:
        CASES[case](pipe, files)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert len(message) > 15 and "\n" not in message.strip()  # one clear sentence, not a traceback
    assert pipe.chat(GOOD, max_new_tokens=6) == good_answer


LONE = "caf\ud800e"  # a lone surrogate: JSON can carry it, UTF-8 cannot
EXCHANGES = [{"role": r, "content": "hi"} for _ in range(129) for r in ("user", "assistant")][:-1]
SPECIFIC = {  # the message names the field and the fault
    "chat_lone_surrogate": (_chat(messages=[{"role": "user", "content": LONE}]), "message 1: 'content' is not valid"),
    "history_lone_surrogate": (_chat(messages=[*GOOD, {"role": "assistant", "content": LONE}, *GOOD]),
                               "message 2: 'content' is not valid Unicode"),
    "prompt_lone_surrogate": (_image(LONE), "the prompt is not valid Unicode"),
    "negative_lone_surrogate": (_image("a cat", negative_prompt=LONE), "the negative prompt is not valid Unicode"),
    "negative_too_long": (_image("a cat", negative_prompt="cat sofa " * 1000), "the negative prompt is 5008 tokens"),
    "too_many_messages": (_chat(messages=EXCHANGES), "257 messages; at most 256"),
    "message_too_long": (_chat(messages=[{"role": "user", "content": "a" * 40_000}]), "40000 characters long"),
    "prompt_too_long_chars": (_image("a" * 40_000), "the prompt is 40000 characters long"),
}


@pytest.mark.parametrize("case", list(SPECIFIC))
def test_text_faults_are_named_precisely(pipe, files, good_answer, case):
    """Lone surrogates (once a UnicodeEncodeError or a tokenizer TypeError), over-long fields and
    over-long histories are refused up front, naming the field (a negative prompt was once
    reported as "the prompt")."""
    call, words = SPECIFIC[case]
    with pytest.raises(InvalidInputError, match=words.replace("(", r"\(")):
        call(pipe, files)
    assert pipe.chat(GOOD, max_new_tokens=6) == good_answer


def test_image_generation_still_works_after_bad_requests(pipe, files):
    for case in ("bomb_20000x20000", "num_images=9", "cfg_weight=nan", "image_prompt_empty"):
        with pytest.raises(InvalidInputError):
            CASES[case](pipe, files)
    first = pipe.generate_images("a cat", seed=4, preview_every=0)
    assert [im.size for im in first] == [(384, 384)]


def test_long_conversation_drops_the_oldest_exchanges(pipe):
    """5 images x 578 tokens exceed the tiny model's 2048-token window; keeping the last 3 fits."""
    assert pipe.info.max_position_embeddings == 2048
    turns = []
    for i in range(5):
        turns.append({"role": "user", "content": f"Look at picture {i}.", "images": [_png(seed=10 + i)]})
        if i < 4:
            turns.append({"role": "assistant", "content": f"It is picture number {i}."})
    answer = pipe.chat(turns, max_new_tokens=8)
    assert answer.stats["prompt_tokens"] + 8 <= 2048
    assert answer == pipe.chat(turns[4:], max_new_tokens=8)  # two oldest exchanges dropped, no more
    assert answer.stats["prompt_tokens"] > 3 * 578
