"""Multimodal chat: the token loop on the OpenVINO parts, exactly the reference algorithm.

prompt ids -> text embeddings, with the vision part's image embeddings scattered in at the
<image_placeholder> positions -> one prefill call of the language model -> lm_head on
the last position -> sample -> single-token steps until EOS or max_new_tokens.

Per decode step: three OpenVINO calls (text_embeddings, language_model, lm_head) on one-token
tensors, each output handed to the next call as a shared view (no copies of the vocabulary).

The next turn of a conversation starts with the whole previous one, so the context keeps the
token ids behind its KV cache (images as fingerprints of their pixels) and a new prompt only
prefills what comes after the longest shared prefix (whole cache blocks); with several
conversations at once, a turn borrows the context holding most of it. It also keeps the
conversation's image embeddings, so no image is encoded twice. A follow-up
question to a 665-token image prompt then costs a few dozen tokens instead of 665 plus the
vision encoder. Anything else -- another conversation, an image request in between, a
conversation trimmed to fit the window -- shares no prefix and is prefilled from scratch.
"""

from __future__ import annotations

import hashlib
import time
from typing import Iterator

import numpy as np

from .errors import InvalidInputError
from .model_info import ModelInfo
from .runtime import Context
from .sampling import TokenSampler


def fingerprints(pixel_values: np.ndarray | None) -> list[int]:
    """A 56-bit fingerprint of each preprocessed image's pixels: what the caches match images on."""
    if pixel_values is None:
        return []
    return [int.from_bytes(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=7).digest(), "little")
            for image in pixel_values]


def image_slots(info: ModelInfo, input_ids: np.ndarray, n_images: int) -> np.ndarray:
    """The <image_placeholder> positions of each image, [n_images, num_image_tokens]."""
    slots = np.flatnonzero(input_ids == info.image_id)
    if len(slots) != n_images * info.num_image_tokens:
        raise InvalidInputError(f"The prompt has {len(slots)} image tokens but {n_images} image(s) were given "
                                f"({info.num_image_tokens} tokens each).")
    return slots.reshape(n_images, info.num_image_tokens)


def prompt_key(input_ids: np.ndarray, slots: np.ndarray, prints: list[int]) -> np.ndarray:
    """The prompt's ids with each image's placeholders replaced by its fingerprint (negative, never
    a token id): what the KV cache is matched on, so it is reused for the same images, not merely
    for the same number of them."""
    key = input_ids.copy()
    for positions, fingerprint in zip(slots, prints):
        key[positions] = -1 - fingerprint
    return key


def prompt_embeddings(ctx: Context, input_ids: np.ndarray, pixel_values: np.ndarray | None, slots: np.ndarray,
                      prints: list[int], start: int = 0) -> np.ndarray:
    """inputs_embeds f32 [T-start,H] for prompt tokens start.., images in place of their
    placeholders. Image embeddings are kept in the context by fingerprint, for the images of
    the last conversation only: an image goes through the vision part once per conversation."""
    embeds = ctx.embed_text(input_ids[None, start:])[0]
    memo = {p: ctx.image_embeds[p] for p in prints if p in ctx.image_embeds}
    needed = [i for i in range(len(prints)) if slots[i, -1] >= start]
    missing = [i for i in needed if prints[i] not in memo]
    if missing:
        memo.update(zip((prints[i] for i in missing), ctx.vision(pixel_values[missing])))  # [n,576,H]
    ctx.image_embeds = memo
    if not needed:
        return embeds
    embeds = np.array(embeds)  # own copy: the scatter must not write into OpenVINO's output tensor
    for i in needed:
        later = slots[i] >= start
        embeds[slots[i][later] - start] = memo[prints[i]][later]
    return embeds


