"""The runtime's footprint as an app that embeds it sees it, against the budget in README "Footprint".

    python scripts/footprint.py EXPORT --python RUNTIME_VENV/bin/python [--json]

RUNTIME_VENV holds only the specqd wheel and its own dependencies (no export extra). Measured there: the venv's
size on disk, the import time of the embedding API (`specqd.runtime.pipeline`), and for ML-SpecQD's default
chain and the chain `specqd tune` stored, how long an app that loads the chain waits, three ways, each in a
fresh process:
- sequential: open the export, then per level compile it and run its costly first pass (OpenVINO's CPU plugin
  prepares the weights then), one level after another: the chain is ready at full speed. Its per-phase times
  (KVModel.load_times, ExportFolder.open_times) and the private memory each level adds are the breakdown of
  where load time goes;
- load: `Pipeline.load(export, chain)` then a prompt at once: its first token comes after every level is
  compiled and the target has read the prompt, and the drafts' first passes slow the first answer;
- background: `Pipeline.load(export, chain, background=True)` then a prompt at once: the first token as soon as
  the target alone is compiled, warmed up and has read the prompt, while the draft levels load on a
  background thread; then the time until all of them are loaded.
Then two 64-token generations with every level loaded (background mode), and the resident memory, private and
file-backed. The chain's files are read before each process, so times are with the weights in the page cache,
as on an app's second start (a first start also reads them from disk).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ML_SPECQD = ["target", "target-mxfp4", "draft"]   # the paper's chain: target <- its MXFP4 copy <- the small draft
PROMPT = "def fibonacci(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
IMPORT_RUNS = 5
MODES = ("sequential", "load", "background")


@dataclass
class Budget:
    """What a desktop user would notice, with the weights themselves as the floor for memory."""
    install_mb: float = 500            # the runtime venv: openvino and numpy dominate
    import_seconds: float = 1.0        # an app shows nothing until the runtime imports
    first_token_seconds: float = 10.0  # from loading the chain to the first token of an answer, weights cached
    ready_seconds: float = 20.0        # until every level drafts: within the first answer at the target's speed
    private_overhead_mb: float = 1024  # private memory beyond the chain's weight files


@dataclass
class LevelFootprint:
    name: str
    weights_mb: float         # its IR files on disk (manifest bytes)
    read_seconds: float       # read the IR (an MXFP4 IR: rewritten for specqd's kernel first)
    rewrite_seconds: float    # to paged attention, lm_head over chosen rows
    compile_seconds: float    # OpenVINO's compile_model (one core)
    first_pass_seconds: float  # OpenVINO's CPU plugin prepares the weights (all cores)
    private_mb: float         # anonymous memory its load and first pass added


@dataclass
class Startup:
    """One way of starting, timed from opening the export."""
    mode: str
    first_token_seconds: float  # the first token of an answer asked for once the load call returns
    ready_seconds: float | None  # every level loaded and warmed up (None: not known apart from the first answer)


@dataclass
class ChainFootprint:
    chain: str
    weights_mb: float
    open_times: dict          # ExportFolder.open_times: manifest, kernel, tokenizers
    levels: list[LevelFootprint]   # sequential, each level alone: the per-phase breakdown
    startups: list[Startup]
    first_run_seconds: float  # the first 64-token generation with every level loaded (background mode)
    warm_run_seconds: float   # the same generation again
    rss_peak_mb: float        # peak resident memory (VmHWM), background mode
    private_mb: float         # anonymous resident memory (RssAnon) at the end: what the OS cannot drop and re-read
    file_mb: float            # file-backed resident memory (RssFile): IR pages still mapped, reclaimable

    @property
    def private_overhead_mb(self) -> float:
        return self.private_mb - self.weights_mb

    def startup(self, mode: str) -> Startup:
        return next(startup for startup in self.startups if startup.mode == mode)


# In the runtime venv's interpreter: one measurement per process.

def measure_import() -> dict:
    started = time.perf_counter()
    import specqd.runtime.pipeline  # noqa: F401
    return {"seconds": time.perf_counter() - started}


def measure_chain(export: Path, chain: list[str], mode: str) -> dict:
    from specqd.runtime.generation import LOOKUP
    from specqd.runtime.pipeline import ExportFolder, Pipeline

    started = time.perf_counter()
    result = {"mode": mode, "levels": []}
    if mode == "sequential":
        folder = ExportFolder(export)
        for name in (name for name in chain if name != LOOKUP):
            private = _status_mb("RssAnon")
            model = folder.model(name)
            model.warm_up()
            result["levels"].append({"name": name, "private_mb": _status_mb("RssAnon") - private,
                                     **{f"{phase if phase != 'warm_up' else 'first_pass'}_seconds": seconds
                                        for phase, seconds in asdict(model.load_times).items()}})
        pipe = folder.pipeline(chain)
    else:
        pipe = Pipeline.load(export, chain, background=mode == "background")
    ready = time.perf_counter() - started
    result["open_times"] = asdict(pipe.folder.open_times)
    for _ in pipe.stream(PROMPT, max_new_tokens=1):
        result["first_token_seconds"] = time.perf_counter() - started
    pipe.wait_loaded()
    result["ready_seconds"] = {"sequential": ready, "load": None, "background": time.perf_counter() - started}[mode]
    for run in ("first_run_seconds", "warm_run_seconds"):
        begun = time.perf_counter()
        pipe.generate(PROMPT, max_new_tokens=64)
        result[run] = time.perf_counter() - begun
    return result | {"rss_peak_mb": _status_mb("VmHWM"), "private_mb": _status_mb("RssAnon"),
                     "file_mb": _status_mb("RssFile")}


def _status_mb(field: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


# In the caller's interpreter.

def run_measure(python: str, export: Path, *args: str) -> dict:
    done = subprocess.run([python, __file__, str(export), *args], capture_output=True, text=True, cwd="/")
    if done.returncode:
        sys.exit(f"footprint: {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def directory_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink()) / 2**20


def measure(python: str, export: Path, label: str, chain: list[str]) -> ChainFootprint:
    manifest = json.loads((export / "specqd.json").read_text())
    weights = {level["name"]: level["bytes"] / 2**20 for level in manifest["levels"]}
    found = {}
    for mode in MODES:
        for path in (path for name in chain for path in (export / name).glob("*.bin")):  # into the page cache
            with path.open("rb") as handle:
                while handle.read(1 << 24):
                    pass
        found[mode] = run_measure(python, export, "--measure-chain", ",".join(chain), "--mode", mode)
    levels = [LevelFootprint(weights_mb=weights[level["name"]], **level) for level in found["sequential"]["levels"]]
    return ChainFootprint(
        f"{label}: {','.join(chain)}", sum(level.weights_mb for level in levels), found["sequential"]["open_times"],
        levels,
        [Startup(mode, found[mode]["first_token_seconds"], found[mode]["ready_seconds"]) for mode in MODES],
        **{key: found["background"][key] for key in ("first_run_seconds", "warm_run_seconds", "rss_peak_mb", "private_mb",
                                            "file_mb")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="an export folder made by export-mxfp4")
    parser.add_argument("--python", default=sys.executable, help="the runtime venv's interpreter")
    parser.add_argument("--chain", action="append", help="measure this chain (repeatable) instead of ML-SpecQD's "
                                                         "and the tuned one")
    parser.add_argument("--json", action="store_true")
    # One measurement, in a child process of the runtime venv's interpreter.
    parser.add_argument("--measure-import", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure-chain", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_import or args.measure_chain:
        print(json.dumps(measure_import() if args.measure_import
                         else measure_chain(args.export, args.measure_chain.split(","), args.mode)))
        return 0

    prefix = Path(subprocess.run([args.python, "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                 text=True, check=True).stdout.strip())
    install_mb = directory_mb(prefix)
    import_seconds = statistics.median(run_measure(args.python, args.export, "--measure-import")["seconds"]
                                       for _ in range(IMPORT_RUNS))
    manifest = json.loads((args.export / "specqd.json").read_text())
    if args.chain:
        chains = {f"chain {index + 1}": chain.split(",") for index, chain in enumerate(args.chain)}
    else:
        chains = {"ML-SpecQD": ML_SPECQD} | ({"tuned": manifest["tuned"]["chain"]} if manifest.get("tuned") else {})
    measured = [measure(args.python, args.export, label, chain) for label, chain in chains.items()]
    budget = Budget()
    background = [chain.startup("background") for chain in measured]
    verdict = {"install": install_mb <= budget.install_mb, "import": import_seconds <= budget.import_seconds,
               "first token": all(start.first_token_seconds <= budget.first_token_seconds for start in background),
               "ready": all(start.ready_seconds <= budget.ready_seconds for start in background),
               "memory": all(chain.private_overhead_mb <= budget.private_overhead_mb for chain in measured)}
    if args.json:
        print(json.dumps({"install_mb": install_mb, "import_seconds": import_seconds, "budget": asdict(budget),
                          "chains": [asdict(chain) | {"private_overhead_mb": chain.private_overhead_mb}
                                     for chain in measured],
                          "within_budget": verdict}, indent=1))
        return 0
    print(f"runtime venv {prefix}: {install_mb:.0f} MB (budget {budget.install_mb:.0f})")
    print(f"import specqd.runtime.pipeline: {import_seconds:.2f} s, median of {IMPORT_RUNS} "
          f"(budget {budget.import_seconds:.1f})\n")
    print("| chain | sequential: ready s | Pipeline.load: first token s | background: first token s | ready s |\n"
          "|---|---|---|---|---|")
    for chain in measured:
        sequential, load, background = (chain.startup(mode) for mode in MODES)
        print(f"| {chain.chain} | {sequential.ready_seconds:.1f} | {load.first_token_seconds:.1f} "
              f"| {background.first_token_seconds:.1f} | {background.ready_seconds:.1f} |")
    print("\n| chain | weights MB | first run s | warm run s | RSS peak MB | private MB | file-backed MB |\n"
          "|---|---|---|---|---|---|---|")
    for chain in measured:
        print(f"| {chain.chain} | {chain.weights_mb:.0f} | {chain.first_run_seconds:.1f} | {chain.warm_run_seconds:.1f} "
              f"| {chain.rss_peak_mb:.0f} | {chain.private_mb:.0f} | {chain.file_mb:.0f} |")
    print("\nsequential, per phase:\n\n| chain | level | weights MB | read s | rewrite s | compile s | first pass s "
          "| private MB added |\n|---|---|---|---|---|---|---|---|")
    for chain in measured:
        name = chain.chain.split(":")[0]
        print(f"| {name} | open: manifest {chain.open_times['manifest']:.2f}, kernel {chain.open_times['kernel']:.2f}, "
              f"tokenizers {chain.open_times['tokenizers']:.2f} | | | | | | |")
        for level in chain.levels:
            print(f"| {name} | {level.name} | {level.weights_mb:.0f} | {level.read_seconds:.2f} "
                  f"| {level.rewrite_seconds:.2f} | {level.compile_seconds:.2f} | {level.first_pass_seconds:.2f} "
                  f"| {level.private_mb:.0f} |")
    print(f"\nbudget (background loading): first token <= {budget.first_token_seconds:.0f} s, every level ready <= "
          f"{budget.ready_seconds:.0f} s; private memory - weights <= {budget.private_overhead_mb:.0f} MB")
    print("within budget: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in verdict.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
