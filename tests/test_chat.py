"""Multimodal chat on the OpenVINO parts vs transformers' PyTorch Janus (tiny random model, fp32 IR).

Greedy decoding must give the very same tokens as JanusForConditionalGeneration.generate; the
stream must reassemble to the final text, multi-byte characters included; serving must not
import torch or transformers.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import F32
from PIL import Image

from janus_ov.chat import generate_tokens
from janus_ov.pipeline import JanusPipeline
from janus_ov.prefix_cache import KeyedPrompt
from janus_ov.sampling import TokenSampler

REPO = Path(__file__).resolve().parents[1]


def _image(seed, size=(320, 240)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


ONE_IMAGE = [{"role": "user", "content": "Describe the image in detail.", "images": [_image(1)]}]
TWO_TURNS = [
    {"role": "user", "content": "What is in this picture?", "images": [_image(2, (400, 300))]},
    {"role": "assistant", "content": "A cat sitting on a red sofa."},
    {"role": "user", "content": "Compare the two images.", "images": [_image(3, (200, 380))]},
]


def reference_inputs(processor, messages):
    """What transformers' JanusProcessor makes of a conversation (images before text in a turn)."""
    conv = []
    for m in messages:
        content = [{"type": "image"} for _ in m.get("images", [])] + [{"type": "text", "text": m["content"]}]
        conv.append({"role": m["role"], "content": content})
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    images = [img for m in messages for img in m.get("images", [])]
    return processor(text=text, images=images or None, return_tensors="pt")


def reference_greedy(model, inputs, max_new_tokens):
    import torch

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, generation_mode="text")
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def ov_tokens(pipe, messages, max_new_tokens, sampler=None, stop_ids=None):
    input_ids, pixel_values = pipe._chat_inputs(messages, max_new_tokens)
    sampler = sampler or TokenSampler(pipe.info.vocab_size)
    with pipe.runtime.context() as ctx:
        prompt = KeyedPrompt.of(pipe.info, input_ids, pixel_values)
        return list(generate_tokens(ctx, pipe.info, prompt, pixel_values, sampler, max_new_tokens, stop_ids))


@pytest.mark.parametrize("messages", [ONE_IMAGE, TWO_TURNS], ids=["one_image", "two_turns_two_images"])
def test_greedy_tokens_identical_to_transformers(pipe, reference, messages):
    model, processor = reference
    inputs = reference_inputs(processor, messages)
    input_ids, pixel_values = pipe._chat_inputs(messages, 32)
    # Same prompt and pixels as the reference processor, so the comparison below is end to end.
    np.testing.assert_array_equal(input_ids, inputs["input_ids"][0].numpy())
    np.testing.assert_array_equal(pixel_values, inputs["pixel_values"].numpy())

    expected = reference_greedy(model, inputs, 32)
    # Both sides stop at EOS; the tiny model must actually talk for the test to mean something.
    assert len(expected) >= 20, expected
    assert ov_tokens(pipe, messages, 32) == expected
    answer = pipe.chat(messages, max_new_tokens=32)
    assert answer == processor.decode(expected, skip_special_tokens=True)
    stats = answer.stats
    assert stats["prompt_tokens"] == len(input_ids) and stats["new_tokens"] == len(expected)


def test_prefill_and_step_logits_match_transformers(pipe, reference):
    """Teacher-forced: the lm_head logits of the prefill and of 8 single-token steps match PyTorch."""
    import torch

    model, processor = reference
    inputs = reference_inputs(processor, TWO_TURNS)
    expected = reference_greedy(model, inputs, 8)
    with torch.no_grad():
        full = torch.cat([inputs["input_ids"], torch.tensor([expected])], 1)
        ref_logits = model(input_ids=full, pixel_values=inputs["pixel_values"],
                           attention_mask=torch.ones_like(full)).logits[0, -len(expected) - 1:-1].numpy()

    recorded = []

    class Recorder(TokenSampler):
        def __call__(self, logits):
            recorded.append(np.array(logits))
            return super().__call__(logits)

    assert ov_tokens(pipe, TWO_TURNS, 8, Recorder(pipe.info.vocab_size), stop_ids=()) == expected
    np.testing.assert_allclose(np.stack(recorded), ref_logits, rtol=0, atol=2e-4)


def test_sampling_is_seeded_and_streams_exactly(pipe):
    msgs = [{"role": "user", "content": "Say something."}]
    kwargs = dict(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=7)
    stream = pipe.chat_stream(msgs, **kwargs)
    pieces = list(stream)
    assert stream.stats["seed"] == 7 and stream.text == "".join(pieces)
    assert "".join(pieces) == pipe.chat(msgs, **kwargs)
    assert pipe.chat(msgs, **{**kwargs, "seed": 8}) != "".join(pieces)


