"""`specqd generate|bench|tune|profile|llamacpp OUT_DIR ...`: thin shell over the runtime's modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..server import main as server_main
from .tools import bench, prompts
from .tools.llamacpp_build import LlamaCppError
from .arguments import Parser, integer, integers, per_level, real
from .manifest import Manifest, ManifestError
from .generation import check_chain
from .pipeline import ExportFolder, GenerationError, default_chain
from .sampling import Sampling
from .speculative import DraftControls

PROBABILITY = real(lambda value: 0 <= value < 1, "in [0, 1)")


def _check_level_names(args: argparse.Namespace, allowed: list[str]) -> None:
    for option, values in (("--k", args.k), ("--confidence", args.confidence), ("--extend", args.extend)):
        unknown = set(values or {}) - set(allowed) - {"*"}
        if unknown:
            raise GenerationError(f"{option}: {', '.join(sorted(unknown))} is not a draft level here "
                                  f"({', '.join(allowed)})")


def _controls(chain: list[str], args: argparse.Namespace, folder: ExportFolder) -> dict[str, DraftControls]:
    """The chain's defaults (tuned or built-in), with what the options override."""
    controls = {}
    for name, control in folder.default_controls(chain).items():
        k = (args.k or {}).get(name, (args.k or {}).get("*", control.k))
        confidence = (args.confidence or {}).get(name, (args.confidence or {}).get("*", control.confidence))
        extend = (args.extend or {}).get(name, (args.extend or {}).get("*", control.extend))
        controls[name] = DraftControls(k=k, confidence=confidence, adaptive=args.adaptive or control.adaptive,
                                       extend=extend)
    return controls


def parser() -> argparse.ArgumentParser:
    folder_arg = Parser(add_help=False)
    folder_arg.add_argument("out_dir", metavar="OUT_DIR", help="a folder made by export-mxfp4")
    folder_arg.add_argument("--mxfp4-kernel", choices=("specqd", "openvino"), default="specqd",
                            help="MXFP4 matmuls on specqd's kernel (default, where this CPU runs it) or OpenVINO's own")
    shared = Parser(add_help=False)
    shared.add_argument("--max-new-tokens", type=integer(1), default=128)
    shared.add_argument("--temperature", type=real(lambda value: 0 <= value < float("inf"), "a finite number >= 0"), default=0.0,
                        help="0 (default) is greedy")
    shared.add_argument("--top-p", type=real(lambda value: 0 < value <= 1, "in (0, 1]"), default=1.0)
    shared.add_argument("--top-k", type=integer(0), default=0, help="0 (default): no top-k cut")
    shared.add_argument("--seed", type=integer(0))
    shared.add_argument("--k", type=per_level(integer(1)),
                        help="draft tokens per request: N for every level or LEVEL=N,... "
                             "(default: what `specqd tune` chose, else 8)")
    shared.add_argument("--confidence", type=per_level(PROBABILITY),
                        help="stop drafting after a token whose top probability is below this: X or LEVEL=X,... "
                             "(default: what `specqd tune` chose, else 0: never)")
    shared.add_argument("--extend", type=per_level(integer(0)),
                        help="after a model level stops drafting, append up to N prompt-lookup tokens: N or "
                             "LEVEL=N,... (default: what `specqd tune` chose, else 0)")
    shared.add_argument("--adaptive", action="store_true", help="adapt each level's k to its acceptance")

    top = Parser(prog="specqd", description="Speculative generation with OpenVINO levels.")
    commands = top.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", parents=[folder_arg, shared], help="generate text from a prompt")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--chain", help="levels from the target down, e.g. target,target-mxfp4,draft "
                                          "(default: target,target-mxfp4,draft where present); 'lookup' may end it")
    generate.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.add_argument("--precision", choices=("bf16", "f32"), default="bf16",
                          help="inference precision: bf16 (fast) or f32 (token-exact)")
    generate.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")

    measure = commands.add_parser("bench", parents=[folder_arg, shared], help="compare configurations on the same prompts")
    measure.add_argument("--prompts", default="humaneval:0-81", help="humaneval:START-END or sharegpt:START-END")
    measure.add_argument("--limit", type=integer(1), help="use only the first N of those prompts")
    measure.add_argument("--configs", help="';'-separated chains; 'genai:' runs one in openvino-genai "
                                           "(default: the full list the export allows)")
    measure.add_argument("--f32-prompts", type=integer(0), default=2,
                         help="prompts of the f32 token-exactness check of our chains (0: skip)")
    measure.add_argument("--json", type=Path, metavar="PATH",
                         help="also write PATH, PATH.md and PATH.png; results are journaled per prompt beside PATH "
                              "so the same command resumes an interrupted run")

    tune = commands.add_parser("tune", parents=[folder_arg], help="choose the fastest chain and draft lengths "
                                                                  "and store them as this export's defaults")
    tune.add_argument("--prompts", default="humaneval:82-89",
                      help="sample prompts (default humaneval:82-89, outside the development split)")
    tune.add_argument("--max-new-tokens", type=integer(1), default=64)

    profile_ = commands.add_parser("profile", parents=[folder_arg], help="step time of each level by tokens per step")
    profile_.add_argument("--levels", help="comma-separated level names (default: all)")
    profile_.add_argument("--tokens", type=integers(1), default=[1, 2, 4, 8, 16, 32, 64], help="tokens per step to measure (default "
                          "1,2,4,8,16,32,64: a server's batched passes carry many requests' tokens); "
                          "the prompt read is timed too")
    profile_.add_argument("--json", action="store_true")

    llamacpp = commands.add_parser("llamacpp", help="build llama.cpp (pinned) and the GGUFs of this export's BF16 "
                                                    "levels, for bench's llamacpp: configurations")
    llamacpp.add_argument("out_dir", metavar="OUT_DIR", help="a folder made by export-mxfp4")

    serve = commands.add_parser("serve", parents=[folder_arg], help="an OpenAI-compatible HTTP server that batches "
                                                                   "speculative decoding across requests")
    server_main.add_arguments(serve)

    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return {"generate": _generate, "bench": _bench, "tune": _tune, "profile": _profile,
                "llamacpp": _llamacpp, "serve": server_main.serve}[args.command](args)
    except (GenerationError, ManifestError, prompts.PromptSpecError, LlamaCppError) as error:
        print(f"specqd: error: {error}", file=sys.stderr)
        return 1


