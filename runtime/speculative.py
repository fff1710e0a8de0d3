"""Multi-level speculative decoding: every level drafts for the one above by running speculation itself.

A chain is a list of levels from the target down. Each level below the target is a *drafter* with two
methods (as in transformers' CandidateGenerator): `propose` up to n tokens continuing a sequence, with the
distribution each token was drawn from, and `update` with how many of them the level above accepted.
A model level proposes by running verify rounds of its own model against its own drafter, so the chain
recurses to any depth; the prompt-lookup drafter ends a chain at no model cost.

Exactness: a level's verify round returns tokens distributed exactly as its own model (greedy: its own
argmax), whatever its drafter proposed. So every level's proposals are samples of that level's model, and
the target's output is the target's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .kvmodel import KVModel
from .sampling import Sampling, accept_or_resample, distribution, draw, top_probability


@dataclass
class DraftControls:
    """How a level drafts for the level above it."""
    k: int = 8                 # most tokens proposed per request (the start value when adaptive)
    confidence: float = 0.0    # stop drafting after a token whose top probability is below this (0 = never)
    adaptive: bool = False     # grow k by 2 after a fully accepted proposal, shrink by 1 after a rejection

    def validate(self, name: str) -> None:
        if self.k < 1:
            raise ValueError(f"level {name}: k={self.k} must be at least 1")
        if not 0 <= self.confidence < 1:
            raise ValueError(f"level {name}: confidence={self.confidence} must be in [0, 1)")


@dataclass
class LevelStats:
    name: str
    forward_passes: int = 0
    seconds: float = 0.0
    drafted: int = 0             # tokens this level proposed to the level above
    accepted: int = 0            # of those, accepted
    drafted_at: list[int] = field(default_factory=list)   # by draft position
    accepted_at: list[int] = field(default_factory=list)
    verify_rounds: int = 0       # this level's own verify steps
    committed: int = 0           # tokens those steps produced, bonus included

    def record_verification(self, drafted: int, accepted: int) -> None:
        self.record_counts(drafted, accepted, [1] * drafted, [1] * accepted)

    def record_counts(self, drafted: int, accepted: int, drafted_at: list[int], accepted_at: list[int]) -> None:
        self.drafted += drafted
        self.accepted += accepted
        while len(self.drafted_at) < len(drafted_at):
            self.drafted_at.append(0)
            self.accepted_at.append(0)
        for position, count in enumerate(drafted_at):
            self.drafted_at[position] += count
        for position, count in enumerate(accepted_at):
            self.accepted_at[position] += count

    def add(self, other: "LevelStats") -> None:
        """Accumulate another generation's counts (benchmarks sum over prompts)."""
        self.forward_passes += other.forward_passes
        self.seconds += other.seconds
        self.verify_rounds += other.verify_rounds
        self.committed += other.committed
        self.record_counts(other.drafted, other.accepted, other.drafted_at, other.accepted_at)

    def summary(self) -> dict:
        return {
            "level": self.name,
            "forward_passes": self.forward_passes,
            "seconds": round(self.seconds, 3),
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.accepted / self.drafted, 3) if self.drafted else None,
            "mean_accepted_length": round(self.committed / self.verify_rounds, 3) if self.verify_rounds else None,
            "acceptance_by_position": [round(a / d, 3) for a, d in zip(self.accepted_at, self.drafted_at)],
        }


class Drafter(Protocol):
    stats: LevelStats

    def reset(self) -> None: ...

    def propose(self, tokens: list[int], limit: int, sampling: Sampling,
                rng: np.random.Generator) -> tuple[list[int], list[np.ndarray | None]]: ...

    def update(self, drafted: int, accepted: int) -> None: ...


