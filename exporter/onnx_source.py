"""An ONNX causal LM with past key/values as the source of a level: `export-mxfp4 model.onnx OUT`.

The chain measured in issue 13: OpenVINO reads the ONNX, `apply_moc_transformations(cf=True)` folds the
constants (the attention scale must be a Const for the runtime's paged-attention rewrite, and MatMul weights
become [N, K] with transpose_b, the layout specqd's MXFP4 kernel takes), optimum-intel's `patch_stateful`
moves the KV cache into state as optimum's own exports have it, and the level is then quantized like any other.
On the real Qwen2.5-Coder-0.5B this gives MXFP4 levels whose logits equal those of the direct route.

Only ONNX's own `Attention` op (opset >= 23, as `torch.onnx.export(dynamo=True, opset_version=23)` or
`export-onnx` writes it) becomes the ScaledDotProductAttention the runtime needs. Decomposed attention
(opset <= 22: the TorchScript exporter, optimum-onnx) and onnxruntime-genai's GroupQueryAttention load in
OpenVINO but cannot be driven by the runtime, so they are refused before any work, with what to use instead.
An ONNX file carries no tokenizer or model config, so both must lie beside it.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from specqd.models.fetch import sha256_file
from specqd.runtime.onnx_level import ONNX_NAME

from .errors import ExportError

REQUIRED_FILES = ("config.json", "tokenizer.json")
REQUIRED_INPUTS = ("input_ids", "attention_mask", "position_ids")
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
QUANTIZED_WEIGHT_OPS = ("DequantizeLinear", "MatMulNBits", "GatherBlockQuantized")
WORKING_EXPORT = ("export it again with `export-onnx CHECKPOINT OUT` or "
                  "torch.onnx.export(..., dynamo=True, opset_version=23), which write ONNX's Attention op")


@dataclass(frozen=True)
class OnnxModel:
    path: Path          # the .onnx file
    architecture: str   # config.json's model_type

    @property
    def folder(self) -> Path:
        """Where its external data, config and tokenizer files are."""
        return self.path.parent


def require_onnx(what: str) -> None:
    """ONNX support is an extra: say how to get it before any work rather than fail on an import midway."""
    try:
        import ml_dtypes  # noqa: F401
        import onnx  # noqa: F401
        import onnx_ir  # noqa: F401
    except ImportError as error:
        raise ExportError(f"{what} needs the onnx extra ({error}): pip install 'specqd[onnx]'") from None


def onnx_file(path: Path) -> Path | None:
    """The ONNX file a MODEL argument names: a .onnx file, or a folder holding model.onnx; else None."""
    if path.is_file() and path.suffix == ".onnx":
        return path
    if path.is_dir() and (path / ONNX_NAME).is_file():
        return path / ONNX_NAME
    return None


def identify(path: Path, supported_architectures: tuple[str, ...]) -> OnnxModel:
    """Check everything that would make the export fail later, reading only the graph (no weights).

    What no file beside the model can fix (its attention, its missing KV cache) is reported first.
    """
    require_onnx(f"{path}: an ONNX model")
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # protobuf's DecodeError and OSError, among others
        raise ExportError(f"{path}: not a readable ONNX file ({error}); the file is corrupt or truncated") from None
    _check_attention(path, graph)
    _check_unquantized(path, graph)
    _check_inputs_and_outputs(path, graph)
    _check_external_data(path, graph)
    folder = path.parent
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise ExportError(f"{path}: no {name} beside it in {folder}; an ONNX file carries no tokenizer or model "
                              "config: copy config.json and tokenizer.json (with tokenizer_config.json) from the "
                              "checkpoint it was exported from")
    architecture = _architecture(folder / "config.json")
    if architecture not in supported_architectures:
        raise ExportError(f"{folder / 'config.json'}: unsupported architecture {architecture!r}; supported: "
                          f"{', '.join(supported_architectures)}")
    return OnnxModel(path, architecture)


def sha256(model: OnnxModel) -> str:
    """One digest over the graph, its external data and its config, like a checkpoint's."""
    import onnx

    graph = onnx.load(str(model.path), load_external_data=False).graph
    files = [model.path, *sorted({model.folder / location for location in _external_locations(graph)}),
             model.folder / "config.json"]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()


