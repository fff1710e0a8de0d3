import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_target(tiny_dir) -> Path:
    return tiny_models.write_checkpoint(tiny_dir / "target", seed=0)


@pytest.fixture(scope="session")
def tiny_draft(tiny_dir) -> Path:
    """Same tokenizer as the target, other weights."""
    return tiny_models.write_checkpoint(tiny_dir / "draft", seed=1)


@pytest.fixture(scope="session")
def tiny_foreign_draft(tiny_dir) -> Path:
    """A draft whose tokenizer was trained to another vocabulary size: its ids mean other text."""
    return tiny_models.write_checkpoint(tiny_dir / "foreign", vocab_size=300, seed=1)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir) -> Path:
    (tiny_dir / "gguf").mkdir()
    return tiny_models.write_gguf(tiny_dir / "gguf" / "tiny.gguf", seed=0)
