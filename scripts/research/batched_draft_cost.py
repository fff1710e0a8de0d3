"""What one batched speculative round costs at N requests: the target's pass, the draft's pass, and the rest.

    .venv/bin/python scripts/research/batched_draft_cost.py EXPORT_DIR --draft draft-mxfp4 --requests 8

N greedy requests (HumanEval/82-163) each draft one token per round, as the server's budget has them do in a
full batch; after 3 rounds to settle, the median of 8 rounds (docs/serving.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from specqd.runtime import kvmodel
from specqd.runtime.generation import Chain
from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.sampling import Sampling
from specqd.runtime.speculative import DraftControls
from specqd.runtime.tools import prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()
    folder = ExportFolder(args.export_dir)
    chain = Chain(folder, ["target", args.draft])
    texts = prompts.load("humaneval:82-163")[:args.requests]
    generations = [chain.start(folder.encode(text), 64, Sampling(), (), {args.draft: DraftControls(k=1)})
                   for text in texts]
    draft_model = folder.model(args.draft)
    passes: list[tuple[bool, float]] = []
    run = kvmodel.KVModel.run

    def timed_run(model, *rest, **options):
        started = time.perf_counter()
        result = run(model, *rest, **options)
        passes.append((model is draft_model, 1000 * (time.perf_counter() - started)))
        return result

    kvmodel.KVModel.run = timed_run
    rounds = []
    for index in range(11):
        passes.clear()
        started = time.perf_counter()
        chain.step(generations, [1] * len(generations))
        total = 1000 * (time.perf_counter() - started)
        if index >= 3:
            rounds.append((total, sum(ms for is_draft, ms in passes if not is_draft),
                           sum(ms for is_draft, ms in passes if is_draft)))
    total, target, draft = (statistics.median(column) for column in zip(*rounds))
    print(f"{args.draft} x{args.requests}: round {total:.1f} ms, target pass {target:.1f}, draft pass {draft:.1f}, "
          f"other {total - target - draft:.1f}")


if __name__ == "__main__":
    main()
