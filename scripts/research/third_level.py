"""When does ML-SpecQD's third level pay? tune's cost model, with the middle level made faster step by step.

    python scripts/research/third_level.py EXPORT_DIR [--middle target-mxfp4] [--prompts humaneval:0-2]

Uses the step times `specqd tune` stored in the export's manifest and replays drafting rounds along the
target's own text (as tune does). For each speed factor f, the middle level's step times are multiplied by f
and the best three-level chain target <- MIDDLE <- X (any X, any settings) is compared with the best chain
without MIDDLE. The answer is the factor below which the extra level would pay on this machine.
"""

import argparse

from specqd.runtime.tools import profile, prompts
from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools.tune import CostModel, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--middle", default="target-mxfp4")
    parser.add_argument("--prompts", default="humaneval:0-2")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    folder = ExportFolder(args.out_dir)
    tuned = folder.manifest.tuned or {}
    if "step_ms" not in tuned:
        raise SystemExit(f"{args.out_dir}: run `specqd tune` first (its step times are the input here)")
    times = {name: {int(n): ms for n, ms in steps.items()} for name, steps in tuned["step_ms"].items()}
    levels = list(times)
    samples = [profile.greedy_continuation(folder, text, args.max_new_tokens) for text in prompts.load(args.prompts)]
    traces = profile.traces(folder, levels, samples)
    copies = frozenset(name for name in levels if folder.is_copy_of_target(name))
    print(f"middle level {args.middle}: n=1 step {times[args.middle][1]:.1f} ms, agreement with the target "
          f"{traces[('target', args.middle)].agreement:.3f}")
    for factor in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2):
        scaled = {**times, args.middle: {n: ms * factor for n, ms in times[args.middle].items()}}
        plans = search(levels, CostModel(scaled, traces, tuned["prompt_read_ms"], copies), 128)
        three = next(p for p in plans if len(p.chain) >= 3 and p.chain[1] == args.middle and p.chain[2] != "lookup")
        other = next(p for p in plans if args.middle not in p.chain)
        print(f"x{factor:.1f} (n=1 {times[args.middle][1] * factor:5.1f} ms): best three-level "
              f"{','.join(three.chain)} {three.tokens_per_second:5.1f} tok/s; best without {args.middle} "
              f"{','.join(other.chain)} {other.tokens_per_second:5.1f} tok/s", flush=True)


if __name__ == "__main__":
    main()
