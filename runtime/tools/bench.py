"""`specqd bench`: every configuration on the same prompts in one run, taking turns on small blocks of prompts.

Speedups are ratios to our BF16 target alone measured in the same run, because this machine is shared and
noisy: interleaving makes drift hit every configuration alike. Our configurations share compiled models
(one ExportFolder); each openvino-genai configuration is its own LLMPipeline, each llama.cpp one its own
llama-server process reading GGUF files.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import openvino as ov

from . import llamacpp_gguf
from .genai_engine import GenAIConfig
from .llamacpp_build import LlamaCppBuild, LlamaCppError
from .llamacpp_engine import LlamaCppConfig
from ..manifest import Level
from ..pipeline import LOOKUP, ExportFolder, GenerationError, Pipeline
from ..sampling import Sampling
from ..speculative import DraftControls, LevelStats

BASELINE = "target"
GENAI = "genai:"
LLAMACPP = "llamacpp:"
ENGINES = {GENAI: "openvino-genai", LLAMACPP: "llama.cpp"}
# Configurations take turns on blocks of this many prompts: each openvino-genai pipeline then loads and warms
# up (about 9 s here) once per block instead of once per prompt, and drift still hits every configuration
# within minutes of the others.
BLOCK = 4
# One configuration per item of the list, in its order (ours with the BF16 and the MXFP4 0.5B where it
# names both); configurations whose levels the export lacks are skipped. Each costs 7-18 s per prompt here, so
# every extra one adds 10-25 minutes to a run of the 82-prompt development split: others go in --configs.
DEFAULT_CONFIGS = (
    "target", "genai:target", "target-mxfp4",
    "target,target-mxfp4", "genai:target,target-mxfp4",
    "target,draft", "target,draft-mxfp4", "genai:target,draft", "genai:target,draft-mxfp4",
    "target,target-mxfp4,draft-mxfp4",
    "target,lookup", "target,draft-int4_sym,lookup", "genai:target,lookup",
    "target,draft-int4_sym", "genai:target,draft-int4_sym",
)


@dataclass
class Sample:
    """One configuration on one prompt."""
    tokens: list[int]
    seconds: float
    target_passes: int
    levels: list[LevelStats]  # ours only


@dataclass
class ConfigRun:
    name: str
    engine: str
    chain: list[str]
    runner: Pipeline | GenAIConfig | LlamaCppConfig
    folder: ExportFolder
    weights: dict[str, int]  # bytes of each level's weights as this engine reads them (IR folder or GGUF)
    outputs: list[list[int]] = field(default_factory=list)
    prompt_seconds: list[float] = field(default_factory=list)
    levels: list[LevelStats] = field(default_factory=list)
    target_passes: int = 0
    f32_exact: bool | None = None

    @property
    def lossy(self) -> bool:
        """Its greedy output is not the BF16 target's by construction: a quantized model runs alone."""
        return self.chain[0] != BASELINE

    def measure(self, prompts: list[str], max_new_tokens: int, sampling: Sampling) -> list[Sample]:
        if isinstance(self.runner, GenAIConfig):
            return _run_genai(self.runner, [self.folder.encode(prompt) for prompt in prompts], max_new_tokens)
        if isinstance(self.runner, LlamaCppConfig):
            return _run_llamacpp(self.runner, self.chain, [self.folder.encode(prompt) for prompt in prompts],
                                 max_new_tokens)
        samples = []
        for prompt in prompts:
            result = self.runner.generate(prompt, max_new_tokens=max_new_tokens, sampling=sampling)
            samples.append(Sample(result.tokens, result.stats["seconds"], result.stats["levels"][0]["forward_passes"],
                                  result.levels))
        return samples

    @property
    def tokens_per_second(self) -> float:
        return sum(map(len, self.outputs)) / sum(self.prompt_seconds)

    def record(self, sample: Sample) -> None:
        if not self.levels:
            self.levels = [LevelStats(level.name) for level in sample.levels]
        for total, level in zip(self.levels, sample.levels):
            total.add(level)
        self.outputs.append(sample.tokens)
        self.prompt_seconds.append(sample.seconds)
        self.target_passes += sample.target_passes


