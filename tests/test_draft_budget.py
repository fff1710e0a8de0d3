"""The server's draft budget: speculation is worth its cost alone, and is given up as a batch fills."""

from specqd.server.budget import DraftBudget

# Shaped like the real 1.5B BF16 target and 0.5B INT4 draft on this machine (ms by tokens per pass).
TARGET = {1: 160, 2: 155, 4: 132, 8: 180, 16: 260, 32: 480, 64: 900, 128: 1750}
DRAFT = {1: 26, 2: 28, 4: 32, 8: 47, 16: 80, 32: 150, 64: 290, 128: 560}


def test_a_lone_request_drafts_long_when_the_draft_agrees():
    assert DraftBudget(TARGET, DRAFT).best_k(1, 8, accepted=900, drafted=1000) >= 3


def test_the_draft_length_shrinks_as_the_batch_fills_and_reaches_zero():
    budget = DraftBudget(TARGET, DRAFT)
    ks = [budget.best_k(requests, 8, accepted=800, drafted=1000) for requests in (1, 2, 4, 8, 16, 64)]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1] == 0


def test_a_draft_that_is_rarely_accepted_is_not_used():
    assert DraftBudget(TARGET, DRAFT).best_k(1, 8, accepted=0, drafted=10_000) == 0


def test_a_free_drafter_is_costed_by_the_target_pass_alone():
    assert DraftBudget(TARGET, None).round_ms(4, 3) == TARGET[16]


def test_drafting_measured_cheaper_than_a_pass_per_token_buys_longer_drafts():
    """A drafter that speculates itself makes several tokens per pass of its own model."""
    budget = DraftBudget(TARGET, DRAFT)
    before = budget.best_k(4, 8, accepted=800, drafted=1000)
    for _ in range(20):
        budget.observe(4, drafting_ms=3 * DRAFT[4] / 4, positions=3)  # a quarter of a pass per token
    assert budget.best_k(4, 8, accepted=800, drafted=1000) > before


def test_one_costly_round_does_not_switch_drafting_off_for_good():
    """A draft cut short after one token in a slow moment makes drafting look dear; the rounds without drafting
    that follow pull the cost back until drafting is tried again."""
    budget = DraftBudget(TARGET, DRAFT)
    budget.observe(1, drafting_ms=20 * DRAFT[1], positions=1)
    assert budget.best_k(1, 8, accepted=900, drafted=1000) == 0
    for _ in range(100):
        budget.observe(1, drafting_ms=0.0, positions=0)
    assert budget.best_k(1, 8, accepted=900, drafted=1000) > 0
