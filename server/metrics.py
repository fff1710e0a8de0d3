"""Prometheus metrics under vLLM's names (prefix `specqd:`), plus what no peer has: speculative counts for
every adjacent pair of levels and each level's passes, seconds and tokens computed.

vLLM's `spec_decode_*` series describe the top pair (the target and the level drafting for it), so PromQL
written for vLLM (acceptance = accepted / draft tokens, mean acceptance length = 1 + accepted / drafts) works
unchanged; `spec_decode_level_*{drafter, verifier}` give the same for every pair down the chain.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from ..runtime.generation import Chain
    from .engine import Engine, Work

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)


class Metrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        model = ["model_name"]

        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"specqd:{name}", text, model + list(labels), registry=self.registry)

        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"specqd:{name}", text, model + list(labels), registry=self.registry)

        def histogram(name: str, text: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"specqd:{name}", text, model, buckets=buckets, registry=self.registry)

        self.running = gauge("num_requests_running", "Requests in the running batch")
        self.waiting = gauge("num_requests_waiting", "Requests waiting for a place in the batch")
        self.blocks_used = gauge("kv_cache_blocks_used", "KV cache blocks (32 tokens) in use", ("level",))
        self.blocks_free = gauge("kv_cache_blocks_free", "KV cache blocks free under the server's limit", ("level",))
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of admitted requests")
        self.generation_tokens = counter("generation_tokens", "Tokens generated")
        self.success = counter("request_success", "Finished requests", ("finished_reason",))
        self.ttft = histogram("time_to_first_token_seconds", "Time to first token", LATENCY_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between two tokens of a request", ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to last token", LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Arrival to admission into the batch",
                                    LATENCY_BUCKETS)
        self.drafts = counter("spec_decode_num_drafts", "Verify steps with a draft, top pair")
        self.draft_tokens = counter("spec_decode_num_draft_tokens", "Draft tokens proposed, top pair")
        self.accepted = counter("spec_decode_num_accepted_tokens", "Draft tokens accepted, top pair")
        self.accepted_at = counter("spec_decode_num_accepted_tokens_per_pos", "Accepted tokens by draft position, "
                                   "top pair", ("position",))
        pair = ("drafter", "verifier")
        self.pair_drafts = counter("spec_decode_level_num_drafts", "Verify steps with a draft, by pair", pair)
        self.pair_draft_tokens = counter("spec_decode_level_num_draft_tokens", "Draft tokens proposed, by pair", pair)
        self.pair_accepted = counter("spec_decode_level_num_accepted_tokens", "Draft tokens accepted, by pair", pair)
        self.pair_accepted_at = counter("spec_decode_level_num_accepted_tokens_per_pos",
                                        "Accepted tokens by draft position, by pair", pair + ("position",))
        self.level_passes = counter("level_forward_passes", "Forward passes of a level's model", ("level",))
        self.level_seconds = counter("level_seconds", "Seconds in a level's forward passes", ("level",))
        self.level_tokens = counter("level_tokens_computed", "Tokens run through a level's model", ("level",))
        self._seen: dict[str, tuple[int, float, int]] = {}   # per level: passes, seconds, tokens already counted

    def admitted(self, work: "Work") -> None:
        self.queue_time.labels(self.model_name).observe(time.perf_counter() - work.arrived)
        self.prompt_tokens.labels(self.model_name).inc(len(work.prompt_ids))

    def tokens_arrived(self, work: "Work", count: int, now: float) -> None:
        if not count:
            return
        self.generation_tokens.labels(self.model_name).inc(count)
        if work.last_token_at is None:
            self.ttft.labels(self.model_name).observe(now - work.arrived)
            count -= 1
        if count:
            gap = (now - (work.last_token_at or now)) / count
            for _ in range(count):
                self.itl.labels(self.model_name).observe(gap)

    def finished(self, work: "Work", error: str | None) -> None:
        reason = "error" if error else work.generation.finish_reason
        self.success.labels(self.model_name, reason).inc()
        if not error:
            self.e2e.labels(self.model_name).observe(time.perf_counter() - work.arrived)

    def aborted(self, work: "Work") -> None:
        self.success.labels(self.model_name, "abort").inc()

    def released(self, work: "Work", chain: "Chain") -> None:
        """Add a request's speculative counts, finished or not, once its caches are freed."""
        stats = work.generation.job.stats
        for verifier, drafter in zip(chain.names, chain.names[1:]):
            counts = stats[drafter]
            series = [(self.pair_drafts, self.pair_draft_tokens, self.pair_accepted, self.pair_accepted_at,
                       (self.model_name, drafter, verifier))]
            if verifier == chain.names[0]:
                series.append((self.drafts, self.draft_tokens, self.accepted, self.accepted_at, (self.model_name,)))
            for drafts, drafted, accepted, accepted_at, labels in series:
                drafts.labels(*labels).inc(counts.drafts)
                drafted.labels(*labels).inc(counts.drafted)
                accepted.labels(*labels).inc(counts.accepted)
                for position, count in enumerate(counts.accepted_at):
                    accepted_at.labels(*labels, str(position)).inc(count)

    def levels_ran(self, chain: "Chain", count: bool = True) -> None:
        """Add the passes, seconds and tokens each level ran since the last call (`count=False`: only note
        where the counters stand, e.g. after the start-up measurements)."""
        for level in chain.model_levels:
            model = level.model
            passes, seconds, tokens = self._seen.get(level.name, (0, 0.0, 0))
            self._seen[level.name] = (model.passes, model.seconds, model.tokens_computed)
            if not count:
                continue
            self.level_passes.labels(self.model_name, level.name).inc(model.passes - passes)
            self.level_seconds.labels(self.model_name, level.name).inc(model.seconds - seconds)
            self.level_tokens.labels(self.model_name, level.name).inc(model.tokens_computed - tokens)

    def render(self, engine: "Engine") -> bytes:
        """The text format, with the gauges read from the engine at scrape time."""
        self.running.labels(self.model_name).set(len(engine.running))
        self.waiting.labels(self.model_name).set(len(engine.waiting))
        for name, model in engine.folder.loaded_models().items():
            self.blocks_used.labels(self.model_name, name).set(model.blocks_used)
            self.blocks_free.labels(self.model_name, name).set(engine.block_limit - model.blocks_used)
        return generate_latest(self.registry)
