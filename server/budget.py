"""How many tokens a batch can afford to draft: speculation must never make the server slower than plain
batched decoding.

Alone, a request gains from long drafts because the target's step is flat in tokens. In a batch the target's
pass already carries every request's tokens, so its cost t(n) rises with n = requests x (k + 1), and a round
of drafting costs k passes of the draft over all the requests. With acceptance rate a, a request keeps
1 + a + ... + a^k tokens per round; the engine picks the k (0 = no drafting) with the most tokens per
second, from step times t(n) measured on this machine and the acceptance measured so far.
"""

from __future__ import annotations

from ..runtime.tune import step

PRIOR_ACCEPTED, PRIOR_DRAFTED = 7, 10   # acceptance 0.7 until measurements outweigh it


class DraftBudget:
    def __init__(self, target_ms: dict[int, float], draft_ms: dict[int, float] | None):
        """`draft_ms` is None for a drafter without a model (prompt lookup), whose proposals cost nothing."""
        self.target_ms = target_ms
        self.draft_ms = draft_ms

    def best_k(self, requests: int, most: int, accepted: int, drafted: int) -> int:
        """The draft length (0..most) with the most tokens per second for `requests` requests at the measured
        acceptance (`accepted` of `drafted` tokens so far)."""
        rate = (accepted + PRIOR_ACCEPTED) / (drafted + PRIOR_DRAFTED)
        speeds = [(requests * self.expected_tokens(k, rate) / self.round_ms(requests, k), k) for k in range(most + 1)]
        return max(speeds)[1]

    def round_ms(self, requests: int, k: int) -> float:
        drafting = k * _ms(self.draft_ms, requests) if self.draft_ms else 0.0
        return _ms(self.target_ms, requests * (k + 1)) + drafting

    @staticmethod
    def expected_tokens(k: int, rate: float) -> float:
        return sum(rate ** i for i in range(k + 1))


def _ms(times: dict[int, float], n: int) -> float:
    """Step time at n tokens: interpolated, and beyond the largest measured size grown in proportion (a pass
    that large is compute-bound)."""
    largest = max(times)
    return step(times, n) if n <= largest else times[largest] * n / largest
