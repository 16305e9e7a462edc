"""Data-quality bits: what is known to be wrong with a pixel, carried with the cube.

Bad pixels are never dropped silently. Two planes hold these bits, and the output
file names them in its attributes (``dq_bits``, ``dq_time_bits``: name -> value):

* the static plane ``<instrument>/dq`` ``(obs, x, y)`` uint16, :data:`BITS`: what is
  wrong with a pixel for the whole observation. Pixels with any ``DO_NOT_USE`` bit
  are NaN in the cube unless the run keeps their values (``bad_pixels = "keep"``,
  the notebook profile). The other bits inform: a ``HOT`` pixel without
  ``HOT_UNUSABLE`` keeps its dark-subtracted value, and the shot noise of the dark
  charge it held enters its variance (``<instrument>/dark_charge``);
* the time-resolved plane ``<instrument>/dq_time`` ``(obs, time, x, y)`` uint8,
  :data:`TIME_BITS`: what happened to a pixel in one time bin (written only by the
  steps beyond the notebook: cosmic rays, spatial outliers, interpolation; a
  saturated bin is marked there when the plane is written).
"""

from __future__ import annotations

# static plane <inst>/dq
DEAD = 1 << 0  # dead.parquet: the pixel does not respond
HOT = 1 << 1  # dark charge that matters: physical rule, > HOT_DARK_FRACTION x read noise per exposure; sigma rule
# (the notebook's), a sigma-clipped dark outlier. Informational: the value is kept unless HOT_UNUSABLE is set too
FLAT_INVALID = 1 << 2  # flat not finite or outside FLAT_RANGE
NONLINEARITY_INVALID = 1 << 3  # non-linearity coefficients not finite or a term over NONLINEARITY_TERM_MAX
DARK_INVALID = 1 << 4  # dark current not finite or outside DARK_RANGE
SATURATED = 1 << 5  # at least one read of the visit at or above the saturation level (those bins: TIME_SATURATED)
READ_NOISE_INVALID = 1 << 6  # read noise not finite-and-in READ_NOISE_RANGE: the typical value is used instead
HOT_UNUSABLE = 1 << 7  # a hot pixel whose value is not used. Physical rule: the dark's shot noise per exposure exceeds
# the read noise of a CDS (dark charge > 2 read noise**2); sigma rule (the notebook's): every hot pixel

DO_NOT_USE = DEAD | HOT_UNUSABLE | FLAT_INVALID | NONLINEARITY_INVALID | DARK_INVALID

BITS = {
    "DEAD": DEAD,
    "HOT": HOT,
    "FLAT_INVALID": FLAT_INVALID,
    "NONLINEARITY_INVALID": NONLINEARITY_INVALID,
    "DARK_INVALID": DARK_INVALID,
    "SATURATED": SATURATED,
    "READ_NOISE_INVALID": READ_NOISE_INVALID,
    "HOT_UNUSABLE": HOT_UNUSABLE,
}

# Physical bounds of the calibration values: a finite value outside them is as unusable as a NaN and
# gets the same *_INVALID bit. Chosen wide, so that they flag nothing in the competition's real files
# (data_samples/reference, planet 342072318, both instruments; ranges in the comments) and only catch
# values that no detector produces.
FLAT_RANGE = (0.1, 10.0)  # relative response; real positive flats 0.89-1.11 (the non-positive ones were flagged)
DARK_RANGE = (-1.0, 1.0e3)  # e/s; real -0.024 to 11.9 (a slightly negative dark is measurement noise)
READ_NOISE_RANGE = (0.0, 1.0e3)  # e per read, lower bound excluded; real 11.8 to 153
NONLINEARITY_SCALE = 65535.0  # the ADC ceiling: each polynomial term c_k x^k is judged at x = this
NONLINEARITY_TERM_MAX = 1.0e6  # |c_k| * NONLINEARITY_SCALE**k; real at most 6.7e4 (the linear term)

# time-resolved plane <inst>/dq_time
TIME_COSMIC_RAY = 1 << 0  # at least one sample of this bin was rejected as a temporal outlier
TIME_SPATIAL_OUTLIER = 1 << 1  # this pixel of this binned frame stood out from its neighbours
TIME_INTERPOLATED = 1 << 2  # the value was interpolated from its spatial neighbours
TIME_SATURATED = 1 << 3  # a raw read of this bin was at or above the saturation level (NaN unless kept)

TIME_BITS = {
    "COSMIC_RAY": TIME_COSMIC_RAY,
    "SPATIAL_OUTLIER": TIME_SPATIAL_OUTLIER,
    "INTERPOLATED": TIME_INTERPOLATED,
    "SATURATED": TIME_SATURATED,
}


def describe(value: int, bits: dict[str, int] = BITS) -> list[str]:
    """Names of the bits set in ``value`` (static bits by default; ``TIME_BITS`` for ``dq_time``)."""
    return [name for name, bit in bits.items() if value & bit]


def do_not_use(file_bits: dict[str, int] | None = None) -> int:
    """The ``DO_NOT_USE`` mask for a file whose ``dq_bits`` attribute is ``file_bits``.

    A file written before ``HOT_UNUSABLE`` existed (no such name in its bits) marked
    every hot pixel it would not use with ``HOT`` alone: for it, ``HOT`` is do-not-use
    too, so that its hot pixels (whose values the notebook profile kept) stay out of
    the light curves. ``None``: this version's bits.
    """
    if file_bits is not None and "HOT_UNUSABLE" not in file_bits:
        return DO_NOT_USE | HOT
    return DO_NOT_USE

