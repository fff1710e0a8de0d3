"""llama.cpp rows in specqd bench: which configurations exist, the GGUFs they read, and what a missing piece says."""

import json
import re

import numpy as np
import pytest
import tiny_models

from specqd.exporter.export import ExportOptions, export
from specqd.models.cache import cache_root
from specqd.runtime import cli
from specqd.runtime.manifest import Manifest
from specqd.runtime.tools import bench, llamacpp_gguf
from specqd.runtime.tools.llamacpp_build import LlamaCppBuild, LlamaCppError
from specqd.runtime.tools.llamacpp_engine import LlamaCppConfig, LlamaCppEngine

BUILT = LlamaCppBuild.cached()  # the real cache's build, before any test points SPECQD_CACHE elsewhere


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    """A cache of its own (GGUFs are made into it), sharing the real cache's llama.cpp build if there is one."""
    root = tmp_path_factory.mktemp("cache")
    if BUILT.server.is_file():
        (root / BUILT.root.name).symlink_to(BUILT.root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPECQD_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def gguf_export(gguf_cache, tiny_gguf, tmp_path_factory):
    """target and draft exported from GGUF files, as the registry's models are; target-int8 is not BF16."""
    folder = tmp_path_factory.mktemp("llamacpp")
    draft = tiny_models.write_gguf(folder / "draft.gguf", seed=1)
    out = folder / "export"
    export(ExportOptions(model=str(tiny_gguf), out_dir=out, drafts=[str(draft)], formats=["int8"]))
    return out


def levels_of(export_dir) -> dict:
    return {level.name: level for level in Manifest.read(export_dir).levels}


def test_llamacpp_configurations_run_bf16_levels_their_shipped_gguf_or_lookup(gguf_export):
    folder = bench.ExportFolder(gguf_export)
    names = ["llamacpp:target", "llamacpp:target,draft", "llamacpp:target,lookup", "llamacpp:target-q4km",
             "llamacpp:target-int8", "llamacpp:target,target-int8", "llamacpp:target,draft-q4km"]
    assert bench.available_configs(folder, names) == [
        "llamacpp:target", "llamacpp:target,draft", "llamacpp:target,lookup", "llamacpp:target-q4km",
        "llamacpp:target,draft-q4km"]
    assert bench.split_name("llamacpp:target,draft") == ("llama.cpp", ["target", "draft"])
    assert bench.split_name("genai:target,lookup") == ("openvino-genai", ["target", "lookup"])
    assert bench.split_name("target,lookup") == ("specqd", ["target", "lookup"])


def test_a_missing_llamacpp_build_names_the_binary_and_the_command_that_builds_it(tmp_path):
    with pytest.raises(LlamaCppError, match=r"llama-server is missing; run `specqd llamacpp OUT_DIR`"):
        LlamaCppBuild(tmp_path / "llamacpp").require_server()


def test_a_missing_gguf_names_the_file_and_the_command_that_makes_it(gguf_export, capsys):
    missing = llamacpp_gguf.bf16_gguf(levels_of(gguf_export)["target"])
    assert not missing.exists()
    with pytest.raises(LlamaCppError, match=re.escape(f"{missing}; run `specqd llamacpp OUT_DIR`")):
        bench.llamacpp_config(levels_of(gguf_export), ["target", "draft"])
    assert cli.main(["bench", str(gguf_export), "--configs", "llamacpp:target,draft", "--limit", "1"]) == 1
    assert f"missing: {missing}" in capsys.readouterr().err


def test_a_level_not_exported_from_a_gguf_has_no_gguf_for_llamacpp(tiny_target, tmp_path):
    out = tmp_path / "export"
    export(ExportOptions(model=str(tiny_target), out_dir=out))
    with pytest.raises(LlamaCppError, match="not from a GGUF file"):
        bench.llamacpp_config(levels_of(out), ["target"])


def test_chains_longer_than_a_draft_are_refused(gguf_export):
    with pytest.raises(LlamaCppError, match="alone or with one draft model or lookup"):
        bench.llamacpp_config(levels_of(gguf_export), ["target", "draft", "lookup"])


@pytest.fixture(scope="module")
def prepared(gguf_export):
    """What `specqd llamacpp OUT_DIR` makes besides the build: the BF16 GGUF of every BF16 level."""
    return llamacpp_gguf.prepare(Manifest.read(gguf_export).levels)


def test_the_bf16_gguf_holds_exactly_the_weights_of_specqd_bf16_target(gguf_export, prepared):
    import gguf
    import torch
    from safetensors.torch import load_file

    target = levels_of(gguf_export)["target"]
    path = llamacpp_gguf.bf16_gguf(target)
    assert path in prepared and len(prepared) == 2  # target and draft; target-int8 is not BF16
    reader = gguf.GGUFReader(path)
    assert llamacpp_gguf.file_type(path) == gguf.LlamaFileType.MOSTLY_BF16
    assert reader.get_field("tokenizer.ggml.tokens").contents() == gguf.GGUFReader(
        llamacpp_gguf.source_gguf(target)).get_field("tokenizer.ggml.tokens").contents()
    # The exporter's BF16 checkpoint, which the target IR was made from.
    checkpoint = load_file(cache_root() / "checkpoints" / f"gguf-{target.source_sha256[:16]}" / "model.safetensors")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, 2)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    for hf_name, expected in checkpoint.items():
        stem, suffix = hf_name.rsplit(".", 1)
        tensor = tensors[f"{names.get_name(stem)}.{suffix}"]
        assert tensor.tensor_type == (gguf.GGMLQuantizationType.F32 if expected.dim() == 1
                                      else gguf.GGMLQuantizationType.BF16)
        values = gguf.dequantize(tensor.data, tensor.tensor_type)
        assert np.array_equal(values, expected.to(torch.float32).numpy()), hf_name


