"""Argument types shared by the command-line modules (:mod:`.calibrate`, :mod:`.products`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def number(kind: type, *, minimum: float = 0, strict: bool = True) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` that must be ``> minimum`` (``strict``) or ``>= minimum``."""
    name = "an integer" if kind is int else "a number"
    bound = "must be positive" if (strict and minimum == 0) else f"must be {'>' if strict else '>='} {minimum}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {name}: {text!r}") from None
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"{bound}: {text!r}")
        return value

    return parse
