"""The embedding API: load an export folder once, then generate or stream with any chain of its levels.

    pipe = Pipeline.load("OUT", chain="target,target-mxfp4,draft")
    for text in pipe.stream("def fibonacci(n):", max_new_tokens=64):
        print(text, end="", flush=True)
    print(pipe.last_result.stats)
    pipe.close()   # frees the compiled models (or use `with Pipeline.load(...) as pipe:`)

A generation ends early when the consumer stops iterating `stream`, or when another thread calls
`pipe.cancel()`; either way its KV blocks are freed and the pipeline is ready for the next prompt.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import openvino as ov
import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)

from .chat import ChatTemplate, ChatTemplateError
from .generation import LOOKUP, Chain, Generation, GenerationError
from .cpu import avoid_one_core_amx_crash
from .kvmodel import PRECISIONS, KVModel
from .mxfp4_kernel import Kernel
from .manifest import Manifest, ManifestError
from .sampling import Sampling
from .speculative import DraftControls, LevelStats
from .vocabulary_map import VocabularyMap


@dataclass
class Result:
    text: str
    tokens: list[int]
    finish_reason: str = "length"   # "stop" (EOS or a stop string), "length", or "cancelled"
    stats: dict = field(default_factory=dict)
    levels: list[LevelStats] = field(default_factory=list)  # per level of the chain, from the target down


@dataclass
class OpenTimes:
    """Where opening an export folder goes, in seconds (scripts/footprint.py reports it)."""
    manifest: float = 0.0    # specqd.json, and an OpenVINO Core
    kernel: float = 0.0      # find specqd's MXFP4 kernel library and register it with the Core
    tokenizers: float = 0.0  # compile the tokenizer and detokenizer IRs


class ExportFolder:
    """An export folder opened once: its manifest, tokenizer, and each level's model compiled on first use.

    Pipelines for different chains share these models (a benchmark runs many chains side by side without
    compiling the target once per chain); each generation holds its own blocks in every level's KV pool.
    Levels may also load on a background thread (`load_in_background`) while the target already generates.
    """

    def __init__(self, folder: str | Path, precision: str = "bf16", threads: int = 0, mxfp4_kernel: bool = True,
                 max_blocks: int | None = None):
        if precision not in PRECISIONS:
            raise GenerationError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        started = time.perf_counter()
        self.path = Path(folder)
        self.manifest = Manifest.read(self.path)
        self.precision = precision
        # Draft levels that `specqd tune` measured faster in f32 than in bf16 (OpenVINO's INT4 levels, by 10-40 %
        # on an AMX Xeon: docs/draft-precision.md); a draft only proposes, so its precision never changes which
        # tokens the target accepts.
        self._draft_precisions: dict[str, str] = dict((self.manifest.tuned or {}).get("precision", {}))
        self.threads = threads
        self.mxfp4_kernel = mxfp4_kernel
        self.max_blocks = max_blocks  # per level's KV block pool (None: grows as needed)
        avoid_one_core_amx_crash(precision, threads)
        self.core = ov.Core()
        read = time.perf_counter()
        # MXFP4 levels run on specqd's kernel when it is built and this CPU has AVX512-BF16 but no AMX (mxfp4_kernel.py).
        self.kernel = Kernel.find() if mxfp4_kernel else Kernel(None, "turned off")
        self.kernel.register(self.core)
        found = time.perf_counter()
        target_dir = self.path / self.manifest.level("target").path
        self.tokenizer = self.core.compile_model(target_dir / "openvino_tokenizer.xml", "CPU")
        self.detokenizer = self.core.compile_model(target_dir / "openvino_detokenizer.xml", "CPU")
        self.open_times = OpenTimes(read - started, found - read, time.perf_counter() - found)
        self._text_lock = threading.Lock()  # a server encodes requests and decodes outputs on two threads
        config = json.loads((target_dir / "config.json").read_text())
        self.context = int(config.get("max_position_embeddings", 32768))
        self.eos_ids = eos_ids(target_dir)
        self.chat_template = ChatTemplate.find(target_dir)
        # Every level loaded or loading, by name: a finished future for one loaded on the caller's thread.
        self._models: dict[str, Future[KVModel]] = {}
        self._background: ThreadPoolExecutor | None = None  # made by the first load_in_background
        self.closed = False

    def close(self) -> None:
        """Free every compiled model and KV cache; the folder and its pipelines cannot generate after this.

        A level still loading in the background is waited for (OpenVINO cannot stop a compile), then freed.
        """
        if self._background is not None:
            self._background.shutdown(wait=True, cancel_futures=True)
        for name in list(self._models):
            self.unload(name)
        self.tokenizer = self.detokenizer = None
        self.closed = True

    def __enter__(self) -> "ExportFolder":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def model(self, name: str) -> KVModel:
        """The level's compiled model: loaded now if it was never asked for, waited for if it is loading."""
        if self.closed:
            raise GenerationError(f"{self.path} was closed; open it again to generate")
        if name not in self._models:
            future: Future[KVModel] = Future()
            future.set_result(self._load(name))
            self._models[name] = future
        return self._models[name].result()

    def unload(self, name: str) -> None:
        """Free the level's compiled model and KV cache; the next `model(name)` compiles it again."""
        future = self._models.pop(name, None)
        if future is not None and not future.cancelled() and future.exception() is None:
            future.result().close()

    def precision_of(self, name: str) -> str:
        """The inference precision the level runs in: the folder's, or f32 for a draft tune found faster so."""
        if name == "target" or self.precision == "f32":
            return self.precision
        return self._draft_precisions.get(name, self.precision)

    def set_draft_precisions(self, precisions: dict[str, str]) -> None:
        """Run these draft levels in these precisions (the others in the folder's); a loaded level whose
        precision changes is unloaded, to compile again when next asked for."""
        if "target" in precisions or set(precisions.values()) - set(PRECISIONS):
            raise GenerationError(f"draft precisions {precisions}: only draft levels, in {', '.join(PRECISIONS)}")
        before = {name: self.precision_of(name) for name in self._models}
        self._draft_precisions = dict(precisions)
        for name, precision in before.items():
            if self.precision_of(name) != precision:
                self.unload(name)

    def load_in_background(self, names: list[str]) -> list[Future[KVModel]]:
        """Load these levels one after another on a background thread, each compiled and warmed up (its costly
        first pass run), and return their futures; levels loaded or loading already are not loaded again.

        One thread: compile_model uses one core and a first pass all of them, so on a small CPU more threads
        would only slow the target, which generates meanwhile.
        """
        if self.closed:
            raise GenerationError(f"{self.path} was closed; open it again to generate")
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="specqd-load")
        for name in names:
            if name not in self._models:
                self._models[name] = self._background.submit(self._load, name, warm_up=True)
        return [self._models[name] for name in names]

    def _load(self, name: str, warm_up: bool = False) -> KVModel:
        level = self.manifest.level(name)
        level_dir = self.path / level.path
        vocabulary = VocabularyMap.read(level_dir, level.vocabulary_ids) if level.vocabulary_ids else None
        model = KVModel(self.core, level_dir, self.precision_of(name), self.kernel, self.threads,
                        self.max_blocks, vocabulary)
        if warm_up:
            model.warm_up()
        return model

    def loaded_models(self) -> dict[str, KVModel]:
        """The levels loaded so far (not those still loading)."""
        return {name: future.result() for name, future in self._models.items()
                if future.done() and not future.cancelled() and future.exception() is None}

    def is_copy_of_target(self, name: str) -> bool:
        """A level made from the target's own weights (a quantized copy) can take the target's KV cache."""
        return (name != "target"
                and self.manifest.level(name).source_sha256 == self.manifest.level("target").source_sha256
                and self.model(name).shares_cache_layout(self.model("target")))

    def pipeline(self, chain: str | list[str] | None = None, controls: dict[str, DraftControls] | None = None,
                 background: bool = False) -> "Pipeline":
        """`chain` lists level names from the target down, e.g. "target,target-mxfp4,draft".

        `background`: return once the target is compiled and warmed up, and load the draft levels on a
        background thread; the target generates alone until they are all loaded, then they join (see Chain).
        """
        names = chain.split(",") if isinstance(chain, str) else chain
        return Pipeline(self, names or default_chain(self.manifest), controls or {}, background)

    def default_controls(self, chain: list[str]) -> dict[str, DraftControls]:
        """`specqd tune`'s draft settings for this chain when it searched it; else the built-in defaults."""
        tuned = self.manifest.tuned or {}
        tuned_k = tuned.get("k_by_chain", {}).get(",".join(chain))
        if tuned_k is None:
            return {name: DraftControls() for name in chain[1:]}
        confidence = tuned.get("confidence_by_chain", {}).get(",".join(chain), {})
        extend = tuned.get("extend_by_chain", {}).get(",".join(chain), {})
        return {name: DraftControls(k=tuned_k[name], confidence=confidence.get(name, 0.0), extend=extend.get(name, 0))
                for name in chain[1:]}

    def encode(self, text: str) -> list[int]:
        with self._text_lock:
            return [int(i) for i in self.tokenizer([text])["input_ids"][0]]

    def decode(self, tokens: list[int]) -> str:
        with self._text_lock:
            return str(self.detokenizer(np.array([tokens], np.int64))["string_output"][0])

    @property
    def vocabulary_size(self) -> int:
        return self.model("target").compiled.output("logits").get_partial_shape()[-1].get_length()

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """The model's own chat template (from its tokenizer files) applied to messages of system, user and
        assistant roles, ending where the assistant's answer begins."""
        if self.chat_template is None:
            raise GenerationError(f"{self.path}: the model ships no chat template; pass a formatted prompt")
        try:
            return self.chat_template.render(messages)
        except ChatTemplateError as error:
            raise GenerationError(str(error)) from None


