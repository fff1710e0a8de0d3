"""Loading a chain's draft levels in the background while the target already generates (Pipeline.load's
`background`): same tokens, the drafts join when loaded, a failed load is not swallowed."""

import threading

import pytest

from specqd.runtime.pipeline import ExportFolder, Pipeline

PROMPT = "def fibonacci(n: int) -> int:"
CHAIN = "target,target-int8,draft,lookup"


def held_back(monkeypatch) -> threading.Event:
    """Keep every level but the target loading until the returned event is set."""
    release = threading.Event()
    load = ExportFolder._load

    def slow_load(self, name, warm_up=False):
        if name != "target":
            assert release.wait(60), "the test never released the draft levels"
        return load(self, name, warm_up)

    monkeypatch.setattr(ExportFolder, "_load", slow_load)
    return release


def test_drafts_that_join_mid_generation_change_no_token(tiny_export, monkeypatch):
    expected = Pipeline.load(tiny_export, chain="target", precision="f32").generate(PROMPT, max_new_tokens=40).tokens
    release = held_back(monkeypatch)
    pipe = Pipeline.load(tiny_export, chain=CHAIN, precision="f32", background=True)
    pieces = 0
    for _ in pipe.stream(PROMPT, max_new_tokens=40):
        pieces += 1
        if pieces == 3:  # the target has generated alone so far
            assert [level["kernel"] for level in pipe.progress()["levels"]][1:] == ["loading", "loading", "-"]
            assert pipe.progress()["levels"][1]["drafted"] == 0
            release.set()
            pipe.wait_loaded()  # they join at the next step
    assert pipe.last_result.tokens == expected
    levels = {level["level"]: level for level in pipe.last_result.stats["levels"]}
    assert levels["target-int8"]["drafted"] > 0 and levels["draft"]["drafted"] > 0
    assert all(level["kernel"] != "loading" for level in levels.values())
    assert pipe.generate(PROMPT, max_new_tokens=40).tokens == expected


def test_background_levels_are_compiled_and_warmed_up_with_their_load_times(tiny_export):
    pipe = Pipeline.load(tiny_export, chain=CHAIN, precision="f32", background=True)
    pipe.wait_loaded()
    models = pipe.folder.loaded_models()
    assert set(models) == {"target", "target-int8", "draft"}
    for name in ("target-int8", "draft"):
        times = models[name].load_times
        assert times.compile > 0 and times.warm_up > 0, name
        assert models[name].blocks_used == 0  # the warm-up pass gave its blocks back
    assert models["target"].load_times.warm_up > 0  # before the drafts began to load
    opened = pipe.folder.open_times
    assert opened.tokenizers > 0


def test_a_level_that_fails_to_load_in_the_background_raises_when_the_chain_steps(tiny_export, monkeypatch):
    load = ExportFolder._load

    def failing_load(self, name, warm_up=False):
        if name == "draft":
            raise RuntimeError("draft: corrupt IR")
        return load(self, name, warm_up)

    monkeypatch.setattr(ExportFolder, "_load", failing_load)
    pipe = Pipeline.load(tiny_export, chain="target,draft", precision="f32", background=True)
    with pytest.raises(RuntimeError, match="corrupt IR"):
        pipe.wait_loaded()
    with pytest.raises(RuntimeError, match="corrupt IR"):
        pipe.generate(PROMPT, max_new_tokens=8)


def test_closing_while_drafts_load_waits_for_them_and_frees_every_model(tiny_export, monkeypatch):
    release = held_back(monkeypatch)
    pipe = Pipeline.load(tiny_export, chain=CHAIN, precision="f32", background=True)
    threading.Timer(0.5, release.set).start()
    pipe.close()
    assert pipe.folder.loaded_models() == {}
