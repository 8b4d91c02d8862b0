"""Prompt strings <-> token ids, with the `tokenizers` library only (no transformers on the serving path).

encode_chat reproduces JanusProcessor's input_ids: BOS, then the text, with each "<image_placeholder>"
expanded to <begin_of_image> + num_image_tokens x <image_placeholder> + <end_of_image>.
StreamDecoder turns generated ids into text pieces that never split a UTF-8 character.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import InvalidInputError, JanusError, ModelNotFoundError
from .model_info import FILE_NAME as MODEL_INFO_FILE
from .model_info import ModelInfo

TOKENIZER_FILE = "tokenizer.json"


class JanusTokenizer:
    def __init__(self, tokenizer: Tokenizer, info: ModelInfo):
        self.tokenizer = tokenizer
        self.info = info

    @classmethod
    def from_dir(cls, model_dir) -> "JanusTokenizer":
        """Read tokenizer.json and model_info.json from a converted model directory."""
        model_dir = Path(model_dir)
        for name in (TOKENIZER_FILE, MODEL_INFO_FILE):
            if not (model_dir / name).is_file():
                raise ModelNotFoundError(f"no {name} in {model_dir}; is this a converted Janus model directory?")
        try:
            tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
            info = ModelInfo.load(model_dir)
        except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exceptions on bad JSON
            raise JanusError(f"the tokenizer files in {model_dir} are unreadable ({e}); convert the model again") from e
        return cls(tokenizer, info)

    # ------------------------------------------------------------------------------------- encoding

    def _text_ids(self, text: str) -> list[int]:
        # BOS is added here, not by the tokenizer's post-processor, so every tokenizer.json behaves alike.
        return [self.info.bos_id] + self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_chat(self, prompt: str, num_images: int | None = None) -> np.ndarray:
        """Chat prompt (from prompts.chat_prompt) -> int64 ids [T]. If num_images is given, the number of
        "<image_placeholder>" tags must match it."""
        ids = self._text_ids(prompt)
        info = self.info
        found = ids.count(info.image_id)
        if num_images is not None and found != num_images:
            raise InvalidInputError(
                f"the prompt has {found} image placeholder(s) but {num_images} image(s) were given")
        n = int(info.num_image_tokens)
        out = np.empty(len(ids) + found * (n + 1), dtype=np.int64)  # each tag grows by n + 1
        pos = 0
        for t in ids:
            if t == info.image_id:
                out[pos] = info.boi_id
                out[pos + 1:pos + 1 + n] = info.image_id
                out[pos + 1 + n] = info.eoi_id
                pos += n + 2
            else:
                out[pos] = t
                pos += 1
        return out

    def count_chat_tokens(self, prompt: str) -> int:
        """len(encode_chat(prompt)) without building the array (for context-window checks)."""
        ids = self._text_ids(prompt)
        return len(ids) + ids.count(self.info.image_id) * (int(self.info.num_image_tokens) + 1)

    def count_pieces(self, pieces: list[str]) -> list[int]:
        """Tokens of each prompt piece on its own (no BOS; an image tag counts as its expansion)."""
        n = int(self.info.num_image_tokens)
        return [len(e.ids) + e.ids.count(self.info.image_id) * (n + 1)
                for e in self.tokenizer.encode_batch(pieces, add_special_tokens=False)]

    def encode_image_prompt(self, prompt: str, name: str = "prompt") -> np.ndarray:
        """Text-to-image prompt (from prompts.image_prompt) -> int64 ids [T]: BOS ... <begin_of_image>.
        `name`: what errors call it (the prompt, the negative prompt)."""
        ids = self._text_ids(prompt) + [self.info.boi_id]
        if self.info.image_id in ids:
            raise InvalidInputError(f"a text-to-image {name} cannot contain image placeholders")
        limit, n = int(self.info.max_position_embeddings), int(self.info.num_image_tokens)
        if len(ids) + n > limit:
            raise InvalidInputError(
                f"the {name} is {len(ids)} tokens; with the {n} image tokens to generate that exceeds the "
                f"model's context window of {limit} tokens: shorten the {name}")
        return np.array(ids, dtype=np.int64)

    # ------------------------------------------------------------------------------------- decoding

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def stream_decoder(self, skip_special: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)


class StreamDecoder:
    """Incremental detokenizer: push(id) returns only text that is final.

    Byte-level BPE tokens can end in the middle of a UTF-8 character, and some decoders change a
    token's text depending on its left neighbour, so each step decodes a short window: the ids since
    the last emitted boundary (`prefix`) up to now, compared with the same window up to the previous
    emission. Trailing U+FFFD (an incomplete character) is held back; when the window ends on a
    character boundary it restarts. Cost per push is O(window), not O(sequence).
    """

    def __init__(self, tokenizer: JanusTokenizer, skip_special: bool = True):
        self._decode = lambda ids: tokenizer.tokenizer.decode(ids, skip_special_tokens=skip_special)
        self._ids: list[int] = []  # only the current window
        self._prefix_text = ""  # decode(window[:read]) - already emitted

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        text = self._decode(self._ids)
        # Trailing U+FFFD = bytes of a character still incomplete: everything before them is final.
        stable = text.rstrip("\ufffd")
        if len(stable) <= len(self._prefix_text):
            return ""
        new = stable[len(self._prefix_text):]
        if len(stable) == len(text):
            # Clean boundary: restart the window, keeping the last token as left context so a
            # decoder that treats a window's first token specially (e.g. dropping a leading
            # space) sees the same neighbour as in the full sequence.
            self._ids = self._ids[-1:]
            self._prefix_text = self._decode(self._ids)
        else:
            self._prefix_text = stable
        return new

    def flush(self) -> str:
        """Whatever is still held back (an incomplete trailing character decodes to U+FFFD, as in decode)."""
        text = self._decode(self._ids)
        new = text[len(self._prefix_text):] if len(text) > len(self._prefix_text) else ""
        self._ids, self._prefix_text = [], ""
        return new
