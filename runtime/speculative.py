"""Multi-level speculative decoding: every level drafts for the one above by running speculation itself.

A chain is a list of levels from the target down. Each level below the target is a *drafter* with two
methods (as in transformers' CandidateGenerator): `propose` up to n tokens continuing a sequence, with the
distribution each token was drawn from, and `update` with how many of them the level above accepted.
A model level proposes by running verify rounds of its own model against its own drafter, so the chain
recurses to any depth; the prompt-lookup drafter ends a chain at no model cost.

Every method works on a batch of jobs (one per generation: a server's requests, or a single prompt): a level
runs ONE forward pass for all the jobs that still want tokens from it, and each job keeps its own cache
sequence, draft length, random stream and stats, so what a job gets never depends on what shares its batch.

Exactness: a level's verify round returns tokens distributed exactly as its own model (greedy: its own
argmax), whatever its drafter proposed. So every level's proposals are samples of that level's model, and
the target's output is the target's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .kvmodel import KVModel, Sequence
from .sampling import Sampling, accept_or_resample, distribution, draw, top_probability


@dataclass
class DraftControls:
    """How a level drafts for the level above it."""
    k: int = 8                 # most tokens proposed per request (the start value when adaptive)
    confidence: float = 0.0    # stop drafting after a token whose top probability is below this (0 = never)
    adaptive: bool = False     # grow k by 2 after a fully accepted proposal, shrink by 1 after a rejection
    extend: int = 0            # after drafting stops, append up to this many prompt-lookup tokens (free guesses)

    def validate(self, name: str) -> None:
        if self.k < 1:
            raise ValueError(f"level {name}: k={self.k} must be at least 1")
        if not 0 <= self.confidence < 1:
            raise ValueError(f"level {name}: confidence={self.confidence} must be in [0, 1)")
        if self.extend < 0:
            raise ValueError(f"level {name}: extend={self.extend} must be at least 0")


@dataclass
class LevelStats:
    name: str
    forward_passes: int = 0
    seconds: float = 0.0
    drafts: int = 0              # proposals this level made to the level above (verify steps with a draft)
    drafted: int = 0             # tokens this level proposed to the level above
    accepted: int = 0            # of those, accepted
    drafted_at: list[int] = field(default_factory=list)   # by draft position
    accepted_at: list[int] = field(default_factory=list)
    verify_rounds: int = 0       # this level's own verify steps
    committed: int = 0           # tokens those steps produced, bonus included

    def record_verification(self, drafted: int, accepted: int) -> None:
        self.drafts += 1
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
        self.drafts += other.drafts
        self.verify_rounds += other.verify_rounds
        self.committed += other.committed
        self.record_counts(other.drafted, other.accepted, other.drafted_at, other.accepted_at)

    def summary(self) -> dict:
        return {
            "level": self.name,
            "forward_passes": self.forward_passes,
            "seconds": round(self.seconds, 3),
            "drafts": self.drafts,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.accepted / self.drafted, 3) if self.drafted else None,
            "mean_accepted_length": round(self.committed / self.verify_rounds, 3) if self.verify_rounds else None,
            "acceptance_by_position": [round(a / d, 3) for a, d in zip(self.accepted_at, self.drafted_at)],
        }


@dataclass
class Job:
    """One generation's state in every level of its chain."""
    sampling: Sampling
    rng: np.random.Generator
    controls: dict[str, DraftControls]          # by drafting level name
    k: dict[str, int] = field(default_factory=dict)            # current draft length (changes when adaptive)
    sequences: dict[str, Sequence] = field(default_factory=dict)  # by model level name
    stats: dict[str, LevelStats] = field(default_factory=dict)

    def __post_init__(self):
        self.k = {name: control.k for name, control in self.controls.items()}


Proposal = tuple[list[int], list[np.ndarray | None]]   # tokens, and the distribution each was drawn from
Round = tuple[list[int], list[np.ndarray | None], np.ndarray]  # verified tokens, their distributions, logits


class Drafter(Protocol):
    name: str

    def propose(self, jobs: list[Job], tokens: list[list[int]], limits: list[int]) -> list[Proposal]: ...

    def update(self, job: Job, drafted: int, accepted: int) -> None: ...


