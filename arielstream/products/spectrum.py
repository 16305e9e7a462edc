"""Transmission spectra from a calibrated file: transit timing, depth per wavelength, a submission file.

Two layers, as in :mod:`.lightcurves`: pure functions over arrays (the maths, no
file), then an adapter that reads an arielstream HDF5 file one observation at a
time (:func:`spectrum`).

The fit of one observation
--------------------------
* **Light curves** come from :func:`.lightcurves.observation_light_curves`
  (AIRS spectral and white light, FGS1 photometry, each with its propagated
  1-sigma error). Each curve is divided by its median.
* **Transit model**: a trapezoid in time (0 out of transit, 1 at full depth;
  the simulator's shape, no limb darkening) with mid-time ``t0``, total and full
  durations ``t14`` and ``t23``, averaged exactly over each time bin (bins are
  long next to the ingress: a point sample would bias the depth).
* **Timing** is fitted once per observation, on the AIRS white light and the
  FGS1 curve together (sum of their chi²): a grid over ``t0``, ``t14`` and
  ``t23 / t14``, then a downhill simplex from the best point. At each point the
  baseline (a polynomial of ``degree`` in time) and the depth are linear and
  profiled out (with the FGS1 centroid track as regressors where the bins
  allow: jitter otherwise dominates the white light's chi²). Where the star
  and orbit are known (``<split>_star_info.csv``:
  period ``P`` in days, ``sma`` in stellar radii, inclination ``i`` in degrees),
  the expected durations narrow the grid; with fewer than
  :data:`MIN_BINS_FREE_DURATIONS` time bins they are fixed to the expected ones
  and only ``t0`` is fitted. Without star info every duration is fitted, which needs at
  least that many bins: a visit with fewer gets no spectrum (a warning names it).
* **Depth per wavelength**: with the timing fixed, weighted linear least
  squares per light curve of ``y = poly(t) + c · r(t) - A s(t) q(t)`` (``r``: the
  FGS1 centroid track, centred, where there are enough bins to afford it;
  ``q = poly(t) / poly(t0)`` from the previous of three iterations, so that the
  transit dims the baseline rather than adding to it);
  ``depth = A / poly(t0)``, its variance from the covariance (delta method),
  scaled by the residual chi²/dof when that exceeds 1.
* **Visits** of a planet are combined by inverse-variance weighting.
* **Submission**: ``planet_id, wl_1 … wl_283, sigma_1 … sigma_283`` (FGS1 is
  ``wl_1``; AIRS ascending in wavelength). The competition refuses negative or
  missing values: a negative depth is written as 0 (its sigma kept), a
  wavelength without data as the planet's median depth with a sigma that covers
  the spread of its spectrum (both logged).

Never a number it did not measure
---------------------------------
The submission holds one row per planet of the split (the planets of
``<data>/<split>/`` and of the calibrated file; with ``observations``, the
planets of those observations), or nothing is written. Each of these raises
:class:`SpectrumError` naming it (exit 65 from the command line):

* the file holds no FGS1 or no AIRS-CH0 data (a calibration with one instrument);
* the AIRS aperture holds no row of the trace (``half_width`` 0: the trace's
  centre row is a flux-weighted mean, which falls between rows);
* a planet without a spectrum: not in the calibrated file, no done observation
  (failed, pending), no transit found, or no FGS1 depth or no AIRS depth at all.

``missing="prior"`` (``--missing prior``) writes such a planet as the prior
instead, with a warning naming it: the mean of the training labels
(``<data>/train.csv``) per wavelength, with a sigma of their standard deviation
times ``sqrt(1 + 1/n)`` over ``n`` planets, the spread of a new planet's truth
about that mean, so that the score's log-likelihood stays honest (a narrower
sigma would be overconfident). On the train split the prior includes the
planet's own labels (1/n of the mean).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._version import __version__
from ..errors import ArielstreamError, InputError, OutputError, flag
from ..io import cf
from ..io import schema as _schema
from ..io.atomic import output_errors, staged
from ..io.output import UnsafeTargetError, check_product_target
from ..io.reader import open_output
from ..io.storage import DataPath, data_path, read_bytes
from ..io.store import instruments_in, text
from ..layout import AIRS, FGS1, SIGMA_PREFIX, TARGET_PREFIX, discover_observations
from . import lightcurves as lc
from .defaults import DEFAULT_DEGREE, DEFAULT_HALF_WIDTH, MISSING_POLICIES
from .score import read_table

log = logging.getLogger(__name__)

N_AIRS_TARGETS = 282  # wl_2 … wl_283
N_TARGETS = 1 + N_AIRS_TARGETS
MIN_BINS_FREE_DURATIONS = 12  # fewer bins than this: durations from the star info, when known
MIN_DOF_REGRESSORS = 8  # the centroid regressors are used only when this many degrees of freedom remain
N_STARTS = 3  # the timing's simplex starts from this many of the best grid points
MULTIPLICATIVE_ITERATIONS = 3  # fits of each light curve, each with the previous baseline shape
FITS_FORMAT_NAME = "arielstream-spectrum-fits"
FITS_FORMAT_VERSION = 1
PRIOR_LABELS = "train.csv"  # the training labels in the data folder, the prior's source
SHOWN_PLANETS = 5  # planets an error names one by one (the rest counted)


class SpectrumError(ArielstreamError):
    """The file cannot give a measured spectrum of every planet asked for (exit 65 from the command line).

    A planet without a spectrum, an instrument without data, an aperture that holds no row of the trace.
    """


# ---------------------------------------------------------------- pure functions over arrays
def trapezoid_integral(x: np.ndarray, t14: float, t23: float) -> np.ndarray:
    """``∫_0^x s(u) du`` of the trapezoid ``s`` centred on 0 (odd in ``x``; hours)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    h14, h23 = t14 / 2.0, max(min(t23, t14), 0.0) / 2.0
    r = h14 - h23
    if r <= 0:
        inner = np.minimum(a, h14)
    else:
        ramp = h23 + (r * r - np.square(h14 - np.clip(a, h23, h14))) / (2.0 * r)
        inner = np.where(a <= h23, a, ramp)
    return np.sign(x) * inner


def transit_shape(time: np.ndarray, width: float | np.ndarray, t0: float | np.ndarray, t14: float,
                  t23: float) -> np.ndarray:
    """Trapezoid (0 out of transit, 1 at full depth) averaged over bins centred on ``time`` of ``width`` hours."""
    time = np.asarray(time, dtype=np.float64)
    width = np.broadcast_to(np.asarray(width, dtype=np.float64), time.shape)
    hi = trapezoid_integral(time + width / 2 - t0, t14, t23)
    lo = trapezoid_integral(time - width / 2 - t0, t14, t23)
    point = np.clip((t14 / 2.0 - np.abs(time - t0)) / max((t14 - t23) / 2.0, 1e-12), 0.0, 1.0)
    return np.where(width > 0, (hi - lo) / np.where(width > 0, width, 1.0), point)


