"""Our BF16 target alone against openvino-genai's plain pipeline on the same IR: prompt read and per-token cost.

    .venv/bin/python scripts/research/baseline_gap.py [EXPORT_DIR] [--prompt humaneval:0-0] [--repeats 3]

Each engine generates SHORT and then LONG new tokens of the same prompt, the engines taking turns; the
difference between the two runs is the cost of the extra tokens with the prompt read taken out, so a gap in
`ms/token` is a gap in the single-token decode step, and a gap in `prompt read` is one in prefill. Medians over
the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from specqd.runtime.tools import prompts
from specqd.runtime.tools.genai_engine import GenAIConfig, GenAIEngine
from specqd.runtime.pipeline import ExportFolder

SHORT, LONG = 16, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", type=Path,
                        default=Path.home() / ".cache/specqd/exports/qwen2.5-coder-1.5b")
    parser.add_argument("--prompt", default="humaneval:0-0")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = ExportFolder(args.export_dir)
    text = prompts.load(args.prompt)[0]
    ids = folder.encode(text)
    ours = folder.pipeline(["target"])
    genai = GenAIEngine(GenAIConfig(target=args.export_dir / "target"))
    engines = {"ours": lambda n: len(ours.generate(text, max_new_tokens=n).tokens),
               "genai": lambda n: len(genai.generate(ids, n).tokens)}
    for run in engines.values():
        run(LONG)  # warm-up at full length
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for repeat in range(args.repeats):
        for name, run in engines.items():
            timed = {}
            for n in (SHORT, LONG):
                started = time.perf_counter()
                made = run(n)
                timed[made] = time.perf_counter() - started
            (short, t_short), (long, t_long) = sorted(timed.items())
            step = (t_long - t_short) / (long - short)
            samples[name].append((step, t_short - (short - 1) * step))
            print(f"repeat {repeat + 1} {name:5s}: {1000 * step:6.1f} ms/token, prompt read {1000 * samples[name][-1][1]:5.0f} ms")
    for name, rows in samples.items():
        print(f"median {name:5s}: {1000 * statistics.median(r[0] for r in rows):6.1f} ms/token, "
              f"prompt read {1000 * statistics.median(r[1] for r in rows):5.0f} ms ({len(ids)} prompt tokens)")


if __name__ == "__main__":
    main()
