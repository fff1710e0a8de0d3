"""Generations and the chain that advances them: the loop shared by `Pipeline` (one prompt) and the server
(many requests in one batch).

A `Generation` is one request's progress: its tokens, the text it may show so far, and why it finished. A
`Chain` holds one chain's levels and runs a target round for any batch of generations in one target pass.
Each generation is cut at its own end (EOS, max_new_tokens, or a stop string) token by token, so its tokens
and text do not depend on how many tokens each round happened to verify, nor on what shared its batch.
"""

from __future__ import annotations

import resource
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .kvmodel import Sequence
from .sampling import Sampling
from .speculative import DraftControls, Job, LevelStats, ModelLevel, PromptLookup

LOOKUP = "lookup"


class GenerationError(ValueError):
    pass


@dataclass
class Generation:
    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...]
    job: Job
    generated: list[int] = field(default_factory=list)
    text: str = ""                    # the text it may show: stop strings cut, possible stop prefixes held back
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", or "cancelled" (Pipeline.cancel)
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    _shown: int = 0                   # characters of `text` already handed out by `take_text`
    _text: "IncrementalText" = field(default_factory=lambda: IncrementalText())
    _searched: int = 0                # characters of the decoded text already searched for stop strings

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def take_text(self) -> str:
        """The text added since the last call."""
        piece = self.text[self._shown:]
        self._shown = len(self.text)
        return piece

    def extend(self, new: list[int], eos_ids: set[int], decode: Callable[[list[int]], str]) -> None:
        """Append a round's tokens one by one, up to the first that ends the generation, and update the text."""
        for index, token in enumerate(new):
            self.generated.append(token)
            if token in eos_ids:
                self.finish_reason = "stop"
            elif len(self.generated) >= self.max_new_tokens:
                self.finish_reason = "length"
            if self.stop or self.finished or index == len(new) - 1:
                self.text = self._visible_text(self._text.update(self.generated, decode, final=self.finished))
            if self.finished:
                return

    def _visible_text(self, text: str) -> str:
        """Cut the text at its first stop string; else hold back what may still become one, or an unfinished
        UTF-8 sequence, so that no shown character is ever taken back."""
        longest = max(map(len, self.stop), default=0)
        start = max(0, self._searched - longest + 1)  # a stop string may straddle what was searched before
        hits = [index for index in (text.find(stop, start) for stop in self.stop) if index >= 0]
        self._searched = len(text)
        if hits:
            self.finish_reason = "stop"
            return text[:min(hits)]
        if self.finished:
            return text
        held = max((size for stop in self.stop for size in range(1, len(stop))
                    if text.endswith(stop[:size])), default=0)
        return text[:len(text) - held]

    def stats(self, chain: "Chain") -> dict:
        elapsed = time.perf_counter() - self.started
        levels = [self.job.stats[name] for name in chain.names]
        return {
            "prompt_tokens": len(self.prompt_ids),
            "new_tokens": len(self.generated),
            "seconds": round(elapsed, 3),
            "time_to_first_token": round((self.first_token_at or time.perf_counter()) - self.started, 3),
            "tokens_per_second": round(len(self.generated) / elapsed, 2),
            "python_overhead_seconds": round(elapsed - sum(level.seconds for level in levels), 3),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "levels": [level.summary() | chain.model_stats(name, self.job) for name, level in zip(chain.names, levels)],
        }


class IncrementalText:
    """The text of a growing token list, decoding only a short window of its latest tokens per step.

    Decoding all generated tokens at every step costs time that grows with the output. Here each step decodes
    the tokens since an anchor, and the text before the anchor is final. The window starts a few tokens before
    the anchor (its context), because a tokenizer may decode a token differently at the start of a text (e.g.
    its leading space); the context's own text is cut off again, as vLLM's incremental detokenizer does. Text
    that ends inside a UTF-8 sequence (U+FFFD) stays pending until the next tokens complete it. Once the
    window is WINDOW tokens long and ends on a whole character, the anchor moves to its end.
    """

    WINDOW = 32    # tokens decoded per step at most (plus the context), before the anchor moves
    CONTEXT = 4    # tokens before the anchor decoded with the window

    def __init__(self):
        self.done = ""       # final text, up to the anchor
        self.start = 0       # where the window (context included) starts
        self.context = ""    # the text of the context tokens, as the window begins

    def update(self, tokens: list[int], decode: Callable[[list[int]], str], final: bool = False) -> str:
        """The text of `tokens` (which extend the previous call's); an unfinished character is left out
        unless `final`."""
        window = decode(tokens[self.start:])
        if not window.startswith(self.context):  # the context decodes differently in a longer text: start over
            self.done, self.start, self.context = "", 0, ""
            window = decode(tokens)
        new = window[len(self.context):]
        if new.endswith("\ufffd") and not final:
            return self.done + new.rstrip("\ufffd")
        text = self.done + new
        if len(tokens) - self.start > self.WINDOW + self.CONTEXT:
            self.done, self.start = text, len(tokens) - self.CONTEXT
            self.context = decode(tokens[self.start:])
        return text