def test_stream_reassembles_multibyte_answer(pipe):
    """Sample across seeds until the answer has a multi-byte character made of several tokens;
    its stream must join to exactly the full decode, and no piece may end mid-character."""
    msgs = [{"role": "user", "content": "中文的句子，图片里有一只猫。"}]
    tok = pipe.tokenizer
    for seed in range(200):
        sampler = TokenSampler(pipe.info.vocab_size, temperature=1.5, seed=seed)
        ids = ov_tokens(pipe, msgs, 24, sampler)
        text = tok.decode(ids)
        split_chars = [i for i in ids if "\ufffd" in tok.decode([i])]  # tokens holding part of a character
        if split_chars and any(len(ch.encode()) > 1 and ch != "\ufffd" for ch in text):
            break
    else:
        pytest.fail("no seed produced a multi-byte character spread over several tokens")
    pieces = list(pipe.chat_stream(msgs, max_new_tokens=24, temperature=1.5, seed=seed))
    assert "".join(pieces) == text
    assert [ch for ch in text if len(ch.encode()) > 1 and ch != "\ufffd"]
    # Every piece is final: what has been streamed so far is always a prefix of the answer, so a
    # character is never emitted half (as U+FFFD) and then corrected.
    streamed = ""
    for piece in pieces:
        streamed += piece
        assert text.startswith(streamed)


def test_stop_event_ends_the_stream_and_pipeline_stays_usable(pipe):
    stop = threading.Event()
    msgs = [{"role": "user", "content": "Tell me a long story."}]
    got = []
    stream = pipe.chat_stream(msgs, max_new_tokens=200, temperature=1.0, seed=1, stop_event=stop)
    for piece in stream:
        got.append(piece)
        stop.set()
    assert stream.stats["new_tokens"] <= 4  # stopped right away (a piece may need a few tokens)
    assert pipe.chat(msgs, max_new_tokens=5) == pipe.chat(msgs, max_new_tokens=5)


def test_follow_up_turns_prefill_only_what_is_new(tiny_ir_fp32, reference):
    """Each turn goes on from the cache of the last one (images in it are not encoded again)
    and still answers exactly what transformers answers for the whole conversation; an image
    request in between, or an edited earlier turn, falls back to a full prefill."""
    model, processor = reference
    # The solo path (each request on a context of the runtime's pool; one context: the same cache every
    # turn). The scheduler's prefix reuse is checked against this path in test_scheduler.py.
    pipe = JanusPipeline(tiny_ir_fp32, ov_config=F32, max_concurrency=1, batching=False)
    pipe.runtime.wait_warm()  # the warm-up runs the vision part too
    vision_calls = []
    run_shared = pipe.runtime.run_shared
    pipe.runtime.run_shared = lambda part, inputs: (vision_calls.append(part), run_shared(part, inputs))[1]

    def turn(messages):
        vision_calls.clear()
        input_ids, pixel_values = pipe._chat_inputs(messages, 10)
        stats = {}
        with pipe.runtime.context() as ctx:
            tokens = list(generate_tokens(ctx, pipe.info, KeyedPrompt.of(pipe.info, input_ids, pixel_values),
                                          pixel_values, TokenSampler(pipe.info.vocab_size),
                                          10, stats=stats))
        assert tokens == reference_greedy(model, reference_inputs(processor, messages), 10)
        return pipe.tokenizer.decode(tokens), stats, vision_calls.count("vision")

    conversation = [{"role": "user", "content": "What is in this picture?", "images": [_image(2, (400, 300))]}]
    answer, stats, encoded = turn(conversation)
    assert (stats["cached_tokens"], encoded) == (0, 1)

    conversation += [{"role": "assistant", "content": answer},
                     {"role": "user", "content": "And what colour is it?"}]
    answer, stats, encoded = turn(conversation)
    assert stats["cached_tokens"] >= pipe.info.num_image_tokens and encoded == 0  # the image is in the cache

    conversation += [{"role": "assistant", "content": answer},
                     {"role": "user", "content": "Compare it with this one.", "images": [_image(3, (200, 380))]}]
    _, stats, encoded = turn(conversation)
    assert stats["cached_tokens"] >= pipe.info.num_image_tokens and encoded == 1  # only the new image

    pipe.generate_images("a cat", seed=0)  # the KV cache now holds image rows; the image embeddings are kept
    _, stats, encoded = turn(conversation)
    assert (stats["cached_tokens"], encoded) == (0, 0)

    edited = [{**conversation[0], "images": [_image(4, (400, 300))]}] + conversation[1:]
    _, stats, encoded = turn(edited)  # the first image changed: only the tokens before it can be kept
    assert stats["cached_tokens"] < stats["prompt_tokens"] - 2 * pipe.info.num_image_tokens and encoded == 1


