"""`specqd tune`: choose the chain and draft lengths that a cost model predicts fastest, and remember them.

Cost model (greedy, each drafted token accepted independently with the measured agreement a):
- a verify round at level v with drafter d drafting k tokens commits E(k, a) = (1 - a^(k+1)) / (1 - a)
  tokens and costs k * c(d) + t_v(k + 1), with t_v(n) the measured step time over n tokens;
- c(d), the cost per token of a drafter, is t_d(1) for a bottom model level, 0 for prompt lookup, and for a
  level that drafts with its own drafter b: (k_b * c(b) + t_d(k_b + 1)) / E(k_b, a_db).
The chain's speed is new tokens / (every level's prompt read + new tokens * c(chain)). The chosen
configuration is stored in the manifest so that `generate` and `bench` use it by default, and so is the best
predicted k of every other chain searched, so that any chain named runs with its own tuned draft lengths.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

from . import profile
from .pipeline import LOOKUP, ExportFolder
from .speculative import DraftControls

K_CHOICES = (1, 2, 3, 4, 5, 6, 8, 10, 12)
MAX_DRAFT_LEVELS = 2  # model levels below the target; lookup may come after them


@dataclass
class Plan:
    chain: list[str]
    k: dict[str, int]
    tokens_per_second: float


def committed_per_round(k: int, agreement: float) -> float:
    if agreement >= 1:
        return k + 1.0
    return (1 - agreement ** (k + 1)) / (1 - agreement)


def step(times: dict[int, float], n: int) -> float:
    """Step time over n tokens, interpolated linearly between measured sizes."""
    sizes = sorted(times)
    if n in times:
        return times[n]
    below = max((s for s in sizes if s < n), default=sizes[0])
    above = min((s for s in sizes if s > n), default=sizes[-1])
    if below == above:
        return times[below]
    return times[below] + (times[above] - times[below]) * (n - below) / (above - below)


def cost_per_token(chain: list[str], k: dict[str, int], times: dict[str, dict[int, float]],
                   agreement: dict[tuple[str, str], float]) -> float:
    """Milliseconds per token that chain[0] emits, drafting with the rest of the chain below it."""
    top = chain[0]
    if len(chain) == 1:
        return step(times[top], 1)
    lower, n = chain[1], k[chain[1]]
    lower_cost = 0.0 if lower == LOOKUP else cost_per_token(chain[1:], k, times, agreement)
    return (n * lower_cost + step(times[top], n + 1)) / committed_per_round(n, agreement[(top, lower)])


def predict(chain: list[str], k: dict[str, int], times: dict[str, dict[int, float]],
            agreement: dict[tuple[str, str], float], prefill: dict[str, float] | None = None,
            new_tokens: int = 128, copies: frozenset[str] = frozenset()) -> float:
    """Expected tokens per second of the chain under the cost model, every level's prompt read included.

    Copies of the target take its prompt cache instead of reading the prompt; in exchange the target reads
    the prompt alone, which emits one token by a single-token step instead of by the chain.
    """
    readers = [name for name in chain if name not in copies]
    reads = sum((prefill or {}).get(name, 0.0) for name in readers)
    per_token = cost_per_token(chain, k, times, agreement)
    if len(readers) < len(chain):
        reads += step(times[chain[0]], 1) - per_token
    return new_tokens * 1000.0 / (reads + new_tokens * per_token)


def search(levels: list[str], times: dict, agreement: dict, prefill: dict, new_tokens: int,
           copies: frozenset[str] = frozenset()) -> list[Plan]:
    """Every chain of up to MAX_DRAFT_LEVELS model levels (any order), with or without lookup, every k."""
    plans = []
    drafts = [name for name in levels if name != "target"]
    for depth in range(0, MAX_DRAFT_LEVELS + 1):
        for middle in itertools.permutations(drafts, depth):
            for tail in ([], [LOOKUP]):
                chain = ["target", *middle, *tail]
                if len(chain) == 1:
                    continue
                for ks in itertools.product(K_CHOICES, repeat=len(chain) - 1):
                    k = dict(zip(chain[1:], ks))
                    plans.append(Plan(chain, k, predict(chain, k, times, agreement, prefill, new_tokens, copies)))
    return sorted(plans, key=lambda plan: -plan.tokens_per_second)


def tune(folder: ExportFolder, texts: list[str], new_tokens: int = 64) -> dict:
    """Measure, search, check the winner against the target alone, and store it in the manifest."""
    levels = [level.name for level in folder.manifest.levels]
    say(f"generating the target's greedy text on {len(texts)} prompts")
    samples = [profile.greedy_continuation(folder, text, new_tokens) for text in texts]
    sizes = sorted({1, 2, 3, 4, 6, 9, max(K_CHOICES) + 1})
    times, prefill = {}, {}
    for name in levels:
        times[name] = profile.step_times(folder, name, samples[0][0], sizes)
        prefill[name] = profile.prefill_ms(folder, name, samples[0][0])
        say(f"step ms of {name}: " + ", ".join(f"n={n} {ms:.0f}" for n, ms in times[name].items())
            + f"; prompt read {prefill[name]:.0f}")
    agreement = profile.agreements(folder, levels, samples)
    copies = frozenset(name for name in levels if folder.is_copy_of_target(name))
    plans = search(levels, times, agreement, prefill, new_tokens, copies)
    best = plans[0]
    say("best predicted: " + "; ".join(f"{','.join(p.chain)} k={p.k} {p.tokens_per_second:.1f} tok/s"
                                       for p in plans[:5]))

    controls = {name: DraftControls(k=k) for name, k in best.k.items()}
    measured = {}
    for chain, chain_controls in ((["target"], {}), (best.chain, controls)):
        pipeline = folder.pipeline(chain, chain_controls)
        pipeline.generate(texts[0], max_new_tokens=8)  # warm-up
        results = [pipeline.generate(text, max_new_tokens=new_tokens) for text in texts]
        measured[",".join(chain)] = sum(len(r.tokens) for r in results) / sum(r.stats["seconds"] for r in results)
    baseline, chosen = measured["target"], measured[",".join(best.chain)]
    best_per_chain = {}
    for plan in plans:  # sorted fastest first
        best_per_chain.setdefault(",".join(plan.chain), plan.k)
    choice = {
        "chain": best.chain,
        "k": best.k,
        "k_by_chain": best_per_chain,
        "predicted_tokens_per_second": round(best.tokens_per_second, 2),
        "predicted_speedup": round(best.tokens_per_second /
                                   predict(["target"], {}, times, agreement, prefill, new_tokens), 2),
        "measured_tokens_per_second": round(chosen, 2),
        "measured_speedup": round(chosen / baseline, 2),
        "step_ms": {name: {str(n): round(ms, 1) for n, ms in t.items()} for name, t in times.items()},
        "prompt_read_ms": {name: round(ms, 1) for name, ms in prefill.items()},
        "agreement": {f"{upper}>{lower}": round(value, 3) for (upper, lower), value in agreement.items()},
    }
    folder.manifest.tuned = choice
    folder.manifest.write(folder.path)
    return choice


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
