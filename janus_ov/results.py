"""What the pipeline's calls return: results that carry their own figures.

Each request's stats travel with its result (as openvino.genai returns perf metrics with its
results), never through shared state, so with several users at once nobody sees another's run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class ChatResult(str):
    """The whole answer: a str, carrying the request's `stats`."""

    stats: dict

    def __new__(cls, text: str, stats: dict | None = None):
        result = super().__new__(cls, text)
        result.stats = stats if stats is not None else {}
        return result

    @property
    def text(self) -> str:
        return str(self)


class ChatStream:
    """The answer's text pieces as they come (never a split UTF-8 character). `text` is the answer
    so far; `stats` is complete once the stream is exhausted. `close()` stops the generation."""

    def __init__(self, pieces: Iterator[str], stats: dict):
        self._pieces = pieces
        self.stats = stats
        self.text = ""

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self.text += piece
        return piece

    def close(self) -> None:
        self._pieces.close()

    def result(self) -> ChatResult:
        """Run to the end; the whole answer and its stats."""
        for _ in self:
            pass
        return ChatResult(self.text, self.stats)


@dataclass
class ImageProgress:
    """After each of the `total` generation steps; `preview` is a PIL image of the first image so
    far (its finished token rows, grey below) every `preview_every` steps, else None. Once the
    tokens are done, `stage` says "decoding" and `step` counts the images decoded."""
    step: int
    total: int
    preview: object = None
    stage: str = "tokens"


@dataclass
class ImageResult:
    """The images (PIL, 384x384; [] if cancelled), the request's stats, whether it was cancelled,
    and the `params` that made it (prompt, negative_prompt, seed, cfg_weight, temperature, model),
    so that a saved image says how to make it again. Iterating, indexing and len() go to `images`."""
    images: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    cancelled: bool = False
    params: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]

    def save(self, folder, images=None) -> list[Path]:
        """Write `images` (default: this result's; e.g. upscaled copies of them) as PNGs into `folder`,
        named from the prompt and seed ("red-fox-in-sunflowers-seed42-1.png"), with the params in
        the PNG's text chunks. Returns the paths."""
        from PIL.PngImagePlugin import PngInfo

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        metadata = PngInfo()
        for key, value in self.params.items():
            metadata.add_itxt(key, str(value))  # iTXt: UTF-8, any prompt survives
        metadata.add_text("Software", "Janus Studio (janus_ov, OpenVINO)")
        stem = f"{_slug(self.params.get('prompt', ''))}-seed{self.params.get('seed', 0)}"
        paths = []
        for i, image in enumerate(self.images if images is None else images, 1):
            paths.append(folder / f"{stem}-{i}.png")
            image.save(paths[-1], format="PNG", pnginfo=metadata)
        return paths


def _slug(text: str, words: int = 6, chars: int = 48) -> str:
    """The first words of `text` as a file-name part: lower-case letters, digits and hyphens only."""
    parts = re.findall(r"[a-z0-9]+", text.lower())[:words]
    return "-".join(parts)[:chars].strip("-") or "image"


def summary(stats: dict) -> str:
    """One line a person reads about a finished request ("" if there is nothing to say)."""
    if stats.get("task") == "chat" and stats.get("new_tokens"):
        reused = stats.get("cached_tokens", 0)
        return (f"{stats['new_tokens']} tokens at {stats.get('decode_tokens_per_s', 0):.1f} tokens/s, "
                f"first token after {stats.get('time_to_first_token_s', 0):.2f} s"
                + (f" ({reused} of {stats.get('prompt_tokens', 0)} prompt tokens reused)" if reused else ""))
    if stats.get("task") == "image" and stats.get("total_s"):
        n = stats.get("num_images", 1)
        return (f"{n} image{'s' * (n > 1)}, {stats['total_s'] / n:.1f} s/image "
                f"({stats.get('steps_per_s', 0):.1f} steps/s)")
    return ""
