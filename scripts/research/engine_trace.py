"""The server's engine without HTTP, round by round: where a closed loop of requests spends its time.

    .venv/bin/python scripts/research/engine_trace.py EXPORT_DIR --chain target,draft-int4_sym,lookup \\
        [--concurrency 8] [--requests 16] [--max-tokens 64] [--extend N] [--prior P] [--bf16-drafts] [--out F]

Keeps `--concurrency` requests of HumanEval/82-163 running (greedy) until `--requests` have finished, and logs
every round: requests in it, each one's draft cap, prompt tokens the target still had to read, tokens gained,
the target pass's ms and the round's ms. Prints output tok/s and how the time splits between rounds that read
prompts and rounds that only decode (docs/serving.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
from pathlib import Path

from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.sampling import Sampling
from specqd.runtime.tools import prompts
from specqd.server.engine import Engine, EngineConfig, Work
from specqd.server.metrics import Metrics


def traced(engine: Engine, rounds: list[dict]) -> None:
    """Replace the engine's step with the same step that also logs each round."""
    def logged_step() -> None:
        ready = engine._stepping()
        started = time.perf_counter()
        for names in {work.chain for work in ready}:
            batch = [work for work in ready if work.chain == names]
            chain = engine._chains[names]
            had = [len(work.generation.generated) for work in batch]
            unread = sum(max(chain.unread_prompt(work.generation), 0) for work in batch)
            caps = engine._caps(names, batch)
            target_seconds = batch[0].generation.job.stats[names[0]].seconds
            with engine._timing_drafts(names, batch, caps):
                chain.step([work.generation for work in batch], caps)
            target_ms = 1000 * (batch[0].generation.job.stats[names[0]].seconds - target_seconds)
            for work, count in zip(batch, had):
                engine._deliver(work, len(work.generation.generated) - count)
            rounds.append({"requests": len(batch), "caps": caps, "unread": unread, "target_ms": round(target_ms),
                           "gained": sum(len(w.generation.generated) - n for w, n in zip(batch, had)),
                           "ms": round(1000 * (time.perf_counter() - started))})
    engine._step = logged_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--chain", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--extend", type=int, help="the first draft level's lookup guesses (default: tuned)")
    parser.add_argument("--prior", type=float,
                        help="the draft budget's starting acceptance (default: tune's agreement, budget.prior_rate)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--bf16-drafts", action="store_true", help="every draft in bf16, not tune's precisions")
    args = parser.parse_args()
    chain = args.chain.split(",")
    folder = ExportFolder(args.export_dir)
    if args.bf16_drafts:
        folder.set_draft_precisions({})
    controls = folder.default_controls(chain)
    if args.extend is not None:
        controls[chain[1]] = dataclasses.replace(controls[chain[1]], extend=args.extend)
    engine = Engine(folder, EngineConfig(chain=chain, max_batch=max(8, args.concurrency)), Metrics("trace"))
    rounds: list[dict] = []
    traced(engine, rounds)
    engine.start()
    if args.prior is not None:
        engine._priors[tuple(chain)] = args.prior
    texts = prompts.load("humaneval:82-163")
    lock, done = threading.Lock(), threading.Semaphore(0)
    issued, tokens = [0], [0]

    def submit() -> None:
        with lock:
            if issued[0] >= args.requests:
                return
            index = issued[0]
            issued[0] += 1
        work = Work(folder.encode(texts[index % len(texts)]), args.max_tokens, Sampling(), (), tuple(chain),
                    controls, lambda event: finished(work, event))
        engine.submit(work)

    def finished(work: Work, event) -> None:
        if event.finished:
            with lock:
                tokens[0] += len(work.generation.generated) if work.generation else 0
            done.release()
            submit()

    started = time.perf_counter()
    for _ in range(args.concurrency):
        submit()
    for _ in range(args.requests):
        done.acquire()
    seconds = time.perf_counter() - started
    engine.stop()
    reading = [r for r in rounds if r["unread"]]
    print(f"{args.chain} at concurrency {args.concurrency}: {tokens[0] / seconds:.2f} tok/s over {seconds:.1f} s; "
          f"rounds reading prompts {sum(r['ms'] for r in reading) / 1000:.1f} s, decoding only "
          f"{sum(r['ms'] for r in rounds if not r['unread']) / 1000:.1f} s")
    if args.out:
        args.out.write_text(json.dumps(rounds))


if __name__ == "__main__":
    main()