@pytest.mark.parametrize("batching", [True, False], ids=["scheduler", "solo"])
def test_concurrent_conversations_each_go_on_from_their_own_cache(tiny_ir_fp32, batching):
    """Two users at once: each one's next turn goes on from its own conversation's cache, not merely
    the last one used (which holds the other conversation). Solo: each borrows the context holding
    its conversation; scheduler: each matches its own kept prefix."""
    pipe = JanusPipeline(tiny_ir_fp32, ov_config=F32, max_concurrency=2, batching=batching)
    a = [{"role": "user", "content": "What is in this picture?", "images": [_image(6)]}]
    b = [{"role": "user", "content": "Describe this one, please.", "images": [_image(7, (300, 300))]}]
    stream_a = pipe.chat_stream(a, max_new_tokens=10)
    first = next(stream_a)  # A holds a context ...
    answer_b = pipe.chat(b, max_new_tokens=10)  # ... so B gets the second one
    answer_a = first + "".join(stream_a)  # A ends last: the most recently used context is A's
    for conversation, answer in ((b, answer_b), (a, answer_a)):
        follow_up = conversation + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Colours?"}]
        cached = pipe.chat(follow_up, max_new_tokens=5).stats["cached_tokens"]
        assert cached >= pipe.info.num_image_tokens, conversation[0]["content"]
    if batching:
        assert len(pipe.scheduler.prefixes) >= 2
    else:
        assert pipe.runtime._created == 2


def test_a_turn_stopped_midway_leaves_a_usable_cache(tiny_ir_fp32, reference):
    model, processor = reference
    pipe = JanusPipeline(tiny_ir_fp32, ov_config=F32, max_concurrency=1)
    messages = [{"role": "user", "content": "Describe the image.", "images": [_image(5)]}]
    stop = threading.Event()
    stream = pipe.chat_stream(messages, max_new_tokens=50, stop_event=stop)
    for _ in stream:
        stop.set()
    assert stream.stats["new_tokens"] < 50
    tokens = ov_tokens(pipe, messages, 10)
    assert tokens == reference_greedy(model, reference_inputs(processor, messages), 10)


def test_compiled_model_cache_is_written_and_reused(tiny_ir_fp32, tmp_path):
    first = JanusPipeline(tiny_ir_fp32, ov_config=F32, compile_cache_dir=tmp_path)
    blobs = sorted(p.name for p in tmp_path.glob("*.blob"))
    # One per part at least, but the language model: it is compiled from memory after the
    # PagedAttention rewrite (kv_cache.py), where hashing it for the cache costs more than compiling.
    assert len(blobs) >= 6
    second = JanusPipeline(tiny_ir_fp32, ov_config=F32, compile_cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.blob")) == blobs  # hits, nothing recompiled
    assert second.chat(ONE_IMAGE, max_new_tokens=10) == first.chat(ONE_IMAGE, max_new_tokens=10)


def test_serving_path_imports_neither_torch_nor_transformers(tiny_ir_fp32, tmp_path):
    image = tmp_path / "in.png"
    _image(4).save(image)
    code = f"""
import json, sys
from janus_ov.pipeline import JanusPipeline
pipe = JanusPipeline.from_converted({str(tiny_ir_fp32)!r})
text = pipe.chat([{{"role": "user", "content": "What is this?", "images": [{str(image)!r}]}}], max_new_tokens=8)
images = pipe.generate_images("a cat", seed=0)
print(json.dumps({{"text": text, "size": list(images[0].size),
                  "loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules)}}))
"""
    env = {**os.environ, "JANUS_OV_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [] and result["size"] == [384, 384] and result["text"]


def test_top_p_keeps_the_same_tokens_as_transformers():
    import torch
    from transformers.generation.logits_process import TopPLogitsWarper

    rng = np.random.default_rng(0)
    for top_p in (0.05, 0.5, 0.9, 0.999):
        for temperature in (0.3, 1.0, 2.0):
            logits = (rng.standard_normal(3000) * 4).astype(np.float32)
            sampler = TokenSampler(3000, temperature, top_p, seed=0)
            probs = np.exp((logits - logits.max()) / temperature).astype(np.float32)
            sampler._nucleus(probs)
            warped = TopPLogitsWarper(top_p)(None, torch.from_numpy(logits / temperature)[None])[0].numpy()
            np.testing.assert_array_equal(probs > 0, np.isfinite(warped))


def test_inverse_cdf_sampling_follows_the_distribution():
    sampler = TokenSampler(4, temperature=1.0, seed=0)
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    counts = np.bincount([sampler(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_each_image_is_decoded_once_per_conversation(pipe, tmp_path, monkeypatch):
    """A follow-up turn carries the earlier turns' images again; their files are not decoded again
    (the pixel cache knows them by path, size and time), and an edited file is."""
    import janus_ov.images as images

    decoded = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda src, *a, **k: (decoded.append(src), real(src, *a, **k))[1])
    path = tmp_path / "photo.png"
    _image(11).save(path)
    first = [{"role": "user", "content": "What is this?", "images": [str(path)]}]
    answer = pipe.chat(first, max_new_tokens=4)
    follow_up = first + [{"role": "assistant", "content": answer or "A picture."},
                         {"role": "user", "content": "And the colours?"}]
    pipe.chat(follow_up, max_new_tokens=4)
    assert decoded == [str(path)]  # once for both turns
    _image(12).save(path)  # the file changes: its pixels are read again
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    pipe.chat(follow_up, max_new_tokens=4)
    assert decoded == [str(path)] * 2
