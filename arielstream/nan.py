"""NaN-aware statistics over slices that may hold no data, without warnings.

A bad pixel is NaN everywhere (``bad_pixels = "nan"``), so a median or mean over a
column, a bin or a light curve can meet a slice with no finite value. Its result
is NaN, which is the right answer, but numpy also warns ("All-NaN slice
encountered", "Mean of empty slice", "Degrees of freedom <= 0"). :func:`quiet_nan`
silences exactly those warnings and no other, for the maths and the readers alike.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

EMPTY_SLICE_WARNINGS = ("All-NaN slice", "Mean of empty slice", "Degrees of freedom")


@contextlib.contextmanager
def quiet_nan() -> Iterator[None]:
    """No numpy ``RuntimeWarning`` for a NaN-aware statistic over a slice without data (its result is NaN)."""
    with warnings.catch_warnings():
        for message in EMPTY_SLICE_WARNINGS:
            warnings.filterwarnings("ignore", message, RuntimeWarning)
        yield
