"""Choosing the next token from logits: greedy, temperature, top-p, and the CFG image sampler.

All numpy, one seeded `numpy.random.Generator` per request (so concurrent requests with the
same seed give the same tokens as sequential ones), buffers allocated once per request.

Sampling is inverse-CDF: one uniform draw u per row, next token = first index whose
cumulative probability exceeds u * total. That is an exact multinomial draw, and it makes the
random stream explicit: a test can feed the same uniforms to a PyTorch reference and expect
the very same tokens.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidInputError


def make_rng(seed: int | None) -> tuple[np.random.Generator, int]:
    """A Generator and the seed it came from (a fresh random one if `seed` is None)."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])
    return np.random.default_rng(seed), seed


def sample_from_probs(probs: np.ndarray, u: float, cdf: np.ndarray) -> int:
    """Inverse-CDF draw from unnormalised non-negative `probs` [V] given a uniform `u` in [0, 1)."""
    np.cumsum(probs, out=cdf)  # float64 buffer: no drift over a 100k vocabulary
    idx = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return min(idx, len(probs) - 1)  # u*total can round up to total exactly


class TokenSampler:
    """Text sampling for one request: greedy when temperature == 0, else softmax(logits / T)
    restricted to the top-p nucleus (same rule as transformers' TopPLogitsWarper), then one draw."""

    def __init__(self, vocab_size: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.rng, self.seed = make_rng(seed)
        self.probs = np.empty(vocab_size, np.float32)
        self.cdf = np.empty(vocab_size, np.float64)

    def __call__(self, logits: np.ndarray) -> int:
        """`logits` [V] may be a view into an OpenVINO output tensor: it is only read."""
        if self.temperature == 0.0:
            return int(np.argmax(logits))
        probs = self.probs
        np.subtract(logits, logits.max(), out=probs)
        probs *= 1.0 / self.temperature
        np.exp(probs, out=probs)
        if self.top_p < 1.0:
            self._nucleus(probs)
        return sample_from_probs(probs, self.rng.random(), self.cdf)

    def _nucleus(self, probs: np.ndarray) -> None:
        """Zero every token outside the top-p nucleus, in place.

        transformers drops a token when the ascending cumulative probability up to it is
        <= 1 - top_p. Every token below tau = (1 - top_p) / V is dropped by that rule (all of
        them together weigh less than 1 - top_p), so only the candidates above tau need sorting:
        the rule stays exact while the sort shrinks from the full vocabulary to a few tokens.
        """
        total = float(probs.sum())
        tau = (1.0 - self.top_p) * total / len(probs)
        cand = np.flatnonzero(probs >= tau)
        below = total - float(probs[cand].sum())  # mass of the tokens below tau
        order = cand[np.argsort(probs[cand], kind="stable")]
        cum = np.cumsum(probs[order], dtype=np.float64) + below
        drop = cum <= (1.0 - self.top_p) * total
        drop[-1] = False  # min_tokens_to_keep = 1
        keep = np.zeros(len(probs), bool)
        keep[order[~drop]] = True
        probs[~keep] = 0.0


class ImageSampler:
    """CFG image-token sampling for N images at once.

    The gen_head part already returns the CFG-mixed logits [N, K] (uncond + w * (cond - uncond));
    here: softmax(logits / T) and one multinomial draw per row (argmax when T == 0).
    """

    def __init__(self, num_images: int, codebook_size: int, temperature: float = 1.0, seed: int | None = None):
        self.temperature = float(temperature)
        self.rng, self.seed = make_rng(seed)
        self.probs = np.empty((num_images, codebook_size), np.float32)
        self.cdf = np.empty(codebook_size, np.float64)
        self.out = np.empty(num_images, np.int64)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """`logits` [N, K] (read only) -> token ids [N] (a buffer reused on the next call)."""
        if self.temperature == 0.0:
            np.argmax(logits, axis=-1, out=self.out)
            return self.out
        probs = self.probs
        np.subtract(logits, logits.max(axis=-1, keepdims=True), out=probs)
        probs *= 1.0 / self.temperature
        np.exp(probs, out=probs)
        u = self.rng.random(len(probs))  # one uniform per row, row order: image 0, 1, ...
        for row in range(len(probs)):
            self.out[row] = sample_from_probs(probs[row], u[row], self.cdf)
        return self.out


# ---- parameter checks (shared by chat and text-to-image) ----

def check_number(name: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite real number in [low, high] (or (low, high]), else InvalidInputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a number, got {type(value).__name__}: {value!r}.")
    value = float(value)
    bracket = "(" if low_open else "["
    if math.isnan(value) or math.isinf(value) or value > high or value < low or (low_open and value == low):
        raise InvalidInputError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}.")
    return value


def check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {type(value).__name__}: {value!r}.")
    if not low <= int(value) <= high:
        raise InvalidInputError(f"{name} must be between {low} and {high}, got {value}.")
    return int(value)


def check_seed(seed) -> int | None:
    if seed is None:
        return None
    return check_int("seed", seed, 0, 2**63 - 1)