def cached_prefix(ctx: Context, key: np.ndarray) -> int:
    """How many leading tokens of the prompt (as `prompt_key`) the context's cache holds from its
    last chat: the common prefix, down to whole blocks, leaving at least one token to prefill."""
    cached = ctx.kv.ids
    if cached is None or len(ctx.kv.past) != 1:
        return 0
    n = min(len(cached), len(key) - 1)
    differ = np.flatnonzero(cached[:n] != key[:n])
    common = int(differ[0]) if len(differ) else n
    return common // ctx.kv.block_size * ctx.kv.block_size


def keyed_prompt(info: ModelInfo, input_ids, pixel_values: np.ndarray | None):
    """(input_ids i64, image slots, fingerprints, prompt_key): what the cache is matched on.
    Bad input (image count vs placeholders) fails here, before any cache is touched."""
    input_ids = np.asarray(input_ids, np.int64)
    prints = fingerprints(pixel_values)
    slots = image_slots(info, input_ids, len(prints))
    return input_ids, slots, prints, prompt_key(input_ids, slots, prints)


def cache_affinity(info: ModelInfo, input_ids: np.ndarray, pixel_values: np.ndarray | None):
    """ctx -> how many prompt tokens its cache holds: for `Runtime.context(prefer=...)`, so that
    with several conversations at once a follow-up goes to the context that served its last turn."""
    key = keyed_prompt(info, input_ids, pixel_values)[3]
    return lambda ctx: cached_prefix(ctx, key)


def generate_tokens(ctx: Context, info: ModelInfo, input_ids: np.ndarray, pixel_values: np.ndarray | None,
                    sampler: TokenSampler, max_new_tokens: int, stop_ids=None, stop_event=None,
                    stats: dict | None = None) -> Iterator[int]:
    """Yield new token ids (stop tokens are not yielded). `ctx` must stay borrowed while iterating."""
    stop_ids = frozenset((info.eos_id,) if stop_ids is None else stop_ids)
    stats = {} if stats is None else stats
    t0 = time.perf_counter()
    input_ids, slots, prints, key = keyed_prompt(info, input_ids, pixel_values)
    n_prompt = len(input_ids)
    ids = np.zeros(n_prompt + max_new_tokens, np.int64)  # what the cache holds: ids[:fed], images as keys
    ids[:n_prompt] = key
    token = np.zeros((1, 1), np.int64)  # the step's input, reused

    cached = cached_prefix(ctx, ids[:n_prompt])
    embeds = prompt_embeddings(ctx, input_ids, pixel_values, slots, prints, start=cached)
    ctx.start([n_prompt + max_new_tokens], keep=cached)
    hidden = ctx.language_model(embeds, [n_prompt - cached])  # [1,H]: the last position only
    ctx.kv.ids = ids[:n_prompt]
    logits = ctx.lm_head(hidden[None])  # [1,1,V], not [1,T,V]
    next_id = sampler(logits[0, 0])
    stats.update(prompt_tokens=n_prompt, cached_tokens=cached, time_to_first_token_s=time.perf_counter() - t0,
                 new_tokens=0)
    t1 = time.perf_counter()

    for n in range(1, max_new_tokens + 1):
        if next_id in stop_ids:
            break
        stats["new_tokens"] = n
        yield next_id
        if n == max_new_tokens or (stop_event is not None and stop_event.is_set()):
            break
        fed = n_prompt + n - 1
        token[0, 0] = ids[fed] = next_id
        ctx.kv.ids = None  # unknown until the call has succeeded
        hidden = ctx.language_model(ctx.embed_text(token)[0])
        ctx.kv.ids = ids[:fed + 1]
        next_id = sampler(ctx.lm_head(hidden[None])[0, 0])
    decode_s = time.perf_counter() - t1
    steps = max(stats["new_tokens"] - 1, 0)  # the first token came from the prefill
    stats.update(decode_s=decode_s, decode_tokens_per_s=steps / decode_s if decode_s > 0 and steps else 0.0,
                 total_s=time.perf_counter() - t0)
