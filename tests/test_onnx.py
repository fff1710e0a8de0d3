"""ONNX in and out on tiny random models: ONNX LLMs as export input, and MXFP4 ONNX levels as output.

Producers of ONNX LLMs: `export-onnx` (torch's dynamo exporter at opset 23, ONNX's Attention op: accepted),
the same exporter at opset 18 (decomposed attention, as TorchScript and optimum-onnx write it: refused) and
onnxruntime-genai's builder (com.microsoft GroupQueryAttention: refused).
"""

import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import openvino as ov
import pytest

from specqd.exporter import cli, onnx_cli
from specqd.exporter.export import ExportOptions, export
from specqd.exporter.onnx_export import export_onnx
from specqd.runtime.kvmodel import KVModel
from specqd.runtime.manifest import Manifest
from specqd.runtime.pipeline import Pipeline

PROMPT = list(range(3, 40))


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_target, onnx_dir):
    """export-onnx's output folder: model.onnx (+ .data), config and tokenizer files."""
    assert onnx_cli.main([str(tiny_target), str(onnx_dir / "opset23")]) == 0
    return onnx_dir / "opset23"


@pytest.fixture(scope="session")
def direct_export(tiny_target, onnx_dir):
    """The same checkpoint exported the usual way (optimum-intel), to compare against."""
    out = onnx_dir / "direct"
    export(ExportOptions(model=str(tiny_target), out_dir=out, formats=["mxfp4"]))
    return out


@pytest.fixture(scope="session")
def onnx_export(tiny_onnx, onnx_dir):
    """export-mxfp4 of the ONNX file, with the MXFP4 level also written as ONNX."""
    out = onnx_dir / "from-onnx"
    assert cli.main([str(tiny_onnx / "model.onnx"), str(out), "--to", "onnx"]) == 0
    return out


def run(*argv) -> int:
    return cli.main([str(arg) for arg in argv])


def logits(level_dir, kernel, precision="f32") -> np.ndarray:
    """A prompt read, a 4-token verify and a 3-token verify after a rollback, as the runtime runs a level."""
    core = ov.Core()
    kernel.register(core)
    model = KVModel(core, level_dir, precision, kernel)
    return np.concatenate([model.logits(PROMPT[:30], 30), model.logits(PROMPT[:34], 4),
                           model.logits(PROMPT[:32] + [7, 8, 9], 3)])


def assert_nothing_written(out):
    assert not out.exists()
    assert [path.name for path in out.parent.iterdir() if path.name.startswith(f".{out.name}")] == []


# ONNX in

def test_an_onnx_export_gives_the_levels_of_the_direct_route_exactly(tiny_onnx, onnx_export, direct_export,
                                                                      mxfp4_kernel_built):
    manifest = Manifest.read(onnx_export)
    assert [(level.name, level.format) for level in manifest.levels] == [
        ("target", "bf16"), ("target-mxfp4", "mxfp4"), ("target-mxfp4-onnx", "mxfp4")]
    target = manifest.level("target")
    assert target.source == str(tiny_onnx / "model.onnx") and len(target.source_sha256) == 64
    assert target.tokenizer_sha256 == Manifest.read(direct_export).level("target").tokenizer_sha256
    for name in ("target", "target-mxfp4"):
        for precision in ("f32", "bf16"):
            assert np.array_equal(logits(onnx_export / name, mxfp4_kernel_built, precision),
                                  logits(direct_export / name, mxfp4_kernel_built, precision)), (name, precision)


def test_the_onnx_routes_target_keeps_its_weights_bf16_as_the_direct_route_does(onnx_export):
    xml = onnx_export / "target" / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    matrices = Counter(op.get_element_type().get_type_name() for op in model.get_ops()
                       if op.get_type_name() == "Constant" and sum(dim > 1 for dim in op.shape) >= 2)
    assert matrices["bf16"] == 16 and matrices["f32"] == 0
    # Unmarked, the CPU plugin would fold each Convert and hold the weights in f32.
    assert xml.read_text().count('<attribute name="decompression" version="0" />') == 16


def test_the_onnx_route_generates_the_direct_routes_greedy_tokens(onnx_export, direct_export):
    def tokens(folder):
        return Pipeline.load(folder, chain="target,target-mxfp4", precision="f32").generate(
            "def fibonacci(n):", max_new_tokens=24).tokens

    assert tokens(onnx_export) == tokens(direct_export)


def test_a_folder_holding_model_onnx_is_a_source(tiny_onnx, tmp_path):
    out = tmp_path / "out"
    assert run(tiny_onnx, out, "--format", "int4_sym") == 0
    assert [level.name for level in Manifest.read(out).levels] == ["target", "target-int4_sym"]


