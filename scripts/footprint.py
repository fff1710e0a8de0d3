"""The runtime's footprint as an app that embeds it sees it, against the budget in README "Footprint".

    python scripts/footprint.py EXPORT --python RUNTIME_VENV/bin/python [--json]

RUNTIME_VENV holds only the specqd wheel and its own dependencies (no export extra). Measured there: the venv's
size on disk, the import time of the embedding API (`specqd.runtime.pipeline`), and for ML-SpecQD's default
chain and the chain `specqd tune` stored: the time `Pipeline.load` takes, two 64-token generations (the first
also lays out the weights) and the resident memory, private and file-backed. Every figure comes from a fresh
process, so nothing one measurement loads counts in the next. Each chain's files are read once first: times are
with the weights in the page cache, as on an app's second start (a first start also reads them from disk).
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
class ChainFootprint:
    chain: str
    weights_mb: float         # the chain's IR files on disk (manifest bytes)
    load_seconds: float       # Pipeline.load: read, rewrite and compile every level
    first_run_seconds: float  # the first 64-token generation: each level's first pass is slow (OpenVINO's setup)
    warm_run_seconds: float   # the same generation again
    rss_loaded_mb: float      # resident after Pipeline.load
    rss_peak_mb: float        # peak resident (VmHWM) after both generations
    private_mb: float         # anonymous resident memory (RssAnon) then: what the OS cannot drop and re-read
    file_mb: float            # file-backed resident memory (RssFile): IR pages still mapped, reclaimable

    @property
    def startup_seconds(self) -> float:
        return self.load_seconds + self.first_run_seconds - self.warm_run_seconds

    @property
    def private_overhead_mb(self) -> float:
        return self.private_mb - self.weights_mb


# In the runtime venv's interpreter: one measurement per process.

def measure_import() -> dict:
    started = time.perf_counter()
    import specqd.runtime.pipeline  # noqa: F401
    return {"seconds": time.perf_counter() - started}


def measure_chain(export: Path, chain: str) -> dict:
    from specqd.runtime.pipeline import Pipeline

    started = time.perf_counter()
    pipe = Pipeline.load(export, chain)
    loaded = time.perf_counter() - started
    rss_loaded = _status_mb("VmRSS")
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        pipe.generate(PROMPT, max_new_tokens=64)
        runs.append(time.perf_counter() - started)
    return {"load_seconds": loaded, "first_run_seconds": runs[0], "warm_run_seconds": runs[1],
            "rss_loaded_mb": rss_loaded, "rss_peak_mb": _status_mb("VmHWM"), "private_mb": _status_mb("RssAnon"),
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


def chains(export: Path) -> dict[str, list[str]]:
    manifest = json.loads((export / "specqd.json").read_text())
    found = {"ML-SpecQD (default)": ML_SPECQD}
    if manifest.get("tuned"):
        found["tuned"] = manifest["tuned"]["chain"]
    return found


def weights_mb(export: Path, chain: list[str]) -> float:
    levels = {level["name"]: level for level in json.loads((export / "specqd.json").read_text())["levels"]}
    return sum(levels[name]["bytes"] for name in chain if name in levels) / 2**20


def warm_page_cache(export: Path, chain: list[str]) -> None:
    """Read the chain's files once, so that its load time does not depend on what ran before."""
    for path in (path for name in chain for path in (export / name).glob("*.bin")):
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass


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
        print(json.dumps(measure_import() if args.measure_import else measure_chain(args.export, args.measure_chain)))
        return 0

    prefix = Path(subprocess.run([args.python, "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                 text=True, check=True).stdout.strip())
    install_mb = directory_mb(prefix)
    import_seconds = statistics.median(run_measure(args.python, args.export, "--measure-import")["seconds"]
                                       for _ in range(IMPORT_RUNS))
    measured = []
    for label, chain in chains(args.export).items():
        warm_page_cache(args.export, chain)
        measured.append(ChainFootprint(label + ": " + ",".join(chain), weights_mb(args.export, chain),
                                       **run_measure(args.python, args.export, "--measure-chain", ",".join(chain))))
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
          f"(budget {budget.import_seconds:.1f})")
    print("| chain | weights MB | load s | first run s | warm run s | startup s | RSS loaded MB | RSS peak MB "
          "| private MB | file-backed MB |\n|---|---|---|---|---|---|---|---|---|---|")
    for chain in measured:
        print(f"| {chain.chain} | {chain.weights_mb:.0f} | {chain.load_seconds:.1f} | {chain.first_run_seconds:.1f} | "
              f"{chain.warm_run_seconds:.1f} | {chain.startup_seconds:.1f} | {chain.rss_loaded_mb:.0f} | "
              f"{chain.rss_peak_mb:.0f} | {chain.private_mb:.0f} | {chain.file_mb:.0f} |")
    print(f"budget: startup (load + first run - warm run) <= {budget.startup_seconds:.0f} s, "
          f"private - weights <= {budget.private_overhead_mb:.0f} MB")
    print("within budget: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in verdict.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
