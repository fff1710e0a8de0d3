"""`specqd serve EXPORT_DIR`: load the export, start the engine, serve HTTP until interrupted.

The options are declared here without importing the HTTP libraries, so that `specqd --help` works in a
runtime-only install; `serve` imports them and says which extra to install when they are missing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..runtime.arguments import integer
from ..runtime.generation import GenerationError, check_chain
from ..runtime.kvmodel import BLOCK
from ..runtime.pipeline import ExportFolder, default_chain


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


def port(text: str) -> int:
    value = integer(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} must be in 0..65535")
    return value


def serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

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
    logging.basicConfig(level=logging.INFO, format="specqd serve: %(message)s")
    log = logging.getLogger("specqd.server")
    folder = folder_type(args.out_dir, precision=args.precision, threads=args.threads,
                         mxfp4_kernel=args.mxfp4_kernel == "specqd")
    kv_tokens = args.kv_cache_tokens or args.max_batch * folder.context
    folder.max_blocks = -(-kv_tokens // BLOCK)
    chain = args.chain.split(",") if args.chain else default_chain(folder.manifest)
    check_chain(folder.manifest, chain)
    name = args.served_model_name or Path(args.out_dir).resolve().name
    metrics = Metrics(name)
    config = EngineConfig(chain, args.max_batch, args.max_queue, kv_tokens, args.prefill_chunk,
                          args.draft_budget == "measured")
    engine = engine_type(folder, config, metrics)
    log.info("loading %s (chain %s, %s, %s engine)", args.out_dir, ",".join(chain), args.precision, args.engine)
    engine.start()
    app = create_app(engine, Settings(name, args.api_key, args.per_request_metrics))
    log.info("serving %s on http://%s:%d/v1", name, args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.stop()
    return 0

