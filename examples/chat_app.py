"""A terminal chat window on specqd's runtime: the answer streams in as the target accepts tokens, the status
line shows tokens/s and every draft level's acceptance while it grows, and Escape stops it mid-answer.

    pip install "specqd[app]"        # the runtime, the chat template renderer and Textual
    python examples/chat_app.py ~/.cache/specqd/exports/qwen2.5-coder-1.5b [--chain target,draft-int4_sym]

Generation runs in a worker thread so the window stays responsive; Escape calls `Pipeline.cancel()` from the
window's thread, and the pipeline is ready for the next question as soon as the answer stops.
"""

from __future__ import annotations

import argparse

from textual import work
from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Footer, Input, Static

from specqd.runtime.pipeline import Pipeline


class ChatApp(App):
    CSS = """
    #conversation { height: 1fr; }
    .user { color: $accent; margin-top: 1; }
    #status { height: 1; background: $boost; }
    """
    BINDINGS = [("escape", "cancel", "stop the answer"), ("ctrl+q", "quit", "quit")]

    def __init__(self, pipe: Pipeline, max_new_tokens: int = 512):
        super().__init__()
        self.pipe = pipe
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict[str, str]] = []

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="conversation")
        yield Static(f"chain {','.join(self.pipe.chain)}: ask something", id="status", markup=False)
        yield Input(placeholder="Ask, then Enter. Escape stops the answer.")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            return
        self.messages.append({"role": "user", "content": event.value})
        conversation = self.query_one("#conversation")
        conversation.mount(Static(f"> {event.value}", classes="user", markup=False))
        answer = Static("", classes="answer", markup=False)  # model text is not Textual markup
        conversation.mount(answer)
        event.input.value = ""
        event.input.disabled = True
        self.answer(answer)

    @work(thread=True, exclusive=True)
    def answer(self, widget: Static) -> None:
        prompt = self.pipe.folder.apply_chat_template(self.messages)
        text = ""
        for piece in self.pipe.stream(prompt, max_new_tokens=self.max_new_tokens):
            text += piece
            self.call_from_thread(self.show, widget, text, status_line(self.pipe.progress()))
        result = self.pipe.last_result
        self.messages.append({"role": "assistant", "content": result.text})
        self.call_from_thread(self.show, widget, result.text,
                              status_line(result.stats) + f"  [{result.finish_reason}]")
        self.call_from_thread(self.ready)

    def show(self, widget: Static, text: str, status: str) -> None:
        widget.update(text)
        self.query_one("#status", Static).update(status)
        self.query_one("#conversation").scroll_end(animate=False)

    def ready(self) -> None:
        self.query_one(Input).disabled = False
        self.query_one(Input).focus()

    def action_cancel(self) -> None:
        self.pipe.cancel()


def status_line(stats: dict) -> str:
    """tokens/s, then each draft level's share of accepted tokens (the target's drafters, top down)."""
    levels = [f"{level['level']} loading" if level["kernel"] == "loading" else
              f"{level['level']} {level['acceptance_rate']:.0%}" for level in stats["levels"][1:]
              if level["kernel"] == "loading" or level["acceptance_rate"] is not None]
    return f"{stats['new_tokens']} tokens, {stats['tokens_per_second']:.1f} tok/s  " + "  ".join(levels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="a folder made by export-mxfp4")
    parser.add_argument("--chain", help="levels from the target down (default: what `specqd tune` chose)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    args = parser.parse_args()
    # The window opens once the target is ready; the draft levels load meanwhile and join when loaded.
    with Pipeline.load(args.export, chain=args.chain, background=True) as pipe:
        ChatApp(pipe, args.max_new_tokens).run()


if __name__ == "__main__":
    main()
