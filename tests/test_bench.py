"""specqd bench: the same prompts for every configuration, speedups against our BF16 target alone."""

import json

import pytest

from specqd.exporter.export import ExportOptions, export
from specqd.runtime import cli
from specqd.runtime.tools import prompts


def test_humaneval_prompts_are_numbered_as_in_the_dataset():
    first_three = prompts.load("humaneval:0-2")
    assert len(first_three) == 3 and "has_close_elements" in first_three[0]
    assert prompts.load("humaneval:1-1") == first_three[1:2]


def test_sharegpt_prompts_are_first_human_turns_of_whole_conversations():
    texts = prompts.load("sharegpt:0-4")
    assert len(texts) == 5 and all(text.strip() for text in texts)


@pytest.mark.parametrize("spec, message", [("humaneval", "expected SOURCE:START-END"),
                                           ("mmlu:0-3", "unknown source 'mmlu'"),
                                           ("humaneval:0-500", "has prompts 0-163")])
def test_bad_prompt_specs_are_refused(spec, message):
    with pytest.raises(prompts.PromptSpecError, match=message):
        prompts.load(spec)


@pytest.fixture(scope="module")
def tiny_export(tiny_target, tiny_draft, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "export"
    export(ExportOptions(model=str(tiny_target), out_dir=out, drafts=[str(tiny_draft)], formats=["int8"]))
    return out


def test_bench_writes_json_markdown_and_chart_with_speedups_against_the_baseline(tiny_export, tmp_path, capsys):
    report = tmp_path / "bench.json"
    assert cli.main(["bench", str(tiny_export), "--prompts", "humaneval:0-2", "--limit", "2",
                     "--max-new-tokens", "12", "--configs", "target,target-int8;target,draft,lookup;target-int8;genai:target,draft",
                     "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    names = [config["name"] for config in result["configs"]]
    assert names == ["target", "target,target-int8", "target,draft,lookup", "target-int8", "genai:target,draft"]
    baseline = result["configs"][0]
    assert baseline["speedup"] == 1.0 and baseline["agreement"] == 1.0
    assert baseline["speedup_interval"] == [1.0, 1.0]
    for config in result["configs"]:
        assert {"name", "engine", "chain", "tokens_per_second", "speedup", "agreement"} <= set(config)
        assert config["tokens_per_second"] > 0
        low, high = config["speedup_interval"]
        assert low <= config["speedup"] <= high
    chains = {config["name"]: config for config in result["configs"]}
    assert chains["target,target-int8"]["f32_exact"] is True
    assert chains["target,draft,lookup"]["f32_exact"] is True
    assert chains["target-int8"]["f32_exact"] is None  # a level alone is not the target: nothing to check
    assert chains["genai:target,draft"]["engine"] == "openvino-genai"
    assert chains["genai:target,draft"]["agreement"] > 0
    assert chains["target,target-int8"]["levels"][1]["drafted"] > 0
    assert result["prompts"] == 2
    assert "| target,target-int8 |" in capsys.readouterr().out
    assert report.with_suffix(".md").read_text().count("\n") >= 6
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_bench_refuses_configurations_the_export_lacks(tiny_export, capsys):
    assert cli.main(["bench", str(tiny_export), "--configs", "target,target-mxfp4", "--limit", "1"]) == 1
    assert "target,target-mxfp4" in capsys.readouterr().err


def test_the_cost_model_replays_drafting_rounds_along_the_measured_agreement():
    import numpy as np

    from specqd.runtime.tools.profile import Trace
    from specqd.runtime.tools.tune import CostModel

    times = {"target": {1: 100.0, 25: 100.0}, "draft": {1: 10.0, 25: 10.0}}
    agrees = Trace([np.ones(10, bool)], [np.ones(10)])
    model = CostModel(times, {("target", "draft"): agrees})
    # Rounds of 4 drafted tokens at 10 ms and one 100 ms verify commit 5 tokens: 28 ms per token.
    assert model.cost_per_token(["target", "draft"], {"draft": (4, 0.0, 0)}) == 28.0
    assert model.tokens_per_second(["target"], {}) == 10.0
    # Reading the prompt costs every level once: 10 tokens at 28 ms plus 300 + 50 ms.
    prefill = {"target": 300.0, "draft": 50.0}
    assert abs(CostModel(times, {("target", "draft"): agrees}, prefill).tokens_per_second(
        ["target", "draft"], {"draft": (4, 0.0, 0)}, 10) - 10_000 / 630) < 1e-9
    # A copy of the target reads no prompt; the target's prompt read then emits one token in a 100 ms step.
    copy = CostModel(times, {("target", "draft"): agrees}, prefill, frozenset({"draft"}))
    assert abs(copy.tokens_per_second(["target", "draft"], {"draft": (4, 0.0, 0)}, 10) - 10_000 / (400 + 9 * 28)) < 1e-9
    # Rejections end a round at the first mismatch: rounds draft 4 (the last only the 3 positions left), keep 2
    # and add one.
    streaks = Trace([np.array([1, 1, 0] * 4, bool)], [np.ones(12)])
    assert CostModel(times, {("target", "draft"): streaks}).cost_per_token(["target", "draft"], {"draft": (4, 0.0, 0)}) \
        == ((4 + 4 + 4 + 3) * 10 + 4 * 100) / 12
    # A draft unsure of every third token stops after it: rounds draft 3, keep 2 and add one.
    unsure = Trace([np.array([1, 1, 0] * 4, bool)], [np.array([0.9, 0.9, 0.2] * 4)])
    assert CostModel(times, {("target", "draft"): unsure}).cost_per_token(["target", "draft"], {"draft": (4, 0.5, 0)}) \
        == (3 * 10 + 100) / 3
    # A lookup guess after the draft rides in the same (flat) verify pass and counts while lookup's token is the
    # target's: here it covers the draft's miss, so rounds draft 2, add 1 guess, keep all 3 and add one.
    draft_misses = Trace([np.array([1, 1, 0, 1] * 3, bool)], [np.ones(12)])
    lookup_hits = Trace([np.array([0, 0, 1, 0] * 3, bool)], [np.ones(12)])
    extended = CostModel(times, {("target", "draft"): draft_misses, ("target", "lookup"): lookup_hits})
    assert extended.cost_per_token(["target", "draft"], {"draft": (2, 0.0, 1)}) == 3 * (2 * 10 + 100) / 12
    # A draft whose every proposal is kept starts its next round with a 2-token pass (its last proposal, never fed
    # to it, and the target's token): with t(2) = 14 ms, each round of 4 drafted tokens pays 4 ms more.
    catching_up = CostModel({**times, "draft": {1: 10.0, 2: 14.0, 25: 14.0}}, {("target", "draft"): agrees})
    assert catching_up.cost_per_token(["target", "draft"], {"draft": (4, 0.0, 0)}) == (2 * (4 * 10 + 4) + 2 * 100) / 10
    # Rejected drafts roll back to what was kept and read only the target's token: no catch-up pass.
    rejected = CostModel({**times, "draft": {1: 10.0, 2: 14.0, 25: 14.0}}, {("target", "draft"): streaks})
    assert rejected.cost_per_token(["target", "draft"], {"draft": (4, 0.0, 0)}) == ((4 + 4 + 4 + 3) * 10 + 4 * 100) / 12


def test_tune_stores_a_choice_that_generate_then_uses(tiny_export, tmp_path, capsys, monkeypatch):
    import shutil

    from specqd.runtime.manifest import Manifest
    from specqd.runtime.pipeline import ExportFolder
    from specqd.runtime.tools import tune

    monkeypatch.setattr(tune, "computes_in_bf16", lambda: True)  # so the choice of draft precision runs on any CPU
    copy = shutil.copytree(tiny_export, tmp_path / "copy")
    assert cli.main(["tune", str(copy), "--prompts", "humaneval:0-0", "--max-new-tokens", "12"]) == 0
    tuned = Manifest.read(copy).tuned
    assert tuned["chain"][0] == "target" and set(tuned["k"]) == set(tuned["chain"][1:])
    assert tuned["measured_tokens_per_second"] > 0 and "target>draft" in tuned["agreement"]
    assert "predicted" in capsys.readouterr().out
    pipeline = ExportFolder(copy).pipeline()
    assert pipeline.chain == tuned["chain"]
    # Drafts it measured faster in f32 run so from now on; the target keeps the folder's precision.
    assert "target" not in tuned["precision"] and set(tuned["precision"].values()) <= {"f32"}
    assert {name: pipeline.folder.precision_of(name) for name in tuned["precision"]} == tuned["precision"]
    assert [(pipeline.controls[name].k, pipeline.controls[name].confidence) for name in pipeline.chain[1:]] == \
        [(tuned["k"][name], tuned["confidence"][name]) for name in tuned["chain"][1:]]
    # Every chain the search covered runs with its own best settings, not just the chosen one.
    other = next(chain for chain in tuned["k_by_chain"] if chain != ",".join(tuned["chain"]))
    controls = ExportFolder(copy).default_controls(other.split(","))
    assert {name: c.k for name, c in controls.items()} == tuned["k_by_chain"][other]
    assert {name: c.confidence for name, c in controls.items()} == tuned["confidence_by_chain"][other]
    assert {name: c.extend for name, c in controls.items()} == tuned["extend_by_chain"][other]


def test_tune_keeps_drafts_in_the_folders_precision_where_the_cpu_computes_bf16_in_f32(tiny_export, monkeypatch):
    from specqd.runtime.pipeline import ExportFolder
    from specqd.runtime.tools import tune

    monkeypatch.setattr(tune, "computes_in_bf16", lambda: False)
    folder = ExportFolder(tiny_export)
    times = {"target": {1: 100.0}, "draft": {1: 10.0}}
    assert tune.choose_precisions(folder, times, folder.encode("def f(x):")) == {}
    assert folder.precision_of("draft") == "bf16" and times["draft"] == {1: 10.0}


def test_profile_prints_step_times_per_level_as_json(tiny_export, capsys):
    assert cli.main(["profile", str(tiny_export), "--levels", "target,draft", "--tokens", "1,4", "--json"]) == 0
    levels = json.loads(capsys.readouterr().out)["levels"]
    assert [level["name"] for level in levels] == ["target", "draft"]
    assert all(level["kernel"] and set(level["step_ms"]) == {"1", "4"} for level in levels)
    assert all(level["prompt_read_ms"] > 0 for level in levels)


def test_an_interrupted_bench_resumes_from_its_journal(tiny_export, tmp_path, monkeypatch):
    from specqd.runtime.tools import bench

    monkeypatch.setattr(bench, "BLOCK", 2)
    report = tmp_path / "bench.json"
    argv = ["bench", str(tiny_export), "--prompts", "humaneval:0-2", "--max-new-tokens", "6",
            "--configs", "target,target-int8", "--f32-prompts", "0", "--json", str(report)]
    measure = bench.ConfigRun.measure
    calls = []

    def interrupted_in_the_second_block(self, prompts, max_new_tokens, sampling):
        calls.append(prompts)
        if len(calls) == 5:  # 2 warm-ups, 2 configurations on prompts 1-2, then the first on prompt 3
            raise KeyboardInterrupt
        return measure(self, prompts, max_new_tokens, sampling)

    monkeypatch.setattr(bench.ConfigRun, "measure", interrupted_in_the_second_block)
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv)
    journal = bench.journal_path(report)
    assert len(journal.read_text().splitlines()) == 3  # the settings, then prompts 1 and 2
    calls.clear()
    assert cli.main(argv) == 0
    assert len(calls) == 2 + 2  # warm-ups, then both configurations on prompt 3 only
    assert all(len(prompts) == 1 for prompts in calls)
    result = json.loads(report.read_text())
    assert result["prompts"] == 3 and result["configs"][0]["agreement"] == 1.0
    assert len(result["configs"][1]["seconds_by_prompt"]) == 3
    assert not journal.exists()
