"""What the serving side needs to know about a checkpoint, besides the IR weights.

Written as `model_info.json` next to the IRs by the exporter, read by the runtime, so that
serving never imports transformers or torch. The tokenizer is kept as `tokenizer.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILE_NAME = "model_info.json"

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)


@dataclass
class ModelInfo:
    # Prompt format: "pro" writes "<|User|>: ..." / "<|Assistant|>:" (Janus-Pro and the
    # transformers-format repos); "legacy" writes "User: ..." / "Assistant:" (Janus-1.3B).
    prompt_style: str
    system_prompt: str  # without trailing separators; "" for none
    # Special token ids.
    bos_id: int
    eos_id: int
    pad_id: int
    image_id: int  # <image_placeholder>, repeated num_image_tokens times per image
    boi_id: int  # <begin_of_image>
    eoi_id: int  # <end_of_image>
    # Sizes.
    hidden_size: int
    vocab_size: int
    codebook_size: int
    num_image_tokens: int = 576
    max_position_embeddings: int = 16384
    # Image preprocessing, as the checkpoint's preprocessor config says.
    image_size: int = 384
    min_size: int = 14
    image_mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    do_normalize: bool = True
    rescale_factor: float = 1 / 255
    background_color: list = field(default_factory=lambda: [127, 127, 127])
    # Whose resize rule: "transformers" (JanusImageProcessor: shorter side rounded) for the
    # transformers-format repos, "deepseek" (VLMImageProcessor: truncated) for the original ones.
    image_resize: str = "transformers"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "ModelInfo":
        return cls(**json.loads((Path(directory) / FILE_NAME).read_text(encoding="utf-8")))
