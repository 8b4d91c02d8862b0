"""The chat draws, then talks about what it drew (issue 20), below the UI: how a conversation with
drawings reaches the model (app.to_janus_messages) and that a drawn image reaches the vision encoder
exactly as the same PNG uploaded would. The browser side is in test_browser.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from app import drawing_prompt, to_janus_messages


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def file(path) -> dict:
    return {"type": "file", "file": {"path": str(path)}}


@pytest.fixture(scope="module")
def drawn(pipe, tmp_path_factory):
    """Two drawings of the tiny model, saved as the app saves them (ImageResult.save: PNG)."""
    folder = tmp_path_factory.mktemp("drawn")
    result = pipe.generate_images("a lighthouse on a cliff", num_images=2, seed=11)
    return result, result.save(folder)


@pytest.mark.parametrize("message,prompt", [("/imagine a red fox", "a red fox"), ("  /draw  two cats\n", "two cats"),
                                            ("/imagine", ""), ("imagine a fox", None), ("/imagined", None),
                                            ("What is /imagine?", None)])
def test_drawing_requests_are_recognised(message, prompt):
    assert drawing_prompt(message) == prompt


def test_a_drawn_image_reaches_the_vision_encoder_as_the_same_png_uploaded(pipe, drawn):
    result, paths = drawn
    question = "Is the light on?"
    from_png = pipe._chat_inputs([{"role": "user", "content": question, "images": [str(paths[0])]}], 8)
    from_memory = pipe._chat_inputs([{"role": "user", "content": question, "images": [result.images[0]]}], 8)
    assert np.array_equal(from_png[0], from_memory[0])
    assert np.array_equal(from_png[1], from_memory[1])  # PNG is lossless: the pixels the model made
    embeddings = [pipe.runtime.vision(x[1]) for x in (from_png, from_memory)]
    assert np.array_equal(*embeddings)


def test_two_drawings_and_an_upload_give_the_tokens_of_an_all_uploaded_conversation(pipe, drawn):
    """Drawn images join the next question's turn, before its own uploads; the drawing requests and
    captions are not part of what the model reads."""
    _, (first, second) = drawn
    upload = pipe.model_dir.parent / "upload.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(upload)
    history = [
        {"role": "user", "content": [text("/imagine a lighthouse on a cliff")]},
        {"role": "assistant", "content": [file(first), text("1 image of “a lighthouse on a cliff” · seed 11")]},
        {"role": "user", "content": [text("Is the light on?")]},
        {"role": "assistant", "content": [text("Yes, it is.")]},
        {"role": "user", "content": [text("/draw the same at night")]},
        {"role": "assistant", "content": [file(second), text("1 image of “the same at night” · seed 12")]},
        {"role": "user", "content": [file(upload), text("Compare it with this photo.")]},
    ]
    uploaded = [
        {"role": "user", "content": "Is the light on?", "images": [str(first)]},
        {"role": "assistant", "content": "Yes, it is.", "images": []},
        {"role": "user", "content": "Compare it with this photo.", "images": [str(second), str(upload)]},
    ]
    assert to_janus_messages(history) == uploaded
    ids, pixels = pipe._chat_inputs(to_janus_messages(history), 8)
    want_ids, want_pixels = pipe._chat_inputs(uploaded, 8)
    assert np.array_equal(ids, want_ids) and np.array_equal(pixels, want_pixels) and len(pixels) == 3
    assert pipe.chat(to_janus_messages(history), max_new_tokens=6).text == pipe.chat(uploaded, max_new_tokens=6).text


def test_a_stopped_or_failed_drawing_leaves_nothing_for_the_model(pipe):
    history = [{"role": "user", "content": [text("/imagine a fox")]},
               {"role": "assistant", "content": [text("Drawing stopped.")]},
               {"role": "user", "content": [text("Hello")]}]
    assert to_janus_messages(history) == [{"role": "user", "content": "Hello", "images": []}]
