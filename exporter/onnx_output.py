"""`export-mxfp4 --to onnx`: MXFP4 (and INT4) levels as ONNX files, next to their IR.

Each weight becomes `DequantizeLinear(q FLOAT4E2M1 [N, K], s FLOAT8E8M0 [N, K/32], axis=1, block_size=32,
output_dtype=FLOAT)` (opset 24, the first whose DequantizeLinear takes an e8m0 scale), and a MatMul weight is
followed by a Transpose. That [N, K] layout is what lets OpenVINO's ONNX reader fold the Transpose into a
transpose_b MatMul over the still-compressed weights, which specqd's MXFP4 kernel takes; a [K, N] layout with
axis=0 would run, but on neither. The values and scales come from NNCF's own `compress_weight` with the
level's config, so the ONNX holds exactly the IR level's weights (NNCF's scale is 2^ceil(log2(amax / 6)),
not OCP's floor(log2(amax)) - 2, and the two give different models).

onnxruntime 1.32 cannot run FLOAT4E2M1 at all (NOT_IMPLEMENTED on CPU), so this file is for OpenVINO and
for exchange; the int4_sym twin (`write_int4_onnx`) is what onnxruntime runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx_ir as ir

from specqd.runtime.onnx_level import ONNX_NAME

DATA_NAME = "model.onnx.data"
BLOCK = 32
OPSET = 24   # DequantizeLinear with a FLOAT8E8M0 scale
IR_VERSION = 11


@dataclass(frozen=True)
class Weight:
    value: ir.Value   # the initializer
    kind: str         # "matmul" (input B of a MatMul, [K, N]) or "gather" (the embedding table, [rows, H])


def write_level(ir_level: Path, f32_onnx: Path, out: Path, weight_format: str, embeddings: str) -> str:
    """An ONNX twin of the quantized IR level `ir_level`: its files (tokenizer IRs, config) with model.onnx for the IR.

    Returns what the embedding and lm_head hold, as the manifest records it.
    """
    import shutil

    shutil.copytree(ir_level, out, ignore=shutil.ignore_patterns("openvino_model.xml", "openvino_model.bin"))
    if weight_format == "mxfp4":
        write_mxfp4_onnx(f32_onnx, out, embeddings)
        return "f32" if embeddings == "bf16" else "mxfp4"
    return write_int4_onnx(f32_onnx, out, embeddings)


def write_int4_onnx(source: Path, out: Path, embeddings: str) -> str:
    """INT4, symmetric, blocks of 32, by onnxruntime's own quantizer: com.microsoft MatMulNBits and
    GatherBlockQuantized, the ops onnxruntime runs fast on CPU (OpenVINO reads them too).

    NNCF's ONNX backend was the other candidate: at opset 23 it writes blocked int4 DequantizeLinear, which
    onnxruntime dequantizes on every step (306 ms per token on the real 0.5B against 55 for the f32 ONNX), and
    it cannot quantize the embedding. Neither gives the IR level's exact values; this is the nearest model that
    onnxruntime runs well. With `embeddings` "bf16" the embedding and lm_head stay f32. Returns what they hold.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    keep = embeddings == "bf16"
    model = onnx.load(str(source))
    lm_head = [node.name for node in model.graph.node if "logits" in node.output and node.op_type == "MatMul"]
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=BLOCK, is_symmetric=True,
                                     op_types_to_quantize=("MatMul",) if keep else ("MatMul", "Gather"),
                                     quant_axes=(("MatMul", 0), ("Gather", 1)),
                                     nodes_to_exclude=lm_head if keep else [])
    with np.errstate(invalid="ignore"):  # an all-zero block (a padding row) is 0/0 in there, and is written as 0
        quantizer.process()
    quantizer.model.save_model_to_file(str(out / ONNX_NAME), use_external_data_format=True)
    return "f32" if keep else "int4_sym"


