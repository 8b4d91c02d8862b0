"""What the pipeline's calls return: results that carry their own figures.

Each request's stats travel with its result (as openvino.genai returns perf metrics with its
results), never through shared state, so with several users at once nobody sees another's run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


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
    """The images (PIL, 384x384; [] if cancelled), the request's stats, and whether it was cancelled.
    Iterating, indexing and len() go to `images`."""
    images: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    cancelled: bool = False

    def __iter__(self):
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


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
