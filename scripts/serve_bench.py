"""Load benchmark of `specqd serve`: aiperf (a well-kept load generator) at concurrency 1, 2, 4, 8 against each
server configuration in turn, on HumanEval prompts, greedy, 64 new tokens; output tok/s, TTFT and ITL.

    .venv/bin/python scripts/serve_bench.py ~/.cache/specqd/exports/qwen2.5-coder-1.5b --out docs/serve-bench

aiperf is installed once into its own venv under the specqd cache (1.2 GB, no torch). Each configuration's
server is started on 127.0.0.1 and a free port, and stopped by its PID before the next one starts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from specqd.models.cache import cache_root
from specqd.runtime import prompts
from specqd.server.process import running_server

AIPERF = "aiperf==0.13.0"


def aiperf() -> Path:
    venv = cache_root() / "venvs" / "aiperf-0.13.0"
    if not (venv / "bin" / "aiperf").exists():
        print(f"installing {AIPERF} into {venv} (about a minute)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "--quiet", AIPERF], check=True)
    return venv / "bin" / "aiperf"


def run_load(tool: Path, url: str, model: str, tokenizer: Path, dataset: Path, concurrency: int,
             new_tokens: int, artifacts: Path) -> dict:
    command = [tool, "profile", "--model", model, "--url", f"{url}/v1", "--endpoint-type", "completions",
               "--streaming", "--tokenizer", tokenizer, "--input-file", dataset, "--custom-dataset-type",
               "single_turn", "--extra-inputs", f"max_tokens:{new_tokens}", "--extra-inputs", "temperature:0",
               "--concurrency", str(concurrency), "--request-count", str(max(4, 2 * concurrency)),
               "--warmup-request-count", "1", "--random-seed", "0", "--workers-max", "1", "--ui", "none",
               "--no-gpu-telemetry", "--no-server-metrics", "--artifact-dir", artifacts]
    environment = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": "http://127.0.0.1:9", "HOME": str(Path.home())}
    subprocess.run([str(part) for part in command], check=True, env=environment, stdout=subprocess.DEVNULL)
    summary = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    return {"output_tokens_per_second": summary["output_token_throughput"]["avg"],
            "ttft_ms_p50": summary["time_to_first_token"]["p50"], "ttft_ms_p99": summary["time_to_first_token"]["p99"],
            "itl_ms_p50": summary["inter_token_latency"]["p50"], "itl_ms_p99": summary["inter_token_latency"]["p99"],
            "requests": summary["request_count"]["avg"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--configs", default="specqd:target;specqd:tuned;genai:target,draft",
                        help="';'-separated ENGINE:CHAIN ('tuned': the chain `specqd tune` stored)")
    parser.add_argument("--prompts", default="humaneval:82-163", help="held out from tune's and bench's prompts")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated concurrency levels")
    parser.add_argument("--out", type=Path, default=Path("docs/serve-bench"))
    args = parser.parse_args()
    tool = aiperf()
    work = cache_root() / "serve-bench" / args.out.name  # prompts, server logs and aiperf's artifacts
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"text": text}) + "\n" for text in prompts.load(args.prompts)))
    results = []
    for config in args.configs.split(";"):
        engine, chain = config.split(":", 1)
        with running_server(args.export, "--engine", engine, *(["--chain", chain] if chain != "tuned" else []),
                            log=work / f"{engine}-{chain}.log") as server:
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                print(f"{config} at concurrency {concurrency}", flush=True)
                row = run_load(tool, server.url, args.export.resolve().name, args.export / "target", dataset,
                               concurrency, args.new_tokens, work / f"{engine}-{chain}-c{concurrency}")
                results.append({"config": config, "concurrency": concurrency} | row)
                print(json.dumps(results[-1]), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = ["| config | concurrency | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['concurrency']} | {r['output_tokens_per_second']:.1f} | {r['ttft_ms_p50']:.0f} | "
              f"{r['ttft_ms_p99']:.0f} | {r['itl_ms_p50']:.0f} | {r['itl_ms_p99']:.0f} |" for r in results]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