def write_level(model: OnnxModel, out: Path) -> str:
    """Write the stateful IR of `model` with tokenizer IRs and its side files to `out`; return its weight format.

    An ONNX exported from a BF16 checkpoint holds BF16 values in f32: such weights are stored BF16 (half the
    size, the same values), and the level is "bf16"; other weights stay as they are and name the format.
    """
    import openvino as ov
    from optimum.exporters.openvino.convert import export_tokenizer
    from transformers import AutoTokenizer

    ir_model = stateful_model(model.path)
    weight_format = _store_bf16_weights(ir_model)
    out.mkdir(parents=True)
    ov.save_model(ir_model, out / "openvino_model.xml", compress_to_fp16=False)
    if weight_format == "bf16":
        _mark_decompression(out / "openvino_model.xml")
    for file in model.folder.iterdir():
        if file.is_file() and file.suffix in (".json", ".jinja", ".txt", ".model"):
            shutil.copy2(file, out / file.name)
    export_tokenizer(AutoTokenizer.from_pretrained(str(model.folder)), out, task="text-generation-with-past")
    if not (out / "openvino_tokenizer.xml").is_file():
        raise ExportError(f"{model.folder / 'tokenizer.json'}: openvino-tokenizers cannot convert this tokenizer")
    return weight_format


def stateful_model(path: Path):
    """The ONNX as the stateful OpenVINO model optimum exports: KV cache in state, beam_idx input."""
    import openvino as ov
    from openvino._offline_transformations import apply_moc_transformations
    from optimum.exporters.openvino.stateful import patch_stateful
    from transformers import AutoConfig

    ir_model = ov.Core().read_model(path)
    apply_moc_transformations(ir_model, cf=True)
    patch_stateful(AutoConfig.from_pretrained(str(path.parent)), ir_model)
    return ir_model


