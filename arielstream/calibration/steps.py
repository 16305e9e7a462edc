"""The calibration steps as pure functions over arrays (plain numpy).

Each step takes its calibration data as arguments and never opens a file. These
are the readable definitions of the maths and the reference twins of the fast
kernels in :mod:`arielstream.calibration.kernels`.

Layout convention: **time is the last axis**. A block of raw data is
``(pixels..., frames)``; calibration frames have the pixel shape (the leading
axes) and broadcast over time; a per-frame vector (``dt``) has the length of the
time axis. This pixel-major layout is what the streaming reader produces, and it
makes the CDS difference and the time binning contiguous operations.
"""

from __future__ import annotations

import numpy as np

from ..dq import (
    DARK_INVALID,
    DARK_RANGE,
    DEAD,
    DO_NOT_USE,
    FLAT_INVALID,
    FLAT_RANGE,
    HOT,
    HOT_UNUSABLE,
    NONLINEARITY_INVALID,
    NONLINEARITY_SCALE,
    NONLINEARITY_TERM_MAX,
    READ_NOISE_INVALID,
    READ_NOISE_RANGE,
)
from ..layout import AIRS, FRAMES_PER_CDS
from ..nan import quiet_nan


def adc_convert(raw: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """Undo the analogue-to-digital conversion: ``raw / gain + offset`` (float64)."""
    return np.asarray(raw, dtype=np.float64) / gain + offset


def sigma_clip_mask(data: np.ndarray, sigma: float = 5.0, maxiters: int = 5) -> np.ndarray:
    """Outliers of ``data`` by ``astropy.stats.sigma_clip`` (median centre, standard deviation), and non-finite values.

    The notebook's hot-pixel rule, ``sigma_clip(dark, sigma=5, maxiters=5).mask``, made by
    the same call: bounds ``median ± sigma*std`` of the values kept so far, until an
    iteration clips nothing or after ``maxiters``. Non-finite values are masked before
    the call (left out of the statistics, as astropy would, without its warning) and
    are in the mask.
    """
    # astropy's, not ours, although slower: 0.6 against 0.15 ms on the 32 x 356 AIRS dark, 0.25
    # against 0.06 ms on FGS1's 32 x 32 (once per detector and observation, not the hot path); a
    # worker's first call imports astropy.stats (0.2 s, +11.5 MB resident beside its other imports).
    from astropy.stats import sigma_clip

    values = np.ma.masked_invalid(np.asarray(data, dtype=np.float64))
    return np.ma.getmaskarray(sigma_clip(values, sigma=sigma, maxiters=maxiters))


def invalid_dark(dark: np.ndarray) -> np.ndarray:
    """Dark current (e/s) that is not finite or outside :data:`arielstream.dq.DARK_RANGE`."""
    return _outside(dark, *DARK_RANGE)


def invalid_flat(flat: np.ndarray) -> np.ndarray:
    """Flat values that are not finite or outside :data:`arielstream.dq.FLAT_RANGE` (zero and negative included)."""
    return _outside(flat, *FLAT_RANGE)


def invalid_read_noise(read: np.ndarray) -> np.ndarray:
    """Read noise (e per read) that is not finite, not positive or above :data:`arielstream.dq.READ_NOISE_RANGE`."""
    read = np.asarray(read, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return _outside(read, *READ_NOISE_RANGE) | (read <= READ_NOISE_RANGE[0])


def invalid_nonlinearity(coeffs: np.ndarray) -> np.ndarray:
    """Pixels of ``(N+1, ...)`` coefficients with a term ``|c_k| x^k`` not finite or over the bound at the ADC ceiling.

    ``x`` = :data:`arielstream.dq.NONLINEARITY_SCALE`, bound :data:`arielstream.dq.NONLINEARITY_TERM_MAX`.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    scale = NONLINEARITY_SCALE ** np.arange(c.shape[0], dtype=np.float64).reshape(-1, *([1] * (c.ndim - 1)))
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(c) & (np.abs(c) * scale <= NONLINEARITY_TERM_MAX)
    return ~np.all(ok, axis=0)


def _outside(values: np.ndarray, low: float, high: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(values) & (values >= low) & (values <= high))


def pixel_quality(
    dark: np.ndarray | None,
    dead: np.ndarray | None,
    flat: np.ndarray | None = None,
    coeffs: np.ndarray | None = None,
    sigma: float = 5.0,
    maxiters: int = 5,
    read: np.ndarray | None = None,
    sigma_hot: bool = True,
) -> np.ndarray:
    """The static data-quality plane of a detector (bit flags from :mod:`arielstream.dq`).

    ``sigma_hot=False`` leaves the hot pixels out (a caller that judges them by
    :func:`physical_hot_bits`: the sigma clip is then not computed).

    Hot pixels are the sigma-clipped outliers of the dark frame (both tails, as the
    notebook), each ``HOT | HOT_UNUSABLE``: the notebook uses none of them (the
    ``physical`` rule, :func:`physical_hot_bits`, replaces these bits where the read
    noise is known); dead pixels come from the dead map; a dark, flat or non-linearity
    coefficient that is not finite or outside its physical bounds (:mod:`arielstream.dq`)
    makes a pixel unusable too; such a read noise gets ``READ_NOISE_INVALID``, which
    does not. Pass ``None`` for a calibration that is not used.
    """
    shapes = [np.shape(a) for a in (dark, dead, flat, read) if a is not None]
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
        dq[invalid_dark(dark)] |= DARK_INVALID
        if sigma_hot:
            dq[sigma_clip_mask(dark, sigma, maxiters) & finite] |= HOT | HOT_UNUSABLE
    if flat is not None:
        dq[invalid_flat(flat)] |= FLAT_INVALID
    if coeffs is not None:
        dq[invalid_nonlinearity(coeffs)] |= NONLINEARITY_INVALID
    if read is not None:
        dq[invalid_read_noise(read)] |= READ_NOISE_INVALID
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


def saturated_reads(raw: np.ndarray, level: int, frames_per_bin: int) -> np.ndarray:
    """Reads at or above the ADC saturation ``level`` in each time bin: ``(P, bins)`` int64 counts.

    ``raw`` is ``(P, frames)`` raw counts, ``frames`` a multiple of ``frames_per_bin``
    (with CDS, both reads of every pair of the bin). A bin holding such a read is
    wrong by up to all of its value (the charge above the ceiling is lost).
    """
    raw = np.asarray(raw)
    if raw.ndim != 2 or raw.shape[1] % frames_per_bin:
        raise ValueError(f"block of shape {raw.shape} does not span whole bins of {frames_per_bin} frames")
    hit = raw >= level
    return hit.reshape(raw.shape[0], -1, frames_per_bin).sum(axis=-1, dtype=np.int64)


def frame_dt(instrument: str, n_frames: int, integration_time: np.ndarray | None = None) -> np.ndarray:
    """The notebook's per-frame exposure times for the dark subtraction (seconds).

    AIRS-CH0: the ``AIRS-CH0-integration_time`` column of ``axis_info`` with 0.1 s
    added to the odd (end-of-exposure) frames. FGS1: 0.1 s on even, 0.2 s on odd
    frames.
    """
    if instrument == AIRS.name:
        if integration_time is None:
            raise ValueError(f"{AIRS.name} needs the integration_time axis for its dt")
        dt = np.array(integration_time[:n_frames], dtype=np.float64)
        if dt.shape[0] != n_frames:
            raise ValueError(f"integration_time has {dt.shape[0]} values for {n_frames} frames")
        dt[1::2] += 0.1
        return dt
    dt = np.full(n_frames, 0.1)
    dt[1::2] += 0.1
    return dt


def reject_temporal_outliers(samples: np.ndarray, width: int, sigmas: tuple[float, ...] = (8.0,),
                             until_clean: bool = True, clean_sigma: float = 5.0, max_iters: int = 10,
                             replace: str = "median") -> tuple[np.ndarray, np.ndarray]:
    """Cosmic rays: temporal outliers of each pixel's sample series, and the series' bin sums without them.

    ``samples`` is ``(P, T)`` (CDS samples, time last) with ``T`` a multiple of
    ``width``. The reference of each sample is the median of its time bin (its
    ``width`` neighbours: the signal changes slowly within a bin, a hit does not
    last); the spread is the pixel's robust standard deviation (1.4826 x the
    median absolute residual over the whole series, flagged samples left out).
    One pass per level of ``sigmas``, then, with ``until_clean``, passes at
    ``clean_sigma`` until a pass flags nothing new (at most ``max_iters``).
    Flagged samples are replaced by their bin's median (``replace="median"``) or
    left out with the bin sum rescaled to ``width`` samples (``"mask"``).

    Returns ``(binned, flagged)``: ``(P, T // width)`` float64 bin sums and the
    ``(P, T)`` boolean mask of flagged samples.
    """
    x = np.asarray(samples, dtype=np.float64)
    n_pix, n = x.shape
    if n % width:
        raise ValueError(f"{n} samples do not split into bins of {width}")
    bins = x.reshape(n_pix, n // width, width)
    flagged = np.zeros(bins.shape, dtype=bool)
    levels = list(sigmas) + ([clean_sigma] * max_iters if until_clean else [])
    for i, level in enumerate(levels):
        masked = np.where(flagged, np.nan, bins)
        with np.errstate(invalid="ignore"), quiet_nan():
            reference = np.nanmedian(masked, axis=-1, keepdims=True)
            residual = bins - reference
            spread = 1.4826 * np.nanmedian(np.abs(np.where(flagged, np.nan, residual)).reshape(n_pix, -1),
                                           axis=-1)
            new = (np.abs(residual) > level * spread[:, None, None]) & ~flagged
        if i >= len(sigmas) and not new.any():
            break
        flagged |= new
    with np.errstate(invalid="ignore"), quiet_nan():
        reference = np.nanmedian(np.where(flagged, np.nan, bins), axis=-1, keepdims=True)
    if replace == "median":
        cleaned = np.where(flagged, reference, bins)
        binned = cleaned.sum(axis=-1)
    else:
        good = (~flagged).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            binned = np.where(flagged, 0.0, bins).sum(axis=-1) * width / good
    return binned, flagged.reshape(n_pix, n)


def reject_bin_maxima(samples: np.ndarray, width: int, sigma: float = 5.0,
                      floor_variance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosmic rays bin by bin: the largest sample of a bin, when it stands out from the bin's others.

    A hit adds charge to the one CDS sample whose exposure it falls in, so it is the
    bin's largest sample. For each pixel and bin of ``width`` samples of ``samples``
    ``(P, T)``: ``m`` and ``v``, the mean and variance of the other ``width - 1``
    samples; ``v`` is raised to the expected variance of a sample, ``floor_variance[p]``
    (the CDS read-noise variance ``2 * read_noise**2``, electrons) plus ``m`` (its
    photon noise, the samples being electrons), because a variance from a few samples
    is often too small (with 29 others alone, 6e-4 of clean bins would lose their
    largest sample at 5 sigma; with the floor, 1e-5). The largest sample is flagged
    when it exceeds ``m`` by more than ``sigma * sqrt(v)``, and the bin's sum becomes
    ``m * width`` (the others' mean in its place). Pointing jitter or a steep trend
    widens ``v`` instead of being clipped. One hit per bin at most is
    removed, and two large hits in one bin of a few samples can hide each other (the
    second widens ``v``); at the competition's rates (~1e-5 per pixel and second) two
    in one bin are rare (``cr_method = "series"`` finds them). The samples must be
    electrons (the ADC step on): in raw counts the expected noise is overestimated and
    fewer hits are found, never more. Bins of fewer than 3 samples are left alone.

    Streaming: it needs one bin at a time and, per bin, the sum, the sum of squares and
    the maximum, which a kernel accumulates in the pass that makes the bin sums
    (:func:`arielstream.calibration.compiled.cds_polynomial_bins_clipped`).

    Returns ``(binned, flagged)``: ``(P, T // width)`` float64 bin sums and the
    ``(P, T // width)`` boolean mask of bins whose largest sample was replaced.
    """
    x = np.asarray(samples, dtype=np.float64)
    n_pix, n = x.shape
    if n % width:
        raise ValueError(f"{n} samples do not split into bins of {width}")
    bins = x.reshape(n_pix, n // width, width)
    # einsum and maximum.reduceat: 2 x and 2.4 x faster than sum and max over a short last axis
    total = np.einsum("pbi->pb", bins)
    if width < 3:
        return total, np.zeros(total.shape, dtype=bool)
    squares = np.einsum("pbi,pbi->pb", bins, bins)
    largest = np.maximum.reduceat(x, np.arange(0, n, width), axis=1) if n else total.copy()
    k = width - 1
    mean = (total - largest) / k
    variance = (squares - largest * largest - k * mean * mean) / (k - 1)
    if floor_variance is not None:
        variance = np.maximum(variance, np.asarray(floor_variance, np.float64)[:, None] + np.maximum(mean, 0.0))
    flagged = (largest - mean) > sigma * np.sqrt(np.maximum(variance, 0.0))
    return np.where(flagged, mean * width, total), flagged


# Master calibration frames: refstis and eloy build superdarks and master flats from many frames;
# here the frames of every visit of a planet (``planet``) or of every observation of the run
# (``dataset``) are combined per pixel, and the usual hot-pixel clip then runs on the master.
def master_frame(frames: np.ndarray, sigma: float = 3.0, maxiters: int = 5) -> np.ndarray:
    """Per-pixel clipped mean of ``(n, rows, cols)`` frames (the plain mean of fewer than three).

    The spread is the median absolute deviation (x1.4826), not the standard
    deviation: with a handful of frames one bad frame inflates the standard
    deviation enough to hide itself.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.shape[0] < 3:
        return frames.mean(axis=0)
    keep = np.isfinite(frames)
    for _ in range(maxiters):
        kept = np.where(keep, frames, np.nan)
        centre = np.nanmedian(kept, axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(kept - centre), axis=0)
        new = keep & (np.abs(frames - centre) <= sigma * np.maximum(spread, 1e-300))
        if np.array_equal(new, keep):
            break
        keep = new
    return np.nanmean(np.where(keep, frames, np.nan), axis=0)


# Hot pixels with a physical meaning (``hot_rule = "physical"``, the default profile). The notebook's
# rule (``pixel_quality``: a 5-sigma clip of the dark frame) flags pixels by how unusual their dark is
# among the detector's, down to ~0.01 e/s on the real AIRS dark, which is no harm to anything. Here a
# pixel is hot when its dark signal over one exposure matters against the noise of a read.
HOT_DARK_FRACTION = 0.1  # k: hot when |dark| * exposure > k * read noise. Below it, even a dark that is
# wrong by all of its value (an unstable hot pixel) adds under k**2 = 1% of one read's noise variance.
# A hot pixel is flagged, not discarded: its dark is subtracted like any pixel's, and the shot noise of that
# dark charge enters its variance (the ``dark_charge`` plane). It is unusable (``HOT_UNUSABLE``: NaN) only when
# that noise dominates the pixel's noise floor: its dark charge per exposure above the read-noise variance of
# the CDS that measures it, 2 read noise**2. Beyond that the dark, not the read, sets the pixel's noise (its
# weight under half a cold pixel's), and its value rests on a dark that one calibration per visit cannot
# check for stability: a 10% error in a dark at the limit (338 e per exposure at 13 e of read noise) shifts
# every exposure by 34 e, 1.8 times the CDS read noise. On the real files of planet 342072318
# (data_samples/reference) the limit is ~2 x 13^2 = 338 e per exposure: 75 e/s on AIRS-CH0 (4.5 s), 3400 e/s
# on FGS1 (0.1 s); the hottest AIRS pixel, 11.9 e/s, holds 53.6 e (0.14 of it): no pixel there is unusable.
HOT_UNUSABLE_FRACTION = 1.0  # unusable when dark * exposure > this x FRAMES_PER_CDS x read noise**2


def exposure_time(dt: np.ndarray) -> float:
    """The exposure of one CDS (s): the median of ``dt[1::2] - dt[0::2]`` of :func:`frame_dt`.

    AIRS-CH0 4.5 s, FGS1 0.1 s on the real axes: the dark charge a CDS difference holds.
    """
    dt = np.asarray(dt, dtype=np.float64)
    n = dt.shape[-1] // 2
    if n < 1:
        raise ValueError("the exposure time needs at least one read pair")
    return float(np.median(dt[1 : 2 * n : 2] - dt[0 : 2 * n : 2]))


def hot_pixels_physical(dark: np.ndarray, read_noise: np.ndarray, exposure: float,
                        k: float = HOT_DARK_FRACTION) -> np.ndarray:
    """Hot pixels: ``|dark| * exposure > k * read_noise`` (e/s, s, e per read).

    The dark charge of one exposure against the read noise of the same pixel. A
    pixel whose dark or read noise is not finite is not judged here (the dark's
    own bit, ``DARK_INVALID``, covers a non-finite dark).
    """
    if not (exposure > 0) or not (k > 0):
        raise ValueError(f"exposure and k must be positive; got {exposure!r}, {k!r}")
    dark = np.asarray(dark, dtype=np.float64)
    read_noise = np.asarray(read_noise, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hot = np.abs(dark) * exposure > k * read_noise
    return hot & np.isfinite(dark) & np.isfinite(read_noise)


def dark_noise_dominates(dark: np.ndarray, read_noise: np.ndarray, exposure: float,
                         limit: float = HOT_UNUSABLE_FRACTION) -> np.ndarray:
    """Pixels whose dark shot noise over one exposure exceeds the read noise of a CDS (e/s, s, e per read).

    ``dark * exposure > limit * 2 * read_noise**2``: the variance of the dark charge
    against the read-noise variance of the two reads of a CDS. A negative dark has no
    shot noise; a pixel whose dark or read noise is not finite is not judged here.
    """
    if not (exposure > 0) or not (limit > 0):
        raise ValueError(f"exposure and limit must be positive; got {exposure!r}, {limit!r}")
    dark = np.asarray(dark, dtype=np.float64)
    read_noise = np.asarray(read_noise, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return dark * exposure > limit * FRAMES_PER_CDS * np.square(read_noise)


def physical_hot_bits(dark: np.ndarray, read_noise: np.ndarray, exposure: float) -> np.ndarray:
    """The ``physical`` rule's quality bits (uint16): ``HOT`` and, where the dark's noise dominates, ``HOT_UNUSABLE``.

    ``HOT``: :func:`hot_pixels_physical` (the dark charge of an exposure matters, the
    value is kept); ``HOT | HOT_UNUSABLE``: :func:`dark_noise_dominates` (the value is not used).
    """
    bits = np.zeros(np.broadcast_shapes(np.shape(dark), np.shape(read_noise)), dtype=np.uint16)
    bits[hot_pixels_physical(dark, read_noise, exposure)] |= HOT
    bits[dark_noise_dominates(dark, read_noise, exposure)] |= HOT | HOT_UNUSABLE
    return bits


def dark_charge_per_bin(dark: np.ndarray, dt: np.ndarray, frames_per_bin: int, cds: bool = True) -> np.ndarray:
    """The dark charge (e) that the dark subtraction takes out of each pixel's time bin, the mean over the bins.

    ``dark`` in e/s, ``dt`` the per-frame times of :func:`frame_dt` (s). With CDS a
    bin sums end-minus-start differences, so it loses ``dark * sum(dt[1::2] - dt[0::2])``
    over its frames (AIRS-CH0, 30 CDS of 4.5 s: ``dark * 135 s``); without, ``dark * sum(dt)``.
    Its shot noise is part of the bin's variance (:func:`.frame_steps.pixel_variance`).
    """
    dt = np.asarray(dt, dtype=np.float64)
    n_bins = dt.shape[-1] // frames_per_bin
    if n_bins < 1 or (cds and frames_per_bin % FRAMES_PER_CDS):
        raise ValueError(f"{dt.shape[-1]} frames do not make a whole bin of {frames_per_bin} frames"
                         f"{' (CDS pairs)' if cds else ''}")
    used = dt[: n_bins * frames_per_bin]
    seconds = (used[1::2] - used[0::2]).sum() if cds else used.sum()
    return np.asarray(dark, dtype=np.float64) * (seconds / n_bins)
