"""The GGUF files llama.cpp's benchmark rows read, found or made from what an export's levels came from.

A level `target` or `draft` (a BF16 level) runs in llama.cpp as a BF16 GGUF holding exactly the weights of
specqd's BF16 level: the exporter dequantized the source GGUF's k-quants to f32 and rounded them to BF16
(transformers' GGUF loader, then a bf16 cast), so re-typing the same GGUF the same way with the `gguf`
package gives the same numbers, and keeps the source's tokenizer and metadata, which is what llama.cpp reads.
As llama.cpp's own converter does for `--outtype bf16`, 1-D tensors (norms, biases) stay F32, holding their
BF16-rounded values. `<level>-q4km` is the level's source GGUF itself (the registry ships Q4_K_M), which is
what a llama.cpp user would run: lossy against the BF16 target.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from specqd.models.cache import atomic_path, cache_root, say
from specqd.models.registry import REGISTRY

from ..manifest import Level
from .llamacpp_build import SETUP_COMMAND, LlamaCppError

SHIPPED = "-q4km"
Q4_K_M = 15  # general.file_type of a GGUF quantized to Q4_K_M (llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M)


def source_gguf(level: Level) -> Path:
    """The GGUF `level` was exported from: a registry model's cached download, or a .gguf file given as MODEL."""
    if level.source in REGISTRY:
        return cache_root() / "gguf" / f"{level.source}.gguf"
    if level.source.endswith(".gguf"):
        return Path(level.source)
    raise LlamaCppError(f"level {level.name!r} was exported from {level.source}, not from a GGUF file: llama.cpp "
                        "rows run the GGUF a level came from; export from a registry name or a .gguf file")


def bf16_gguf(level: Level) -> Path:
    """Where the BF16 re-typing of the level's source GGUF is cached (one per source file)."""
    return cache_root() / "gguf" / f"{source_gguf(level).stem}-{level.source_sha256[:12]}-bf16.gguf"


def gguf_for(levels: dict[str, Level], name: str) -> Path:
    """The GGUF of chain element `name` (a BF16 level, or `<level>-q4km`); an error says how to make it."""
    base = name.removesuffix(SHIPPED)
    level = levels.get(base)
    if level is None or level.format != "bf16":
        bf16 = sorted(n for n, lv in levels.items() if lv.format == "bf16")
        raise LlamaCppError(f"llama.cpp runs BF16 levels or their shipped GGUF: {name!r} is not one of "
                            f"{', '.join(bf16 + [n + SHIPPED for n in bf16])}")
    path = source_gguf(level) if name.endswith(SHIPPED) else bf16_gguf(level)
    if not path.is_file():
        raise LlamaCppError(f"the GGUF for {name!r} is missing: {path}; run `{SETUP_COMMAND}` to fetch or make it")
    if name.endswith(SHIPPED) and file_type(path) != Q4_K_M:
        raise LlamaCppError(f"{path} is not a Q4_K_M GGUF (general.file_type {file_type(path)}), so {name!r} "
                            "would be mislabelled; run its BF16 level instead")
    return path


def file_type(path: Path) -> int | None:
    import gguf

    field = gguf.GGUFReader(path).get_field(gguf.Keys.General.FILE_TYPE)
    return int(field.contents()) if field is not None else None


def retype_bf16(source: Path, out: Path) -> Path:
    """Write `source` with every tensor's values rounded to BF16 as the exporter rounds them; atomic."""
    import gguf

    if out.is_file():
        return out
    started = time.perf_counter()
    say(f"llama.cpp: writing {out.name}: {source.name} dequantized and rounded to BF16")
    reader = gguf.GGUFReader(source)
    with atomic_path(out) as scratch:
        writer = gguf.GGUFWriter(scratch, str(reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()))
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name in (gguf.Keys.General.ARCHITECTURE,
                                                                 gguf.Keys.General.FILE_TYPE):
                continue
            array = field.types[0] == gguf.GGUFValueType.ARRAY
            writer.add_key_value(field.name, field.contents(), field.types[0],
                                 sub_type=field.types[-1] if array else None)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
        # Tensor infos first, then the data one tensor at a time: a 1.5B model never sits in memory whole.
        kinds = [gguf.GGMLQuantizationType.F32 if len(tensor.shape) == 1 else gguf.GGMLQuantizationType.BF16
                 for tensor in reader.tensors]
        for tensor, kind in zip(reader.tensors, kinds):
            shape = [int(n) for n in reversed(tensor.shape)]  # numpy order, as the writer takes it
            size = int(np.prod(shape)) * (4 if kind == gguf.GGMLQuantizationType.F32 else 2)
            writer.add_tensor_info(tensor.name, shape, np.dtype(np.float32), size, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, (tensor, kind) in enumerate(zip(reader.tensors, kinds), start=1):
            values = gguf.dequantize(tensor.data, tensor.tensor_type)
            bf16 = gguf.quantize(values.astype(np.float32), gguf.GGMLQuantizationType.BF16)
            writer.write_tensor_data(bf16 if kind == gguf.GGMLQuantizationType.BF16
                                     else gguf.dequantize(bf16, gguf.GGMLQuantizationType.BF16).astype(np.float32))
            if index % 50 == 0 or index == len(kinds):
                say(f"llama.cpp: {out.name}: {index}/{len(kinds)} tensors")
        writer.close()
    say(f"llama.cpp: wrote {out} ({out.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s")
    return out


def prepare(levels: list[Level]) -> list[Path]:
    """Fetch (registry models) and re-type the source GGUF of every BF16 level; return the BF16 GGUFs."""
    from specqd.models.fetch import fetch_gguf

    made = []
    for level in levels:
        if level.format != "bf16":
            continue
        source = source_gguf(level)
        if not source.is_file() and level.source in REGISTRY:
            source = fetch_gguf(REGISTRY[level.source])
        if not source.is_file():
            raise LlamaCppError(f"{source} (the GGUF level {level.name!r} was exported from) is missing")
        made.append(retype_bf16(source, bf16_gguf(level)))
    return made
