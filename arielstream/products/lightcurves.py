"""Light curves from a calibrated file: AIRS spectral and white-light curves, FGS1 photometry.

Two layers, as in the rest of the package: pure functions over arrays (``plan_*``
decide a time-constant extraction for one observation, ``apply_extraction`` applies
it to any block of time bins) and an adapter that reads an arielstream HDF5 file
observation by observation, time block by time block (:func:`observation_light_curves`,
:func:`extract`).

The extraction of one observation
---------------------------------
* **Usable pixels** are those finite in every time bin and with no
  :data:`arielstream.dq.DO_NOT_USE` bit, so that a bad pixel is excluded at *all*
  times (the notebook profile keeps bad pixels' values: the DQ plane still
  excludes them). A ``HOT`` pixel without ``HOT_UNUSABLE`` is usable: its value is
  dark-subtracted and its dark's shot noise is in its variance (below). The set
  never changes within an observation, so a light curve never jumps because a
  pixel came or went.
* **AIRS aperture.** The trace lies along x. Its centre row is the flux-weighted
  mean row of the time-averaged frame (each column's median over rows subtracted
  as background, negative values clipped); the aperture is every row ``y`` with
  ``|y - centre| <= half_width`` (``half_width`` = 6 by default: 12 or 13 rows).
* **Background** (on by default; ``background=False`` to switch off): in each bin,
  ``c[x]``, the mean of column ``x``'s usable pixels at ``|y - centre| >= half_width + 3``
  (its outer rows), is averaged over the columns within ``BACKGROUND_WINDOW`` (7) of
  ``x``, each weighted by its number of such pixels (:func:`window_weights`: the mean
  of every outer-row pixel of those 15 columns), and that level is subtracted from
  every aperture pixel (a background left in would dilute the transit depth). One
  column's outer rows (~14 pixels for a 12-row aperture) would add their noise, scaled
  by the aperture's rows, to every bin: 1.12-1.13 × the photon + read-noise limit on
  the simulator's planets; 15 columns divide that variance by ~15, to 1.01 × (the
  floor row of ``make bench-science``). The sky and the
  zodiacal light vary slowly with wavelength: the window is centred (it narrows
  at the first and last columns the file holds), so a background linear in
  wavelength is removed without bias (up to the shift of the window's centre where
  bad pixels make the columns' counts unequal); a curved one ``f(x)`` leaves, per
  aperture row, ``f''/2`` times the window's mean squared column offset
  (``K(K+1)/3`` = 18.7 columns² for ``K`` = 7) in the estimate. ``background_window=0``
  uses each column's own rows (the weighted extraction's profile is cleaned with the
  same estimate). A column whose window holds no background pixel is
  not corrected (``no_background_columns``). FGS1: the mean of the usable pixels
  farther than ``fgs1_radius + 3`` from the centroid, folded into the weights
  (``W = w - sum(w) * b``). Every light curve stays a time-constant weighted sum of
  the pixels, so its variance is exact: ``flux[x] = A[x] - s[x] sum_x' K[x, x'] c[x']``
  (``A = sum_y w D`` the aperture sum, ``s = sum_y w`` its weights' sum) has variance
  ``sum_y w² V + s[x]² sum_x' K[x, x']² var(c[x'])``, ``var(c[x']) = sum_y b² V``
  (the aperture's pixels are never background pixels: no cross term).
* **Plain sum** (default): the flux of a wavelength column in a bin is the sum of
  its usable aperture pixels (minus the background), divided by the fraction of
  the column's flux those pixels hold (below).
* **Bad pixels in the aperture** are filled from the trace's spatial profile
  (Horne 1986): the mean normalised time-averaged profile of the complete columns
  within ``FILL_NEIGHBOURS`` gives the fraction ``kept`` of a column's flux that
  its usable pixels hold, and the column's usable sum is divided by it (the
  weighted extraction normalises its profile to ``kept``). Without it a column
  with a bad pixel in the trace core held 0.5-0.8 of its neighbours' flux. The
  weights stay time-constant, so the variance ``sum W² V`` carries the filled
  pixels' extra noise; the profile's own error is a constant factor of the
  column, which the relative light curve (the depth) does not see. A column
  whose usable pixels hold under ``MIN_KEPT`` of its flux is left unfilled.
  ``n_filled`` records the filled pixels per column.
* **Variance-weighted** (``weighted=True``): optimal extraction (Horne 1986) with a
  *time-constant* spatial profile ``P`` and variance ``V0``, both from the
  time-averaged frame: ``flux_t = sum_y w_y D_ty`` with ``w = (P / V0) / sum(P² / V0)``.
  The weights do not change with time, so the relative light curve (the transit
  depth) is unbiased. With an empirical profile, both give the flux of the whole
  aperture; the weighted one with less noise where read noise dominates.
* **Variance model** (electrons², per pixel and bin):
  ``V = max(D, 0) + max(K, 0) + n_reads * read_noise²`` with ``n_reads = 2 * n_cds`` (each CDS
  is the difference of two reads; a bin sums ``n_cds`` = ``airs_bin`` / ``fgs1_bin``
  of them) and ``read_noise`` the file's ``<inst>/read_noise`` (electrons per read;
  where it is NaN or absent, the typical 13 e per detector pixel is assumed, as the
  calibration's own steps do, with a warning). Where the calibration already
  subtracted a background (``<inst>/background``, the ``background`` step), it is
  added back into ``D`` for ``V``: its photons are noise all the same. ``K`` is the
  dark charge the calibration subtracted from the pixel's bin (``<inst>/dark_charge``:
  the dark current times the exposure a bin holds, 0 where the file has no such
  plane): its shot noise too, so a hot pixel weighs by its variance. ``D`` is
  flat-fielded, so this ignores the flat's few-per-cent scaling of the terms; it
  leaves out cosmic rays that no step removed. The 1-sigma uncertainty of a weighted
  sum ``sum W D`` over the pixels it reads is ``sqrt(sum W² V)`` (the background's
  terms above).
  On simulated data the per-wavelength transit-depth pulls spread by 1.00 (1.02
  weighted) and the fits' median chi²/dof is 0.99 (1.00) (tests/test_lightcurves.py).
  White-light curves also carry pointing-jitter red noise that this model does not
  include: decorrelate them against the FGS1 centroid track.
* **White light.** AIRS: the sum over wavelength columns that have usable pixels
  (the same columns at all times). A background pixel enters several columns'
  estimates, so the columns' errors are correlated and the white variance is not
  the sum of theirs: it is ``sum_x sum_y w² V + sum_x' u[x']² var(c[x'])`` with
  ``u[x'] = sum_x s[x] K[x, x']`` (:func:`apply_extraction`). FGS1: the sum
  of the usable pixels within ``fgs1_radius`` (6 px by default) of the
  flux-weighted centroid of the time-averaged frame.
* **Centroid track.** FGS1's flux-weighted centroid (x = column, y = row, in
  pixels) in each time bin, median-subtracted and clipped at 0.
* **Wavelength order.** AIRS light curves are always returned in the target order
  (ascending wavelength, ``wl_2`` … ``wl_283``) whatever order the file stores.

The light-curve file written by :func:`extract`
-----------------------------------------------
``obs`` counts the *done* observations of the source file, in its order::

    attrs: format = "arielstream-lightcurves", format_version, Conventions, title,
           source (the calibrated file, relative to this one), source_config (JSON),
           profile, arielstream_version (of the source), extracted_with (this version),
           half_width, weighted, fgs1_radius, background, background_gap, background_window,
           variance_model
    /obs (obs,) int32 dimension     /planet_id (obs,) int64     /visit (obs,) int16
    /source_index (obs,) int64: obs index in the source
    /AIRS-CH0/time (t,) float64 hours
    /AIRS-CH0/wavelength (w,) float64 µm ascending   /wavelength_label (w,) S8   /column (w,) as the source
    /AIRS-CH0/flux, /flux_err (obs, t, w) float64    electrons per bin (spectral light curves)
    /AIRS-CH0/white_flux, /white_flux_err (obs, t) float64
    /AIRS-CH0/n_pixels (obs, w) int16                usable aperture pixels of each wavelength
    /AIRS-CH0/n_filled (obs, w) int16                bad aperture pixels filled from the spatial profile
    /AIRS-CH0/trace_row (obs,) float64               /AIRS-CH0/aperture_rows (obs, 2) int16 first, last
    /FGS1/time (t,) float64 hours
    /FGS1/flux, /flux_err (obs, t) float64           /FGS1/centroid (obs, t, 2) float64 (x, y) px
    /FGS1/aperture_centre (obs, 2) float64 (x, y)     /FGS1/n_pixels (obs,) int16
    /FGS1/wavelength () float64 µm (0.7, wl_1): a scalar coordinate (a photometer: no wavelength axis)

Every axis is a named dimension (HDF5 dimension scales, :mod:`arielstream.io.cf`): ``obs``, and in
each group ``time``; AIRS-CH0 ``wavelength`` and ``edge`` (of ``aperture_rows``), FGS1 ``xy``. Each
dataset has a ``long_name``; fluxes ``units = "count"`` (electrons: UDUNITS has no electron unit),
times ``"hours"``, wavelengths ``"um"``; float datasets a NaN ``_FillValue``.

An instrument the source does not hold is absent. The file is written as
``LC.h5.partial`` and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from .. import dq as dqbits
from .._version import __version__
from ..calibration import frame_steps
from ..config.options import build_config
from ..errors import ArielstreamError, InputError
from ..io import cf
from ..io import schema as _schema
from ..io import store as _s
from ..io.atomic import atomic_write, output_errors
from ..io.output import check_product_target
from ..io.reader import check_output, open_output
from ..io.schema import STATUS_DONE
from ..io.store import text
from ..layout import AIRS, FGS1, FGS1_WAVELENGTH_UM, frames_per_bin
from ..nan import quiet_nan
from .defaults import DEFAULT_FGS1_RADIUS, DEFAULT_HALF_WIDTH

log = logging.getLogger(__name__)


class SelectionError(ArielstreamError, IndexError):
    """An observation index that the file does not have."""


BACKGROUND_GAP = 3  # rows (AIRS) or pixels (FGS1) between the aperture and the background region
# AIRS: columns on each side whose outer rows estimate a column's background; the calibration's background
# step uses the same window (one home: frame_steps)
BACKGROUND_WINDOW = frame_steps.BACKGROUND_WINDOW
LC_FORMAT_NAME = "arielstream-lightcurves"
LC_FORMAT_VERSION = 1
BLOCK_BYTES = 64 * 2**20  # float64 working set of one time block
VARIANCE_MODEL = ("V = max(D, 0) + max(K, 0) + n_reads * read_noise**2 per pixel and bin, K the dark charge "
                  "subtracted per bin (dark_charge), n_reads = 2 * CDS per bin (electrons); "
                  f"unknown read noise: {frame_steps.TYPICAL_READ_NOISE} e per detector pixel")


# ---------------------------------------------------------------- pure functions over arrays
def usable_pixels(finite_always: np.ndarray, dq: np.ndarray | None = None,
                  do_not_use: int = dqbits.DO_NOT_USE) -> np.ndarray:
    """Pixels usable at all times: finite in every bin and with no ``do_not_use`` DQ bit.

    ``do_not_use``: the file's mask (:func:`arielstream.dq.do_not_use` of its ``dq_bits``).
    """
    usable = np.asarray(finite_always, dtype=bool).copy()
    if dq is not None:
        usable &= (np.asarray(dq) & do_not_use) == 0
    return usable


pixel_variance = frame_steps.pixel_variance  # the calibration's variance model: one model, one policy


def trace_row(mean_frame: np.ndarray, usable: np.ndarray) -> float:
    """Flux-weighted mean row of the AIRS trace in a ``(x, y)`` time-averaged frame."""
    frame = np.where(usable, mean_frame, np.nan)
    with quiet_nan():  # columns without a usable pixel have no background (and no weight)
        background = np.nanmedian(frame, axis=1, keepdims=True) if np.isfinite(frame).any() else 0.0
    w = np.nan_to_num(np.clip(frame - background, 0.0, None), nan=0.0)
    total = w.sum()
    if not total > 0:
        return (mean_frame.shape[1] - 1) / 2.0
    rows = np.arange(mean_frame.shape[1], dtype=np.float64)
    return float((w * rows[None, :]).sum() / total)


def aperture_rows(centre: float, half_width: int, n_rows: int) -> np.ndarray:
    """Rows ``y`` with ``|y - centre| <= half_width`` as a ``(n_rows,)`` mask."""
    if half_width < 0:
        raise ValueError(f"half_width must be >= 0; got {half_width}")
    rows = np.arange(n_rows, dtype=np.float64)
    return np.abs(rows - centre) <= half_width + 1e-9


def centroid(frames: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Flux-weighted centroid ``(x, y)`` of each ``(..., x, y)`` frame, median-subtracted and clipped at 0."""
    frames = np.asarray(frames, dtype=np.float64)
    lead = frames.shape[:-2]
    flat = np.where(usable, frames, np.nan).reshape(-1, *frames.shape[-2:])
    out = np.full((flat.shape[0], 2), np.nan)
    x = np.arange(frames.shape[-2], dtype=np.float64)[:, None]
    y = np.arange(frames.shape[-1], dtype=np.float64)[None, :]
    for k, frame in enumerate(flat):
        if not np.isfinite(frame).any():
            continue
        w = np.nan_to_num(np.clip(frame - np.nanmedian(frame), 0.0, None), nan=0.0)
        total = w.sum()
        if total > 0:
            out[k] = ((w * x).sum() / total, (w * y).sum() / total)
    return out.reshape(*lead, 2)