def _store_bf16_weights(ir_model) -> str:
    """Store the weight matrices BF16 (Const bf16 + Convert) if all hold BF16 values; return their format.

    Only matrices count: the small constants an exporter computes in f32 (rotary frequencies, epsilons) are
    not weights and stay as they are. The BF16 values are the top halves of the f32 words, cut in numpy:
    `opset13.constant(array, dtype=bf16)` needs 10x the array's size on the way (5.6 GB for the 0.5B's embedding).
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    matrices = [op for op in ir_model.get_ops()
                if op.get_type_name() == "Constant" and sum(dim > 1 for dim in op.shape) >= 2]
    types = {op.get_element_type() for op in matrices}
    if types != {ov.Type.f32}:
        return "f16" if ov.Type.f16 in types else "bf16"
    if any((op.get_data().view(np.uint32) & 0xFFFF).any() for op in matrices):
        return "f32"
    for op in matrices:
        values = op.get_data()
        bf16 = ov.Tensor(ov.Type.bf16, list(values.shape))
        bf16.data[...] = (values.view(np.uint32) >> 16).astype(np.uint16).view(bf16.data.dtype)
        stored = ops.convert(ov.op.Constant(bf16), ov.Type.f32)
        for target in op.output(0).get_target_inputs():
            target.replace_source_output(stored.output(0))
    ir_model.validate_nodes_and_infer_types()
    return "bf16"


def _mark_decompression(xml: Path) -> None:
    """Mark each Convert of a BF16 weight as a decompression, as optimum's IRs have it.

    Unmarked, the CPU plugin folds the Convert when it compiles: every weight is held in f32 (the real 0.5B
    target took 3.1 GB instead of 2.1 GB and loaded in 4.6 s instead of 0.9 s). OpenVINO's Python API cannot
    set this runtime attribute, so it is written into the IR, where the IR reader recognises it.
    """
    import xml.etree.ElementTree as ET

    net = ET.parse(xml)
    layers = {layer.get("id"): layer for layer in net.iter("layer")}
    producer = {edge.get("to-layer"): layers[edge.get("from-layer")] for edge in net.find("edges")
                if edge.get("to-port") == "0"}
    for layer in layers.values():
        source = producer.get(layer.get("id"))
        if layer.get("type") == "Convert" and source is not None and source.get("type") == "Const" and \
                source.find("data").get("element_type") == "bf16":
            rt_info = ET.Element("rt_info")
            ET.SubElement(rt_info, "attribute", name="decompression", version="0")
            layer.insert(1, rt_info)  # after <data>, before <input>, as the IR writer orders them
    net.write(xml)


def _architecture(config_path: Path) -> str:
    import json

    try:
        return json.loads(config_path.read_text())["model_type"]
    except (json.JSONDecodeError, KeyError) as error:
        raise ExportError(f"{config_path}: unreadable config ({error!r})") from None


def _external_locations(graph) -> list[str]:
    locations = []
    for tensor in graph.initializer:
        if tensor.data_location == tensor.EXTERNAL:
            locations.append(next(entry.value for entry in tensor.external_data if entry.key == "location"))
    return locations


def _check_external_data(path: Path, graph) -> None:
    """Every external-data file present and long enough for the bytes the graph reads from it."""
    ends: dict[str, int] = {}
    for tensor in graph.initializer:
        if tensor.data_location != tensor.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        end = int(entries.get("offset", 0)) + int(entries.get("length", 0))
        ends[entries["location"]] = max(ends.get(entries["location"], 0), end)
    for location, end in ends.items():
        file = path.parent / location
        if not file.is_file():
            raise ExportError(f"{path}: its weights are in {location}, which is missing from {path.parent}; "
                              "copy it there from where the model was exported")
        if file.stat().st_size < end:
            raise ExportError(f"{file}: holds {file.stat().st_size} bytes, the graph reads up to {end}; "
                              "it is truncated: copy it again")


def _check_inputs_and_outputs(path: Path, graph) -> None:
    inputs = [value.name for value in graph.input]
    outputs = [value.name for value in graph.output]
    if not any(name.startswith(PAST_PREFIX) for name in inputs) or \
            not any(name.startswith(PRESENT_PREFIX) for name in outputs):
        raise ExportError(f"{path}: no KV cache inputs ({PAST_PREFIX}N.key/value) and outputs "
                          f"({PRESENT_PREFIX}N.key/value); it was exported without past key/values: "
                          f"{WORKING_EXPORT}")
    missing = [name for name in REQUIRED_INPUTS if name not in inputs] + \
              (["logits"] if "logits" not in outputs else [])
    if missing:
        raise ExportError(f"{path}: lacks {', '.join(missing)} (it has inputs {', '.join(inputs[:4])}, ...); "
                          f"{WORKING_EXPORT}")


def _check_unquantized(path: Path, graph) -> None:
    """Levels are quantized from the model's own weights; quantizing quantized weights again would lose more."""
    quantized = sorted({node.op_type for node in graph.node if node.op_type in QUANTIZED_WEIGHT_OPS})
    if quantized:
        raise ExportError(f"{path}: its weights are already quantized ({', '.join(quantized)}); export-mxfp4 quantizes "
                          "from unquantized (f32, f16 or bf16) weights: pass the ONNX it was made from")


def _check_attention(path: Path, graph) -> None:
    """ONNX's Attention op is the only form the runtime's paged-attention rewrite accepts."""
    ops = {(node.domain or "ai.onnx", node.op_type) for node in graph.node}
    if ("ai.onnx", "Attention") in ops:
        return
    if ("com.microsoft", "GroupQueryAttention") in ops:
        raise ExportError(f"{path}: attention is com.microsoft GroupQueryAttention (onnxruntime-genai's builder), "
                          f"which OpenVINO does not turn into the ScaledDotProductAttention the runtime needs; "
                          f"{WORKING_EXPORT}")
    raise ExportError(f"{path}: attention is decomposed into MatMul/Softmax (opset <= 22, as the TorchScript exporter "
                      "and optimum-onnx write it), which the runtime's paged-attention rewrite cannot use; "
                      f"{WORKING_EXPORT}")
