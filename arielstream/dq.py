"""Data-quality bits: what is known to be wrong with a pixel, carried with the cube.

Bad pixels are never dropped silently. Two planes hold these bits, and the output
file names them in its attributes (``dq_bits``, ``dq_time_bits``: name -> value):

* the static plane ``<instrument>/dq`` ``(obs, x, y)`` uint16, :data:`BITS`: what is
  wrong with a pixel for the whole observation. Pixels with any ``DO_NOT_USE`` bit
  are NaN in the cube unless the run keeps their values (``bad_pixels = "keep"``,
  the notebook profile);
* the time-resolved plane ``<instrument>/dq_time`` ``(obs, time, x, y)`` uint8,
  :data:`TIME_BITS`: what happened to a pixel in one time bin (written only by the
  steps beyond the notebook: cosmic rays, spatial outliers, interpolation).
"""

from __future__ import annotations

# static plane <inst>/dq
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

# time-resolved plane <inst>/dq_time
TIME_COSMIC_RAY = 1 << 0  # at least one sample of this bin was rejected as a temporal outlier
TIME_SPATIAL_OUTLIER = 1 << 1  # this pixel of this binned frame stood out from its neighbours
TIME_INTERPOLATED = 1 << 2  # the value was interpolated from its spatial neighbours

TIME_BITS = {
    "COSMIC_RAY": TIME_COSMIC_RAY,
    "SPATIAL_OUTLIER": TIME_SPATIAL_OUTLIER,
    "INTERPOLATED": TIME_INTERPOLATED,
}


def describe(value: int, bits: dict[str, int] = BITS) -> list[str]:
    """Names of the bits set in ``value`` (static bits by default; ``TIME_BITS`` for ``dq_time``)."""
    return [name for name, bit in bits.items() if value & bit]
