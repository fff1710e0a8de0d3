"""ML-SpecQD against the BF16 target alone on one prompt: the text, the speedup, and each level's stats.

    .venv/bin/python scripts/demo.py EXPORT_DIR [--chains "target,target-mxfp4,draft;..."] [--max-new-tokens 128]

By default it runs ML-SpecQD's three levels and, when `specqd tune` chose another chain, that one too.
"""

from __future__ import annotations

import argparse

from specqd.runtime.cli import format_stats
from specqd.runtime.pipeline import ExportFolder, default_chain

PROMPT = '''def is_palindrome(text: str) -> bool:
    """Return True if text reads the same forwards and backwards, ignoring case and non-letters."""
'''
ML_SPECQD = ["target", "target-mxfp4", "draft"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--chains", help="';'-separated chains")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    folder = ExportFolder(args.export_dir)
    chains = [chain.split(",") for chain in args.chains.split(";")] if args.chains else \
        [ML_SPECQD] + ([default_chain(folder.manifest)] if default_chain(folder.manifest) != ML_SPECQD else [])

    baseline = folder.pipeline(["target"])
    baseline.generate(PROMPT, max_new_tokens=8)  # warm-up: the first inference of each shape is slow
    slow = baseline.generate(PROMPT, max_new_tokens=args.max_new_tokens)
    print(f"prompt:\n{PROMPT}")
    print(format_stats(["target"], slow.stats))
    for chain in chains:
        speculative = folder.pipeline(chain)
        speculative.generate(PROMPT, max_new_tokens=8)
        print(f"\n--- {','.join(chain)} ---")
        for piece in speculative.stream(PROMPT, max_new_tokens=args.max_new_tokens):
            print(piece, end="", flush=True)
        fast = speculative.last_result
        same = next((i for i, (a, b) in enumerate(zip(fast.tokens, slow.tokens)) if a != b), len(slow.tokens))
        print("\n\n" + format_stats(chain, fast.stats))
        print(f"speedup over the BF16 target alone: "
              f"{fast.stats['tokens_per_second'] / slow.stats['tokens_per_second']:.2f}x  (bf16: the first {same} of "
              f"{len(slow.tokens)} tokens equal the target's own; in f32 all are equal)")


if __name__ == "__main__":
    main()