class Pipeline:
    """One chain generating for one prompt at a time: a batch of one through the same Chain the server runs."""

    def __init__(self, folder: ExportFolder, chain: list[str], controls: dict[str, DraftControls],
                 background: bool = False):
        for name, control in controls.items():
            control.validate(name)
        self.folder = folder
        self.chain = chain            # level names, from the target down
        self.runner = Chain(folder, chain, background)
        defaults = folder.default_controls(chain)
        self.controls = {name: controls.get(name) or defaults[name] for name in chain[1:]}
        self.last_result: Result | None = None
        self._cancelled = threading.Event()
        self._current: Generation | None = None

    def progress(self) -> dict:
        """Stats of the generation in progress (or of the last one): tokens/s and each level's acceptance so
        far, for a caller that shows them live between the pieces `stream` yields."""
        if self._current is None:
            raise GenerationError("nothing has been generated yet")
        return self._current.stats(self.runner)

    def wait_loaded(self) -> None:
        """Wait until every level of the chain is loaded (Pipeline.load loads the drafts in the background);
        a level that failed to load raises its error here."""
        self.runner.wait_loaded()

    def cancel(self) -> None:
        """End the generation in progress after its current step (safe to call from any thread)."""
        self._cancelled.set()

    def close(self) -> None:
        """Free the export folder's compiled models (shared with any other pipeline of the same folder)."""
        self.folder.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    @classmethod
    def load(cls, folder: str | Path, chain: str | list[str] | None = None,
             controls: dict[str, DraftControls] | None = None, precision: str = "bf16",
             threads: int = 0, background: bool = False) -> "Pipeline":
        """One chain of one export folder; see ExportFolder to run several chains on shared models.

        `background`: return once the target is compiled and warmed up, and load the draft levels in the
        background; they join when all are ready. An app shows its first answer seconds earlier (README
        "Footprint"); until they join the target generates alone, which changes speed, not what it generates
        (every token is the target's). A seeded sample waits for them, so that the seed reproduces it.
        """
        return ExportFolder(folder, precision, threads).pipeline(chain, controls, background)

    def generate(self, prompt: str, **options) -> Result:
        for _ in self.stream(prompt, **options):
            pass
        return self.last_result

    def stream(self, prompt: str, max_new_tokens: int = 128, sampling: Sampling = Sampling(),
               stop: tuple[str, ...] = (), chat: bool = False) -> Iterator[str]:
        """Yield text as the target accepts tokens; the full Result is then in `last_result`.

        `chat` wraps the prompt as one user message in the model's chat template.
        """
        if self.folder.closed:
            raise GenerationError(f"{self.folder.path} was closed; load the pipeline again to generate")
        text = self.folder.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
        if sampling.seed is not None:  # the random draws depend on which levels draft
            self.wait_loaded()
        generation = self.start(self.folder.encode(text) if prompt else [], max_new_tokens, sampling, stop)
        self._cancelled.clear()
        self._current = generation
        try:
            while not generation.finished:
                if self._cancelled.is_set():
                    generation.finish_reason = "cancelled"
                    break
                self.runner.step([generation])
                piece = generation.take_text()
                if piece:
                    yield piece
        finally:  # also when the consumer stops iterating: the blocks go back, the pipeline stays usable
            self.runner.release(generation)
        self.last_result = Result(text=generation.text, tokens=generation.generated,
                                  finish_reason=generation.finish_reason, stats=generation.stats(self.runner),
                                  levels=[generation.job.stats[name] for name in self.chain])

    def start(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling,
              stop: tuple[str, ...] = ()) -> Generation:
        check_request(self.folder, prompt_ids, max_new_tokens, sampling, stop)
        return self.runner.start(prompt_ids, max_new_tokens, sampling, stop, self.controls)


