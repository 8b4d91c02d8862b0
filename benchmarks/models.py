"""Full-size random-weight Janus checkpoints (transformers format) for benchmarks.

Speed and memory do not depend on weight values, only on shapes, so these stand in for the
real checkpoints we cannot download. The model is built on the meta device (no memory) and
each tensor is random-filled in bf16 and written straight into safetensors shards, so building
the 7B never holds more than one shard (~2 GB) in RAM.

    python -m benchmarks.models --model janus-pro-1b [--output DIR]

Janus-1.3B has the same language-model, vision and VQ shapes as Janus-Pro-1B, so one build
("janus-pro-1b") serves both; it is our yardstick model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"

# Language-model shapes (DeepSeek-LLM 1.3B / 7B). Vision (SigLIP-L/16 at 384), aligners,
# VQ-16 decoder and generation head are the same in both sizes except their output width.
SHAPES = {
    "janus-pro-1b": dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=16, intermediate_size=5632),
    "janus-pro-7b": dict(num_hidden_layers=30, hidden_size=4096, num_attention_heads=32, intermediate_size=11008),
}
VOCAB_SIZE = 102400
SHARD_BYTES = 2 * 1024**3


def default_path(name: str) -> Path:
    return MODELS_DIR / f"{name}-random"


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """The tiny model's byte-level BPE, padded with filler words to the real vocabulary size.

    Random weights emit any id in [0, vocab_size); every one must decode to text, as with the
    real tokenizer. Special tokens go last, so their ids differ from the real ones (which does
    not affect speed).
    """
    from janus_ov.tiny import build_tokenizer as tiny_tokenizer

    return tiny_tokenizer(pad_to=vocab_size)


def build_config(name: str, ids: dict):
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    from janus_ov.tiny import BOS, EOS, IMAGE_TOKEN, PAD

    lm = SHAPES[name]
    hidden = lm["hidden_size"]
    text = LlamaConfig(vocab_size=VOCAB_SIZE, num_key_value_heads=lm["num_attention_heads"],
                       max_position_embeddings=16384, pad_token_id=ids[PAD], bos_token_id=ids[BOS],
                       eos_token_id=ids[EOS], dtype="bfloat16", **lm)
    vision = JanusVisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4.0,
                               image_size=384, patch_size=16, projection_dim=hidden, depth=2, num_image_tokens=576)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=16384, latent_channels=256, base_channels=128,
                          channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, projection_dim=hidden,
                          image_token_embed_dim=hidden, num_hidden_layers=2)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=ids[IMAGE_TOKEN],
                         tie_word_embeddings=False)
    config.dtype = "bfloat16"
    return config


def _random_tensor(name: str, shape, generator):
    """Norm weights 1, biases 0, everything else N(0, 0.02) like a trained model's scale."""
    import torch

    if len(shape) == 1:
        return (torch.ones if name.endswith("weight") else torch.zeros)(shape, dtype=torch.bfloat16)
    t = torch.empty(shape, dtype=torch.bfloat16)
    return t.normal_(0.0, 0.02, generator=generator)


def _with_key_outliers(tensors: dict, factor: float, head_dim: int) -> dict:
    """Scale the language model's k_proj rows of the last 4 channels of each rotary half of every head.

    Trained LLMs' keys have a few channels far larger than the rest, in RoPE's slowest-turning pairs
    (they keep their size through the rotation). Random weights have none, yet they are the case
    where quantizing the KV cache per token (one scale over all channels) loses the most against
    per channel: `benchmarks.recipe_deviation` on such a checkpoint measures that trade."""
    half = head_dim // 2
    slow = (*range(half - 4, half), *range(head_dim - 4, head_dim))
    for name, t in tensors.items():
        if name.startswith("model.language_model.") and name.endswith("self_attn.k_proj.weight"):
            rows = [h + c for h in range(0, t.shape[0], head_dim) for c in slow]
            t[rows] *= factor
    return tensors


def _write_weights(model, output: Path, seed: int, key_outliers: float = 0.0) -> int:
    """Random-fill every tensor of a meta-device model into sharded safetensors; returns total bytes.
    key_outliers > 0: with _with_key_outliers(factor=key_outliers)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = shape
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        tensors = {n: _random_tensor(n, s, gen) for n, s in names.items()}
        if key_outliers:
            config = model.config.text_config
            tensors = _with_key_outliers(tensors, key_outliers, config.hidden_size // config.num_attention_heads)
        total += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, str(output / fname), metadata={"format": "pt"})
        del tensors
        weight_map.update({n: fname for n in names})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (output / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def build_random_model(name: str = "janus-pro-1b", output: str | Path | None = None, seed: int = 0,
                       force: bool = False, key_outliers: float = 0.0) -> Path:
    """Build (or reuse) a full-size random-weight checkpoint; returns its directory.
    key_outliers > 0: keys with outlier channels that large (_with_key_outliers), by default in
    <model>-random-key-outliersN."""
    import torch
    from transformers import GenerationConfig, JanusForConditionalGeneration

    from janus_ov.tiny import BOI, BOS, EOS, PAD, save_processor

    if name not in SHAPES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(SHAPES)}")
    if output is None:
        output = default_path(name)
        if key_outliers:
            output = output.with_name(f"{output.name}-key-outliers{key_outliers:g}")
    output = Path(output)
    done = output / "build.json"
    if done.exists() and not force:
        return output  # cached: building the 1B takes minutes
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    ids = save_processor(build_tokenizer(), output)

    config = build_config(name, ids)
    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    total = _write_weights(model, output, seed, key_outliers)
    config.save_pretrained(output)
    gen = GenerationConfig(temperature=1.0, guidance_scale=5, pad_token_id=ids[PAD], bos_token_id=ids[BOS],
                           eos_token_id=ids[EOS])
    gen.generation_kwargs = {"boi_token_id": ids[BOI]}  # read by transformers' Janus image generation
    gen.save_pretrained(output)
    info = {"model": name, "seed": seed, **({"key_outliers": key_outliers} if key_outliers else {}),
            "bytes_bf16": total, "build_seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(info, indent=2))  # written last: marks a complete build
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="janus-pro-1b", choices=sorted(SHAPES))
    parser.add_argument("--output", help=f"default: {MODELS_DIR}/<model>-random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    parser.add_argument("--key-outliers", type=float, default=0.0,
                        help="scale 8 of each head's key channels by this (trained models' outlier channels)")
    args = parser.parse_args(argv)
    path = build_random_model(args.model, args.output, seed=args.seed, force=args.force, key_outliers=args.key_outliers)
    print(json.dumps({"model_dir": str(path), **json.loads((path / "build.json").read_text(encoding="utf-8"))}))


if __name__ == "__main__":
    main()
