"""Prompt-prefix reuse between the turns of a conversation: the one owner of what a context's
KV cache holds from its last chat turn.

The next turn of a conversation starts with the whole previous one, so a context remembers the
token ids behind row 0 of its KV cache -- images as fingerprints of their pixels, so a replaced
image is never mistaken for the old one -- and the conversation's image embeddings. A new prompt
then prefills only what comes after the longest shared prefix (whole cache blocks), and no image
is encoded twice. Anything else (another conversation, an image run in between, a conversation
trimmed to fit the window) shares no prefix and is prefilled from scratch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .model_info import ModelInfo


def fingerprints(pixel_values: np.ndarray | None) -> list[int]:
    """A 56-bit fingerprint of each preprocessed image's pixels: what the caches match images on."""
    if pixel_values is None:
        return []
    return [int.from_bytes(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=7).digest(), "little")
            for image in pixel_values]


@dataclass
class KeyedPrompt:
    """A chat prompt as the cache sees it, computed once per request.

    key: the ids with each image's placeholders replaced by its fingerprint (negative, never a
    token id), so the cache is reused for the same images, not merely for the same number of them.
    """
    input_ids: np.ndarray  # i64 [T]
    slots: np.ndarray  # [n_images, num_image_tokens]: each image's <image_placeholder> positions
    image_prints: list[int]
    key: np.ndarray  # i64 [T]

    @classmethod
    def of(cls, info: ModelInfo, input_ids, pixel_values: np.ndarray | None) -> "KeyedPrompt":
        """Bad input (image count vs placeholders) fails here, before any cache is touched."""
        input_ids = np.asarray(input_ids, np.int64)
        image_prints = fingerprints(pixel_values)
        slots = np.flatnonzero(input_ids == info.image_id)
        if len(slots) != len(image_prints) * info.num_image_tokens:
            raise InvalidInputError(f"The prompt has {len(slots)} image tokens but {len(image_prints)} image(s) were "
                                    f"given ({info.num_image_tokens} tokens each).")
        slots = slots.reshape(len(image_prints), info.num_image_tokens)
        key = input_ids.copy()
        for positions, fingerprint in zip(slots, image_prints):
            key[positions] = -1 - fingerprint
        return cls(input_ids, slots, image_prints, key)


class PrefixCache:
    """What one context's KV cache holds from its last chat turn (row 0 only)."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.ids: np.ndarray | None = None  # keyed ids of the cached tokens; None = unknown
        self.image_embeds: dict = {}  # fingerprint -> [num_image_tokens, H], this conversation's images

    def reusable(self, prompt: KeyedPrompt) -> int:
        """How many leading tokens of `prompt` the cache holds: the common prefix, down to whole
        blocks, leaving at least one token to prefill."""
        if self.ids is None:
            return 0
        n = min(len(self.ids), len(prompt.key) - 1)
        differ = np.flatnonzero(self.ids[:n] != prompt.key[:n])
        common = int(differ[0]) if len(differ) else n
        return common // self.block_size * self.block_size

    def forget(self) -> None:
        """The cache's rows were started anew (or a call failed half-way): nothing is known to be reusable."""
        self.ids = None

    def hold(self, ids: np.ndarray) -> None:
        """Row 0 of the KV cache now holds exactly these keyed ids."""
        self.ids = ids

    def image_embeddings(self, prompt: KeyedPrompt, pixel_values, needed: list[int], encode) -> dict:
        """fingerprint -> embeddings for the images `needed` (indices into the prompt's images), encoding
        only those not kept from this conversation (`encode(pixel_values[missing])` -> [n,576,H]).
        Afterwards only this prompt's images are kept."""
        prints = prompt.image_prints
        kept = {p: self.image_embeds[p] for p in prints if p in self.image_embeds}
        missing = [i for i in needed if prints[i] not in kept]
        if missing:
            kept.update(zip((prints[i] for i in missing), encode(pixel_values[missing])))
        self.image_embeds = kept
        return kept
