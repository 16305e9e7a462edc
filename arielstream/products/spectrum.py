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
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._version import __version__
from ..errors import InputError, OutputError
from ..io import cf
from ..io import schema as _schema
from ..io.atomic import output_errors, staged
from ..io.output import UnsafeTargetError, check_product_target
from ..io.reader import open_output
from ..io.store import text
from ..layout import SIGMA_PREFIX, TARGET_PREFIX
from . import lightcurves as lc
from .defaults import DEFAULT_DEGREE

log = logging.getLogger(__name__)

N_AIRS_TARGETS = 282  # wl_2 … wl_283
N_TARGETS = 1 + N_AIRS_TARGETS
MIN_BINS_FREE_DURATIONS = 12  # fewer bins than this: durations from the star info, when known
MIN_DOF_REGRESSORS = 8  # the centroid regressors are used only when this many degrees of freedom remain
N_STARTS = 3  # the timing's simplex starts from this many of the best grid points
MULTIPLICATIVE_ITERATIONS = 3  # fits of each light curve, each with the previous baseline shape
FITS_FORMAT_NAME = "arielstream-spectrum-fits"
FITS_FORMAT_VERSION = 1


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


def read_star_info(path: str | Path) -> dict[int, dict[str, float]]:
    """``<split>_star_info.csv`` as ``{planet_id: {column: value}}``; InputError naming the file if unreadable."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(path, f"cannot read the star info: {exc.strerror or exc}") from None
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


@dataclass
class Spectra:
    """Per-planet spectra (``(planets, 283)``) and the per-visit fits behind them."""

    planet_id: np.ndarray
    depth: np.ndarray
    sigma: np.ndarray
    visits: list[VisitFit]

    def __repr__(self) -> str:  # one line: the shapes, not the arrays
        planets = ", ".join(str(int(p)) for p in self.planet_id[:5]) + (", ..." if len(self.planet_id) > 5 else "")
        return (f"<Spectra {len(self.planet_id)} planet(s) [{planets}]: depth and sigma {self.depth.shape} "
                f"(planet, target), {len(self.visits)} visit fit(s)>")


def _star_info_for(src: h5py.File, path: Path, star_info: str | Path | bool | None) -> dict[int, dict[str, float]]:
    if star_info is False:
        return {}
    if star_info is None or star_info is True:
        folder = text(src.attrs.get("source", ""))
        split = text(src.attrs.get("split", ""))
        candidate = Path(folder) / f"{split}_star_info.csv" if folder and split else None
        if candidate is None or not candidate.is_file():
            log.warning("%s: no star info found (%s); every transit duration is fitted", path,
                        candidate or "the file names no data folder")
            return {}
        star_info = candidate
    return read_star_info(star_info)


def spectrum(path: str | Path, *, degree: int = DEFAULT_DEGREE, decorrelate: bool = True,
             star_info: str | Path | bool | None = None, observations: Sequence[int] | None = None,
             **extraction) -> Spectra:
    """Fit every done observation of the calibrated file ``path`` and combine the visits of each planet.

    ``star_info``: a ``<split>_star_info.csv`` (default: the one in the data
    folder the file was calibrated from, when there), or ``False`` to fit the
    durations without it. ``extraction`` goes to
    :func:`.lightcurves.observation_light_curves` (``half_width``, ``weighted``, …).
    Reads one observation at a time.

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
        Indices of the observations to fit (default every done one).
    **extraction
        Options of the light curves' extraction (``half_width``, ``weighted``, ...).

    Returns
    -------
    Spectra
        Per planet ``depth`` and ``sigma`` ``(planets, 283)``, and the per-visit fits.

    Raises
    ------
    ValueError
        ``degree`` < 0.
    InputError
        ``path`` is not a calibrated file, an observation asked for is not done, or no
        observation gave a spectrum.
    """
    path = Path(path)
    if degree < 0:
        raise ValueError(f"degree must be >= 0; got {degree}")
    fits: list[VisitFit] = []
    with open_output(path) as src:
        stars = _star_info_for(src, path, star_info)
        chosen = lc.require_done(src, path, observations, "fit")
        for n, index in enumerate(chosen, start=1):
            curves = lc.observation_light_curves(src, index, **extraction)
            label = f"{curves.planet_id}/visit {curves.visit}"
            try:
                fit = fit_observation(curves, degree=degree, decorrelate=decorrelate,
                                      star=stars.get(curves.planet_id))
            except ValueError as exc:
                log.warning("%s: no spectrum: %s", label, exc)
                continue
            fits.append(fit)
            log.info("[%d/%d] %s: t0 %.3f h, T14 %.2f h (%s), white depth %.5f ± %.5f", n, len(chosen), label,
                     fit.timing.t0, fit.timing.t14, fit.timing.durations, fit.white_depth, fit.white_sigma)
    if not fits:
        raise InputError(path, "no observation gave a spectrum")
    planets = sorted({f.planet_id for f in fits})
    depth = np.empty((len(planets), N_TARGETS))
    sigma = np.empty((len(planets), N_TARGETS))
    for row, pid in enumerate(planets):
        mine = [f for f in fits if f.planet_id == pid]
        depth[row], sigma[row] = combine_visits(np.stack([f.depth for f in mine]), np.stack([f.sigma for f in mine]))
    return Spectra(planet_id=np.array(planets, dtype=np.int64), depth=depth, sigma=sigma, visits=fits)


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
                   degree: int = DEFAULT_DEGREE, **options) -> tuple[Path, Path, Spectra]:
    """Fit ``path`` (:func:`spectrum`) and write the submission CSV and the per-visit fits (HDF5), together.

    Returns the two paths written and the spectra.
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
    spectra = spectrum(path, degree=degree, **options)
    with staged() as staging:
        with output_errors(out, "write the submission"):
            _write_csv(staging.path(out), spectra)
        with output_errors(fits, "write the per-visit fits"):
            _write_fits(staging.path(fits), spectra, path, degree)
        staging.commit("write the spectrum")
    return out, fits, spectra


__all__ = ["Curve", "DepthFit", "Spectra", "Timing", "VisitFit", "bin_width", "combine_visits",
           "expected_durations", "fit_depths", "fit_observation", "fit_timing", "spectrum", "submission_values",
           "transit_shape", "write_spectrum"]
