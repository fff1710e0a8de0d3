"""openvino-genai's LLMPipeline as the benchmark's baseline, run on the same IR level folders as our runtime.

Why a wrapper: the benchmark compares like with like, so the baseline must do a raw completion (no chat
template), greedy, stopping on the same EOS ids as runtime.pipeline, compiled with the settings of
runtime.kvmodel (bf16 inference, f16 KV cache, one stream), and it must hand back the generated token ids,
not text, so they can be compared token by token with our greedy output. Prompts therefore go in already
tokenized (an ov.Tensor of input_ids): genai 2026.4 then applies no chat template and returns EncodedResults.

Speculative modes (a draft IR, or prompt lookup) run on genai's continuous-batching (paged attention)
backend; on CPU the plain pipeline uses that backend too. genai's own accepted-token counter skips the final round of a request (seen in 2026.4.1),
so `accepted_tokens` is derived instead: every target step emits its accepted draft tokens plus one.

Prefix caching is turned off. genai's default latency configuration keeps it on, so a prompt it has read before
(the warm-up's, or any earlier one sharing 32-token blocks) is not read again: measured on HumanEval/0, its
time to first token was 0.22-0.24 s on a repeated call, 0.82 s with prefix caching off
(scripts/research/genai_prefix_cache.py). Our runtime reads every prompt afresh, and
a benchmark must time both engines doing the same work.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline import eos_ids


@dataclass
class GenAIConfig:
    target: Path                     # level folder of the target IR
    draft: Path | None = None        # level folder of a draft IR (speculative decoding with a draft model)
    prompt_lookup: bool = False      # openvino-genai's prompt-lookup decoding
    num_assistant_tokens: int = 5    # draft tokens per step (genai's default is 5)
    max_ngram_size: int = 3
    precision: str = "bf16"          # INFERENCE_PRECISION_HINT, as in runtime.kvmodel ("bf16" or "f32")
    draft_precision: str | None = None  # the draft's, when it differs (as `specqd tune` may choose for ours)


@dataclass
class GenAIResult:
    tokens: list[int]                    # generated ids, EOS included when generation stopped on it
    seconds: float                       # wall time of the generate call (prompt already tokenized)
    accepted_tokens: int | None          # draft tokens the target accepted: new tokens - target steps
    draft_seconds: float | None          # draft model inference time (speculative decoding with a draft IR)
    target_seconds: float | None = None  # target inference time as genai reports it (None when it reports 0)
    target_steps: int | None = None      # target model forward passes that emitted tokens


class GenAIEngine:
    def __init__(self, config: GenAIConfig):
        import openvino_genai  # lazily, so that importing this module does not need it

        if config.draft is not None and config.prompt_lookup:
            raise ValueError("choose a draft IR or prompt lookup, not both")
        self.config = config
        self._genai = openvino_genai
        device = _device(config.precision)
        scheduler = openvino_genai.SchedulerConfig()  # cache grows on demand, as in genai's latency configuration
        scheduler.enable_prefix_caching = False
        scheduler.max_num_batched_tokens = sys.maxsize  # read a prompt in one pass, as our runtime does
        options: dict[str, Any] = dict(device, scheduler_config=scheduler)
        if config.draft is not None:
            draft_device = _device(config.draft_precision or config.precision)
            options["draft_model"] = openvino_genai.draft_model(str(config.draft), "CPU", **draft_device)
        elif config.prompt_lookup:
            options["prompt_lookup"] = True
        self.pipe = openvino_genai.LLMPipeline(str(config.target), "CPU", **options)
        self.tokenizer = self.pipe.get_tokenizer()
        self.eos_ids = eos_ids(Path(config.target))

    def encode(self, prompt: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(prompt).input_ids.data[0]]

    def generate(self, prompt: str | list[int], max_new_tokens: int) -> GenAIResult:
        """Greedy raw completion of `prompt` (text, or token ids to share our runtime's tokenization)."""
        import openvino as ov

        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        cfg = self.pipe.get_generation_config()
        cfg.max_new_tokens, cfg.min_new_tokens = max_new_tokens, 0
        cfg.do_sample, cfg.num_beams, cfg.ignore_eos, cfg.echo = False, 1, False, False
        cfg.apply_chat_template = False
        cfg.stop_strings = set()
        cfg.stop_token_ids = set(self.eos_ids)
        if len(self.eos_ids) == 1:
            cfg.eos_token_id = next(iter(self.eos_ids))
        if self.config.draft is not None or self.config.prompt_lookup:
            cfg.num_assistant_tokens = self.config.num_assistant_tokens
        if self.config.prompt_lookup:
            cfg.max_ngram_size = self.config.max_ngram_size
        inputs = ov.Tensor(np.array([ids], np.int64))
        started = time.perf_counter()
        result = self.pipe.generate(inputs, cfg)
        seconds = time.perf_counter() - started

        tokens = [int(t) for t in result.tokens[0]]
        extended = result.extended_perf_metrics
        main = extended.main_model_metrics if extended is not None else result.perf_metrics
        steps = len(result.perf_metrics.raw_metrics.m_new_token_times) or None  # one entry per target step
        speculative = self.config.draft is not None or self.config.prompt_lookup
        target_ms = main.get_inference_duration().mean
        return GenAIResult(
            tokens=tokens, seconds=seconds,
            accepted_tokens=len(tokens) - steps if speculative and steps else None,
            draft_seconds=extended.draft_model_metrics.get_inference_duration().mean / 1000 if extended else None,
            target_seconds=target_ms / 1000 if target_ms > 0 else None,
            target_steps=steps)


def _device(precision: str) -> dict[str, Any]:
    return {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1,
            "KV_CACHE_PRECISION": "f16" if precision == "bf16" else "f32"}
