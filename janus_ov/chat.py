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
from .scheduler import Job, Row


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


class ChatJob(Job):
    """A chat turn under the scheduler (scheduler.py): one row; the prompt is prefilled in chunks,
    after the conversation's kept prefix if there is one, then one token per step."""

    def __init__(self, prompt: KeyedPrompt, image_embeds: dict, sampler: TokenSampler, max_new_tokens: int,
                 stop_ids, stop_event=None):
        super().__init__(stop_event)
        self.prompt, self.image_embeds, self.sampler = prompt, image_embeds, sampler
        self.max_new_tokens, self.stop_ids = max_new_tokens, frozenset(stop_ids)
        self.n_prompt = len(prompt.key)
        self.ids = np.zeros(self.n_prompt + max_new_tokens, np.int64)  # keyed ids of what the row holds
        self.ids[:self.n_prompt] = prompt.key
        self.cached = self.new_tokens = self.first_token_step = 0
        self.next_id = None  # sampled, to be fed at the next step

    def key(self):
        return self.ids[:max(self.n_prompt, self.rows[0].past if self.rows else 0)]

    def blocks_needed(self, pool, shared: int) -> int:
        return pool.blocks_for(self.n_prompt + self.max_new_tokens) - shared

    def start(self, pool, prefix) -> None:
        blocks = prefix[1] if prefix else []
        pool.share(blocks)
        self.rows = [Row(blocks, len(blocks) * pool.block_size)]
        self.cached = self.rows[0].past

    def prefill(self, budget: int, sched):
        row, prompt = self.rows[0], self.prompt
        if row.past >= self.n_prompt:
            return []
        a, b = row.past, min(self.n_prompt, row.past + budget)
        embeds = np.array(sched.ctx.embed_text(prompt.input_ids[None, a:b])[0])
        for i, slots in enumerate(prompt.slots):  # images in place of their placeholders
            inside = (slots >= a) & (slots < b)
            if inside.any():
                embeds[slots[inside] - a] = self.image_embeds[prompt.image_prints[i]][inside]
        return [(row, embeds)]

    def decode_ids(self):
        if self.next_id is None:
            return None
        self.ids[self.rows[0].past] = self.next_id
        return "text", self.rows, np.array([self.next_id], np.int64)

    def hidden(self, got, sched):
        (row, hidden), = got
        return hidden if row.past >= self.n_prompt else None  # a prefill chunk before the last gives nothing

    def logits(self, logits: np.ndarray) -> None:
        token, self.next_id = self.sampler(logits), None
        if token in self.stop_ids:
            self.finished = True
            return
        self.new_tokens += 1
        if self.new_tokens == 1:
            self.first_token_step = self.step_no
        self.emit(token)
        if self.new_tokens == self.max_new_tokens:
            self.finished = True
        else:
            self.next_id = token


def scheduled_tokens(sched, info: ModelInfo, prompt: KeyedPrompt, pixel_values: np.ndarray | None,
                     sampler: TokenSampler, max_new_tokens: int, stop_event=None, stats: dict | None = None
                     ) -> Iterator[int]:
    """generate_tokens through the scheduler: the same tokens, batched with everyone else's steps.
    Closing the iterator frees the request's rows at the scheduler's next step."""
    stats = {} if stats is None else stats
    t0 = time.perf_counter()
    embeds = sched.image_embeddings(prompt.image_prints, pixel_values) if prompt.image_prints else {}
    job = sched.submit(ChatJob(prompt, embeds, sampler, max_new_tokens, (info.eos_id,), stop_event))
    stats.update(prompt_tokens=len(prompt.key), cached_tokens=0, new_tokens=0, time_to_first_token_s=0.0)
    t1 = None
    try:
        for token in job:
            if t1 is None:
                t1 = time.perf_counter()
                stats.update(cached_tokens=job.cached, time_to_first_token_s=t1 - t0,
                             steps_to_first_token=job.first_token_step - job.submitted_step)
            stats["new_tokens"] += 1
            yield token
            if stop_event is not None and stop_event.is_set():  # the scheduler may have run ahead of us
                break
    finally:
        job.cancel()  # a no-op once it is over
    if t1 is None:  # ended before its first token (EOS first, or stopped)
        stats.update(cached_tokens=job.cached, time_to_first_token_s=time.perf_counter() - t0)
        t1 = time.perf_counter()
    decode_s = time.perf_counter() - t1
    steps = max(stats["new_tokens"] - 1, 0)
    stats.update(decode_s=decode_s, decode_tokens_per_s=steps / decode_s if decode_s > 0 and steps else 0.0,
                 total_s=time.perf_counter() - t0)
