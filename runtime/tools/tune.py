"""`specqd tune`: choose the chain and drafting settings that a cost model predicts fastest, and remember them.

Cost model (greedy): each level's step time t(n) over n tokens is measured, and so is, along the target's own
text, where each lower level's greedy token equals each upper level's and how sure the lower level was
(profile.traces). A drafting policy (up to k tokens per round, stopping after a token whose top probability
is below the confidence threshold) is then replayed round by round along that text: a round drafts d tokens,
keeps them up to the first mismatch and adds one, and costs d * c(lower) + t_upper(d + 1), where c is the
lower level's cost per token (its own step time, 0 for prompt lookup, or recursively its own rounds' cost per
token). A model level also pays for catching up: its last proposal of a round was never fed to it, so when the
upper level keeps the whole draft, the lower level's next round starts with a pass over that token, the
accepted guesses and the upper level's own token, which costs t_lower(n) rather than t_lower(1).
Replaying measured runs instead of assuming each token independent matters: agreement comes in streaks
(easy boilerplate, hard choices), which is what lets long, confidence-stopped drafts pay.
The level that drafts for the target may also append up to `extend` prompt-lookup guesses after its draft
(DraftControls.extend): they cost the target's wider pass only, and count while lookup's token matches the
target's along the text.
The chain's speed is new tokens / (every level's prompt read + new tokens * c(chain)). The model ranks
thousands of configurations but cannot separate chains within a few per cent (the 2026-12-05 split ran tune's
pick at 0.92x a chain it predicted 1 % slower), so the best configurations of the FINALISTS fastest chains are
then run on the sample prompts, taking turns prompt by prompt, and the fastest measured wins. The chosen
configuration is stored in the manifest so that `generate` and `bench` use it by default, and so are the best
settings of every other chain searched, so that any chain named runs with its own tuned settings.
"""

from __future__ import annotations

import collections
import itertools
import sys
from dataclasses import dataclass
from functools import cache

from . import profile
from ..cpu import computes_in_bf16
from ..pipeline import LOOKUP, ExportFolder
from ..speculative import DraftControls

K_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16, 24)
CONFIDENCE_CHOICES = (0.0, 0.3, 0.5, 0.7)  # 0: draft k tokens whatever the draft's confidence
EXTEND_CHOICES = (0, 4, 8, 16)  # lookup guesses after the target's drafter stops
MAX_DRAFT_LEVELS = 2  # model levels below the target; lookup may come after them
FINALISTS = 3  # chains run end to end before choosing
STEP_SIZES = sorted({1, 2, 3, 4, 6, 9, 13, max(K_CHOICES) + 1, 32, 64})  # 32, 64: the server's batched passes


@dataclass
class Plan:
    chain: list[str]
    controls: dict[str, tuple[int, float, int]]  # lower level -> (k, confidence, extend)
    tokens_per_second: float


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


@dataclass
class Rounds:
    """Totals of one drafting policy replayed along the sample texts."""
    drafted: int
    verify_ms: float
    tokens: int
    catch_up: collections.Counter  # tokens the lower level reads in its first pass of a round -> rounds


def replay(trace: profile.Trace, k: int, confidence: float, upper_times: dict[int, float],
           extend: int = 0, guesses: profile.Trace | None = None) -> Rounds:
    """`guesses`: prompt lookup's trace against the same upper level, for the `extend` guesses after a draft."""
    drafted_total, verify_ms, tokens, catch_up = 0, 0.0, 0, collections.Counter()
    for sample, (matches, sure) in enumerate(zip(trace.matches, trace.sure)):
        position = 0
        while position < len(matches):
            drafted = 0
            while drafted < min(k, len(matches) - position):
                drafted += 1
                if sure[position + drafted - 1] < confidence:  # proposed, and drafting stops after it
                    break
            guessed = min(extend, len(matches) - position - drafted)
            accepted = 0
            while accepted < drafted and matches[position + accepted]:
                accepted += 1
            while drafted <= accepted < drafted + guessed and guesses.matches[sample][position + accepted]:
                accepted += 1  # the guesses continue the draft, so they count only after all of it
            drafted_total += drafted
            verify_ms += step(upper_times, drafted + guessed + 1)
            tokens += accepted + 1
            position += accepted + 1
            # Whole draft kept: its last token, the kept guesses and the upper level's token are new to the lower
            # level; otherwise it rolls back to what was kept and reads the upper level's token only.
            catch_up[2 + accepted - drafted if accepted >= drafted else 1] += 1
    return Rounds(drafted_total, verify_ms, tokens, catch_up)


