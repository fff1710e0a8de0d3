"""The runtime on a tiny export: every chain reproduces the target alone, greedy and in distribution."""

import json
import shutil
import subprocess
import sys
import threading
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from specqd.runtime import cli, kvmodel
from specqd.runtime.generation import IncrementalText
from specqd.runtime.pipeline import ExportFolder, GenerationError, Pipeline, eos_ids
from specqd.runtime.sampling import Sampling
from specqd.runtime.speculative import DraftControls

PROMPTS = ["def fibonacci(n: int) -> int:", "The quick brown fox jumps over"]


def tokens(folder, chain, prompt, n=40, precision="f32", **options):
    return Pipeline.load(folder, chain=chain, precision=precision, **options).generate(prompt, max_new_tokens=n).tokens


CHAINS = ["target,target-int8", "target,target-mxfp4", "target,draft", "target,target-int8,target-mxfp4",
          "target,target-mxfp4,draft", "target,target-int8,target-mxfp4,draft", "target,lookup",
          "target,target-int8,lookup", "target,target-mxfp4,target-int8,draft,lookup"]


@pytest.mark.parametrize("chain", CHAINS)
def test_greedy_chains_of_any_depth_give_the_targets_own_tokens_in_f32(tiny_export, chain):
    for prompt in PROMPTS:
        assert tokens(tiny_export, chain, prompt) == tokens(tiny_export, "target", prompt)


@pytest.mark.parametrize("controls", [
    {"target-int8": DraftControls(k=3), "target-mxfp4": DraftControls(k=5, confidence=0.3)},
    {"target-int8": DraftControls(k=2, adaptive=True), "target-mxfp4": DraftControls(k=1, adaptive=True)},
    {"target-int8": DraftControls(k=2, extend=3), "target-mxfp4": DraftControls(k=4, confidence=0.5, extend=2)},
])
def test_drafting_controls_change_speed_not_tokens(tiny_export, controls):
    chain = "target,target-int8,target-mxfp4"
    assert tokens(tiny_export, chain, PROMPTS[0], controls=controls) == tokens(tiny_export, "target", PROMPTS[0])


def test_an_unsure_draft_token_is_proposed_and_ends_the_proposal(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,draft", precision="f32",
                         controls={"draft": DraftControls(k=6, confidence=0.9999)})
    result = pipe.generate(PROMPTS[0], max_new_tokens=20)
    assert result.tokens == tokens(tiny_export, "target", PROMPTS[0], n=20)
    assert len(result.stats["levels"][1]["acceptance_by_position"]) == 1  # random weights: never that sure


def test_a_level_that_stops_drafting_extends_its_proposal_with_lookup_guesses(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,draft", precision="f32",
                         controls={"draft": DraftControls(k=6, confidence=0.9999, extend=3)})
    result = pipe.generate(PROMPTS[0], max_new_tokens=40)
    assert result.tokens == tokens(tiny_export, "target", PROMPTS[0])
    assert len(result.stats["levels"][1]["acceptance_by_position"]) > 1  # the unsure token, then the guesses


def test_requests_that_share_a_batch_with_lookup_guesses_each_get_their_solo_tokens(tiny_export):
    folder = ExportFolder(tiny_export, precision="f32")
    chain = folder.pipeline("target,draft").runner
    controls = {"draft": DraftControls(k=4, confidence=0.5, extend=3)}
    jobs = [(PROMPTS[0], 30), (PROMPTS[1], 17), (PROMPTS[0] + " return", 24)]
    generations = [chain.start(folder.encode(prompt), n, Sampling(), (), controls) for prompt, n in jobs]
    while any(not g.finished for g in generations):
        chain.step([g for g in generations if not g.finished])
    assert [g.generated for g in generations] == [tokens(tiny_export, "target", prompt, n) for prompt, n in jobs]


def test_quantized_copies_of_the_target_take_its_prompt_cache_instead_of_reading_the_prompt(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,target-int8,target-mxfp4,draft", precision="f32")
    prompt = " ".join(PROMPTS) * 6
    prompt_tokens = len(pipe.folder.encode(prompt))
    result = pipe.generate(prompt, max_new_tokens=12)
    assert result.tokens == tokens(tiny_export, "target", prompt, n=12)
    assert [level.name for level in pipe.runner.prompt_sharers] == ["target-int8", "target-mxfp4"]
    computed = {level["level"]: level["tokens_computed"] for level in result.stats["levels"]}
    assert computed["target-int8"] < prompt_tokens / 2 and computed["target-mxfp4"] < prompt_tokens / 2
    assert computed["draft"] > prompt_tokens  # another model reads the prompt itself


def test_drafts_tune_found_faster_in_f32_run_in_f32_beside_a_bf16_target(tiny_export, tmp_path):
    copy = shutil.copytree(tiny_export, tmp_path / "copy")
    manifest = json.loads((copy / "specqd.json").read_text())
    manifest["tuned"] = {"chain": ["target", "draft"], "precision": {"draft": "f32"}}
    (copy / "specqd.json").write_text(json.dumps(manifest))

    def precision(folder, name):
        """The precision the level was compiled for. OpenVINO reports the inference precision it computes in (f32
        on a CPU without bf16 arithmetic) but the KV cache precision as asked: f16 beside bf16, f32 beside f32."""
        kv_cache = folder.model(name).compiled.get_property("KV_CACHE_PRECISION").get_type_name()
        return {"f16": "bf16", "f32": "f32"}[kv_cache]

    folder = ExportFolder(copy)
    assert (precision(folder, "target"), precision(folder, "draft"), precision(folder, "target-int8")) == \
        ("bf16", "f32", "bf16")
    # Asked for f32 (the exactness check), every level runs in f32 whatever tune chose.
    assert {precision(ExportFolder(copy, precision="f32"), name) for name in ("target", "draft")} == {"f32"}
    # A level whose precision changes is compiled again; the others stay as they are.
    target = folder.model("target")
    folder.set_draft_precisions({"target-int8": "f32"})
    assert (precision(folder, "draft"), precision(folder, "target-int8")) == ("bf16", "f32")
    assert folder.model("target") is target
    with pytest.raises(GenerationError, match="only draft levels"):
        folder.set_draft_precisions({"target": "f32"})
    assert ExportFolder(copy).pipeline().generate(PROMPTS[0], max_new_tokens=8).tokens


def test_growing_the_kv_cache_keeps_tokens_exact(tiny_export, monkeypatch):
    monkeypatch.setattr(kvmodel, "FIRST_CAPACITY", kvmodel.BLOCK)  # grows at 32, 64 and 128 positions
    chain = "target,target-mxfp4,draft"
    assert tokens(tiny_export, chain, PROMPTS[1], n=60) == tokens(tiny_export, "target", PROMPTS[1], n=60)


def test_stats_account_for_every_drafted_and_accepted_token(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,target-int8,lookup")
    result = pipe.generate(PROMPTS[0], max_new_tokens=40)
    target, middle, lookup = result.stats["levels"]
    assert result.stats["new_tokens"] == len(result.tokens) == 40
    assert target["drafted"] == 0 and middle["drafted"] > 0
    assert 0 < middle["accepted"] <= middle["drafted"]
    assert middle["acceptance_by_position"][0] >= middle["acceptance_by_position"][-1]
    assert target["mean_accepted_length"] > 1  # the draft pays: more than one token per target pass
    assert target["forward_passes"] < 40
    assert lookup["forward_passes"] == 0
    assert result.stats["tokens_per_second"] > 0 and result.stats["peak_memory_mb"] > 0


def test_streaming_yields_the_text_piece_by_piece(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,target-int8")
    pieces = list(pipe.stream(PROMPTS[0], max_new_tokens=30))
    assert len(pieces) > 1 and "".join(pieces) == pipe.last_result.text
    assert pipe.last_result.text == pipe.folder.decode(pipe.last_result.tokens)


def test_incremental_text_is_always_a_prefix_of_the_whole_decode_and_ends_equal_to_it(tiny_export):
    """Random ids split multi-byte characters and spaces every way a model's output could."""
    folder = ExportFolder(tiny_export)
    rng = np.random.default_rng(0)
    for _ in range(5):
        tokens = [int(t) for t in rng.integers(0, folder.vocabulary_size - 20, 200)]
        text, shown, windows = IncrementalText(), "", []
        counting = lambda ids: windows.append(len(ids)) or folder.decode(ids)  # noqa: E731
        for end in range(1, len(tokens) + 1):
            now = text.update(tokens[:end], counting)
            assert now.startswith(shown) and folder.decode(tokens[:end]).startswith(now)
            shown = now
        assert text.update(tokens, folder.decode, final=True) == folder.decode(tokens)
        assert max(windows) < len(tokens) / 3  # a window of the latest tokens, never the whole text


def blocks_in_use(pipe: Pipeline) -> dict[str, int]:
    return {name: model.blocks_used for name, model in pipe.folder.loaded_models().items()}


def test_a_consumer_that_stops_iterating_leaves_the_pipeline_ready_for_the_next_prompt(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,target-int8,draft", precision="f32")
    for count, _ in enumerate(pipe.stream(PROMPTS[0], max_new_tokens=40)):
        if count == 2:
            break
    assert set(blocks_in_use(pipe).values()) == {0}
    assert pipe.generate(PROMPTS[1], max_new_tokens=12).tokens == tokens(tiny_export, "target", PROMPTS[1], n=12)


def test_cancel_from_another_thread_ends_the_generation_and_frees_its_blocks(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,draft", precision="f32")
    pieces = []
    for piece in pipe.stream(PROMPTS[0], max_new_tokens=200):
        pieces.append(piece)
        if len(pieces) == 1:
            canceller = threading.Thread(target=pipe.cancel)
            canceller.start()
            canceller.join()
    result = pipe.last_result
    assert result.finish_reason == "cancelled" and len(result.tokens) < 200 and "".join(pieces) == result.text
    assert set(blocks_in_use(pipe).values()) == {0}
    assert pipe.generate(PROMPTS[1], max_new_tokens=12).finish_reason == "length"


def test_a_closed_pipeline_refuses_to_generate_with_a_clear_error(tiny_export):
    with Pipeline.load(tiny_export, chain="target,draft") as pipe:
        pipe.generate(PROMPTS[0], max_new_tokens=4)
    assert pipe.folder.loaded_models() == {}
    with pytest.raises(GenerationError, match="was closed"):
        pipe.generate(PROMPTS[0], max_new_tokens=4)


def test_a_stop_string_ends_the_text_before_it(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,target-int8")
    full = pipe.generate(PROMPTS[0], max_new_tokens=30).text
    stop = full[10:13]
    text = pipe.generate(PROMPTS[0], max_new_tokens=30, stop=(stop,)).text
    assert text == full[:full.find(stop)]


def test_a_stop_string_spanning_several_steps_never_shows_its_start(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target")  # one token per step: a 3-token stop string spans 3 steps
    full = pipe.generate(PROMPTS[0], max_new_tokens=30).text
    generated = pipe.last_result.tokens
    stop = full[len(pipe.folder.decode(generated[:5])):len(pipe.folder.decode(generated[:8]))]
    pieces = list(pipe.stream(PROMPTS[0], max_new_tokens=30, stop=(stop,)))
    assert "".join(pieces) == pipe.last_result.text == full[:full.find(stop)]
    assert pipe.last_result.finish_reason == "stop"


def test_text_held_back_as_a_possible_stop_string_is_shown_when_it_is_not_one(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,target-int8")
    full = pipe.generate(PROMPTS[0], max_new_tokens=30).text
    pieces = list(pipe.stream(PROMPTS[0], max_new_tokens=30, stop=(full[-2:] + "\x00never",)))
    assert "".join(pieces) == full and pipe.last_result.finish_reason == "length"


def test_a_raw_completion_ends_at_the_tokenizers_eos_token_as_well_as_the_configs(tiny_export, tmp_path):
    target = tiny_export / "target"
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        shutil.copy(target / name, tmp_path / name)
    vocab = json.loads((target / "tokenizer.json").read_text())["added_tokens"]
    ids = {token["content"]: token["id"] for token in vocab}
    for name in ("config.json", "generation_config.json"):  # as Qwen's instruct models: chat turns end at <|im_end|>
        config = json.loads((tmp_path / name).read_text())
        (tmp_path / name).write_text(json.dumps(config | {"eos_token_id": ids["<|im_end|>"]}))
    assert eos_ids(tmp_path) == {ids["<|im_end|>"], ids["<|endoftext|>"]}


def test_chat_prompts_are_rendered_with_the_models_own_template(tiny_export, capsys):
    folder = ExportFolder(tiny_export)
    user = [{"role": "user", "content": "hi"}]
    assert folder.apply_chat_template(user) == ("<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
                                                "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert folder.apply_chat_template([{"role": "system", "content": "Be brief."}] + user).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")
    with pytest.raises(GenerationError, match="messages\\[0\\].role 'robot'"):
        folder.apply_chat_template([{"role": "robot", "content": "hi"}])
    assert cli.main(["generate", str(tiny_export), "--prompt", "hi", "--chat", "--chain", "target", "--json",
                     "--max-new-tokens", "8", "--precision", "f32"]) == 0
    chat_tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert chat_tokens == tokens(tiny_export, "target", folder.apply_chat_template(user), n=8)


def draw_pairs(folder, chain, runs, sampling, tokens=2, controls=None):
    pipe = Pipeline.load(folder, chain=chain, precision="f32", controls=controls)
    return Counter(tuple(pipe.generate(PROMPTS[0], max_new_tokens=tokens,
                                       sampling=Sampling(seed=seed, **sampling)).tokens) for seed in range(runs))


def same_distribution_p_value(a: Counter, b: Counter) -> float:
    keys = sorted(set(a) | set(b), key=lambda key: -(a[key] + b[key]))
    common, rare = keys[:30], keys[30:]  # pool rare outcomes so every cell has a fair count
    table = [[a[k] for k in common] + [sum(a[k] for k in rare)], [b[k] for k in common] + [sum(b[k] for k in rare)]]
    table = np.array(table)[:, np.array(table).sum(axis=0) > 0]
    return chi2_contingency(table)[1]


def test_speculative_sampling_keeps_the_targets_distribution(tiny_export):
    """Two-token outputs over 800 seeds: chains against target alone (chi-square), with a power check."""
    sampling = {"temperature": 0.6, "top_k": 6}
    alone = draw_pairs(tiny_export, "target", 800, sampling)
    for chain in ("target,target-int8,target-mxfp4", "target,draft,lookup"):
        assert same_distribution_p_value(draw_pairs(tiny_export, chain, 800, sampling), alone) > 1e-3, chain
    # Three tokens leave room for a lookup guess after the draft's unsure first token.
    extended = draw_pairs(tiny_export, "target,draft", 800, sampling, tokens=3,
                          controls={"draft": DraftControls(k=2, confidence=0.9999, extend=1)})
    assert same_distribution_p_value(extended, draw_pairs(tiny_export, "target", 800, sampling, tokens=3)) > 1e-3
    # The test can fail: the draft's own distribution is told apart from the target's.
    assert same_distribution_p_value(draw_pairs(tiny_export, "draft", 800, sampling), alone) < 1e-6


def test_a_fixed_seed_reproduces_its_sample(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,target-int8,lookup")
    sampling = Sampling(temperature=1.0, top_p=0.9, seed=7)
    first = pipe.generate(PROMPTS[1], max_new_tokens=20, sampling=sampling).tokens
    assert pipe.generate(PROMPTS[1], max_new_tokens=20, sampling=sampling).tokens == first
    assert pipe.generate(PROMPTS[1], max_new_tokens=20, sampling=Sampling(temperature=1.0, seed=8)).tokens != first


@pytest.mark.parametrize("chain, message", [
    ("draft,target", "top must be the target"),
    ("lookup", "cannot generate on its own"),
    ("target,nonexistent", "unknown level 'nonexistent'"),
    ("target,lookup,draft", "must come last"),
    ("target,draft,draft", "appears twice"),
])
def test_bad_chains_are_refused(tiny_export, chain, message):
    with pytest.raises(Exception, match=message):
        Pipeline.load(tiny_export, chain=chain)


def test_levels_with_different_tokenizers_are_refused(tiny_export, tmp_path):
    copy = shutil.copytree(tiny_export, tmp_path / "copy")
    manifest = json.loads((copy / "specqd.json").read_text())
    manifest["levels"][-1]["tokenizer_sha256"] = "0" * 64
    (copy / "specqd.json").write_text(json.dumps(manifest))
    with pytest.raises(GenerationError, match="different tokenizers"):
        Pipeline.load(copy, chain="target,draft")


@pytest.mark.parametrize("prompt, options, message", [
    ("", {}, "prompt is empty"),
    ("word " * 600, {}, "exceeds the model's context of 512"),
    ("hello", {"sampling": Sampling(temperature=-1)}, "temperature"),
    ("hello", {"sampling": Sampling(temperature=1, top_p=0)}, "top_p"),
    ("hello", {"sampling": Sampling(temperature=1, top_k=-2)}, "top_k"),
    ("hello", {"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_generation_input_is_refused(tiny_export, prompt, options, message):
    pipe = Pipeline.load(tiny_export, chain="target,draft")
    with pytest.raises(GenerationError, match=message):
        pipe.generate(prompt, **options)


def test_the_cli_streams_or_prints_json_and_fails_clearly(tiny_export, tmp_path, capsys):
    assert cli.main(["generate", str(tiny_export), "--prompt", PROMPTS[0], "--max-new-tokens", "12",
                     "--chain", "target,target-int8", "--json", "--precision", "f32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tokens"] == tokens(tiny_export, "target", PROMPTS[0], n=12)
    assert {"text", "tokens", "stats"} <= set(printed)
    assert cli.main(["generate", str(tmp_path), "--prompt", "x"]) == 1
    assert "not a specqd export" in capsys.readouterr().err


@pytest.mark.parametrize("options, option", [
    (["--k", "0"], "--k"), (["--k", "draft=0"], "--k"), (["--k", "draft"], "--k"), (["--k", "x=1,"], "--k"),
    (["--confidence", "1.5"], "--confidence"), (["--confidence", "draft=-0.1"], "--confidence"),
    (["--top-p", "0"], "--top-p"), (["--top-p", "1.2"], "--top-p"), (["--temperature", "-1"], "--temperature"),
    (["--temperature", "inf"], "--temperature"), (["--top-k", "-1"], "--top-k"), (["--seed", "-3"], "--seed"),
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--max-new-tokens", "ten"], "--max-new-tokens"),
    (["--precision", "fp8"], "--precision"),
])
def test_every_bad_generate_option_is_one_line_that_names_it(tiny_export, capsys, options, option):
    with pytest.raises(SystemExit) as exit:
        cli.main(["generate", str(tiny_export), "--prompt", "x", *options])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"specqd: error: argument {option}")


@pytest.mark.parametrize("argv, option", [
    (["profile", "{export}", "--tokens", "1,0"], "--tokens"), (["profile", "{export}", "--tokens", "1,a"], "--tokens"),
    (["serve", "{export}", "--threads", "-1"], "--threads"), (["serve", "{export}", "--max-batch", "0"], "--max-batch"),
    (["serve", "{export}", "--port", "70000"], "--port"), (["bench", "{export}", "--limit", "0"], "--limit"),
])
def test_bad_options_of_the_other_commands_are_one_line_too(tiny_export, capsys, argv, option):
    with pytest.raises(SystemExit):
        cli.main([part.format(export=tiny_export) for part in argv])
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"specqd: error: argument {option}")


@pytest.mark.parametrize("argv, option", [
    (["profile", "{export}", "--levels", "target,nope"], "--levels"),
    (["generate", "{export}", "--prompt", "x", "--chain", "target,nope"], "--chain"),
    (["generate", "{export}", "--prompt", "x", "--chain", "target,draft", "--k", "target-int8=3"], "--k"),
])
def test_options_that_name_levels_the_export_lacks_fail_with_one_line(tiny_export, capsys, argv, option):
    assert cli.main([part.format(export=tiny_export) for part in argv]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"specqd: error: {option}")


def test_one_thread_generates_the_same_tokens_as_two(tiny_export):
    """In a child process: OpenVINO 2026.4.1 dies of SIGFPE compiling bf16 for one core of an AMX CPU."""
    script = ("import sys; from specqd.runtime.pipeline import Pipeline; "
              "print(Pipeline.load(sys.argv[1], chain='target,draft', threads=1)"
              ".generate(sys.argv[2], max_new_tokens=12).tokens)")
    child = subprocess.run([sys.executable, "-c", script, str(tiny_export), PROMPTS[0]], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    two = Pipeline.load(tiny_export, chain="target,draft", threads=2).generate(PROMPTS[0], max_new_tokens=12).tokens
    assert child.stdout.strip() == str(two)


def test_the_runtime_imports_without_torch_transformers_or_nncf():
    code = ("import sys, specqd.runtime.pipeline, specqd.runtime.cli; "
            "print([m for m in ('torch', 'transformers', 'nncf', 'optimum') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
