"""ML-SpecQD against the BF16 target alone on one prompt: the text, the speedup, and each level's stats.

    .venv/bin/python scripts/demo.py EXPORT_DIR [--chain target,target-mxfp4,draft] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse

from specqd.runtime.cli import format_stats
from specqd.runtime.pipeline import ExportFolder, default_chain

PROMPT = '''def is_palindrome(text: str) -> bool:
    """Return True if text reads the same forwards and backwards, ignoring case and non-letters."""
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--chain")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    folder = ExportFolder(args.export_dir)
    chain = args.chain.split(",") if args.chain else default_chain(folder.manifest)
    baseline = folder.pipeline(["target"])
    speculative = folder.pipeline(chain)
    speculative.generate(PROMPT, max_new_tokens=8)  # warm-up: first inferences of each shape are slow
    baseline.generate(PROMPT, max_new_tokens=8)

    print(f"prompt:\n{PROMPT}\n--- {','.join(chain)} ---")
    for piece in speculative.stream(PROMPT, max_new_tokens=args.max_new_tokens):
        print(piece, end="", flush=True)
    fast = speculative.last_result
    slow = baseline.generate(PROMPT, max_new_tokens=args.max_new_tokens)

    same = next((i for i, (a, b) in enumerate(zip(fast.tokens, slow.tokens)) if a != b), len(slow.tokens))
    print("\n\n" + format_stats(["target"], slow.stats))
    print(format_stats(chain, fast.stats))
    print(f"\nspeedup over the BF16 target alone: {fast.stats['tokens_per_second'] / slow.stats['tokens_per_second']:.2f}x"
          f"  (bf16: the first {same} of {len(slow.tokens)} tokens equal the target's own; f32 makes all equal)")


if __name__ == "__main__":
    main()
