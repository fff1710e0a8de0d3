"""Measure what speculative decoding lives on: each level's step time by tokens per step, and how often a
level's greedy token equals the level above's.

Step times go through the runtime's own KVModel (paged KV cache), after a real prompt, so they are
the times a verify round pays. Agreement is teacher-forced on the target's own greedy continuation.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .pipeline import LOOKUP, ExportFolder
from .speculative import DraftControls, PromptLookup


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


def argmax_tokens(folder: ExportFolder, name: str, prompt: list[int], continuation: list[int]) -> np.ndarray:
    """The level's greedy prediction at every continuation position, in one forward pass."""
    model = folder.model(name)
    model.reset()
    return model.logits(prompt + continuation[:-1], len(continuation)).argmax(axis=-1)


def lookup_agreement(prompt: list[int], continuation: list[int], upper: np.ndarray) -> float:
    """How often prompt lookup's first proposed token equals the upper level's token (no proposal: a miss)."""
    lookup = PromptLookup(DraftControls(k=1))
    hits = 0
    for position, expected in enumerate(upper):
        proposal, _ = lookup.propose(prompt + continuation[:position], 1, None, None)
        hits += bool(proposal) and proposal[0] == expected
    return hits / len(upper)


def agreements(folder: ExportFolder, names: list[str], texts: list[tuple[list[int], list[int]]]) -> dict:
    """Agreement of every ordered pair (upper, lower) of levels, lookup included as a lower level only."""
    predictions = {name: [argmax_tokens(folder, name, p, c) for p, c in texts] for name in names}
    result: dict[tuple[str, str], float] = {}
    for upper in names:
        for lower in names + [LOOKUP]:
            if lower == upper:
                continue
            if lower == LOOKUP:
                scores = [lookup_agreement(p, c, u) for (p, c), u in zip(texts, predictions[upper])]
            else:
                scores = [float((u == l_).mean()) for u, l_ in zip(predictions[upper], predictions[lower])]
            result[(upper, lower)] = float(np.mean(scores))
    return result
