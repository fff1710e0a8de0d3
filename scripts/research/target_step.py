"""The BF16 target's pass over n = 1, 4, 8 new tokens: specqd (under several CPU compile properties),
llama.cpp (llama-bench on the same weights as a BF16 GGUF) and openvino-genai (n = 1: its decode step).

    .venv/bin/python scripts/research/target_step.py [EXPORT_DIR] [--gguf BF16_GGUF] [--llama-bench PATH]
        [--variant NAME:KEY=VALUE,KEY=VALUE ...] [--repeats 9]

Every engine reads the same 128-token context first, then times passes over n new tokens (llama-bench's
-d 128 -p n), medians over the repeats; the engines run one after another in one process tree on an idle
machine. A variant adds CPU compile properties to specqd's (runtime/kvmodel.py cpu_config), e.g.
`pinned:ENABLE_CPU_PINNING=True` or `f32:INFERENCE_PRECISION_HINT=f32`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from specqd.models.cache import cache_root
from specqd.runtime import kvmodel
from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import prompts
from specqd.runtime.tools.genai_engine import GenAIConfig, GenAIEngine

SIZES = (1, 4, 8)
CONTEXT = 128


def ours(folder: ExportFolder, context: list[int], extra: dict, repeats: int) -> dict[int, float]:
    config = kvmodel.cpu_config
    kvmodel.cpu_config = lambda precision, threads=0: {**config(precision, threads), **extra}
    try:
        model = kvmodel.KVModel(folder.core, folder.path / folder.manifest.level("target").path, "bf16",
                                folder.kernel)
    finally:
        kvmodel.cpu_config = config
    model.logits(context, 1)
    times = {}
    for n in SIZES:
        sequence = context + context[:n]
        samples = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            model.logits(sequence, n)  # n new tokens and their n logit rows, as a verify pass
            samples.append((time.perf_counter() - started) * 1000)
        times[n] = statistics.median(samples[1:])
    model.close()
    return times


def llama(bench: Path, gguf: Path, repeats: int) -> dict[int, float]:
    """llama-bench at depth CONTEXT: its generation test for n = 1 (one token per pass, as decoding runs), its
    prompt test for n > 1 (one pass over n tokens)."""
    out = subprocess.run([str(bench), "-m", str(gguf), "-t", "2", "-p", ",".join(str(n) for n in SIZES if n > 1),
                          "-n", "16", "-d", str(CONTEXT), "-r", str(repeats), "-o", "json"], check=True,
                         capture_output=True, text=True).stdout
    times = {}
    for row in json.loads(out):
        if row["n_prompt"]:  # one pass over n_prompt tokens
            times[row["n_prompt"]] = 1000 * row["n_prompt"] / row["avg_ts"]
        else:                # n_gen passes of one token each
            times[1] = 1000 / row["avg_ts"]
    return times


def genai_step(export: Path, context: list[int]) -> float:
    """openvino-genai's decode step: (time of 129 tokens - time of 1) / 128, after a warm-up."""
    engine = GenAIEngine(GenAIConfig(target=export / "target"))
    engine.generate(context, 8)
    timed = {}
    for n in (1, 129):
        started = time.perf_counter()
        made = len(engine.generate(context, n).tokens)
        timed[made] = time.perf_counter() - started
    (short, t_short), (long, t_long) = sorted(timed.items())
    return 1000 * (t_long - t_short) / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", type=Path,
                        default=Path.home() / ".cache/specqd/exports/qwen2.5-coder-1.5b")
    parser.add_argument("--gguf", type=Path, default=next((cache_root() / "gguf").glob("qwen2.5-coder-1.5b-*-bf16.gguf"), None))
    parser.add_argument("--llama-bench", type=Path, default=cache_root() / "llamacpp-0.3.36/build/bin/llama-bench")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    folder = ExportFolder(args.export_dir)
    context = (folder.encode(prompts.load("humaneval:0-0")[0]) * 4)[:CONTEXT]
    variants = {"specqd": {}}
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        variants[f"specqd {name}"] = {key: {"True": True, "False": False}.get(value, value)
                                      for key, value in (pair.split("=", 1) for pair in pairs.split(","))}
    rows = {name: ours(folder, context, extra, args.repeats) for name, extra in variants.items()}
    if args.gguf and args.llama_bench.exists():
        rows["llama.cpp"] = llama(args.llama_bench, args.gguf, args.repeats)
    rows["openvino-genai"] = {1: genai_step(args.export_dir, context)}
    print("| engine | " + " | ".join(f"n={n} ms" for n in SIZES) + " | t(8)/t(1) |")
    print("|---|" + "---|" * (len(SIZES) + 1))
    for name, times in rows.items():
        cells = [f"{times[n]:.1f}" if n in times else "-" for n in SIZES]
        flat = f"{times[8] / times[1]:.2f}" if 8 in times else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {flat} |")


if __name__ == "__main__":
    main()