def decomposed_attention(tiny_target, onnx_dir, tmp_path):
    return export_onnx(tiny_target, onnx_dir / "opset18", opset=18)


def onnxruntime_genai(tiny_target, onnx_dir, tmp_path):
    out = onnx_dir / "genai"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tiny_target), "-o", str(out),
                    "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "genai-cache")], check=True, capture_output=True)
    return out


def without(name):
    def make(tiny_target, onnx_dir, tmp_path):
        folder = shutil.copytree(onnx_dir / "opset23", tmp_path / f"without-{name}")
        (folder / name).unlink()
        return folder / "model.onnx"
    return make


def truncated_data(tiny_target, onnx_dir, tmp_path):
    folder = shutil.copytree(onnx_dir / "opset23", tmp_path / "truncated")
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    return folder / "model.onnx"


def without_kv_cache(tiny_target, onnx_dir, tmp_path):
    """An Attention model exported without past key/values (here a minimal one: only names and ops are read)."""
    floats = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 4, 8, 16]) for name in "qkv"]
    graph = onnx.helper.make_graph([onnx.helper.make_node("Attention", ["q", "k", "v"], ["logits"])], "no-kv", floats,
                                   [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)])
    folder = shutil.copytree(onnx_dir / "opset23", tmp_path / "no-kv", ignore=shutil.ignore_patterns("model.onnx*"))
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23)]), folder / "model.onnx")
    return folder / "model.onnx"


def already_quantized(tiny_target, onnx_dir, tmp_path):
    """An MXFP4 ONNX that export-mxfp4 --to onnx wrote (the onnx_export fixture)."""
    return onnx_dir / "from-onnx" / "target-mxfp4-onnx" / "model.onnx"


