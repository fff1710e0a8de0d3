"""The export job: validate everything, build every level in a scratch folder, then move it into place whole."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from specqd.models.cache import say
from specqd.runtime.manifest import Level, Manifest

from . import ir, onnx_source, reduced_vocabulary, sources, vocabulary
from .errors import ExportError

EMBEDDING_CHOICES = ("bf16", "quantized")
OUTPUT_CHOICES = ("ir", "onnx")
# Formats --to onnx also writes as ONNX: the paper's MXFP4 (exactly the IR level's weights; OpenVINO runs it,
# onnxruntime cannot yet) and INT4_SYM (onnxruntime's own MatMulNBits: what onnxruntime runs well today).
ONNX_FORMATS = ("mxfp4", "int4_sym")


@dataclass
class ExportOptions:
    model: str
    out_dir: Path
    drafts: list[str] = field(default_factory=list)
    # Formats of the target's quantized copies: one level "target-<format>" each.
    formats: list[str] = field(default_factory=lambda: ["mxfp4"])
    # Formats of each draft: "bf16" gives level "draft", any other "draft-<format>".
    draft_formats: list[str] = field(default_factory=lambda: ["bf16"])
    # Embedding and lm_head of 4-bit levels: "quantized" like every other layer (measured smaller, faster and
    # as accurate on Qwen2.5-Coder-1.5B, see README), or "bf16" as the ML-SpecQD paper keeps them.
    embeddings: str = "quantized"
    # "onnx": also write each ONNX_FORMATS level as an ONNX level "<level>-onnx" (onnx_output.py).
    to: str = "ir"
    # Sizes of reduced-vocabulary copies of every level of each --draft model: "<level>-v<N/1024>k" each
    # (reduced_vocabulary.py; the target's levels keep the whole vocabulary).
    draft_vocabulary: list[int] = field(default_factory=list)
    force: bool = False

    def validate(self) -> None:
        known = ", ".join(ir.QUANTIZED_FORMATS)
        for fmt in self.formats:
            if fmt not in ir.QUANTIZED_FORMATS:
                raise ExportError(f"--format {fmt!r}: unknown weight format; choose from {known}")
        for fmt in self.draft_formats:
            if fmt != "bf16" and fmt not in ir.QUANTIZED_FORMATS:
                raise ExportError(f"--draft-format {fmt!r}: unknown weight format; choose from bf16, {known}")
        if self.embeddings not in EMBEDDING_CHOICES:
            raise ExportError(f"--embeddings {self.embeddings!r}: choose from {', '.join(EMBEDDING_CHOICES)}")
        if self.to not in OUTPUT_CHOICES:
            raise ExportError(f"--to {self.to!r}: choose from {', '.join(OUTPUT_CHOICES)}")
        if self.to == "onnx":
            if not set(ONNX_FORMATS) & {*self.formats, *self.draft_formats}:
                raise ExportError(f"--to onnx writes {', '.join(ONNX_FORMATS)} levels as ONNX: add one to --format "
                                  "or --draft-format")
            onnx_source.require_onnx("--to onnx")
        if len(set(self.formats)) != len(self.formats) or len(set(self.draft_formats)) != len(self.draft_formats):
            raise ExportError("--format and --draft-format must not repeat a format")
        if self.draft_vocabulary and not self.drafts:
            raise ExportError("--draft-vocabulary reduces the levels of a --draft model: add one")
        if self.out_dir.exists() and not self.force:
            raise ExportError(f"{self.out_dir}: already exists; pass --force to replace it")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ExportError(f"{self.out_dir}: exists and is not a folder")


def export(options: ExportOptions) -> Manifest:
    options.validate()
    target_source = sources.identify(options.model)
    draft_sources = [sources.identify(draft) for draft in options.drafts]

    target_checkpoint, target_sha = sources.materialize(target_source)
    target_print = vocabulary.fingerprint(target_checkpoint)
    drafts = []
    for index, source in enumerate(draft_sources):
        checkpoint, sha = sources.materialize(source)
        draft_print = vocabulary.fingerprint(checkpoint)
        vocabulary.check_same(options.model, target_print, source.argument, draft_print)
        drafts.append((_draft_name(index), source, checkpoint, sha))

    with replacing(options.out_dir) as scratch:
        levels = _export_model(scratch, "target", target_source, target_checkpoint, target_sha,
                               target_print, ["bf16", *options.formats], options.embeddings, options.to)
        for name, source, checkpoint, sha in drafts:
            levels += _export_model(scratch, name, source, checkpoint, sha, target_print,
                                    options.draft_formats, options.embeddings, options.to)
        manifest = Manifest(levels=levels, tools=_tool_versions())
        manifest.write(scratch)
        if options.draft_vocabulary:
            for level in [level for level in levels if level.name.startswith("draft") and "-onnx" not in level.name]:
                manifest.levels += reduced_vocabulary.add_levels(scratch, level.name, options.draft_vocabulary)
    return manifest


def _draft_name(index: int) -> str:
    return "draft" if index == 0 else f"draft{index + 1}"


def _export_model(root: Path, name: str, source: sources.Source, checkpoint: Path, sha256: str,
                  tokenizer_print: str, formats: list[str], embeddings: str, to: str) -> list[Level]:
    """Export one model in every requested format; its unquantized IR is always made, as the source of the rest.

    "bf16" in `formats` asks for that unquantized level; from an ONNX source it is BF16 too when the ONNX holds
    BF16 values (an export of a BF16 checkpoint), else the ONNX's own f32 or f16. With `to` "onnx", each
    ONNX_FORMATS level also gets an ONNX twin, made from the source ONNX or from an f32 ONNX exported here.
    """
    bf16_dir = root / name if "bf16" in formats else root / f".{name}-bf16"
    started = time.perf_counter()
    if source.kind == "onnx":
        say(f"[{name}] converting {source.path} to a stateful IR")
        base_format = onnx_source.write_level(onnx_source.OnnxModel(source.path, source.architecture), bf16_dir)
    else:
        say(f"[{name}] exporting BF16 IR from {checkpoint}")
        ir.export_bf16(checkpoint, bf16_dir)
        base_format = "bf16"
    bf16_seconds = time.perf_counter() - started

    def level(level_name: str, fmt: str, seconds: float, level_embeddings: str) -> Level:
        role = "target" if level_name == "target" else "draft"
        return Level(name=level_name, role=role, format=fmt, path=level_name, bytes=ir.folder_bytes(root / level_name),
                     source=source.argument, source_sha256=sha256, tokenizer_sha256=tokenizer_print,
                     embeddings=level_embeddings, export_seconds=round(seconds, 1), bf16_bytes=ir.folder_bytes(bf16_dir))

    levels = [level(name, base_format, bf16_seconds, base_format)] if "bf16" in formats else []
    f32_onnx = None
    for fmt in formats:
        if fmt == "bf16":
            continue
        level_name = f"{name}-{fmt}"
        started = time.perf_counter()
        say(f"[{level_name}] quantizing weights to {fmt} with NNCF")
        ir.quantize(bf16_dir, root / level_name, fmt, embeddings)
        keeps_bf16 = fmt in ir.FORMATS_WITH_EMBEDDING_CHOICE and embeddings == "bf16"
        level_embeddings = "bf16" if keeps_bf16 else fmt
        levels.append(level(level_name, fmt, time.perf_counter() - started, level_embeddings))
        if to == "onnx" and fmt in ONNX_FORMATS:
            from . import onnx_output

            started = time.perf_counter()  # the first ONNX level's time includes exporting the f32 ONNX
            if f32_onnx is None:
                f32_onnx = source.path if source.kind == "onnx" else _f32_onnx(checkpoint, root / f".{name}-onnx")
            say(f"[{level_name}-onnx] writing the {fmt} weights into an ONNX copy of {f32_onnx}")
            onnx_embeddings = onnx_output.write_level(root / level_name, f32_onnx, root / f"{level_name}-onnx", fmt,
                                                      embeddings)
            levels.append(level(f"{level_name}-onnx", fmt, time.perf_counter() - started, onnx_embeddings))
    if "bf16" not in formats:
        shutil.rmtree(bf16_dir)
    shutil.rmtree(root / f".{name}-onnx", ignore_errors=True)
    return levels


def _f32_onnx(checkpoint: Path, out: Path) -> Path:
    from .onnx_export import export_onnx  # torch: only when an ONNX must be made

    return export_onnx(checkpoint, out)


@contextmanager
def replacing(out_dir: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `out_dir` that replaces it (if any) once the block succeeds.

    Two renames on one filesystem: the old folder is replaced only once the new one is complete, and a
    failure leaves neither the new folder nor the scratch behind.
    """
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield scratch
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(scratch, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(scratch, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("specqd", "openvino", "openvino-tokenizers", "nncf", "optimum-intel", "transformers", "torch",
                    "onnx", "onnx-ir"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions
