"""Data-quality bits: what is known to be wrong with a pixel, carried with the cube.

Bad pixels are never dropped silently: the static plane (``<instrument>/dq``) holds
these bits per pixel and observation, and pixels with any ``DO_NOT_USE`` bit are
NaN in the cube unless the run keeps their values (``bad_pixels = "keep"``, the
notebook profile).
"""

from __future__ import annotations

DEAD = 1 << 0  # dead.parquet: the pixel does not respond
HOT = 1 << 1  # dark current outlier (sigma-clipped dark, both tails, as the notebook)
FLAT_INVALID = 1 << 2  # flat not finite or not positive
NONLINEARITY_INVALID = 1 << 3  # non-finite non-linearity coefficients
DARK_INVALID = 1 << 4  # non-finite dark current

DO_NOT_USE = DEAD | HOT | FLAT_INVALID | NONLINEARITY_INVALID | DARK_INVALID

BITS = {
    "DEAD": DEAD,
    "HOT": HOT,
    "FLAT_INVALID": FLAT_INVALID,
    "NONLINEARITY_INVALID": NONLINEARITY_INVALID,
    "DARK_INVALID": DARK_INVALID,
}


def describe(value: int) -> list[str]:
    """Names of the bits set in ``value``."""
    return [name for name, bit in BITS.items() if value & bit]