class CostModel:
    def __init__(self, times: dict[str, dict[int, float]], traces: dict[tuple[str, str], profile.Trace],
                 prefill: dict[str, float] | None = None, copies: frozenset[str] = frozenset()):
        self.times, self.prefill, self.copies = times, prefill or {}, copies
        self._replay = cache(lambda upper, lower, k, confidence, extend:
                             replay(traces[(upper, lower)], k, confidence, times[upper], extend,
                                    traces.get((upper, LOOKUP))))

    def cost_per_token(self, chain: list[str], controls: dict[str, tuple[int, float, int]]) -> float:
        """Milliseconds per token that chain[0] emits, drafting with the rest of the chain below it."""
        top = chain[0]
        if len(chain) == 1:
            return step(self.times[top], 1)
        lower = chain[1]
        rounds = self._replay(top, lower, *controls[lower])
        if lower == LOOKUP:
            return rounds.verify_ms / rounds.tokens
        lower_cost = self.cost_per_token(chain[1:], controls)
        catching_up = sum(count * (step(self.times[lower], n) - step(self.times[lower], 1))
                          for n, count in rounds.catch_up.items())
        return (rounds.drafted * lower_cost + catching_up + rounds.verify_ms) / rounds.tokens

    def tokens_per_second(self, chain: list[str], controls: dict[str, tuple[int, float, int]],
                          new_tokens: int = 128) -> float:
        """Expected speed, every level's prompt read included.

        Copies of the target take its prompt cache instead of reading the prompt; in exchange the target reads
        the prompt alone, which emits one token by a single-token step instead of by the chain.
        """
        readers = [name for name in chain if name not in self.copies]
        reads = sum(self.prefill.get(name, 0.0) for name in readers)
        per_token = self.cost_per_token(chain, controls)
        if len(readers) < len(chain):
            reads += step(self.times[chain[0]], 1) - per_token
        return new_tokens * 1000.0 / (reads + new_tokens * per_token)


def search(levels: list[str], model: CostModel, new_tokens: int) -> list[Plan]:
    """Every chain of up to MAX_DRAFT_LEVELS model levels (any order), with or without lookup, every setting."""
    plans = []
    drafts = [name for name in levels if name != "target"]
    for depth in range(0, MAX_DRAFT_LEVELS + 1):
        for middle in itertools.permutations(drafts, depth):
            for tail in ([], [LOOKUP]):
                chain = ["target", *middle, *tail]
                if len(chain) == 1:
                    continue
                choices = [list(itertools.product(K_CHOICES, (0.0,) if name == LOOKUP else CONFIDENCE_CHOICES,
                                                  EXTEND_CHOICES if depth and name == chain[1] else (0,)))
                           for name in chain[1:]]
                for settings in itertools.product(*choices):
                    controls = dict(zip(chain[1:], settings))
                    plans.append(Plan(chain, controls, model.tokens_per_second(chain, controls, new_tokens)))
    return sorted(plans, key=lambda plan: -plan.tokens_per_second)