class Journal:
    """Per-prompt results appended as they complete, so an interrupted run resumes where it stopped.

    A full development split takes hours here; the first line holds the run's settings, and a journal
    whose settings differ is started afresh.
    """

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.settings = settings

    def completed(self) -> list[dict[str, Sample]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        if not lines or json.loads(lines[0]) != self.settings:
            self.path.unlink()
            return []
        return [{name: Sample(s["tokens"], s["seconds"], s["target_passes"], [LevelStats(**l) for l in s["levels"]])
                 for name, s in json.loads(line).items()} for line in lines[1:]]

    def append(self, samples: dict[str, Sample]) -> None:
        if not self.path.exists():
            self.path.write_text(json.dumps(self.settings) + "\n")
        with self.path.open("a") as journal:
            journal.write(json.dumps({name: asdict(sample) for name, sample in samples.items()}) + "\n")


def _run_genai(config: GenAIConfig, prompts: list[list[int]], max_new_tokens: int) -> list[Sample]:
    """Each openvino-genai pipeline holds its own copy of the models, so only one is loaded at a
    time: built for a block of prompts, warmed up, timed on each, and dropped."""
    from .genai_engine import GenAIEngine

    engine = GenAIEngine(config)
    engine.generate(prompts[0], 8)
    results = [engine.generate(prompt_ids, max_new_tokens) for prompt_ids in prompts]
    return [Sample(r.tokens, r.seconds, r.target_steps or len(r.tokens), []) for r in results]


def _run_llamacpp(config: LlamaCppConfig, chain: list[str], prompts: list[list[int]],
                  max_new_tokens: int) -> list[Sample]:
    """As for openvino-genai, one configuration's models at a time: a server per block of prompts, warmed
    up, timed on each, and stopped."""
    from .llamacpp_engine import LlamaCppEngine

    with LlamaCppEngine(config, LlamaCppBuild.cached().require_server()) as engine:
        engine.generate(prompts[0], 8)
        results = [engine.generate(prompt_ids, max_new_tokens) for prompt_ids in prompts]
    samples = []
    for result in results:
        levels = [LevelStats(name) for name in chain] if len(chain) > 1 else []
        if levels:  # the server counts drafted and accepted tokens, not positions
            levels[0].forward_passes = result.target_steps
            levels[1].record_counts(result.drafted, result.accepted, [], [])
        samples.append(Sample(result.tokens, result.seconds, result.target_steps, levels))
    return samples


def split_name(name: str) -> tuple[str, list[str]]:
    """`genai:target,draft` -> ("openvino-genai", ["target", "draft"]); no prefix is specqd."""
    for prefix, engine in ENGINES.items():
        if name.startswith(prefix):
            return engine, name.removeprefix(prefix).split(",")
    return "specqd", name.split(",")


def available_configs(folder: ExportFolder, names: list[str]) -> list[str]:
    levels = {level.name for level in folder.manifest.levels} | {LOOKUP}
    bf16 = {level.name for level in folder.manifest.levels if level.format == "bf16"}
    llamacpp = bf16 | {name + llamacpp_gguf.SHIPPED for name in bf16} | {LOOKUP}
    selected = []
    for name in names:
        engine, chain = split_name(name)
        if set(chain) <= (llamacpp if engine == "llama.cpp" else levels):
            selected.append(name)
    return selected


def make_run(folder: ExportFolder, name: str, controls: Callable[[list[str]], dict[str, DraftControls]]) -> ConfigRun:
    engine, chain = split_name(name)
    sizes = {level.name: level.bytes for level in folder.manifest.levels}
    weights = {level: sizes[level] for level in chain if level in sizes}
    if engine == "openvino-genai":
        level_dir = {level.name: folder.path / level.path for level in folder.manifest.levels}
        draft = chain[1] if len(chain) > 1 else None
        config = GenAIConfig(target=level_dir[chain[0]], draft=level_dir.get(draft), prompt_lookup=draft == LOOKUP)
        return ConfigRun(name, engine, chain, config, folder, weights)
    if engine == "llama.cpp":
        config = llamacpp_config({level.name: level for level in folder.manifest.levels}, chain)
        LlamaCppBuild.cached().require_server()  # missing pieces fail here, before anything is timed
        files = {level: path.stat().st_size for level, path in zip(chain, (config.target, config.draft)) if path}
        return ConfigRun(name, engine, chain, config, folder, files)
    pipeline = folder.pipeline(chain, controls(chain))
    return ConfigRun(name, engine, chain, pipeline, folder, weights)


def llamacpp_config(levels: dict[str, Level], chain: list[str]) -> LlamaCppConfig:
    """A llama.cpp chain is a GGUF alone, or a GGUF with one draft GGUF or lookup below it."""
    if len(chain) > 2:
        raise LlamaCppError(f"llama.cpp runs a model alone or with one draft model or lookup, not "
                            f"{','.join(chain)}")
    draft = chain[1] if len(chain) == 2 else None
    return LlamaCppConfig(target=llamacpp_gguf.gguf_for(levels, chain[0]),
                          draft=llamacpp_gguf.gguf_for(levels, draft) if draft not in (None, LOOKUP) else None,
                          prompt_lookup=draft == LOOKUP)


def run(folder: ExportFolder, names: list[str], prompts: list[str], max_new_tokens: int, sampling: Sampling,
        controls: Callable[[list[str]], dict[str, DraftControls]], f32_prompts: int = 0,
        journal: Path | None = None) -> dict:
    """`controls` gives each chain its drafting controls (the CLI merges tuned defaults and options);
    `journal` keeps per-prompt results so that the same command resumes an interrupted run."""
    names = [BASELINE, *(name for name in names if name != BASELINE)]  # the baseline comes first
    runs = [make_run(folder, name, controls) for name in names]
    if not sampling.greedy and any(config.engine != "specqd" for config in runs):
        raise GenerationError("openvino-genai and llama.cpp configurations run greedy only (genai's speculative "
                              "sampling has open bugs): drop them from --configs or sample without them")
    settings = {"export": str(folder.path), "configs": names, "prompts": prompts, "max_new_tokens": max_new_tokens,
                "sampling": asdict(sampling)}
    log = Journal(journal, settings) if journal else None
    done = log.completed() if log else []
    for samples in done:
        for config in runs:
            config.record(samples[config.name])
    if done:
        say(f"resuming after {len(done)} prompts from {journal}")
    say(f"warming up {len(runs)} configurations")
    for config in runs:  # ours at full length: a run's first long generation was once 60 % slow (26.6 s, then 16)
        if config.engine == "specqd":
            config.measure(prompts[:1], max_new_tokens, sampling)
    started = time.perf_counter()
    for start in range(len(done), len(prompts), BLOCK):
        block = prompts[start:start + BLOCK]
        measured = {config.name: config.measure(block, max_new_tokens, sampling) for config in runs}
        for index in range(len(block)):
            samples = {name: measured[name][index] for name in measured}
            for config in runs:
                config.record(samples[config.name])
            if log:
                log.append(samples)
        line = "  ".join(f"{c.name} {c.tokens_per_second:.1f}" for c in runs)
        say(f"[{start + len(block)}/{len(prompts)}] {time.perf_counter() - started:.0f} s  tok/s: {line}")
    if f32_prompts:
        check_f32(folder.path, runs, prompts[:f32_prompts], max_new_tokens, folder.mxfp4_kernel)
    return report(folder, runs, prompts, max_new_tokens, sampling)


def check_f32(path: Path, runs: list[ConfigRun], prompts: list[str], max_new_tokens: int, mxfp4_kernel: bool) -> None:
    """Our chains must give the target's own greedy tokens exactly when every level computes in f32."""
    folder = ExportFolder(path, precision="f32", mxfp4_kernel=mxfp4_kernel)
    tokens = min(max_new_tokens, 32)
    expected = [folder.pipeline([BASELINE]).generate(p, max_new_tokens=tokens).tokens for p in prompts]
    for config in runs:
        if config.engine == "specqd" and config.chain[0] == BASELINE:
            say(f"f32 check: {config.name}")
            pipeline = folder.pipeline(config.chain)
            config.f32_exact = all(pipeline.generate(p, max_new_tokens=tokens).tokens == e
                                   for p, e in zip(prompts, expected))


def report(folder: ExportFolder, runs: list[ConfigRun], prompts: list[str], max_new_tokens: int,
           sampling: Sampling) -> dict:
    baseline = runs[0]
    base_speed = baseline.tokens_per_second
    configs = []
    for config in runs:
        speed = config.tokens_per_second
        levels = [level.summary() for level in config.levels]
        configs.append({
            "name": config.name,
            "engine": config.engine,
            "chain": config.chain,
            "tokens_per_second": round(speed, 3),
            "speedup": round(speed / base_speed, 3),
            "speedup_interval": speedup_interval(config, baseline),
            "agreement": round(agreement(config.outputs, baseline.outputs), 4),
            "mean_accepted_length": round(sum(map(len, config.outputs)) / max(1, config.target_passes), 3),
            "levels": levels,
            "weights_bytes": config.weights,
            "lossy": config.lossy,
            "f32_exact": config.f32_exact,
            "tokens_by_prompt": [len(tokens) for tokens in config.outputs],
            "seconds_by_prompt": [round(seconds, 3) for seconds in config.prompt_seconds],
        })
    return {
        "command": "specqd " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "export": str(folder.path),
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "sampling": asdict(sampling),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "configs": configs,
    }


def speedup_interval(config: ConfigRun, baseline: ConfigRun, level: float = 0.9) -> list[float]:
    """Bootstrap interval of the speedup over prompts: how much it depends on which prompts were drawn.

    Each resample draws as many prompts as were run, with replacement, and recomputes the ratio of total
    tokens per second, both configurations on the same drawn prompts.
    """
    tokens = np.array([list(map(len, run.outputs)) for run in (config, baseline)], float)
    seconds = np.array([run.prompt_seconds for run in (config, baseline)])
    draws = np.random.default_rng(0).integers(0, tokens.shape[1], (2000, tokens.shape[1]))
    speed = tokens[:, draws].sum(axis=2) / seconds[:, draws].sum(axis=2)
    low, high = np.quantile(speed[0] / speed[1], [(1 - level) / 2, (1 + level) / 2])
    return [round(float(low), 3), round(float(high), 3)]


def machine() -> str:
    """CPU name with family and model: machines that report the same name ("AMD EPYC") differ in speed."""
    cpuinfo = Path("/proc/cpuinfo")
    fields = dict(line.split(":", 1) for line in cpuinfo.read_text().split("\n\n")[0].splitlines()
                  if ":" in line) if cpuinfo.exists() else {}
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    cpu = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return f"{cpu}, {os.cpu_count()} cores, OpenVINO {ov.get_version().split('-')[0]}"


def agreement(outputs: list[list[int]], reference: list[list[int]]) -> float:
    """Share of the reference's tokens reproduced before the first difference, over all prompts."""
    same = 0
    for tokens, expected in zip(outputs, reference):
        same += next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
    return same / max(1, sum(map(len, reference)))


def markdown(result: dict) -> str:
    lines = [f"`{result['command']}`", "",
             f"{result['prompts']} prompts × {result['max_new_tokens']} new tokens, {result['date']}, "
             f"{result['machine']}, process peak memory {result['peak_memory_mb']} MB; speedup in brackets: "
             f"90 % bootstrap interval over prompts",
             "",
             "| configuration | engine | tok/s | speedup | agreement | tokens/target pass | acceptance by level | "
             "weights GB | f32 exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    for config in result["configs"]:
        acceptance = ", ".join(f"{level['level']} {level['acceptance_rate']:.2f}" for level in config["levels"][1:]
                               if level["acceptance_rate"] is not None)
        weights = sum(config["weights_bytes"].values()) / 1e9
        exact = {True: "yes", False: "NO", None: "-"}[config["f32_exact"]]
        length = config["mean_accepted_length"]
        low, high = config["speedup_interval"]
        name = f"{config['name']} (LOSSY)" if config["lossy"] else config["name"]
        lines.append(f"| {name} | {config['engine']} | {config['tokens_per_second']:.2f} | "
                     f"{config['speedup']:.2f}x ({low:.2f}-{high:.2f}) | {config['agreement']:.3f} | {length or '-'} | {acceptance or '-'} | "
                     f"{weights:.2f} | {exact} |")
    return "\n".join(lines)


def bar_chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = result["configs"]
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(configs) + 1.2))
    colors = [{"specqd": "tab:blue", "openvino-genai": "tab:orange"}.get(c["engine"], "tab:green") for c in configs]
    axis.barh([f"{c['name']} (LOSSY)" if c["lossy"] else c["name"] for c in configs], [c["speedup"] for c in configs],
              color=colors)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.invert_yaxis()
    axis.set_xlabel("speedup over our BF16 target alone\n(blue: specqd, orange: openvino-genai, green: llama.cpp)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def journal_path(json_path: Path) -> Path:
    return json_path.with_suffix(".partial.jsonl")


def write_outputs(result: dict, json_path: Path | None) -> None:
    print(markdown(result))
    if json_path:
        journal_path(json_path).unlink(missing_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        json_path.with_suffix(".md").write_text(markdown(result) + "\n")
        bar_chart(result, json_path.with_suffix(".png"))
        say(f"wrote {json_path}, {json_path.with_suffix('.md')} and {json_path.with_suffix('.png')}")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
