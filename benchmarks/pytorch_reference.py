"""The same work with transformers' PyTorch Janus, for side-by-side ratios.

Run by benchmarks.run in a fresh process per task (so peak RSS is this task's own):
chat = time to first token and decode rate over NEW_TOKENS forced tokens
(generate(min_new_tokens=max_new_tokens)); image = generate(generation_mode="image")
with its 576 CFG steps, then the VQ decode.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .workload import IMAGE_PROMPT, NEW_TOKENS, make_image, make_question


def _load(model_dir, dtype: str):
    import torch
    from transformers import JanusForConditionalGeneration, JanusProcessor

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    t0 = time.perf_counter()
    processor = JanusProcessor.from_pretrained(model_dir)
    model = JanusForConditionalGeneration.from_pretrained(model_dir, dtype=torch_dtype).eval()
    return processor, model, time.perf_counter() - t0


def lm_bytes(model) -> dict:
    """Bytes read per text token (LM + LM head) and per image step (LM + generation head)."""
    def size(prefix):
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.startswith(prefix))

    lm = size("model.language_model.")
    # The LM's token embedding is a lookup (one row per token), not a full read.
    lm -= sum(p.numel() * p.element_size() for n, p in model.named_parameters()
              if n.startswith("model.language_model.embed_tokens"))
    return {"text_token": lm + size("lm_head."), "image_step": lm + size("model.generation_head.")}


class _TokenClock:
    """A generate() streamer that timestamps every new token (the first put() is the prompt)."""

    def __init__(self):
        self.times = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def chat(model_dir, dtype: str = "bf16", runs: int = 3, new_tokens: int = NEW_TOKENS) -> dict:
    import torch

    processor, model, load_s = _load(model_dir, dtype)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": make_question(model_dir)}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[make_image()], return_tensors="pt").to(model.dtype)
    ttft, rate, counts = [], [], []
    with torch.inference_mode():
        for _ in range(runs):
            clock = _TokenClock()
            t0 = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 streamer=clock)
            n = out.shape[1] - inputs["input_ids"].shape[1]
            ttft.append(clock.times[0] - t0)
            rate.append((len(clock.times) - 1) / (clock.times[-1] - clock.times[0]))
            counts.append(n)
    return {"load_s": load_s, "prompt_tokens": int(inputs["input_ids"].shape[1]), "new_tokens": counts,
            "ttft_s": ttft, "decode_tok_s": rate, "ttft_s_median": statistics.median(ttft),
            "decode_tok_s_median": statistics.median(rate), "bytes_per_step": lm_bytes(model)}


class _StepClock:
    """A logits processor that timestamps every image step (it runs once per step)."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def image(model_dir, dtype: str = "bf16", runs: int = 1, num_images: int = 1, seed: int = 0) -> dict:
    import torch
    from transformers import LogitsProcessorList

    processor, model, load_s = _load(model_dir, dtype)
    conversation = [{"role": "user", "content": [{"type": "text", "text": IMAGE_PROMPT}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=prompt, generation_mode="image", return_tensors="pt")
    # bf16 convolutions have no fast kernels on AVX2 CPUs (the tiny model's VQ decode takes
    # ~20x longer in bf16 than fp32), so the VQ decoder always runs in fp32, as a user would.
    model.model.vqmodel.float()
    total, steps_rate, vq = [], [], []
    with torch.inference_mode():
        for r in range(runs):
            torch.manual_seed(seed + r)
            clock = _StepClock()
            t0 = time.perf_counter()
            tokens = model.generate(**inputs, generation_mode="image", do_sample=True,
                                    num_return_sequences=num_images, logits_processor=LogitsProcessorList([clock]))
            t1 = time.perf_counter()
            pixels = model.decode_image_tokens(tokens)
            t2 = time.perf_counter()
            assert tokens.shape == (num_images, 576) and pixels.shape[0] == num_images
            total.append(t2 - t0)
            steps_rate.append((len(clock.times) - 1) / (clock.times[-1] - clock.times[0]))
            vq.append(t2 - t1)
    return {"load_s": load_s, "num_images": num_images, "image_s": total, "image_s_median": statistics.median(total),
            "steps_per_s_median": statistics.median(steps_rate), "vq_decode_s_median": statistics.median(vq),
            "bytes_per_step": lm_bytes(model)}


TASKS = {"chat": chat, "image": image}


def run_task(task: str, **kwargs) -> dict:
    return TASKS[task](**kwargs)


if __name__ == "__main__":  # a manual check: python -m benchmarks.pytorch_reference MODEL_DIR
    import json
    import sys

    print(json.dumps(chat(Path(sys.argv[1]), "fp32", runs=1, new_tokens=8), indent=2, default=str))
