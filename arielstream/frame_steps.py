"""Steps on the binned frames of one observation: pure functions over ``(time, x, y)`` cubes.

They run after the streaming stage, on an observation's binned cube, which is
small (AIRS 187 x 282 x 32 float32 = 6.7 MB), so they never touch the chunking
or the memory plan. Layout: ``cube[t, x, y]`` with ``x`` the detector column
(wavelength for AIRS) and ``y`` the spatial row, as in the output file.
"""

from __future__ import annotations

import numpy as np

# bits of the time-resolved data-quality plane <inst>/dq_time (obs, time, x, y) uint8
TIME_COSMIC_RAY = 1 << 0  # at least one sample of this bin was rejected as a temporal outlier
TIME_SPATIAL_OUTLIER = 1 << 1  # this pixel of this binned frame stood out from its neighbours
TIME_INTERPOLATED = 1 << 2  # the value was interpolated from its spatial neighbours
TIME_BITS = {"COSMIC_RAY": TIME_COSMIC_RAY, "SPATIAL_OUTLIER": TIME_SPATIAL_OUTLIER,
             "INTERPOLATED": TIME_INTERPOLATED}


def _median_filter_x(cube: np.ndarray, kernel: int) -> np.ndarray:
    """Running median along x (the wavelength axis) with edge replication; NaNs ignored.

    One frame at a time, so that the window copies stay a few MB whatever the cube.
    """
    import warnings

    half = kernel // 2
    out = np.empty(cube.shape, dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        for t in range(cube.shape[0]):
            padded = np.pad(cube[t], ((half, half), (0, 0)), mode="edge")
            windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=0)  # (x, y, k)
            out[t] = np.nanmedian(windows, axis=-1)
    return out


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


def clipped_mean(values: np.ndarray, sigma: float = 3.0, maxiters: int = 5) -> np.ndarray:
    """Sigma-clipped mean along the last axis (median centre, std spread, as astropy), vectorised."""
    values = np.asarray(values, dtype=np.float64)
    mask = ~np.isfinite(values)
    import warnings

    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(All-NaN slice|Mean of empty slice|Degrees of freedom)", RuntimeWarning)
        for _ in range(maxiters):
            kept = np.where(mask, np.nan, values)
            centre = np.nanmedian(kept, axis=-1, keepdims=True)
            spread = np.nanstd(kept, axis=-1, keepdims=True)
            new = mask | (np.abs(values - centre) > sigma * spread)
            if np.array_equal(new, mask):
                break
            mask = new
        return np.nanmean(np.where(mask, np.nan, values), axis=-1)


def airs_background(cube: np.ndarray, rows: tuple[int, ...], sigma: float = 3.0) -> np.ndarray:
    """Per time bin and wavelength column: the sigma-clipped mean of the rows away from the trace, ``(t, x)``."""
    return clipped_mean(cube[:, :, list(rows)], sigma)


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
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
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
    if factor == 1:
        return cube
    t, nx, ny = cube.shape
    nx2, ny2 = nx // factor, ny // factor
    trimmed = cube[:, : nx2 * factor, : ny2 * factor]
    return trimmed.reshape(t, nx2, factor, ny2, factor).sum(axis=(2, 4))


def bin_planes(plane: np.ndarray, factor: int, how: str) -> np.ndarray:
    """Bin an ``(..., x, y)`` plane like :func:`spatial_bin`: ``"or"`` for bit flags, ``"mean"`` or ``"sum"``."""
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
