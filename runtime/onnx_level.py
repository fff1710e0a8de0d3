"""Levels stored as ONNX (`export-mxfp4 --to onnx`): read by OpenVINO's own ONNX reader, then run like any level.

OpenVINO keeps the MXFP4 ONNX's FLOAT4E2M1 weights compressed, so after the same conversion an ONNX source
gets (constant folding, KV cache into state: exporter/onnx_source.py) the level is the IR level's model, and
specqd's MXFP4 kernel takes its MatMuls. The kernel rewrites IR text, so the converted model is saved to a
scratch folder and read back from there; its weights stay mapped after the folder is gone.

Making the KV cache state uses optimum-intel (the exporter's dependency), so ONNX levels need
`pip install 'specqd[export]'`; the runtime's own dependencies stay openvino, openvino-tokenizers and numpy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import openvino as ov

from .mxfp4_kernel import Kernel, LoadedIR

ONNX_NAME = "model.onnx"
IR_NAME = "openvino_model.xml"


def is_onnx_level(folder: Path) -> bool:
    return not (folder / IR_NAME).exists() and (folder / ONNX_NAME).is_file()


def read(core: ov.Core, folder: Path, precision: str, kernel: Kernel) -> LoadedIR:
    """The level's model from folder/model.onnx, as Kernel.read_model gives it for an IR."""
    try:
        from specqd.exporter.onnx_source import stateful_model
    except ImportError as error:
        raise RuntimeError(f"{folder / ONNX_NAME}: an ONNX level needs the exporter's packages to make its KV cache "
                           f"state ({error}): pip install 'specqd[export]', or use the IR level beside it") from None
    with tempfile.TemporaryDirectory(prefix="specqd-onnx-") as scratch:
        xml = Path(scratch) / folder.name / IR_NAME   # the kernel's log line names the level by its folder
        ov.save_model(stateful_model(folder / ONNX_NAME), xml, compress_to_fp16=False)
        return kernel.read_model(core, xml, precision)
