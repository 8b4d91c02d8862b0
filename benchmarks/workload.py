"""The benchmark's inputs, identical for OpenVINO and PyTorch.

Chat: one image and a short question, padded so the whole prompt is about 629 tokens
(system prompt + 576 image tokens + question), the length of our yardstick measurement.
Text-to-image: one short prompt. Random weights never stop on their own, so every chat
reply is forced to NEW_TOKENS tokens.
"""

from __future__ import annotations

from pathlib import Path

NEW_TOKENS = 128
TARGET_PROMPT_TOKENS = 629
IMAGE_PROMPT = "A photo of a mountain lake at sunrise, highly detailed, 4k."
FOLLOW_UP = "What colours stand out most, and where are they?"  # the second turn of each chat run
_QUESTION = "Describe the image in detail."
_PADDING = " Mention every color, shape, object and any text you can see."


def make_image(variant: int = 0):
    """A deterministic 640x480 test picture (resized by preprocessing like any photo); each
    `variant` shifts the checkerboard, so it is another picture with the same prompt length."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640]
    rgb = np.stack([x * 255 // 639, y * 255 // 479, (((x + variant) // 40 + y // 40) % 2) * 255], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def make_question(model_dir: str | Path, target: int = TARGET_PROMPT_TOKENS) -> str:
    """The question, padded until system prompt + image + question is about `target` tokens.

    Counted with the checkpoint's own tokenizer (`tokenizers` only) on the Janus-Pro chat
    layout; each side reports the prompt length it actually used.
    """
    from tokenizers import Tokenizer

    from janus_ov.model_info import DEFAULT_SYSTEM_PROMPT

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    image_tokens = 576 + 2  # image placeholders + begin/end of image

    def length(question):
        text = f"{DEFAULT_SYSTEM_PROMPT}\n\n<|User|>: {question}\n\n<|Assistant|>:"
        return len(tok.encode(text).ids) + image_tokens

    question = _QUESTION
    while length(question + _PADDING) <= target:
        question += _PADDING
    return question
