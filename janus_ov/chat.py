"""Multimodal chat: the token loop on the OpenVINO parts, exactly the reference algorithm.

prompt ids -> text embeddings, with the vision part's image embeddings scattered in at the
<image_placeholder> positions -> one prefill call of the language model -> lm_head on
the last position -> sample -> single-token steps until EOS or max_new_tokens.

Per decode step: three OpenVINO calls (text_embeddings, language_model, lm_head) on one-token
tensors, each output handed to the next call as a shared view (no copies of the vocabulary).
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from .errors import InvalidInputError
from .model_info import ModelInfo
from .runtime import Context
from .sampling import TokenSampler


def prompt_embeddings(ctx: Context, info: ModelInfo, input_ids: np.ndarray,
                      pixel_values: np.ndarray | None) -> np.ndarray:
    """inputs_embeds f32 [1,T,H] for the prompt, images in place of their placeholder tokens."""
    embeds = ctx.embed_text(input_ids[None, :])
    slots = np.flatnonzero(input_ids == info.image_id)
    n_images = 0 if pixel_values is None else len(pixel_values)
    if len(slots) != n_images * info.num_image_tokens:
        raise InvalidInputError(f"The prompt has {len(slots)} image tokens but {n_images} image(s) were given "
                                f"({info.num_image_tokens} tokens each).")
    if n_images == 0:
        return embeds
    image_embeds = ctx.vision(pixel_values)  # [N,576,H]
    embeds = np.array(embeds)  # own copy: the scatter must not write into OpenVINO's output tensor
    embeds[0, slots] = image_embeds.reshape(-1, image_embeds.shape[-1])
    return embeds


def generate_tokens(ctx: Context, info: ModelInfo, input_ids: np.ndarray, pixel_values: np.ndarray | None,
                    sampler: TokenSampler, max_new_tokens: int, stop_ids=None, stop_event=None,
                    stats: dict | None = None) -> Iterator[int]:
    """Yield new token ids (stop tokens are not yielded). `ctx` must stay borrowed while iterating."""
    stop_ids = frozenset((info.eos_id,) if stop_ids is None else stop_ids)
    stats = {} if stats is None else stats
    t0 = time.perf_counter()
    n_prompt = len(input_ids)
    token = np.zeros((1, 1), np.int64)  # the step's input, reused

    ctx.start([n_prompt + max_new_tokens])
    embeds = prompt_embeddings(ctx, info, np.asarray(input_ids, np.int64), pixel_values)
    hidden = ctx.language_model(embeds[0], [n_prompt])  # [1,H]: the last position only
    logits = ctx.lm_head(hidden[None])  # [1,1,V], not [1,T,V]
    next_id = sampler(logits[0, 0])
    stats.update(prompt_tokens=n_prompt, time_to_first_token_s=time.perf_counter() - t0, new_tokens=0)
    t1 = time.perf_counter()

    for n in range(1, max_new_tokens + 1):
        if next_id in stop_ids:
            break
        stats["new_tokens"] = n
        yield next_id
        if n == max_new_tokens or (stop_event is not None and stop_event.is_set()):
            break
        token[0, 0] = next_id
        hidden = ctx.language_model(ctx.embed_text(token)[0])
        next_id = sampler(ctx.lm_head(hidden[None])[0, 0])
    decode_s = time.perf_counter() - t1
    steps = max(stats["new_tokens"] - 1, 0)  # the first token came from the prefill
    stats.update(decode_s=decode_s, decode_tokens_per_s=steps / decode_s if decode_s > 0 and steps else 0.0,
                 total_s=time.perf_counter() - t0)
