"""How many tokens a batch can afford to draft: speculation must never make the server slower than plain
batched decoding.

Alone, a request gains from long drafts because the target's step is flat in tokens. In a batch the target's
pass already carries every request's tokens, so its cost t(n) rises with the tokens the drafting requests add,
and a round of drafting costs k passes of the draft over the requests that draft. With acceptance rate a, a
drafting request keeps 1 + a + ... + a^k tokens per round; the engine picks the k (0 = no drafting) with the
most tokens per second for the whole batch, from step times t(n) measured on this machine and the acceptance
measured so far.

What a drafted token costs is learned from the rounds themselves, per number of drafting requests, because a pass of the
drafter's model per token is only an estimate: a drafter that is itself a speculative chain (an INT4 copy
drafted for by a 0.5B model) may make several tokens per pass, confidence stops end drafts early, and each
pass carries Python work. Before a number of drafting requests has been seen, that estimate stands in. One
that stopped drafting measures nothing more, so its learned cost drifts back toward the estimate round by round until
drafting is tried again: one costly round (a load that has passed, a draft cut short after one token) must
not switch speculation off for good.

A request's drafter reads its context only when the request first drafts (its prompt, and whatever it generated
while it did not draft): at a full batch of short answers that read costs more than speculation would save, so
such a request never drafts and costs exactly what plain batched decoding costs. It drafts only when its share
of the time speculation would save the batch over its remaining tokens repays its drafter's catch-up read.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.generation import LOOKUP
from ..runtime.tools.tune import step

PRIOR_RATE = 0.7                        # acceptance assumed for a pair `specqd tune` has not measured
PRIOR_WEIGHT = 10                       # drafted tokens' worth of weight the prior keeps against measurements
SMOOTHING = 0.2                         # weight of the newest round in the drafting cost's running average
RELAXING = 0.05                         # pull toward the estimate per round without drafting (~14 rounds halve
                                        # the gap)
UNBOUNDED = 1 << 30


@dataclass
class Ask:
    """One running request, as the round's drafting decision sees it."""
    most: int                   # its own draft length
    accepted: int               # draft tokens accepted so far (its own and its chain's finished requests')
    drafted: int                # of so many drafted
    remaining: int = UNBOUNDED  # tokens it may still generate
    lag: int = 0                # context tokens its drafter has not read yet
    prior: float = PRIOR_RATE   # the pair's acceptance before any is measured here (tune's agreement, if it ran)

    @property
    def rate(self) -> float:
        return (self.accepted + PRIOR_WEIGHT * self.prior) / (self.drafted + PRIOR_WEIGHT)