def bin_width(time: np.ndarray) -> float:
    """The time bins' width (hours): the median spacing of their centres (0 for a single bin)."""
    time = np.asarray(time, dtype=np.float64)
    return float(np.median(np.diff(time))) if time.size > 1 else 0.0


def expected_durations(period_days: float, sma: float, inc_deg: float, k: float) -> tuple[float, float]:
    """Total and full transit durations (hours) of a circular orbit; NaN where undefined.

    ``sma`` in stellar radii, ``k`` the radius ratio: ``T = P/π · asin(sqrt((1 ± k)² - b²) / (a sin i))``
    with ``b = a cos i``.
    """
    inc = math.radians(inc_deg)
    b = sma * math.cos(inc)
    out = []
    for kk in (1.0 + k, 1.0 - k):
        arg = kk * kk - b * b
        if not (arg > 0 and sma * math.sin(inc) > 0):
            out.append(math.nan)
            continue
        out.append(period_days * 24.0 / math.pi * math.asin(min(1.0, math.sqrt(arg) / (sma * math.sin(inc)))))
    return out[0], out[1]


def polynomial_basis(time: np.ndarray, degree: int, centre: float, scale: float) -> np.ndarray:
    """``(t, degree + 1)`` columns ``((t - centre) / scale) ** j``."""
    u = (np.asarray(time, dtype=np.float64) - centre) / (scale if scale > 0 else 1.0)
    return np.stack([u**j for j in range(degree + 1)], axis=1)


@dataclass(frozen=True)
class Curve:
    """One normalised light curve for the timing fit: time, flux, 1-sigma error (each ``(t,)``)."""

    time: np.ndarray
    flux: np.ndarray
    err: np.ndarray
    regressors: np.ndarray | None = None  # (t, k) decorrelation regressors (centred), fitted with the baseline


@dataclass(frozen=True)
class Timing:
    """The transit timing of one observation (hours) and how it was found."""

    t0: float
    t14: float
    t23: float
    chi2: float  # the timing fit's chi² (all curves together)
    durations: str  # "fit", "star_info" (fixed to the expected ones) or "fit (star_info grid)"


