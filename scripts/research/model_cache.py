"""Does OpenVINO's model cache (CACHE_DIR) shorten a level's load, and why not?

    python scripts/research/model_cache.py EXPORT_DIR [--level target] [--mode OPTIMIZE_SPEED]

Compiles the level as the runtime does (paged attention, lm_head over chosen rows) in fresh processes: once
without a cache, then twice with CACHE_DIR (a scratch folder) and CACHE_MODE, printing compile and first-pass
seconds and whether OpenVINO loaded the model from the cache. Then exports the compiled model and imports it
back, which prints the reason a cached blob cannot be loaded. Finding: docs/footprint.md.
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openvino as ov
from openvino._offline_transformations import paged_attention_transformation

from specqd.runtime import kvmodel
from specqd.runtime.mxfp4_kernel import Kernel


def compile_level(export: Path, level: str, config: dict, cache_dir: str | None) -> kvmodel.KVModel:
    """The level as ExportFolder loads it, with the cache turned on when `cache_dir` is given."""
    core = ov.Core()
    kernel = Kernel.find()
    kernel.register(core)
    if cache_dir:
        core.set_property({"CACHE_DIR": cache_dir})
        original = kvmodel.cpu_config
        kvmodel.cpu_config = lambda precision, threads=0: original(precision, threads) | config
    return kvmodel.KVModel(core, export / level, "bf16", kernel)


def one_run(export: Path, level: str, mode: str, cache_dir: str | None) -> None:
    model = compile_level(export, level, {"CACHE_MODE": mode}, cache_dir)
    model.warm_up()
    hit = model.compiled.get_property("LOADED_FROM_CACHE") if cache_dir else "-"
    print(f"{level} cache {cache_dir and mode or 'off'}: compile {model.load_times.compile:.2f} s, first pass "
          f"{model.load_times.warm_up:.2f} s, loaded from cache: {hit}", flush=True)


def import_error(export: Path, level: str) -> str:
    model = compile_level(export, level, {}, None)
    blob = model.compiled.export_model().getvalue()
    core = ov.Core()
    Kernel.find().register(core)
    try:
        started = time.perf_counter()
        core.import_model(blob, "CPU", kvmodel.cpu_config("bf16"))
        return f"imported in {time.perf_counter() - started:.2f} s"
    except RuntimeError as error:
        return str(error).strip().splitlines()[-1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--level", default="target")
    parser.add_argument("--mode", default="OPTIMIZE_SPEED", choices=["OPTIMIZE_SPEED", "OPTIMIZE_SIZE"])
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one measurement in a child process: its cache dir
    args = parser.parse_args()
    if args.run is not None:
        one_run(args.export_dir, args.level, args.mode, args.run or None)
        return
    with tempfile.TemporaryDirectory() as cache_dir:
        for run in ("", cache_dir, cache_dir):
            subprocess.run([sys.executable, __file__, str(args.export_dir), "--level", args.level, "--mode", args.mode,
                            "--run", run], check=True)
    print(f"export_model, then import_model: {import_error(args.export_dir, args.level)}")


if __name__ == "__main__":
    main()
