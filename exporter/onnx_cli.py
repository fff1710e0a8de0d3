"""`export-onnx MODEL OUT_DIR`: a checkpoint as the ONNX causal LM that `export-mxfp4 OUT_DIR` reads back.

For users whose models travel as ONNX, and to show the ONNX route end to end: `export-onnx` then
`export-mxfp4` gives the same levels as `export-mxfp4 MODEL` directly (docs/onnx.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specqd.models.fetch import FetchError
from specqd.models.registry import REGISTRY, UnknownModelError

from . import sources
from .errors import ExportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export-onnx",
        description="Export a checkpoint as an ONNX causal LM with past key/values (torch dynamo exporter, "
                    "f32 weights), with its config and tokenizer files beside it.",
        epilog=f"MODEL is a registry name ({', '.join(REGISTRY)}), a Hugging Face checkpoint folder or a .gguf file.")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="output folder (created whole or not at all)")
    parser.add_argument("--opset", type=int, default=23,
                        help="ONNX opset (default 23, the first with ONNX's Attention op, which export-mxfp4 needs; "
                             "18 writes decomposed attention)")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)
    try:
        if args.out_dir.exists() and not args.force:
            raise ExportError(f"{args.out_dir}: already exists; pass --force to replace it")
        source = sources.identify(args.model)
        if source.kind == "onnx":
            raise ExportError(f"{args.model}: is already an ONNX model; pass it to export-mxfp4 directly")
        checkpoint, _ = sources.materialize(source)
        from .onnx_export import export_onnx  # torch and transformers: only once the input is known good

        path = export_onnx(checkpoint, args.out_dir, args.opset)
    except (ExportError, UnknownModelError, FetchError) as error:
        print(f"export-onnx: error: {error}", file=sys.stderr)
        return 1
    print(f"exported {path}; next: export-mxfp4 {args.out_dir} OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
