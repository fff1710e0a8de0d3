"""The embedding API: load an export folder once, then generate or stream with any chain of its levels.

    pipe = Pipeline.load("OUT", chain="target,target-mxfp4,draft")
    for text in pipe.stream("def fibonacci(n):", max_new_tokens=64):
        print(text, end="", flush=True)
    print(pipe.last_result.stats)
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import openvino as ov
import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)

from .kvmodel import PRECISIONS, KVModel
from .mxfp4_kernel import Kernel
from .manifest import Manifest, ManifestError
from .sampling import Sampling
from .speculative import DraftControls, ModelLevel, PromptLookup

LOOKUP = "lookup"


class GenerationError(ValueError):
    pass


@dataclass
class Result:
    text: str
    tokens: list[int]
    stats: dict = field(default_factory=dict)


class ExportFolder:
    """An export folder opened once: its manifest, tokenizer, and each level's model compiled on first use.

    Pipelines for different chains share these models (a benchmark runs many chains side by side without
    compiling the target once per chain); each generation starts by resetting the caches it uses.
    """

    def __init__(self, folder: str | Path, precision: str = "bf16", threads: int = 0, mxfp4_kernel: bool = True):
        if precision not in PRECISIONS:
            raise GenerationError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        self.path = Path(folder)
        self.manifest = Manifest.read(self.path)
        self.precision = precision
        self.threads = threads
        self.mxfp4_kernel = mxfp4_kernel
        self.core = ov.Core()
        # MXFP4 levels run on specqd's kernel when it is built and this CPU has AVX512-BF16 (mxfp4_kernel.py).
        self.kernel = Kernel.find() if mxfp4_kernel else Kernel(None, "turned off")
        self.kernel.register(self.core)
        target_dir = self.path / self.manifest.level("target").path
        self.tokenizer = self.core.compile_model(target_dir / "openvino_tokenizer.xml", "CPU")
        self.detokenizer = self.core.compile_model(target_dir / "openvino_detokenizer.xml", "CPU")
        config = json.loads((target_dir / "config.json").read_text())
        self.context = int(config.get("max_position_embeddings", 32768))
        self.eos_ids = eos_ids(target_dir)
        self.chat_template = _chat_template(target_dir)
        self._models: dict[str, KVModel] = {}

    def model(self, name: str) -> KVModel:
        if name not in self._models:
            level_dir = self.path / self.manifest.level(name).path
            self._models[name] = KVModel(self.core, level_dir, self.precision, self.kernel, self.threads)
        return self._models[name]

    def is_copy_of_target(self, name: str) -> bool:
        """A level made from the target's own weights (a quantized copy) can take the target's KV cache."""
        return (name != "target"
                and self.manifest.level(name).source_sha256 == self.manifest.level("target").source_sha256
                and self.model(name).shares_cache_layout(self.model("target")))

    def pipeline(self, chain: str | list[str] | None = None,
                 controls: dict[str, DraftControls] | None = None) -> "Pipeline":
        """`chain` lists level names from the target down, e.g. "target,target-mxfp4,draft"."""
        names = chain.split(",") if isinstance(chain, str) else chain
        return Pipeline(self, names or default_chain(self.manifest), controls or {})

    def default_controls(self, chain: list[str]) -> dict[str, DraftControls]:
        """`specqd tune`'s draft settings for this chain when it searched it; else the built-in defaults."""
        tuned = self.manifest.tuned or {}
        tuned_k = tuned.get("k_by_chain", {}).get(",".join(chain))
        if tuned_k is None:
            return {name: DraftControls() for name in chain[1:]}
        confidence = tuned.get("confidence_by_chain", {}).get(",".join(chain), {})
        return {name: DraftControls(k=tuned_k[name], confidence=confidence.get(name, 0.0)) for name in chain[1:]}

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer([text])["input_ids"][0]]

    def decode(self, tokens: list[int]) -> str:
        return str(self.detokenizer(np.array([tokens], np.int64))["string_output"][0])

    def apply_chat_template(self, prompt: str) -> str:
        if self.chat_template is None:
            raise GenerationError(f"{self.path}: the model has no ChatML chat template; pass a formatted prompt")
        return self.chat_template.format(prompt=prompt)


