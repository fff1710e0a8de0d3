import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402

from specqd.exporter.export import ExportOptions, export  # noqa: E402
from specqd.models.cache import cache_root  # noqa: E402
from specqd.runtime import mxfp4_kernel  # noqa: E402


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


@pytest.fixture(scope="session")
def tiny_export(tiny_target, tiny_draft, tmp_path_factory) -> Path:
    """target; target-int8 (agrees often: long accepted runs); target-mxfp4 (rejects often); draft."""
    out = tmp_path_factory.mktemp("runtime") / "export"
    export(ExportOptions(model=str(tiny_target), out_dir=out, drafts=[str(tiny_draft)], formats=["int8", "mxfp4"]))
    return out


@pytest.fixture
def mxfp4_kernel_built(monkeypatch) -> mxfp4_kernel.Kernel:
    """specqd's MXFP4 kernel as this install packages it (scripts/setup.sh's `pip install -e .` compiles it).

    Every export folder the test opens runs its MXFP4 levels on it, on a CPU with AMX too, where the runtime
    otherwise prefers OpenVINO's own path: the kernel is tested wherever it can run.
    """
    path = mxfp4_kernel.library_path()
    assert path.exists(), f"{path} is missing: scripts/setup.sh builds it"
    edited = [source.name for source in (Path(__file__).parents[1] / "runtime" / "csrc").iterdir()
              if source.stat().st_mtime > path.stat().st_mtime]
    assert not edited, f"{', '.join(edited)} changed after the kernel was built: re-run scripts/setup.sh"
    kernel = mxfp4_kernel.Kernel.find(on_amx=True)
    if kernel.library is None:
        pytest.skip(f"specqd's kernel is {kernel.unavailable}: only OpenVINO's MXFP4 path can run here")
    monkeypatch.setattr(mxfp4_kernel.Kernel, "find", classmethod(lambda cls, on_amx=False: kernel))
    return kernel


@pytest.fixture(scope="session")
def real_export() -> Path:
    """The real Qwen2.5-Coder-0.5B: target and its MXFP4 copy, cached (about 3 minutes the first time)."""
    out = cache_root() / "exports" / "test-qwen2.5-coder-0.5b"
    if not (out / "specqd.json").exists():
        export(ExportOptions(model="qwen2.5-coder-0.5b", out_dir=out, formats=["mxfp4"]))
    return out