def check_request(folder: ExportFolder, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling,
                  stop: tuple[str, ...]) -> None:
    """What every generation is checked for before any model runs."""
    if not prompt_ids:
        raise GenerationError("the prompt is empty")
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens {max_new_tokens}: must be at least 1")
    if any(not isinstance(s, str) or not s for s in stop):
        raise GenerationError("stop strings must be non-empty")
    try:
        sampling.validate()
    except ValueError as error:
        raise GenerationError(str(error)) from None
    if len(prompt_ids) + max_new_tokens > folder.context:
        raise GenerationError(f"the prompt has {len(prompt_ids)} tokens; with max_new_tokens {max_new_tokens} it "
                              f"exceeds the model's context of {folder.context}: shorten it or ask for fewer tokens")


def default_chain(manifest: Manifest) -> list[str]:
    """The chain `specqd tune` chose; untuned, ML-SpecQD's: target ← its MXFP4 copy ← the small draft."""
    if manifest.tuned:
        return list(manifest.tuned["chain"])
    names = [level.name for level in manifest.levels]
    return [name for name in ("target", "target-mxfp4", "draft") if name in names]


def eos_ids(folder: Path) -> set[int]:
    """Every id that ends a generation: the configs' eos_token_id, and tokenizer_config.json's eos_token.

    Qwen's instruct models end a chat turn with <|im_end|> (the configs' id) but end raw text with
    <|endoftext|> (the tokenizer's eos_token): a raw completion must stop at either.
    """
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    config_file, tokenizer_file = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        eos = config.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        # The token's id is in tokenizer.json's added tokens (older tokenizer_config.json files repeat it).
        added = json.loads(tokenizer_file.read_text()).get("added_tokens", []) if tokenizer_file.is_file() else []
        added += [{"id": int(i), **token} for i, token in config.get("added_tokens_decoder", {}).items()]
        ids.update(token["id"] for token in added if eos is not None and token.get("content") == eos)
    return ids


__all__ = ["ExportFolder", "Pipeline", "Result", "Sampling", "DraftControls", "GenerationError", "ManifestError",
           "default_chain"]