class Pipeline:
    def __init__(self, folder: ExportFolder, chain: list[str], controls: dict[str, DraftControls]):
        _check_chain(folder.manifest, chain)
        for name, control in controls.items():
            control.validate(name)
        self.folder = folder
        self.chain = chain
        self.levels: list[ModelLevel | PromptLookup] = []
        below = None
        defaults = folder.default_controls(chain)
        for name in reversed(chain):
            control = controls.get(name) or defaults.get(name, DraftControls())
            level = PromptLookup(control) if name == LOOKUP else ModelLevel(name, folder.model(name), below, control)
            self.levels.insert(0, level)
            below = level
        self.target: ModelLevel = self.levels[0]
        self.prompt_sharers = [level for level in self.levels[1:]
                               if isinstance(level, ModelLevel) and folder.is_copy_of_target(level.name)]
        self.last_result: Result | None = None

    @classmethod
    def load(cls, folder: str | Path, chain: str | list[str] | None = None,
             controls: dict[str, DraftControls] | None = None, precision: str = "bf16",
             threads: int = 0) -> "Pipeline":
        """One chain of one export folder; see ExportFolder to run several chains on shared models."""
        return ExportFolder(folder, precision, threads).pipeline(chain, controls)

    def generate(self, prompt: str, **options) -> Result:
        for _ in self.stream(prompt, **options):
            pass
        return self.last_result

    def stream(self, prompt: str, max_new_tokens: int = 128, sampling: Sampling = Sampling(),
               stop: tuple[str, ...] = (), chat: bool = False) -> Iterator[str]:
        """Yield text as the target accepts tokens; the full Result is then in `last_result`."""
        if not prompt:
            raise GenerationError("the prompt is empty")
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens {max_new_tokens}: must be at least 1")
        try:
            sampling.validate()
        except ValueError as error:
            raise GenerationError(str(error)) from None
        folder = self.folder
        prompt_ids = folder.encode(folder.apply_chat_template(prompt) if chat else prompt)
        if len(prompt_ids) + max_new_tokens > folder.context:
            raise GenerationError(f"the prompt has {len(prompt_ids)} tokens; with max_new_tokens {max_new_tokens} it "
                                  f"exceeds the model's context of {folder.context}: shorten it or ask for fewer tokens")

        rng = np.random.default_rng(sampling.seed)
        for level in self.levels:
            level.reset()
        started = time.perf_counter()
        first_token_at = None
        tokens = list(prompt_ids)
        generated: list[int] = []
        emitted = ""
        done = False
        while not done:
            limit = max_new_tokens - len(generated)
            if not generated and self.prompt_sharers:
                # The target reads the prompt alone (and emits its first token); its quantized copies then take
                # its cache of the prompt instead of reading the prompt themselves.
                limit = 1
            new, _, _ = self.target.step(tokens, limit, sampling, rng)
            if not generated:
                for level in self.prompt_sharers:
                    level.model.adopt_cache(self.target.model)
            first_token_at = first_token_at or time.perf_counter()
            for token in new:
                generated.append(token)
                if token in folder.eos_ids or len(generated) >= max_new_tokens:
                    done = True
                    break
            tokens = list(prompt_ids) + generated
            text = folder.decode(generated)
            hit = min((i for i in (text.find(s, max(0, len(emitted) - len(s))) for s in stop) if i >= 0),
                      default=-1)
            if hit >= 0:
                text, done = text[:hit], True
            if text.endswith("\ufffd") and not done:  # an incomplete UTF-8 sequence: wait for its next bytes
                continue
            if len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text

        elapsed = time.perf_counter() - started
        level_seconds = sum(level.stats.seconds for level in self.levels)
        self.last_result = Result(text=emitted, tokens=generated, stats={
            "prompt_tokens": len(prompt_ids),
            "new_tokens": len(generated),
            "seconds": round(elapsed, 3),
            "time_to_first_token": round(first_token_at - started, 3),
            "tokens_per_second": round(len(generated) / elapsed, 2),
            "python_overhead_seconds": round(elapsed - level_seconds, 3),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "levels": [level.stats.summary() | _model_stats(level) for level in self.levels],
        })


def _model_stats(level: ModelLevel | PromptLookup) -> dict:
    """The matmul kernel a level runs on, and how many tokens it ran through its model (prompt reads included)."""
    if not isinstance(level, ModelLevel):
        return {"kernel": "-", "tokens_computed": 0}
    return {"kernel": level.model.kernel, "tokens_computed": level.model.tokens_computed}


def default_chain(manifest: Manifest) -> list[str]:
    """The chain `specqd tune` chose; untuned, ML-SpecQD's: target ← its MXFP4 copy ← the small draft."""
    if manifest.tuned:
        return list(manifest.tuned["chain"])
    names = [level.name for level in manifest.levels]
    return [name for name in ("target", "target-mxfp4", "draft") if name in names]


def _check_chain(manifest: Manifest, chain: list[str]) -> None:
    if not chain:
        raise GenerationError("the chain is empty; it lists levels from the target down, e.g. target,draft")
    if len(chain) > 1 and chain[0] != "target":  # a single level may run alone, e.g. to time a draft
        raise GenerationError(f"chain {','.join(chain)}: its top must be the target level 'target'")
    if chain[0] == LOOKUP:
        raise GenerationError(f"chain {','.join(chain)}: '{LOOKUP}' cannot generate on its own")
    if len(set(chain)) != len(chain):
        raise GenerationError(f"chain {','.join(chain)}: a level appears twice")
    if LOOKUP in chain[:-1]:
        raise GenerationError(f"chain {','.join(chain)}: '{LOOKUP}' drafts without a model, so it must come last")
    models = [manifest.level(name) for name in chain if name != LOOKUP]  # raises for unknown names
    for level in models[1:]:
        if level.tokenizer_sha256 != models[0].tokenizer_sha256:
            raise GenerationError(f"levels {models[0].name} and {level.name} have different tokenizers; a draft must "
                                  "share the target's vocabulary")


def eos_ids(folder: Path) -> set[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    return ids


def _chat_template(folder: Path) -> str | None:
    """ChatML, the template of the Qwen family, rendered without a Jinja dependency."""
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else ""
    if "<|im_start|>" not in template:
        return None
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")


__all__ = ["ExportFolder", "Pipeline", "Result", "Sampling", "DraftControls", "GenerationError", "ManifestError", "default_chain"]