def _profiled_chi2(y: np.ndarray, w: np.ndarray, basis: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """chi² of ``y = basis · c - A s`` minimised over ``c`` and ``A``, for each row ``s`` of ``shapes`` (N, t).

    A candidate whose best ``A`` is not positive (a brightening, not a transit) gets inf.
    """
    ww = basis.T @ (basis * w[:, None])  # (p, p)
    wy = basis.T @ (w * y)  # (p,)
    ws = shapes @ (basis * w[:, None])  # (N, p)
    ss = np.einsum("nt,t,nt->n", shapes, w, shapes)
    sy = shapes @ (w * y)
    n, p = shapes.shape[0], basis.shape[1]
    m = np.empty((n, p + 1, p + 1))
    m[:, :p, :p] = ww
    m[:, :p, p] = -ws
    m[:, p, :p] = -ws
    m[:, p, p] = ss
    rhs = np.empty((n, p + 1))
    rhs[:, :p] = wy
    rhs[:, p] = -sy
    diagonal = np.arange(p + 1)
    m[:, diagonal, diagonal] += 1e-12 * np.abs(m[:, diagonal, diagonal]).max(axis=1, keepdims=True)  # never singular
    sol = np.linalg.solve(m, rhs[..., None])[..., 0]
    chi2 = float(np.sum(w * y * y)) - np.einsum("np,np->n", sol, rhs)
    return np.where(sol[:, p] > 0, chi2, np.inf)


def _timing_chi2(curves: Sequence[Curve], widths: Sequence[float], t0s: np.ndarray, t14: float, t23: float,
                 degree: int) -> np.ndarray:
    """Joint chi² of the curves for each mid-time in ``t0s`` (durations fixed); inf where unconstrained."""
    total = np.zeros(t0s.size)
    for curve, width in zip(curves, widths, strict=True):
        span = float(curve.time.max() - curve.time.min())
        basis = polynomial_basis(curve.time, degree, float(curve.time.mean()), span / 2)
        if curve.regressors is not None:
            basis = np.concatenate([basis, curve.regressors - curve.regressors.mean(axis=0)], axis=1)
        shapes = transit_shape(curve.time[None, :], width, t0s[:, None], t14, t23)
        w = 1.0 / np.square(curve.err)
        chi2 = _profiled_chi2(curve.flux, w, basis, shapes)
        out_of_transit = (shapes < 1e-3).sum(axis=1)
        in_transit = (shapes > 0.5).sum(axis=1)
        chi2[(out_of_transit < degree + 1) | (in_transit < 1)] = np.inf
        total += chi2
    return total


def fit_timing(curves: Sequence[Curve], *, degree: int = DEFAULT_DEGREE,
               expected: tuple[float, float] | None = None,
               min_bins_free: int = MIN_BINS_FREE_DURATIONS) -> Timing:
    """Transit mid-time and durations from normalised light curves sharing one transit (hours).

    A grid over ``t0`` (the whole span), ``t14`` and ``t23 / t14``, then a
    downhill simplex (:func:`nelder_mead`) from the best point. ``expected`` = (t14, t23) from the star and orbit
    narrows the duration grid to 0.6-1.6 times the expected ones, or, with fewer
    than ``min_bins_free`` bins, fixes them. Raises ``ValueError`` when no
    candidate leaves both in- and out-of-transit bins, and with fewer than
    ``min_bins_free`` bins and no ``expected`` durations (too few to fit them honestly).
    """
    if not curves:
        raise ValueError("no light curve to time the transit on")
    curves = [c for c in curves if c.time.size >= degree + 3]  # baseline, depth and one degree of freedom
    if not curves:
        raise ValueError(f"too few time bins to time a transit on (a degree-{degree} baseline needs "
                         f"{degree + 3})")
    n_bins = min(c.time.size for c in curves)
    widths = [bin_width(c.time) for c in curves]
    t_lo = min(float(c.time.min()) for c in curves)
    t_hi = max(float(c.time.max()) for c in curves)
    span = t_hi - t_lo
    step = max(min(widths) / 4.0, span / 200.0) if max(widths) > 0 else span / 100.0
    t0s = np.arange(t_lo, t_hi + step / 2, step)
    known = expected is not None and all(math.isfinite(v) and v > 0 for v in expected) and expected[0] > expected[1]
    if not known and n_bins < min_bins_free:
        # t0, T14 and T23 free with a handful of bins fit the noise, and the depth's sigma (which holds the
        # timing fixed) then understates the error by a factor ~2 (pulls measured on data_samples: 2.35)
        raise ValueError(f"{n_bins} time bins are too few to fit the transit durations (at least {min_bins_free}) "
                         "without the star and orbit parameters (<split>_star_info.csv)")
    if known and n_bins < min_bins_free:
        assert expected is not None
        pairs = [(expected[0], expected[1])]
        how = "star_info"
    else:
        if known:
            assert expected is not None
            t14s = expected[0] * np.geomspace(0.6, 1.6, 15)
            how = "fit (star_info grid)"
        else:
            t14s = np.geomspace(max(0.25, 2 * step), max(0.5, 0.8 * span), 25)
            how = "fit"
        ratios = np.array([0.3, 0.5, 0.65, 0.75, 0.85, 0.95])
        pairs = [(float(a), float(a * r)) for a in t14s for r in ratios]
    candidates = []
    for t14, t23 in pairs:
        chi2 = _timing_chi2(curves, widths, t0s, t14, t23, degree)
        k = int(np.argmin(chi2))
        candidates.append((float(chi2[k]), float(t0s[k]), t14, t23))
    candidates = sorted(c for c in candidates if math.isfinite(c[0]))
    if not candidates:
        raise ValueError("no transit timing leaves both in- and out-of-transit bins")
    best = (math.inf, math.nan, math.nan, math.nan)
    for chi2_start, t0, t14, t23 in candidates[:N_STARTS]:  # a simplex from each of the best grid points
        if len(pairs) == 1:  # durations fixed: the mid-time alone

            def fixed(x: np.ndarray, t14: float = t14, t23: float = t23) -> float:
                return float(_timing_chi2(curves, widths, x[:1], t14, t23, degree)[0])

            x, value = nelder_mead(fixed, np.array([t0]), np.array([step]))
            found = (value, float(x[0]), t14, t23)
        else:

            def free(x: np.ndarray) -> float:
                if not (x[1] > 0 and 0.0 <= x[2] < 1.0):
                    return math.inf
                return float(_timing_chi2(curves, widths, x[:1], x[1], x[1] * x[2], degree)[0])

            x, value = nelder_mead(free, np.array([t0, t14, t23 / t14]), np.array([step, 0.05 * t14, 0.05]))
            found = (value, float(x[0]), float(x[1]), float(x[1] * x[2]))
        best = min(best, found if found[0] <= chi2_start else (chi2_start, t0, t14, t23))
    chi2_best, t0, t14, t23 = best
    return Timing(t0=t0, t14=t14, t23=t23, chi2=chi2_best, durations=how)


def nelder_mead(f, x0: np.ndarray, scale: np.ndarray, *, max_iter: int = 400,
                xtol: float = 1e-5) -> tuple[np.ndarray, float]:
    """Minimise ``f`` from ``x0`` (a simplex of steps ``scale``): the best point and its value.

    The textbook downhill simplex (reflection 1, expansion 2, contraction and
    shrink 0.5); stops when every vertex is within ``xtol`` × ``scale`` of the best.
    """
    n = x0.size
    simplex = np.vstack([x0, x0 + np.diag(scale)])
    values = np.array([f(v) for v in simplex])
    for _ in range(max_iter):
        order = np.argsort(values)
        simplex, values = simplex[order], values[order]
        if np.all(np.abs(simplex[1:] - simplex[0]) <= xtol * np.abs(scale)):
            break
        centroid = simplex[:n].mean(axis=0)
        reflected = centroid + (centroid - simplex[n])
        fr = f(reflected)
        if fr < values[0]:
            expanded = centroid + 2.0 * (centroid - simplex[n])
            fe = f(expanded)
            simplex[n], values[n] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[n - 1]:
            simplex[n], values[n] = reflected, fr
        else:
            contracted = centroid + 0.5 * (simplex[n] - centroid)
            fc = f(contracted)
            if fc < values[n]:
                simplex[n], values[n] = contracted, fc
            else:
                simplex[1:] = simplex[0] + 0.5 * (simplex[1:] - simplex[0])
                values[1:] = [f(v) for v in simplex[1:]]
    k = int(np.argmin(values))
    return simplex[k], float(values[k])


@dataclass
class DepthFit:
    """Depths of ``w`` light curves under one timing: each ``(w,)`` unless noted."""

    depth: np.ndarray
    sigma: np.ndarray  # after the chi²/dof scaling
    chi2_dof: np.ndarray
    residual_rms: np.ndarray  # of the normalised residuals (relative flux)
    baseline: np.ndarray  # (w, degree + 1) polynomial coefficients of the normalised flux
    n_regressors: int = 0
    dof: int = 0


def fit_depths(time: np.ndarray, flux: np.ndarray, err: np.ndarray, shape: np.ndarray, *,
               degree: int = DEFAULT_DEGREE, regressors: np.ndarray | None = None) -> DepthFit:
    """Transit depth of each column of ``flux`` ``(t, w)`` (1-sigma ``err``) under the transit ``shape`` ``(t,)``.

    Weighted least squares of ``y = poly(t) + c · r(t) - A s(t) q(t)`` per column
    (``regressors`` ``(t, k)``, centred here), ``q = poly / poly(t0)`` from the
    previous iteration (so that the transit dims the baseline:
    ``poly(t) (1 - depth s(t))``), ``depth = A / poly(t0)`` where ``t0`` is the
    bin of largest ``shape``; the sigma by the delta method,
    multiplied by ``sqrt(chi²/dof)`` when that exceeds 1. A column with a
    non-finite value, or too few bins, gets NaN.
    """
    time = np.asarray(time, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64).T).T
    err = np.atleast_2d(np.asarray(err, dtype=np.float64).T).T
    span = float(time.max() - time.min()) if time.size else 0.0
    centre = float(time.mean()) if time.size else 0.0
    basis = polynomial_basis(time, degree, centre, span / 2)
    columns = [basis]
    n_reg = 0
    if regressors is not None and regressors.size:
        r = np.asarray(regressors, dtype=np.float64).reshape(time.size, -1)
        columns.append(r - r.mean(axis=0))
        n_reg = r.shape[1]
    columns.append(-np.asarray(shape, dtype=np.float64)[:, None])
    design = np.concatenate(columns, axis=1)
    p = design.shape[1]
    dof = time.size - p
    ref = basis[int(np.argmax(shape))]  # poly(t0) = ref · c
    n_w = flux.shape[1]
    out = DepthFit(depth=np.full(n_w, np.nan), sigma=np.full(n_w, np.nan), chi2_dof=np.full(n_w, np.nan),
                   residual_rms=np.full(n_w, np.nan), baseline=np.full((n_w, degree + 1), np.nan),
                   n_regressors=n_reg, dof=dof)
    if dof < 1:
        return out
    for k in range(n_w):
        f, e = flux[:, k], err[:, k]
        if not (np.isfinite(f).all() and np.isfinite(e).all() and (e > 0).all()):
            continue
        med = float(np.median(f))
        if not med > 0:
            continue
        y, s = f / med, e / med
        w = 1.0 / np.square(s)
        q = np.ones(time.size)  # the baseline's shape relative to poly(t0): the transit scales the baseline
        try:
            for _ in range(MULTIPLICATIVE_ITERATIONS):
                design[:, -1] = -shape * q
                cov = np.linalg.inv(design.T @ (design * w[:, None]))
                params = cov @ (design.T @ (w * y))
                c, a = params[: degree + 1], params[-1]
                base = float(ref @ c)
                q = (basis @ c) / base
        except np.linalg.LinAlgError:
            continue
        resid = y - design @ params
        chi2 = float(np.sum(w * resid**2)) / dof
        depth = a / base
        grad = np.zeros(p)
        grad[: degree + 1] = -a * ref / base**2
        grad[-1] = 1.0 / base
        var = float(grad @ cov @ grad) * max(1.0, chi2)
        out.depth[k], out.sigma[k], out.chi2_dof[k] = depth, math.sqrt(max(var, 0.0)), chi2
        out.residual_rms[k] = float(np.std(resid))
        out.baseline[k] = c
    return out


