"""One level's step time by tokens per pass under other OpenVINO settings: threads, or compile properties.

    .venv/bin/python scripts/research/step_under_config.py EXPORT_DIR draft-int4_sym --tokens 1,4,5,6,8 \\
        [--threads 1] [--config '{"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}']

Answers whether a step is bound by compute (it grows on one thread) and whether a property moves the jump the
INT4 0.5B makes between 4 and 5 tokens per pass (docs/serving.md, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specqd.runtime import kvmodel
from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import profile, prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("level")
    parser.add_argument("--tokens", default="1,2,4")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--config", default="{}", help="JSON of compile properties added to the runtime's")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    extra = json.loads(args.config)
    base = kvmodel.cpu_config
    kvmodel.cpu_config = lambda precision, threads=0: {**base(precision, threads), **extra}
    folder = ExportFolder(args.export_dir, threads=args.threads)
    prompt = folder.encode(prompts.load("humaneval:82-163")[0])
    times = profile.step_times(folder, args.level, prompt, [int(n) for n in args.tokens.split(",")], args.repeats)
    print(f"{args.level} threads {args.threads or 'all'} {extra}: "
          + ", ".join(f"n={n} {ms:.1f} ms" for n, ms in times.items()))


if __name__ == "__main__":
    main()
