"""Median milliseconds per inference of each level's IR by tokens per step, after a ~300-token prompt.

    .venv/bin/python scripts/step_time.py EXPORT_DIR [--levels target,target-mxfp4] [--tokens 1,2,4,8]

Decode is memory-bound, so a level's step time depends on its weight format and on how many tokens one
step carries; speculative decoding lives on that shape. Runs the stateful IR directly with 2 threads and
the default (bf16) inference precision.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)

from specqd.runtime.manifest import Manifest

PROMPT = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
    True
    """
''' * 3


def step_times(folder: Path, tokens: list[int], repeats: int) -> dict[int, float]:
    core = ov.Core()
    tokenizer = core.compile_model(folder / "openvino_tokenizer.xml", "CPU")
    prompt_ids = tokenizer([PROMPT])["input_ids"]
    model = core.compile_model(folder / "openvino_model.xml", "CPU",
                               {"INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request = model.create_infer_request()
    length = 0

    def run(ids: np.ndarray) -> float:
        nonlocal length
        n = ids.shape[1]
        started = time.perf_counter()
        request.infer({"input_ids": ids, "attention_mask": np.ones((1, length + n), np.int64),
                       "position_ids": np.arange(length, length + n, dtype=np.int64)[None],
                       "beam_idx": np.zeros(1, np.int32)})
        length += n
        return (time.perf_counter() - started) * 1000

    run(prompt_ids)
    result = {}
    for n in tokens:
        ids = prompt_ids[:, :n]
        run(ids)  # warm-up for this shape
        result[n] = statistics.median(run(ids) for _ in range(repeats))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--levels", default=None, help="comma-separated level names (default: all)")
    parser.add_argument("--tokens", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    manifest = Manifest.read(args.export_dir)
    names = args.levels.split(",") if args.levels else [level.name for level in manifest.levels]
    tokens = [int(n) for n in args.tokens.split(",")]
    print("| level | size GB | " + " | ".join(f"n={n} ms" for n in tokens) + " |")
    print("|---|---|" + "---|" * len(tokens))
    for name in names:
        level = manifest.level(name)
        times = step_times(args.export_dir / level.path, tokens, args.repeats)
        print(f"| {name} | {level.bytes / 1e9:.2f} | " + " | ".join(f"{times[n]:.0f}" for n in tokens) + " |",
              flush=True)


if __name__ == "__main__":
    main()
