"""Do chains run faster with their drafts in the precisions `specqd tune` chose (f32 for INT4 drafts on AMX)
than with every level in bf16? Same chains and settings, the two taking turns prompt by prompt.

    python scripts/research/draft_precision.py EXPORT_DIR --chains "target,draft-int4_sym-v32k;target,draft-mxfp4" \
        [--prompts humaneval:100-115] [--max-new-tokens 128]

The target runs in bf16 in both; only the drafts' inference precision differs, which never changes which tokens
the target accepts (f32 exactness is the runtime tests' business), only how long drafting takes.
"""

import argparse

import numpy as np

from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--chains", required=True, help="chains separated by ';'")
    parser.add_argument("--prompts", default="humaneval:100-115")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    tuned, bf16 = ExportFolder(args.out_dir), ExportFolder(args.out_dir)
    bf16.set_draft_precisions({})
    print(f"tuned draft precisions: {tuned.manifest.tuned.get('precision', {})}")
    runs = {"target": bf16.pipeline(["target"])}
    for chain in args.chains.split(";"):
        runs[f"{chain} (bf16 drafts)"] = bf16.pipeline(chain)
        runs[f"{chain} (tuned drafts)"] = tuned.pipeline(chain)
    texts = prompts.load(args.prompts)
    for pipeline in runs.values():
        pipeline.generate(texts[0], max_new_tokens=8)  # warm-up
    tokens = {name: [] for name in runs}
    seconds = {name: [] for name in runs}
    draft_ms = {name: [] for name in runs}
    for index, text in enumerate(texts):
        for name, pipeline in runs.items():
            result = pipeline.generate(text, max_new_tokens=args.max_new_tokens)
            tokens[name].append(len(result.tokens))
            seconds[name].append(result.stats["seconds"])
            for level in result.stats["levels"][1:2]:
                draft_ms[name].append(1000 * level["seconds"] / max(level["forward_passes"], 1))
        print(f"prompt {index + 1}/{len(texts)} done", flush=True)
    speed = {name: sum(tokens[name]) / sum(seconds[name]) for name in runs}
    print(f"\n{len(texts)} prompts ({args.prompts}) x {args.max_new_tokens} new tokens, greedy, target in bf16\n")
    print("| run | tok/s | speedup over the target | draft ms per pass (mean over prompts) |")
    print("|---|---|---|---|")
    for name in runs:
        passes = f"{np.mean(draft_ms[name]):.1f}" if draft_ms[name] else "-"
        print(f"| {name} | {speed[name]:.2f} | {speed[name] / speed['target']:.2f}x | {passes} |")
    for chain in args.chains.split(";"):
        new, old = f"{chain} (tuned drafts)", f"{chain} (bf16 drafts)"
        per_prompt = (np.array(tokens[new]) / np.array(seconds[new])) / (np.array(tokens[old]) / np.array(seconds[old]))
        print(f"\n{chain}: tuned drafts / bf16 drafts {speed[new] / speed[old]:.3f} "
              f"(per prompt {per_prompt.min():.2f}-{per_prompt.max():.2f}, median {np.median(per_prompt):.3f})")


if __name__ == "__main__":
    main()
