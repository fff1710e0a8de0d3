"""Measure what speculative decoding lives on: each level's step time by tokens per step, and how often a
level's greedy token equals the level above's.

Step times go through the runtime's own KVModel (paged KV cache), after a real prompt, so they are
the times a verify round pays. Agreement is teacher-forced on the target's own greedy continuation, kept
position by position (with the lower level's confidence) so that tune can replay drafting policies on it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from ..pipeline import LOOKUP, ExportFolder
from ..sampling import top_probability
from ..speculative import lookup


def step_times(folder: ExportFolder, name: str, prompt: list[int], tokens: list[int],
               repeats: int = 5) -> dict[int, float]:
    """Median milliseconds of one forward pass over n new tokens, for each n in `tokens`."""
    model = folder.model(name)
    model.reset()
    model.logits(prompt, 1)
    filler = [prompt[i % len(prompt)] for i in range(max(tokens))]
    result = {}
    for n in tokens:
        sequence = prompt + filler[:n]
        samples = []
        for _ in range(repeats + 1):  # the first of each shape warms up
            started = time.perf_counter()
            model.logits(sequence, n)
            samples.append((time.perf_counter() - started) * 1000)
        result[n] = statistics.median(samples[1:])
    return result


def prefill_ms(folder: ExportFolder, name: str, prompt: list[int]) -> float:
    """Milliseconds to read the prompt into a fresh cache (after one warm-up read)."""
    model = folder.model(name)
    model.reset()
    model.logits(prompt, 1)
    model.reset()
    started = time.perf_counter()
    model.logits(prompt, 1)
    return (time.perf_counter() - started) * 1000


def greedy_continuation(folder: ExportFolder, text: str, tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, the target's greedy continuation)."""
    return folder.encode(text), folder.pipeline(["target"]).generate(text, max_new_tokens=tokens).tokens


def predictions(folder: ExportFolder, name: str, prompt: list[int], continuation: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The level's greedy token at every continuation position, and its top probability, in one forward pass."""
    model = folder.model(name)
    model.reset()
    logits = model.logits(prompt + continuation[:-1], len(continuation))
    return logits.argmax(axis=-1), top_probability(logits)


def lookup_matches(prompt: list[int], continuation: list[int], upper: np.ndarray) -> np.ndarray:
    """Where prompt lookup's first proposed token equals the upper level's token (no proposal: a miss)."""
    hits = []
    for position, expected in enumerate(upper):
        proposal = lookup(prompt + continuation[:position], 1)
        hits.append(bool(proposal) and proposal[0] == expected)
    return np.array(hits)


@dataclass
class Trace:
    """How a lower level drafts for an upper one along the target's own text, position by position."""
    matches: list[np.ndarray]    # per sample text: the lower level's greedy token equals the upper level's
    sure: list[np.ndarray]       # per sample text: the lower level's top probability (1 for prompt lookup)

    @property
    def agreement(self) -> float:
        return float(np.mean([m.mean() for m in self.matches]))


def traces(folder: ExportFolder, names: list[str], texts: list[tuple[list[int], list[int]]]) -> dict:
    """A Trace for every ordered pair (upper, lower) of levels, lookup included as a lower level only.

    Teacher-forced on the target's text: while a draft's proposals are accepted it continues exactly that text,
    so these are the tokens and probabilities it drafts with until its first rejection in a round.
    """
    predicted = {name: [predictions(folder, name, p, c) for p, c in texts] for name in names}
    result: dict[tuple[str, str], Trace] = {}
    for upper in names:
        upper_tokens = [tokens for tokens, _ in predicted[upper]]
        for lower in names + [LOOKUP]:
            if lower == upper:
                continue
            if lower == LOOKUP:
                matches = [lookup_matches(p, c, u) for (p, c), u in zip(texts, upper_tokens)]
                result[(upper, lower)] = Trace(matches, [np.ones(len(m)) for m in matches])
            else:
                result[(upper, lower)] = Trace([u == tokens for u, (tokens, _) in zip(upper_tokens, predicted[lower])],
                                               [sure for _, sure in predicted[lower]])
    return result
