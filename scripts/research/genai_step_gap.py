"""Per-step cost of one draft pair in our runtime and in openvino-genai, on the same prompts and IR folders.

    .venv/bin/python scripts/research/genai_step_gap.py [EXPORT_DIR] [--draft draft-int4_sym] [--k 5] [--prompts humaneval:0-1]

Both reach the same tokens per target pass, so a speed gap between them is a gap in step cost; this prints
ms per target pass and per draft pass for ours, and genai's total target and draft inference time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specqd.runtime.tools import prompts
from specqd.runtime.tools.genai_engine import GenAIConfig, GenAIEngine
from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.speculative import DraftControls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", type=Path,
                        default=Path.home() / ".cache/specqd/exports/qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="draft-int4_sym")
    parser.add_argument("--k", type=int, default=5, help="ours; genai drafts its default 5")
    parser.add_argument("--prompts", default="humaneval:0-1")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    folder = ExportFolder(args.export_dir)
    texts = prompts.load(args.prompts)
    ours = folder.pipeline(["target", args.draft], {args.draft: DraftControls(k=args.k)})
    genai = GenAIEngine(GenAIConfig(target=args.export_dir / "target", draft=args.export_dir / args.draft))
    ours.generate(texts[0], max_new_tokens=8)
    genai.generate(folder.encode(texts[0]), 8)
    for text in texts:
        result = ours.generate(text, max_new_tokens=args.max_new_tokens)
        target, draft = result.stats["levels"]
        print(f"ours : {result.stats['tokens_per_second']:.2f} tok/s; target {target['forward_passes']} passes, "
              f"{target['seconds']:.2f} s ({1000 * target['seconds'] / target['forward_passes']:.0f} ms/pass); "
              f"draft {draft['forward_passes']} passes, {draft['seconds']:.2f} s")
        other = genai.generate(folder.encode(text), args.max_new_tokens)
        print(f"genai: {len(other.tokens) / other.seconds:.2f} tok/s; target {other.target_steps} steps, "
              f"{other.target_seconds:.2f} s; draft {other.draft_seconds:.2f} s")


if __name__ == "__main__":
    main()
