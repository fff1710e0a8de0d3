"""Does appending prompt-lookup guesses after a draft stops (DraftControls.extend) pay, and at what length?

    python scripts/research/extend_lookup.py EXPORT_DIR [--chain target,draft-int4_sym,lookup] \
        [--extend 0,2,4,8] [--prompts humaneval:100-115] [--max-new-tokens 128]

Every setting runs every prompt, the settings taking turns prompt by prompt so that the shared machine's drift
falls on all of them alike; the chain's tuned k and confidence stay as they are, only `extend` of the first
draft level changes. Prints tokens/s, tokens per target pass and the draft level's acceptance, and whether
each setting's tokens equal extend 0's (bf16: a batched pass may round differently, so this is a figure).
"""

import argparse
import dataclasses

from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--chain", default="target,draft-int4_sym,lookup")
    parser.add_argument("--extend", default="0,2,4,8")
    parser.add_argument("--prompts", default="humaneval:100-115")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    folder = ExportFolder(args.out_dir)
    chain = args.chain.split(",")
    controls = folder.default_controls(chain)
    pipelines = {}
    for extend in map(int, args.extend.split(",")):
        changed = dict(controls, **{chain[1]: dataclasses.replace(controls[chain[1]], extend=extend)})
        pipelines[extend] = folder.pipeline(chain, changed)
    texts = prompts.load(args.prompts)
    totals = {extend: {"tokens": 0, "seconds": 0.0, "passes": 0, "drafted": 0, "accepted": 0, "same": 0}
              for extend in pipelines}
    for pipeline in pipelines.values():
        pipeline.generate(texts[0], max_new_tokens=8)  # warm-up
    for number, text in enumerate(texts):
        reference = None
        for extend, pipeline in pipelines.items():
            result = pipeline.generate(text, max_new_tokens=args.max_new_tokens)
            reference = reference or result.tokens
            top, draft = result.stats["levels"][0], result.stats["levels"][1]
            total = totals[extend]
            total["tokens"] += len(result.tokens)
            total["seconds"] += result.stats["seconds"]
            total["passes"] += top["forward_passes"]
            total["drafted"] += draft["drafted"]
            total["accepted"] += draft["accepted"]
            total["same"] += result.tokens == reference
        print(f"prompt {number + 1}/{len(texts)}: " + ", ".join(
            f"extend {e} {t['tokens'] / t['seconds']:.2f} tok/s" for e, t in totals.items()), flush=True)
    base = totals[0]["tokens"] / totals[0]["seconds"] if 0 in totals else None
    print(f"\n{args.chain}, {len(texts)} prompts ({args.prompts}) x {args.max_new_tokens} tokens\n")
    print(f"| extend {chain[1]} | tok/s | vs extend 0 | tokens/target pass | {chain[1]} acceptance | same tokens as extend 0 |")
    print("|---|---|---|---|---|---|")
    for extend, t in totals.items():
        speed = t["tokens"] / t["seconds"]
        ratio = f"{speed / base:.3f}x" if base else "-"
        print(f"| {extend} | {speed:.2f} | {ratio} | {t['tokens'] / t['passes']:.2f} | "
              f"{t['accepted'] / max(1, t['drafted']):.2f} | {t['same']}/{len(texts)} |")


if __name__ == "__main__":
    main()
