"""examples/chat_app.py driven as a person would, headless through Textual's own test pilot: type a question,
watch the answer stream in, press Escape mid-answer."""

import asyncio
import sys
import time
from pathlib import Path

import pytest

from specqd.runtime.pipeline import Pipeline

pytest.importorskip("textual", reason="the example app needs the app extra (pip install 'specqd[app]')")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from chat_app import ChatApp  # noqa: E402
from textual.widgets import Input, Static  # noqa: E402

QUESTION = "Write a function that adds two numbers"


async def ask(pilot, question: str, until, seconds: float = 60) -> None:
    """Type the question, press Enter, and wait (bounded) until `until()` holds."""
    await pilot.press(*question, "enter")
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "the app did not get there in time"
        await pilot.pause(0.05)


def texts(app, selector: str) -> list[str]:
    return [str(widget.content) for widget in app.query(selector)]


def shown_answers(app: ChatApp) -> list[str]:
    """Record every text the app puts in an answer widget, as the user sees it grow."""
    seen, show = [], app.show

    def recording(widget, text, status):
        seen.append(text)
        show(widget, text, status)
    app.show = recording
    return seen


def at_human_speed(pipe: Pipeline, seconds: float = 0.02) -> Pipeline:
    """The tiny model answers in a blink; its steps are slowed so that a key press can land mid-answer."""
    step = pipe.runner.step
    pipe.runner.step = lambda generations, caps=None: (time.sleep(seconds), step(generations, caps))[1]
    return pipe


def test_the_answer_streams_in_and_is_the_pipelines_own_text(tiny_export):
    pipe = Pipeline.load(tiny_export, chain="target,draft", precision="f32")
    prompt = pipe.folder.apply_chat_template([{"role": "user", "content": QUESTION}])
    expected = Pipeline.load(tiny_export, chain="target", precision="f32").generate(prompt, max_new_tokens=24).text
    app = ChatApp(pipe, max_new_tokens=24)
    seen = shown_answers(app)

    async def drive():
        async with app.run_test() as pilot:
            await ask(pilot, QUESTION, lambda: not app.query_one(Input).disabled)
            assert texts(app, ".user") == [f"> {QUESTION}"]
            assert texts(app, ".answer") == [expected]
            status = str(app.query_one("#status", Static).content)
            assert "tok/s" in status and "draft" in status and "[length]" in status
    asyncio.run(drive())
    assert len(set(seen)) > 2 and all(expected.startswith(text) for text in seen), "piece by piece, never retracted"


def test_escape_stops_the_answer_and_the_next_question_is_answered(tiny_export):
    pipe = at_human_speed(Pipeline.load(tiny_export, chain="target,draft", precision="f32"))
    app = ChatApp(pipe, max_new_tokens=400)

    async def drive():
        async with app.run_test() as pilot:
            await ask(pilot, QUESTION, lambda: any(texts(app, ".answer")))
            await pilot.press("escape")
            await ask(pilot, "", lambda: not app.query_one(Input).disabled)
            assert "[cancelled]" in str(app.query_one("#status", Static).content)
            app.max_new_tokens = 6
            await ask(pilot, "Again", lambda: len(texts(app, ".answer")) == 2 and not app.query_one(Input).disabled)
            assert "[length]" in str(app.query_one("#status", Static).content)
    asyncio.run(drive())
    assert pipe.last_result.finish_reason == "length"
    assert set(model.blocks_used for model in pipe.folder.loaded_models().values()) == {0}