class ModelLevel:
    """A model that emits tokens of its own distribution, several per forward pass when it has a drafter."""

    def __init__(self, name: str, model: KVModel, drafter: Drafter | None):
        self.name = name
        self.model = model
        self.drafter = drafter

    def step(self, jobs: list[Job], tokens: list[list[int]], limits: list[int]) -> list[Round]:
        """One forward pass for all jobs: each gets 1..limit new tokens, their distributions (None when greedy)
        and logits."""
        drafts: list[Proposal] = [([], [])] * len(jobs)
        asking = [i for i, limit in enumerate(limits) if limit > 1]
        if self.drafter is not None and asking:
            proposals = self.drafter.propose([jobs[i] for i in asking], [tokens[i] for i in asking],
                                             [limits[i] - 1 for i in asking])
            for i, proposal in zip(asking, proposals):
                drafts[i] = proposal
        started = time.perf_counter()
        logits = self.model.run([(job.sequences[self.name], sequence + draft, len(draft) + 1)
                                 for job, sequence, (draft, _) in zip(jobs, tokens, drafts)])
        elapsed = time.perf_counter() - started

        rounds = []
        for job, (draft, draft_dists), rows in zip(jobs, drafts, logits):
            out, dists = _verify_round(draft, draft_dists, rows, job.sampling, job.rng)
            if self.drafter is not None and draft:
                job.stats[self.drafter.name].record_verification(len(draft), len(out) - 1)
                self.drafter.update(job, len(draft), len(out) - 1)
            stats = job.stats[self.name]
            stats.seconds += elapsed
            stats.forward_passes += 1
            stats.verify_rounds += 1
            stats.committed += len(out)
            rounds.append((out, dists, rows[:len(out)]))
        return rounds

    # The Drafter side: used when this level sits below another.
    def propose(self, jobs: list[Job], tokens: list[list[int]], limits: list[int]) -> list[Proposal]:
        wants = [min(job.k[self.name], limit) for job, limit in zip(jobs, limits)]
        proposals: list[Proposal] = [([], []) for _ in jobs]
        active = [i for i, want in enumerate(wants) if want > 0]
        while active:
            rounds = self.step([jobs[i] for i in active], [tokens[i] + proposals[i][0] for i in active],
                               [wants[i] - len(proposals[i][0]) for i in active])
            still = []
            for i, (new, new_dists, new_logits) in zip(active, rounds):
                out, dists = proposals[i]
                confidence = jobs[i].controls[self.name].confidence
                unsure = False
                for token, p, row in zip(new, new_dists, new_logits):
                    out.append(token)
                    dists.append(p)
                    # An unsure token is still proposed (it is computed, and verifying it costs the level above
                    # next to nothing), but drafting stops after it: the tokens after it would rarely survive.
                    if confidence and _top_probability(row, p) < confidence:
                        unsure = True
                        break
                if not unsure and len(out) < wants[i]:
                    still.append(i)
            active = still
        for job, sequence, limit, (out, dists) in zip(jobs, tokens, limits, proposals):
            # The level above verifies a few more tokens at nearly no cost (its step is flat in n), so where the
            # text repeats itself, what followed last time is a guess worth adding after this level's draft.
            room = min(job.controls[self.name].extend, limit - len(out))
            if room <= 0:
                continue
            found = lookup(sequence + out, room)
            out.extend(found)
            dists.extend([None] * len(found))  # deterministic guesses: q is a point mass, as for PromptLookup
        return proposals

    def update(self, job: Job, drafted: int, accepted: int) -> None:
        job.k[self.name] = _adapt(job.k[self.name], job.controls[self.name], drafted, accepted)


class PromptLookup:
    """Drafts by copying what followed the latest earlier occurrence of the text's last n-gram."""

    def __init__(self, max_ngram: int = 3):
        self.name = "lookup"
        self.max_ngram = max_ngram

    def propose(self, jobs: list[Job], tokens: list[list[int]], limits: list[int]) -> list[Proposal]:
        proposals = []
        for job, sequence, limit in zip(jobs, tokens, limits):
            started = time.perf_counter()
            found = lookup(sequence, min(job.k[self.name], limit), self.max_ngram)
            job.stats[self.name].seconds += time.perf_counter() - started
            proposals.append((found, [None] * len(found)))  # deterministic proposals: q is a point mass
        return proposals

    def update(self, job: Job, drafted: int, accepted: int) -> None:
        job.k[self.name] = _adapt(job.k[self.name], job.controls[self.name], drafted, accepted)


def lookup(tokens: list[int], want: int, max_ngram: int = 3) -> list[int]:
    """Up to `want` tokens that followed the latest earlier occurrence of the longest matching tail n-gram."""
    array = np.asarray(tokens)
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        tail = array[-n:]
        windows = np.lib.stride_tricks.sliding_window_view(array[:-1], n)
        hits = np.flatnonzero((windows == tail).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return tokens[start:start + want]
    return []


def _verify_round(draft: list[int], draft_dists: list[np.ndarray | None], logits: np.ndarray,
                  sampling: Sampling, rng: np.random.Generator) -> tuple[list[int], list[np.ndarray | None]]:
    """The tokens a level keeps from one verify pass: the accepted draft prefix, then its own next token."""
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
    return out, dists


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
