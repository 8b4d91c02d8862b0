"""Multimodal chat: the token loop on the OpenVINO parts, exactly the reference algorithm.

prompt ids -> text embeddings, with the vision part's image embeddings scattered in at the
<image_placeholder> positions -> one prefill call of the language model -> lm_head on
the last position -> sample -> single-token steps until EOS or max_new_tokens.

Per decode step: three OpenVINO calls (text_embeddings, language_model, lm_head) on one-token
tensors, each output handed to the next call as a shared view (no copies of the vocabulary).

A follow-up turn goes on from the conversation's cached prefix (prefix_cache.py owns what is
reused); with several conversations at once, a turn borrows the context holding most of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from .model_info import ModelInfo
from .prefix_cache import KeyedPrompt
from .runtime import Context
from .sampling import TokenSampler


def prompt_embeddings(ctx: Context, prompt: KeyedPrompt, pixel_values: np.ndarray | None,
                      start: int = 0) -> np.ndarray:
    """inputs_embeds f32 [T-start,H] for prompt tokens start.., images in place of their
    placeholders (each image through the vision part once per conversation: ctx.prefix keeps them)."""
    embeds = ctx.embed_text(prompt.input_ids[None, start:])[0]
    slots = prompt.slots
    needed = [i for i in range(len(slots)) if slots[i, -1] >= start]
    kept = ctx.prefix.image_embeddings(prompt, pixel_values, needed, ctx.vision)
    if not needed:
        return embeds
    embeds = np.array(embeds)  # own copy: the scatter must not write into OpenVINO's output tensor
    for i in needed:
        later = slots[i] >= start
        embeds[slots[i][later] - start] = kept[prompt.image_prints[i]][later]
    return embeds


def generate_tokens(ctx: Context, info: ModelInfo, prompt: KeyedPrompt, pixel_values: np.ndarray | None,
                    sampler: TokenSampler, max_new_tokens: int, stop_ids=None, stop_event=None,
                    stats: dict | None = None) -> Iterator[int]:
    """Yield new token ids (stop tokens are not yielded). `ctx` must stay borrowed while iterating."""
    stop_ids = frozenset((info.eos_id,) if stop_ids is None else stop_ids)
    stats = {} if stats is None else stats
    t0 = time.perf_counter()
    n_prompt = len(prompt.input_ids)
    ids = np.zeros(n_prompt + max_new_tokens, np.int64)  # what the cache holds: ids[:fed], images as keys
    ids[:n_prompt] = prompt.key
    token = np.zeros((1, 1), np.int64)  # the step's input, reused

    cached = ctx.prefix.reusable(prompt) if len(ctx.kv.past) == 1 else 0
    embeds = prompt_embeddings(ctx, prompt, pixel_values, start=cached)
    ctx.start([n_prompt + max_new_tokens], keep=cached)
    hidden = ctx.language_model(embeds, [n_prompt - cached])  # [1,H]: the last position only
    ctx.prefix.hold(ids[:n_prompt])
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
        ctx.prefix.forget()  # unknown until the call has succeeded
        hidden = ctx.language_model(ctx.embed_text(token)[0])
        ctx.prefix.hold(ids[:fed + 1])
        next_id = sampler(ctx.lm_head(hidden[None])[0, 0])
    decode_s = time.perf_counter() - t1
    steps = max(stats["new_tokens"] - 1, 0)  # the first token came from the prefill
    stats.update(decode_s=decode_s, decode_tokens_per_s=steps / decode_s if decode_s > 0 and steps else 0.0,
                 total_s=time.perf_counter() - t0)
