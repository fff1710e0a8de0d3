"""The server's draft budget: speculation is worth its cost alone, and is given up as a batch fills."""

from specqd.server.budget import PRIOR_RATE, Ask, DraftBudget, prior_rate

# Shaped like the real 1.5B BF16 target and 0.5B INT4 draft on this machine (ms by tokens per pass).
TARGET = {1: 160, 2: 155, 4: 132, 8: 180, 16: 260, 32: 480, 64: 900, 128: 1750}
DRAFT = {1: 26, 2: 28, 4: 32, 8: 47, 16: 80, 32: 150, 64: 290, 128: 560}


def k_for(budget: DraftBudget, requests: int, accepted: int, drafted: int, most: int = 8, **ask) -> int:
    """The draft length the budget gives each of `requests` alike requests."""
    caps = budget.caps([Ask(most, accepted, drafted, **ask) for _ in range(requests)])
    assert len(set(caps)) == 1
    return caps[0]


def test_a_lone_request_drafts_long_when_the_draft_agrees():
    assert k_for(DraftBudget(TARGET, DRAFT), 1, accepted=900, drafted=1000) >= 3


def test_the_draft_length_shrinks_as_the_batch_fills_and_reaches_zero():
    budget = DraftBudget(TARGET, DRAFT)
    ks = [k_for(budget, requests, accepted=800, drafted=1000) for requests in (1, 2, 4, 8, 16, 64)]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1] == 0


def test_a_draft_that_is_rarely_accepted_is_not_used():
    assert k_for(DraftBudget(TARGET, DRAFT), 1, accepted=0, drafted=10_000) == 0


def test_a_free_drafter_is_costed_by_the_target_pass_alone():
    assert DraftBudget(TARGET, None).round_ms(4, [3, 3, 3, 3]) == TARGET[16]


def test_drafting_passes_cover_only_the_requests_that_draft():
    budget = DraftBudget(TARGET, DRAFT)
    assert budget.round_ms(4, [2, 2]) == TARGET[8] + 2 * DRAFT[2]


def test_drafting_measured_cheaper_than_a_pass_per_token_buys_longer_drafts():
    """A drafter that speculates itself makes several tokens per pass of its own model."""
    budget = DraftBudget(TARGET, DRAFT)
    before = k_for(budget, 4, accepted=800, drafted=1000)
    for _ in range(20):
        budget.observe(4, drafting_ms=3 * DRAFT[4] / 4, positions=3)  # a quarter of a pass per token
    assert k_for(budget, 4, accepted=800, drafted=1000) > before


def test_one_costly_round_does_not_switch_drafting_off_for_good():
    """A draft cut short after one token in a slow moment makes drafting look dear; the rounds without drafting
    that follow pull the cost back until drafting is tried again."""
    budget = DraftBudget(TARGET, DRAFT)
    budget.observe(1, drafting_ms=20 * DRAFT[1], positions=1)
    assert k_for(budget, 1, accepted=900, drafted=1000) == 0
    for _ in range(100):
        budget.observe(0, drafting_ms=0.0, positions=0)
    assert k_for(budget, 1, accepted=900, drafted=1000) > 0


def test_a_short_answer_in_a_full_batch_never_pays_its_drafter_to_read_the_prompt():
    """Its share of what speculation saves the batch over 64 tokens is less than its drafter's prompt read."""
    budget = DraftBudget(TARGET, DRAFT)
    assert k_for(budget, 8, accepted=900, drafted=1000) > 0
    assert k_for(budget, 8, accepted=900, drafted=1000, remaining=64, lag=300) == 0


def test_a_lone_request_or_a_long_answer_repays_the_prompt_read():
    budget = DraftBudget(TARGET, DRAFT)
    assert k_for(budget, 1, accepted=900, drafted=1000, remaining=64, lag=300) > 0
    assert k_for(budget, 8, accepted=900, drafted=1000, remaining=4096, lag=300) > 0


def test_requests_whose_drafter_is_up_to_date_draft_beside_newcomers_that_do_not():
    budget = DraftBudget(TARGET, DRAFT)
    caps = budget.caps([Ask(8, 990, 1000)] * 2 + [Ask(8, 900, 1000, remaining=64, lag=300)] * 2)
    assert caps[0] == caps[1] > 0 and caps[2:] == [0, 0]


def test_a_few_drafting_requests_in_a_full_batch_draft_only_if_the_whole_batch_gains():
    """Two of eight drafting pay the drafter's passes and a bigger target pass for two requests' gain."""
    budget = DraftBudget(TARGET, DRAFT)
    newcomers = [Ask(8, 900, 1000, remaining=64, lag=300)] * 6
    assert budget.caps([Ask(8, 900, 1000)] * 2 + newcomers) == [0] * 8


def test_a_drafter_that_is_up_to_date_costs_no_catch_up():
    budget = DraftBudget(TARGET, DRAFT)
    assert budget.catch_up_ms(1) == 0
    assert budget.catch_up_ms(300) > budget.catch_up_ms(20) > 0
    assert DraftBudget(TARGET, None).catch_up_ms(300) == 0


def test_a_measured_catch_up_read_replaces_the_estimate():
    budget = DraftBudget(TARGET, DRAFT)
    budget.observe_catch_up(drafting=2, drafting_ms=2 * DRAFT[2] + 600, positions=2, lag=300)
    assert budget.catch_up_ms(300) == 600


def test_a_request_judges_its_catch_up_by_the_batch_it_will_run_in():
    """The first two of eight requests that arrive together would repay their prompt reads alone, but not
    in the batch of eight they are about to share."""
    budget = DraftBudget(TARGET, DRAFT)
    first = [Ask(8, 900, 1000, remaining=64, lag=300)] * 2
    assert budget.caps(first) != [0, 0]
    assert budget.caps(first, coming=6) == [0, 0]


def test_a_pair_tune_measured_to_agree_drafts_longer_before_any_acceptance_is_measured():
    """A timid start would rarely draft and so rarely learn that the draft agrees (engine.py's _prior_rate)."""
    budget = DraftBudget(TARGET, DRAFT)
    assert k_for(budget, 4, accepted=0, drafted=0, prior=0.9) > k_for(budget, 4, accepted=0, drafted=0)


def test_measured_acceptance_outweighs_the_prior():
    budget = DraftBudget(TARGET, DRAFT)
    assert k_for(budget, 4, accepted=0, drafted=1000, prior=0.9) == 0


def test_a_chain_starts_from_tunes_agreement_of_its_top_pair():
    tuned = {"agreement": {"target>draft": 0.885, "target>lookup": 0.155}}
    assert prior_rate(tuned, ("target", "draft", "lookup")) == 0.885
    assert prior_rate(tuned, ("target", "lookup")) == PRIOR_RATE      # positions without a proposal count there
    assert prior_rate(None, ("target", "draft")) == PRIOR_RATE        # not tuned
