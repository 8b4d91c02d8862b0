"""The OpenVINO side of the benchmark: one task per fresh process (run by benchmarks.run).

convert     ensure_converted() into an empty cache: conversion wall time (+ the IR's bytes)
warm_start  from_pretrained() on the now-cached model: seconds from process start to ready
chat        TTFT and decode rate over NEW_TOKENS tokens, one image + the ~629-token prompt
image       text to image, `num_images` in one batch, all 576 steps + VQ decode
vq_decode   the VQ decoder part alone on random codes

Each task uses the public JanusPipeline API and the stats its results carry (timings the pipeline takes
itself), and cross-checks them with wall-clock timing around the call.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .workload import FOLLOW_UP, IMAGE_PROMPT, NEW_TOKENS, make_image, make_question


def ir_bytes(ir_dir) -> dict:
    """Bytes of each IR part's weights (.bin), and what one text token / image step must read."""
    sizes = {p.stem: p.stat().st_size for p in Path(ir_dir).glob("*.bin")}
    lm = sizes.get("language_model", 0)
    return {"parts": sizes, "text_token": lm + sizes.get("lm_head", 0), "image_step": lm + sizes.get("gen_head", 0)}


def convert(model_dir, weights: str, cache_dir) -> dict:
    from janus_ov.cache import ensure_converted

    before = set(p.name for p in Path(cache_dir).iterdir()) if Path(cache_dir).is_dir() else set()
    t0 = time.perf_counter()
    ir_dir = ensure_converted(str(model_dir), weights=weights, cache_dir=str(cache_dir), progress=None)
    return {"convert_s": time.perf_counter() - t0, "ir_dir": str(ir_dir), "bytes": ir_bytes(ir_dir),
            "cached": Path(ir_dir).name in before}  # True: nothing was converted, only the cache checked


def warm_start(model_dir, weights: str, cache_dir, process_start: float) -> dict:
    """Everything a launch does, imports included, measured from the process's own start."""
    t0 = time.perf_counter()
    from janus_ov import JanusPipeline

    pipe = JanusPipeline.from_pretrained(str(model_dir), weights=weights, cache_dir=str(cache_dir), progress=None)
    ready = time.time()
    pipe.runtime.wait_warm()  # the background warm-up: first request as fast as later ones from here
    return {"ready_s": ready - process_start, "from_pretrained_s": time.perf_counter() - t0,
            "warm_s": time.time() - process_start, "ir_dir": str(pipe.model_dir)}


def _pipeline(model_dir, weights, cache_dir):
    from janus_ov import JanusPipeline

    return JanusPipeline.from_pretrained(str(model_dir), weights=weights, cache_dir=str(cache_dir), progress=None)


def chat(model_dir, weights: str, cache_dir, runs: int = 3, new_tokens: int = NEW_TOKENS, warmup: bool = True) -> dict:
    """Each run is a new conversation (another picture, so only the system prompt can come from
    the cache, as for a new user of a running server), then one follow-up question in it (which
    goes on from the cached conversation)."""
    pipe = _pipeline(model_dir, weights, cache_dir)
    question = make_question(model_dir)
    out = {"runs": [], "follow_up_runs": []}
    if warmup:  # the first request after launch also pays one-off costs; reported, not in the medians
        out["first_request"] = _chat_once(pipe, [{"role": "user", "content": question, "images": [make_image(-1)]}], 8)
        out["first_request"].pop("text")
    for run in range(runs):
        messages = [{"role": "user", "content": question, "images": [make_image(run)]}]
        out["runs"].append(_chat_once(pipe, messages, new_tokens))
        messages += [{"role": "assistant", "content": out["runs"][-1].pop("text")}, {"role": "user", "content": FOLLOW_UP}]
        out["follow_up_runs"].append(_chat_once(pipe, messages, new_tokens))
        out["follow_up_runs"][-1].pop("text")
    for key in ("ttft_s", "decode_tok_s", "new_tokens", "prompt_tokens", "cached_tokens"):
        out[f"{key}_median"] = statistics.median(r[key] for r in out["runs"])
        out[f"follow_up_{key}_median"] = statistics.median(r[key] for r in out["follow_up_runs"])
    # JanusPipeline has no "ignore EOS" switch: random weights practically never emit it, and
    # if one does the rate is computed over the tokens actually made (flagged here).
    out["forced_length_ok"] = all(r["new_tokens"] == new_tokens for r in out["runs"])
    out["bytes"] = ir_bytes(pipe.model_dir)
    return out


def _chat_once(pipe, messages, new_tokens) -> dict:
    t0 = time.perf_counter()
    first = None
    pieces = []
    stream = pipe.chat_stream(messages, max_new_tokens=new_tokens, temperature=0.0)
    for piece in stream:
        if first is None:
            first = time.perf_counter()
        pieces.append(piece)
    end = time.perf_counter()
    s = stream.stats
    return {"ttft_s": s["time_to_first_token_s"], "ttft_wall_s": first - t0, "decode_tok_s": s["decode_tokens_per_s"],
            "new_tokens": s["new_tokens"], "prompt_tokens": s["prompt_tokens"], "cached_tokens": s["cached_tokens"],
            "pieces": len(pieces), "total_wall_s": end - t0, "text": "".join(pieces)}


