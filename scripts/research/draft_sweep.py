"""Speed of one chain under several draft settings, against the target alone, on the same prompts.

The variants take turns prompt by prompt so that the machine's drift hits all of them alike. A variant is
CHAIN or CHAIN@LEVEL=K[/CONFIDENCE],... and `noshare:` in front turns off the prompt-cache sharing of the
target's quantized copies. Example:

    python scripts/research/draft_sweep.py $E --prompts humaneval:0-5 \
        "target,draft-int4_sym,lookup@draft-int4_sym=5,lookup=2" \
        "target,draft-int4_sym,lookup@draft-int4_sym=10/0.3,lookup=2"
"""

import argparse
import statistics
import time

from specqd.runtime.tools import prompts
from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.speculative import DraftControls


def parse(variant: str, folder: ExportFolder):
    share = not variant.startswith("noshare:")
    chain, _, settings = variant.removeprefix("noshare:").partition("@")
    names = chain.split(",")
    controls = folder.default_controls(names)
    for item in filter(None, settings.split(",")):
        name, value = item.split("=")
        k, _, confidence = value.partition("/")
        controls[name] = DraftControls(k=int(k), confidence=float(confidence or 0))
    pipeline = folder.pipeline(names, controls)
    if not share:
        pipeline.runner.prompt_sharers = []
    return pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--prompts", default="humaneval:0-5")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    folder = ExportFolder(args.out_dir)
    texts = prompts.load(args.prompts)
    variants = ["target", *args.variants]
    pipelines = {variant: parse(variant, folder) for variant in variants}
    for pipeline in pipelines.values():  # warm-up at full length
        pipeline.generate(texts[0], max_new_tokens=args.max_new_tokens)
    tokens = {variant: 0 for variant in variants}
    seconds = {variant: 0.0 for variant in variants}
    per_round = {variant: [] for variant in variants}
    for number, text in enumerate(texts):
        for variant, pipeline in pipelines.items():
            started = time.perf_counter()
            result = pipeline.generate(text, max_new_tokens=args.max_new_tokens)
            seconds[variant] += time.perf_counter() - started
            tokens[variant] += len(result.tokens)
            per_round[variant].append(result.stats["levels"][0]["mean_accepted_length"])
        print(f"prompt {number + 1}/{len(texts)} done", flush=True)
    baseline = tokens["target"] / seconds["target"]
    for variant in variants:
        speed = tokens[variant] / seconds[variant]
        print(f"{speed:6.2f} tok/s  {speed / baseline:5.2f}x  tokens/target pass "
              f"{statistics.mean(per_round[variant]):5.2f}  {variant}")


if __name__ == "__main__":
    main()
