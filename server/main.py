"""`specqd serve EXPORT_DIR`: load the export, start the engine, serve HTTP until interrupted.

The options are declared here without importing the HTTP libraries, so that `specqd --help` works in a
runtime-only install; `serve` imports them and says which extra to install when they are missing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..runtime.arguments import integer, real
from ..runtime.generation import GenerationError, check_chain
from ..runtime.kvmodel import BLOCK
from ..runtime.pipeline import ExportFolder, default_chain

log = logging.getLogger("specqd.server")


# Any of these serves through Ray Serve (ray_deploy.py); without them, one process and no Ray.
SCALE_OUT_OPTIONS = ("replicas", "threads_per_replica", "cpu_set", "min_replicas", "max_replicas",
                     "target_ongoing_requests", "ray_address")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chain", help="default chain, from the target down (default: what `specqd tune` chose, "
                                        "else target,target-mxfp4,draft); a request may name another")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=8000)
    parser.add_argument("--max-batch", type=integer(1), default=8, help="requests generated together (default 8)")
    parser.add_argument("--max-queue", type=integer(1), default=64,
                        help="requests waiting beyond the batch; more get 429 (default 64)")
    parser.add_argument("--kv-cache-tokens", type=integer(0), default=0,
                        help="KV cache size per level in tokens (default: max-batch x the model's context)")
    parser.add_argument("--prefill-chunk", type=integer(1), default=256,
                        help="prompt tokens read per engine turn, across all new requests, beside the running "
                             "ones; longer prompts are read a chunk per turn (default 256)")
    parser.add_argument("--draft-budget", choices=("measured", "off"), default="measured",
                        help="measured (default): lower each request's draft length as the batch fills, from step "
                             "times measured at start-up; off: every request drafts its full k")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on the API")
    parser.add_argument("--served-model-name", help="the model name clients send (default: the export's target)")
    parser.add_argument("--precision", choices=("bf16", "f32"), default="bf16",
                        help="inference precision: bf16 (fast) or f32 (token-exact)")
    parser.add_argument("--threads", type=integer(0), default=0, help="OpenVINO inference threads (default: all cores)")
    parser.add_argument("--engine", choices=("specqd", "genai"), default="specqd",
                        help="specqd's engine, or openvino-genai's ContinuousBatchingPipeline (OpenVINO Model "
                             "Server's) with the chain's lowest level as its one draft (needs the bench extra)")
    parser.add_argument("--per-request-metrics", action="store_true",
                        help="add vLLM's metrics.speculative_decoding and every level's stats to each response")
    scale = parser.add_argument_group("scale-out over Ray Serve (needs specqd[ray]; docs/deploy.md)")
    scale.add_argument("--replicas", type=integer(1), metavar="N",
                       help="serve with N replicas behind Ray Serve's HTTP proxy on --host/--port, each an engine "
                            "of its own pinned to its own cores (default: one process, no Ray)")
    scale.add_argument("--threads-per-replica", type=integer(1), metavar="T",
                       help="OpenVINO threads and cores of each replica (default: this machine's cores / replicas)")
    scale.add_argument("--cpu-set", action="append", type=cpu_list, metavar="CPUS",
                       help="the cores of a machine's n-th replica, e.g. 0-27 (one socket's physical cores, from "
                            "lscpu -e); repeat once per replica on a machine (default: consecutive blocks of "
                            "--threads-per-replica cores)")
    scale.add_argument("--min-replicas", type=integer(0), metavar="N",
                       help="autoscale: fewest replicas (with --max-replicas; default 0)")
    scale.add_argument("--max-replicas", type=integer(1), metavar="N",
                       help="autoscale: most replicas; turns autoscaling on")
    scale.add_argument("--target-ongoing-requests", type=real(lambda value: value > 0, "above 0"), metavar="R",
                       help="autoscale: requests per replica Ray Serve aims for (default: --max-batch)")
    scale.add_argument("--ray-address", metavar="ADDRESS",
                       help="join this Ray cluster, e.g. auto (default: start a local Ray instance)")


def port(text: str) -> int:
    value = integer(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} must be in 0..65535")
    return value


def cpu_list(text: str) -> list[int]:
    """Linux's cpulist format, as /sys and taskset print it: "0-3,8,10-11"."""
    cores = []
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cores.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a cpu list like 0-3,8,10-11") from None
    if not cores:
        raise argparse.ArgumentTypeError(f"{text!r} names no core")
    return cores


def serve(args: argparse.Namespace) -> int:
    """One process on this machine, or (--replicas) one process per core set behind Ray Serve."""
    logging.basicConfig(level=logging.INFO, format="specqd serve: %(message)s")
    if any(getattr(args, option) is not None for option in SCALE_OUT_OPTIONS):
        try:
            from .ray_deploy import serve_with_ray
        except ImportError as error:
            raise GenerationError(f"--replicas needs the ray extra ({error.name} is missing): "
                                  "pip install 'specqd[ray]'") from None
        return serve_with_ray(args)
    try:
        import uvicorn
    except ImportError as error:
        raise GenerationError(f"specqd serve needs the server extra ({error.name} is missing): "
                              "pip install 'specqd[server]'") from None
    engine, app = open_server(args)
    log.info("serving %s on http://%s:%d/v1", model_name(args), args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.stop()
    return 0


def open_server(args: argparse.Namespace, settings: dict | None = None):
    """Load the export, start its engine and build the HTTP app over it: what `serve` runs, and what every
    Ray Serve replica runs (`settings` adds the replica's own fields to `Settings`)."""
    try:
        from .app import Settings, create_app
        from .engine import Engine, EngineConfig
        from .metrics import Metrics
    except ImportError as error:
        raise GenerationError(f"specqd serve needs the server extra ({error.name} is missing): "
                              "pip install 'specqd[server]'") from None
    folder_type, engine_type = ExportFolder, Engine
    if args.engine == "genai":
        try:
            from .genai_engine import GenAIEngine as engine_type, GenAIFolder as folder_type
        except ImportError as error:
            raise GenerationError(f"--engine genai needs openvino-genai ({error.name} is missing): "
                                  "pip install 'specqd[bench]'") from None
    folder = folder_type(args.out_dir, precision=args.precision, threads=args.threads,
                         mxfp4_kernel=args.mxfp4_kernel == "specqd")
    kv_tokens = args.kv_cache_tokens or args.max_batch * folder.context
    folder.max_blocks = -(-kv_tokens // BLOCK)
    chain = args.chain.split(",") if args.chain else default_chain(folder.manifest)
    check_chain(folder.manifest, chain)
    name = model_name(args)
    metrics = Metrics(name)
    config = EngineConfig(chain, args.max_batch, args.max_queue, kv_tokens, args.prefill_chunk,
                          args.draft_budget == "measured")
    engine = engine_type(folder, config, metrics)
    log.info("loading %s (chain %s, %s, %s engine)", args.out_dir, ",".join(chain), args.precision, args.engine)
    engine.start()
    return engine, create_app(engine, Settings(name, args.api_key, args.per_request_metrics, **(settings or {})))


def model_name(args: argparse.Namespace) -> str:
    return args.served_model_name or Path(args.out_dir).resolve().name