def write_mxfp4_onnx(source: Path, out: Path, embeddings: str) -> None:
    """Write out/model.onnx (+ .data): the f32 ONNX `source` with its weights as MXFP4.

    `embeddings` is the level's choice: "quantized" converts every weight as NNCF's all_layers does, "bf16"
    keeps the embedding and lm_head as they are (f32 here: ONNX has no cheaper exact form that all readers take).
    """
    model = ir.load(source)
    weights = _weights(model.graph, keep_embeddings=embeddings == "bf16")
    for weight in weights:
        _replace_by_mxfp4(model.graph, weight)
    model.opset_imports[""] = max(OPSET, model.opset_imports.get("", OPSET))
    model.ir_version = max(IR_VERSION, model.ir_version)
    out.mkdir(parents=True, exist_ok=True)
    ir.save(model, out / ONNX_NAME, external_data=DATA_NAME)


def _weights(graph: ir.Graph, keep_embeddings: bool) -> list[Weight]:
    """Every 2-D f32 initializer used as a MatMul's B or a Gather's table, with K a multiple of the block."""
    logits = next(output for output in graph.outputs if output.name == "logits")
    found: dict[tuple[str, str], Weight] = {}
    for node in graph:
        if node.op_type == "MatMul" and node.domain == "":
            value, kind, inner = node.inputs[1], "matmul", 0
            if keep_embeddings and logits in node.outputs:
                continue
        elif node.op_type == "Gather" and node.domain == "" and not keep_embeddings:
            value, kind, inner = node.inputs[0], "gather", 1
        else:
            continue
        if value is None or not value.is_initializer() or value.const_value is None:
            continue
        shape = value.const_value.shape
        if len(shape) != 2 or value.const_value.dtype != ir.DataType.FLOAT or shape[inner] % BLOCK:
            continue
        found[(value.name, kind)] = Weight(value, kind)
    return list(found.values())


def _replace_by_mxfp4(graph: ir.Graph, weight: Weight) -> None:
    from nncf import CompressWeightsMode
    from nncf.quantization.algorithms.weight_compression.config import WeightCompressionConfig
    from nncf.quantization.algorithms.weight_compression.weight_lowering import compress_weight
    from nncf.tensor import Tensor

    values = weight.value.const_value.numpy()
    rows_by_k = values.T if weight.kind == "matmul" else values    # [N, K]: blocks run along axis 1
    compressed = compress_weight(Tensor(np.ascontiguousarray(rows_by_k)), (1,),
                                 WeightCompressionConfig(mode=CompressWeightsMode.MXFP4, group_size=BLOCK))
    rows, inner = rows_by_k.shape
    codes = compressed.tensor.data.reshape(rows, inner).astype(ml_dtypes.float4_e2m1fn)
    scales = compressed.scale.data.reshape(rows, inner // BLOCK).astype(ml_dtypes.float8_e8m0fnu)
    name = f"{weight.value.name}.{weight.kind}"
    q = _initializer(graph, f"{name}.mxfp4", codes)
    s = _initializer(graph, f"{name}.e8m0", scales)
    dequantized = ir.node("DequantizeLinear", [q, s], {"axis": 1, "block_size": BLOCK,
                                                       "output_dtype": ir.DataType.FLOAT.value},
                          outputs=[ir.Value(name=f"{name}.dequantized")])
    nodes = [dequantized]
    if weight.kind == "matmul":
        nodes.append(ir.node("Transpose", dequantized.outputs, {"perm": [1, 0]},
                             outputs=[ir.Value(name=f"{name}.transposed")]))
    graph.insert_before(next(iter(graph)), nodes)
    original = weight.value
    for user, index in list(original.uses()):
        if (user.op_type == "MatMul" and weight.kind == "matmul" and index == 1) or \
                (user.op_type == "Gather" and weight.kind == "gather" and index == 0):
            user.replace_input_with(index, nodes[-1].outputs[0])
    if not original.uses():
        graph.initializers.pop(original.name)


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.Tensor(array, name=name))
    graph.register_initializer(value)
    return value
