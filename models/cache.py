"""Where fetched and converted models live, and how a cache entry appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    """Outside the repo so that later runs and fresh clones reuse the work; SPECQD_CACHE overrides."""
    return Path(os.environ.get("SPECQD_CACHE", Path.home() / ".cache" / "specqd")).expanduser()


def say(message: str) -> None:
    """Progress goes to stderr so that stdout stays clean for results."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a scratch path beside `final`; rename it into place only if the block succeeds.

    A later call trusts whatever exists at `final`, so an interrupted or failed stage must leave nothing
    there. The scratch path is on the same filesystem, which makes the rename atomic.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f".{final.name}.partial-{os.getpid()}")
    _remove(scratch)
    try:
        yield scratch
        os.replace(scratch, final)
    finally:
        _remove(scratch)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