def _folder(args: argparse.Namespace, precision: str = "bf16") -> ExportFolder:
    return ExportFolder(args.out_dir, precision=precision, mxfp4_kernel=args.mxfp4_kernel == "specqd")


def _generate(args: argparse.Namespace) -> int:
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    folder = _folder(args, args.precision)
    chain = args.chain.split(",") if args.chain else default_chain(folder.manifest)
    try:
        check_chain(folder.manifest, chain)
    except (GenerationError, ManifestError) as error:
        raise GenerationError(f"--chain: {error}") from None
    _check_level_names(args, chain[1:])
    pipe = folder.pipeline(chain, _controls(chain, args, folder))
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
    folder = _folder(args)
    selected = bench.available_configs(folder, args.configs.split(";") if args.configs else bench.DEFAULT_CONFIGS)
    if args.configs and len(selected) != len(args.configs.split(";")):
        missing = set(args.configs.split(";")) - set(selected)
        raise GenerationError(f"--configs: {', '.join(sorted(missing))} use levels this export lacks")
    texts = prompts.load(args.prompts)[:args.limit]
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    _check_level_names(args, [level.name for level in folder.manifest.levels if level.name != "target"] + ["lookup"])
    result = bench.run(folder, selected, texts, args.max_new_tokens, sampling,
                       lambda chain: _controls(chain, args, folder),
                       f32_prompts=args.f32_prompts if sampling.greedy else 0,
                       journal=bench.journal_path(args.json) if args.json else None)
    bench.write_outputs(result, args.json)
    return 0


def _llamacpp(args: argparse.Namespace) -> int:
    from .tools import llamacpp_gguf
    from .tools.llamacpp_build import LlamaCppBuild

    levels = Manifest.read(Path(args.out_dir)).levels
    server = LlamaCppBuild.cached().build()
    for path in [server, *llamacpp_gguf.prepare(levels)]:
        print(path)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .tools.tune import tune

    choice = tune(_folder(args), prompts.load(args.prompts), args.max_new_tokens)
    print(f"chosen: {','.join(choice['chain'])} with k {choice['k']}, confidence {choice['confidence']}, "
          f"extend {choice['extend']}\n"
          f"predicted {choice['predicted_tokens_per_second']} tok/s ({choice['predicted_speedup']}x), "
          f"measured {choice['measured_tokens_per_second']} tok/s ({choice['measured_speedup']}x over the target "
          f"alone)\nstored in {Path(args.out_dir) / 'specqd.json'}: generate and bench now use it by default")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .tools.profile import prefill_ms, step_times

    folder = _folder(args)
    known = [level.name for level in folder.manifest.levels]
    names = args.levels.split(",") if args.levels else known
    if set(names) - set(known):
        raise GenerationError(f"--levels: {', '.join(sorted(set(names) - set(known)))} is not a level of this export "
                              f"({', '.join(known)})")
    tokens = args.tokens
    prompt = folder.encode(prompts.load("humaneval:0-0")[0] * 2)
    levels = [{"name": name, "step_ms": {str(n): round(ms, 1) for n, ms in
                                         step_times(folder, name, prompt, tokens).items()},
               "prompt_read_ms": round(prefill_ms(folder, name, prompt), 1),
               "kernel": folder.model(name).kernel, "precision": folder.precision_of(name)} for name in names]
    if args.json:
        print(json.dumps({"levels": levels}))
    else:
        print(f"prompt: HumanEval/0 twice, {len(prompt)} tokens")
        print("| level | kernel | precision | " + " | ".join(f"n={n} ms" for n in tokens) + " | prompt read ms |")
        print("|---|---|---|" + "---|" * (len(tokens) + 1))
        for level in levels:
            print(f"| {level['name']} | {level['kernel']} | {level['precision']} | "
                  + " | ".join(str(v) for v in level["step_ms"].values())
                  + f" | {level['prompt_read_ms']} |")
    return 0


def format_stats(chain: list[str], stats: dict) -> str:
    lines = [f"chain {','.join(chain)}: {stats['new_tokens']} tokens in {stats['seconds']:.2f} s = "
             f"{stats['tokens_per_second']:.2f} tok/s (first token {stats['time_to_first_token']:.2f} s, "
             f"peak memory {stats['peak_memory_mb']} MB)"]
    for level in stats["levels"]:
        line = (f"  {level['level']:<16} {level['kernel']:<13} {level['forward_passes']:>4} passes "
                f"{level['seconds']:>7.2f} s")
        if level["drafted"]:
            line += (f"  drafted {level['drafted']:>4} accepted {level['accepted']:>4} "
                     f"({level['acceptance_rate']:.0%})")
        if level["mean_accepted_length"]:
            line += f"  {level['mean_accepted_length']:.2f} tokens/verify"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