def disk(centre: Sequence[float] | np.ndarray, radius: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a ``(x, y)`` frame whose centres lie within ``radius`` of ``centre`` = (x, y)."""
    x = np.arange(shape[0], dtype=np.float64)[:, None]
    y = np.arange(shape[1], dtype=np.float64)[None, :]
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


@dataclass(frozen=True)
class Extraction:
    """A time-constant extraction of column ``x`` in bin ``t`` (:func:`apply_extraction`).

    ``flux_t[x] = sum_y weights[x, y] D_t[x, y] - sum_x' sky_mix[x, x'] c_t[x']`` with
    ``c_t[x'] = sum_y sky_weights[x', y] D_t[x', y]``: the aperture's weighted sum less
    a background measured in other pixels, possibly of other columns (AIRS). Without
    ``sky_weights`` (FGS1, or no background) the flux is the weighted sum alone.
    """

    weights: np.ndarray  # (x, y) float64, 0 outside the aperture and on unusable pixels
    n_reads: int  # reads per bin (2 per CDS)
    read_noise: np.ndarray  # (x, y) electrons per read, NaN replaced by the typical value
    n_pixels: np.ndarray  # (x,) usable pixels given a weight
    dark_charge: np.ndarray | float = 0.0  # (x, y) dark charge subtracted per bin (e): its shot noise is in V
    extra: dict[str, Any] = field(default_factory=dict)  # trace_row, aperture_rows / centre
    sky_weights: np.ndarray | None = None  # (x, y): each column's mean of its background pixels (rows sum to 1 or 0)
    sky_mix: np.ndarray | None = None  # (x, x'): background of column x per unit c[x'], s[x] K[x, x']


def _clean_read_noise(read_noise: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The read noise plane with unknown values replaced as the calibration does (per detector pixel)."""
    rn = None if read_noise is None else np.asarray(read_noise, dtype=np.float64)
    return frame_steps.read_noise_or_typical(rn, shape=shape)


def background_weights(region: np.ndarray) -> np.ndarray:
    """Weights ``(x, y)`` of a per-column mean over ``region`` (each column's weights sum to 1, or are all 0)."""
    region = np.asarray(region, dtype=np.float64)
    n = region.sum(axis=1, keepdims=True)
    return np.divide(region, n, out=np.zeros_like(region), where=n > 0)


window_weights = frame_steps.window_weights  # the window maths lives with the calibration's background step
band_product = frame_steps.band_product


def plan_airs(mean_frame: np.ndarray, usable: np.ndarray, read_noise: np.ndarray | None, n_reads: int, *,
              half_width: int = DEFAULT_HALF_WIDTH, weighted: bool = False, background: bool = True,
              background_gap: int = BACKGROUND_GAP, background_window: int = BACKGROUND_WINDOW,
              subtracted: np.ndarray | float = 0.0, dark_charge: np.ndarray | float = 0.0) -> Extraction:
    """Decide the aperture, weights and background of one AIRS observation from its ``(x, y)`` mean frame.

    With ``background``, each column's background in each bin is the mean of the
    usable pixels at ``|y - centre| >= half_width + background_gap`` of the columns
    within ``background_window`` of it (:func:`window_weights`; 0: its own pixels
    only), times the aperture's weight sum ``s``: ``plan.sky_weights`` and
    ``plan.sky_mix`` (:class:`Extraction`), so flux and variance stay one weighted
    sum. A column whose window holds no background pixel is not corrected (and
    counted in ``extra["no_background_columns"]``). ``subtracted`` is the mean
    background the calibration already removed and ``dark_charge`` the ``(x, y)`` dark
    charge it subtracted per bin (both for the variance: the optimal weights', and
    :func:`apply_extraction`'). ``background_gap`` >= 1: no row is both aperture and background
    (the variance counts them apart).
    """
    if background and background_gap < 1:
        raise ValueError(f"background_gap must be >= 1 row; got {background_gap}")
    mean_frame = np.asarray(mean_frame, dtype=np.float64)
    rn = _clean_read_noise(read_noise, mean_frame.shape)
    centre = trace_row(mean_frame, usable)
    rows = aperture_rows(centre, half_width, mean_frame.shape[1])
    inside = usable & rows[None, :]
    y = np.arange(mean_frame.shape[1], dtype=np.float64)
    outside = usable & (np.abs(y - centre) >= half_width + background_gap - 1e-9)[None, :]
    n_sky = outside.sum(axis=1) if background else np.zeros(mean_frame.shape[0], dtype=np.int64)
    b = background_weights(outside) if background else np.zeros_like(mean_frame)
    window = window_weights(n_sky, background_window)
    sky = band_product(np.einsum("xy,xy->x", np.where(outside, mean_frame, 0.0), b), window)  # per column
    clean = np.where(inside, np.clip(mean_frame - sky[:, None], 0.0, None), 0.0)
    kept, n_filled = profile_fill(clean, rows, usable)
    if weighted:
        norm = clean.sum(axis=1, keepdims=True)
        profile = np.divide(clean, norm, out=np.zeros_like(clean), where=norm > 0) * kept[:, None]
        photons = np.where(inside, mean_frame + np.nan_to_num(subtracted), 0.0)
        v0 = np.where(inside, pixel_variance(photons, rn, n_reads, dark_charge), np.inf)
        v0 = np.where(v0 > 0, v0, np.inf)
        p_over_v = profile / v0
        denom = (profile * p_over_v).sum(axis=1, keepdims=True)
        weights = np.divide(p_over_v, denom, out=np.zeros_like(p_over_v), where=denom > 0)
    else:
        weights = inside / kept[:, None]
    n_pixels = (weights != 0).sum(axis=1)
    first, last = np.flatnonzero(rows)[[0, -1]] if rows.any() else (-1, -1)
    uncorrected = int(((n_pixels > 0) & (window.sum(axis=1) == 0)).sum()) if background else 0
    return Extraction(weights=weights, n_reads=n_reads, read_noise=rn, n_pixels=n_pixels, dark_charge=dark_charge,
                      sky_weights=b if background else None,
                      sky_mix=weights.sum(axis=1)[:, None] * window if background else None,
                      extra={"trace_row": centre, "aperture_rows": (int(first), int(last)),
                             "background_pixels": n_sky, "background_window": int(background_window),
                             "no_background_columns": uncorrected, "n_filled": n_filled,
                             "kept_fraction": kept})


# ---- bad pixels of the AIRS aperture filled from the trace's spatial profile (Horne 1986)
FILL_NEIGHBOURS = 3  # columns on each side whose normalised profile stands in for a column's missing pixels
MIN_KEPT = 0.5  # a column whose usable pixels hold less of its flux is not filled (more guess than data)


def profile_fill(clean: np.ndarray, rows: np.ndarray, usable: np.ndarray,
                 neighbours: int = FILL_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each column's aperture flux that its usable pixels hold, and how many pixels it misses.

    ``clean`` is the ``(x, y)`` time-mean frame, background-subtracted and clipped
    at 0 on the usable aperture pixels (0 elsewhere); ``rows`` the aperture rows.
    The reference profile of a column is the mean normalised profile of the
    complete columns (every aperture pixel usable) within ``neighbours`` columns
    (all complete columns when none is that close); the missing pixels hold its
    sum over their rows. Dividing a column's usable sum by ``kept`` estimates the
    whole aperture's flux; the estimate stays one time-constant weighted sum, so
    its variance (``sum W² V``) carries the extra noise of the filled pixels.
    Returns ``(kept (x,), n_filled (x,) int)``: 1 and 0 for a column not filled
    (nothing missing, no usable pixel, no reference, or ``kept < MIN_KEPT``).
    """
    aperture = np.broadcast_to(np.asarray(rows, dtype=bool)[None, :], clean.shape)
    missing = aperture & ~np.asarray(usable, dtype=bool)
    norm = clean.sum(axis=1)
    profile = np.divide(clean, norm[:, None], out=np.zeros_like(clean), where=norm[:, None] > 0)
    complete = ~missing.any(axis=1) & (norm > 0)
    kept = np.ones(clean.shape[0])
    n_filled = np.zeros(clean.shape[0], dtype=np.int64)
    x = np.arange(clean.shape[0])
    for col in np.flatnonzero(missing.any(axis=1) & (norm > 0)):
        near = complete & (np.abs(x - col) <= neighbours)
        if not near.any():
            near = complete
        if not near.any():
            continue
        fraction = 1.0 - float(profile[near].mean(axis=0)[missing[col]].sum())
        if fraction >= MIN_KEPT:
            kept[col], n_filled[col] = fraction, int(missing[col].sum())
    return kept, n_filled


def plan_fgs1(mean_frame: np.ndarray, usable: np.ndarray, read_noise: np.ndarray | None, n_reads: int, *,
              radius: float = DEFAULT_FGS1_RADIUS, background: bool = True,
              background_gap: float = BACKGROUND_GAP, dark_charge: np.ndarray | float = 0.0) -> Extraction:
    """Decide the photometric aperture (and background annulus) of one FGS1 observation from its mean frame.

    The aperture is every usable pixel within ``radius`` of the centroid of the
    time-averaged frame; with ``background``, the background per bin is the mean
    of the usable pixels farther than ``radius + background_gap``. ``dark_charge``:
    the ``(x, y)`` dark charge subtracted per bin, for :func:`apply_extraction`'s variance.
    """
    mean_frame = np.asarray(mean_frame, dtype=np.float64)
    rn = _clean_read_noise(read_noise, mean_frame.shape)
    centre = centroid(mean_frame, usable)
    if not np.isfinite(centre).all():
        centre = np.array([(mean_frame.shape[0] - 1) / 2, (mean_frame.shape[1] - 1) / 2])
    aperture = disk(centre, radius, mean_frame.shape) & usable
    weights = aperture.astype(np.float64)
    sky = usable & ~disk(centre, radius + background_gap, mean_frame.shape)
    if background and sky.any():
        weights = weights - weights.sum() * sky / sky.sum()
    return Extraction(weights=weights, n_reads=n_reads, read_noise=rn, n_pixels=aperture.sum(axis=1),
                      dark_charge=dark_charge, extra={"aperture_centre": (float(centre[0]), float(centre[1])),
                             "background_pixels": int(sky.sum()) if background else 0,
                             "no_background_columns": int(background and aperture.any() and not sky.any())})


class Curves(NamedTuple):
    """Light curves of a block of bins under one extraction (:func:`apply_extraction`)."""

    flux: np.ndarray  # (t, x) per column, NaN for a column without aperture pixels
    var: np.ndarray  # (t, x) its variance
    white: np.ndarray  # (t,) the sum over the columns with aperture pixels
    white_var: np.ndarray  # (t,) its variance (not the sum of the columns': their backgrounds share pixels)


def apply_extraction(block: np.ndarray, plan: Extraction, subtracted: np.ndarray | None = None) -> Curves:
    """Light curves of a ``(t, x, y)`` block of bins under a time-constant extraction, with exact variances.

    Per column (:class:`Extraction`): ``flux = A - M c`` with ``A = sum_y w D`` the
    aperture sum, ``c = sum_y b D`` the columns' background means and ``M`` the plan's
    ``sky_mix``; ``var = sum_y w² V + M² var(c)``, ``var(c) = sum_y b² V``, as the
    aperture and background pixels are distinct. The white light sums the columns
    with aperture pixels: ``A`` summed less ``u c`` with ``u = sum_x M[x, :]``, its
    variance ``sum_x sum_y w² V + u² var(c)``, which counts each background pixel once
    however many columns' windows hold it. A column that no pixel contributes to is
    NaN. ``subtracted`` (broadcastable to the block) is a background the calibration
    already took out of ``D``: its photons are noise all the same, so it is added back
    into ``V``; so is the plan's ``dark_charge`` (:func:`.frame_steps.pixel_variance`).
    """
    d = np.asarray(block, dtype=np.float64)
    w, b, mix = plan.weights, plan.sky_weights, plan.sky_mix
    used = w != 0
    read = used if b is None else used | (b != 0)
    d = np.where(read, d, 0.0)  # unusable pixels carry weight 0; keep NaN out of the sums
    photons = d if subtracted is None else d + np.nan_to_num(subtracted)
    v = pixel_variance(photons, plan.read_noise, plan.n_reads, plan.dark_charge)
    flux = np.einsum("txy,xy->tx", d, w)
    var = np.einsum("txy,xy->tx", v, w * w)
    keep = used.any(axis=1)
    c = None if b is None or mix is None else np.einsum("txy,xy->tx", d, b)
    if c is not None and mix is not None and subtracted is not None:
        # The calibration's background step took its own windowed estimate L out of every pixel of each column:
        # the aperture sums lost s L[x], the background means L[x']. Re-estimating from what is left would leave
        # s (I - K) L in the flux, a noise V does not count; with L put back, the flux is the extraction of the
        # data before that step (whose photons V already counts). A column the extraction does not correct (its
        # window holds no background pixel) keeps the calibration's subtraction.
        level = np.broadcast_to(np.nan_to_num(np.asarray(subtracted, dtype=np.float64)), d.shape)[:, :, 0]
        flux += level * (w.sum(axis=1) * mix.any(axis=1))
        c = c + level
    white, white_var = flux[:, keep].sum(axis=1), var[:, keep].sum(axis=1)
    if b is not None and mix is not None and c is not None:
        var_c = np.einsum("txy,xy->tx", v, b * b)
        flux -= band_product(c, mix)
        var += band_product(var_c, mix * mix)
        u = mix[keep].sum(axis=0)
        white -= (c * u).sum(axis=1)
        white_var += (var_c * (u * u)).sum(axis=1)
    flux[:, ~keep] = np.nan
    var[:, ~keep] = np.nan
    return Curves(flux, var, white, white_var)


def apply_weights(block: np.ndarray, plan: Extraction,
                  subtracted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flux and variance ``(t, x)`` of each column of a ``(t, x, y)`` block (:func:`apply_extraction`)."""
    curves = apply_extraction(block, plan, subtracted)
    return curves.flux, curves.var


def normalise(flux: np.ndarray, err: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Divide light curves by their median over time (``axis``): normalised flux and error."""
    with quiet_nan():  # a light curve without data (no usable pixel) stays NaN
        median = np.nanmedian(flux, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return flux / median, err / np.abs(median)


# ---------------------------------------------------------------- adapter: an arielstream file
@dataclass
class LightCurves:
    """Light curves of one observation (``None`` for an instrument the file does not hold)."""

    index: int  # observation index in the calibrated file
    planet_id: int
    visit: int
    airs_time: np.ndarray | None = None  # (t,) hours
    wavelength: np.ndarray | None = None  # (w,) µm, ascending (target order)
    wavelength_label: list[str] | None = None  # (w,) wl_k
    column: np.ndarray | None = None  # (w,) detector column
    airs_flux: np.ndarray | None = None  # (t, w) electrons per bin
    airs_flux_err: np.ndarray | None = None
    airs_white: np.ndarray | None = None  # (t,)
    airs_white_err: np.ndarray | None = None
    airs_n_pixels: np.ndarray | None = None  # (w,)
    airs_n_filled: np.ndarray | None = None  # (w,) bad aperture pixels filled from the spatial profile
    trace_row: float = float("nan")
    aperture_rows: tuple[int, int] = (-1, -1)
    fgs1_time: np.ndarray | None = None
    fgs1_flux: np.ndarray | None = None  # (t,)
    fgs1_flux_err: np.ndarray | None = None
    fgs1_centroid: np.ndarray | None = None  # (t, 2) x, y
    fgs1_aperture_centre: tuple[float, float] = (float("nan"), float("nan"))
    fgs1_n_pixels: int = 0

    def __repr__(self) -> str:  # one line: the shapes, not the arrays
        held = [f"AIRS flux {self.airs_flux.shape} (time, wavelength)"] if self.airs_flux is not None else []
        held += [f"FGS1 flux {self.fgs1_flux.shape} (time,)"] if self.fgs1_flux is not None else []
        return f"<LightCurves {self.planet_id}/visit {self.visit} (index {self.index}): {', '.join(held) or 'empty'}>"


def file_config(f: h5py.File) -> dict[str, Any]:
    """The source file's calibration config (JSON attribute) as a dict."""
    return json.loads(text(f.attrs.get("config", "{}")))


def file_dq_bits(f: h5py.File) -> dict[str, int] | None:
    """The source file's data-quality bit names -> values (its ``dq_bits`` attribute), or None without one."""
    raw = f.attrs.get(_schema.ATTR_DQ_BITS)
    return None if raw is None else {str(k): int(v) for k, v in json.loads(text(raw)).items()}


BINNING_OPTIONS = ("cds", "time_binning", "airs_bin", "fgs1_bin")


def reads_per_bin(config: dict[str, Any], instrument: str) -> int:
    """Reads summed in one output time bin, from a file's config (:func:`arielstream.layout.frames_per_bin`).

    Only the binning options are read (an option missing from an older file takes
    today's default), so a config that this version would otherwise reject still works.
    """
    binning = build_config(**{k: config[k] for k in BINNING_OPTIONS if k in config})
    return frames_per_bin(binning, instrument)


check_source = check_output  # a calibrated file, or InputError naming it


def time_blocks(n_bins: int, frame_items: int, block_bytes: int = BLOCK_BYTES) -> Iterator[slice]:
    """Slices of whole time bins whose float64 working set stays under ``block_bytes``."""
    step = max(1, block_bytes // max(1, 8 * 3 * frame_items))
    for start in range(0, n_bins, step):
        yield slice(start, min(start + step, n_bins))


def mean_and_finite(ds: h5py.Dataset, index: int, block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Time-mean ``(x, y)`` frame (NaN ignored) and the pixels finite in every bin, one block at a time."""
    n_bins, *frame = ds.shape[1:]
    total = np.zeros(frame)
    count = np.zeros(frame)
    finite = np.ones(frame, dtype=bool)
    for sl in time_blocks(n_bins, int(np.prod(frame)), block_bytes):
        block = ds[index, sl].astype(np.float64)
        ok = np.isfinite(block)
        finite &= ok.all(axis=0)
        total += np.where(ok, block, 0.0).sum(axis=0)
        count += ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, finite


def _read_noise(f: h5py.File, instrument: str, index: int, label: str,
                shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """The observation's read noise per output pixel, unknown values replaced by the typical one; and how many."""
    key = _schema.dataset(instrument, _schema.READ_NOISE)
    rn = f[key][index].astype(np.float64) if key in f else None
    assumed = int(np.prod(shape)) if rn is None else int((~np.isfinite(rn)).sum())
    factor = int(file_config(f).get("spatial_bin", 1))
    if assumed:
        log.warning("%s %s: read noise unknown for %d pixel(s); the typical %.1f e per detector pixel is assumed",
                    label, instrument, assumed, frame_steps.TYPICAL_READ_NOISE)
    return frame_steps.read_noise_or_typical(rn, factor, shape), assumed


def subtracted_background(f: h5py.File, instrument: str, index: int) -> np.ndarray | None:
    """The background the calibration removed from observation ``index``, broadcastable to ``(t, x, y)``.

    ``<inst>/background`` is ``(t, x)`` for AIRS and ``(t,)`` for FGS1, per output pixel;
    ``None`` when the calibration did not subtract one.
    """
    key = _schema.dataset(instrument, _schema.BACKGROUND)
    if key not in f:
        return None
    level = f[key][index].astype(np.float64)
    return level[:, :, None] if level.ndim == 2 else level[:, None, None]


def subtracted_dark(f: h5py.File, instrument: str, index: int) -> np.ndarray | float:
    """The dark charge the calibration subtracted per bin from observation ``index``, ``(x, y)`` electrons.

    ``<inst>/dark_charge``; 0 where the file has none (no dark step, or a file
    written before the plane existed: its variance leaves out the dark's shot noise).
    """
    key = _schema.dataset(instrument, _schema.DARK_CHARGE)
    return f[key][index].astype(np.float64) if key in f else 0.0


def _extract_instrument(f: h5py.File, instrument: str, index: int, plan_fn, block_bytes: int, label: str):
    ds = f[_schema.dataset(instrument, _schema.SIGNAL)]
    mean, finite = mean_and_finite(ds, index, block_bytes)
    dq_key = _schema.dataset(instrument, _schema.DQ)
    dq = f[dq_key][index] if dq_key in f else None
    usable = usable_pixels(finite, dq, dqbits.do_not_use(file_dq_bits(f)))
    subtracted = subtracted_background(f, instrument, index)
    mean_subtracted = 0.0 if subtracted is None else subtracted.mean(axis=0)
    rn, assumed = _read_noise(f, instrument, index, label, mean.shape)
    plan = plan_fn(mean, usable, rn, reads_per_bin(file_config(f), instrument), mean_subtracted,
                   subtracted_dark(f, instrument, index))
    plan.extra["assumed_read_noise_pixels"] = assumed
    if plan.extra.get("no_background_columns"):
        log.warning("%s %s: %d column(s) have no background pixels outside the aperture (aperture too wide for "
                    "the rows?): their light curves are not background-corrected", label, instrument,
                    plan.extra["no_background_columns"])
    parts, centroids = [], []
    n_bins = ds.shape[1]
    for sl in time_blocks(n_bins, int(np.prod(ds.shape[2:])), block_bytes):
        block = ds[index, sl]
        parts.append(apply_extraction(block, plan, None if subtracted is None else subtracted[sl]))
        if instrument == FGS1.name:
            centroids.append(centroid(block, usable))
    centroid_track = np.concatenate(centroids) if centroids else None
    return plan, Curves(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True))), centroid_track


def target_order(wavelength: np.ndarray) -> np.ndarray:
    """Indices that put the stored x axis in the target order (ascending wavelength)."""
    return np.argsort(np.asarray(wavelength), kind="stable")


def observation_light_curves(f: h5py.File, index: int, *, half_width: int = DEFAULT_HALF_WIDTH,
                             weighted: bool = False, fgs1_radius: float = DEFAULT_FGS1_RADIUS,
                             background: bool = True, background_window: int = BACKGROUND_WINDOW,
                             block_bytes: int = BLOCK_BYTES) -> LightCurves:
    """The light curves of observation ``index`` of an open arielstream file (read one time block at a time).

    ``background_window``: AIRS columns on each side whose outer rows estimate a
    column's background (:func:`window_weights`; 0: its own rows only).
    """
    n = f[_schema.PLANET_ID].shape[0]
    if not 0 <= index < n:
        raise IndexError(f"observation {index} outside 0..{n - 1}")
    lc = LightCurves(index=index, planet_id=int(f[_schema.PLANET_ID][index]), visit=int(f[_schema.VISIT][index]))
    label = f"{lc.planet_id}/visit {lc.visit}"
    held = _s.instruments_in(f)
    if AIRS.name in held:
        g = f[AIRS.name]

        def plan_a(mean, usable, rn, n_reads, subtracted, dark):
            return plan_airs(mean, usable, rn, n_reads, half_width=half_width, weighted=weighted,
                             background=background, background_window=background_window, subtracted=subtracted,
                             dark_charge=dark)

        plan, curves, _ = _extract_instrument(f, AIRS.name, index, plan_a, block_bytes, label)
        order = target_order(g[_schema.WAVELENGTH][()])
        flux, var = curves.flux[:, order], curves.var[:, order]
        lc.airs_time = g[_schema.TIME][()]
        lc.wavelength = g[_schema.WAVELENGTH][()][order]
        lc.wavelength_label = [text(s) for s in g[_schema.WAVELENGTH_LABEL][()][order]]
        lc.column = g[_schema.COLUMN][()][order]
        lc.airs_flux, lc.airs_flux_err = flux, np.sqrt(var)
        lc.airs_white, lc.airs_white_err = curves.white, np.sqrt(curves.white_var)
        lc.airs_n_pixels = plan.n_pixels[order]
        lc.airs_n_filled = plan.extra["n_filled"][order]
        lc.trace_row = plan.extra["trace_row"]
        lc.aperture_rows = plan.extra["aperture_rows"]
    if FGS1.name in held:

        def plan_f(mean, usable, rn, n_reads, subtracted, dark):
            return plan_fgs1(mean, usable, rn, n_reads, radius=fgs1_radius, background=background, dark_charge=dark)

        plan, curves, track = _extract_instrument(f, FGS1.name, index, plan_f, block_bytes, label)
        lc.fgs1_time = f[_schema.dataset(FGS1.name, _schema.TIME)][()]
        lc.fgs1_flux, lc.fgs1_flux_err = curves.white, np.sqrt(curves.white_var)
        lc.fgs1_centroid = track
        lc.fgs1_aperture_centre = plan.extra["aperture_centre"]
        lc.fgs1_n_pixels = int(plan.n_pixels.sum())
    return lc


def done_observations(f: h5py.File, observations: Sequence[int] | None = None) -> list[int]:
    """Indices of the observations whose status is done (optionally only among ``observations``, each once)."""
    status = f[_schema.STATUS][()]
    if observations is None:
        return [int(i) for i in np.flatnonzero(status == STATUS_DONE)]
    chosen = []
    for i in dict.fromkeys(observations):  # an index given twice is one observation, not two visits
        if not 0 <= i < status.shape[0]:
            raise SelectionError(f"observation {i} outside 0..{status.shape[0] - 1}")
        if status[i] != STATUS_DONE:
            log.warning("observation %d is not done (status %d): skipped", i, int(status[i]))
            continue
        chosen.append(int(i))
    return chosen


def require_done(f: h5py.File, path: str | Path, observations: Sequence[int] | None, purpose: str) -> list[int]:
    """:func:`done_observations`, or an :class:`InputError` (exit 66) when there is none to ``purpose``.

    Every product refuses an empty result the same way rather than writing an empty file that looks complete.
    """
    chosen = done_observations(f, observations)
    if not chosen:
        among = (f"among observations {[int(i) for i in observations]}" if observations is not None
                 else f"(none of its {f[_schema.STATUS].shape[0]} observations is done)")
        raise InputError(path, f"no done observation to {purpose} {among}")
    return chosen


def default_output(path: str | Path) -> Path:
    """``OUT.h5`` → ``OUT.lightcurves.h5`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.lightcurves.h5")


def extract(path: str | Path, out_path: str | Path | None = None, *, half_width: int = DEFAULT_HALF_WIDTH,
            weighted: bool = False, fgs1_radius: float = DEFAULT_FGS1_RADIUS, background: bool = True,
            background_window: int = BACKGROUND_WINDOW, observations: Sequence[int] | None = None,
            block_bytes: int = BLOCK_BYTES) -> Path:
    """Write the light curves of every done observation of ``path`` to ``out_path`` (layout in the module doc).

    Streamed: one observation (and within it one block of time bins) at a time.

    Parameters
    ----------
    path : str or Path
        A calibrated file (the output of :func:`arielstream.calibrate`).
    out_path : str or Path, optional
        The light-curve file to write (default ``OUT.lightcurves.h5`` beside ``path``).
    half_width : int
        Rows each side of the AIRS trace in the aperture.
    weighted : bool
        Optimal (variance-weighted) extraction instead of a box sum.
    fgs1_radius : float
        Radius in pixels of the FGS1 aperture.
    background : bool
        Subtract the background measured off the trace.
    background_window : int
        AIRS: columns on each side whose outer rows estimate a column's background
        (default :data:`BACKGROUND_WINDOW`; 0: each column's own rows).
    observations : sequence of int, optional
        Indices of the observations to extract (default every done one).
    block_bytes : int
        Bytes of time bins read at a time.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        ``half_width`` < 0, ``background_window`` < 0 or ``fgs1_radius`` <= 0.
    InputError
        ``path`` is not a calibrated file, or an observation asked for is not done.
    ConfigError
        ``out_path`` is ``path``, one of its side files, or inside its data folder.
    """
    path = Path(path)
    out = Path(out_path) if out_path is not None else default_output(path)
    check_product_target(out, path)
    if half_width < 0:
        raise ValueError(f"half_width must be >= 0; got {half_width}")
    if not fgs1_radius > 0:
        raise ValueError(f"fgs1_radius must be positive; got {fgs1_radius}")
    if background_window < 0:
        raise ValueError(f"background_window must be >= 0; got {background_window}")
    with open_output(path) as src:
        chosen = require_done(src, path, observations, "extract")
        with atomic_write(out, "write the light-curve file") as partial:
            with output_errors(out, "create the light-curve file"):
                dst = h5py.File(partial, "w")
            with dst:
                _write_light_curves(src, dst, path, chosen, half_width=half_width, weighted=weighted,
                                    fgs1_radius=fgs1_radius, background=background,
                                    background_window=background_window, block_bytes=block_bytes)
    return out


def relative_source(source: Path, product: str | Path) -> str:
    """Where ``source`` is, relative to the folder of the product file ``product`` (never an absolute local path)."""
    return Path(os.path.relpath(Path(source).resolve(), Path(product).resolve().parent)).as_posix()


_FLUX_COMMENT = "electrons per time bin (flat-fielded); UDUNITS has no electron unit"
_NAN_FILL = {"_FillValue": np.nan}


def _write_light_curves(src: h5py.File, dst: h5py.File, path: Path, chosen: list[int], *, half_width: int,
                        weighted: bool, fgs1_radius: float, background: bool, background_window: int,
                        block_bytes: int) -> None:
    n = len(chosen)
    dst.attrs.update({
        _schema.ATTR_FORMAT: LC_FORMAT_NAME, _schema.ATTR_FORMAT_VERSION: LC_FORMAT_VERSION,
        _schema.ATTR_CONVENTIONS: _schema.CONVENTIONS,
        "title": "arielstream light curves (spectral and white-light, per done observation)",
        "source": relative_source(path, dst.filename),
        "source_config": text(src.attrs.get("config", "{}")), "profile": text(src.attrs.get("profile", "")),
        "arielstream_version": text(src.attrs.get("arielstream_version", "")),
        "extracted_with": __version__, "half_width": int(half_width), "weighted": bool(weighted),
        "fgs1_radius": float(fgs1_radius), "background": bool(background),
        "background_gap": BACKGROUND_GAP, "background_window": int(background_window),
        "variance_model": VARIANCE_MODEL,
    })
    obs = cf.scale(dst, _schema.OBS, np.arange(n, dtype=np.int32), "done observation (one planet visit)")
    for name, data, long_name in ((_schema.PLANET_ID, src[_schema.PLANET_ID][()][chosen].astype(np.int64),
                                   "planet id"),
                                  (_schema.VISIT, src[_schema.VISIT][()][chosen].astype(np.int16),
                                   "visit of the planet"),
                                  ("source_index", np.array(chosen, dtype=np.int64),
                                   "observation index in the calibrated file")):
        cf.describe(cf.attach(dst.create_dataset(name, data=data), obs), long_name)
    targets: dict[str, h5py.Dataset] = {}
    held = _s.instruments_in(src)
    time_attrs = {"long_name": "mean time of the frames of each bin", "units": "hours",
                  "reference": _schema.TIME_REFERENCE}
    if AIRS.name in held:
        g, s = dst.create_group(AIRS.name), src[AIRS.name]
        order = target_order(s[_schema.WAVELENGTH][()])
        time = cf.scale(g, _schema.TIME, s[_schema.TIME][()], **time_attrs)
        wavelength = cf.scale(g, _schema.WAVELENGTH, s[_schema.WAVELENGTH][()][order], "wavelength", "um",
                              standard_name="radiation_wavelength")
        edge = cf.scale(g, "edge", np.arange(2, dtype=np.int8), "aperture edge (0: first row, 1: last row)")
        cf.describe(cf.attach(g.create_dataset(_schema.WAVELENGTH_LABEL, data=s[_schema.WAVELENGTH_LABEL][()][order]),
                              wavelength), "target label (wl_k)")
        cf.describe(cf.attach(g.create_dataset(_schema.COLUMN, data=s[_schema.COLUMN][()][order]), wavelength),
                    "detector column")
        labels = f"{_schema.WAVELENGTH_LABEL} {_schema.COLUMN}"
        for name, dims, dtype, long_name, units, extra in (
                ("flux", (obs, time, wavelength), "f8", "spectral light curve (electrons per time bin)",
                 _schema.COUNT, {"comment": _FLUX_COMMENT, "coordinates": labels}),
                ("flux_err", (obs, time, wavelength), "f8", "1-sigma uncertainty of flux (electrons per time bin)",
                 _schema.COUNT, {"coordinates": labels}),
                ("white_flux", (obs, time), "f8", "white-light curve (electrons per time bin)", _schema.COUNT,
                 {"comment": _FLUX_COMMENT}),
                ("white_flux_err", (obs, time), "f8", "1-sigma uncertainty of white_flux (electrons per time bin)",
                 _schema.COUNT, {}),
                ("n_pixels", (obs, wavelength), "i2", "usable aperture pixels of each wavelength", "",
                 {"coordinates": labels}),
                ("n_filled", (obs, wavelength), "i2", "bad aperture pixels filled from the spatial profile", "",
                 {"coordinates": labels}),
                ("trace_row", (obs,), "f8", "trace row (detector pixel row)", "", {}),
                ("aperture_rows", (obs, edge), "i2", "first and last detector row of the aperture", "", {})):
            targets[f"{AIRS.name}/{name}"] = _product_dataset(g, name, dims, dtype, long_name, units, extra)
    if FGS1.name in held:
        g, s = dst.create_group(FGS1.name), src[FGS1.name]
        time = cf.scale(g, _schema.TIME, s[_schema.TIME][()], **time_attrs)
        xy = cf.scale(g, _schema.XY, np.array([v.encode() for v in _schema.XY_VALUES], dtype="S1"),
                      "detector axis (x: column, y: row)")
        # a photometer: no wavelength axis; its band's nominal wavelength (wl_1) as a scalar coordinate
        cf.describe(g.create_dataset(_schema.WAVELENGTH, data=np.float64(FGS1_WAVELENGTH_UM)),
                    "nominal wavelength of the FGS1 photometer band (wl_1)", "um",
                    standard_name="radiation_wavelength")
        for name, dims, dtype, long_name, units, extra in (
                ("flux", (obs, time), "f8", "FGS1 photometric light curve (electrons per time bin)", _schema.COUNT,
                 {"comment": _FLUX_COMMENT, "coordinates": _schema.WAVELENGTH}),
                ("flux_err", (obs, time), "f8", "1-sigma uncertainty of flux (electrons per time bin)", _schema.COUNT,
                 {"coordinates": _schema.WAVELENGTH}),
                ("centroid", (obs, time, xy), "f8", "FGS1 centroid (detector column, row)", "1",
                 {"comment": "in detector pixels"}),
                ("aperture_centre", (obs, xy), "f8", "FGS1 aperture centre (detector column, row)", "1",
                 {"comment": "in detector pixels"}),
                ("n_pixels", (obs,), "i2", "pixels in the FGS1 aperture", "", {})):
            targets[f"{FGS1.name}/{name}"] = _product_dataset(g, name, dims, dtype, long_name, units, extra)
    for k, index in enumerate(chosen):
        lc = observation_light_curves(src, index, half_width=half_width, weighted=weighted,
                                      fgs1_radius=fgs1_radius, background=background,
                                      background_window=background_window, block_bytes=block_bytes)
        values = {
            f"{AIRS.name}/flux": lc.airs_flux, f"{AIRS.name}/flux_err": lc.airs_flux_err,
            f"{AIRS.name}/white_flux": lc.airs_white, f"{AIRS.name}/white_flux_err": lc.airs_white_err,
            f"{AIRS.name}/n_pixels": lc.airs_n_pixels, f"{AIRS.name}/n_filled": lc.airs_n_filled,
            f"{AIRS.name}/trace_row": lc.trace_row,
            f"{AIRS.name}/aperture_rows": lc.aperture_rows,
            f"{FGS1.name}/flux": lc.fgs1_flux, f"{FGS1.name}/flux_err": lc.fgs1_flux_err,
            f"{FGS1.name}/centroid": lc.fgs1_centroid,
            f"{FGS1.name}/aperture_centre": lc.fgs1_aperture_centre,
            f"{FGS1.name}/n_pixels": lc.fgs1_n_pixels,
        }
        for key, ds in targets.items():
            ds[k] = values[key]
        log.info("[%d/%d] %d/visit %d: light curves extracted", k + 1, n, lc.planet_id, lc.visit)


def _product_dataset(g: h5py.Group, name: str, dims: tuple[h5py.Dataset, ...], dtype: str, long_name: str,
                     units: str, extra: dict[str, Any]) -> h5py.Dataset:
    """A dataset of the light-curve file, its axes named by ``dims``; NaN-filled (``_FillValue``) when float."""
    floating = np.dtype(dtype).kind == "f"
    ds = g.create_dataset(name, shape=tuple(d.shape[0] for d in dims), dtype=dtype,
                          fillvalue=np.nan if floating else None)
    cf.describe(cf.attach(ds, *dims), long_name, units, **(_NAN_FILL if floating else {}), **extra)
    return ds


def is_lightcurve_file(f: h5py.File) -> bool:
    """True for a light-curve file written by :func:`extract` (its ``format`` attribute)."""
    return text(f.attrs.get(_schema.ATTR_FORMAT, "")) == LC_FORMAT_NAME
