"""How many tokens a batch can afford to draft: speculation must never make the server slower than plain
batched decoding.

Alone, a request gains from long drafts because the target's step is flat in tokens. In a batch the target's
pass already carries every request's tokens, so its cost t(n) rises with n = requests x (k + 1), and a round
of drafting costs k passes of the draft over all the requests. With acceptance rate a, a request keeps
1 + a + ... + a^k tokens per round; the engine picks the k (0 = no drafting) with the most tokens per
second, from step times t(n) measured on this machine and the acceptance measured so far.

What a drafted token costs is learned from the rounds themselves, per batch size, because a pass of the
drafter's model per token is only an estimate: a drafter that is itself a speculative chain (an INT4 copy
drafted for by a 0.5B model) may make several tokens per pass, confidence stops end drafts early, and each
pass carries Python work. Before a batch size has been seen, that estimate stands in. A batch size that stopped
drafting measures nothing more, so its learned cost drifts back toward the estimate round by round until
drafting is tried again: one costly round (a load that has passed, a draft cut short after one token) must
not switch speculation off for good.
"""

from __future__ import annotations

from ..runtime.tools.tune import step

PRIOR_ACCEPTED, PRIOR_DRAFTED = 7, 10   # acceptance 0.7 until measurements outweigh it
SMOOTHING = 0.2                         # weight of the newest round in the drafting cost's running average
RELAXING = 0.05                         # pull toward the estimate per round without drafting (~14 rounds halve
                                        # the gap)


class DraftBudget:
    def __init__(self, target_ms: dict[int, float], draft_ms: dict[int, float] | None):
        """`draft_ms` is None for a drafter without a model (prompt lookup), whose proposals cost nothing."""
        self.target_ms = target_ms
        self.draft_ms = draft_ms
        self.draft_ms_per_token: dict[int, float] = {}   # by requests in the batch: measured drafting cost

    def observe(self, requests: int, drafting_ms: float, positions: int) -> None:
        """A round drafted up to `positions` tokens per request for `requests` requests in `drafting_ms`
        (0 positions: a round without drafting)."""
        known = self.draft_ms_per_token.get(requests)
        if positions > 0:
            cost = drafting_ms / positions
            self.draft_ms_per_token[requests] = cost if known is None else known + SMOOTHING * (cost - known)
        elif known is not None and self.draft_ms:
            self.draft_ms_per_token[requests] = known + RELAXING * (_ms(self.draft_ms, requests) - known)

    def best_k(self, requests: int, most: int, accepted: int, drafted: int) -> int:
        """The draft length (0..most) with the most tokens per second for `requests` requests at the measured
        acceptance (`accepted` of `drafted` tokens so far)."""
        rate = (accepted + PRIOR_ACCEPTED) / (drafted + PRIOR_DRAFTED)
        speeds = [(requests * self.expected_tokens(k, rate) / self.round_ms(requests, k), k) for k in range(most + 1)]
        return max(speeds)[1]

    def round_ms(self, requests: int, k: int) -> float:
        if not self.draft_ms:
            drafting = 0.0
        else:
            drafting = k * self.draft_ms_per_token.get(requests, _ms(self.draft_ms, requests))
        return _ms(self.target_ms, requests * (k + 1)) + drafting

    @staticmethod
    def expected_tokens(k: int, rate: float) -> float:
        return sum(rate ** i for i in range(k + 1))


def _ms(times: dict[int, float], n: int) -> float:
    """Step time at n tokens: interpolated, and beyond the largest measured size grown in proportion (a pass
    that large is compute-bound)."""
    largest = max(times)
    return step(times, n) if n <= largest else times[largest] * n / largest
