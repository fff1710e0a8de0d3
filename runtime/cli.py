"""`specqd generate|bench OUT_DIR ...`: thin shell over the pipeline and the benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import bench, prompts
from .manifest import ManifestError
from .pipeline import ExportFolder, GenerationError, default_chain
from .sampling import Sampling
from .speculative import DraftControls

DEFAULT_K = 8
DEFAULT_CONFIDENCE = 0.0


def _per_level(text: str, kind: type) -> dict[str, object]:
    """"8" applies to every level; "target-mxfp4=8,draft=4" sets levels by name."""
    if "=" not in text:
        return {"*": kind(text)}
    pairs = [part.split("=", 1) for part in text.split(",")]
    return {name.strip(): kind(value) for name, value in pairs}


def _controls(levels: list[str], args: argparse.Namespace) -> dict[str, DraftControls]:
    """Drafting controls for every named level; names must be levels that can draft."""
    for option, values in (("--k", args.k), ("--confidence", args.confidence)):
        unknown = set(values) - set(levels) - {"*"}
        if unknown:
            raise GenerationError(f"{option}: {', '.join(sorted(unknown))} is not a draft level here "
                                  f"({', '.join(levels)})")
    return {name: DraftControls(k=args.k.get(name, args.k.get("*", DEFAULT_K)),
                                confidence=args.confidence.get(name, args.confidence.get("*", DEFAULT_CONFIDENCE)),
                                adaptive=args.adaptive)
            for name in levels}


def _sampling(args: argparse.Namespace) -> Sampling:
    """Checked here too, so that a bad value fails before any model is compiled."""
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    try:
        sampling.validate()
    except ValueError as error:
        raise GenerationError(str(error)) from None
    return sampling


def parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("out_dir", metavar="OUT_DIR", help="a folder made by export-mxfp4")
    shared.add_argument("--max-new-tokens", type=int, default=128)
    shared.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    shared.add_argument("--top-p", type=float, default=1.0)
    shared.add_argument("--top-k", type=int, default=0)
    shared.add_argument("--seed", type=int)
    shared.add_argument("--k", default=str(DEFAULT_K), type=lambda t: _per_level(t, int),
                        help=f"draft tokens per request: N for every level or LEVEL=N,... (default {DEFAULT_K})")
    shared.add_argument("--confidence", default=str(DEFAULT_CONFIDENCE), type=lambda t: _per_level(t, float),
                        help="stop drafting below this top probability: X or LEVEL=X,... (default 0: never)")
    shared.add_argument("--adaptive", action="store_true", help="adapt each level's k to its acceptance")

    top = argparse.ArgumentParser(prog="specqd", description="Speculative generation with OpenVINO levels.")
    commands = top.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", parents=[shared], help="generate text from a prompt")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--chain", help="levels from the target down, e.g. target,target-mxfp4,draft "
                                          "(default: target,target-mxfp4,draft where present); 'lookup' may end it")
    generate.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.add_argument("--precision", choices=("bf16", "f32"), default="bf16",
                          help="inference precision: bf16 (fast) or f32 (token-exact)")
    generate.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")

    measure = commands.add_parser("bench", parents=[shared], help="compare configurations on the same prompts")
    measure.add_argument("--prompts", default="humaneval:0-81", help="humaneval:START-END or sharegpt:START-END")
    measure.add_argument("--limit", type=int, help="use only the first N of those prompts")
    measure.add_argument("--configs", help="';'-separated chains; 'genai:' runs one in openvino-genai "
                                           "(default: the full list the export allows)")
    measure.add_argument("--f32-prompts", type=int, default=2,
                         help="prompts of the f32 token-exactness check of our chains (0: skip)")
    measure.add_argument("--json", type=Path, metavar="PATH", help="also write PATH, PATH.md and PATH.png")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _generate(args) if args.command == "generate" else _bench(args)
    except (GenerationError, ManifestError, prompts.PromptSpecError) as error:
        print(f"specqd: error: {error}", file=sys.stderr)
        return 1


def _generate(args: argparse.Namespace) -> int:
    sampling = _sampling(args)
    folder = ExportFolder(args.out_dir, precision=args.precision)
    chain = args.chain.split(",") if args.chain else default_chain(folder.manifest)
    pipe = folder.pipeline(chain, _controls(chain[1:], args))
    stream = pipe.stream(args.prompt, max_new_tokens=args.max_new_tokens, sampling=sampling,
                         stop=tuple(args.stop), chat=args.chat)
    for piece in stream:
        if not args.json:
            print(piece, end="", flush=True)
    result = pipe.last_result
    if args.json:
        print(json.dumps({"text": result.text, "tokens": result.tokens, "chain": chain, "stats": result.stats}))
    else:
        print("\n\n" + format_stats(chain, result.stats), file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    folder = ExportFolder(args.out_dir)
    selected = bench.available_configs(folder, args.configs.split(";") if args.configs else bench.DEFAULT_CONFIGS)
    if args.configs and len(selected) != len(args.configs.split(";")):
        missing = set(args.configs.split(";")) - set(selected)
        raise GenerationError(f"--configs: {', '.join(sorted(missing))} use levels this export lacks")
    texts = prompts.load(args.prompts)[:args.limit]
    sampling = _sampling(args)
    drafting_levels = [level.name for level in folder.manifest.levels if level.name != "target"] + ["lookup"]
    result = bench.run(folder, selected, texts, args.max_new_tokens, sampling, _controls(drafting_levels, args),
                       f32_prompts=args.f32_prompts if sampling.greedy else 0)
    bench.write_outputs(result, args.json)
    return 0


def format_stats(chain: list[str], stats: dict) -> str:
    lines = [f"chain {','.join(chain)}: {stats['new_tokens']} tokens in {stats['seconds']:.2f} s = "
             f"{stats['tokens_per_second']:.2f} tok/s (first token {stats['time_to_first_token']:.2f} s, "
             f"peak memory {stats['peak_memory_mb']} MB)"]
    for level in stats["levels"]:
        line = f"  {level['level']:<16} {level['forward_passes']:>4} passes {level['seconds']:>7.2f} s"
        if level["drafted"]:
            line += (f"  drafted {level['drafted']:>4} accepted {level['accepted']:>4} "
                     f"({level['acceptance_rate']:.0%})")
        if level["mean_accepted_length"]:
            line += f"  {level['mean_accepted_length']:.2f} tokens/verify"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
