"""The solo path (batching=False) with several requests at once: each borrows its own context, so
same seeds give the same results as running the requests one after another (through the
scheduler, the default path), whether the pool lets them all run or queues them. The scheduler's
own concurrency tests are in test_scheduler.py."""

import threading
import time

import numpy as np
import pytest
from conftest import F32
from PIL import Image

from janus_ov.pipeline import JanusPipeline

IMAGE = Image.fromarray(np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8))

CHAT_WITH_IMAGE = [{"role": "user", "content": "Describe the image.", "images": [IMAGE]}]
JOBS = {
    "chat_greedy": lambda p: p.chat(CHAT_WITH_IMAGE, max_new_tokens=24),
    "chat_sampled": lambda p: p.chat([{"role": "user", "content": "Tell me about cats."},
                                      {"role": "assistant", "content": "Cats are small."},
                                      {"role": "user", "content": "And dogs?"}],
                                     max_new_tokens=24, temperature=1.0, top_p=0.9, seed=5),
    "image_one": lambda p: p.generate_images("a red fox in the snow", seed=1),
    "image_two_negative": lambda p: p.generate_images("a mountain lake", negative_prompt="blurry, dark",
                                                      num_images=2, cfg_weight=4.0, seed=2),
}


def _same(a, b):
    if isinstance(a, str):
        return a == b
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def sequential(tiny_ir_fp32, tmp_path_factory):
    pipe = JanusPipeline(tiny_ir_fp32, ov_config=F32, compile_cache_dir=tmp_path_factory.mktemp("compiled"))
    return {name: job(pipe) for name, job in JOBS.items()}


def run_together(pipe):
    """All jobs in their own threads, released at once; returns (results, {name: (start, end)})."""
    results, spans, errors = {}, {}, []
    barrier = threading.Barrier(len(JOBS))

    def worker(name, job):
        try:
            barrier.wait()
            start = time.perf_counter()
            results[name] = job(pipe)
            spans[name] = (start, time.perf_counter())
        except BaseException as e:  # surfaced below, with the job's name
            errors.append((name, e))

    threads = [threading.Thread(target=worker, args=item) for item in JOBS.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not errors, errors
    return results, spans


def test_four_threads_match_sequential_runs(tiny_ir_fp32, sequential, tmp_path):
    pipe = JanusPipeline(tiny_ir_fp32, ov_config=F32, compile_cache_dir=tmp_path, max_concurrency=4,
                         batching=False)
    results, spans = run_together(pipe)
    for name in JOBS:
        assert _same(results[name], sequential[name]), name
    # The two image requests really ran at the same time (each with its own KV state).
    (s1, e1), (s2, e2) = spans["image_one"], spans["image_two_negative"]
    assert max(s1, s2) < min(e1, e2)
    assert pipe.runtime._created == 4


def test_more_threads_than_contexts_queue_and_still_match(tiny_ir_fp32, sequential, tmp_path):
    pipe = JanusPipeline(tiny_ir_fp32, ov_config=F32, compile_cache_dir=tmp_path, max_concurrency=2,
                         batching=False)
    results, _ = run_together(pipe)
    for name in JOBS:
        assert _same(results[name], sequential[name]), name
    assert pipe.runtime._created == 2  # the pool is bounded


def test_pipelines_built_at_once_in_threads_both_serve(tiny_ir_lm_int4):
    """Two pipelines loaded at the same moment (a library user's threads): where our own operations are
    wanted each language model's graph reads them from IRs of their own, which must not run while the
    other runtime reads and compiles its parts. Both load and answer as one loaded alone does."""
    from janus_ov import matmul

    first = JanusPipeline(tiny_ir_lm_int4)
    alone = first.chat(CHAT_WITH_IMAGE, max_new_tokens=16)
    first.close()
    pipes, errors = [], []
    barrier = threading.Barrier(2)

    def load():
        try:
            barrier.wait()
            pipes.append(JanusPipeline(tiny_ir_lm_int4))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(pipes) == 2
    if matmul.wanted("CPU", {"INFERENCE_PRECISION_HINT": "f32"}):  # the case the lock is for
        ops = {op.get_type_name() for op in pipes[0].runtime._paged["language_model"][0].get_ops()}
        assert {matmul.OP_TYPE, "JanusPagedAttention"} <= ops
    for pipe in pipes:
        assert pipe.chat(CHAT_WITH_IMAGE, max_new_tokens=16) == alone
        pipe.close()
