"""The calibration steps as pure functions over arrays (plain numpy).

Each step takes its calibration data as arguments and never opens a file. These
are the readable definitions of the maths and the reference twins of the fast
kernels in :mod:`arielstream.kernels`.

Layout convention: **time is the last axis**. A block of raw data is
``(pixels..., frames)``; calibration frames have the pixel shape (the leading
axes) and broadcast over time; a per-frame vector (``dt``) has the length of the
time axis. This pixel-major layout is what the streaming reader produces, and it
makes the CDS difference and the time binning contiguous operations.
"""

from __future__ import annotations

import numpy as np

from .dq import DARK_INVALID, DEAD, DO_NOT_USE, FLAT_INVALID, HOT, NONLINEARITY_INVALID


def adc_convert(raw: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """Undo the analogue-to-digital conversion: ``raw / gain + offset`` (float64)."""
    return np.asarray(raw, dtype=np.float64) / gain + offset


def sigma_clip_mask(data: np.ndarray, sigma: float = 5.0, maxiters: int = 5) -> np.ndarray:
    """Outliers of ``data`` by iterative median/std clipping, as ``astropy.stats.sigma_clip``.

    Same rule as astropy's defaults: centre = median and spread = standard
    deviation of the values kept so far, bounds ``centre ± sigma*spread``, stop
    when an iteration clips nothing or after ``maxiters``; the mask is every value
    outside the last bounds, plus the non-finite ones. Reimplemented so that a
    worker does not import astropy; ``tests/test_steps.py`` holds it to astropy.
    """
    values = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(values)
    kept = values[finite]
    lower, upper = -np.inf, np.inf
    for _ in range(maxiters):
        if kept.size == 0:
            break
        centre = np.median(kept)
        spread = np.std(kept)
        lower, upper = centre - sigma * spread, centre + sigma * spread
        inside = kept[(kept >= lower) & (kept <= upper)]
        changed = kept.size - inside.size
        kept = inside
        if changed == 0:
            break
    with np.errstate(invalid="ignore"):
        return ~finite | (values < lower) | (values > upper)


def pixel_quality(
    dark: np.ndarray | None,
    dead: np.ndarray | None,
    flat: np.ndarray | None = None,
    coeffs: np.ndarray | None = None,
    sigma: float = 5.0,
    maxiters: int = 5,
) -> np.ndarray:
    """The static data-quality plane of a detector (bit flags from :mod:`arielstream.dq`).

    Hot pixels are the sigma-clipped outliers of the dark frame (both tails, as the
    notebook); dead pixels come from the dead map; a flat that is not finite and
    positive, or non-finite non-linearity coefficients, make a pixel unusable too.
    Pass ``None`` for a calibration that is not used.
    """
    shapes = [np.shape(a) for a in (dark, dead, flat) if a is not None]
    if coeffs is not None:
        shapes.append(np.shape(coeffs)[1:])
    if not shapes:
        raise ValueError("pixel_quality needs at least one calibration frame")
    dq = np.zeros(shapes[0], dtype=np.uint16)
    if dead is not None:
        dq[np.asarray(dead, dtype=bool)] |= DEAD
    if dark is not None:
        dark = np.asarray(dark, dtype=np.float64)
        finite = np.isfinite(dark)
        dq[~finite] |= DARK_INVALID
        dq[sigma_clip_mask(dark, sigma, maxiters) & finite] |= HOT
    if flat is not None:
        flat = np.asarray(flat)
        with np.errstate(invalid="ignore"):
            dq[~(np.isfinite(flat) & (flat > 0))] |= FLAT_INVALID
    if coeffs is not None:
        dq[~np.all(np.isfinite(coeffs), axis=0)] |= NONLINEARITY_INVALID
    return dq


def correct_nonlinearity(x: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Apply the per-pixel polynomial ``c0 + c1 x + ... + cN x^N`` by Horner's method.

    ``coeffs`` has shape ``(N+1, *pixel_shape)``, lowest order first (the layout of
    ``linear_corr.parquet`` reshaped to ``(6, rows, cols)``).
    """
    c = np.asarray(coeffs, dtype=np.float64)[..., np.newaxis]  # broadcast over time
    out = np.broadcast_to(c[-1], np.shape(x)).astype(np.float64)
    for k in range(c.shape[0] - 2, -1, -1):
        out *= x
        out += c[k]
    return out


def subtract_dark(x: np.ndarray, dark: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """``x - dark * dt`` per frame: ``dark`` is per pixel (e/s), ``dt`` per frame (s)."""
    return x - np.asarray(dark, dtype=np.float64)[..., np.newaxis] * np.asarray(dt, dtype=np.float64)


def correlated_double_sampling(x: np.ndarray) -> np.ndarray:
    """End-of-exposure read minus start read: ``x[..., 1::2] - x[..., 0::2]``.

    An odd trailing frame (no partner) is dropped.
    """
    n = x.shape[-1] // 2
    return x[..., 1 : 2 * n : 2] - x[..., 0 : 2 * n : 2]


def bin_time(x: np.ndarray, width: int) -> np.ndarray:
    """Sum consecutive groups of ``width`` samples along time; the incomplete tail is dropped."""
    nbins = x.shape[-1] // width
    trimmed = x[..., : nbins * width]
    return trimmed.reshape(*x.shape[:-1], nbins, width).sum(axis=-1)


def flat_field(x: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Divide by the flat field (per pixel, broadcast over time)."""
    return x / np.asarray(flat, dtype=np.float64)[..., np.newaxis]


def apply_quality(x: np.ndarray, dq: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Replace unusable pixels (``dq & DO_NOT_USE``) with ``fill`` at every time."""
    bad = (np.asarray(dq) & DO_NOT_USE) != 0
    out = np.array(x, dtype=np.result_type(x, np.float32), copy=True)
    out[bad] = fill
    return out


def frame_dt(instrument: str, n_frames: int, integration_time: np.ndarray | None = None) -> np.ndarray:
    """The notebook's per-frame exposure times for the dark subtraction (seconds).

    AIRS-CH0: the ``AIRS-CH0-integration_time`` column of ``axis_info`` with 0.1 s
    added to the odd (end-of-exposure) frames. FGS1: 0.1 s on even, 0.2 s on odd
    frames.
    """
    if instrument == "AIRS-CH0":
        if integration_time is None:
            raise ValueError("AIRS-CH0 needs the integration_time axis for its dt")
        dt = np.array(integration_time[:n_frames], dtype=np.float64)
        if dt.shape[0] != n_frames:
            raise ValueError(f"integration_time has {dt.shape[0]} values for {n_frames} frames")
        dt[1::2] += 0.1
        return dt
    dt = np.full(n_frames, 0.1)
    dt[1::2] += 0.1
    return dt
