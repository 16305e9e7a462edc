"""Steps on the binned frames of one observation: pure functions over ``(time, x, y)`` cubes.

They run after the streaming stage, on an observation's binned cube, which is
small (AIRS 187 x 282 x 32 float32 = 6.7 MB), so they never touch the chunking
or the memory plan. Layout: ``cube[t, x, y]`` with ``x`` the detector column
(wavelength for AIRS) and ``y`` the spatial row, as in the output file.
"""

from __future__ import annotations

import numpy as np

from ..nan import quiet_nan

# Read noise assumed where read.parquet gives none (the file is absent, or a pixel is NaN), in
# electrons per read: the typical AIRS-CH0 read noise of the competition's read.parquet (median
# 13.0 e over the real planet 342072318 in data_samples/reference; FGS1's is 13.3 e).
TYPICAL_READ_NOISE = 13.0


def read_noise_or_typical(read_noise: np.ndarray | None, factor: int = 1,
                          shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``read_noise`` (electrons per read) with NaN (or a missing plane) replaced by the typical value.

    The one policy for an unknown read noise, used by the frame steps and the light
    curves: :data:`TYPICAL_READ_NOISE` per detector pixel, ``factor`` times that per
    output pixel of a ``factor x factor`` spatial binning (the root of the summed
    squares, as the ``read_noise`` plane is binned). ``read_noise=None`` (no plane at
    all) gives that value everywhere in ``shape``.
    """
    typical = TYPICAL_READ_NOISE * factor
    if read_noise is None:
        if shape is None:
            raise ValueError("read_noise_or_typical needs the shape when there is no read noise plane")
        return np.full(shape, typical)
    return np.nan_to_num(read_noise, nan=typical)


def pixel_variance(cube: np.ndarray, read_noise: np.ndarray, n_reads: int,
                   dark_charge: np.ndarray | float = 0.0) -> np.ndarray:
    """Expected variance (electrons²) of each pixel of each binned frame: photon, dark and read noise.

    ``max(cube, 0) + max(dark_charge, 0) + n_reads * read_noise²``: ``cube`` is
    ``(t, x, y)`` electrons per bin, ``read_noise`` the ``(x, y)`` plane in electrons per
    read (no NaN: see :func:`read_noise_or_typical`), ``n_reads`` the reads summed into a
    bin (:func:`arielstream.layout.frames_per_bin`), ``dark_charge`` the ``(x, y)`` dark
    charge per bin that the calibration subtracted (``<inst>/dark_charge``; a hot pixel's
    shot noise; NaN counts as none). A NaN pixel of the cube counts as no photons. Keeps
    the cube's precision (float32 in, float32 out). The one variance model of the package:
    the light curves use it too.
    """
    photons = np.clip(np.nan_to_num(cube), 0, None)
    dark = np.clip(np.nan_to_num(np.asarray(dark_charge, dtype=photons.dtype)), 0, None)
    return photons + dark + n_reads * np.square(read_noise)


def _median_filter_x(cube: np.ndarray, kernel: int) -> np.ndarray:
    """Running median along x (the wavelength axis) with edge replication; NaNs ignored.

    ``numpy.nanmedian`` of each window, computed by sorting the windows (NaN sorts last)
    and averaging the middle one or two of the finite values: the same numbers, 3-5 times
    faster than ``nanmedian`` on windows of 5. A few frames at a time, so that the
    window copies stay a few MB whatever the cube.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the median filter needs an odd kernel >= 1; got {kernel}")
    half = kernel // 2
    out = np.empty(cube.shape, dtype=np.float64)
    step = max(1, (4 << 20) // max(1, cube[0].size * kernel * cube.itemsize))  # ~4 MB of windows at a time
    for t0 in range(0, cube.shape[0], step):
        padded = np.pad(cube[t0:t0 + step], ((0, 0), (half, half), (0, 0)), mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=1)  # (t, x, y, k)
        out[t0:t0 + step] = _nanmedian_last(windows)
    return out


def _nanmedian_last(values: np.ndarray) -> np.ndarray:
    """``numpy.nanmedian`` along the last axis (NaN where every value is NaN), the same numbers, faster.

    Sorts (NaN sorts last) and averages the middle one or two finite values, in the
    values' precision: 3-5 times faster than ``nanmedian``, which goes through masked
    arrays when the last axis is short (windows of 5, a few background rows).
    """
    ordered = np.sort(values, axis=-1)
    n = np.count_nonzero(~np.isnan(ordered), axis=-1)[..., None]
    low = np.take_along_axis(ordered, np.maximum(n - 1, 0) // 2, axis=-1)[..., 0]
    high = np.take_along_axis(ordered, n // 2 - (n == 0), axis=-1)[..., 0]
    with np.errstate(invalid="ignore", over="ignore"):  # the middle two's mean, in the values' precision
        return np.where(n[..., 0] > 0, np.mean([low, high], axis=0, dtype=ordered.dtype), np.nan)


def spatial_outliers(cube: np.ndarray, variance: np.ndarray, kernel: int = 5, sigma: float = 10.0) -> np.ndarray:
    """Pixels of each binned frame that stand out from a median filter along the wavelength axis.

    The filter runs along ``x`` (wavelength), where the spectrum is smooth, and never
    across the spatial rows, so the sharp cross-dispersion profile of the trace is
    left alone. A pixel is flagged when its residual exceeds ``sigma`` times the
    expected noise ``sqrt(variance)`` (photon + read noise of that bin). Returns a
    boolean ``(t, x, y)`` mask; NaN pixels are never flagged.
    """
    smooth = _median_filter_x(cube, kernel)
    with np.errstate(invalid="ignore"):
        z = (cube - smooth) / np.sqrt(np.maximum(variance, 1e-12))
        return np.abs(z) > sigma


def interpolate_isolated(cube: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill bad pixels whose two spatial neighbours (y-1, y+1) are good with their mean.

    ``bad`` is ``(t, x, y)`` (or ``(x, y)``, the same at every time). Returns the new
    cube and the ``(t, x, y)`` mask of the values filled; other bad pixels are left
    as they are (NaN).
    """
    bad = np.broadcast_to(bad, cube.shape)
    out = cube.copy()
    filled = np.zeros(cube.shape, dtype=bool)
    up, down = np.roll(cube, 1, axis=2), np.roll(cube, -1, axis=2)
    bad_up, bad_down = np.roll(bad, 1, axis=2), np.roll(bad, -1, axis=2)
    edge = np.zeros(cube.shape[2], dtype=bool)
    edge[[0, -1]] = True
    ok = bad & ~bad_up & ~bad_down & ~edge & np.isfinite(up) & np.isfinite(down)
    out[ok] = 0.5 * (up[ok] + down[ok])
    filled[ok] = True
    return out, filled


def clipped_sums(values: np.ndarray, sigma: float = 3.0, maxiters: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Sum and number of the values along the last axis that survive ``astropy.stats.sigma_clip``.

    Median centre, standard-deviation spread; non-finite values are left out. Returns
    two arrays of the leading shape (float64 sums, int64 counts): their ratio is
    :func:`clipped_mean`, and sums and counts add up over several rows' worth of values
    (:func:`airs_background` pools columns this way).
    """
    # astropy's C loop (axis given): 20-22 ms against 40-70 ms for our numpy loop on the AIRS background
    # rows (187 x 282 x 12), 2 against 5-14 ms on FGS1's edge pixels (187 x 348), the same numbers
    # (numpy 1.24 / astropy 5.3 and numpy 2.4 / astropy 8.0; shared 2-core machine).
    from astropy.stats import sigma_clip

    if sigma <= 0:
        raise ValueError(f"sigma must be positive; got {sigma}")
    values = np.ma.masked_invalid(np.asarray(values, dtype=np.float64))  # masked: left out without a warning
    kept = sigma_clip(values, sigma=sigma, maxiters=maxiters, axis=-1, masked=False)  # clipped ones NaN
    finite = np.isfinite(kept)
    return np.where(finite, kept, 0.0).sum(axis=-1), np.count_nonzero(finite, axis=-1)


def clipped_mean(values: np.ndarray, sigma: float = 3.0, maxiters: int = 5) -> np.ndarray:
    """Sigma-clipped mean along the last axis: ``astropy.stats.sigma_clip`` (median centre, std spread), then the mean.

    Non-finite values are left out; a row with no finite value gives NaN.
    """
    total, count = clipped_sums(values, sigma, maxiters)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


# AIRS: columns on each side whose background rows estimate a column's background (0: its own rows only), in the
# calibration's background step and the light curves' extraction. 7 (15 columns, ~210 pixels) brings the light
# curves' estimate's noise from 1.12-1.13 to ~1.01 x the photon + read-noise limit; wider windows gain under 1 %
# more and widen the band over which the background must be smooth
BACKGROUND_WINDOW = 7


def window_members(n_columns: int, reach: int = BACKGROUND_WINDOW) -> np.ndarray:
    """The ``(x, x')`` mask of the columns ``x'`` in column ``x``'s background window.

    The window is centred: the columns with ``|x' - x| <= reach``, narrowed within
    ``reach`` of the first or last column to the columns on both sides (the first and
    last columns are their own window), so that a background linear in ``x`` is
    estimated without bias. ``reach=0``: the identity.

    Raises
    ------
    ValueError
        ``reach`` < 0.
    """
    if reach < 0:
        raise ValueError(f"the background window must be >= 0 columns; got {reach}")
    x = np.arange(n_columns)
    half = np.minimum(reach, np.minimum(x, n_columns - 1 - x))
    return np.abs(x[None, :] - x[:, None]) <= half[:, None]


def window_weights(n_background: np.ndarray, reach: int = BACKGROUND_WINDOW) -> np.ndarray:
    """The ``(x, x')`` matrix ``K`` that averages the columns' background estimates over a window.

    Row ``x`` weighs each column ``x'`` of its window (:func:`window_members`) by its
    number of background pixels ``n_background[x']`` and sums to 1, so
    ``sum_x' K[x, x'] c[x']`` (``c`` the columns' means of their background pixels) is
    the mean of every background pixel of the window; a background linear in ``x``
    has no bias where the counts are equal. A column without background pixels
    contributes nothing; a row whose window holds none is all 0 (no correction).
    ``reach=0``: the identity on the columns that have background pixels.

    Raises
    ------
    ValueError
        ``reach`` < 0.
    """
    n = np.asarray(n_background, dtype=np.float64)
    counts = np.where(window_members(n.size, reach), n[None, :], 0.0)
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def band_product(values: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``values @ matrix.T`` (``(..., x')`` by ``(x, x')`` gives ``(..., x)``), along the matrix's diagonals.

    A window's matrix is a band (:func:`window_members`): a shifted multiply-add per
    diagonal within its bandwidth, no BLAS call (arielstream calls none: its idle
    threads spin against the decode and numpy on a shared machine; a 282 x 282 matrix
    product per observation measured 30 ms with two OpenBLAS threads against 2 ms with
    one). A NaN in ``values`` reaches only the outputs whose band holds it.
    """
    values = np.asarray(values)
    n_out, n_in = matrix.shape
    out = np.zeros(values.shape[:-1] + (n_out,), dtype=np.result_type(values, matrix, np.float64))
    rows, cols = np.nonzero(matrix)
    if rows.size == 0:
        return out
    offsets = cols - rows
    for o in range(int(offsets.min()), int(offsets.max()) + 1):  # x' = x + o
        lo, hi = max(0, -o), min(n_out, n_in - o)
        if lo < hi:
            x = np.arange(lo, hi)
            out[..., lo:hi] += values[..., lo + o:hi + o] * matrix[x, x + o]
    return out


def airs_background(cube: np.ndarray, rows: tuple[int, ...], sigma: float = 3.0,
                    window: int = BACKGROUND_WINDOW) -> np.ndarray:
    """Per time bin and wavelength column: the background level of the rows away from the trace, ``(t, x)``.

    Each column's ``rows`` are sigma-clipped on their own (a hot pixel or a cosmic
    ray stands out against its column's few pixels), then the pixels that survive in
    the columns of its window (:func:`window_members`, ``window`` columns on each
    side) are averaged: each column's clipped mean weighted by its number of kept
    pixels. One column's ~12 pixels would put their noise, times the aperture's rows,
    into every bin of that column; 15 columns divide its variance by ~15. The window
    is centred, so a background linear along the columns is removed without bias
    (where the columns keep as many pixels); a curved one ``f(x)`` leaves
    ``f''/2`` times the window's mean squared column offset (``K(K+1)/3`` for
    ``K = window``). ``window=0``: each column's own clipped mean. NaN where the
    window keeps no pixel.
    """
    total, count = clipped_sums(cube[:, :, list(rows)], sigma)  # (t, x)
    members = window_members(cube.shape[1], window).astype(np.float64)  # (x, x')
    with np.errstate(invalid="ignore", divide="ignore"):
        return band_product(total, members) / band_product(count, members)


def edge_mask(nx: int, ny: int, width: int) -> np.ndarray:
    """``(x, y)`` mask of the pixels within ``width`` of the frame's edge."""
    x = np.minimum(np.arange(nx), np.arange(nx)[::-1])[:, None]
    y = np.minimum(np.arange(ny), np.arange(ny)[::-1])[None, :]
    return (x < width) | (y < width)


def fgs1_background(cube: np.ndarray, width: int = 3, sigma: float = 3.0) -> np.ndarray:
    """Per time bin: the sigma-clipped mean of the pixels near the frame's edge, ``(t,)``."""
    return clipped_mean(cube[:, edge_mask(cube.shape[1], cube.shape[2], width)], sigma)


def centroids(cube: np.ndarray, radius: float = 6.0) -> np.ndarray:
    """Flux-weighted centroid ``(x, y)`` per time bin, within ``radius`` of the time-median peak.

    NaN pixels are left out; returns ``(t, 2)`` in pixel units of the cube.
    """
    with quiet_nan():
        median = np.nanmedian(cube, axis=0)
    px, py = np.unravel_index(np.nanargmax(np.nan_to_num(median, nan=-np.inf)), median.shape)
    xx, yy = np.meshgrid(np.arange(cube.shape[1]), np.arange(cube.shape[2]), indexing="ij")
    inside = (xx - px) ** 2 + (yy - py) ** 2 <= radius**2
    weights = np.where(inside[None] & np.isfinite(cube), np.clip(np.nan_to_num(cube), 0, None), 0.0)
    total = weights.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(weights * xx).sum(axis=(1, 2)) / total, (weights * yy).sum(axis=(1, 2)) / total],
                        axis=1)


def trace_rows(cube: np.ndarray) -> np.ndarray:
    """AIRS trace position per time bin: the flux-weighted mean spatial row of the spectrum, ``(t,)``."""
    profile = np.clip(np.nansum(cube, axis=1), 0, None)  # (t, y)
    rows = np.arange(cube.shape[2])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (profile * rows).sum(axis=1) / profile.sum(axis=1)


def spatial_bin(cube: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor x factor`` pixel blocks of each frame; a block with any NaN pixel is NaN.

    Trailing pixels that do not fill a block are dropped. ``cube`` is ``(t, x, y)``.
    """
    _check_factor(factor)
    if factor == 1:
        return cube
    t, nx, ny = cube.shape
    nx2, ny2 = nx // factor, ny // factor
    trimmed = cube[:, : nx2 * factor, : ny2 * factor]
    return trimmed.reshape(t, nx2, factor, ny2, factor).sum(axis=(2, 4))


def _check_factor(factor: int) -> None:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"the spatial binning factor must be a whole number >= 1; got {factor}")


BIN_PLANE_MODES = ("or", "rms", "mean", "sum")


def bin_planes(plane: np.ndarray, factor: int, how: str) -> np.ndarray:
    """Bin an ``(..., x, y)`` plane like :func:`spatial_bin`, each block reduced by ``how``.

    ``"or"`` for bit flags, ``"rms"`` for the read noise of a summed block
    (``sqrt(sum r²)``, float64), ``"mean"`` or ``"sum"``.
    """
    if how not in BIN_PLANE_MODES:
        raise ValueError(f"how must be one of {BIN_PLANE_MODES}; got {how!r}")
    _check_factor(factor)
    if factor == 1:
        return plane
    *lead, nx, ny = plane.shape
    nx2, ny2 = nx // factor, ny // factor
    blocks = plane[..., : nx2 * factor, : ny2 * factor].reshape(*lead, nx2, factor, ny2, factor)
    if how == "or":
        return np.bitwise_or.reduce(np.bitwise_or.reduce(blocks, axis=-1), axis=-2)
    if how == "rms":
        return np.sqrt((blocks.astype(np.float64) ** 2).sum(axis=(-1, -3)))
    return blocks.mean(axis=(-1, -3)) if how == "mean" else blocks.sum(axis=(-1, -3))


def bin_background(level: np.ndarray, factor: int) -> np.ndarray:
    """A background level per detector pixel as the level per output pixel of :func:`spatial_bin`.

    An output pixel sums ``factor x factor`` detector pixels. AIRS levels are
    ``(t, x)`` (one per column, the same on every row): ``factor`` columns are summed
    (a trailing partial block dropped) and times ``factor`` rows. FGS1 levels are
    ``(t,)`` (one per frame): times ``factor²``.
    """
    _check_factor(factor)
    if level.ndim == 2:
        n = level.shape[1] // factor
        return level[:, : n * factor].reshape(level.shape[0], n, factor).sum(axis=-1) * factor
    return level * factor * factor


def bin_positions(position: np.ndarray, factor: int) -> np.ndarray:
    """Positions in detector pixels (centroids, trace rows) in the output pixels of :func:`spatial_bin`.

    Output pixel ``j`` sums detector pixels ``j*factor .. j*factor + factor - 1``, whose
    centre is at ``j*factor + (factor - 1) / 2``; that point maps to ``j``, so a
    detector position ``p`` becomes ``(p - (factor - 1) / 2) / factor``.
    """
    _check_factor(factor)
    return (position - (factor - 1) / 2) / factor
