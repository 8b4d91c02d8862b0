"""Text to image: classifier-free-guided sampling of 576 image tokens, then the VQ decoder.

Batch layout (as transformers' JanusForConditionalGeneration.generate): 2N rows, the N
conditional rows (the prompt) first, then the N unconditional rows. An unconditional row is
the prompt with every token but BOS and <begin_of_image> replaced by the pad token, or, with
a negative prompt, the negative prompt's tokens. Each row is its own sequence in the paged KV
cache (kv_cache.py), so when the two differ in length nothing is padded: every row ends at
<begin_of_image> and counts positions from 0, exactly what transformers' left padding with an
attention mask computes. The two prompts are prefilled once and their cache blocks copied into
the other images' rows.

Per step: three OpenVINO calls -- gen_head (hidden [2N,H] -> CFG-mixed logits [N,K], the mix
folded into the IR), gen_embeddings (the sampled ids, twice) and the language model.
"""

from __future__ import annotations

import time

import numpy as np

from .images import to_pil
from .model_info import ModelInfo
from .results import ImageProgress
from .runtime import Context
from .sampling import ImageSampler
from .scheduler import Job, Row

GRID = 24  # 576 tokens = 24 x 24 patches of 16 px
PREVIEW_EVERY = 96  # steps between previews (4 token rows); each decodes the rows made so far