def combine_visits(depths: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance mean over visits (axis 0) of ``(v, w)`` depths: mean and sigma ``(w,)``; NaN are skipped."""
    depths = np.asarray(depths, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    ok = np.isfinite(depths) & np.isfinite(sigmas) & (sigmas > 0)
    w = np.where(ok, 1.0 / np.where(ok, sigmas, 1.0) ** 2, 0.0)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(total > 0, (w * np.where(ok, depths, 0.0)).sum(axis=0) / total, np.nan)
        sigma = np.where(total > 0, 1.0 / np.sqrt(total), np.nan)
    return mean, sigma


def submission_values(depth: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Make a spectrum acceptable to the competition: no NaN, no negative value.

    A negative depth becomes 0 (sigma kept); a missing one (NaN) becomes the
    median of the others with a sigma of ``sqrt(std(depths)² + max(sigma)²)``.
    Returns depth, sigma, the number clipped and the number filled.
    """
    depth = np.asarray(depth, dtype=np.float64).copy()
    sigma = np.asarray(sigma, dtype=np.float64).copy()
    missing = ~(np.isfinite(depth) & np.isfinite(sigma) & (sigma > 0))
    if missing.all():
        raise ValueError("no wavelength has a depth")
    if missing.any():
        good_d, good_s = depth[~missing], sigma[~missing]
        depth[missing] = float(np.median(good_d))
        sigma[missing] = math.hypot(float(np.std(good_d)), float(good_s.max()))
    negative = depth < 0
    depth[negative] = 0.0
    return depth, sigma, int(negative.sum()), int(missing.sum())


def label_prior(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The prior spectrum of a planet not measured: mean and sigma ``(targets,)`` from ``(n, targets)`` labels.

    The mean over the ``n`` planets, and as sigma their sample standard deviation
    times ``sqrt(1 + 1/n)``: the spread of a new planet's true spectrum about that
    mean (the mean's own error included). Raises ``ValueError`` with fewer than
    two planets, a value that is not finite, or a target whose labels do not spread.
    """
    labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    n = labels.shape[0]
    if n < 2:
        raise ValueError(f"{n} planet(s): the prior's spread needs at least 2")
    if not np.isfinite(labels).all():
        raise ValueError("a label is NaN or infinite")
    sigma = labels.std(axis=0, ddof=1) * math.sqrt(1.0 + 1.0 / n)
    if not (sigma > 0).all():
        raise ValueError(f"the labels of target {int(np.argmin(sigma)) + 1} do not spread (the same for all planets)")
    return labels.mean(axis=0), sigma


# ---------------------------------------------------------------- adapter: an arielstream file
@dataclass
class VisitFit:
    """The fit of one observation: timing, and per target (283, FGS1 first) depth, sigma and diagnostics."""

    planet_id: int
    visit: int
    index: int
    timing: Timing
    depth: np.ndarray = field(default_factory=lambda: np.full(N_TARGETS, np.nan))
    sigma: np.ndarray = field(default_factory=lambda: np.full(N_TARGETS, np.nan))
    chi2_dof: np.ndarray = field(default_factory=lambda: np.full(N_TARGETS, np.nan))
    residual_rms: np.ndarray = field(default_factory=lambda: np.full(N_TARGETS, np.nan))
    baseline: np.ndarray = field(default_factory=lambda: np.full((N_TARGETS, DEFAULT_DEGREE + 1), np.nan))
    white_depth: float = math.nan
    white_sigma: float = math.nan
    n_regressors: int = 0


def read_star_info(path: str | Path | DataPath) -> dict[int, dict[str, float]]:
    """``<split>_star_info.csv`` as ``{planet_id: {column: value}}``; InputError naming the file if unreadable.

    A local file, or one in the data folder's store (a file calibrated from a URL).
    """
    path = data_path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(read_bytes(path).decode("utf-8"), newline="")))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the star info: {getattr(exc, 'strerror', None) or exc}") from None
    needed = {"planet_id", "P", "sma", "i"}
    if not rows or not needed <= set(rows[0]):
        raise InputError(path, f"star info needs the columns {', '.join(sorted(needed))}")
    info: dict[int, dict[str, float]] = {}
    for n, row in enumerate(rows, start=2):
        try:
            info[int(float(row["planet_id"]))] = {k: float(v) for k, v in row.items() if k != "planet_id" and v}
        except ValueError:
            raise InputError(path, f"line {n}: not a number") from None
    return info


def _centroid_on(time: np.ndarray, lcs: lc.LightCurves) -> np.ndarray | None:
    if lcs.fgs1_centroid is None or lcs.fgs1_time is None or not np.isfinite(lcs.fgs1_centroid).all():
        return None
    return np.stack([np.interp(time, lcs.fgs1_time, lcs.fgs1_centroid[:, a]) for a in (0, 1)], axis=1)


def _white_curves(lcs: lc.LightCurves) -> list[Curve]:
    """The observation's white-light curves (AIRS, FGS1), each divided by its median; those not finite left out."""
    raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if lcs.airs_white is not None and lcs.airs_white_err is not None and lcs.airs_time is not None:
        raw.append((lcs.airs_time, lcs.airs_white, lcs.airs_white_err))
    if lcs.fgs1_flux is not None and lcs.fgs1_flux_err is not None and lcs.fgs1_time is not None:
        raw.append((lcs.fgs1_time, lcs.fgs1_flux, lcs.fgs1_flux_err))
    norm = []
    for t, f, e in raw:
        med = float(np.median(f))
        if np.isfinite(f).all() and np.isfinite(e).all() and med > 0 and bool((e > 0).all()):
            norm.append(Curve(np.asarray(t, dtype=np.float64), f / med, e / med))
    return norm


def target_index(labels: Sequence[str] | None, n: int) -> np.ndarray:
    """Row of each AIRS light curve in the 283 targets: from its ``wl_k`` label (k - 1), else 1, 2, … in order."""
    if labels is None:
        return np.arange(1, 1 + n)
    index = []
    for label in labels:
        number = label[len(TARGET_PREFIX):]
        k = int(number) if label.startswith(TARGET_PREFIX) and number.isdigit() else 0
        index.append(k - 1 if 2 <= k <= N_TARGETS else -1)
    return np.array(index, dtype=np.int64)


def fit_observation(lcs: lc.LightCurves, *, degree: int = DEFAULT_DEGREE, decorrelate: bool = True,
                    star: dict[str, float] | None = None) -> VisitFit:
    """Timing from the white light, then the depth of every target wavelength, for one observation."""
    def regressors_for(time: np.ndarray) -> np.ndarray | None:
        if not decorrelate or time.size - (degree + 2) - 2 < MIN_DOF_REGRESSORS:
            return None
        return _centroid_on(time, lcs)

    norm = [replace(c, regressors=regressors_for(c.time)) for c in _white_curves(lcs)]
    if not norm:
        raise ValueError("no finite white-light curve to find the transit in")
    expected = None
    k = 0.1
    orbit = star is not None and all(key in star for key in ("P", "sma", "i"))
    for _ in range(2 if orbit else 1):  # the expected durations depend (weakly) on the radius ratio
        if star is not None and orbit:
            expected = expected_durations(star["P"], star["sma"], star["i"], k)
        timing = fit_timing(norm, degree=degree, expected=expected)
        white = norm[0]
        shape = transit_shape(white.time, bin_width(white.time), timing.t0, timing.t14, timing.t23)
        w_fit = fit_depths(white.time, white.flux[:, None], white.err[:, None], shape, degree=degree,
                           regressors=white.regressors)
        if np.isfinite(w_fit.depth[0]) and w_fit.depth[0] > 0:
            k = math.sqrt(float(w_fit.depth[0]))
    baseline = np.full((N_TARGETS, degree + 1), np.nan)
    out = VisitFit(planet_id=lcs.planet_id, visit=lcs.visit, index=lcs.index, timing=timing, baseline=baseline)
    out.white_depth, out.white_sigma = float(w_fit.depth[0]), float(w_fit.sigma[0])

    def store(rows: np.ndarray, fit: DepthFit) -> None:
        keep = rows >= 0
        for name in ("depth", "sigma", "chi2_dof", "residual_rms"):
            getattr(out, name)[rows[keep]] = getattr(fit, name)[keep]
        baseline[rows[keep]] = fit.baseline[keep]

    if lcs.airs_flux is not None and lcs.airs_flux_err is not None and lcs.airs_time is not None:
        t = lcs.airs_time
        shape = transit_shape(t, bin_width(t), timing.t0, timing.t14, timing.t23)
        fit = fit_depths(t, lcs.airs_flux, lcs.airs_flux_err, shape, degree=degree, regressors=regressors_for(t))
        store(target_index(lcs.wavelength_label, fit.depth.size), fit)
        out.n_regressors = fit.n_regressors
    if lcs.fgs1_flux is not None and lcs.fgs1_flux_err is not None and lcs.fgs1_time is not None:
        t = lcs.fgs1_time
        shape = transit_shape(t, bin_width(t), timing.t0, timing.t14, timing.t23)
        fit = fit_depths(t, lcs.fgs1_flux[:, None], lcs.fgs1_flux_err[:, None], shape, degree=degree,
                         regressors=regressors_for(t))
        store(np.array([0]), fit)
    return out


@dataclass(frozen=True)
class Prior:
    """The spectrum written for a planet without one (``missing="prior"``): :func:`label_prior` of ``path``."""

    path: DataPath
    n_planets: int
    depth: np.ndarray  # (283,)
    sigma: np.ndarray  # (283,)

    def describe(self) -> str:
        """How the prior was made, for the log and the fits file."""
        return (f"the mean of the {self.n_planets} training spectra of {self.path}, sigma their standard deviation "
                f"times sqrt(1 + 1/{self.n_planets})")


@dataclass
class Spectra:
    """Per-planet spectra (``(planets, 283)``) and the per-visit fits behind them.

    ``prior_planets`` are the planets written as the ``prior`` (``missing="prior"``): not measured.
    """

    planet_id: np.ndarray
    depth: np.ndarray
    sigma: np.ndarray
    visits: list[VisitFit]
    prior_planets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    prior: Prior | None = None  # the prior written for them (None when no planet needed it)

    def __repr__(self) -> str:  # one line: the shapes, not the arrays
        planets = ", ".join(str(int(p)) for p in self.planet_id[:5]) + (", ..." if len(self.planet_id) > 5 else "")
        prior = f", {len(self.prior_planets)} planet(s) from the prior" if len(self.prior_planets) else ""
        return (f"<Spectra {len(self.planet_id)} planet(s) [{planets}]: depth and sigma {self.depth.shape} "
                f"(planet, target), {len(self.visits)} visit fit(s){prior}>")


def read_prior(path: str | Path | DataPath) -> Prior:
    """The prior from training labels (``planet_id, wl_1 … wl_283``: ``train.csv``); InputError naming the file."""
    table = read_table(path, role="truth")
    if table.columns != [f"{TARGET_PREFIX}{k}" for k in range(1, N_TARGETS + 1)]:
        raise InputError(table.path, f"the prior's training labels need the columns planet_id, {TARGET_PREFIX}1 … "
                                     f"{TARGET_PREFIX}{N_TARGETS}")
    try:
        depth, sigma = label_prior(table.values)
    except ValueError as exc:
        raise InputError(table.path, f"cannot make the prior from these labels: {exc}") from None
    return Prior(table.path, table.values.shape[0], depth, sigma)


def _data_folder(src: h5py.File) -> tuple[DataPath | None, str]:
    """The data folder the file was calibrated from (``None`` when it names none), and the split.

    A local folder, or the URL it was read from (recorded without credentials: the store's are
    taken from the environment, as the run took them).
    """
    folder = text(src.attrs.get("source", ""))
    return (data_path(folder) if folder else None), text(src.attrs.get("split", ""))


def _star_info_for(src: h5py.File, path: Path, star_info: str | Path | bool | None) -> dict[int, dict[str, float]]:
    if star_info is False:
        return {}
    if star_info is None or star_info is True:
        folder, split = _data_folder(src)
        candidate = folder / f"{split}_star_info.csv" if folder is not None and split else None
        try:
            found = candidate is not None and candidate.is_file()
        except InputError as exc:  # a store that cannot be reached now: no silent fallback to fitted durations
            without = flag("star_info", False, option="--no-star-info")
            raise InputError(exc.path, f"{exc.problem}; the star info is read from the data folder the file was "
                                       f"calibrated from: give it with {flag('star_info', 'CSV')}, or fit every "
                                       f"transit duration with {without}") from None
        if candidate is None or not found:
            log.warning("%s: no star info found (%s); every transit duration is fitted", path,
                        candidate or "the file names no data folder")
            return {}
        return read_star_info(candidate)
    return read_star_info(star_info)


def _check_targets(src: h5py.File, path: Path) -> None:
    """A :class:`SpectrumError` unless the file can give every target: FGS1, and AIRS-CH0 columns that are targets."""
    held = instruments_in(src)
    absent = [name for name in (FGS1.name, AIRS.name) if name not in held]
    if absent:
        raise SpectrumError(f"{path}: holds no {' and no '.join(absent)} data (its instruments: "
                            f"{', '.join(held) or 'none'}); a submission needs FGS1 ({TARGET_PREFIX}1) and "
                            f"AIRS-CH0 ({TARGET_PREFIX}2 … {TARGET_PREFIX}{N_TARGETS}): calibrate both")
    spatial_bin = int(lc.file_config(src).get("spatial_bin", 1))
    if spatial_bin > 1:  # its x axis sums neighbouring columns: no column is one target wavelength
        raise SpectrumError(f"{path}: calibrated with --spatial-bin {spatial_bin}: its AIRS-CH0 columns are sums "
                            f"of {spatial_bin} detector columns, not the targets {TARGET_PREFIX}2 … "
                            f"{TARGET_PREFIX}{N_TARGETS} a submission needs; calibrate without --spatial-bin")


def _prior_for(src: h5py.File, path: Path, missing: str) -> Prior | None:
    """With ``missing="prior"``, the prior from the data folder's training labels (read before any fit)."""
    if missing != "prior":
        return None
    folder, _ = _data_folder(src)
    if folder is None:
        raise InputError(path, f"{flag('missing', 'prior')} needs the training labels ({PRIOR_LABELS} in the data "
                               "folder), and the file names no data folder")
    try:
        return read_prior(folder / PRIOR_LABELS)
    except InputError as exc:  # say who needs the file
        raise InputError(path, f"{flag('missing', 'prior')} needs the training labels: {exc}") from None


def _split_planets(src: h5py.File, path: Path, held: set[int]) -> tuple[set[int], str]:
    """The planets the submission needs a row for (the data folder's split and the file's ``held``), and their name."""
    folder, split = _data_folder(src)
    planets = set(held)
    if folder is not None and split and (folder / split).is_dir():
        planets |= {o.planet_id for o in discover_observations(folder, split)}
    else:
        log.warning("%s: its data folder (%s) is not here: the submission's planets are the %d the file holds", path,
                    folder / split if folder is not None else "none named", len(planets))
    return planets, f"the {split or 'calibrated'} split"


def _one_line(message: str, limit: int = 160) -> str:
    words = " ".join(message.split())
    return words if len(words) <= limit else words[: limit - 1] + "…"


def _not_done(src: h5py.File, index: int) -> str:
    """Why observation ``index`` is not done: its status, and the error the run recorded."""
    status = int(src[_schema.STATUS][index])
    name = _schema.STATUS_NAMES.get(status, f"status {status}")
    error = text(src[_schema.ERROR][index]) if _schema.ERROR in src else ""
    return f"{name}: {_one_line(error)}" if error.strip() else name


def _unmeasured(depth: np.ndarray) -> str | None:
    """Why a planet's combined spectrum ``(283,)`` is no measurement of it, or None."""
    if not np.isfinite(depth[0]):
        return "no FGS1 depth (wl_1)"
    if not np.isfinite(depth[1:]).any():
        return f"no AIRS-CH0 depth ({TARGET_PREFIX}2 … {TARGET_PREFIX}{N_TARGETS})"
    return None


def _check_aperture(path: Path, curves: lc.LightCurves, half_width: int) -> None:
    """An AIRS aperture that holds no row of the trace measures nothing: :class:`SpectrumError` naming the option."""
    if curves.airs_flux is not None and curves.aperture_rows[0] < 0:
        raise SpectrumError(f"{path}: {flag('half_width', half_width)}: the AIRS aperture, the rows within "
                            f"{half_width} of the trace's centre row ({curves.trace_row:.2f} in {curves.planet_id}"
                            f"/visit {curves.visit}), holds no row of the trace; give 1 or more "
                            f"(default {DEFAULT_HALF_WIDTH})")


def _missing_error(path: Path, missing: list[int], why: dict[int, list[str]], n_required: int,
                   scope: str) -> SpectrumError:
    shown = "; ".join(f"{pid} ({', '.join(why.get(pid) or [f'not in {path.name}'])})"
                      for pid in missing[:SHOWN_PLANETS])
    more = f"; and {len(missing) - SHOWN_PLANETS} more" if len(missing) > SHOWN_PLANETS else ""
    return SpectrumError(f"{path}: {len(missing)} of the {n_required} planet(s) of {scope} have no spectrum: "
                         f"{shown}{more}. A submission needs a row for each: calibrate them (a rerun retries "
                         f"failed observations), or {flag('missing', 'prior')} writes the training set's mean "
                         f"spectrum for them, with a wide sigma (or {flag('observations', ..., option='--obs')} "
                         "for a subset)")


def spectrum(path: str | Path, *, degree: int = DEFAULT_DEGREE, decorrelate: bool = True,
             star_info: str | Path | bool | None = None, observations: Sequence[int] | None = None,
             missing: str = "error", **extraction) -> Spectra:
    """Fit every done observation of the calibrated file ``path`` and combine the visits of each planet.

    ``star_info``: a ``<split>_star_info.csv`` (default: the one in the data
    folder the file was calibrated from, when there), or ``False`` to fit the
    durations without it. ``extraction`` goes to
    :func:`.lightcurves.observation_light_curves` (``half_width``, ``weighted``, …).
    Reads one observation at a time. Every planet of the split gets a row, or the
    call fails (module doc: "Never a number it did not measure").

    Parameters
    ----------
    path : str or Path
        A calibrated file (the output of :func:`arielstream.calibrate`).
    degree : int
        Degree of the baseline polynomial of each fit.
    decorrelate : bool
        Decorrelate against the FGS1 centroid.
    star_info : str, Path or bool, optional
        A ``<split>_star_info.csv``; default the data folder's, ``False`` fits without it.
    observations : sequence of int, optional
        Indices of the observations to fit (default every done one); the rows are then the planets of
        these observations, not of the whole split.
    missing : {"error", "prior"}
        A planet without a spectrum: a :class:`SpectrumError` naming it (default), or ``"prior"``: the
        training labels' mean spectrum and spread (:func:`label_prior` of ``<data>/train.csv``), with a
        warning naming the planet.
    **extraction
        Options of the light curves' extraction (``half_width``, ``weighted``, ...).

    Returns
    -------
    Spectra
        Per planet ``depth`` and ``sigma`` ``(planets, 283)``, the per-visit fits, and the planets written
        as the prior.

    Raises
    ------
    ValueError
        ``degree`` < 0, or ``missing`` not one of :data:`MISSING_POLICIES`.
    InputError
        ``path`` is not a calibrated file, no observation asked for is done, or none gave a spectrum;
        with ``missing="prior"``, the training labels cannot be read.
    SpectrumError
        The file holds no FGS1 or no AIRS-CH0 data, the AIRS aperture holds no row of the trace, or
        (``missing="error"``) a planet has no spectrum.
    """
    path = Path(path)
    if degree < 0:
        raise ValueError(f"degree must be >= 0; got {degree}")
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {', '.join(MISSING_POLICIES)}; got {missing!r}")
    half_width = int(extraction.get("half_width", DEFAULT_HALF_WIDTH))
    fits: list[VisitFit] = []
    why: dict[int, list[str]] = {}  # the reasons a planet has no spectrum
    with open_output(path) as src:
        _check_targets(src, path)
        stars = _star_info_for(src, path, star_info)
        prior = _prior_for(src, path, missing)
        chosen = lc.require_done(src, path, observations, "fit")
        planet_ids = src[_schema.PLANET_ID][()].tolist()
        visits = src[_schema.VISIT][()].tolist()
        asked = range(len(planet_ids)) if observations is None else sorted({int(i) for i in observations})
        if observations is None:
            required, scope = _split_planets(src, path, set(planet_ids))
        else:
            required, scope = {planet_ids[i] for i in asked}, "the chosen observations (--obs)"
            log.warning("%s: the submission holds the planets of the chosen observations only (%d of the file's %d)",
                        path, len(required), len(set(planet_ids)))
        with_done = {planet_ids[i] for i in chosen}
        for index in sorted(set(asked) - set(chosen)):
            pid, reason = planet_ids[index], f"visit {visits[index]} {_not_done(src, index)}"
            if pid in with_done:
                log.warning("%d/%s: left out of the planet's spectrum", pid, reason)
            else:
                why.setdefault(pid, []).append(reason)
        unfit = sorted(required - with_done)
        if unfit and prior is None:  # before the fits: they cannot change it
            raise _missing_error(path, unfit, why, len(required), scope)
        for n, index in enumerate(chosen, start=1):
            curves = lc.observation_light_curves(src, index, **extraction)
            _check_aperture(path, curves, half_width)
            label = f"{curves.planet_id}/visit {curves.visit}"
            try:
                fit = fit_observation(curves, degree=degree, decorrelate=decorrelate,
                                      star=stars.get(curves.planet_id))
            except ValueError as exc:
                log.warning("%s: no spectrum: %s", label, exc)
                why.setdefault(curves.planet_id, []).append(f"visit {curves.visit}: {exc}")
                continue
            fits.append(fit)
            log.info("[%d/%d] %s: t0 %.3f h, T14 %.2f h (%s), white depth %.5f ± %.5f", n, len(chosen), label,
                     fit.timing.t0, fit.timing.t14, fit.timing.durations, fit.white_depth, fit.white_sigma)
    if not fits:
        raise InputError(path, "no observation gave a spectrum")
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for pid in sorted({f.planet_id for f in fits}):
        mine = [f for f in fits if f.planet_id == pid]
        depth, sigma = combine_visits(np.stack([f.depth for f in mine]), np.stack([f.sigma for f in mine]))
        problem = _unmeasured(depth)
        if problem is None:
            rows[pid] = depth, sigma
        else:
            why.setdefault(pid, []).append(problem)
    unmeasured = sorted(required - rows.keys())
    if unmeasured and prior is None:
        raise _missing_error(path, unmeasured, why, len(required), scope)
    for pid in unmeasured:
        assert prior is not None
        log.warning("planet %d has no spectrum (%s): written as the prior, %s", pid,
                    ", ".join(why.get(pid) or [f"not in {path.name}"]), prior.describe())
        rows[pid] = prior.depth, prior.sigma
    planets = sorted(rows)
    return Spectra(planet_id=np.array(planets, dtype=np.int64), depth=np.stack([rows[p][0] for p in planets]),
                   sigma=np.stack([rows[p][1] for p in planets]), visits=fits,
                   prior_planets=np.array(unmeasured, dtype=np.int64), prior=prior if unmeasured else None)


def default_submission(path: str | Path) -> Path:
    """``OUT.h5`` → ``OUT.submission.csv`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.submission.csv")


def fits_path(submission: str | Path) -> Path:
    """``submission.csv`` → ``submission.fits.h5`` beside it (the per-visit fits)."""
    submission = Path(submission)
    return submission.with_name(f"{submission.stem}.fits.h5")


def submission_header() -> list[str]:
    """``planet_id, wl_1 … wl_283, sigma_1 … sigma_283``."""
    return ["planet_id", *(f"{TARGET_PREFIX}{i}" for i in range(1, N_TARGETS + 1)),
            *(f"{SIGMA_PREFIX}{i}" for i in range(1, N_TARGETS + 1))]


def _write_csv(partial: Path, spectra: Spectra) -> None:
    with open(partial, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(submission_header())
        for pid, d, s in zip(spectra.planet_id, spectra.depth, spectra.sigma, strict=True):
            d, s, clipped, filled = submission_values(d, s)
            if clipped or filled:
                log.warning("planet %d: %d negative depth(s) written as 0, %d missing wavelength(s) filled",
                            pid, clipped, filled)
            writer.writerow([int(pid), *(repr(float(v)) for v in d), *(repr(float(v)) for v in s)])


def _write_fits(partial: Path, spectra: Spectra, source: Path, degree: int) -> None:
    """The per-visit fits, netCDF-4 readable: dimensions ``fit``, ``target`` (wl_k) and ``coefficient``.

    ``fit``: one fitted visit; ``coefficient``: of the baseline polynomial. FGS1, a photometer, is
    target 1: the file has no wavelength axis.
    """
    v = spectra.visits
    with h5py.File(partial, "w") as f:
        f.attrs.update({_schema.ATTR_FORMAT: FITS_FORMAT_NAME, _schema.ATTR_FORMAT_VERSION: FITS_FORMAT_VERSION,
                        _schema.ATTR_CONVENTIONS: _schema.CONVENTIONS,
                        "title": "arielstream per-visit transit fits",
                        "source": lc.relative_source(source, partial), "fitted_with": __version__, "degree": degree,
                        "targets": "wl_1 (FGS1), wl_2 ... wl_283 (AIRS ascending)"})
        if spectra.prior is not None:  # planets of the submission that no fit here measured
            f.attrs["prior_planets"] = np.asarray(spectra.prior_planets, dtype=np.int64)
            f.attrs["prior"] = f"submitted for prior_planets (no spectrum): {spectra.prior.describe()}"
        fit = cf.scale(f, "fit", np.arange(len(v), dtype=np.int32), "fitted observation (one planet visit)")
        target = cf.scale(f, "target", np.arange(1, N_TARGETS + 1, dtype=np.int16),
                          "target k of wl_k (1: FGS1 photometer, 2 ... 283: AIRS-CH0 by ascending wavelength)")
        baseline = np.stack([x.baseline for x in v]).astype(np.float64)
        coefficient = cf.scale(f, "coefficient", np.arange(baseline.shape[-1], dtype=np.int16),
                               "power of time of the baseline polynomial's coefficient")
        nan = {"_FillValue": np.nan}

        def put(name: str, data: np.ndarray, dims: tuple[h5py.Dataset, ...], long_name: str, units: str = "",
                **attrs: Any) -> None:
            floating = data.dtype.kind == "f"
            ds = f.create_dataset(name, data=data, fillvalue=np.nan if floating else None)
            cf.describe(cf.attach(ds, *dims), long_name, units, **(nan if floating else {}), **attrs)

        put("planet_id", np.array([x.planet_id for x in v], dtype=np.int64), (fit,), "planet id")
        put("visit", np.array([x.visit for x in v], dtype=np.int16), (fit,), "visit of the planet")
        put("source_index", np.array([x.index for x in v], dtype=np.int64), (fit,),
            "observation index in the calibrated file")
        hours = {"reference": "hours from the start of each observation"}
        for name, long_name, units, attrs in (("t0", "mid-transit time", "hours", hours),
                                              ("t14", "transit duration, first to fourth contact", "hours", {}),
                                              ("t23", "transit duration, second to third contact", "hours", {}),
                                              ("chi2", "chi-square of the white-light timing fit", "1", {})):
            put(f"timing/{name}", np.array([getattr(x.timing, name) for x in v], dtype=np.float64), (fit,),
                long_name, units, **attrs)
        put("timing/durations", np.array([x.timing.durations for x in v], dtype="S24"), (fit,),
            "how the durations were found")
        put("white_depth", np.array([x.white_depth for x in v], dtype=np.float64), (fit,),
            "white-light transit depth (fraction of the stellar flux)", "1")
        put("white_sigma", np.array([x.white_sigma for x in v], dtype=np.float64), (fit,),
            "1-sigma uncertainty of white_depth", "1")
        put("n_regressors", np.array([x.n_regressors for x in v], dtype=np.int16), (fit,),
            "decorrelation regressors of the fit")
        for name, long_name in (("depth", "transit depth (fraction of the stellar flux)"),
                                ("sigma", "1-sigma uncertainty of depth"),
                                ("chi2_dof", "reduced chi-square of the depth fit"),
                                ("residual_rms", "rms of the fit's residuals (relative flux)")):
            put(name, np.stack([getattr(x, name) for x in v]).astype(np.float64), (fit, target), long_name, "1")
        put("baseline", baseline, (fit, target, coefficient),
            "baseline polynomial coefficients (relative flux per hour**k)")


def write_spectrum(path: str | Path, out: str | Path | None = None, *, fits: str | Path | None = None,
                   degree: int = DEFAULT_DEGREE, missing: str = "error", **options) -> tuple[Path, Path, Spectra]:
    """Fit ``path`` (:func:`spectrum`) and write the submission CSV and the per-visit fits (HDF5), together.

    Both files appear together, or neither (nor any ``.partial``): nothing is written when :func:`spectrum`
    fails, e.g. for a planet without a spectrum.

    Parameters
    ----------
    path : str or Path
        A calibrated file.
    out : str or Path, optional
        The submission CSV (default ``OUT.submission.csv`` beside ``path``).
    fits : str or Path, optional
        The per-visit fits (default ``SUBMISSION.fits.h5`` beside the submission).
    degree : int
        Degree of the baseline polynomial of each fit.
    missing : {"error", "prior"}
        A planet without a spectrum: :class:`SpectrumError` (default), or the training labels' prior.
    **options
        The other options of :func:`spectrum`.

    Returns
    -------
    tuple of (Path, Path, Spectra)
        The submission and the fits written, and the spectra.

    Raises
    ------
    SpectrumError
        As :func:`spectrum`.
    UnsafeTargetError
        A target would overwrite the input, the star info, or the other target.
    OutputError
        A target's folder does not exist, or a file cannot be written.
    """
    path = Path(path)
    out = Path(out) if out is not None else default_submission(path)
    fits = Path(fits) if fits is not None else fits_path(out)
    check_product_target(out, path)
    check_product_target(fits, path, "--fits")
    star_info = options.get("star_info")
    for target, option in ((out, "-o"), (fits, "--fits")):
        if isinstance(star_info, (str, Path)) and target.resolve() == Path(star_info).resolve():
            raise UnsafeTargetError(f"{option} {target}: would overwrite the star info it reads; write it elsewhere")
    if out.resolve() == fits.resolve():
        raise UnsafeTargetError(f"-o {out} and --fits {fits}: the submission and the fits would be one file")
    for target in (out, fits):  # before the fits, not after them
        if not target.resolve().parent.is_dir():
            raise OutputError(f"{target.parent}: output folder does not exist")
    spectra = spectrum(path, degree=degree, missing=missing, **options)
    with staged() as staging:
        with output_errors(out, "write the submission"):
            _write_csv(staging.path(out), spectra)
        with output_errors(fits, "write the per-visit fits"):
            _write_fits(staging.path(fits), spectra, path, degree)
        staging.commit("write the spectrum")
    return out, fits, spectra


__all__ = ["Curve", "DepthFit", "Prior", "SpectrumError", "Spectra", "Timing", "VisitFit", "bin_width",
           "combine_visits", "expected_durations", "fit_depths", "fit_observation", "fit_timing", "label_prior",
           "read_prior", "spectrum", "submission_values", "transit_shape", "write_spectrum"]
