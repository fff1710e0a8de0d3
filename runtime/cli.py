"""`specqd generate OUT_DIR --prompt TEXT [...]`: stream text from a chain of exported levels."""

from __future__ import annotations

import argparse
import json
import sys

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


def _controls(chain: list[str], k: dict, confidence: dict, adaptive: bool) -> dict[str, DraftControls]:
    for option, values in (("--k", k), ("--confidence", confidence)):
        unknown = set(values) - set(chain[1:]) - {"*"}
        if unknown:
            raise GenerationError(f"{option}: {', '.join(sorted(unknown))} is not a draft level of the chain "
                                  f"{','.join(chain)}")
    return {name: DraftControls(k=k.get(name, k.get("*", DEFAULT_K)),
                                confidence=confidence.get(name, confidence.get("*", DEFAULT_CONFIDENCE)),
                                adaptive=adaptive)
            for name in chain[1:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specqd", description="Speculative generation with OpenVINO levels.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate text from a prompt")
    generate.add_argument("out_dir", metavar="OUT_DIR", help="a folder made by export-mxfp4")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--chain", help="levels from the target down, e.g. target,target-mxfp4,draft "
                                          "(default: target,target-mxfp4,draft where present); 'lookup' may end it")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--k", default=str(DEFAULT_K), type=lambda t: _per_level(t, int),
                          help=f"draft tokens per request: N for every level or LEVEL=N,... (default {DEFAULT_K})")
    generate.add_argument("--confidence", default=str(DEFAULT_CONFIDENCE), type=lambda t: _per_level(t, float),
                          help="stop drafting below this top probability: X or LEVEL=X,... (default 0: never)")
    generate.add_argument("--adaptive", action="store_true", help="adapt each level's k to its acceptance")
    generate.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.add_argument("--precision", choices=("bf16", "f32"), default="bf16",
                          help="inference precision: bf16 (fast) or f32 (token-exact)")
    generate.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    args = parser.parse_args(argv)

    try:
        folder = ExportFolder(args.out_dir, precision=args.precision)
        chain = args.chain.split(",") if args.chain else default_chain(folder.manifest)
        pipe = folder.pipeline(chain, _controls(chain, args.k, args.confidence, args.adaptive))
        sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
        stream = pipe.stream(args.prompt, max_new_tokens=args.max_new_tokens, sampling=sampling,
                             stop=tuple(args.stop), chat=args.chat)
        for piece in stream:
            if not args.json:
                print(piece, end="", flush=True)
    except (GenerationError, ManifestError) as error:
        print(f"specqd: error: {error}", file=sys.stderr)
        return 1
    result = pipe.last_result
    if args.json:
        print(json.dumps({"text": result.text, "tokens": result.tokens, "chain": chain, "stats": result.stats}))
    else:
        print("\n\n" + format_stats(chain, result.stats), file=sys.stderr)
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
