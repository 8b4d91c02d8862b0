"""Text to image on the OpenVINO parts vs transformers' PyTorch Janus (tiny random model, fp32 IR).

The reference loop below is JanusForConditionalGeneration.generate's image loop written out
(language_model + generation_head + the CFG formula of ClassifierFreeGuidanceLogitsProcessor),
so that its random draws can be made identical to ours: both sample by inverse CDF from the
same stream of uniforms (numpy's default_rng(seed).random(N) per step). Greedy decoding is also
checked against transformers' own generate().
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from janus_ov.sampling import ImageSampler
from janus_ov.text_to_image import generate_image_tokens

PROMPT = "A photo of a mountain lake at sunrise, highly detailed."
# Tolerances (fp32 IR vs fp32 PyTorch): CFG-mixed logits within 5e-4 absolute (they span about
# +-20, and w = 5 amplifies the rows' float error ~11x), decoded pixels (about -1..1) within 1e-3,
# final uint8 images within 1 level on < 1 % of the pixels. The token sequences must be equal.
LOGITS_ATOL, PIXELS_ATOL = 5e-4, 1e-3


def reference_rows(model, processor, prompt, negative_prompt, num_images):
    """(ids, mask) [2N,T] as transformers builds them: N cond rows, then N uncond rows in which
    everything but BOS and <begin_of_image> is pad; or, with a negative prompt, the two prompts
    left-padded by the processor so both end at <begin_of_image>."""
    def text(p):
        conv = [{"role": "user", "content": [{"type": "text", "text": p}]}]
        return processor.apply_chat_template(conv, add_generation_prompt=True)

    gen = model.generation_config
    if negative_prompt is None:
        enc = processor(text=text(prompt), generation_mode="image", return_tensors="np")
        ids, mask = enc["input_ids"].repeat(2 * num_images, 0), enc["attention_mask"].repeat(2 * num_images, 0)
        uncond = ids[num_images:]
        keep = (uncond == gen.bos_token_id) | (uncond == gen.generation_kwargs["boi_token_id"])
        ids[num_images:] = np.where(keep, uncond, gen.pad_token_id)
        return ids, mask
    enc = processor(text=[text(prompt), text(negative_prompt)], generation_mode="image", padding=True,
                    padding_side="left", return_tensors="np")
    order = [0] * num_images + [1] * num_images
    return enc["input_ids"][order], enc["attention_mask"][order]


def reference_generate(model, ids, mask, num_images, cfg_weight, temperature, seed):
    """The image loop of JanusForConditionalGeneration.generate, sampling by inverse CDF from
    default_rng(seed). Returns (tokens [N,576], CFG-mixed logits [576,N,K])."""
    import torch
    from transformers import DynamicCache

    n, steps = num_images, model.config.vision_config.num_image_tokens
    rng = np.random.default_rng(seed)
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate derives from a padded mask
    cache = DynamicCache(config=model.config.text_config)
    tokens = np.zeros((n, steps), np.int64)
    all_logits = []
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        for i in range(steps):
            out = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                             past_key_values=cache, use_cache=True)
            scores = model.model.generation_head(out.last_hidden_state[:, -1])
            cond, uncond = scores[:n], scores[n:]
            logits = uncond + (cond - uncond) * cfg_weight
            all_logits.append(logits.numpy())
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                cdf = torch.softmax(logits / temperature, -1).double().cumsum(-1)
                u = torch.from_numpy(rng.random(n))[:, None]
                token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp(max=cdf.shape[1] - 1)
            tokens[:, i] = token.numpy()
            embeds = model.prepare_embeddings_for_image_generation(torch.cat([token, token])[:, None])
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
    return tokens, np.stack(all_logits)


def ov_generate(pipe, prompt, negative_prompt, num_images, cfg_weight, temperature, seed):
    """Our loop, recording the CFG-mixed logits the sampler sees at every step."""
    recorded = []

    class Recorder(ImageSampler):
        def __call__(self, logits):
            recorded.append(np.array(logits))
            return super().__call__(logits)

    cond, uncond = pipe._image_inputs(prompt, negative_prompt)
    sampler = Recorder(num_images, pipe.info.codebook_size, temperature, seed)
    with pipe.runtime.context() as ctx:
        steps = generate_image_tokens(ctx, pipe.info, cond, uncond, num_images, cfg_weight, sampler, {}, preview_every=0)
        while True:  # a generator of progress events whose return value is the tokens
            try:
                next(steps)
            except StopIteration as done:
                tokens = done.value
                break
    return tokens, np.stack(recorded)


def test_greedy_tokens_identical_to_transformers_generate(pipe, reference):
    import torch

    model, processor = reference
    conv = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    inputs = processor(text=processor.apply_chat_template(conv, add_generation_prompt=True),
                       generation_mode="image", return_tensors="pt")
    np.testing.assert_array_equal(pipe._image_inputs(PROMPT, None)[0], inputs["input_ids"][0].numpy())
    with torch.no_grad():
        expected = model.generate(**inputs, generation_mode="image", do_sample=False, guidance_scale=5.0).numpy()
    tokens, _ = ov_generate(pipe, PROMPT, None, 1, 5.0, 0.0, None)
    np.testing.assert_array_equal(tokens, expected)


def test_sampled_tokens_logits_and_images_match_reference(pipe, reference):
    model, processor = reference
    n, cfg, temperature, seed = 2, 5.0, 1.0, 1234
    ids, mask = reference_rows(model, processor, PROMPT, None, n)
    ref_tokens, ref_logits = reference_generate(model, ids, mask, n, cfg, temperature, seed)
    tokens, logits = ov_generate(pipe, PROMPT, None, n, cfg, temperature, seed)
    # Same history up to every step (the sequences are equal), so each step's logits are comparable.
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=LOGITS_ATOL)
    assert len(np.unique(tokens)) > 50  # a real sampled sequence, not a constant

    # The pipeline's own call (same seed) reproduces these tokens; its images decode them.
    images = pipe.generate_images(PROMPT, num_images=n, cfg_weight=cfg, temperature=temperature, seed=seed)
    assert [im.size for im in images] == [(384, 384)] * n and all(im.mode == "RGB" for im in images)
    import torch

    with torch.no_grad():
        ref_pixels = model.model.vqmodel.decode(torch.from_numpy(ref_tokens)).numpy()
    with pipe.runtime.context() as ctx:
        pixels = ctx.vq_decode(tokens)
    np.testing.assert_allclose(pixels, ref_pixels, rtol=0, atol=PIXELS_ATOL)
    ref_images = processor.postprocess(list(torch.from_numpy(ref_pixels)), return_tensors="PIL.Image.Image")
    for ours, theirs in zip(images, ref_images["pixel_values"]):
        diff = np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_negative_prompt_rows_match_left_padded_reference(pipe, reference):
    model, processor = reference
    negative = "blurry, low quality, distorted, ugly, oversaturated, watermark, text"
    cond, uncond = pipe._image_inputs(PROMPT, negative)
    assert len(cond) != len(uncond)  # so the left padding and position ids are exercised
    ids, mask = reference_rows(model, processor, PROMPT, negative, 1)
    assert (mask == 0).any()
    ref_tokens, ref_logits = reference_generate(model, ids, mask, 1, 5.0, 1.0, 99)
    tokens, logits = ov_generate(pipe, PROMPT, negative, 1, 5.0, 1.0, 99)
    assert np.isfinite(logits).all()
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=LOGITS_ATOL)
    plain, _ = ov_generate(pipe, PROMPT, None, 1, 5.0, 1.0, 99)
    assert (plain != tokens).any()  # the negative prompt really steers


def test_callback_previews_and_cancel(pipe):
    calls, previews = [], []

    def callback(step, total, preview):
        calls.append((step, total))
        if preview is not None:
            previews.append((step, preview))

    images = pipe.generate_images("a red fox", seed=3, callback=callback, preview_every=192)
    assert calls == [(s, 576) for s in range(1, 577)]
    assert [(step, p.size, p.mode) for step, p in previews] == [(192, (384, 384), "RGB"), (384, (384, 384), "RGB")]
    # A preview is the decode of the token rows made so far (8 and 16 of 24 rows), grey below.
    tokens, _ = ov_generate(pipe, "a red fox", None, 1, 5.0, 1.0, 3)  # the same tokens (same seed)
    with pipe.runtime.context() as ctx:
        for step, preview in previews:
            rows = ctx.vq_decode(tokens[:, :step])[0]
            assert rows.shape == (3, step // 24 * 16, 384)
            expected = np.clip((rows.transpose(1, 2, 0) + 1) / 2 * 255, 0, 255).astype(np.uint8)
            shown = np.asarray(preview)
            assert np.array_equal(shown[:len(expected)], expected)
            assert (shown[len(expected):] == 128).all()

    first = []
    result = pipe.generate_images("a red fox", seed=3, preview_every=12,
                                  callback=lambda step, total, preview: first.append(preview) if step <= 24 else None)
    assert first[11] is None and first[23] is not None  # no preview before the first row is done
    assert result.stats["steps"] == 576 and result.stats["steps_per_s"] > 0 and not result.cancelled

    stop = threading.Event()
    seen = []

    def cancel_at_10(step, total, preview):
        seen.append(step)
        if step == 10:
            stop.set()

    cancelled = pipe.generate_images("a red fox", seed=3, callback=cancel_at_10, stop_event=stop)
    assert cancelled.images == [] and cancelled.cancelled and cancelled.stats["steps"] == 10
    assert seen[-1] == 10
    again = pipe.generate_images("a red fox", seed=3, preview_every=0)  # still usable, same result
    assert np.array_equal(np.asarray(again[0]), np.asarray(images[0]))


def test_image_stream_reports_progress_decoding_and_its_own_result(pipe):
    """The iterator form: 576 token steps (previews every preview_every), one event per decoded image,
    then the ImageResult, whose images equal generate_images' and whose stats are this run's."""
    from janus_ov.results import ImageProgress, ImageResult

    events = list(pipe.generate_images_stream("a red fox", num_images=2, seed=3, preview_every=288))
    *progress, result = events
    assert isinstance(result, ImageResult) and not result.cancelled
    assert all(isinstance(e, ImageProgress) for e in progress)
    steps = [(e.step, e.total) for e in progress if e.stage == "tokens"]
    assert steps == [(s, 576) for s in range(1, 577)]
    assert [e.step for e in progress if e.preview is not None] == [288]
    assert [(e.step, e.total) for e in progress if e.stage == "decoding"] == [(1, 2), (2, 2)]
    assert result.stats["num_images"] == 2 and result.stats["steps"] == 576 and result.stats["seed"] == 3
    same = pipe.generate_images("a red fox", num_images=2, seed=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(result.images, same.images))
    assert same.stats is not result.stats and len(same) == 2


def test_a_result_saves_pngs_that_say_how_to_make_them_again(pipe, tmp_path):
    """ImageResult.params are the request's settings; save() names files from prompt and seed and puts
    the settings in the PNG's text; the saved pixels are the result's (or the given copies')."""
    from PIL import Image

    result = pipe.generate_images("Leuchtturm über der Klippe", negative_prompt="Nebel", num_images=2, seed=5,
                                  cfg_weight=3.0, temperature=0.5)
    assert result.params == {"prompt": "Leuchtturm über der Klippe", "negative_prompt": "Nebel", "seed": 5,
                             "cfg_weight": 3.0, "temperature": 0.5, "model": pipe.source}
    paths = result.save(tmp_path / "out")
    assert [p.name for p in paths] == ["leuchtturm-ber-der-klippe-seed5-1.png", "leuchtturm-ber-der-klippe-seed5-2.png"]
    for path, image in zip(paths, result):
        saved = Image.open(path)
        assert saved.text["prompt"] == "Leuchtturm über der Klippe" and saved.text["seed"] == "5"
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(image.convert("RGB")))
    small = [im.resize((64, 64)) for im in result]
    assert Image.open(result.save(tmp_path / "small", small)[0]).size == (64, 64)
    assert "/" not in pipe.source or not Path(pipe.source).is_absolute()  # no server path in a shared file


def test_closing_the_image_stream_stops_the_run_and_frees_its_context(pipe):
    """Through the scheduler: the run's rows and blocks are freed at its next step."""
    sched = pipe.scheduler
    before = sched.stats()["blocks_in_use"]
    events = pipe.generate_images_stream("a red fox", seed=3)
    for event in events:
        if event.step == 5:
            break
    assert sched.stats()["active"] == 1 and sched.stats()["blocks_in_use"] > before
    events.close()  # what Gradio does when a request is cancelled or its client leaves
    steps = sched.stats()["steps"]
    while sched.stats()["active"]:
        time.sleep(0.005)
    assert sched.stats()["steps"] <= steps + 1 and sched.stats()["blocks_in_use"] == before
    with pytest.raises(StopIteration):
        next(events)
    assert pipe.generate_images("a red fox", seed=3).stats["steps"] == 576  # and the pipeline goes on
