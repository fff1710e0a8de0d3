"""Why the benchmark turns openvino-genai's prefix caching off: a repeated prompt is not read again.

    .venv/bin/python scripts/research/genai_prefix_cache.py [EXPORT_DIR] [--draft draft-int4_sym] [--prompt humaneval:0-0]

Prints genai's time to first token for the same prompt read twice, with its default latency configuration
and with the scheduler configuration `runtime/tools/genai_engine.py` uses (prefix caching off).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_genai

from specqd.runtime.tools import prompts
from specqd.runtime.pipeline import ExportFolder

DEVICE = {"INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": 1, "KV_CACHE_PRECISION": "f16"}


def first_token_ms(export_dir: Path, draft: str, ids: ov.Tensor, scheduler: dict) -> list[float]:
    options = dict(DEVICE, draft_model=openvino_genai.draft_model(str(export_dir / draft), "CPU", **DEVICE))
    pipe = openvino_genai.LLMPipeline(str(export_dir / "target"), "CPU", **options, **scheduler)
    config = pipe.get_generation_config()
    config.max_new_tokens, config.num_assistant_tokens, config.apply_chat_template = 8, 5, False
    return [pipe.generate(ids, config).perf_metrics.get_ttft().mean for _ in range(3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", type=Path,
                        default=Path.home() / ".cache/specqd/exports/qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="draft-int4_sym")
    parser.add_argument("--prompt", default="humaneval:0-0")
    args = parser.parse_args()
    folder = ExportFolder(args.export_dir, mxfp4_kernel=False)
    ids = ov.Tensor(np.array([folder.encode(prompts.load(args.prompt)[0])], np.int64))
    no_prefix_cache = openvino_genai.SchedulerConfig()
    no_prefix_cache.enable_prefix_caching = False
    for label, scheduler in (("genai default", {}), ("prefix caching off", {"scheduler_config": no_prefix_cache})):
        first, *repeats = first_token_ms(args.export_dir, args.draft, ids, scheduler)
        print(f"{label}: time to first token {first:.0f} ms (first call, warm-up), then "
              + ", ".join(f"{ms:.0f}" for ms in repeats) + " ms for the same prompt again")


if __name__ == "__main__":
    main()
