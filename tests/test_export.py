"""export-mxfp4 on tiny random-weight models: the levels it writes, and how it refuses bad input."""

import json
import shutil
from collections import Counter

import openvino as ov
import pytest

from specqd.exporter import cli, ir
from specqd.runtime.manifest import Manifest
from specqd.runtime.mxfp4_kernel import OPENVINO_KERNEL, SPECQD_KERNEL, Kernel


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECQD_CACHE", str(tmp_path / "cache"))


def run(*argv) -> int:
    return cli.main([str(arg) for arg in argv])


def weight_types(level_dir) -> Counter:
    model = ov.Core().read_model(level_dir / ir.MODEL_XML)
    return Counter(op.get_element_type().get_type_name() for op in model.get_ops()
                   if op.get_type_name() == "Constant" and len(op.shape) >= 2)


def assert_nothing_written(out):
    assert not out.exists()
    assert [path.name for path in out.parent.iterdir() if path.name.startswith(f".{out.name}")] == []


def test_target_and_draft_become_three_self_contained_levels(tiny_target, tiny_draft, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny_target, out, "--draft", tiny_draft) == 0

    manifest = Manifest.read(out)
    assert [(level.name, level.role, level.format) for level in manifest.levels] == [
        ("target", "target", "bf16"), ("target-mxfp4", "draft", "mxfp4"), ("draft", "draft", "bf16")]
    for level in manifest.levels:
        folder = out / level.path
        for name in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json"):
            assert (folder / name).is_file(), f"{level.name} lacks {name}"
        assert level.bytes == ir.folder_bytes(folder)
    assert len({level.tokenizer_sha256 for level in manifest.levels}) == 1
    assert manifest.level("draft").source == str(tiny_draft)
    assert manifest.tools["openvino"].startswith("2026.4")
    # The summary names the kernel each level will run on here: the packaged one for MXFP4, where this CPU allows.
    kernels = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()
               if line.split()[:1] in (["target"], ["target-mxfp4"], ["draft"])}
    mxfp4 = SPECQD_KERNEL if Kernel.find().library is not None else OPENVINO_KERNEL
    assert kernels == {"target": OPENVINO_KERNEL, "target-mxfp4": mxfp4, "draft": OPENVINO_KERNEL}


def test_the_mxfp4_level_holds_only_e2m1_weights_with_e8m0_scales(tiny_target, tmp_path):
    out = tmp_path / "out"
    assert run(tiny_target, out) == 0
    types = weight_types(out / "target-mxfp4")
    assert types["f4e2m1"] > 0 and types["f8e8m0"] == types["f4e2m1"]
    assert types["bf16"] == 0 and types["f8e4m3"] == 0  # embedding and lm_head too: nothing left to decompress
    assert weight_types(out / "target")["f4e2m1"] == 0
    assert Manifest.read(out).level("target-mxfp4").embeddings == "mxfp4"


def test_embedding_and_lm_head_can_stay_bf16(tiny_target, tmp_path):
    out = tmp_path / "out"
    assert run(tiny_target, out, "--embeddings", "bf16") == 0
    types = weight_types(out / "target-mxfp4")
    assert types["bf16"] == 2 and types["f4e2m1"] > 0
    assert Manifest.read(out).level("target-mxfp4").embeddings == "bf16"


@pytest.mark.parametrize("fmt, weight_type", [("int4_sym", "i4"), ("nvfp4", "f4e2m1"), ("mxfp8", "f8e4m3"),
                                              ("int8", "u8")])
def test_other_weight_formats_for_comparison(tiny_target, tmp_path, fmt, weight_type):
    out = tmp_path / "out"
    assert run(tiny_target, out, "--format", fmt) == 0
    assert weight_types(out / f"target-{fmt}")[weight_type] > 0


def test_drafts_can_be_quantized_and_kept_in_several_formats(tiny_target, tiny_draft, tmp_path):
    out = tmp_path / "out"
    assert run(tiny_target, out, "--draft", tiny_draft, "--draft-format", "mxfp4,int4_sym") == 0
    names = [level.name for level in Manifest.read(out).levels]
    assert names == ["target", "target-mxfp4", "draft-mxfp4", "draft-int4_sym"]
    assert not (out / "draft").exists() and not (out / ".draft-bf16").exists()


def test_a_gguf_file_is_a_valid_model(tiny_gguf, tmp_path):
    out = tmp_path / "out"
    assert run(tiny_gguf, out) == 0
    target = Manifest.read(out).level("target")
    assert target.source == str(tiny_gguf) and len(target.source_sha256) == 64


def test_an_existing_output_is_kept_unless_forced(tiny_target, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert run(tiny_target, out) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    assert run(tiny_target, out, "--force") == 0
    assert not (out / "mine.txt").exists() and (out / "specqd.json").exists()


def test_a_failure_midway_leaves_neither_output_nor_scratch(tiny_target, tmp_path, monkeypatch):
    def broken_quantize(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ir, "quantize", broken_quantize)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        run(tiny_target, out)
    assert_nothing_written(out)


def truncated_safetensors(tiny_target, tmp_path):
    folder = shutil.copytree(tiny_target, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return folder


def unsupported_architecture(tiny_target, tmp_path):
    folder = shutil.copytree(tiny_target, tmp_path / "gpt2")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    return folder


def corrupt_gguf(tiny_target, tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    return path


def not_a_checkpoint(tiny_target, tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def not_a_model_file(tiny_target, tmp_path):
    return tiny_target / "config.json"


@pytest.mark.parametrize("make_model, message", [
    (lambda target, tmp: tmp / "missing", "no such file or folder"),
    (lambda target, tmp: "qwen-9000", "unknown model 'qwen-9000'"),
    (not_a_checkpoint, "no config.json"),
    (not_a_model_file, "not a checkpoint folder, a .gguf file or a .onnx file"),
    (truncated_safetensors, "corrupt safetensors"),
    (unsupported_architecture, "unsupported architecture 'gpt2'"),
    (corrupt_gguf, "not a readable GGUF file"),
])
def test_bad_models_are_refused_by_name_before_any_work(tiny_target, tmp_path, capsys, make_model, message):
    model = make_model(tiny_target, tmp_path)
    out = tmp_path / "out"
    assert run(model, out) == 1
    error = capsys.readouterr().err
    assert message in error and (str(model) in error or "qwen-9000" in error)
    assert_nothing_written(out)


def test_a_draft_with_another_tokenizer_is_refused(tiny_target, tiny_foreign_draft, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny_target, out, "--draft", tiny_foreign_draft) == 1
    assert "tokenizer of draft" in capsys.readouterr().err
    assert_nothing_written(out)


@pytest.mark.parametrize("option, message", [
    (["--format", "fp3"], "--format 'fp3'"),
    (["--draft-format", "int5"], "--draft-format 'int5'"),
    (["--format", "mxfp4,mxfp4"], "must not repeat"),
])
def test_invalid_options_name_the_option(tiny_target, tmp_path, capsys, option, message):
    out = tmp_path / "out"
    assert run(tiny_target, out, *option) == 1
    assert message in capsys.readouterr().err
    assert_nothing_written(out)


def test_an_invalid_choice_is_a_usage_error(tiny_target, tmp_path):
    with pytest.raises(SystemExit) as raised:
        run(tiny_target, tmp_path / "out", "--embeddings", "fp8")
    assert raised.value.code == 2
