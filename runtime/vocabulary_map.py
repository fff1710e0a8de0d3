"""The full-vocabulary logits of a reduced-vocabulary draft level, so that every level above it is unchanged.

A reduced level (exporter/reduced_vocabulary.py) outputs N logits, one per id of its table. Spreading them
back over the whole vocabulary, with -inf for every other id, makes its greedy token the argmax over its N
rows and its sampling distribution exactly zero outside the table: the level above then verifies against
the distribution the draft really drew from, and speculative sampling stays exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class VocabularyMap:
    ids: np.ndarray   # the full-vocabulary id of each of the level's logits, increasing
    size: int         # the full vocabulary

    @classmethod
    def read(cls, level_dir: Path, ids_file: str) -> "VocabularyMap":
        ids = np.load(level_dir / ids_file)
        size = int(json.loads((level_dir / "config.json").read_text())["vocab_size"])
        if ids.ndim != 1 or not ids.size or ids.min() < 0 or ids.max() >= size or (np.diff(ids) <= 0).any():
            raise ValueError(f"{level_dir / ids_file}: not an increasing table of ids below {size}")
        return cls(ids, size)

    def expand(self, logits: np.ndarray) -> np.ndarray:
        """[rows, N] logits -> [rows, size], -inf outside the table."""
        full = np.full((logits.shape[0], self.size), -np.inf, np.float32)
        full[:, self.ids] = logits
        return full