class Chain:
    """One chain's levels, from the target down, built once over an export folder's shared models.

    With `background`, the chain starts as the target alone, compiled and warmed up first: its first pass
    would run several times slower beside the drafts' loading, on a CPU of a few cores. Then the draft levels
    load on the folder's background thread, and join all at once at the start of the first step after the
    last one is loaded. A draft that joins in the middle of a generation reads what it lacks of the text on
    its first pass, as after any rollback, and the target still verifies every token.
    """

    def __init__(self, folder, names: list[str], background: bool = False):
        check_chain(folder.manifest, names)
        self.folder = folder
        self.names = names
        self._loading: list[Future] = []
        drafts = [name for name in names[1:] if name != LOOKUP]
        if background and drafts:
            self._build(names[:1])
            self.target.model.warm_up()
            self._loading = folder.load_in_background(drafts)
        else:
            self._build(names)

    def _build(self, names: list[str]) -> None:
        self.levels: list[ModelLevel | PromptLookup] = []
        below = None
        for name in reversed(names):
            level = PromptLookup() if name == LOOKUP else ModelLevel(name, self.folder.model(name), below)
            self.levels.insert(0, level)
            below = level
        self.target: ModelLevel = self.levels[0]
        self.prompt_sharers = [level for level in self.levels[1:]
                               if isinstance(level, ModelLevel) and self.folder.is_copy_of_target(level.name)]
        self.model_levels = [level for level in self.levels if isinstance(level, ModelLevel)]

    def wait_loaded(self) -> None:
        """Wait for the levels loading in the background (raises a level's load error); they join at the next
        step, on the generating thread."""
        for future in self._loading:
            future.result()

    def _join_loaded(self) -> None:
        if self._loading and all(future.done() for future in self._loading):
            for future in self._loading:
                future.result()  # a level that failed to load raises here, on the generating thread
            self._loading = []
            self._build(self.names)

    def start(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, stop: tuple[str, ...],
              controls: dict[str, DraftControls]) -> Generation:
        job = Job(sampling, np.random.default_rng(sampling.seed), controls,
                  sequences={name: Sequence() for name in self.names if name != LOOKUP},
                  stats={name: LevelStats(name) for name in self.names})
        return Generation(list(prompt_ids), max_new_tokens, tuple(stop), job)

    def step(self, generations: list[Generation], caps: list[int | None] | None = None) -> None:
        """One target round for every generation, in one target pass (and batched passes of each draft level).

        `caps` limits the draft tokens each generation's round verifies (0: no speculation this round).
        """
        self._join_loaded()
        limits = []
        for generation, cap in zip(generations, caps or [None] * len(generations)):
            limit = generation.max_new_tokens - len(generation.generated)
            if not generation.generated and self.prompt_sharers:
                # The target reads the prompt alone (and emits its first token); its quantized copies then take
                # its cache of the prompt instead of reading the prompt themselves.
                limit = 1
            limits.append(limit if cap is None else min(limit, cap + 1))
        rounds = self.target.step([g.job for g in generations], [g.prompt_ids + g.generated for g in generations],
                                  limits)
        for generation, (new, _, _) in zip(generations, rounds):
            if not generation.generated:
                generation.first_token_at = time.perf_counter()
                for level in self.prompt_sharers:
                    level.model.adopt_cache(generation.job.sequences[level.name], self.target.model,
                                            generation.job.sequences[self.target.name])
            generation.extend(new, self.folder.eos_ids, self.folder.decode)

    def unread_prompt(self, generation: Generation) -> int:
        """Prompt tokens the target has not read yet."""
        return len(generation.prompt_ids) - len(generation.job.sequences[self.target.name].cached)

    def read_prompt(self, generation: Generation, tokens: int) -> None:
        """Read up to `tokens` more prompt tokens into the target's cache, emitting nothing.

        A server reads a long prompt this way, one chunk between two steps of the running requests, so that
        they do not stall for a whole prompt read. The last prompt token is left for `step`, which samples.
        Draft models are not read into: a drafter reads the context when its request first drafts, which a
        request in a full batch may never do.
        """
        sequence = generation.job.sequences[self.target.name]
        upto = min(len(generation.prompt_ids) - 1, len(sequence.cached) + tokens)
        if upto > len(sequence.cached):
            self.target.model.run([(sequence, generation.prompt_ids[:upto], 1)])

    def draft_lag(self, generation: Generation) -> int:
        """Context tokens the first drafting model has not read: what its next proposal must read first."""
        if len(self.names) == 1 or self.names[1] == LOOKUP:
            return 0
        cached = generation.job.sequences[self.names[1]].cached
        return len(generation.prompt_ids) + len(generation.generated) - len(cached)

    def release(self, generation: Generation) -> None:
        """Free the generation's cache blocks in every level."""
        for level in self.model_levels:
            level.model.free(generation.job.sequences[level.name])

    def model_stats(self, name: str, job: Job) -> dict:
        """The matmul kernel a level runs on, and how many tokens it ran through its model (prompt reads included);
        "loading" for a level still loading in the background."""
        level = next((level for level in self.model_levels if level.name == name), None)
        if level is None:
            return {"kernel": "-" if name == LOOKUP else "loading", "tokens_computed": 0}
        return {"kernel": level.model.kernel, "tokens_computed": job.sequences[name].computed}


def check_chain(manifest, chain: list[str]) -> None:
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
    if models[0].vocabulary:
        raise GenerationError(f"chain {','.join(chain)}: {models[0].name} has a reduced vocabulary "
                              f"({models[0].vocabulary} tokens): it can only draft for a level above it, never be "
                              "the top of a chain")
    for level in models[1:]:
        if level.tokenizer_sha256 != models[0].tokenizer_sha256:
            raise GenerationError(f"levels {models[0].name} and {level.name} have different tokenizers; a draft must "
                                  "share the target's vocabulary")
