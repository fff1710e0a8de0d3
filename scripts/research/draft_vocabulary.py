"""What does a reduced draft vocabulary cost in agreement? Each level's greedy token against the target's.

    python scripts/research/draft_vocabulary.py EXPORT_DIR --levels draft-int4_sym,draft-int4_sym-v32k \
        [--prompts humaneval:100-107] [--max-new-tokens 64]

Teacher-forced on the target's own greedy text (as `specqd tune` measures agreement), in bf16. For a reduced
level it also prints how many of the target's tokens its table holds at all: a token outside the table is a
proposal the reduced draft can never make, so 1 - that share bounds the agreement it loses.
"""

import argparse

import numpy as np

from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import profile, prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--levels", required=True)
    parser.add_argument("--prompts", default="humaneval:100-107")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    folder = ExportFolder(args.out_dir)
    samples = [profile.greedy_continuation(folder, text, args.max_new_tokens) for text in prompts.load(args.prompts)]
    target_tokens = np.concatenate([np.asarray(continuation) for _, continuation in samples])
    print(f"{len(samples)} prompts ({args.prompts}), {len(target_tokens)} target tokens")
    print("| level | agreement with the target | target tokens in its table |")
    print("|---|---|---|")
    for name in args.levels.split(","):
        matches = np.concatenate([profile.predictions(folder, name, prompt, continuation)[0] == continuation
                                  for prompt, continuation in samples])
        vocabulary = folder.model(name).vocabulary
        inside = np.isin(target_tokens, vocabulary.ids).mean() if vocabulary is not None else 1.0
        print(f"| {name} | {matches.mean():.3f} | {inside:.3f} |", flush=True)


if __name__ == "__main__":
    main()