def tune(folder: ExportFolder, texts: list[str], new_tokens: int = 64) -> dict:
    """Measure, search, check the winner against the target alone, and store it in the manifest."""
    levels = [level.name for level in folder.manifest.levels]
    say(f"generating the target's greedy text on {len(texts)} prompts")
    samples = [profile.greedy_continuation(folder, text, new_tokens) for text in texts]
    prompt = samples[0][0]
    folder.set_draft_precisions({})  # every level in the folder's precision first, whatever an earlier tune chose
    times = {name: step_times(folder, name, prompt) for name in levels}
    precisions = choose_precisions(folder, times, prompt)
    prefill = {}
    for name in levels:
        prefill[name] = profile.prefill_ms(folder, name, prompt)
        say(f"{name} runs in {folder.precision_of(name)}; prompt read {prefill[name]:.0f} ms")
    traces = profile.traces(folder, levels, samples)
    copies = frozenset(name for name in levels if folder.is_copy_of_target(name))
    model = CostModel(times, traces, prefill, copies)
    plans = search(levels, model, new_tokens)
    best_per_chain: dict[str, Plan] = {}
    for plan in plans:  # sorted fastest first
        best_per_chain.setdefault(",".join(plan.chain), plan)
    finalists = list(best_per_chain.values())[:FINALISTS]
    say("best predicted: " + "; ".join(f"{','.join(p.chain)} {_describe(p.controls)} {p.tokens_per_second:.1f} tok/s"
                                       for p in finalists))
    measured = measure(folder, [Plan(["target"], {}, 0.0), *finalists], texts, new_tokens)
    best = max(finalists, key=lambda plan: measured[",".join(plan.chain)])
    baseline, chosen = measured["target"], measured[",".join(best.chain)]
    say(f"measured: target {baseline:.1f} tok/s; "
        + "; ".join(f"{','.join(p.chain)} {measured[','.join(p.chain)]:.1f}" for p in finalists))
    choice = {
        "chain": best.chain,
        "k": {name: k for name, (k, _, _) in best.controls.items()},
        "confidence": {name: confidence for name, (_, confidence, _) in best.controls.items()},
        "extend": {name: extend for name, (_, _, extend) in best.controls.items()},
        "k_by_chain": {chain: {name: k for name, (k, _, _) in p.controls.items()}
                       for chain, p in best_per_chain.items()},
        "confidence_by_chain": {chain: {name: confidence for name, (_, confidence, _) in p.controls.items()}
                                for chain, p in best_per_chain.items()},
        "extend_by_chain": {chain: {name: extend for name, (_, _, extend) in p.controls.items()}
                            for chain, p in best_per_chain.items()},
        "predicted_tokens_per_second": round(best.tokens_per_second, 2),
        "predicted_speedup": round(best.tokens_per_second / model.tokens_per_second(["target"], {}, new_tokens), 2),
        "measured_tokens_per_second": round(chosen, 2),
        "measured_speedup": round(chosen / baseline, 2),
        "finalists": {",".join(p.chain): {"predicted_tokens_per_second": round(p.tokens_per_second, 2),
                                          "measured_tokens_per_second": round(measured[",".join(p.chain)], 2)}
                      for p in finalists},
        "precision": precisions,
        "step_ms": {name: {str(n): round(ms, 1) for n, ms in t.items()} for name, t in times.items()},
        "prompt_read_ms": {name: round(ms, 1) for name, ms in prefill.items()},
        "agreement": {f"{upper}>{lower}": round(trace.agreement, 3) for (upper, lower), trace in traces.items()},
    }
    folder.manifest.tuned = choice
    folder.manifest.write(folder.path)
    return choice


def step_times(folder: ExportFolder, name: str, prompt: list[int]) -> dict[int, float]:
    times = profile.step_times(folder, name, prompt, STEP_SIZES)
    say(f"step ms of {name} in {folder.precision_of(name)}: " + ", ".join(f"n={n} {ms:.0f}" for n, ms in times.items()))
    return times


def choose_precisions(folder: ExportFolder, times: dict[str, dict[int, float]], prompt: list[int]) -> dict[str, str]:
    """Run in f32 each draft level whose steps of one stream (up to 13 tokens) take less time in f32 than in the
    folder's bf16, and update `times` to match. On an AMX Xeon OpenVINO's INT4 levels were 10-40 % faster in f32.
    On a CPU that computes bf16 in f32 anyway the two differ by noise only, so there is nothing to choose."""
    drafts = [name for name in times if name != "target"]
    if folder.precision == "f32" or not drafts or not computes_in_bf16():
        return {}
    folder.set_draft_precisions(dict.fromkeys(drafts, "f32"))
    in_f32 = {name: step_times(folder, name, prompt) for name in drafts}
    single_stream = [n for n in STEP_SIZES if n <= 13]
    faster = {name: "f32" for name in drafts
              if sum(in_f32[name][n] for n in single_stream) < sum(times[name][n] for n in single_stream)}
    folder.set_draft_precisions(faster)
    times.update({name: in_f32[name] for name in faster})
    return faster


def measure(folder: ExportFolder, plans: list[Plan], texts: list[str], new_tokens: int) -> dict[str, float]:
    """Tokens per second of each plan's chain over the texts; the chains take turns on each text, so that a
    machine slowing down or speeding up weighs on all of them alike."""
    pipelines = {}
    for plan in plans:
        controls = {name: DraftControls(k=k, confidence=confidence, extend=extend)
                    for name, (k, confidence, extend) in plan.controls.items()}
        pipelines[",".join(plan.chain)] = pipeline = folder.pipeline(plan.chain, controls)
        pipeline.generate(texts[0], max_new_tokens=8)  # warm-up
    tokens, seconds = dict.fromkeys(pipelines, 0), dict.fromkeys(pipelines, 0.0)
    for text in texts:
        for chain, pipeline in pipelines.items():
            result = pipeline.generate(text, max_new_tokens=new_tokens)
            tokens[chain] += len(result.tokens)
            seconds[chain] += result.stats["seconds"]
    return {chain: tokens[chain] / seconds[chain] for chain in pipelines}


def _describe(controls: dict[str, tuple[int, float, int]]) -> str:
    return " ".join(f"{name}: k {k}" + (f" until p < {confidence}" if confidence else "")
                    + (f" then {extend} lookup guesses" if extend else "")
                    for name, (k, confidence, extend) in controls.items())


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
