"""Load a Janus checkpoint (transformers format, or DeepSeek's original format) for conversion.

The result bundles the PyTorch model (in the checkpoint's stored dtype, usually bf16, so a
7B model fits in memory), the ModelInfo the serving side needs, and the `tokenizers` JSON.
torch / transformers are imported inside functions: this module is only used to convert.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import deepseek_format, special_tokens
from .errors import ConversionError, ModelNotFoundError
from .model_info import ModelInfo


@dataclass
class Checkpoint:
    model: object  # transformers JanusForConditionalGeneration, eval mode, stored dtype
    info: ModelInfo
    tokenizer_json: str  # contents of a `tokenizers` tokenizer.json


def load_checkpoint(model_dir, dtype=None) -> Checkpoint:
    """Load `model_dir` (a local directory) as a Checkpoint; `dtype=None` keeps the stored dtype."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(f"{model_dir} is not a Janus checkpoint: it has no config.json.")
    if deepseek_format.is_original_format(model_dir):
        model, info, tokenizer_json = deepseek_format.load_parts(model_dir, dtype)
        return Checkpoint(model=model, info=info, tokenizer_json=tokenizer_json)
    return load_transformers(model_dir, dtype)


def read_metadata(model_dir, prompt_style: str | None = None):
    """(ModelInfo, tokenizer.json text) from a checkpoint's small files alone, without its weights:
    exactly what a conversion would write for serving (prompt style, special ids, preprocessing)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(f"{model_dir} is not a Janus checkpoint: it has no config.json.")
    if deepseek_format.is_original_format(model_dir):
        return deepseek_format.read_metadata(model_dir, prompt_style)
    from transformers import GenerationConfig, JanusConfig, JanusProcessor

    try:
        processor = JanusProcessor.from_pretrained(model_dir)
        config, generation = JanusConfig.from_pretrained(model_dir), GenerationConfig.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as err:
        raise ConversionError(f"Could not read the Janus checkpoint in {model_dir}: {err}") from err
    info = model_info_from(config, generation, processor, prompt_style or "pro")
    return info, tokenizer_json_of(model_dir, processor.tokenizer)


def load_transformers(model_dir: Path, dtype=None) -> Checkpoint:
    from transformers import JanusForConditionalGeneration, JanusProcessor

    try:
        processor = JanusProcessor.from_pretrained(model_dir)
        model = JanusForConditionalGeneration.from_pretrained(model_dir, dtype=dtype or "auto")
    except (OSError, ValueError, KeyError) as err:
        raise ConversionError(f"Could not load the Janus checkpoint in {model_dir}: {err}") from err
    model.eval().requires_grad_(False)
    info = model_info_from(model.config, model.generation_config, processor)
    return Checkpoint(model=model, info=info, tokenizer_json=tokenizer_json_of(model_dir, processor.tokenizer))


def tokenizer_json_of(model_dir: Path, tokenizer) -> str:
    # The file as shipped is the ground truth (transformers may rewrite the post-processor
    # when loading); fall back to the loaded fast tokenizer's own serialization.
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return tokenizer.backend_tokenizer.to_str()


def model_info_from(config, generation_config, processor, prompt_style: str = "pro") -> ModelInfo:
    """ModelInfo from a transformers JanusConfig, GenerationConfig and JanusProcessor."""
    tok, image_proc, text = processor.tokenizer, processor.image_processor, config.text_config

    def token_id(token: str) -> int:
        found = tok.convert_tokens_to_ids(token)
        if found is None or found == tok.unk_token_id:
            raise ConversionError(f"The tokenizer has no {token!r} token; is this a Janus checkpoint?")
        return int(found)

    def first(*values):
        return int(next(v for v in values if v is not None))

    gen_kwargs = getattr(generation_config, "generation_kwargs", None) or {}
    eos = generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    system = _default_system_prompt() if getattr(processor, "use_default_system_prompt", False) else ""
    size = image_proc.size
    return ModelInfo(
        prompt_style=prompt_style,
        system_prompt=system,
        bos_id=first(generation_config.bos_token_id, tok.bos_token_id),
        eos_id=first(eos, tok.eos_token_id),
        pad_id=first(generation_config.pad_token_id, tok.pad_token_id),
        image_id=first(getattr(config, "image_token_id", None), token_id(special_tokens.IMAGE)),
        boi_id=first(gen_kwargs.get("boi_token_id"), token_id(special_tokens.BOI)),
        eoi_id=token_id(special_tokens.EOI),
        hidden_size=int(text.hidden_size),
        vocab_size=int(text.vocab_size),
        codebook_size=int(config.vq_config.num_embeddings),
        num_image_tokens=int(getattr(processor, "num_image_tokens", 576)),
        max_position_embeddings=int(text.max_position_embeddings),
        image_size=int(size["height"] if isinstance(size, dict) else size.height),
        min_size=int(getattr(image_proc, "min_size", 14)),
        image_mean=[float(v) for v in image_proc.image_mean],
        image_std=[float(v) for v in image_proc.image_std],
        do_normalize=bool(image_proc.do_normalize),
        rescale_factor=float(image_proc.rescale_factor),
        background_color=[int(v) for v in getattr(image_proc, "background_color", (127, 127, 127))],
    )


def _default_system_prompt() -> str:
    # transformers appends its own "\n\n" separator; the prompt builder adds separators itself.
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    return DEFAULT_SYSTEM_PROMPT.rstrip("\n")
