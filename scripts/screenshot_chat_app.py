"""The example chat app (examples/chat_app.py) on a real export, driven headless by Textual's pilot: one
question answered in full, one stopped with Escape; the window is saved as an SVG screenshot after each.

    .venv/bin/python scripts/screenshot_chat_app.py ~/.cache/specqd/exports/qwen2.5-coder-1.5b docs/chat-app.svg
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from chat_app import ChatApp  # noqa: E402
from textual.widgets import Input  # noqa: E402

from specqd.runtime.pipeline import Pipeline  # noqa: E402


async def drive(app: ChatApp, screenshot: Path) -> None:
    """One answer in full (saved as SCREENSHOT), then one stopped by Escape (saved beside it, -stopped)."""
    stopped = screenshot.with_name(f"{screenshot.stem}-stopped{screenshot.suffix}")
    async with app.run_test(size=(100, 32)) as pilot:
        for question, stop_after, picture in (
                ("Write a Python function that checks whether a number is prime.", None, screenshot),
                ("Now write it in Rust.", 8.0, stopped)):
            await pilot.press(*question, "enter")
            await pilot.pause(stop_after or 0.1)
            if stop_after:
                await pilot.press("escape")
            for _ in range(1200):  # at most two minutes per answer
                if not app.query_one(Input).disabled:
                    break
                await pilot.pause(0.1)
            app.save_screenshot(picture.name, str(picture.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("screenshot", type=Path)
    parser.add_argument("--chain")
    args = parser.parse_args()
    with Pipeline.load(args.export, chain=args.chain) as pipe:
        asyncio.run(drive(ChatApp(pipe, max_new_tokens=160), args.screenshot))
    print(f"wrote {args.screenshot} and its -stopped twin")


if __name__ == "__main__":
    main()
