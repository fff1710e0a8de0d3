"""What streaming text costs per step over a 2,000-token output: decoding the whole text at every step, or
only the latest tokens (runtime/generation.py's IncrementalText). Checks that both give the same text.

    .venv/bin/python scripts/research/detokenize_cost.py ~/.cache/specqd/exports/qwen2.5-coder-1.5b

The tokens are those of real text (HumanEval prompts and some multi-byte characters), fed one at a time as
a generation would produce them; no model runs, only the export's detokenizer.
"""

from __future__ import annotations

import argparse
import time

from specqd.runtime.generation import IncrementalText
from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import prompts


def per_step_ms(step, count: int) -> list[float]:
    times = []
    for end in range(1, count + 1):
        started = time.perf_counter()
        step(end)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()
    folder = ExportFolder(args.export)
    text = "".join(prompts.load("humaneval:0-60")) + "数据结构 — naïve café ✓ 🚀\n" * 40
    tokens = folder.encode(text)[:args.tokens]
    incremental = IncrementalText()
    shown = []
    whole = per_step_ms(lambda end: folder.decode(tokens[:end]), len(tokens))
    windowed = per_step_ms(lambda end: shown.append(incremental.update(tokens[:end], folder.decode)), len(tokens))
    assert all(folder.decode(tokens[:end + 1]).startswith(shown[end]) for end in range(0, len(tokens), 97))
    assert incremental.update(tokens, folder.decode, final=True) == folder.decode(tokens)
    print(f"{len(tokens)} tokens; ms per step (first 100 steps / last 100 steps / all):")
    for name, times in (("whole text", whole), ("incremental", windowed)):
        print(f"  {name:<12} {sum(times[:100]) / 100:.3f} / {sum(times[-100:]) / 100:.3f} / "
              f"total {sum(times):.0f} ms")


if __name__ == "__main__":
    main()