class DraftBudget:
    def __init__(self, target_ms: dict[int, float], draft_ms: dict[int, float] | None):
        """`draft_ms` is None for a drafter without a model (prompt lookup), whose proposals cost nothing."""
        self.target_ms = target_ms
        self.draft_ms = draft_ms
        self.draft_ms_per_token: dict[int, float] = {}   # by drafting requests: measured drafting cost
        self.catch_up_ms_per_token: float | None = None   # measured: what a drafter's context read costs

    def observe(self, drafting: int, drafting_ms: float, positions: int) -> None:
        """A round drafted up to `positions` tokens for each of `drafting` requests in `drafting_ms`. A round
        without drafting (0 positions) pulls every learned cost toward its estimate."""
        if positions > 0:
            known = self.draft_ms_per_token.get(drafting)
            cost = drafting_ms / positions
            self.draft_ms_per_token[drafting] = cost if known is None else known + SMOOTHING * (cost - known)
        elif self.draft_ms:
            for count, known in self.draft_ms_per_token.items():
                self.draft_ms_per_token[count] = known + RELAXING * (_ms(self.draft_ms, count) - known)

    def observe_catch_up(self, drafting: int, drafting_ms: float, positions: int, lag: int) -> None:
        """A round in which drafters also read `lag` context tokens: what it cost beyond its drafting."""
        if lag <= 0:
            return
        cost = max(0.0, drafting_ms - positions * self._draft_token_ms(drafting)) / lag
        known = self.catch_up_ms_per_token
        self.catch_up_ms_per_token = cost if known is None else known + SMOOTHING * (cost - known)

    def caps(self, asks: list[Ask], coming: int = 0) -> list[int]:
        """Each request's draft length this round (0: it does not draft): for one common k, every request
        drafts up to its own length if that repays its drafter's catch-up in the batch it will run in (these
        requests and `coming` more, already admitted or waiting); the k whose round makes the most tokens per
        second wins, against not drafting at all."""
        plain_ms = self.round_ms(len(asks), [])
        best_speed, best = len(asks) / plain_ms, [0] * len(asks)
        batch = len(asks) + coming
        for k in range(1, max(ask.most for ask in asks) + 1):
            caps = [min(k, ask.most) if self._repays(ask, batch, min(k, ask.most)) else 0 for ask in asks]
            drafting = [(cap, ask) for cap, ask in zip(caps, asks) if cap]
            if not drafting:
                continue
            tokens = len(asks) + sum(expected_tokens(cap, ask.rate) - 1 for cap, ask in drafting)
            speed = tokens / self.round_ms(len(asks), [cap for cap, _ in drafting])
            if speed > best_speed:
                best_speed, best = speed, caps
        return best

    def round_ms(self, requests: int, caps: list[int]) -> float:
        """A round of `requests` requests of which some draft `caps` tokens: the target's pass over every
        request's tokens, and the drafter's passes over the drafting requests."""
        target = _ms(self.target_ms, requests + sum(caps))
        if not self.draft_ms or not caps:
            return target
        return target + max(caps) * self._draft_token_ms(len(caps))

    def catch_up_ms(self, lag: int) -> float:
        """What reading `lag` context tokens adds to the drafter's pass, beyond the one token a round reads:
        measured once rounds have shown it, else estimated from the drafter's step times."""
        if not self.draft_ms or lag <= 1:
            return 0.0
        if self.catch_up_ms_per_token is not None:
            return self.catch_up_ms_per_token * lag
        return _ms(self.draft_ms, lag) - _ms(self.draft_ms, 1)

    def _draft_token_ms(self, drafting: int) -> float:
        return self.draft_ms_per_token.get(drafting, _ms(self.draft_ms, drafting))

    def _repays(self, ask: Ask, requests: int, k: int) -> bool:
        """Whether the request's share of what drafting k tokens would save a batch of `requests` (all
        drafting) over its remaining tokens is worth its drafter's catch-up read."""
        catch_up = self.catch_up_ms(ask.lag)
        if catch_up == 0:
            return True
        per_token_ms = self.round_ms(requests, [k] * requests) / expected_tokens(k, ask.rate)
        return ask.remaining * (self.round_ms(requests, []) - per_token_ms) / requests >= catch_up


def prior_rate(tuned: dict | None, chain: tuple[str, ...]) -> float:
    """The acceptance a chain's budget assumes before the server has measured any: tune's agreement of the
    chain's top pair when it measured one. Starting pessimistic costs more than it seems: at 4 requests a 0.7
    draft is worth 0-1 tokens, so requests draft little, learn slowly and stay timid (docs/serving.md). Lookup's
    agreement counts the positions where it proposes nothing, so it is no acceptance rate: lookup keeps 0.7."""
    if len(chain) == 1 or chain[1] == LOOKUP:
        return PRIOR_RATE
    return (tuned or {}).get("agreement", {}).get(f"{chain[0]}>{chain[1]}", PRIOR_RATE)


def expected_tokens(k: int, rate: float) -> float:
    """Tokens a round keeps from a k-token draft at acceptance rate `rate`, the target's own included."""
    return sum(rate ** i for i in range(k + 1))


def _ms(times: dict[int, float], n: int) -> float:
    """Step time at n tokens: interpolated, and beyond the largest measured size grown in proportion (a pass
    that large is compute-bound)."""
    largest = max(times)
    return step(times, n) if n <= largest else times[largest] * n / largest
