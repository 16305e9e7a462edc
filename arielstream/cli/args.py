"""Argument types shared by the command-line modules (:mod:`.calibrate`, :mod:`.products`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(kind: type, *, minimum: float = 0, strict: bool = True, maximum: float | None = None,
           ) -> Callable[[str], float]:
    """An argparse type: a finite ``kind(text)`` that must be ``> minimum`` (``strict``) or ``>= minimum``.

    With ``maximum``, the value must also be ``<= maximum``.
    """
    name = "an integer" if kind is int else "a number"
    if maximum is not None:
        bound = f"must be within [{minimum}, {maximum}]"
    else:
        bound = "must be positive" if (strict and minimum == 0) else f"must be {'>' if strict else '>='} {minimum}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {name}: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if not (value > minimum if strict else value >= minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{bound}: {text!r}")
        return value

    return parse
