"""JanusPipeline: one object, one call per task (multimodal chat, text to image).

    pipe = JanusPipeline.from_pretrained("deepseek-ai/Janus-Pro-1B")      # converts once, then cached
    for piece in pipe.chat_stream([{"role": "user", "content": "What is this?", "images": ["cat.png"]}]):
        print(piece, end="", flush=True)
    result = pipe.generate_images("a red fox in the snow", num_images=2, seed=1)  # .images, .stats

Requests are validated before they take a slot of the pool, so bad input fails fast with an
InvalidInputError (a ValueError) and leaves the pipeline as it was. Imports: numpy, PIL,
openvino, tokenizers -- never torch or transformers (unless from_pretrained has to convert).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import chat as chat_loop
from . import text_to_image as t2i
from .errors import InvalidInputError
from .images import PixelCache, to_pil
from .prefix_cache import KeyedPrompt
from .prompts import check_prompt_style, fit_conversation, image_prompt, render
from .results import ChatResult, ChatStream, ImageProgress, ImageResult
from .runtime import Runtime
from .sampling import ImageSampler, TokenSampler, check_int, check_number, check_seed
from .scheduler import POOL_TOKENS, PREFILL_CHUNK, Scheduler
from .tokenizer import JanusTokenizer

MAX_IMAGES = 8  # per text-to-image request: 2 KV rows per image, memory grows with it
MAX_TEMPERATURE = 5.0
MAX_CFG = 20.0


class JanusPipeline:
    def __init__(self, model_dir: str | Path, device: str = "CPU", ov_config: dict | None = None,
                 max_concurrency: int = 2, compile_cache_dir: str | Path | None = None, weights: str | None = None,
                 prompt_style: str | None = None, batching: bool = True, kv_cache_tokens: int = POOL_TOKENS,
                 prefill_chunk: int = PREFILL_CHUNK):
        """batching: every request's steps go through one scheduler (scheduler.py) that batches them
        into shared language-model calls, with a KV-cache pool of `kv_cache_tokens` tokens and at most
        `prefill_chunk` prompt tokens per step. False: each request runs alone on a context of the
        runtime's pool of `max_concurrency` (the way before the scheduler; kept as the benchmarks'
        baseline)."""
        self.model_dir = Path(model_dir)
        self.tokenizer = JanusTokenizer.from_dir(self.model_dir)
        if prompt_style is not None:  # the checkpoint's files decided at conversion; this overrides them
            self.tokenizer.info = dataclasses.replace(self.tokenizer.info, prompt_style=check_prompt_style(prompt_style))
        self.info = self.tokenizer.info
        self.device = device
        manifest = _manifest(self.model_dir)
        self.weights = weights or str(manifest.get("weights", "unknown"))
        self.source = _model_name(str(manifest.get("source", self.model_dir)))  # what it was converted from
        if self.weights == "fp32":  # asked for full precision: no bf16 arithmetic on CPUs that have it
            ov_config = {"INFERENCE_PRECISION_HINT": "f32", **(ov_config or {})}
        # Checked before compiling: a bad setting is refused before any work (and any OpenVINO thread).
        self._scheduler_args = (check_int("kv_cache_tokens", kv_cache_tokens, self.info.num_image_tokens * 4, 1 << 22),
                                check_int("prefill_chunk", prefill_chunk, 1, 1 << 16))
        self.runtime = Runtime(self.model_dir, device, ov_config, compile_cache_dir, max_concurrency)
        self._pixels = PixelCache(self.info)  # a conversation's images are decoded once, not every turn
        self.batching = batching
        self._scheduler, self._scheduler_lock = None, threading.Lock()

    @property
    def scheduler(self) -> Scheduler:
        """The one scheduler of this pipeline, started at first use (after the runtime's warm-up)."""
        with self._scheduler_lock:
            if self._scheduler is None:
                tokens, chunk = self._scheduler_args
                self._scheduler = Scheduler(self.runtime, pool_tokens=tokens, prefill_chunk=chunk)
            return self._scheduler

    @classmethod
    def from_pretrained(cls, model: str, weights: str = "int4", device: str = "CPU", cache_dir=None,
                        ov_config: dict | None = None, progress=print, max_concurrency: int = 2,
                        prompt_style: str | None = None, **serving) -> "JanusPipeline":
        """A Hub id (optionally id@revision), a local checkpoint or an exported directory. Converts on first
        use into the cache (`cache_dir`, default ~/.cache/janus_ov); compiled blobs go to `<cache>/compiled`.
        `prompt_style` ("pro" | "legacy") overrides the chat template the checkpoint's files chose;
        `serving`: batching, kv_cache_tokens, prefill_chunk (see __init__)."""
        from .cache import default_cache_dir, ensure_converted

        if prompt_style is not None:
            check_prompt_style(prompt_style)  # before minutes of conversion
        path = ensure_converted(model, weights=weights, cache_dir=cache_dir, progress=progress)
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        return cls(path, device, ov_config, max_concurrency, compile_cache_dir=root / "compiled", weights=weights,
                   prompt_style=prompt_style, **serving)

    @classmethod
    def from_converted(cls, ir_dir: str | Path, device: str = "CPU", ov_config: dict | None = None,
                       max_concurrency: int = 2, prompt_style: str | None = None, **serving) -> "JanusPipeline":
        """A directory that already holds the IR parts (from the cache or `python -m janus_ov export`)."""
        from .cache import default_cache_dir

        return cls(ir_dir, device, ov_config, max_concurrency, compile_cache_dir=default_cache_dir() / "compiled",
                   prompt_style=prompt_style, **serving)

    def close(self) -> None:
        """Let the scheduler's thread end (after the requests under way); the pipeline serves no more."""
        with self._scheduler_lock:
            if self._scheduler is not None:
                self._scheduler.close()

    # ------------------------------------------------------------------------------------------ chat

    def chat_stream(self, messages, max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0,
                    seed: int | None = None, stop_event=None, system_prompt: str | None = None) -> ChatStream:
        """Answer the last user turn: a ChatStream of text pieces (never a split UTF-8 character)
        whose `.stats` are this request's own once it is exhausted.

        messages: [{"role": "user"|"assistant", "content": str, "images": [path|bytes|PIL|array, ...]}, ...]
        Context policy: when prompt + max_new_tokens exceeds the context window the oldest whole
        exchanges are dropped; if the last user turn alone does not fit, InvalidInputError.
        `system_prompt` replaces the checkpoint's own ("" for none).
        Input is checked here, at call time; generation runs as the stream is consumed.
        """
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1, int(self.info.max_position_embeddings))
        sampler = TokenSampler(self.info.vocab_size, check_number("temperature", temperature, 0.0, MAX_TEMPERATURE),
                               check_number("top_p", top_p, 0.0, 1.0, low_open=True), check_seed(seed))
        t0 = time.perf_counter()
        input_ids, pixel_values = self._chat_inputs(messages, max_new_tokens, system_prompt)
        stats = {"task": "chat", "seed": sampler.seed, "images": 0 if pixel_values is None else len(pixel_values),
                 "preprocess_s": time.perf_counter() - t0}
        prompt = KeyedPrompt.of(self.info, input_ids, pixel_values)  # what the prefix caches are matched on
        return ChatStream(self._chat_pieces(prompt, pixel_values, sampler, max_new_tokens, stop_event, stats), stats)

    def chat(self, messages, max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, stop_event=None, system_prompt: str | None = None) -> ChatResult:
        """The whole answer at once, a str with `.stats` (same arguments as chat_stream)."""
        return self.chat_stream(messages, max_new_tokens, temperature, top_p, seed, stop_event, system_prompt).result()

    def prepare_images(self, sources) -> None:
        """Check images now and keep their pixels for the chat turns that use them (an app checks
        uploads as they arrive; the turn then does not decode them again). InvalidInputError if one
        is not a usable image."""
        for src in sources:
            self._pixels.get(src)

    def _chat_inputs(self, messages, max_new_tokens: int, system: str | None = None):
        """(input_ids i64 [T], pixel_values f32 [N,3,S,S] or None) of a conversation, after the context policy."""
        messages = fit_conversation(messages, self.info, self.tokenizer, max_new_tokens, system)  # the one validation
        sources = [src for m in messages for src in m["images"]]
        pixel_values = self._pixels.get_many(sources) if sources else None
        input_ids = self.tokenizer.encode_chat(render(messages, self.info, system), num_images=len(sources))
        return input_ids, pixel_values

    def _chat_pieces(self, prompt, pixel_values, sampler, max_new_tokens, stop_event, stats) -> Iterator[str]:
        decoder = self.tokenizer.stream_decoder()
        with self._chat_tokens(prompt, pixel_values, sampler, max_new_tokens, stop_event, stats) as tokens:
            for token in tokens:
                piece = decoder.push(token)
                if piece:
                    yield piece
        tail = decoder.flush()
        if tail:
            yield tail
        # Time to first token as a user sees it: image loading/preprocessing included.
        stats["time_to_first_token_s"] += stats["preprocess_s"]

    @contextmanager
    def _chat_tokens(self, prompt, pixel_values, sampler, max_new_tokens, stop_event, stats):
        if self.batching:
            tokens = chat_loop.scheduled_tokens(self.scheduler, self.info, prompt, pixel_values, sampler,
                                                max_new_tokens, stop_event, stats)
            try:
                yield tokens
            finally:
                tokens.close()  # frees the request's rows at the scheduler's next step
            return
        with self.runtime.context(prefer=lambda ctx: ctx.prefix.reusable(prompt)) as ctx:
            yield chat_loop.generate_tokens(ctx, self.info, prompt, pixel_values, sampler, max_new_tokens,
                                            stop_event=stop_event, stats=stats)

    # ------------------------------------------------------------------------------------------ image

    def generate_images_stream(self, prompt: str, negative_prompt: str | None = None, num_images: int = 1,
                               cfg_weight: float = 5.0, temperature: float = 1.0, seed: int | None = None,
                               stop_event=None, preview_every: int = t2i.PREVIEW_EVERY
                               ) -> Iterator[ImageProgress | ImageResult]:
        """Text to image, as it happens: an ImageProgress after each of the 576 steps (a preview of
        image 0 every `preview_every` steps; 0: never), one per image as the VQ decoder finishes it
        (stage "decoding"), then the ImageResult. Input is checked here, at call time; closing the
        iterator (or setting `stop_event`) stops the work at the next step."""
        info = self.info
        num_images = check_int("num_images", num_images, 1, MAX_IMAGES)
        cfg_weight = check_number("cfg_weight", cfg_weight, 1.0, MAX_CFG)
        sampler = ImageSampler(num_images, info.codebook_size,
                               check_number("temperature", temperature, 0.0, MAX_TEMPERATURE), check_seed(seed))
        preview_every = check_int("preview_every", preview_every, 0, info.num_image_tokens)
        cond_ids, uncond_ids = self._image_inputs(prompt, negative_prompt)
        params = {"prompt": prompt, "negative_prompt": negative_prompt or "", "seed": sampler.seed,
                  "cfg_weight": cfg_weight, "temperature": sampler.temperature, "model": self.source}
        return self._image_events(cond_ids, uncond_ids, num_images, cfg_weight, sampler, stop_event, preview_every,
                                  params)

    def generate_images(self, prompt: str, negative_prompt: str | None = None, num_images: int = 1,
                        cfg_weight: float = 5.0, temperature: float = 1.0, seed: int | None = None,
                        callback=None, stop_event=None, preview_every: int = t2i.PREVIEW_EVERY) -> ImageResult:
        """Text to image: `num_images` 384x384 PIL images generated together in one batch, as an
        ImageResult (images, stats, cancelled; iterating it gives the images).

        callback(step, total, preview) is called after each of the 576 steps (the ImageProgress of
        generate_images_stream); without a callback no previews are decoded.
        """
        if callback is not None and not callable(callback):
            raise InvalidInputError(f"callback must be callable, got {type(callback).__name__}.")
        events = self.generate_images_stream(prompt, negative_prompt, num_images, cfg_weight, temperature, seed,
                                             stop_event, preview_every if callback is not None else 0)
        for event in events:
            if isinstance(event, ImageResult):
                return event
            if callback is not None and event.stage == "tokens":
                callback(event.step, event.total, event.preview)
        raise RuntimeError("the image stream ended without a result")  # cannot happen: _image_events ends with one

    def _image_events(self, cond_ids, uncond_ids, num_images, cfg_weight, sampler, stop_event, preview_every, params):
        info = self.info
        stats = {"task": "image", "seed": sampler.seed, "num_images": num_images}
        t0 = time.perf_counter()
        with self._image_context() as ctx:
            if self.batching:
                tokens = yield from t2i.scheduled_image_tokens(self.scheduler, info, cond_ids, uncond_ids, num_images,
                                                               cfg_weight, sampler, stats, stop_event, preview_every)
            else:
                tokens = yield from t2i.generate_image_tokens(ctx, info, cond_ids, uncond_ids, num_images, cfg_weight,
                                                              sampler, stats, stop_event, preview_every)
            if tokens is None:
                yield ImageResult([], stats, cancelled=True, params=params)
                return
            t1, images = time.perf_counter(), []
            for i in range(num_images):
                if stop_event is not None and stop_event.is_set():
                    stats["cancelled"] = True
                    yield ImageResult([], stats, cancelled=True, params=params)
                    return
                images += to_pil(t2i.decode_images(ctx, tokens[i:i + 1]), info)
                yield ImageProgress(i + 1, num_images, stage="decoding")
            stats["vq_decode_s"] = time.perf_counter() - t1
        stats["total_s"] = time.perf_counter() - t0
        yield ImageResult(images, stats, params=params)

    @contextmanager
    def _image_context(self):
        """Without batching a context of the runtime's pool; with it the runtime (the VQ decoder is shared)."""
        if self.batching:
            yield self.runtime
        else:
            with self.runtime.context() as ctx:
                yield ctx

    def _image_inputs(self, prompt: str, negative_prompt: str | None):
        """(conditional ids, unconditional ids), both i64 and ending in <begin_of_image>."""
        info = self.info
        cond_ids = self._image_prompt_ids(prompt, "prompt")
        if negative_prompt is None or (isinstance(negative_prompt, str) and not negative_prompt.strip()):
            uncond_ids = t2i.unconditional_ids(cond_ids, info)
        else:
            uncond_ids = self._image_prompt_ids(negative_prompt, "negative prompt")
        return cond_ids, uncond_ids

    def _image_prompt_ids(self, text: str, name: str):
        return self.tokenizer.encode_image_prompt(image_prompt(text, self.info, name), name)


def _model_name(source: str) -> str:
    """A Hub id as it is; a local checkpoint by its folder's name (its path is nobody else's business)."""
    return source if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists() else Path(source).name


def _manifest(model_dir: Path) -> dict:
    """The conversion's manifest ({} for a directory without a readable one)."""
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}
