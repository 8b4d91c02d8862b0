"""The serving core (scheduler.py): every active request's next step in one batched call.

On the tiny random model: many threads mixing chats (follow-ups that reuse the kept prefix
among them) and image batches get exactly what each request gets alone on the solo path; a
cancelled request frees its blocks (counted); a newcomer starts within one step plus its prefill
chunks; a full pool or queue gives its clear error and nothing else breaks.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from janus_ov.errors import InvalidInputError, ServerBusyError
from janus_ov.pipeline import JanusPipeline

ASSETS = __import__("pathlib").Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def solo(tiny_ir_fp32, tmp_path_factory):
    """The way before the scheduler: each request alone on a context of its own."""
    from conftest import F32

    return JanusPipeline(tiny_ir_fp32, ov_config=F32, compile_cache_dir=tmp_path_factory.mktemp("c"), batching=False)


def batched(tiny_ir_fp32, tmp_path, **kw):
    from conftest import F32

    return JanusPipeline(tiny_ir_fp32, ov_config=F32, compile_cache_dir=tmp_path / "c", **kw)


def user(text, images=()):
    return {"role": "user", "content": text, "images": list(images)}


def wait_idle(sched, timeout=30.0):
    """The scheduler retires requests at its next step: wait for it."""
    end = time.monotonic() + timeout
    while sched.stats()["active"] or sched.stats()["waiting"]:
        assert time.monotonic() < end, sched.stats()
        time.sleep(0.01)
    return sched.stats()


def kept_blocks(sched) -> int:
    return len({b for _, blocks in sched.prefixes.values() for b in blocks})


REQUESTS = [  # (kind, arguments): a mix of chats and image batches of different shapes
    ("chat", dict(messages=[user("Describe the shapes.", [ASSETS / "shapes.png"])], max_new_tokens=24)),
    ("chat", dict(messages=[user("Tell me about lighthouses " * 12)], max_new_tokens=40)),
    ("chat", dict(messages=[user("Hello there")], max_new_tokens=16, temperature=0.8, top_p=0.9, seed=7)),
    ("image", dict(prompt="a red fox in the snow", num_images=2, seed=3)),
    ("image", dict(prompt="a lighthouse at dusk", negative_prompt="blurry, dark", num_images=1, seed=5)),
    ("image", dict(prompt="isometric pixel art of an island", num_images=3, seed=11, cfg_weight=3.0)),
]


def run(pipe, kind, kw):
    if kind == "chat":
        return str(pipe.chat(**kw))
    return [np.asarray(im) for im in pipe.generate_images(**kw)]


def test_concurrent_mix_equals_each_request_alone(solo, tiny_ir_fp32, tmp_path):
    pipe = batched(tiny_ir_fp32, tmp_path, prefill_chunk=64)  # long prompts take several steps
    alone = [run(solo, kind, kw) for kind, kw in REQUESTS]
    # A follow-up of the first chat, sent with the others: it reuses that turn's kept blocks.
    first = [user("Describe the shapes.", [ASSETS / "shapes.png"])]
    follow = first + [{"role": "assistant", "content": alone[0], "images": []}, user("And their colours?")]
    follow_alone = str(solo.chat(follow, max_new_tokens=24))
    assert str(pipe.chat(first, max_new_tokens=24)) == alone[0]  # its prefix is now kept

    got, errors = [None] * (len(REQUESTS) + 1), []
    start = threading.Barrier(len(got))

    def worker(i):
        try:
            start.wait()
            if i == len(REQUESTS):
                result = pipe.chat(follow, max_new_tokens=24)
                got[i] = (str(result), result.stats["cached_tokens"])
            else:
                got[i] = run(pipe, *REQUESTS[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(got))]
    steps = pipe.scheduler.stats()["steps"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for (kind, _), want, have in zip(REQUESTS, alone, got):
        if kind == "chat":
            assert have == want  # greedy and sampled tokens alike: the same draws, the same tokens
        else:
            assert len(have) == len(want) and all(np.array_equal(a, b) for a, b in zip(have, want))
    text, cached = got[-1]
    assert text == follow_alone and cached > 0
    # Batched: far fewer language-model calls than the requests made alone (576 steps per image batch).
    assert pipe.scheduler.stats()["steps"] - steps < 576 * 1.2
    stats = wait_idle(pipe.scheduler)
    assert stats["blocks_in_use"] == kept_blocks(pipe.scheduler)  # only the kept chat prefixes hold blocks


def test_a_cancelled_request_frees_its_blocks(tiny_ir_fp32, tmp_path):
    pipe = batched(tiny_ir_fp32, tmp_path)
    sched = pipe.scheduler
    stream = pipe.chat_stream([user("Tell me a long story.")], max_new_tokens=400)
    pieces = [next(stream) for _ in range(3)]
    assert all(isinstance(p, str) for p in pieces)
    during = sched.stats()["blocks_in_use"]
    assert during >= -(-(stream.stats["prompt_tokens"] + 3) // sched.pool.block_size)
    stream.close()
    stats = wait_idle(sched)
    # What the row had cached stays as the conversation's prefix; nothing else is held.
    assert stats["blocks_in_use"] == kept_blocks(sched) <= during
    assert sched.pool.reserved == 0

    before = sched.stats()["blocks_in_use"]
    events = pipe.generate_images_stream("a red fox", num_images=4, seed=1, preview_every=0)
    for event in events:
        if event.step == 10:
            break
    assert sched.stats()["blocks_in_use"] > before  # 8 rows of image tokens
    events.close()
    assert wait_idle(sched)["blocks_in_use"] == before  # an image run keeps nothing
    assert sched.pool.reserved == 0

    stop = threading.Event()
    events = pipe.generate_images_stream("a red fox", num_images=2, seed=1, preview_every=0, stop_event=stop)
    for event in events:
        if getattr(event, "step", 0) == 5:
            stop.set()  # the UI's Stop button
    assert event.cancelled and event.images == []
    assert wait_idle(sched)["blocks_in_use"] == before


def test_a_newcomer_starts_within_one_step_plus_its_prefill_chunks(tiny_ir_fp32, tmp_path):
    pipe = batched(tiny_ir_fp32, tmp_path, prefill_chunk=32)
    images = pipe.generate_images_stream("a red fox", num_images=4, seed=1, preview_every=0)
    next(images)  # the image batch is under way
    question = [user("Tell me about lighthouses " * 10)]
    stream = pipe.chat_stream(question, max_new_tokens=8)
    next(stream)
    waited = stream.stats["steps_to_first_token"]  # counted by the scheduler: no thread wake-up latency in it
    chunks = -(-stream.stats["prompt_tokens"] // 32)
    assert stream.stats["prompt_tokens"] > 64  # several chunks
    assert 1 <= waited <= 1 + chunks, (waited, chunks)  # the step under way, then its chunks (the last gives the token)
    rest = "".join(stream)
    assert rest is not None and stream.stats["new_tokens"] >= 1
    for _ in images:  # the image batch was not disturbed
        pass
    images.close()


def test_alone_a_long_prompt_is_prefilled_in_one_call(tiny_ir_fp32, tmp_path, solo):
    """Chunks are for sharing steps with decoding rows; with nobody decoding, the whole prompt (up to
    IDLE_PREFILL_CHUNK tokens) goes in one call -- and the answer is the same."""
    from janus_ov.scheduler import IDLE_PREFILL_CHUNK

    pipe = batched(tiny_ir_fp32, tmp_path, prefill_chunk=32)
    question = [user("Tell me about lighthouses " * 10)]
    stream = pipe.chat_stream(question, max_new_tokens=8)
    answer = "".join(stream)
    assert 64 < stream.stats["prompt_tokens"] <= IDLE_PREFILL_CHUNK
    assert stream.stats["steps_to_first_token"] == 1
    assert answer == str(solo.chat(question, max_new_tokens=8))


def test_prompts_run_on_the_prompt_model_in_the_scheduler_as_alone(tiny_ir_lm_int4, tmp_path, monkeypatch):
    """With a prompt model (CPUs with AMX, integer weights, the plugin's matmuls: runtime.prompt_config) the scheduler runs a
    prompt's call on it and the chat's tokens on the language model, over its one block pool, and the
    answer is the one the solo path gives with the same two models."""
    from conftest import AMX

    from janus_ov import runtime as rt

    monkeypatch.setattr(rt, "cpu_flags", lambda: AMX)
    monkeypatch.setenv("JANUS_OV_MATMUL", "plugin")  # where ours run the language model there is no prompt model
    kw = dict(compile_cache_dir=tmp_path / "c")
    pipe, alone = JanusPipeline(tiny_ir_lm_int4, **kw), JanusPipeline(tiny_ir_lm_int4, batching=False, **kw)
    question = [user("Tell me about lighthouses " * 10)]
    stream = pipe.chat_stream(question, max_new_tokens=8)
    answer = "".join(stream)
    assert stream.stats["prompt_tokens"] >= rt.PROMPT_TOKENS and stream.stats["new_tokens"] == 8
    ctx = pipe._scheduler.ctx
    assert ctx.req["prompt_model"].get_output_tensor(0).get_shape()[0] == stream.stats["prompt_tokens"]
    assert ctx.req[ctx.lm_part(1)].get_output_tensor(0).get_shape()[0] == 1  # the tokens after the first
    assert answer == str(alone.chat(question, max_new_tokens=8))
    pipe.close(), alone.close()


def test_closing_ends_the_scheduler_thread_and_refuses_new_requests(tiny_ir_fp32, tmp_path):
    """A process must not exit while the scheduler thread is inside OpenVINO (it would abort): close()
    waits for it; shutdown() (run at exit) first cancels what is under way."""
    pipe = batched(tiny_ir_fp32, tmp_path)
    images = pipe.generate_images_stream("a red fox", num_images=1, seed=1, preview_every=0)
    next(images)  # under way
    thread = pipe.scheduler._thread
    pipe.scheduler.shutdown()
    assert not thread.is_alive()
    *_, result = images  # the request under way ends as cancelled, with nothing half-made
    assert result.cancelled and result.images == []
    with pytest.raises(ServerBusyError, match="shutting down"):
        pipe.chat([user("Hello")], max_new_tokens=4)


def test_a_full_pool_or_queue_says_so_and_nothing_else_breaks(tiny_ir_fp32, tmp_path):
    pipe = batched(tiny_ir_fp32, tmp_path, kv_cache_tokens=3000)
    with pytest.raises(InvalidInputError, match="tokens of KV cache"):
        pipe.generate_images("a red fox", num_images=4, seed=1)  # 8 rows of ~600 tokens do not fit
    sched = pipe.scheduler
    sched.max_waiting = 1
    first = pipe.generate_images_stream("a red fox", num_images=1, seed=1, preview_every=0)
    next(first)  # holds two rows
    # The next one waits for blocks (it needs more than are free), the one after that is refused.
    second = pipe.generate_images_stream("a red fox", num_images=2, seed=2, preview_every=0)
    waiter = threading.Thread(target=lambda: [None for _ in second])
    waiter.start()
    end = time.monotonic() + 30
    while sched.stats()["waiting"] == 0:
        assert time.monotonic() < end
        time.sleep(0.01)
    with pytest.raises(ServerBusyError, match="busy"):
        pipe.chat([user("Hello")], max_new_tokens=4)
    for _ in first:  # finishing the first frees the blocks the second waits for
        pass
    waiter.join(timeout=120)
    assert not waiter.is_alive()
    assert str(pipe.chat([user("Hello")], max_new_tokens=4)) is not None  # served as usual again
    assert wait_idle(sched)["blocks_in_use"] == kept_blocks(sched)
