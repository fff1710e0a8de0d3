"""What a KV-cache rollback costs on a level, by context length, for three ways of keeping the cache.

    .venv/bin/python scripts/research/rollback_cost.py EXPORT_DIR [--level target] [--contexts 128,1024]

Each round rejects 3 of 5 verified tokens, then runs the next 5-token verify. On the exported stateful IR:
"mask" keeps rejected entries in the cache and zeroes their attention_mask columns; "state" reads every KV
state, slices off the rejected entries and writes it back (the only trim its Python API offers). "paged" is
the runtime's KVModel (the IR in paged-attention form): the next verify simply starts from the shorter
valid length, so there is no rollback step to time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import openvino as ov

from specqd.runtime.kvmodel import KVModel, cpu_config
from specqd.runtime.manifest import Manifest
from specqd.runtime.mxfp4_kernel import Kernel

ROUNDS = 8


def run(request, ids, mask, start):
    request.infer({"input_ids": np.array([ids], np.int64), "attention_mask": mask[None],
                   "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None],
                   "beam_idx": np.zeros(1, np.int32)})


def roll_back(request, mask: np.ndarray, count: int, method: str) -> np.ndarray:
    """Drop the last `count` cache entries; return the attention mask that goes with the cache."""
    if method == "mask":
        mask = mask.copy()
        mask[-count:] = 0
        return mask
    for state in request.query_state():  # [batch, heads, positions, head_dim]
        state.state = ov.Tensor(np.ascontiguousarray(state.state.data[:, :, :-count, :]))
    return mask[:-count]


def measure(request, context: int, method: str) -> tuple[float, float]:
    """Median ms of (rollback, the verify after it) over ROUNDS rounds at a steady context length."""
    request.reset_state()
    mask = np.ones(context, np.int64)
    run(request, list(np.random.default_rng(0).integers(100, 20000, context)), mask, 0)
    draft = [1000, 1001, 1002, 1003, 1004]
    rollbacks, verifies = [], []
    for _ in range(ROUNDS):
        mask = np.concatenate([mask, np.ones(5, np.int64)])
        run(request, draft, mask, context)
        started = time.perf_counter()
        mask = roll_back(request, mask, 3, method)
        rollbacks.append((time.perf_counter() - started) * 1000)
        mask = np.concatenate([mask, np.ones(5, np.int64)])
        started = time.perf_counter()
        run(request, draft, mask, context + 2)
        verifies.append((time.perf_counter() - started) * 1000)
        mask = roll_back(request, roll_back(request, mask, 5, method), 2, method)  # back to `context`
    return statistics.median(rollbacks), statistics.median(verifies)


def measure_paged(model: KVModel, context: int) -> float:
    """Median ms of the verify after a rejection, as `measure` times it."""
    model.reset()
    prefix = [int(t) for t in np.random.default_rng(0).integers(100, 20000, context)]
    model.logits(prefix, 1)
    draft = [1000, 1001, 1002, 1003, 1004]
    verifies = []
    for _ in range(ROUNDS):
        model.logits(prefix + draft, 5)
        started = time.perf_counter()
        model.logits(prefix + draft[:2] + draft, 5)  # 3 rejected: their slots are overwritten
        verifies.append((time.perf_counter() - started) * 1000)
    return statistics.median(verifies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--level", default="target")
    parser.add_argument("--contexts", default="128,1024")
    args = parser.parse_args()
    folder = args.export_dir / Manifest.read(args.export_dir).level(args.level).path
    core = ov.Core()
    request = core.compile_model(folder / "openvino_model.xml", "CPU", cpu_config("bf16")).create_infer_request()
    paged = KVModel(core, folder, "bf16", Kernel.find())
    print("| context | method | rollback ms | next 5-token verify ms |\n|---|---|---|---|")
    for context in (int(c) for c in args.contexts.split(",")):
        for method in ("mask", "state"):
            rollback, verify = measure(request, context, method)
            print(f"| {context} | {method} | {rollback:.1f} | {verify:.0f} |", flush=True)
        print(f"| {context} | paged | none | {measure_paged(paged, context):.0f} |", flush=True)


if __name__ == "__main__":
    main()