def image(model_dir, weights: str, cache_dir, runs: int = 3, num_images: int = 1) -> dict:
    pipe = _pipeline(model_dir, weights, cache_dir)
    out = {"num_images": num_images, "runs": []}
    for r in range(runs):
        t0 = time.perf_counter()
        images = pipe.generate_images(IMAGE_PROMPT, num_images=num_images, seed=r, callback=None)
        wall = time.perf_counter() - t0
        assert len(images) == num_images and images[0].size == (384, 384)
        s = images.stats
        out["runs"].append({"image_s": wall, "prefill_s": s["prefill_s"], "steps_per_s": s["steps_per_s"],
                            "steps_s": s["steps_s"], "vq_decode_s": s["vq_decode_s"]})
    for key in ("image_s", "steps_per_s", "vq_decode_s", "prefill_s"):
        out[f"{key}_median"] = statistics.median(r[key] for r in out["runs"])
    if num_images == 1:  # as the app makes it: with its previews of the forming image
        out["app_runs"] = [_image_with_previews(pipe, seed) for seed in range(runs)]
        out["app_image_s_median"] = statistics.median(r["image_s"] for r in out["app_runs"])
    out["bytes"] = ir_bytes(pipe.model_dir)
    return out


def _image_with_previews(pipe, seed: int) -> dict:
    previews = []
    t0 = time.perf_counter()
    pipe.generate_images(IMAGE_PROMPT, seed=seed, callback=lambda step, total, preview: previews.append(preview))
    return {"image_s": time.perf_counter() - t0, "previews": sum(p is not None for p in previews)}


def vq_decode(ir_dir, runs: int = 3, num_images: int = 1) -> dict:
    """The VQ decoder IR alone (compiled like the runtime does), on random codes."""
    import numpy as np

    from janus_ov.model_info import ModelInfo
    from janus_ov.runtime import compile_config, core

    info = ModelInfo.load(ir_dir)
    compiled = core().compile_model(str(Path(ir_dir) / "vq_decoder.xml"), "CPU", compile_config("CPU", None, None))
    request = compiled.create_infer_request()
    ids = np.random.default_rng(0).integers(0, info.codebook_size, (num_images, info.num_image_tokens), dtype=np.int64)
    times = []
    for _ in range(runs + 1):  # +1: the first call also allocates its buffers
        t0 = time.perf_counter()
        request.infer({"image_ids": ids})
        times.append(time.perf_counter() - t0)
    return {"num_images": num_images, "first_s": times[0], "vq_decode_s": times[1:],
            "vq_decode_s_median": statistics.median(times[1:])}


def profile(model_dir, weights: str, cache_dir, new_tokens: int = NEW_TOKENS, tasks=("chat", "image")) -> dict:
    """Where the time goes: seconds per IR part for one chat reply and one image.

    Wraps the runtime's infer calls with a timer (not part of the measured runs above);
    "other" is everything between OpenVINO calls (sampling, tokenizer, Python). Per part:
    median ms per call, and the weight bytes it streams per second at that median (compare
    with the machine's bandwidth: a memory-bound part should come close).
    """
    from collections import defaultdict

    from janus_ov import runtime

    acc = defaultdict(list)  # part -> seconds of each call

    def timed(fn):
        def wrapper(self, part, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(self, part, *args, **kwargs)
            finally:
                acc[part].append(time.perf_counter() - t0)
        return wrapper

    runtime.Context._run = timed(runtime.Context._run)
    runtime.Runtime.run_shared = timed(runtime.Runtime.run_shared)
    pipe = _pipeline(model_dir, weights, cache_dir)
    sizes = ir_bytes(pipe.model_dir)["parts"]
    question = make_question(model_dir)
    pipe.chat([{"role": "user", "content": question, "images": [make_image(-1)]}], max_new_tokens=8)  # warm-up
    messages = [{"role": "user", "content": question, "images": [make_image()]}]  # a new conversation
    out = {}
    for task in tasks:
        acc.clear()
        t0 = time.perf_counter()
        if task == "chat":
            stats = pipe.chat(messages, max_new_tokens=new_tokens).stats
        else:
            stats = pipe.generate_images(IMAGE_PROMPT, num_images=1, seed=0).stats
        total = time.perf_counter() - t0
        parts = {}
        for part, times in acc.items():
            median = statistics.median(times)  # per step; the prefill call is the outlier
            parts[part] = {"s": sum(times), "calls": len(times), "ms_per_call": 1000 * median,
                           "weights_gb_per_s": sizes.get(part, 0) / median / 1e9}
        out[task] = {"total_s": total, "parts": parts, "other_s": total - sum(sum(t) for t in acc.values()),
                     "stats": stats}
    return out


TASKS = {"convert": convert, "warm_start": warm_start, "chat": chat, "image": image, "vq_decode": vq_decode,
         "profile": profile}


def run_task(task: str, **kwargs) -> dict:
    return TASKS[task](**kwargs)
