"""Token distributions and the speculative acceptance rule, shared by every level.

Greedy decoding is temperature 0: distributions are replaced by the argmax and acceptance is equality, so
no floating-point probability can change a greedy result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0   # 0 = greedy
    top_k: int = 0             # 0 = no limit
    top_p: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature {self.temperature}: must be a finite number >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k {self.top_k}: must be >= 0 (0 = no limit)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p}: must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_probability(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of the most likely token, over the last axis: how sure a greedy level is."""
    return 1.0 / np.exp(logits - logits.max(axis=-1, keepdims=True)).sum(axis=-1)


def distribution(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """The distribution a level samples from at one position: temperature, then top-k, then top-p."""
    scaled = logits.astype(np.float64) / sampling.temperature
    if 0 < sampling.top_k < scaled.size:
        kth = np.partition(scaled, -sampling.top_k)[-sampling.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        cut = int(np.searchsorted(cumulative, sampling.top_p)) + 1  # smallest prefix reaching top_p
        kept = np.zeros_like(probs)
        kept[order[:cut]] = probs[order[:cut]]
        probs = kept / kept.sum()
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(probs.size, p=probs))


def accept_or_resample(token: int, p: np.ndarray, q: np.ndarray | None,
                       rng: np.random.Generator) -> int | None:
    """Speculative sampling for one drafted token: None if accepted, else the replacement token.

    Accept x with probability min(1, p(x)/q(x)); on rejection draw from normalize(max(0, p - q)). `q` is
    the distribution the draft actually drew x from; None means the draft proposed x deterministically
    (prompt lookup), i.e. q is a point mass on x.
    """
    q_x = 1.0 if q is None else q[token]
    if rng.random() * q_x < p[token]:
        return None
    residual = p.copy()
    if q is None:
        residual[token] = 0.0
    else:
        residual = np.maximum(residual - q, 0.0)
    total = residual.sum()
    return draw(residual / total, rng) if total > 0 else draw(p, rng)
