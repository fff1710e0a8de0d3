"""The runtime's footprint as an app that embeds it sees it, against the budget in README "Footprint".

    python scripts/footprint.py EXPORT --python RUNTIME_VENV/bin/python [--json]

RUNTIME_VENV holds only the specqd wheel and its own dependencies (no export extra). Measured there: the venv's
size on disk, the import time of the embedding API (`specqd.runtime.pipeline`), and for ML-SpecQD's default
chain and the chain `specqd tune` stored, the startup of an app that wants the chain ready: open the export,
then per level compile it and run one pass over the prompt (OpenVINO prepares a level's weights on its first
pass, which costs far more than later ones), each timed with the private memory it adds. Then two 64-token
generations, the first of which should already run at the second's speed, and the resident memory, private and
file-backed. Every chain is measured in a fresh process; its files are read once first, so times are with the
weights in the page cache, as on an app's second start (a first start also reads them from disk).
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


@dataclass
class Budget:
    """What a desktop user would notice, with the weights themselves as the floor for memory."""
    install_mb: float = 500            # the runtime venv: openvino and numpy dominate
    import_seconds: float = 1.0        # an app shows nothing until the runtime imports
    startup_seconds: float = 10.0      # from asking for a chain to it running at full speed, weights cached
    private_overhead_mb: float = 1024  # private memory beyond the chain's weight files


@dataclass
class LevelFootprint:
    name: str
    weights_mb: float         # its IR files on disk (manifest bytes)
    compile_seconds: float    # ExportFolder.model: read, rewrite for the MXFP4 kernel, compile
    first_pass_seconds: float
    private_mb: float         # anonymous memory its compile and first pass added


@dataclass
class ChainFootprint:
    chain: str
    weights_mb: float
    open_seconds: float       # ExportFolder: manifest, tokenizer, detokenizer
    levels: list[LevelFootprint]
    first_run_seconds: float  # the first 64-token generation after startup
    warm_run_seconds: float   # the same generation again
    rss_peak_mb: float        # peak resident memory (VmHWM)
    private_mb: float         # anonymous resident memory (RssAnon) at the end: what the OS cannot drop and re-read
    file_mb: float            # file-backed resident memory (RssFile): IR pages still mapped, reclaimable

    @property
    def startup_seconds(self) -> float:
        return self.open_seconds + sum(level.compile_seconds + level.first_pass_seconds for level in self.levels)

    @property
    def private_overhead_mb(self) -> float:
        return self.private_mb - self.weights_mb


# In the runtime venv's interpreter: one measurement per process.

def measure_import() -> dict:
    started = time.perf_counter()
    import specqd.runtime.pipeline  # noqa: F401
    return {"seconds": time.perf_counter() - started}


def measure_chain(export: Path, chain: list[str]) -> dict:
    from specqd.runtime.generation import LOOKUP
    from specqd.runtime.pipeline import ExportFolder

    started = time.perf_counter()
    folder = ExportFolder(export)
    result = {"open_seconds": time.perf_counter() - started, "levels": []}
    prompt = folder.encode(PROMPT)
    for name in (name for name in chain if name != LOOKUP):
        private, started = _status_mb("RssAnon"), time.perf_counter()
        model = folder.model(name)
        compiled = time.perf_counter()
        model.logits(prompt, 1)
        model.reset()
        result["levels"].append({"name": name, "compile_seconds": compiled - started,
                                 "first_pass_seconds": time.perf_counter() - compiled,
                                 "private_mb": _status_mb("RssAnon") - private})
    pipe = folder.pipeline(chain)
    for run in ("first_run_seconds", "warm_run_seconds"):
        started = time.perf_counter()
        pipe.generate(PROMPT, max_new_tokens=64)
        result[run] = time.perf_counter() - started
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
    for path in (path for name in chain for path in (export / name).glob("*.bin")):  # into the page cache
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass
    found = run_measure(python, export, "--measure-chain", ",".join(chain))
    levels = [LevelFootprint(weights_mb=weights[level["name"]], **level) for level in found.pop("levels")]
    return ChainFootprint(f"{label}: {','.join(chain)}", sum(level.weights_mb for level in levels),
                          levels=levels, **found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="an export folder made by export-mxfp4")
    parser.add_argument("--python", default=sys.executable, help="the runtime venv's interpreter")
    parser.add_argument("--json", action="store_true")
    # One measurement, in a child process of the runtime venv's interpreter.
    parser.add_argument("--measure-import", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure-chain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_import or args.measure_chain:
        print(json.dumps(measure_import() if args.measure_import
                         else measure_chain(args.export, args.measure_chain.split(","))))
        return 0

    prefix = Path(subprocess.run([args.python, "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                 text=True, check=True).stdout.strip())
    install_mb = directory_mb(prefix)
    import_seconds = statistics.median(run_measure(args.python, args.export, "--measure-import")["seconds"]
                                       for _ in range(IMPORT_RUNS))
    manifest = json.loads((args.export / "specqd.json").read_text())
    chains = {"ML-SpecQD": ML_SPECQD} | ({"tuned": manifest["tuned"]["chain"]} if manifest.get("tuned") else {})
    measured = [measure(args.python, args.export, label, chain) for label, chain in chains.items()]
    budget = Budget()
    verdict = {"install": install_mb <= budget.install_mb, "import": import_seconds <= budget.import_seconds,
               "startup": all(chain.startup_seconds <= budget.startup_seconds for chain in measured),
               "memory": all(chain.private_overhead_mb <= budget.private_overhead_mb for chain in measured)}
    if args.json:
        print(json.dumps({"install_mb": install_mb, "import_seconds": import_seconds, "budget": asdict(budget),
                          "chains": [asdict(chain) | {"startup_seconds": chain.startup_seconds,
                                                      "private_overhead_mb": chain.private_overhead_mb}
                                     for chain in measured],
                          "within_budget": verdict}, indent=1))
        return 0
    print(f"runtime venv {prefix}: {install_mb:.0f} MB (budget {budget.install_mb:.0f})")
    print(f"import specqd.runtime.pipeline: {import_seconds:.2f} s, median of {IMPORT_RUNS} "
          f"(budget {budget.import_seconds:.1f})\n")
    print("| chain | weights MB | startup s | first run s | warm run s | RSS peak MB | private MB | file-backed MB |\n"
          "|---|---|---|---|---|---|---|---|")
    for chain in measured:
        print(f"| {chain.chain} | {chain.weights_mb:.0f} | {chain.startup_seconds:.1f} | {chain.first_run_seconds:.1f} "
              f"| {chain.warm_run_seconds:.1f} | {chain.rss_peak_mb:.0f} | {chain.private_mb:.0f} | {chain.file_mb:.0f} |")
    print("\n| chain | level | weights MB | compile s | first pass s | private MB added |\n|---|---|---|---|---|---|")
    for chain in measured:
        for level in chain.levels:
            print(f"| {chain.chain.split(':')[0]} | {level.name} | {level.weights_mb:.0f} | {level.compile_seconds:.1f} "
                  f"| {level.first_pass_seconds:.1f} | {level.private_mb:.0f} |")
    print(f"\nbudget: startup (open the export, compile and run one pass through every level) <= "
          f"{budget.startup_seconds:.0f} s; private memory - weights <= {budget.private_overhead_mb:.0f} MB")
    print("within budget: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in verdict.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
