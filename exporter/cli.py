"""`export-mxfp4 MODEL OUT_DIR [--draft MODEL] [options]`: thin shell over `export.export`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from specqd.models.fetch import FetchError
from specqd.models.registry import REGISTRY, UnknownModelError
from specqd.runtime.manifest import Manifest
from specqd.runtime.mxfp4_kernel import OPENVINO_KERNEL, SPECQD_KERNEL, Kernel

from . import ir
from .errors import ExportError
from .export import EMBEDDING_CHOICES, OUTPUT_CHOICES, ExportOptions, export
from .reduce_cli import sizes


def _formats(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> ExportOptions:
    parser = argparse.ArgumentParser(
        prog="export-mxfp4",
        description="Export a BF16 checkpoint as OpenVINO IR levels for ML-SpecQD: the BF16 target, its "
                    "MXFP4 copy (the plug-and-play draft) and optional smaller drafts.",
        epilog=f"MODEL is a registry name ({', '.join(REGISTRY)}), a Hugging Face checkpoint folder, a .gguf "
               "file, or an ONNX causal LM with past key/values (a .onnx file or a folder holding model.onnx, with "
               "config.json and tokenizer.json beside it; export-onnx writes one).",
    )
    parser.add_argument("model", metavar="MODEL", help="the target model")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="output folder (created whole or not at all)")
    parser.add_argument("--draft", action="append", default=[], metavar="MODEL",
                        help="a smaller draft model with the same tokenizer; repeatable")
    quantized = ", ".join(ir.QUANTIZED_FORMATS)
    parser.add_argument("--format", type=_formats, default=["mxfp4"], metavar="FMT[,FMT]",
                        help=f"weight formats of the target's quantized copies ({quantized}; default mxfp4)")
    parser.add_argument("--draft-format", type=_formats, default=["bf16"], metavar="FMT[,FMT]",
                        help=f"weight formats of each draft (bf16, {quantized}; default bf16)")
    parser.add_argument("--embeddings", choices=EMBEDDING_CHOICES, default="quantized",
                        help="embedding and lm_head of 4-bit levels: quantize them like the rest (default; "
                             "see README) or keep them bf16")
    parser.add_argument("--to", choices=OUTPUT_CHOICES, default="ir",
                        help="onnx: also write each mxfp4 and int4_sym level as an ONNX level <level>-onnx (MXFP4: "
                             "FLOAT4E2M1 weights, FLOAT8E8M0 scales, run by OpenVINO, not yet by onnxruntime; INT4: "
                             "run by both; see docs/onnx.md)")
    parser.add_argument("--draft-vocabulary", type=sizes, default=[], metavar="N[,N]",
                        help="also write copies of every draft level whose lm_head keeps only the N most frequent "
                             "tokens, one level <level>-v<N/1024>k per size (see docs/draft-vocabulary.md)")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)
    return ExportOptions(model=args.model, out_dir=args.out_dir, drafts=args.draft, formats=args.format,
                         draft_formats=args.draft_format, embeddings=args.embeddings, to=args.to,
                         draft_vocabulary=args.draft_vocabulary, force=args.force)


def summary_table(manifest: Manifest, kernel: Kernel) -> str:
    """One row per level, with the matmul kernel the runtime will run it on here."""
    rows = [("level", "role", "format", "embeddings", "size", "vs BF16", "export time", "kernel")]
    for level in manifest.levels:
        rows.append((level.name, level.role, level.format, level.embeddings, f"{level.bytes / 1e9:.2f} GB",
                     f"{level.bf16_bytes / level.bytes:.2f}x smaller" if level.format != "bf16" else "-",
                     f"{level.export_seconds:.0f} s",
                     SPECQD_KERNEL if level.format == "mxfp4" and kernel.library else OPENVINO_KERNEL))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    started = time.perf_counter()
    try:
        manifest = export(options)
    except (ExportError, UnknownModelError, FetchError) as error:
        print(f"export-mxfp4: error: {error}", file=sys.stderr)
        return 1
    print(f"exported to {options.out_dir} in {time.perf_counter() - started:.0f} s\n")
    kernel = Kernel.find()
    print(summary_table(manifest, kernel))
    if kernel.library is None and any(level.format == "mxfp4" for level in manifest.levels):
        print(f"\nMXFP4 levels will run on OpenVINO's own MXFP4 path: specqd's kernel is {kernel.unavailable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