def test_the_shipped_gguf_row_refuses_a_file_that_is_not_q4km(gguf_export, prepared):
    with pytest.raises(LlamaCppError, match="is not a Q4_K_M GGUF"):
        bench.llamacpp_config(levels_of(gguf_export), ["target-q4km"])


def test_server_arguments_say_which_speculative_decoding_runs(tmp_path):
    model, draft = tmp_path / "model.gguf", tmp_path / "draft.gguf"
    alone = LlamaCppConfig(model).server_arguments()
    assert "--spec-type" not in alone and alone[alone.index("-t") + 1] == "2"
    drafted = LlamaCppConfig(model, draft, draft_max=12, draft_p_min=0.6).server_arguments()
    assert drafted[drafted.index("--spec-type") + 1] == "draft-simple"
    assert drafted[drafted.index("-md") + 1] == str(draft)
    assert drafted[drafted.index("--spec-draft-n-max") + 1] == "12"
    assert drafted[drafted.index("--spec-draft-p-min") + 1] == "0.6"
    lookup = LlamaCppConfig(model, prompt_lookup=True).server_arguments()
    assert lookup[lookup.index("--spec-type") + 1] == "ngram-simple"
    with pytest.raises(LlamaCppError, match="not both"):
        LlamaCppConfig(model, draft, prompt_lookup=True).server_arguments()


def test_on_a_cpu_with_amx_weights_keep_their_file_layout(tmp_path, monkeypatch):
    """This llama.cpp's AMX path for quantized weights crashes at its first pass (ggml-org/llama.cpp#20824)."""
    from specqd.runtime.tools import llamacpp_engine

    monkeypatch.setattr(llamacpp_engine, "cpu_has", lambda flag: flag == "amx_int8")
    assert "--no-repack" in LlamaCppConfig(tmp_path / "model.gguf").server_arguments()
    monkeypatch.setattr(llamacpp_engine, "cpu_has", lambda flag: False)
    assert "--no-repack" not in LlamaCppConfig(tmp_path / "model.gguf").server_arguments()


def require_build():
    if not BUILT.server.is_file():
        pytest.skip(f"llama.cpp is not built ({BUILT.server}): `specqd llamacpp OUT_DIR` builds it")


def test_a_draft_identical_to_the_target_has_its_drafts_accepted(gguf_export, prepared):
    require_build()
    target = llamacpp_gguf.bf16_gguf(levels_of(gguf_export)["target"])
    prompt = bench.ExportFolder(gguf_export).encode("def fibonacci(n):")
    with LlamaCppEngine(LlamaCppConfig(target), BUILT.server) as engine:
        alone = engine.generate(prompt, 24)
    # p_min 0: a random tiny model is never sure of a token, and a stop at p < 0.5 would draft nothing.
    with LlamaCppEngine(LlamaCppConfig(target, draft=target, draft_max=4, draft_p_min=0.0), BUILT.server) as engine:
        drafted = engine.generate(prompt, 24)
    assert alone.drafted == 0 and len(alone.tokens) == 24
    assert drafted.tokens == alone.tokens
    assert drafted.drafted > 0 and drafted.accepted == drafted.drafted
    assert drafted.target_steps == len(drafted.tokens) - drafted.accepted < len(alone.tokens)


def test_bench_runs_llamacpp_rows_beside_ours(gguf_export, prepared, tmp_path):
    require_build()
    report = tmp_path / "bench.json"
    assert cli.main(["bench", str(gguf_export), "--prompts", "humaneval:0-1", "--max-new-tokens", "16",
                     "--f32-prompts", "0", "--configs",
                     "target;llamacpp:target;llamacpp:target,draft;llamacpp:target,lookup",
                     "--json", str(report)]) == 0
    configs = {config["name"]: config for config in json.loads(report.read_text())["configs"]}
    alone, drafted = configs["llamacpp:target"], configs["llamacpp:target,draft"]
    assert alone["engine"] == "llama.cpp" and alone["tokens_per_second"] > 0
    assert alone["agreement"] > 0.5  # the same weights as our target, computed in another engine
    assert drafted["levels"][1]["level"] == "draft" and drafted["agreement"] > 0.5
    assert drafted["weights_bytes"]["draft"] == llamacpp_gguf.bf16_gguf(levels_of(gguf_export)["draft"]).stat().st_size
    assert "| llamacpp:target,lookup | llama.cpp |" in report.with_suffix(".md").read_text()
