"""specqd's MXFP4 kernel: equal to MXFP4 dequantize-and-matmul, taken by MXFP4 levels, token-exact chains, and
OpenVINO's path with one line saying why wherever it cannot run."""

import xml.etree.ElementTree as ET

import numpy as np
import openvino as ov
import pytest

from specqd.runtime import mxfp4_kernel
from specqd.runtime.mxfp4_kernel import OPENVINO_KERNEL, SPECQD_KERNEL, Kernel
from specqd.runtime.pipeline import ExportFolder

E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])


def dequantize(nibbles: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 by its definition: weight k is the e2m1 code in nibble k (low nibble first) times 2^(scale-127)."""
    codes = np.stack([nibbles & 15, nibbles >> 4], axis=-1).reshape(len(nibbles), -1)
    return E2M1[codes] * np.exp2(scales.astype(np.float64) - 127).repeat(32, axis=1)


def bf16(x: np.ndarray) -> np.ndarray:
    """Round f32 to bf16 (nearest even), as the kernel does with activations in bf16 mode."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)).view(np.float32)


def assert_matches_reference(kernel, x, nibbles, scales, activations):
    weights = dequantize(nibbles, scales)
    xr = (bf16(x) if activations == "bf16" else x).astype(np.float64)
    expected = xr @ weights.T
    bound = 1e-5 * (np.abs(xr) @ np.abs(weights).T)  # f32 accumulation over at most a few thousand terms
    assert np.all(np.abs(kernel.matmul(x, nibbles, scales, activations) - expected) <= bound)


def random_weights(rng, inner, outputs, scales=(110, 135)):
    return (rng.integers(0, 256, (outputs, inner // 2), dtype=np.uint8),
            rng.integers(*scales, (outputs, inner // 32), dtype=np.uint8))


# (inner, outputs): one block; odd block counts; a second span of the inner dimension (64 blocks per span).
SHAPES = [(32, 4), (96, 12), (160, 36), (2080, 8), (1536, 256)]


@pytest.mark.parametrize("activations", ["bf16", "f32"])
@pytest.mark.parametrize("inner,outputs", SHAPES)
def test_the_kernel_equals_mxfp4_dequantize_and_matmul(mxfp4_kernel_built, inner, outputs, activations):
    rng = np.random.default_rng(inner + outputs)
    nibbles, scales = random_weights(rng, inner, outputs)
    for rows in list(range(1, 17)) + [24, 40]:  # register tiles of 1-8 rows, chunks, a prompt's decoded pass
        assert_matches_reference(mxfp4_kernel_built, rng.standard_normal((rows, inner), dtype=np.float32),
                                 nibbles, scales, activations)


# Activations chosen so that products stay normal f32 numbers (the bf16 dot product flushes subnormals).
@pytest.mark.parametrize("scale,x_scale", [(2, 2.0 ** 100), (252, 2.0 ** -100)])
def test_extreme_scales_are_exact(mxfp4_kernel_built, scale, x_scale):
    rng = np.random.default_rng(scale)
    nibbles = rng.integers(0, 256, (8, 64), dtype=np.uint8)
    scales = np.full((8, 4), scale, np.uint8)
    x = (rng.standard_normal((3, 128)) * x_scale).astype(np.float32)
    for activations in ("bf16", "f32"):
        assert_matches_reference(mxfp4_kernel_built, x, nibbles, scales, activations)


def test_scales_it_cannot_represent_exactly_are_refused(mxfp4_kernel_built):
    library = mxfp4_kernel_built.library
    for scale, supported in ((1, 0), (2, 1), (127, 1), (252, 1), (253, 0), (255, 0)):
        assert library.specqd_mxfp4_scales_supported(bytes([127, scale, 127]), 3) == supported


@pytest.mark.real
def test_the_kernel_equals_the_reference_on_real_weights(mxfp4_kernel_built, real_export):
    """The first attention and MLP projections of the real 0.5B's MXFP4 copy, read straight from its .bin."""
    xml = real_export / "target-mxfp4" / "openvino_model.xml"
    weights = np.memmap(xml.with_suffix(".bin"), np.uint8, mode="r")
    consts = {layer.get("name"): layer.find("data") for layer in ET.parse(xml).iter("layer")}
    rng = np.random.default_rng(0)
    for projection in ("self_attn.q_proj", "mlp.down_proj"):
        name = f"self.model.layers.0.{projection}._openvino_orig_weight"
        (outputs, blocks, _), (offset, size) = _shape(consts[name]), _extent(consts[name])
        nibbles = np.array(weights[offset:offset + size]).reshape(outputs, blocks * 16)
        offset, size = _extent(consts[name + "/scale"])
        scales = np.array(weights[offset:offset + size]).reshape(outputs, blocks)
        for rows in (1, 5, 8, 16):
            x = rng.standard_normal((rows, blocks * 32), dtype=np.float32)
            assert_matches_reference(mxfp4_kernel_built, x, nibbles, scales, "bf16")


def _shape(data):
    return [int(d) for d in data.get("shape").split(",")]


def _extent(data):
    return int(data.get("offset")), int(data.get("size"))


def test_mxfp4_levels_run_on_the_kernel_and_other_levels_do_not(mxfp4_kernel_built, tiny_export, capfd):
    folder = ExportFolder(tiny_export)
    assert folder.model("target-mxfp4").kernel == SPECQD_KERNEL
    assert folder.model("target").kernel == OPENVINO_KERNEL
    assert folder.model("target-int8").kernel == OPENVINO_KERNEL
    assert f"MXFP4 matmuls on {SPECQD_KERNEL}" in capfd.readouterr().err


def test_the_rewrite_moves_every_mxfp4_matmul_and_the_embedding_and_keeps_the_logits(mxfp4_kernel_built, tiny_export):
    xml = tiny_export / "target-mxfp4" / "openvino_model.xml"
    core = ov.Core()
    mxfp4_kernel_built.register(core)
    ir = mxfp4_kernel_built.read_model(core, xml, "f32")
    original = core.read_model(xml).get_ops()
    mxfp4_matmuls = [op for op in original if op.get_type_name() == "MatMul" and "f4e2m1" in _source_types(op, 1)]
    [embedding] = [op for op in original if op.get_type_name() == "Gather" and "f4e2m1" in _source_types(op, 0)]
    ours = ir.model.get_ops()
    assert len([op for op in ours if op.get_type_name() == "MXFP4MatMul"]) == len(mxfp4_matmuls) > 0
    assert len([op for op in ours if op.get_type_name() == "MXFP4Gather"]) == 1

    inputs = {"input_ids": np.array([[5, 17, 42, 7]]), "attention_mask": np.ones((1, 4), np.int64),
              "position_ids": np.arange(4)[None], "beam_idx": np.zeros(1, np.int32)}
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(ir.model, "CPU", config)
    theirs = core.compile_model(core.read_model(xml), "CPU", config)(inputs)["logits"]
    np.testing.assert_allclose(compiled(inputs)["logits"], theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    # The embedding table is looked up row by row: OpenVINO never decompresses it whole.
    table = embedding.input_value(0).get_partial_shape()
    assert [op for op in compiled.get_runtime_model().get_ops()
            if op.get_output_size() and op.get_output_partial_shape(0) == table] == []


def _source_types(op, index: int) -> set[str]:
    """Element types of the Consts that one of an op's inputs decompresses (through Convert, Reshape, Multiply)."""
    found, stack = set(), [op.input_value(index).get_node()]
    while stack:
        node = stack.pop()
        if node.get_type_name() == "Constant":
            found.add(node.get_element_type().get_type_name())
        elif node.get_type_name() in ("Convert", "Reshape", "Multiply"):
            stack.extend(value.get_node() for value in node.input_values())
    return found


@pytest.mark.parametrize("chain", ["target,target-mxfp4", "target,target-mxfp4,draft",
                                   "target,target-int8,target-mxfp4,lookup"])
def test_chains_with_the_kernel_give_the_targets_own_tokens_in_f32(mxfp4_kernel_built, tiny_export, chain):
    folder = ExportFolder(tiny_export, precision="f32")
    for prompt in ("def fibonacci(n: int) -> int:", "The quick brown fox jumps over"):
        expected = folder.pipeline(["target"]).generate(prompt, max_new_tokens=40).tokens
        result = folder.pipeline(chain.split(",")).generate(prompt, max_new_tokens=40)
        assert result.tokens == expected
        kernels = {level["level"]: level["kernel"] for level in result.stats["levels"]}
        assert kernels["target-mxfp4"] == SPECQD_KERNEL and kernels["target"] == OPENVINO_KERNEL


def test_an_install_without_the_library_falls_back_to_openvino_and_says_so(tiny_export, tmp_path, monkeypatch,
                                                                            capfd):
    monkeypatch.setattr(mxfp4_kernel, "library_path", lambda: tmp_path / mxfp4_kernel.LIBRARY)
    folder = ExportFolder(tiny_export)
    result = folder.pipeline(["target", "target-mxfp4"]).generate("def f(x):", max_new_tokens=8)
    assert [level["kernel"] for level in result.stats["levels"]] == [OPENVINO_KERNEL, OPENVINO_KERNEL]
    assert ("target-mxfp4: MXFP4 matmuls on OpenVINO's own path: specqd's kernel is not in this install"
            in capfd.readouterr().err)


def test_a_cpu_without_avx512_bf16_falls_back_to_openvino_in_one_line(tiny_export, monkeypatch, capfd):
    class LibraryOnSuchACpu:
        """What the real library answers there: it loads (the AVX-512 code is compiled per function)."""
        def __init__(self, path: str):
            pass

        def specqd_mxfp4_cpu_supported(self) -> int:
            return 0

    monkeypatch.setattr(mxfp4_kernel.ctypes, "CDLL", LibraryOnSuchACpu)
    kernel = Kernel.find()
    monkeypatch.undo()
    assert kernel.library is None
    capfd.readouterr()
    ir = kernel.read_model(ov.Core(), tiny_export / "target-mxfp4" / "openvino_model.xml", "bf16")
    assert ir.kernel == OPENVINO_KERNEL
    assert capfd.readouterr().err.splitlines() == [
        "target-mxfp4: MXFP4 matmuls on OpenVINO's own path: specqd's kernel is not supported by this CPU "
        "(it lacks AVX512-BF16)"]


def test_a_cpu_with_amx_runs_openvinos_faster_mxfp4_path_and_says_why(tiny_export, monkeypatch, capfd):
    if Kernel.find(on_amx=True).library is None:
        pytest.skip("specqd's kernel cannot run here at all")
    monkeypatch.setattr(mxfp4_kernel, "cpu_has", lambda flag: flag == "amx_bf16")
    folder = ExportFolder(tiny_export)
    assert folder.model("target-mxfp4").kernel == OPENVINO_KERNEL
    assert "specqd's kernel is slower than OpenVINO's AMX path on this CPU" in capfd.readouterr().err


def test_the_kernel_can_be_turned_off(tiny_export, capfd):
    folder = ExportFolder(tiny_export, mxfp4_kernel=False)
    result = folder.pipeline(["target", "target-mxfp4"]).generate("def f(x):", max_new_tokens=8)
    assert [level["kernel"] for level in result.stats["levels"]] == [OPENVINO_KERNEL, OPENVINO_KERNEL]
    assert "OpenVINO's own path: specqd's kernel is turned off" in capfd.readouterr().err
