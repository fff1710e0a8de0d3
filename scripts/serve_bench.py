"""Load benchmark of `specqd serve`: a closed loop of streamed requests at concurrency 1, 2, 4, 8 against each
server configuration, on HumanEval prompts, greedy, 64 new tokens; output tok/s, TTFT and ITL. Then, for each
specqd configuration, the same prompts one at a time through the server and through the runtime in this
process (what `specqd generate` runs), alternating prompt by prompt: the server's cost at concurrency 1.
Writes OUT.json, OUT.md (tables) and OUT.png (tok/s and inter-token latency against concurrency).

    .venv/bin/python scripts/serve_bench.py ~/.cache/specqd/exports/qwen2.5-coder-1.5b --out docs/serve-bench

The load comes from the official openai client in threads of this process (`--load client`, the default), or
from aiperf (`--load aiperf`, a well-kept load generator, installed once into its own venv under the specqd
cache, 1.2 GB, no torch). On a machine of 2 cores aiperf distorts what it measures: its processes parse and
tokenize every streamed chunk beside a server that uses both cores (at concurrency 4, 16 requests: specqd's
target 18.2 tok/s under aiperf against 23.3 under the client, the tuned chain 17.6 against 29.9;
docs/serving.md). With cores to spare, aiperf is the better tool. Every configuration's
server is started at once (on 127.0.0.1, free ports), each idle while another is measured, and the configurations
take turns at each concurrency, so that a change in the machine's load falls on all of them alike. The
servers are stopped by their PIDs at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from specqd.models.cache import cache_root
from specqd.runtime.tools import prompts
from specqd.runtime.pipeline import Pipeline
from specqd.server.process import Server, running_server

AIPERF = "aiperf==0.13.0"


def aiperf() -> Path:
    venv = cache_root() / "venvs" / "aiperf-0.13.0"
    if not (venv / "bin" / "aiperf").exists():
        print(f"installing {AIPERF} into {venv} (about a minute)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "--quiet", AIPERF], check=True)
    return venv / "bin" / "aiperf"


def run_load(tool: Path, url: str, model: str, tokenizer: Path, dataset: Path, concurrency: int,
             new_tokens: int, requests: int, artifacts: Path) -> dict:
    command = [tool, "profile", "--model", model, "--url", f"{url}/v1", "--endpoint-type", "completions",
               "--streaming", "--tokenizer", tokenizer, "--input-file", dataset, "--custom-dataset-type",
               "single_turn", "--extra-inputs", f"max_tokens:{new_tokens}", "--extra-inputs", "temperature:0",
               "--concurrency", str(concurrency), "--request-count", str(requests),
               "--warmup-request-count", "1", "--random-seed", "0", "--workers-max", "1", "--ui", "none",
               "--no-gpu-telemetry", "--no-server-metrics", "--artifact-dir", artifacts]
    environment = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": "http://127.0.0.1:9", "HOME": str(Path.home())}
    # aiperf's timing manager spins: measured at 50-93 % of one of this machine's two cores. At the lowest
    # priority it takes only what the server leaves idle instead of half the cores the server is measured on.
    subprocess.run([str(part) for part in command], check=True, env=environment, stdout=subprocess.DEVNULL,
                   preexec_fn=lambda: os.nice(19))
    summary = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    return {"output_tokens_per_second": summary["output_token_throughput"]["avg"],
            "ttft_ms_p50": summary["time_to_first_token"]["p50"], "ttft_ms_p99": summary["time_to_first_token"]["p99"],
            "itl_ms_p50": summary["inter_token_latency"]["p50"], "itl_ms_p99": summary["inter_token_latency"]["p99"],
            "requests": summary["request_count"]["avg"]}


def run_client_load(url: str, model: str, texts: list[str], concurrency: int, new_tokens: int,
                    requests: int) -> dict:
    """aiperf's figures from a closed loop of `concurrency` threads of the openai client: output tok/s over the
    wall time, and per-request TTFT and inter-token latency ((end - first token) / (tokens - 1)), as aiperf
    defines them."""
    client = Server(url, 0).client()
    client.completions.create(model=model, prompt=texts[-1], max_tokens=4, temperature=0)  # warm-up request
    lock = threading.Lock()
    issued, records = [0], []

    def one_stream() -> None:
        while True:
            with lock:
                if issued[0] >= requests:
                    return
                index, issued[0] = issued[0], issued[0] + 1
            started, first, tokens = time.perf_counter(), None, 0
            for chunk in client.completions.create(model=model, prompt=texts[index % len(texts)], temperature=0,
                                                   max_tokens=new_tokens, stream=True,
                                                   stream_options={"include_usage": True}):
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter()
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            ended = time.perf_counter()
            first = first or ended  # an answer of no text (EOS first)
            with lock:
                records.append((first - started, ended - first, tokens))

    started = time.perf_counter()
    threads = [threading.Thread(target=one_stream) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ttft = [1000 * first for first, _, _ in records]
    itl = [1000 * rest / (tokens - 1) for _, rest, tokens in records if tokens > 1]
    return {"output_tokens_per_second": sum(tokens for _, _, tokens in records) / seconds,
            "ttft_ms_p50": float(np.percentile(ttft, 50)), "ttft_ms_p99": float(np.percentile(ttft, 99)),
            "itl_ms_p50": float(np.percentile(itl, 50)), "itl_ms_p99": float(np.percentile(itl, 99)),
            "requests": len(records)}


def compare_solo(server: Server, export: Path, chain: str, texts: list[str], new_tokens: int) -> dict:
    """Tokens per second, prompt read included, of the same greedy requests one at a time: streamed from the
    server, and generated by the runtime in this process, alternating prompt by prompt."""
    pipeline = Pipeline.load(export, chain=None if chain == "tuned" else chain)  # None: the tuned chain
    pipeline.generate(texts[0], max_new_tokens=4)  # compile before timing, as the server did at its start
    client = server.client()
    tokens = {"server": 0, "runtime": 0}
    seconds = {"server": 0.0, "runtime": 0.0}
    for text in texts:
        started = time.perf_counter()
        stream = client.completions.create(model=export.resolve().name, prompt=text, max_tokens=new_tokens,
                                           temperature=0, stream=True, stream_options={"include_usage": True})
        tokens["server"] += [chunk.usage for chunk in stream if chunk.usage][0].completion_tokens
        seconds["server"] += time.perf_counter() - started
        started = time.perf_counter()
        tokens["runtime"] += len(pipeline.generate(text, max_new_tokens=new_tokens).tokens)
        seconds["runtime"] += time.perf_counter() - started
    rates = {side: tokens[side] / seconds[side] for side in tokens}
    return {"server_tokens_per_second": rates["server"], "runtime_tokens_per_second": rates["runtime"],
            "ratio": rates["server"] / rates["runtime"], "prompts": len(texts)}


def slug(config: str) -> str:
    """A configuration as a file name: 'specqd:tuned --replicas 2' -> 'specqd-tuned--replicas-2'."""
    return re.sub(r"[^A-Za-z0-9_.,-]+", "-", config)


def write_outputs(result: dict, out: Path) -> None:
    """OUT.json (every figure), OUT.md (the tables) and OUT.png (tok/s and ITL against concurrency)."""
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = ["| config | concurrency | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['concurrency']} | {r['output_tokens_per_second']:.1f} | {r['ttft_ms_p50']:.0f} | "
              f"{r['ttft_ms_p99']:.0f} | {r['itl_ms_p50']:.0f} | {r['itl_ms_p99']:.0f} |" for r in result["load"]]
    if result["solo"]:
        lines += ["", "| config | one at a time: server tok/s | runtime tok/s | server / runtime |", "|---|---|---|---|"]
        lines += [f"| {r['config']} | {r['server_tokens_per_second']:.2f} | {r['runtime_tokens_per_second']:.2f} | "
                  f"{r['ratio']:.3f} |" for r in result["solo"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(result["load"], out.with_suffix(".png"))


def plot(load: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for config in dict.fromkeys(row["config"] for row in load):
        rows = [row for row in load if row["config"] == config]
        concurrency = [row["concurrency"] for row in rows]
        throughput.plot(concurrency, [row["output_tokens_per_second"] for row in rows], marker="o", label=config)
        latency.plot(concurrency, [row["itl_ms_p50"] for row in rows], marker="o", label=config)
    for axis, label in ((throughput, "output tok/s"), (latency, "inter-token latency p50, ms")):
        axis.set_xscale("log", base=2)
        ticks = sorted({row["concurrency"] for row in load})
        axis.set_xticks(ticks, [str(tick) for tick in ticks])
        axis.minorticks_off()
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    throughput.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--configs", default="specqd:target;specqd:tuned;genai:target,draft",
                        help="';'-separated ENGINE:CHAIN ('tuned': the chain `specqd tune` stored), each optionally "
                             "followed by more `specqd serve` options, e.g. 'specqd:tuned --replicas 2'")
    parser.add_argument("--prompts", default="humaneval:82-163", help="held out from tune's and bench's prompts")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated concurrency levels")
    parser.add_argument("--requests-per-stream", type=int, default=2,
                        help="requests per point: this many per concurrent stream (at least 4); more makes the "
                             "batch's start and end, when it is not full, a smaller part of the point")
    parser.add_argument("--solo-prompts", type=int, default=8,
                        help="prompts run one at a time, server vs runtime (0: skip that comparison)")
    parser.add_argument("--load", choices=("client", "aiperf"), default="client",
                        help="the load generator: the openai client in threads (light enough for 2 cores) or aiperf")
    parser.add_argument("--out", type=Path, default=Path("docs/serve-bench"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the servers are stopped by their PIDs
    tool = aiperf() if args.load == "aiperf" else None
    work = cache_root() / "serve-bench" / args.out.name  # prompts, server logs and aiperf's artifacts
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "prompts.jsonl"
    texts = prompts.load(args.prompts)
    dataset.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    configs = args.configs.split(";")
    results, solo = [], []
    servers, stops = {}, {}
    try:
        for config in configs:
            name, *options = config.split()
            engine, chain = name.split(":", 1)
            print(f"starting {config}", flush=True)
            stops[config] = ExitStack()
            servers[config] = stops[config].enter_context(running_server(
                args.export, "--engine", engine, *(["--chain", chain] if chain != "tuned" else []), *options,
                log=work / f"{slug(config)}.log"))
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for config, server in servers.items():
                print(f"{config} at concurrency {concurrency}", flush=True)
                requests = max(4, args.requests_per_stream * concurrency)
                if tool is None:
                    row = run_client_load(server.url, args.export.resolve().name, texts,
                                          concurrency, args.new_tokens, requests)
                else:
                    row = run_load(tool, server.url, args.export.resolve().name, args.export / "target", dataset,
                                   concurrency, args.new_tokens, requests, work / f"{slug(config)}-c{concurrency}")
                results.append({"config": config, "concurrency": concurrency} | row)
                print(json.dumps(results[-1]), flush=True)
        solo_texts = texts[:args.solo_prompts]
        for config in sorted(servers, key=lambda config: config.startswith("specqd:")):
            if config.startswith("specqd:") and solo_texts:
                chain = config.split()[0].removeprefix("specqd:")
                solo.append({"config": config} | compare_solo(servers[config], args.export, chain, solo_texts,
                                                              args.new_tokens))
                print(json.dumps(solo[-1]), flush=True)
            stops[config].close()  # done with it: its memory goes to the runtime's copy of the next chain
    finally:
        for stop in stops.values():
            stop.close()
    write_outputs({"load": results, "solo": solo}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