def unconditional_ids(cond_ids: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The prompt with everything except BOS and <begin_of_image> replaced by pad."""
    keep = (cond_ids == info.bos_id) | (cond_ids == info.boi_id)
    return np.where(keep, cond_ids, info.pad_id).astype(np.int64)


def generate_image_tokens(ctx: Context, info: ModelInfo, cond_ids: np.ndarray, uncond_ids: np.ndarray,
                          num_images: int, cfg_weight: float, sampler: ImageSampler, stats: dict,
                          stop_event=None, preview_every: int = PREVIEW_EVERY):
    """A generator: yields an ImageProgress after each of the 576 steps and returns the image token
    ids [N,576] (its StopIteration value), or None if `stop_event` was set. Closing it stops at once."""
    n_tokens = info.num_image_tokens
    t0 = time.perf_counter()
    prompts = (cond_ids, uncond_ids)
    lengths = np.repeat([len(cond_ids), len(uncond_ids)], num_images)
    rows = len(lengths)
    # Buffers for the whole request, allocated once.
    step_ids = np.zeros((rows, 1), np.int64)
    cfg = np.array(cfg_weight, np.float32)
    tokens = np.zeros((num_images, n_tokens), np.int64)

    ctx.start(lengths + n_tokens)
    # The two prompts are prefilled once, in rows 0 and N; the other images' rows get copies of
    # their cache blocks (a third of the prefill time for 4 images).
    cond, uncond = (np.array(ctx.embed_text(ids[None])[0]) for ids in prompts)
    prefill_rows = np.where(np.arange(rows) % num_images == 0, lengths, 0)
    hidden = np.repeat(ctx.language_model(np.concatenate([cond, uncond]), prefill_rows), num_images, axis=0)
    ctx.kv.copy_row(0, np.arange(1, num_images))
    ctx.kv.copy_row(num_images, np.arange(num_images + 1, rows))
    stats.update(prompt_tokens=int(lengths.max()), prefill_s=time.perf_counter() - t0)
    t1 = time.perf_counter()
    for i in range(n_tokens):
        if stop_event is not None and stop_event.is_set():
            stats.update(cancelled=True, steps=i)
            return None
        tokens[:, i] = sampler(ctx.gen_head(hidden, cfg))
        preview = None
        if preview_every and (i + 1) % preview_every == 0 and i + 1 < n_tokens:
            preview = preview_image(ctx, info, tokens[0], i + 1)
        yield ImageProgress(i + 1, n_tokens, preview)
        if i + 1 == n_tokens:
            break
        step_ids[:num_images, 0] = tokens[:, i]
        step_ids[num_images:, 0] = tokens[:, i]
        hidden = ctx.language_model(ctx.embed_image_tokens(step_ids).reshape(rows, -1))  # [2N,H], a view
    steps_s = time.perf_counter() - t1
    stats.update(steps=n_tokens, steps_s=steps_s, steps_per_s=n_tokens / steps_s, cancelled=False)
    return tokens


def decode_images(ctx: Context, tokens: np.ndarray) -> np.ndarray:
    """VQ-decode token ids [N,576] -> f32 [N,3,384,384] in about -1..1 ([N,R*24] -> R*16 pixel rows).

    One image per call: the decoder's full-resolution activations are ~75 MB per image per
    tensor, so a batch of four would raise peak memory by gigabytes for no gain in speed
    (the decoder is compute-bound)."""
    tokens = np.ascontiguousarray(tokens, np.int64)
    return np.concatenate([ctx.vq_decode(tokens[i:i + 1]) for i in range(len(tokens))])


def preview_image(ctx: Context, info: ModelInfo, tokens: np.ndarray, done: int):
    """A PIL preview of image 0 after `done` steps, or None before its first token row is done.

    Only the whole token rows made so far are decoded (the decoder IR takes any number of rows),
    the rest of the picture is grey: a preview costs rows/24 of a full decode, so the five the
    app shows per image cost 2.5 full decodes, not 5.
    Near its lower edge the preview lacks the rows below, so it can differ there from the final
    image -- as much as a decode with made-up rows there would.
    """
    from PIL import Image

    rows = done // GRID
    if rows == 0:
        return None
    band = to_pil(decode_images(ctx, tokens[None, :rows * GRID]), info)[0]  # 384 x rows*16, as the final images
    preview = Image.new("RGB", (band.width, band.width), (128, 128, 128))
    preview.paste(band, (0, 0))
    return preview


class ImageJob(Job):
    """A text-to-image request under the scheduler (scheduler.py): the 2N rows of the batch layout
    above. The two prompts are prefilled (in chunks) in rows 0 and N; the other rows then share their
    full blocks and get a copy of the partly filled last one; then 576 steps of 2N rows."""

    def __init__(self, cond_ids: np.ndarray, uncond_ids: np.ndarray, num_images: int, cfg_weight: float,
                 sampler: ImageSampler, n_tokens: int, stop_event=None):
        super().__init__(stop_event)
        self.prompts, self.n, self.n_tokens = (cond_ids, uncond_ids), num_images, n_tokens
        self.cfg, self.sampler = np.array(cfg_weight, np.float32), sampler
        self.tokens = np.zeros((num_images, n_tokens), np.int64)  # the reader reads columns < step
        self.step = 0
        self._last = {}  # prompt index -> the hidden state of its last prompt token

    def blocks_needed(self, pool, shared: int) -> int:
        return sum(self.n * pool.blocks_for(len(ids) + self.n_tokens) - (self.n - 1) * (len(ids) // pool.block_size)
                   for ids in self.prompts)

    def start(self, pool, prefix) -> None:
        self.pool, self.rows = pool, [Row() for _ in range(2 * self.n)]

    def prefill(self, budget: int, sched):
        pieces = []
        for which, ids in enumerate(self.prompts):
            row = self.rows[which * self.n]
            if row.past < len(ids) and budget > 0:
                a, b = row.past, min(len(ids), row.past + budget)
                pieces.append((row, np.array(sched.ctx.embed_text(ids[None, a:b])[0])))
                budget -= b - a
        return pieces

    def decode_ids(self):
        if self.step == 0:
            return None
        column = self.tokens[:, self.step - 1]
        return "image", self.rows, np.concatenate([column, column])

    def hidden(self, got, sched):
        if self.step == 0:  # prefill chunks
            for row, h in got:
                which = 0 if row is self.rows[0] else 1
                if row.past == len(self.prompts[which]):
                    self._last[which] = h
            if len(self._last) < 2:
                return None
            self._fork()
            hidden = np.repeat(np.stack([self._last[0], self._last[1]]), self.n, axis=0)
        else:
            hidden = np.stack([h for _, h in got])  # the rows in order, as decode_ids gave them
        self.tokens[:, self.step] = self.sampler(sched.ctx.gen_head(hidden, self.cfg))
        self.step += 1
        self.emit(self.step)
        self.finished = self.step == self.n_tokens
        return None

    def _fork(self) -> None:
        pool = self.pool
        for which, ids in enumerate(self.prompts):
            src, full = self.rows[which * self.n], len(ids) // pool.block_size
            for row in self.rows[which * self.n + 1:(which + 1) * self.n]:
                row.blocks = src.blocks[:full]
                pool.share(row.blocks)
                if len(src.blocks) > full:  # the block all rows will write to: a copy each
                    row.blocks.append(pool.take(self))
                    pool.copy(src.blocks[full], row.blocks[-1])
                row.past = src.past


def scheduled_image_tokens(sched, info: ModelInfo, cond_ids: np.ndarray, uncond_ids: np.ndarray, num_images: int,
                           cfg_weight: float, sampler: ImageSampler, stats: dict, stop_event=None,
                           preview_every: int = PREVIEW_EVERY):
    """generate_image_tokens through the scheduler: the same generator protocol and tokens."""
    t0 = time.perf_counter()
    job = sched.submit(ImageJob(cond_ids, uncond_ids, num_images, cfg_weight, sampler, info.num_image_tokens,
                                stop_event))
    stats.update(prompt_tokens=max(len(cond_ids), len(uncond_ids)))
    t1, stopped = None, False
    try:
        for step in job:
            if t1 is None:
                t1 = time.perf_counter()
                stats["prefill_s"] = t1 - t0
            preview = None
            if preview_every and step % preview_every == 0 and step < info.num_image_tokens:
                preview = preview_image(sched.runtime, info, job.tokens[0], step)
            yield ImageProgress(step, info.num_image_tokens, preview)
            if stop_event is not None and stop_event.is_set():  # the scheduler may have run ahead of us
                stopped = True
                break
    finally:
        job.cancel()
    if stopped or job.step < info.num_image_tokens:
        stats.update(cancelled=True, steps=job.step)
        return None
    steps_s = time.perf_counter() - (t1 or t0)
    stats.update(steps=job.step, steps_s=steps_s, steps_per_s=job.step / steps_s, cancelled=False)
    return job.tokens
