"""Speed of llama.cpp's speculative decoding under several draft settings, against its BF16 target alone.

Chooses the settings of bench's llama.cpp rows the way llama.cpp users tune theirs: a few values of
--spec-draft-n-max / --spec-draft-n-min / --spec-draft-p-min for the draft model, and of the n-gram sizes for
prompt lookup, tried on a few prompts. Every server stays up (they map the same GGUF files, so the weights
are in memory once) and the variants take turns prompt by prompt, so that the machine's drift hits all of
them alike. A variant is `draft:MAX/MIN/P_MIN` (the BF16 0.5B drafting) or `lookup:N/M` (ngram-simple).
Example (`specqd llamacpp $E` first):

    python scripts/research/llamacpp_draft_sweep.py $E --prompts humaneval:0-2 \
        draft:3/0/0 draft:16/0/0.75 draft:8/0/0.5 lookup:3/48 lookup:12/48
"""

import argparse
import dataclasses
from contextlib import ExitStack

from specqd.runtime.manifest import Manifest
from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import bench, prompts
from specqd.runtime.tools.llamacpp_build import LlamaCppBuild
from specqd.runtime.tools.llamacpp_engine import LlamaCppConfig, LlamaCppEngine


def parse(variant: str, levels: dict) -> LlamaCppConfig:
    kind, _, settings = variant.partition(":")
    if kind == "alone":
        return bench.llamacpp_config(levels, ["target"])
    values = settings.split("/")
    if kind == "draft":
        config = bench.llamacpp_config(levels, ["target", "draft"])
        return dataclasses.replace(config, draft_max=int(values[0]), draft_min=int(values[1]),
                                   draft_p_min=float(values[2]))
    config = bench.llamacpp_config(levels, ["target", "lookup"])
    return dataclasses.replace(config, lookup_n=int(values[0]), lookup_m=int(values[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--prompts", default="humaneval:0-2")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    levels = {level.name: level for level in Manifest.read(args.out_dir).levels}
    folder = ExportFolder(args.out_dir)
    ids = [folder.encode(text) for text in prompts.load(args.prompts)]
    variants = ["alone", *args.variants]
    server = LlamaCppBuild.cached().require_server()
    with ExitStack() as stack:
        engines = {variant: stack.enter_context(LlamaCppEngine(parse(variant, levels), server))
                   for variant in variants}
        for engine in engines.values():  # warm-up at full length
            engine.generate(ids[0], args.max_new_tokens)
        results = {variant: [] for variant in variants}
        for number, prompt_ids in enumerate(ids):
            for variant, engine in engines.items():
                results[variant].append(engine.generate(prompt_ids, args.max_new_tokens))
            print(f"prompt {number + 1}/{len(ids)} done", flush=True)
    speed = {variant: sum(len(r.tokens) for r in rs) / sum(r.seconds for r in rs) for variant, rs in results.items()}
    reference = [r.tokens for r in results["alone"]]
    print("| variant | tok/s | speedup | tokens/target pass | acceptance | agreement |\n|---|---|---|---|---|---|")
    for variant, rs in results.items():
        drafted, accepted = sum(r.drafted for r in rs), sum(r.accepted for r in rs)
        per_pass = sum(len(r.tokens) for r in rs) / sum(r.target_steps for r in rs)
        print(f"| {variant} | {speed[variant]:.2f} | {speed[variant] / speed['alone']:.2f}x | {per_pass:.2f} | "
              f"{accepted / drafted if drafted else 0:.2f} | "
              f"{bench.agreement([r.tokens for r in rs], reference):.3f} |")


if __name__ == "__main__":
    main()
