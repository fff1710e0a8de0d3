"""`reduce-vocabulary EXPORT LEVEL --sizes N[,N]`: add reduced-vocabulary copies of a draft level to an export.

The export-time route is `export-mxfp4 ... --draft-vocabulary N[,N]`; this one adds levels to an export that
exists, leaving its other levels untouched (see docs/draft-vocabulary.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specqd.runtime.manifest import ManifestError

from .errors import ExportError
from .reduced_vocabulary import add_levels


def sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected token counts like 16384,32768") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive token counts like 16384,32768")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reduce-vocabulary",
        description="Add copies of a draft level whose lm_head keeps only the N most frequent tokens (counted on "
                    "text in installed packages), one level <LEVEL>-v<N/1024>k per size.")
    parser.add_argument("export", type=Path, metavar="EXPORT", help="an export-mxfp4 output folder")
    parser.add_argument("level", metavar="LEVEL", help="the draft level to reduce, e.g. draft-int4_sym")
    parser.add_argument("--sizes", type=sizes, required=True, metavar="N[,N]", help="tokens each copy keeps")
    parser.add_argument("--force", action="store_true", help="replace reduced levels of these names")
    args = parser.parse_args(argv)
    try:
        added = add_levels(args.export, args.level, args.sizes, force=args.force)
    except (ExportError, ManifestError, ValueError) as error:
        print(f"reduce-vocabulary: error: {error}", file=sys.stderr)
        return 1
    for level in added:
        print(f"{level.name}: {level.vocabulary} tokens, {level.bytes / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