def not_onnx(tiny_target, onnx_dir, tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\xff" * 64)
    return path


@pytest.mark.parametrize("make_model, message", [
    (decomposed_attention, "attention is decomposed into MatMul/Softmax (opset <= 22"),
    (onnxruntime_genai, "com.microsoft GroupQueryAttention (onnxruntime-genai's builder)"),
    (without_kv_cache, "no KV cache inputs"),
    (without("model.onnx.data"), "its weights are in model.onnx.data, which is missing"),
    (truncated_data, "it is truncated"),
    (without("tokenizer.json"), "no tokenizer.json beside it"),
    (without("config.json"), "no config.json beside it"),
    (already_quantized, "its weights are already quantized (DequantizeLinear)"),
    (not_onnx, "not a readable ONNX file"),
])
def test_onnx_models_it_cannot_use_are_refused_by_name_before_any_work(
        tiny_target, tiny_onnx, onnx_export, onnx_dir, tmp_path, capsys, make_model, message):
    model = make_model(tiny_target, onnx_dir, tmp_path)
    out = tmp_path / "out"
    assert run(model, out) == 1
    error = capsys.readouterr().err
    assert message in error and str(model.parent) in error
    if "attention" in message:
        assert "opset_version=23" in error and "export-onnx" in error  # says what works instead
    assert_nothing_written(out)


def test_export_onnx_refuses_to_overwrite_or_to_export_an_onnx_again(tiny_onnx, tmp_path, capsys):
    assert onnx_cli.main([str(tiny_onnx / "model.onnx"), str(tmp_path / "again")]) == 1
    assert "already an ONNX model" in capsys.readouterr().err
    assert onnx_cli.main(["qwen2.5-coder-0.5b", str(tiny_onnx)]) == 1
    assert "--force" in capsys.readouterr().err


# ONNX out

def test_the_mxfp4_onnx_holds_e2m1_weights_with_e8m0_scales_in_blocks_of_32(onnx_export):
    path = onnx_export / "target-mxfp4-onnx" / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    types = Counter(onnx.TensorProto.DataType.Name(tensor.data_type) for tensor in model.graph.initializer
                    if len(tensor.dims) == 2)
    assert types["FLOAT4E2M1"] == 16 and types["FLOAT8E8M0"] == 16 and types["FLOAT"] == 0
    blocks = {(attribute.name, onnx.helper.get_attribute_value(attribute)) for node in model.graph.node
              if node.op_type == "DequantizeLinear" for attribute in node.attribute}
    assert blocks == {("axis", 1), ("block_size", 32), ("output_dtype", onnx.TensorProto.FLOAT)}


def test_openvino_runs_the_mxfp4_onnx_compressed_with_the_ir_levels_logits(onnx_export, mxfp4_kernel_built, capfd):
    converted = ov.Core().read_model(onnx_export / "target-mxfp4-onnx" / "model.onnx")
    weights = Counter(op.get_element_type().get_type_name() for op in converted.get_ops()
                      if op.get_type_name() == "Constant" and len(op.shape) >= 2)
    assert weights["f4e2m1"] == 16 and weights["f8e8m0"] == 16
    for precision in ("f32", "bf16"):
        assert np.array_equal(logits(onnx_export / "target-mxfp4-onnx", mxfp4_kernel_built, precision),
                              logits(onnx_export / "target-mxfp4", mxfp4_kernel_built, precision)), precision
    log = capfd.readouterr().err
    assert "target-mxfp4-onnx: 15 MXFP4 matmuls on specqd-mxfp4" in log and "target-mxfp4: 15 MXFP4 matmuls" in log


def test_an_onnx_level_runs_in_a_chain(onnx_export):
    pipe = Pipeline.load(onnx_export, chain="target,target-mxfp4-onnx", precision="f32")
    alone = Pipeline.load(onnx_export, chain="target", precision="f32")
    assert pipe.generate("def fibonacci(n):", max_new_tokens=16).tokens == \
        alone.generate("def fibonacci(n):", max_new_tokens=16).tokens


def test_onnxruntime_cannot_run_the_mxfp4_onnx_yet(onnx_export):
    """When this fails, onnxruntime has learnt FLOAT4E2M1: update README and docs/onnx.md."""
    import onnxruntime

    with pytest.raises(Exception, match="NOT_IMPLEMENTED|not implemented"):
        onnxruntime.InferenceSession(str(onnx_export / "target-mxfp4-onnx" / "model.onnx"))


def test_a_checkpoint_gets_onnx_levels_through_an_f32_onnx_made_on_the_way(tiny_target, tmp_path, mxfp4_kernel_built):
    out = tmp_path / "out"
    assert run(tiny_target, out, "--to", "onnx", "--embeddings", "bf16") == 0
    assert [level.name for level in Manifest.read(out).levels] == ["target", "target-mxfp4", "target-mxfp4-onnx"]
    assert sorted(path.name for path in out.iterdir()) == ["specqd.json", "target", "target-mxfp4",
                                                           "target-mxfp4-onnx"]
    model = onnx.load(str(out / "target-mxfp4-onnx" / "model.onnx"), load_external_data=False)
    kept = [tensor.name for tensor in model.graph.initializer
            if len(tensor.dims) == 2 and tensor.data_type == onnx.TensorProto.FLOAT]
    assert len(kept) == 2  # embedding and lm_head, as the IR level keeps them
    assert np.array_equal(logits(out / "target-mxfp4-onnx", mxfp4_kernel_built),
                          logits(out / "target-mxfp4", mxfp4_kernel_built))


def test_onnxruntime_runs_the_int4_onnx_as_the_runtime_does(tiny_onnx, tmp_path, mxfp4_kernel_built):
    import onnxruntime

    out = tmp_path / "out"
    assert run(tiny_onnx, out, "--format", "int4_sym", "--to", "onnx") == 0
    level = Manifest.read(out).level("target-int4_sym-onnx")
    assert (level.format, level.embeddings) == ("int4_sym", "int4_sym")
    model = onnx.load(str(out / level.path / "model.onnx"), load_external_data=False)
    assert Counter(node.op_type for node in model.graph.node if node.domain == "com.microsoft") == \
        {"MatMulNBits": 15, "GatherBlockQuantized": 1}   # onnxruntime's fast int4 ops, embedding and lm_head too
    session = onnxruntime.InferenceSession(str(out / level.path / "model.onnx"))
    feeds = {"input_ids": np.array([PROMPT[:30]]), "attention_mask": np.ones((1, 30), np.int64),
             "position_ids": np.arange(30)[None]}
    feeds |= {port.name: np.zeros((1, port.shape[1], 0, port.shape[3]), np.float32)
              for port in session.get_inputs() if port.name.startswith("past_key_values.")}
    in_onnxruntime = session.run(["logits"], feeds)[0][0]
    in_openvino = logits(out / level.path, mxfp4_kernel_built)[:30]
    # OpenVINO runs INT4 weights with int8 activations, so the two agree closely, not exactly.
    assert np.abs(in_onnxruntime - in_openvino).max() < 0.02 * np.abs(in_onnxruntime).max()


def test_to_onnx_needs_a_format_it_can_write(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny_onnx, out, "--to", "onnx", "--format", "nvfp4") == 1
    assert "--to onnx writes mxfp4, int4_sym levels" in capsys.readouterr().err
    assert_nothing_written(out)


def test_the_runtime_reads_onnx_levels_without_the_onnx_packages(onnx_export):
    code = ("import sys; from specqd.runtime.pipeline import Pipeline; "
            f"Pipeline.load({str(onnx_export)!r}, chain='target,target-mxfp4-onnx').generate('x', max_new_tokens=2); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript', 'onnx_ir') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
