"""`specqd serve --engine genai`: the same HTTP app over openvino-genai's ContinuousBatchingPipeline, the engine
behind OpenVINO Model Server, so the two engines can be compared under one API, one client and one set of metrics.

It mirrors runtime/tools/genai_engine.py (the benchmark's baseline): the same IR level folders and compile settings,
prefix caching off (our engine reads every prompt afresh), prompts passed as token ids (so genai applies no
chat template; the app has already applied ours), and generations cut at our EOS ids and stop strings token by
token exactly as runtime/generation.py does, so a greedy answer matches `specqd generate`'s text.

genai runs at most one draft model, fixed at compile time: the default chain's lowest level. A pipeline compiled
with a draft refuses requests that do not draft, so every request drafts with it, whatever chain it names.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai

from ..runtime.generation import LOOKUP, Generation
from ..runtime.kvmodel import cpu_config
from ..runtime.pipeline import ExportFolder
from ..runtime.speculative import DraftControls
from .engine import Engine, EngineConfig, Work
from .metrics import Metrics

GENAI_DEFAULT_K = 5  # genai's (and OVMS's) num_assistant_tokens, used when neither the request nor tune set k


class GenAIFolder(ExportFolder):
    """The export's tokenizer and chat template without specqd's own models: genai compiles its own copies."""

    @cached_property
    def vocabulary_size(self) -> int:  # read from the IR: ExportFolder's would compile the target a second time
        model = self.core.read_model(self.path / self.manifest.level("target").path / "openvino_model.xml")
        return model.output("logits").get_partial_shape()[-1].get_length()

    def loaded_models(self) -> dict:  # no specqd KV pools for metrics.render to report
        return {}


@dataclass
class GenAIGeneration(Generation):
    """A Generation (text, finish_reason, take_text for the app) fed from a genai handle instead of a Chain."""
    handle: Any = None
    steps: int = 0          # genai steps that gave this request tokens: each emits its accepted drafts plus one
    drafter: str | None = None

    def metrics(self) -> dict:
        """What genai lets us know per request: not how many tokens it drafted, nor any level's passes."""
        now = time.perf_counter()
        speculative = {}
        if self.drafter and self.steps > 1:  # the first step reads the prompt and drafts nothing
            accepted, drafts = len(self.generated) - self.steps, self.steps - 1
            speculative = {"num_spec_steps": drafts, "num_accepted_draft_tokens": accepted,
                           "mean_acceptance_length": round(1 + accepted / drafts, 4)}
        return {"speculative_decoding": speculative, "chain": ["target"] + ([self.drafter] if self.drafter else []),
                "time_to_first_token_ms": round(((self.first_token_at or now) - self.started) * 1000, 1),
                "tokens_per_second": round(len(self.generated) / (now - self.started), 2)}


class GenAIEngine(Engine):
    """Engine's queue, thread, cancellation and shutdown, so the HTTP side sees the same behaviour; genai's
    pipeline in place of specqd's chains. Only the engine thread touches the pipeline."""

    def __init__(self, folder: ExportFolder, config: EngineConfig, metrics: Metrics):
        super().__init__(folder, config, metrics)
        models = [name for name in config.chain[1:] if name != LOOKUP]
        self.drafter = models[-1] if models else None
        self._ids = itertools.count()

    def start(self) -> None:
        device = cpu_config(self.folder.precision, self.folder.threads)
        scheduler = openvino_genai.SchedulerConfig()  # cache_size 0: the KV cache grows on demand
        scheduler.enable_prefix_caching = False
        scheduler.max_num_seqs = self.config.max_batch
        # Read each prompt in one pass: in 2026.4.1 a prompt split over several steps while another request
        # drafts corrupts that request's tokens (duplicated, then diverging), so no --prefill-chunk here.
        scheduler.max_num_batched_tokens = sys.maxsize
        properties: dict[str, Any] = dict(device)
        if self.drafter:
            properties["draft_model"] = openvino_genai.draft_model(str(self._level(self.drafter)), "CPU", **device)
        self._pipe = openvino_genai.ContinuousBatchingPipeline(str(self._level("target")), scheduler, "CPU",
                                                               properties)
        self._thread.start()

    def chain(self, names: tuple[str, ...]) -> None:
        return None  # no specqd Chain: app.py takes per-request metrics from GenAIGeneration.metrics

    def _level(self, name: str):
        return self.folder.path / self.folder.manifest.level(name).path

    def _admit(self) -> None:
        """genai schedules and grows its cache itself; we only hold the batch at max_batch."""
        while self.waiting and len(self.running) < self.config.max_batch:
            work = self.waiting.popleft()
            if work.cancelled:
                self.metrics.aborted(work)
                continue
            handle = self._pipe.add_request(next(self._ids), ov.Tensor(np.array([work.prompt_ids], np.int64)),
                                            self._generation_config(work))
            work.generation = GenAIGeneration(list(work.prompt_ids), work.max_tokens, work.stop, None,
                                              handle=handle, drafter=self.drafter)
            self.metrics.admitted(work)
            self.running.append(work)

    def _generation_config(self, work: Work) -> openvino_genai.GenerationConfig:
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens, config.min_new_tokens = work.max_tokens, 0
        config.apply_chat_template = False
        config.stop_token_ids = set(self.folder.eos_ids)  # stop strings are ours to cut, as the runtime cuts them
        sampling = work.sampling
        config.do_sample = not sampling.greedy
        if not sampling.greedy:
            config.temperature, config.top_p = sampling.temperature, sampling.top_p
            if sampling.top_k:
                config.top_k = sampling.top_k
            config.rng_seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        if self.drafter:  # a pipeline with a draft refuses requests without k or a threshold (genai takes one)
            controls = work.controls.get(work.chain[1]) if len(work.chain) > 1 else None
            if controls is not None and controls.confidence > 0:
                config.assistant_confidence_threshold = controls.confidence
            else:  # Work cannot tell specqd's untuned default k from a request's: both give genai's own default
                default = controls is None or controls == DraftControls()
                config.num_assistant_tokens = GENAI_DEFAULT_K if default else controls.k
        return config

    def _read_one_prompt_chunk(self) -> None:
        pass  # genai reads prompts inside step()

    def _step(self) -> None:
        if self._pipe.has_non_finished_requests():
            self._pipe.step()
        for work in list(self.running):
            generation, had = work.generation, len(work.generation.generated)
            new = []
            while generation.handle.can_read():  # all the step gave: its accepted drafts plus one
                for output in generation.handle.read().values():
                    new += [int(token) for token in output.generated_ids]
            if new:
                generation.steps += 1
                generation.first_token_at = generation.first_token_at or time.perf_counter()
            generation.extend(new, self.folder.eos_ids, self.folder.decode)  # the runtime's cut, so the same text
            status = generation.handle.get_status()
            if not generation.finished and status != openvino_genai.GenerationStatus.RUNNING:
                self._finish(work, error=f"openvino-genai ended the request unfinished ({status.name})")
                continue
            self._deliver(work, len(generation.generated) - had)

    def _release(self, work: Work) -> None:
        """Cancel the genai request (a no-op once finished); its cache blocks are freed at the next step."""
        generation = work.generation
        generation.handle.cancel()
        self.running.remove(work)
        if generation.drafter and generation.steps > 1:  # the first step reads the prompt and drafts nothing
            self.metrics.drafts.labels(self.metrics.model_name).inc(generation.steps - 1)
            self.metrics.accepted.labels(self.metrics.model_name).inc(len(generation.generated) - generation.steps)
