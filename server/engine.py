"""The engine: one thread owns the compiled models and advances every running request together.

Each loop turn admits waiting requests while the batch and the KV cache have room, then runs one speculative
round for all running requests of a chain in ONE target pass (each draft level also proposes for all of them
in batched passes), and hands each request the text it gained. New prompts join that pass within a per-turn
budget of prompt tokens; a longer prompt is read a chunk per turn. Requests join and leave at every turn; a
request's tokens never depend on what shares its batch (runtime/generation.py).
The HTTP side talks to it through `submit` and `Work.cancelled`; events come back through `Work.emit`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from ..runtime.tools import profile
from ..runtime.generation import LOOKUP, Chain, Generation
from ..runtime.kvmodel import BLOCK
from ..runtime.pipeline import ExportFolder
from ..runtime.sampling import Sampling
from ..runtime.speculative import DraftControls
from .budget import Ask, DraftBudget, prior_rate
from .metrics import Metrics

log = logging.getLogger("specqd.server")
STEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)  # tokens per pass at which the budget measures step times
MARGIN_TOKENS = 64                           # KV room a request may use beyond prompt + max_tokens (drafts)
CATCHING_UP = 4                              # a drafter this many context tokens behind reads more than a round's


class QueueFull(RuntimeError):
    pass


class TooLong(ValueError):
    pass


@dataclass
class EngineConfig:
    chain: list[str]             # the default chain, from the target down
    max_batch: int = 8           # requests running at once
    max_queue: int = 64          # requests waiting beyond those
    kv_cache_tokens: int = 0     # per level; 0: max_batch x the model's context
    prefill_chunk: int = 256     # prompt tokens read per turn, across new requests, beside the running ones
    draft_budget: bool = True    # lower k as the batch fills (False: every request drafts its own k, for tests)


@dataclass
class Event:
    text: str = ""
    finished: bool = False
    error: str | None = None


@dataclass
class Work:
    """One prompt's generation as the engine sees it."""
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    chain: tuple[str, ...]
    controls: dict[str, DraftControls]
    emit: Callable[[Event], None]    # called on the engine thread; must not block
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False          # set by the HTTP side when the client goes away
    generation: Generation | None = None
    last_token_at: float | None = None

    @property
    def reserved_blocks(self) -> int:
        return -(-(len(self.prompt_ids) + self.max_tokens + MARGIN_TOKENS) // BLOCK)


class Engine:
    def __init__(self, folder: ExportFolder, config: EngineConfig, metrics: Metrics):
        self.folder = folder
        self.config = config
        self.metrics = metrics
        self.block_limit = -(-(config.kv_cache_tokens or config.max_batch * folder.context) // BLOCK)
        self.waiting: deque[Work] = deque()
        self.running: list[Work] = []
        self._chains: dict[tuple[str, ...], Chain] = {}
        self._budgets: dict[tuple[str, ...], DraftBudget] = {}
        self._accepted: dict[tuple[str, ...], list[int]] = {}  # per chain: [accepted, drafted] of finished requests
        self._priors: dict[tuple[str, ...], float] = {}        # per chain: its top pair's acceptance before any
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="specqd-engine", daemon=True)

    # The HTTP side.
    def start(self) -> None:
        """Compile the default chain's models and measure their step times, then start the loop."""
        self.chain(tuple(self.config.chain))
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, work: Work) -> None:
        if work.reserved_blocks > self.block_limit:
            raise TooLong(f"the prompt ({len(work.prompt_ids)} tokens) with max_tokens {work.max_tokens} needs more "
                          f"than the server's KV cache of {self.block_limit * BLOCK} tokens per level; ask for fewer "
                          "tokens or start the server with a larger --kv-cache-tokens")
        with self._wake:
            if len(self.waiting) >= self.config.max_queue:
                raise QueueFull(f"the server's queue is full ({self.config.max_queue} requests waiting); retry later")
            self.waiting.append(work)
            self._wake.notify()

    def chain(self, names: tuple[str, ...]) -> Chain:
        """The chain's levels over the folder's shared models, built (and its step times measured) once."""
        if names not in self._chains:
            chain = Chain(self.folder, list(names))
            for level in chain.model_levels:  # the first pass of each is costly; not on the first requests
                level.model.warm_up()
            if self.config.draft_budget:
                self._budgets[names] = self._measure_budget(chain)
                self.metrics.levels_ran(chain, count=False)
            self._accepted[names] = [0, 0]
            self._priors[names] = prior_rate(self.folder.manifest.tuned, names)
            self._chains[names] = chain
        return self._chains[names]

    # The loop.
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.running and not self.waiting:
                    self._wake.wait()
                if self._stopping:
                    break
            self._drop_cancelled()
            self._admit()
            self._step()
        for work in list(self.running) + list(self.waiting):
            self._finish(work, error="the server is shutting down")

    def _admit(self) -> None:
        """Move waiting requests into the batch while it and every level's KV cache have room."""
        used = sum(work.reserved_blocks for work in self.running)
        while self.waiting and len(self.running) < self.config.max_batch:
            work = self.waiting[0]
            if work.cancelled:
                self.waiting.popleft()
                self.metrics.aborted(work)
                continue
            if used + work.reserved_blocks > self.block_limit:
                break
            self.waiting.popleft()
            with self._failing([work], "loading the chain's models"):
                work.generation = self.chain(work.chain).start(work.prompt_ids, work.max_tokens, work.sampling,
                                                               work.stop, work.controls)
                self.metrics.admitted(work)
                self.running.append(work)
                used += work.reserved_blocks

    def _drop_cancelled(self) -> None:
        for work in [work for work in self.running if work.cancelled]:
            self._release(work)
            self.metrics.aborted(work)

    def _stepping(self) -> list[Work]:
        """The running requests that take part in this turn's step: every one already generating, and new ones
        whose unread prompt fits in what is left of the turn's prompt budget (--prefill-chunk tokens). The
        first prompt that does not fit reads a chunk of what is left instead, in a pass of its own. So however
        many requests arrive together, the running ones wait for at most one budget of prompt reading per turn.
        """
        budget = self.config.prefill_chunk
        stepping = []
        for work in list(self.running):
            chain = self._chains[work.chain]
            unread = chain.unread_prompt(work.generation)
            if unread <= budget:
                stepping.append(work)
                budget -= max(unread, 0)
            elif budget > 0:
                with self._failing([work], "reading the prompt"):
                    chain.read_prompt(work.generation, budget)
                budget = 0
        return stepping

    def _step(self) -> None:
        ready = self._stepping()
        for names in {work.chain for work in ready}:
            batch = [work for work in ready if work.chain == names]
            chain = self._chains[names]
            had = [len(work.generation.generated) for work in batch]
            with self._failing(batch, "generating"):  # one pass holds them all: a fault cannot be pinned on one
                caps = self._caps(names, batch)
                with self._timing_drafts(names, batch, caps):
                    chain.step([work.generation for work in batch], caps)
                self.metrics.levels_ran(chain)
                for work, count in zip(batch, had):
                    self._deliver(work, len(work.generation.generated) - count)

    def _caps(self, names: tuple[str, ...], batch: list[Work]) -> list[int | None] | None:
        """Each request's draft tokens this round: its own k, lowered as the batch fills (budget.py), judged by
        its own acceptance so far on top of what the chain's finished requests accepted."""
        if len(names) == 1 or not self.config.draft_budget:
            return None
        accepted, drafted = self._accepted[names]
        chain = self._chains[names]
        asks = []
        for work in batch:
            generation = work.generation
            stats = generation.job.stats[names[1]]
            asks.append(Ask(generation.job.k[names[1]], accepted + stats.accepted, drafted + stats.drafted,
                            remaining=generation.max_new_tokens - len(generation.generated),
                            lag=chain.draft_lag(generation), prior=self._priors[names]))
        coming = min(self.config.max_batch, len(self.running) + len(self.waiting)) - len(batch)
        return self._budgets[names].caps(asks, coming)

    @contextmanager
    def _timing_drafts(self, names: tuple[str, ...], batch: list[Work], caps: list[int | None] | None):
        """Tell the draft budget what this round's drafting cost: the round's time beside the target's pass.
        A round in which a drafter catches up on a request's context (its prompt, or what it generated without
        drafting) tells what that read cost instead: it is paid once, not per drafted token."""
        budget = self._budgets.get(names)
        if budget is None or len(names) == 1:
            yield
            return
        chain = self._chains[names]
        lags = [chain.draft_lag(work.generation) for work, cap in zip(batch, caps) if cap]  # drafting requests'
        jobs = [work.generation.job for work in batch]
        target_seconds = jobs[0].stats[names[0]].seconds
        drafted = [job.stats[names[1]].drafted for job in jobs]
        started = time.perf_counter()
        yield
        ms = 1000 * (time.perf_counter() - started - (jobs[0].stats[names[0]].seconds - target_seconds))
        positions = max(job.stats[names[1]].drafted - before for job, before in zip(jobs, drafted))
        if any(lag > CATCHING_UP for lag in lags):
            budget.observe_catch_up(len(lags), ms, positions, sum(lags))
        else:
            budget.observe(len(lags), ms, positions)

    def _deliver(self, work: Work, new_tokens: int) -> None:
        generation = work.generation
        now = time.perf_counter()
        self.metrics.tokens_arrived(work, new_tokens, now)
        work.last_token_at = now
        piece = generation.take_text()
        if piece:
            work.emit(Event(text=piece))
        if generation.finished:
            self._finish(work)

    def _finish(self, work: Work, error: str | None = None) -> None:
        if work in self.waiting:
            self.waiting.remove(work)
        if work in self.running:
            self._release(work)
        self.metrics.finished(work, error)
        work.emit(Event(finished=True, error=error))

    @contextmanager
    def _failing(self, works: list[Work], doing: str):
        """A fault fails the requests it touched, with a 500 that says what failed; the server goes on."""
        try:
            yield
        except Exception as error:
            log.error("engine failed %s:\n%s", doing, traceback.format_exc())
            for work in works:
                if work.generation is not None and work not in self.running:
                    self._chains[work.chain].release(work.generation)
                self._finish(work, error=f"the engine failed {doing}: {type(error).__name__}: {error}")

    def _release(self, work: Work) -> None:
        """Free the request's KV blocks and keep its acceptance for the draft budget of later batches."""
        if len(work.chain) > 1:
            stats = work.generation.job.stats[work.chain[1]]
            counts = self._accepted[work.chain]
            counts[0] += stats.accepted
            counts[1] += stats.drafted
        self._chains[work.chain].release(work.generation)
        self.running.remove(work)
        self.metrics.released(work, self._chains[work.chain])

    def _measure_budget(self, chain: Chain) -> DraftBudget:
        """Step times of the chain's top two levels by tokens per pass: `specqd tune`'s when it measured up to
        64 tokens (in this precision), else measured now at STEP_SIZES after a real-sized prompt."""
        tuned = (self.folder.manifest.tuned or {}).get("step_ms", {})
        prompt = self.folder.encode("def quick_sort(values: list[int]) -> list[int]:\n" * 8)
        measured = {}
        for name in chain.names[:2]:
            if name == LOOKUP:
                continue
            if "64" in tuned.get(name, {}) and self.folder.precision == "bf16":
                measured[name] = {int(n): ms for n, ms in tuned[name].items()}
                continue
            log.info("measuring the step time of level %s at %s tokens per pass", name, STEP_SIZES)
            measured[name] = profile.step_times(self.folder, name, prompt, list(STEP_SIZES), repeats=2)
            self.folder.model(name).reset()
        for name, times in measured.items():
            log.info("step ms of %s: %s", name, ", ".join(f"n={n} {ms:.0f}" for n, ms in times.items()))
        names = chain.names
        draft = measured.get(names[1]) if len(names) > 1 else None
        return DraftBudget(measured[names[0]], draft)
