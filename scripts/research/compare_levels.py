"""Compare two level folders as the runtime runs them: logits, and greedy tokens in f32.

Used for docs/onnx.md (an ONNX route's level against the direct route's, an ONNX level against its IR twin):

    .venv/bin/python scripts/research/compare_levels.py DIRECT/target-mxfp4 FROM_ONNX/target-mxfp4 --prompts humaneval:0-2

Logits: per precision, one pass over each prompt, a 4-token verify and a 3-token verify after a rollback, in
each level's paged KV cache. Tokens: each level's own greedy continuation in f32, one token per step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)

from specqd.runtime.tools import prompts
from specqd.runtime.kvmodel import KVModel
from specqd.runtime.mxfp4_kernel import Kernel


def logits(model: KVModel, ids: list[int]) -> np.ndarray:
    model.reset()
    return np.concatenate([model.logits(ids, len(ids)), model.logits(ids + [11, 12, 13, 14], 4),
                           model.logits(ids + [11, 15, 16], 3)])


def greedy(model: KVModel, ids: list[int], count: int) -> list[int]:
    model.reset()
    tokens = [int(model.logits(ids, 1)[-1].argmax())]
    while len(tokens) < count:
        tokens.append(int(model.logits(ids + tokens, 1)[-1].argmax()))
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levels", nargs=2, type=Path, metavar="LEVEL_DIR")
    parser.add_argument("--prompts", default="humaneval:0-2")
    parser.add_argument("--tokens", type=int, default=128, help="greedy tokens per prompt (0: logits only)")
    args = parser.parse_args()
    core, kernel = ov.Core(), Kernel.find()
    kernel.register(core)
    tokenizer = core.compile_model(args.levels[0] / "openvino_tokenizer.xml", "CPU")
    texts = prompts.load(args.prompts)
    ids = [[int(token) for token in tokenizer([text])["input_ids"][0]] for text in texts]
    for precision in ("f32", "bf16"):
        runs, continuations = [], []
        for folder in args.levels:
            started = time.perf_counter()
            model = KVModel(core, folder, precision, kernel)
            print(f"  {folder} [{precision}]: loaded in {time.perf_counter() - started:.1f} s", flush=True)
            runs.append(np.concatenate([logits(model, prompt) for prompt in ids]))
            if precision == "f32" and args.tokens:
                continuations.append([greedy(model, prompt, args.tokens) for prompt in ids])
            del model
        a, b = runs
        print(f"[{precision}] max |logit difference| {np.abs(a - b).max():.3g} (max |logit| {np.abs(a).max():.1f}), "
              f"argmax equal at {(a.argmax(-1) == b.argmax(-1)).sum()}/{len(a)} positions", flush=True)
        if continuations:
            same = sum(x == y for x, y in zip(*continuations))
            print(f"[f32] greedy {args.tokens}-token continuations identical on {same}/{len(ids)} prompts", flush=True)

if __name__ == "__main__":
    main()
