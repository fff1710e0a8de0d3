"""Command-line values checked as they are parsed, so that every bad option is one line that names it
(`specqd: error: argument --k: ...`) and fails before any model is compiled."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one `specqd: error: ...` line instead of the usage text and a second line."""

    def error(self, message: str) -> NoReturn:
        print(f"specqd: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value
    return parse


def real(allowed: Callable[[float], bool], requirement: str) -> Callable[[str], float]:
    """A number for which `allowed` holds; `requirement` says which, e.g. "in (0, 1]"."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not allowed(value):
            raise argparse.ArgumentTypeError(f"{value:g} must be {requirement}")
        return value
    return parse


def per_level(kind: Callable[[str], object]) -> Callable[[str], dict[str, object]]:
    """"8" applies to every level ("*"); "target-mxfp4=8,draft=4" sets levels by name."""
    def parse(text: str) -> dict[str, object]:
        if "=" not in text:
            return {"*": kind(text)}
        values = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            if not name.strip() or not value:
                raise argparse.ArgumentTypeError(f"{part!r}: write LEVEL=VALUE, e.g. draft=4")
            values[name.strip()] = kind(value)
        return values
    return parse


def integers(minimum: int) -> Callable[[str], list[int]]:
    """A comma-separated list of whole numbers, each at least `minimum`."""
    one = integer(minimum)
    return lambda text: [one(part) for part in text.split(",")]
