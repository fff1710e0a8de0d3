"""Turn a MODEL argument (registry name, checkpoint folder, .gguf or ONNX file) into what levels are made from.

A registry name, checkpoint or GGUF becomes a BF16 checkpoint; an ONNX model is used as it is (onnx_source.py).

Resolution has two phases so that bad input fails before any slow work: `identify` checks every argument
in milliseconds (names, paths, file headers, architecture), then `materialize` fetches and converts what
needs it, caching the result under the specqd cache.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from specqd.models import registry
from specqd.models.cache import cache_root
from specqd.models.fetch import fetch_gguf, sha256_file

from . import gguf_checkpoint, onnx_source
from .errors import ExportError

# Architectures whose optimum export gives the stateful decoder IR the runtime drives
# (input_ids, attention_mask, position_ids, beam_idx → logits, KV cache in state).
SUPPORTED_ARCHITECTURES = ("qwen2", "qwen3", "llama", "mistral")


@dataclass(frozen=True)
class Source:
    argument: str
    kind: str                  # "registry", "gguf", "checkpoint" or "onnx"
    path: Path | None          # the GGUF file, checkpoint folder or .onnx file; None for a registry name
    architecture: str


def identify(argument: str) -> Source:
    path = Path(argument).expanduser()
    if argument not in registry.REGISTRY:
        onnx = onnx_source.onnx_file(path)
        if onnx is not None:
            return Source(argument, "onnx", onnx, onnx_source.identify(onnx, SUPPORTED_ARCHITECTURES).architecture)
        if path.is_dir():
            return Source(argument, "checkpoint", path, _check_architecture(path, _checkpoint_architecture(path)))
        if path.is_file():
            if path.suffix != ".gguf":
                raise ExportError(f"{path}: not a checkpoint folder, a .gguf file or a .onnx file")
            architecture = gguf_checkpoint.read_gguf_architecture(path)
            return Source(argument, "gguf", path, _check_architecture(path, architecture))
        if "/" in argument or argument.endswith((".gguf", ".onnx")):
            raise ExportError(f"{path}: no such file or folder")
    return Source(argument, "registry", None, registry.get(argument).architecture)


def materialize(source: Source) -> tuple[Path, str]:
    """Return (BF16 checkpoint folder, sha256 identifying the source's weights); for ONNX, the folder it is in."""
    if source.kind == "onnx":
        return source.path.parent, onnx_source.sha256(onnx_source.OnnxModel(source.path, source.architecture))
    if source.kind == "checkpoint":
        return source.path, _checkpoint_sha256(source.path)
    if source.kind == "registry":
        model = registry.get(source.argument)
        gguf, sha256 = fetch_gguf(model), model.gguf_sha256
        checkpoint = cache_root() / "checkpoints" / model.name
    else:
        gguf, sha256 = source.path, sha256_file(source.path)
        checkpoint = cache_root() / "checkpoints" / f"gguf-{sha256[:16]}"
    if not checkpoint.exists():
        gguf_checkpoint.convert(gguf, checkpoint)
    return checkpoint, sha256


def _check_architecture(path: Path, architecture: str) -> str:
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ExportError(f"{path}: unsupported architecture {architecture!r}; supported: "
                          f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    return architecture


def _checkpoint_architecture(folder: Path) -> str:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder}: not a Hugging Face checkpoint (no config.json)")
    try:
        architecture = json.loads(config_path.read_text())["model_type"]
    except (json.JSONDecodeError, KeyError) as error:
        raise ExportError(f"{config_path}: unreadable config ({error!r})") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ExportError(f"{folder}: no *.safetensors weights (other weight formats are not supported)")
    for file in weights:
        _check_safetensors(file)
    return architecture


def _check_safetensors(file: Path) -> None:
    """Validate the header and that the file holds every byte it declares, without reading the tensors."""
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(header_size))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ExportError(f"{file}: corrupt safetensors file ({error}); replace it") from None
    if 8 + header_size + end != size:
        raise ExportError(f"{file}: corrupt safetensors file (header declares {8 + header_size + end} bytes, "
                          f"file has {size}); it is truncated or damaged: replace it")


def _checkpoint_sha256(folder: Path) -> str:
    """One digest over config and weights, so the manifest pins exactly what was exported."""
    digest = hashlib.sha256()
    for file in [folder / "config.json", *sorted(folder.glob("*.safetensors"))]:
        digest.update(file.name.encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()
