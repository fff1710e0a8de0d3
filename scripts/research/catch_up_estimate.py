"""Is the draft budget's estimate of a drafter's prompt read (from its step times) close to a real read?

    .venv/bin/python scripts/research/catch_up_estimate.py EXPORT_DIR draft-mxfp4

For a few HumanEval/82-163 prompts: the estimate server/budget.py makes from tune's step times, and the
measured read (profile.prefill_ms), in ms (docs/serving.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import profile, prompts
from specqd.server.budget import DraftBudget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("level")
    args = parser.parse_args()
    folder = ExportFolder(args.export_dir)
    step_ms = {int(n): ms for n, ms in folder.manifest.tuned["step_ms"][args.level].items()}
    budget = DraftBudget({1: 1.0}, step_ms)
    for index in (0, 5, 20):
        prompt = folder.encode(prompts.load("humaneval:82-163")[index])
        print(f"{args.level}, {len(prompt)} tokens: estimated {budget.catch_up_ms(len(prompt)):.0f} ms, "
              f"measured {profile.prefill_ms(folder, args.level, prompt):.0f} ms")


if __name__ == "__main__":
    main()