class ModelLevel:
    """A model that emits tokens of its own distribution, several per forward pass when it has a drafter."""

    def __init__(self, name: str, model: KVModel, drafter: Drafter | None, controls: DraftControls):
        self.name = name
        self.model = model
        self.drafter = drafter
        self.controls = controls
        self.reset()

    def reset(self) -> None:
        """Start a generation afresh (no cache reuse), so that a fixed seed always reproduces its output."""
        self.k = self.controls.k
        self.stats = LevelStats(self.name)
        self.model.reset()

    def step(self, tokens: list[int], limit: int, sampling: Sampling,
             rng: np.random.Generator) -> tuple[list[int], list[np.ndarray | None], list[np.ndarray]]:
        """One forward pass: 1..limit new tokens, each one's distribution (None when greedy) and logits."""
        draft, draft_dists = [], []
        if self.drafter is not None and limit > 1:
            draft, draft_dists = self.drafter.propose(tokens, limit - 1, sampling, rng)
        started = time.perf_counter()
        logits = self.model.logits(tokens + draft, len(draft) + 1)
        self.stats.seconds += time.perf_counter() - started
        self.stats.forward_passes += 1

        out: list[int] = []
        dists: list[np.ndarray | None] = []
        for position, row in enumerate(logits):
            p = None if sampling.greedy else distribution(row, sampling)
            dists.append(p)
            if position == len(draft):  # every draft token accepted: the bonus token
                out.append(int(row.argmax()) if p is None else draw(p, rng))
                break
            token = _verify(draft[position], row, p, draft_dists[position], rng)
            out.append(token)
            if token != draft[position]:  # a rejection always replaces the token with another one
                break
        if self.drafter is not None and draft:
            accepted = len(out) - 1
            self.drafter.stats.record_verification(len(draft), accepted)
            self.drafter.update(len(draft), accepted)
        self.stats.verify_rounds += 1
        self.stats.committed += len(out)
        return out, dists, list(logits[:len(out)])

    # The Drafter side: used when this level sits below another.
    def propose(self, tokens: list[int], limit: int, sampling: Sampling,
                rng: np.random.Generator) -> tuple[list[int], list[np.ndarray | None]]:
        want = min(self.k, limit)
        out: list[int] = []
        dists: list[np.ndarray | None] = []
        while len(out) < want:
            new, new_dists, new_logits = self.step(tokens + out, want - len(out), sampling, rng)
            for token, p, row in zip(new, new_dists, new_logits):
                out.append(token)
                dists.append(p)
                # An unsure token is still proposed (it is computed, and verifying it costs the level above
                # next to nothing), but drafting stops after it: the tokens after it would rarely survive.
                if self.controls.confidence and _top_probability(row, p) < self.controls.confidence:
                    return out, dists
        return out, dists

    def update(self, drafted: int, accepted: int) -> None:
        self.k = _adapt(self.k, self.controls, drafted, accepted)


class PromptLookup:
    """Drafts by copying what followed the latest earlier occurrence of the text's last n-gram."""

    def __init__(self, controls: DraftControls, max_ngram: int = 3):
        self.name = "lookup"
        self.controls = controls
        self.max_ngram = max_ngram
        self.reset()

    def reset(self) -> None:
        self.k = self.controls.k
        self.stats = LevelStats(self.name)

    def propose(self, tokens: list[int], limit: int, sampling: Sampling,
                rng: np.random.Generator) -> tuple[list[int], list[np.ndarray | None]]:
        started = time.perf_counter()
        want = min(self.k, limit)
        found: list[int] = []
        array = np.asarray(tokens)
        for n in range(min(self.max_ngram, len(tokens) - 1), 0, -1):
            tail = array[-n:]
            windows = np.lib.stride_tricks.sliding_window_view(array[:-1], n)
            hits = np.flatnonzero((windows == tail).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                found = tokens[start:start + want]
                break
        self.stats.seconds += time.perf_counter() - started
        return found, [None] * len(found)  # deterministic proposals: q is a point mass

    def update(self, drafted: int, accepted: int) -> None:
        self.k = _adapt(self.k, self.controls, drafted, accepted)


def _verify(proposed: int, logits: np.ndarray, p: np.ndarray | None, q: np.ndarray | None,
            rng: np.random.Generator) -> int:
    """The token this level keeps at a drafted position: the proposal itself, or its replacement."""
    if p is None:
        return int(logits.argmax())
    replacement = accept_or_resample(proposed, p, q, rng)
    return proposed if replacement is None else replacement


def _adapt(k: int, controls: DraftControls, drafted: int, accepted: int) -> int:
    """transformers' heuristic schedule: draft more after a full acceptance, less after a rejection."""
    if not controls.adaptive:
        return k
    return min(k + 2, 4 * controls.k) if accepted == drafted else max(1, k - 1)


def _top_probability(logits: np.ndarray, probs: np.ndarray | None) -> float:
    if probs is not None:
        return float(probs.max())
    return float(top_probability(logits))
