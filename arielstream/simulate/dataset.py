"""Simulate ADC2025-shaped raw detector data with a known truth.

The simulator writes a folder with exactly the layout of the competition data
(:mod:`arielstream.layout`): ``adc_info.csv``, ``axis_info.parquet``,
``wavelengths.csv``, ``<split>_star_info.csv`` (and ``train.csv``), one folder per
planet with ``<INST>_signal_<v>.parquet`` (one uint16 column per pixel, one row per
frame) and ``<INST>_calibration_<v>/`` per instrument and visit, plus a
``simulation_truth/`` folder that holds what the data were made from, so that a
pipeline can be checked against the truth instead of against itself.

The physics, in electrons (e):

* every read pair is an exposure. The start (even) read holds the charge
  ``q0 = R * t0`` and the end (odd) read ``q1 = q0 + R * (t1 - t0) + cosmic``,
  with ``R = (S + B) * flat + D`` (star, background, dark; e/s) and the
  notebook's exposure times (AIRS t0 = 0.1 s, t1 = 4.6 s; FGS1 0.1 s, 0.2 s).
  Photon noise is drawn separately for the charge before ``t0`` and for the
  increment (normal approximation, clipped at 0), so the two reads are
  correlated like a real ramp. Dead pixels collect no charge (cosmic rays
  included) and show read noise only.
* the star signal of a read pair is evaluated at the pair: the transit shape at
  the mean time of its two reads, the pointing at the mean jitter of its two
  reads (the truth stores both per frame, the two frames of a pair share the
  shape).
* the detector is non-linear: the calibration polynomial ``f`` (linear_corr,
  ``q = f(m)``) maps the measured read ``m`` onto the charge; the simulator
  solves ``f(m) = q`` per pixel with Newton's method. Read noise is added to
  ``m``; the ADC stores ``raw = round((m - offset) * gain)`` as uint16.
* the calibration files hold the true maps of their visit, so calibrating with
  them is perfect up to noise.

The truth file of a visit (``simulation_truth/<split>/<planet_id>_visit<v>.npz``)
holds, with ``inst`` one of ``airs``/``fgs1`` and W the detector width:

* the planet: ``depth_airs`` (356,) per detector column, ``depth_fgs1``,
  ``depth_target`` (283,) in the order of ``train.csv``, ``t0_h``, ``t14_h``,
  ``t23_h`` and ``<inst>_transit_shape`` (one value per raw frame, 0 out of
  transit, 1 at full depth);
* the scene: ``airs_column_flux`` (356,) e/s, ``airs_profile_sigma`` (356,) px,
  ``fgs1_total_flux`` e/s, ``jitter_<inst>`` (frames, 2) px, ``background_airs``
  (the mean of ``background_airs_rows`` (32,), e/s/pixel) and ``background_fgs1``;
* the detector: ``dark_<inst>``, ``flat_<inst>``, ``dead_<inst>``, ``read_<inst>``
  (32, W) and ``linear_corr_<inst>`` (6, 32, W), equal to the calibration files;
* the cosmic rays: ``cr_<inst>_frame`` (always an end read), ``cr_<inst>_pixel``
  (flat index) and ``cr_<inst>_amplitude`` (e). The lists hold every hit, also
  those on dead pixels (which do not respond).

Everything is drawn from ``numpy.random.default_rng`` seeded by a
``SeedSequence(seed, spawn_key=(split, planet index, visit, instrument,
purpose, tile))``, so a planet's data depend neither on how many planets are
simulated nor on how the signal files are cut into row groups, and the train
and test splits of one seed hold different planets.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numexpr as ne
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from arielstream._version import __version__
from arielstream.errors import OutputError
from arielstream.layout import (
    AIRS,
    AIRS_CUT,
    AIRS_INTEGRATION_TIME,
    AIRS_WAVELENGTH_AXIS,
    CALIBRATION_NAMES,
    COMPRESSIONS,
    FGS1,
    FGS1_WAVELENGTH_UM,
    Instrument,
)

from .layouts import DEFAULT_LAYOUT, check_layout, nullable, writer_options

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- constants
ADC_GAIN = 0.4369
ADC_OFFSET = -1000.0
RAW_MAX = 65535

REAL_BINS = 187  # time bins of a full-size visit
AIRS_PAIR_S = 4.8  # real AIRS read-pair cadence (s)
REAL_AIRS_PAIRS = 5625
FIRST_READ_S = 0.1  # time of the first read after the start of the visit (s)
READ_GAP_S = 0.1  # time between the two reads of a pair as stored in axis_info (s)
FGS1_PER_AIRS = 12  # FGS1 read pairs per AIRS read pair

# (t0, t1): charge integrated at the start and end read (the notebook's dt rules)
EXPOSURE_S = {AIRS.name: (0.1, 4.6), FGS1.name: (0.1, 0.2)}
INTEGRATION_TIMES = (0.1, 4.5)  # AIRS-CH0-integration_time, even / odd frames

# AIRS wavelength of detector column c (um): a fit of the real axis_info file.
AIRS_WL_COEFFS = (4.07846314, -4.43363407e-3, -6.91347214e-6)
N_TARGETS = 283

SPLITS = ("train", "test")
STAR_COLUMNS = ("Rs", "Ms", "Ts", "Mp", "e", "P", "sma", "i")
PLANET_ID_RANGE = (10_000, 4_294_967_295)

# Detector and scene parameters (see the module docstring).
DARK_MEDIAN = 0.0063  # e/s, real median
DARK_SIGMA_LN = 0.3
HOT_FRACTION = 0.007
HOT_RANGE = (0.05, 12.0)  # e/s, log-uniform
DEAD_FRACTION = 0.001
DEAD_FLAT_RANGE = (-0.05, 0.1)
FLAT_SIGMA = 0.015
FLAT_CLIP = (0.9, 1.1)
READ_NOISE = (13.0, 0.4)  # e, mean and spread
READ_TAIL_FRACTION = 0.01
READ_TAIL_RANGE = (25.0, 150.0)  # e, log-uniform
BETA_RANGE = (5e-7, 2e-6)  # 1/e
C1_SIGMA = 0.003
C0_MEAN_SIGMA = (0.14, 0.15)
NEW_HOT_PER_VISIT = 2
DARK_REDRAW_SIGMA = 0.02
NEWTON_TOL = 1e-9  # e
NEWTON_MAX_ITER = 8

AIRS_PEAK_FLUX = 6000.0  # e/s per column, summed over rows, at brightness 1
FGS1_TOTAL_FLUX = 2e6  # e/s at brightness 1
FGS1_PSF_SIGMA = 1.5  # px
BRIGHTNESS_RANGE = (0.3, 1.5)
DEPTH_RANGE = (0.003, 0.02)
T14_RANGE_H = (1.5, 4.0)
MIDTIME_RANGE_H = (3.0, 4.5)
MIN_INCLINATION_DEG = 85.5  # the real star_info range is 85.6 - 90
AIRS_BACKGROUND = (5.0, 30.0)  # e/s/pixel
AIRS_BACKGROUND_GRADIENT = 0.2  # max relative change from the central to an edge row
FGS1_BACKGROUND = (20.0, 100.0)
CR_MEDIAN = 500.0  # e
CR_SIGMA_LN = 1.0
CR_CLIP = (100.0, 20000.0)
TRACE_HOT_RANGE = (1.0, 10.0)  # e/s, log-uniform: the real AIRS file's trace core holds 0.6-9.4 e/s hot pixels

_TILE_ELEMENTS = 1 << 21  # frame-pixels simulated at once (and one random stream each)

_SPLIT_CODE = {"train": 0, "test": 1}
_INST_CODE = {"planet": 0, AIRS.name: 1, FGS1.name: 2}
# purposes of the random streams
_P_ID, _P_PLANET, _P_VISITS, _P_DETECTOR, _P_DARK, _P_VISIT, _P_CR, _P_NOISE, _P_TRACE_HOT = range(9)


# ---------------------------------------------------------------- geometry
def frame_counts(scale: float) -> tuple[int, int, int]:
    """Return ``(n_bins, airs_frames, fgs1_frames)`` for a visit of the given size.

    ``scale`` 1 gives the real 187 bins, 11,250 AIRS and 135,000 FGS1 frames,
    with the real incomplete tail (half a bin) that the notebook drops.
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    n_bins = max(1, round(REAL_BINS * scale))
    return n_bins, n_bins * 2 * AIRS.default_bin + AIRS.default_bin, (
        n_bins * 2 * FGS1.default_bin + FGS1.default_bin
    )


def airs_wavelengths() -> np.ndarray:
    """Wavelength (um) of every AIRS detector column (decreasing along the columns)."""
    c = np.arange(AIRS.columns, dtype=np.float64)
    a0, a1, a2 = AIRS_WL_COEFFS
    return a0 + a1 * c + a2 * c**2


def target_wavelengths() -> np.ndarray:
    """The 283 target wavelengths: FGS1, then AIRS columns 320, 319, ..., 39."""
    lo, hi = AIRS_CUT
    return np.concatenate([[FGS1_WAVELENGTH_UM], airs_wavelengths()[hi - 1 : lo - 1 : -1]])


def to_target_order(depth_fgs1: float, depth_airs: np.ndarray) -> np.ndarray:
    """Arrange per-column AIRS values and the FGS1 value in the 283-target order."""
    lo, hi = AIRS_CUT
    return np.concatenate([[float(depth_fgs1)], np.asarray(depth_airs)[hi - 1 : lo - 1 : -1]])


def _axis_times(n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame times (hours) of AIRS and FGS1 for a visit of ``n_bins`` bins.

    The visit spans ~7.5 h at any scale: the AIRS pair cadence is stretched to
    ``4.8 s * 5625 / n_pairs``; FGS1 pair ``12 j`` starts with AIRS pair ``j``.
    """
    n_pairs_airs = (2 * n_bins + 1) * AIRS.default_bin // 2
    step = AIRS_PAIR_S * REAL_AIRS_PAIRS / n_pairs_airs
    k = np.arange(n_pairs_airs, dtype=np.float64)
    airs = np.empty(2 * n_pairs_airs)
    airs[0::2] = (FIRST_READ_S + k * step) / 3600.0
    airs[1::2] = (FIRST_READ_S + k * step + READ_GAP_S) / 3600.0
    j = np.arange(n_pairs_airs * FGS1_PER_AIRS, dtype=np.float64)
    fgs1 = np.empty(2 * j.size)
    fgs1[0::2] = (FIRST_READ_S + j * (step / FGS1_PER_AIRS)) / 3600.0
    fgs1[1::2] = (FIRST_READ_S + j * (step / FGS1_PER_AIRS) + READ_GAP_S) / 3600.0
    return airs, fgs1


# ---------------------------------------------------------------- random streams
def _rng(seed: int, split: str, planet: int, visit: int, inst: str, purpose: int, tile: int = 0):
    key = (_SPLIT_CODE[split], planet, visit, _INST_CODE[inst], purpose, tile)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


# ---------------------------------------------------------------- non-linearity
_NEWTON_EXPR = ("(c0 + m*(c1 + m*(c2 + m*(c3 + m*(c4 + m*c5)))) - q)"
                " / (c1 + m*(d1 + m*(d2 + m*(d3 + m*d4))))")
_START_EXPR = "(q*p + s) * (1 - (q*p + s) * (a2 - (q*p + s) * (a3 - (q*p + s) * a4)))"


def _newton_correction(m: np.ndarray, q: np.ndarray, c: np.ndarray, fast: bool) -> np.ndarray:
    """``(f(m) - q) / f'(m)``; the coefficients ``c`` (6, n) broadcast on the last axis."""
    c0, c1, c2, c3, c4, c5 = c
    d1, d2, d3, d4 = 2 * c2, 3 * c3, 4 * c4, 5 * c5
    if fast:
        return ne.evaluate(_NEWTON_EXPR, local_dict={
            "m": m, "q": q, "c0": c0, "c1": c1, "c2": c2, "c3": c3, "c4": c4, "c5": c5,
            "d1": d1, "d2": d2, "d3": d3, "d4": d4})
    fm = c0 + m * (c1 + m * (c2 + m * (c3 + m * (c4 + m * c5)))) - q
    return fm / (c1 + m * (d1 + m * (d2 + m * (d3 + m * d4))))


def _series_start(q: np.ndarray, c: np.ndarray, fast: bool) -> np.ndarray:
    """Fourth-order series inverse of the polynomial (``u = (q - c0) / c1``): the Newton start."""
    c0, c1, c2, c3, c4 = c[:5]
    local = {
        "q": q, "p": 1.0 / c1, "s": -c0 / c1, "a2": c2 / c1,
        "a3": (2 * c2 * c2 - c1 * c3) / c1**2,
        "a4": (5 * c2**3 - 5 * c1 * c2 * c3 + c1 * c1 * c4) / c1**3,
    }
    if fast:
        m = ne.evaluate(_START_EXPR, local_dict=local)
    else:
        u = q * local["p"] + local["s"]
        m = u * (1 - u * (local["a2"] - u * (local["a3"] - u * local["a4"])))
    if q.size and float(q.max()) * float(np.max(np.abs(local["a2"]))) > 0.2:
        # far beyond the detector's range the truncated series turns over: start no lower than u / 2
        u = q * local["p"] + local["s"]
        np.copyto(m, 0.5 * u, where=(u > 0) & (m < 0.5 * u))
    return m


def invert_nonlinearity(q: np.ndarray, coeffs: np.ndarray, *, fast: bool = True, tol: float = NEWTON_TOL,
                        max_iter: int = NEWTON_MAX_ITER) -> np.ndarray:
    """Solve ``f(m) = q`` for the measured read ``m``, per pixel (vectorised Newton).

    ``q`` has the pixels on its last axis; ``coeffs`` is ``(6, pixels)``, lowest
    order first (the linear_corr layout). Newton starts from the fourth-order
    series inverse; after the first step over the whole array only the reads
    whose last correction was at least ``tol`` electrons are iterated further,
    until every correction is below ``tol``. ``fast`` uses numexpr, otherwise
    plain numpy (the same algorithm).
    """
    q = np.asarray(q, dtype=np.float64)
    coeffs = np.asarray(coeffs, dtype=np.float64)
    npix = q.shape[-1] if q.ndim else 1
    if coeffs.shape != (6, npix):
        raise ValueError(f"coeffs must be (6, {npix}), got {coeffs.shape}")
    q2 = q.reshape(-1, npix)
    m = _series_start(q2, coeffs, fast)
    corr = _newton_correction(m, q2, coeffs, fast)
    m -= corr
    flat_m = m.reshape(-1)
    idx = np.flatnonzero(np.abs(corr) >= tol)
    if idx.size:
        mm, qq, cc = flat_m[idx], q2.reshape(-1)[idx], coeffs[:, idx % npix]
        for _ in range(max_iter - 1):
            corr = _newton_correction(mm, qq, cc, fast)
            mm -= corr
            flat_m[idx] = mm
            moving = np.abs(corr) >= tol
            if not moving.any():
                break
            idx, mm, qq, cc = idx[moving], mm[moving], qq[moving], cc[:, moving]
        else:
            raise RuntimeError(f"non-linearity inversion did not converge in {max_iter} iterations "
                               f"({idx.size} read(s) still moving by up to {float(np.abs(corr).max()):.3g} e)")
    return m.reshape(q.shape)


# ---------------------------------------------------------------- detector maps
@dataclass(frozen=True)
class Detector:
    """True per-pixel maps of one instrument in one visit, each ``(rows, columns)``."""

    dark: np.ndarray  # e/s
    dead: np.ndarray  # bool
    flat: np.ndarray  # relative QE
    read: np.ndarray  # e rms per read
    linear_corr: np.ndarray  # (6, rows, columns): q = sum_k c_k m^k

    def calibration_tables(self) -> dict[str, np.ndarray]:
        """The five calibration arrays as stored (linear_corr as ``(6 * rows, columns)``)."""
        lc = self.linear_corr
        return {"dark": self.dark, "dead": self.dead, "flat": self.flat, "read": self.read,
                "linear_corr": lc.reshape(lc.shape[0] * lc.shape[1], lc.shape[2])}


def _draw_detector(inst: Instrument, rng: np.random.Generator) -> Detector:
    shape, n = inst.frame_shape, inst.pixels
    dark = DARK_MEDIAN * np.exp(DARK_SIGMA_LN * rng.standard_normal(n))
    hot = rng.random(n) < HOT_FRACTION
    dark[hot] = _log_uniform(rng, *HOT_RANGE, size=int(hot.sum()))

    n_dead = max(1, int(rng.binomial(n, DEAD_FRACTION)))
    dead = np.zeros(n, dtype=bool)
    dead[rng.choice(n, size=n_dead, replace=False)] = True

    flat = np.clip(1.0 + FLAT_SIGMA * rng.standard_normal(n), *FLAT_CLIP)
    flat[dead] = rng.uniform(*DEAD_FLAT_RANGE, size=n_dead)

    read = READ_NOISE[0] + READ_NOISE[1] * rng.standard_normal(n)
    tail = rng.random(n) < READ_TAIL_FRACTION
    read[tail] = _log_uniform(rng, *READ_TAIL_RANGE, size=int(tail.sum()))

    beta = rng.uniform(*BETA_RANGE, size=n)
    coeffs = np.empty((6, n))
    coeffs[0] = C0_MEAN_SIGMA[0] + C0_MEAN_SIGMA[1] * rng.standard_normal(n)
    coeffs[1] = 1.0 + C1_SIGMA * rng.standard_normal(n)
    coeffs[2] = beta
    coeffs[3] = 2 * beta**2
    coeffs[4] = 5 * beta**3
    coeffs[5] = 14 * beta**4
    coeffs[:, dead] = 0.0
    coeffs[1, dead] = 1.0
    _check_monotonic(coeffs, inst)
    return Detector(dark.reshape(shape), dead.reshape(shape), flat.reshape(shape),
                    read.reshape(shape), coeffs.reshape((6, *shape)))


def trace_core_pixels(rows: int = 2) -> np.ndarray:
    """Flat indices (row * columns + column) of the AIRS trace core, sorted.

    The core is the ``rows`` rows nearest the trace centre (`trace_centre`, without
    jitter) of every target column (`AIRS_CUT`).
    """
    lo, hi = AIRS_CUT
    cols = np.arange(lo, hi)
    nearest = np.argsort(np.abs(np.arange(AIRS.rows)[None, :] - trace_centre(cols)[:, None]), axis=1,
                         kind="stable")[:, :rows]
    return np.sort((nearest * AIRS.columns + cols[:, None]).ravel())


def _add_trace_hot_pixels(det: Detector, n: int, rng: np.random.Generator) -> Detector:
    """The detector with ``n`` live pixels of the AIRS trace core (`trace_core_pixels`) made hot.

    Their dark is log-uniform in `TRACE_HOT_RANGE`; everything else is as drawn.
    """
    core = trace_core_pixels()
    core = core[~det.dead.ravel()[core]]
    chosen = rng.choice(core, size=n, replace=False)
    dark = det.dark.copy()
    dark.ravel()[chosen] = _log_uniform(rng, *TRACE_HOT_RANGE, size=n)
    return Detector(dark, det.dead, det.flat, det.read, det.linear_corr)


def _check_monotonic(coeffs: np.ndarray, inst: Instrument) -> None:
    """Refuse a polynomial that is not increasing over the whole ADC range."""
    m = np.linspace(ADC_OFFSET, RAW_MAX / ADC_GAIN + ADC_OFFSET, 257)[:, None]
    c = coeffs
    slope = c[1] + m * (2 * c[2] + m * (3 * c[3] + m * (4 * c[4] + m * 5 * c[5])))
    if not np.all(slope > 0):
        raise RuntimeError(f"{inst.name}: a non-linearity polynomial is not increasing over the ADC range")


def _next_visit_detector(det: Detector, rng: np.random.Generator) -> Detector:
    """Visit 1: same flat, dead pixels and non-linearity; dark re-drawn plus new hot pixels."""
    dark = det.dark * (1.0 + DARK_REDRAW_SIGMA * rng.standard_normal(det.dark.shape))
    candidates = np.flatnonzero(~det.dead.ravel())
    new_hot = rng.choice(candidates, size=NEW_HOT_PER_VISIT, replace=False)
    dark.ravel()[new_hot] = _log_uniform(rng, *HOT_RANGE, size=NEW_HOT_PER_VISIT)
    return Detector(dark, det.dead, det.flat, det.read, det.linear_corr)


# ---------------------------------------------------------------- planets
@dataclass
class Planet:
    """Planet-level truth (shared by its visits)."""

    index: int
    planet_id: int
    n_visits: int
    star: dict[str, float]  # Rs, Ms, Ts, Mp, e, P, sma, i as in star_info
    k: float  # Rp/Rs used for the transit duration
    b: float  # impact parameter
    t14_h: float
    t23_h: float
    brightness: float
    depth0: float
    depth_airs: np.ndarray  # (356,)
    depth_fgs1: float
    airs_column_flux: np.ndarray  # (356,) e/s summed over rows, before flat and transit
    airs_profile_sigma: np.ndarray  # (356,) px
    fgs1_total_flux: float
    background_airs_rows: np.ndarray  # (32,) e/s/pixel, 0 when none
    background_fgs1: float
    extra: dict = field(default_factory=dict)

    @property
    def depth_target(self) -> np.ndarray:
        """The 283 depths in the competition's target order (FGS1, then AIRS from short wavelengths)."""
        return to_target_order(self.depth_fgs1, self.depth_airs)

    def manifest(self) -> dict:
        """The planet's entry of ``simulation_truth/manifest.json`` (without its visits)."""
        return {
            "index": self.index, "planet_id": self.planet_id, "n_visits": self.n_visits,
            **self.star, "k": self.k, "b": self.b, "t14_h": self.t14_h, "t23_h": self.t23_h,
            "brightness": self.brightness, "depth0": self.depth0, "depth_fgs1": self.depth_fgs1,
            "fgs1_total_flux": self.fgs1_total_flux,
            "background_airs": float(self.background_airs_rows.mean()),
            "background_fgs1": self.background_fgs1, **self.extra,
        }


def _durations_h(P_days: float, sma: float, inc_deg: float, k: float) -> tuple[float, float]:
    """Total (T14) and full (T23) transit durations in hours; NaN where undefined."""
    inc = math.radians(inc_deg)
    b = sma * math.cos(inc)
    out = []
    for kk in (1 + k, 1 - k):
        arg = kk * kk - b * b
        if arg <= 0:
            out.append(math.nan)
            continue
        x = math.sqrt(arg) / (sma * math.sin(inc))
        out.append(P_days * 24.0 / math.pi * math.asin(min(1.0, x)))
    return out[0], out[1]


def _draw_star_and_orbit(rng: np.random.Generator, k: float) -> tuple[dict[str, float], float, float, float]:
    """Star and orbit in the real ranges with 1.5 h <= T14 <= 4 h and no grazing transit."""
    for _ in range(10_000):
        Ms = rng.uniform(0.6, 1.8)
        Rs = float(np.clip(Ms**0.8 * rng.uniform(0.85, 1.35), 0.65, 2.9))
        Ts = float(np.clip(5772.0 * Ms**0.5 * rng.uniform(0.9, 1.05), 4200.0, 7000.0))
        P = rng.uniform(2.8, 7.6)
        a_au = (Ms * (P / 365.25) ** 2) ** (1.0 / 3.0)
        sma = a_au * 215.032 / Rs
        if not 4.2 <= sma <= 21.0:
            continue
        b = rng.uniform(0.0, min(0.85 * (1.0 - k), sma * math.cos(math.radians(MIN_INCLINATION_DEG))))
        inc = math.degrees(math.acos(b / sma))
        t14, t23 = _durations_h(P, sma, inc, k)
        if T14_RANGE_H[0] <= t14 <= T14_RANGE_H[1] and t23 > 0:
            Mp = float(_log_uniform(rng, 0.05, 25.0))
            star = {"Rs": Rs, "Ms": float(Ms), "Ts": Ts, "Mp": Mp, "e": 0.0, "P": float(P),
                    "sma": float(sma), "i": inc}
            return star, b, t14, t23
    raise RuntimeError("could not draw a star and orbit with the requested transit duration")


def _stellar_spectrum(wl_um: np.ndarray, teff: float) -> np.ndarray:
    """Photon rate shape: a blackbody slope times a broad throughput bell, peak 1."""
    photons = wl_um**-4 / np.expm1(14387.77 / (wl_um * teff))
    bell = np.exp(-(((wl_um - 2.85) / 1.1) ** 4))
    s = photons * bell
    return s / s.max()


def _draw_planet(seed: int, split: str, index: int, taken: set[int], *, two_visit_fraction: float,
                 background_fraction: float, force_two_visits: bool) -> Planet:
    """Draw planet ``index`` from its own random streams (independent of the other planets).

    The id of planet index 1 always lies above 2**31 (ids need int64); an id
    already ``taken`` by an earlier planet is drawn again.
    """
    id_rng = _rng(seed, split, index, 0, "planet", _P_ID)
    lo = 2**31 if index == 1 else PLANET_ID_RANGE[0]
    while True:
        pid = int(id_rng.integers(lo, PLANET_ID_RANGE[1], endpoint=True))
        if pid not in taken:
            break
    visit_draw = _rng(seed, split, index, 0, "planet", _P_VISITS).random()
    n_visits = 2 if (force_two_visits or visit_draw < two_visit_fraction) else 1

    rng = _rng(seed, split, index, 0, "planet", _P_PLANET)
    depth0 = rng.uniform(*DEPTH_RANGE)
    k = math.sqrt(depth0)
    star, b, t14, t23 = _draw_star_and_orbit(rng, k)
    brightness = rng.uniform(*BRIGHTNESS_RANGE)

    wl = airs_wavelengths()
    bump1, bump2, slope = rng.uniform(0.02, 0.15), rng.uniform(0.0, 0.10), rng.uniform(-0.03, 0.03)
    feature = (bump1 * np.exp(-0.5 * ((wl - 2.7) / 0.15) ** 2)
               + bump2 * np.exp(-0.5 * ((wl - 3.3) / 0.12) ** 2)
               + slope * (wl - 2.85) / 1.25)
    depth_airs = depth0 * (1.0 + feature)
    depth_fgs1 = depth0 * (1.0 + rng.uniform(-0.02, 0.03))

    column_flux = AIRS_PEAK_FLUX * brightness * _stellar_spectrum(wl, star["Ts"])
    sigma = 1.0 + 0.35 * wl

    has_bg = rng.random() < background_fraction
    bg_level, bg_grad, bg_fgs1 = (rng.uniform(*AIRS_BACKGROUND),
                                  rng.uniform(-AIRS_BACKGROUND_GRADIENT, AIRS_BACKGROUND_GRADIENT),
                                  rng.uniform(*FGS1_BACKGROUND))
    rows = np.arange(AIRS.rows, dtype=np.float64)
    half = (AIRS.rows - 1) / 2
    bg_rows = bg_level * (1.0 + bg_grad * (rows - half) / half) if has_bg else np.zeros(AIRS.rows)
    return Planet(
        index=index, planet_id=pid, n_visits=n_visits, star=star, k=k, b=b, t14_h=t14, t23_h=t23,
        brightness=float(brightness), depth0=float(depth0), depth_airs=depth_airs,
        depth_fgs1=float(depth_fgs1), airs_column_flux=column_flux, airs_profile_sigma=sigma,
        fgs1_total_flux=FGS1_TOTAL_FLUX * float(brightness), background_airs_rows=bg_rows,
        background_fgs1=float(bg_fgs1) if has_bg else 0.0,
        extra={"spectrum_bumps": [float(bump1), float(bump2)], "spectrum_slope": float(slope),
               "background_airs_gradient": float(bg_grad) if has_bg else 0.0},
    )


# ---------------------------------------------------------------- a visit's scene
def transit_shape(t_h: np.ndarray, t0_h: float, t14_h: float, t23_h: float) -> np.ndarray:
    """Trapezoid: 0 out of transit, 1 in full transit, linear in ingress and egress."""
    ramp = (t14_h - t23_h) / 2.0
    return np.clip((t14_h / 2.0 - np.abs(np.asarray(t_h) - t0_h)) / ramp, 0.0, 1.0)


def _ar1(t_s: np.ndarray, tau_s: float, sigma: float, eps: np.ndarray) -> np.ndarray:
    """Stationary AR(1) (Ornstein-Uhlenbeck) sampled at the given times."""
    rho = np.exp(-np.diff(t_s) / tau_s)
    scale = (sigma * np.sqrt(1.0 - rho**2)).tolist()
    rho_l, e = rho.tolist(), eps.tolist()
    x = [0.0] * len(e)
    prev = sigma * e[0]
    x[0] = prev
    for i in range(1, len(e)):
        prev = rho_l[i - 1] * prev + scale[i - 1] * e[i]
        x[i] = prev
    return np.asarray(x)


def _draw_jitter(t_h: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """FGS1 pointing jitter (px) at the FGS1 frame times: AR(1) + drift + sinusoid."""
    t_s = t_h * 3600.0
    span = t_s[-1] - t_s[0]
    out = np.empty((t_s.size, 2))
    params = {}
    for axis, name in enumerate("xy"):
        sigma, tau = rng.uniform(0.05, 0.2), rng.uniform(120.0, 600.0)
        drift = rng.uniform(-0.3, 0.3)
        amp, period, phase = rng.uniform(0.01, 0.05), rng.uniform(600.0, 3000.0), rng.uniform(0, 2 * np.pi)
        out[:, axis] = (_ar1(t_s, tau, sigma, rng.standard_normal(t_s.size))
                        + drift * ((t_s - t_s[0]) / span - 0.5)
                        + amp * np.sin(2 * np.pi * t_s / period + phase))
        params[name] = {"ar1_sigma_px": sigma, "ar1_tau_s": tau, "drift_px": drift,
                        "sine_amplitude_px": amp, "sine_period_s": period, "sine_phase": phase}
    return out, params


def _pair_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the two reads of each pair (axis 0)."""
    return 0.5 * (a[0::2] + a[1::2])


def airs_star_rate(column_flux: np.ndarray, sigma: np.ndarray, jx: np.ndarray, jy: np.ndarray,
                   dimming: np.ndarray) -> np.ndarray:
    """Star signal on every AIRS pixel (e/s, before flat) for ``nk`` read pairs.

    ``column_flux``, ``sigma``: per column (flux summed over rows); ``jx``,
    ``jy``: pointing of each pair (px); ``dimming``: ``(nk, columns)`` factor
    ``1 - depth * shape``. The trace is a Gaussian across the rows, normalised
    over the 32 rows, centred on `trace_centre` + ``jy``; the spectrum is
    shifted along the columns by ``jx`` (linear interpolation). Returns
    ``(nk, pixels)`` with pixel = row * columns + column.
    """
    ncol, nrow, nk = column_flux.size, AIRS.rows, jx.size
    cols = np.arange(ncol, dtype=np.float64)
    shifted = np.interp((cols[None, :] - jx[:, None]).ravel(), cols, column_flux).reshape(nk, ncol)
    shifted *= dimming
    prof = ne.evaluate("exp(-0.5 * ((rows - centre) / sig) ** 2)", local_dict={  # (nk, nrow, ncol)
        "rows": np.arange(nrow, dtype=np.float64)[None, :, None],
        "centre": (trace_centre(cols)[None, :] + jy[:, None])[:, None, :],
        "sig": sigma[None, None, :]})
    prof *= (shifted / prof.sum(axis=1))[:, None, :]
    return prof.reshape(nk, nrow * ncol)


def trace_centre(cols: np.ndarray) -> np.ndarray:
    """Row of the AIRS trace centre at each column, without jitter."""
    mid = AIRS.columns / 2
    return (AIRS.rows - 1) / 2 + 0.4 * ((np.asarray(cols) - mid) / mid) ** 2


def fgs1_star_rate(total: float, jx: np.ndarray, jy: np.ndarray, dimming: np.ndarray) -> np.ndarray:
    """Star signal on every FGS1 pixel (e/s, before flat), ``(nk, pixels)``.

    A 2-D Gaussian PSF sampled at the pixel centres and normalised to ``total *
    dimming``, centred on (15.5 + ``jx``, 15.5 + ``jy``) (column, row).
    """
    centre = (FGS1.rows - 1) / 2
    x = np.arange(FGS1.columns, dtype=np.float64)[None, :]
    y = np.arange(FGS1.rows, dtype=np.float64)[None, :]
    gx = np.exp(-0.5 * ((x - centre - jx[:, None]) / FGS1_PSF_SIGMA) ** 2)
    gy = np.exp(-0.5 * ((y - centre - jy[:, None]) / FGS1_PSF_SIGMA) ** 2)
    gx /= gx.sum(axis=1, keepdims=True)
    gy *= (total * np.asarray(dimming, dtype=np.float64))[:, None] / gy.sum(axis=1, keepdims=True)
    return (gy[:, :, None] * gx[:, None, :]).reshape(jx.size, FGS1.pixels)


# ---------------------------------------------------------------- cosmic rays
def _draw_cosmic_rays(n_pairs: int, n_pixels: int, exposure_s: float, rate: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hits between the two reads of each pair: (odd frame, pixel, amplitude e), sorted by frame."""
    counts = rng.poisson(rate * exposure_s * n_pixels, size=n_pairs)
    total = int(counts.sum())
    pairs = np.repeat(np.arange(n_pairs, dtype=np.int64), counts)
    pixels = rng.integers(0, n_pixels, size=total, dtype=np.int64)
    amp = np.clip(CR_MEDIAN * np.exp(CR_SIGMA_LN * rng.standard_normal(total)), *CR_CLIP)
    return 2 * pairs + 1, pixels, amp


# ---------------------------------------------------------------- reads
def _simulate_tile(star: np.ndarray, maps: dict[str, np.ndarray], background: np.ndarray,
                   exposure: tuple[float, float], cr_pair: np.ndarray, cr_pixel: np.ndarray,
                   cr_amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Raw reads of ``nk`` read pairs: uint16 ``(2 * nk, pixels)``, frames in time order.

    ``star`` is ``(nk, pixels)`` e/s before flat; ``maps`` holds per-pixel
    ``flat``, ``dark``, ``read``, ``live`` and ``coeffs`` ``(6, pixels)``;
    ``cr_pair`` indexes pairs within the tile.
    """
    t0, t1 = exposure
    nk, npix = star.shape
    rate = ne.evaluate("where(live, (star + bg) * flat + dark, 0.0)", local_dict={
        "live": maps["live"], "star": star, "bg": background, "flat": maps["flat"], "dark": maps["dark"]})
    lam = np.empty((nk, 2, npix))
    np.multiply(rate, t0, out=lam[:, 0])
    np.multiply(rate, t1 - t0, out=lam[:, 1])
    z = rng.standard_normal((nk, 2, npix))
    # photon noise of the charge before t0 and of the increment (normal approximation, >= 0)
    q = ne.evaluate("where(lam > 0, lam + sqrt(lam) * z, 0.0)")
    np.maximum(q, 0.0, out=q)
    q[:, 1] += q[:, 0]
    if cr_pair.size:
        keep = maps["live"][cr_pixel]
        np.add.at(q[:, 1], (cr_pair[keep], cr_pixel[keep]), cr_amp[keep])
    m = invert_nonlinearity(q.reshape(2 * nk, npix), maps["coeffs"])
    rng.standard_normal((2 * nk, npix), out=z.reshape(2 * nk, npix))
    # read noise, then the ADC: raw = round((m - offset) * gain) within [0, RAW_MAX]
    v = ne.evaluate("(m + rn * z - offset) * gain + 0.5", local_dict={
        "m": m, "rn": maps["read"], "z": z.reshape(2 * nk, npix), "offset": ADC_OFFSET, "gain": ADC_GAIN})
    np.clip(v, 0.0, RAW_MAX, out=v)
    return v.astype(np.uint16)


class _SignalSink:
    """A signal Parquet file written row group by row group on a writer thread.

    `add` takes time-major uint16 blocks ``(frames, pixels)``, transposes them
    into a pixel-major buffer of ``row_group_frames`` frames and hands each full
    buffer to ``executor`` (one worker), so encoding overlaps the simulation of
    the next block; at most one row group per file waits to be written. The
    file appears under its final name only once `close` has checked it.
    ``options`` are the writer's (:func:`~arielstream.simulate.layouts.writer_options`);
    ``nullable``: OPTIONAL columns instead of REQUIRED ones.
    """

    def __init__(self, path: Path, n_pixels: int, n_frames: int, row_group_frames: int | None,
                 options: dict[str, Any], executor: ThreadPoolExecutor, nullable: bool = False):
        self.path, self.n_pixels, self.n_frames = path, n_pixels, n_frames
        self.rg = n_frames if row_group_frames is None else min(row_group_frames, n_frames)
        self.schema = pa.schema([pa.field(f"column_{p}", pa.uint16(), nullable=nullable)
                                 for p in range(n_pixels)])
        self.tmp = path.with_name(path.name + ".tmp")
        self.writer = pq.ParquetWriter(self.tmp, self.schema, **options)
        self.executor = executor
        self.pending: Future | None = None
        self.buf = np.empty((n_pixels, self.rg), dtype=np.uint16)
        self.fill = self.submitted = self.saturated = 0

    def add(self, block: np.ndarray) -> None:
        self.saturated += int(np.count_nonzero(block == RAW_MAX))
        pos, nb = 0, block.shape[0]
        while pos < nb:
            take = min(nb - pos, self.rg - self.fill)
            self.buf[:, self.fill:self.fill + take] = block[pos:pos + take].T
            self.fill += take
            pos += take
            if self.fill == self.rg:
                self._submit()

    def _submit(self) -> None:
        if self.pending is not None:
            self.pending.result()
        self.pending = self.executor.submit(self._write, self.buf, self.fill)
        self.submitted += self.fill
        self.fill = 0
        if self.submitted < self.n_frames:
            self.buf = np.empty((self.n_pixels, min(self.rg, self.n_frames - self.submitted)), np.uint16)

    def _write(self, buf: np.ndarray, n: int) -> None:
        table = pa.Table.from_arrays([pa.array(buf[p, :n]) for p in range(self.n_pixels)], schema=self.schema)
        self.writer.write_table(table, row_group_size=n)

    def close(self) -> int:
        """Finish the file; return the number of saturated reads (raw == RAW_MAX)."""
        if self.fill:
            self._submit()
        if self.pending is not None:
            self.pending.result()
        self.writer.close()
        if self.submitted != self.n_frames:
            raise RuntimeError(f"{self.path}: wrote {self.submitted} frames, expected {self.n_frames}")
        self.tmp.replace(self.path)
        return self.saturated

    def abort(self) -> None:
        """Drop the unfinished file (after an error elsewhere)."""
        if self.pending is not None and not self.pending.cancel():
            try:
                self.pending.result()
            except Exception:  # the error being handled is the one to report
                log.debug("%s: pending write failed while aborting", self.path, exc_info=True)
        try:
            self.writer.close()
        except Exception:
            log.debug("%s: closing the writer failed while aborting", self.path, exc_info=True)
        self.tmp.unlink(missing_ok=True)


def _write_table(path: Path, columns: list[np.ndarray], names: list[str], options: dict[str, Any]) -> None:
    """One row group of OPTIONAL columns (as both writers make them), written with the writer ``options``."""
    table = pa.Table.from_arrays([pa.array(c) for c in columns], names=names)
    pq.write_table(table, path, row_group_size=max(1, table.num_rows), **options)


def _write_calibration(folder: Path, det: Detector, options: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tables = det.calibration_tables()
    for name in CALIBRATION_NAMES:
        arr = tables[name]
        cols = [np.ascontiguousarray(arr[:, j]) for j in range(arr.shape[1])]
        _write_table(folder / f"{name}.parquet", cols, [f"column_{j}" for j in range(arr.shape[1])], options)


# ---------------------------------------------------------------- metadata files
def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    def fmt(v) -> str:
        if isinstance(v, (bool, np.bool_)):
            raise TypeError("booleans are not written to CSV")
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        return repr(float(v))

    text = ",".join(header) + "\n" + "".join(",".join(fmt(v) for v in row) + "\n" for row in rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_metadata(out: Path, n_bins: int) -> None:
    _write_csv(out / "adc_info.csv",
               ["FGS1_adc_offset", "FGS1_adc_gain", "AIRS-CH0_adc_offset", "AIRS-CH0_adc_gain"],
               [[ADC_OFFSET, ADC_GAIN, ADC_OFFSET, ADC_GAIN]])
    airs_t, fgs1_t = _axis_times(n_bins)
    n = fgs1_t.size

    def pad(a: np.ndarray) -> np.ndarray:
        out_a = np.full(n, np.nan)
        out_a[: a.size] = a
        return out_a

    integ = np.tile(np.asarray(INTEGRATION_TIMES), airs_t.size // 2)
    _write_table(out / "axis_info.parquet",  # pyarrow's layout whatever the others' (layouts.py)
                 [pad(airs_t), pad(airs_wavelengths()), pad(integ), fgs1_t],
                 [AIRS.time_axis, AIRS_WAVELENGTH_AXIS, AIRS_INTEGRATION_TIME, FGS1.time_axis],
                 writer_options(DEFAULT_LAYOUT, "zstd"))
    _write_csv(out / "wavelengths.csv", [f"wl_{i}" for i in range(1, N_TARGETS + 1)],
               [list(target_wavelengths())])


def _other_split_runs(path: Path, split: str, scale: float) -> dict:
    """Runs of the other split recorded in an existing manifest; refuse a different scale.

    axis_info.parquet is shared by the splits of a folder, so they must share the scale.
    """
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); it will be replaced", path, exc)
        return {}
    others = {name: run for name, run in (old.get("splits") or {}).items() if name != split}
    if others and old.get("scale") != scale:
        raise ValueError(
            f"{path.parent.parent} already holds split(s) {sorted(others)} simulated at scale "
            f"{old.get('scale')}; axis_info.parquet is shared, so '{split}' must use the same scale "
            f"(got {scale})"
        )
    return others


def _write_json(path: Path, content: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1))
    tmp.replace(path)


# ---------------------------------------------------------------- one visit
def _simulate_instrument(sink: _SignalSink, inst: Instrument, det: Detector, star_rate,
                         background: np.ndarray, n_frames: int,
                         cosmic: tuple[np.ndarray, np.ndarray, np.ndarray], rng_for_tile) -> None:
    """Simulate one signal file tile by tile; ``star_rate(k0, k1)`` gives ``(k1 - k0, pixels)`` e/s.

    A tile is a fixed number of read pairs with its own random stream, so the
    data do not depend on how the file is cut into row groups.
    """
    n_pairs = n_frames // 2
    maps = {"flat": det.flat.ravel(), "dark": det.dark.ravel(), "read": det.read.ravel(),
            "live": ~det.dead.ravel(), "coeffs": det.linear_corr.reshape(6, -1)}
    cr_frame, cr_pixel, cr_amp = cosmic
    cr_pair = cr_frame // 2
    tile = max(1, _TILE_ELEMENTS // (2 * inst.pixels))
    exposure = EXPOSURE_S[inst.name]
    for t, k0 in enumerate(range(0, n_pairs, tile)):
        k1 = min(k0 + tile, n_pairs)
        lo, hi = np.searchsorted(cr_pair, [k0, k1])
        sink.add(_simulate_tile(star_rate(k0, k1), maps, background, exposure, cr_pair[lo:hi] - k0,
                                cr_pixel[lo:hi], cr_amp[lo:hi], rng_for_tile(t)))


def _simulate_visit(out: Path, split: str, seed: int, planet: Planet, visit: int,
                    dets: dict[str, Detector], axis: tuple[np.ndarray, np.ndarray], *,
                    cosmic_rate: float, row_group_frames: int | None, compression: str,
                    page_checksums: bool = False, parquet_layout: str = DEFAULT_LAYOUT) -> dict:
    airs_t, fgs1_t = axis
    vrng = _rng(seed, split, planet.index, visit, "planet", _P_VISIT)
    t0_h = float(vrng.uniform(*MIDTIME_RANGE_H))
    jitter_fgs1, jitter_params = _draw_jitter(fgs1_t, vrng)
    jitter_airs = 0.5 * np.stack([np.interp(airs_t, fgs1_t, jitter_fgs1[:, a]) for a in (0, 1)], axis=1)

    shapes = {}
    for inst, t in ((AIRS, airs_t), (FGS1, fgs1_t)):
        s_pair = transit_shape(_pair_mean(t), t0_h, planet.t14_h, planet.t23_h)
        shapes[inst.name] = (s_pair, np.repeat(s_pair, 2))
    jit_pair = {AIRS.name: _pair_mean(jitter_airs), FGS1.name: _pair_mean(jitter_fgs1)}

    def airs_rate(k0: int, k1: int) -> np.ndarray:
        j, s = jit_pair[AIRS.name][k0:k1], shapes[AIRS.name][0][k0:k1]
        dimming = 1.0 - planet.depth_airs[None, :] * s[:, None]
        return airs_star_rate(planet.airs_column_flux, planet.airs_profile_sigma, j[:, 0], j[:, 1], dimming)

    def fgs1_rate(k0: int, k1: int) -> np.ndarray:
        j, s = jit_pair[FGS1.name][k0:k1], shapes[FGS1.name][0][k0:k1]
        return fgs1_star_rate(planet.fgs1_total_flux, j[:, 0], j[:, 1], 1.0 - planet.depth_fgs1 * s)

    backgrounds = {
        AIRS.name: np.repeat(planet.background_airs_rows, AIRS.columns),
        FGS1.name: np.full(FGS1.pixels, planet.background_fgs1),
    }
    folder = out / split / str(planet.planet_id)
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[str, Any] = {}  # arrays (Any: numpy's savez stub reserves the keyword allow_pickle)
    sinks: dict[str, _SignalSink] = {}
    signal_options = writer_options(parquet_layout, compression, page_checksums)
    calibration_options = writer_options(parquet_layout, "zstd", page_checksums)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer") as executor:
        try:
            for inst, rate_fn, n_frames in ((AIRS, airs_rate, airs_t.size), (FGS1, fgs1_rate, fgs1_t.size)):
                t_start = time.perf_counter()
                t_exp = EXPOSURE_S[inst.name]
                cosmic = _draw_cosmic_rays(n_frames // 2, inst.pixels, t_exp[1] - t_exp[0], cosmic_rate,
                                           _rng(seed, split, planet.index, visit, inst.name, _P_CR))
                det = dets[inst.name]
                _write_calibration(folder / inst.calibration_dir(visit), det, calibration_options)

                def rng_for_tile(t: int, inst: Instrument = inst) -> np.random.Generator:
                    return _rng(seed, split, planet.index, visit, inst.name, _P_NOISE, t)

                sinks[inst.name] = _SignalSink(folder / inst.signal_name(visit), inst.pixels, n_frames,
                                               row_group_frames, signal_options, executor,
                                               nullable(parquet_layout))
                _simulate_instrument(sinks[inst.name], inst, det, rate_fn, backgrounds[inst.name], n_frames,
                                     cosmic, rng_for_tile)
                key = "airs" if inst is AIRS else "fgs1"
                truth[f"cr_{key}_frame"], truth[f"cr_{key}_pixel"], truth[f"cr_{key}_amplitude"] = cosmic
                truth[f"dark_{key}"], truth[f"flat_{key}"], truth[f"dead_{key}"] = det.dark, det.flat, det.dead
                truth[f"read_{key}"], truth[f"linear_corr_{key}"] = det.read, det.linear_corr
                log.debug("planet %d visit %d %s: %d frames, %d cosmic rays simulated in %.1f s",
                          planet.planet_id, visit, inst.name, n_frames, cosmic[0].size,
                          time.perf_counter() - t_start)
            for name, sink in sinks.items():
                n_sat = sink.close()
                if n_sat:
                    log.warning("planet %d visit %d %s: %d saturated reads (raw %d)", planet.planet_id,
                                visit, name, n_sat, RAW_MAX)
        except BaseException:
            for sink in sinks.values():
                sink.abort()
            raise

    truth.update(
        depth_airs=planet.depth_airs, depth_fgs1=np.float64(planet.depth_fgs1),
        depth_target=planet.depth_target, t0_h=np.float64(t0_h), t14_h=np.float64(planet.t14_h),
        t23_h=np.float64(planet.t23_h), airs_transit_shape=shapes[AIRS.name][1],
        fgs1_transit_shape=shapes[FGS1.name][1], airs_column_flux=planet.airs_column_flux,
        fgs1_total_flux=np.float64(planet.fgs1_total_flux), airs_profile_sigma=planet.airs_profile_sigma,
        jitter_airs=jitter_airs, jitter_fgs1=jitter_fgs1,
        background_airs=np.float64(planet.background_airs_rows.mean()),
        background_airs_rows=planet.background_airs_rows,
        background_fgs1=np.float64(planet.background_fgs1),
    )
    tdir = out / "simulation_truth" / split
    tdir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(tdir / f"{planet.planet_id}_visit{visit}.npz", **truth)
    return {"visit": visit, "t0_h": t0_h, "jitter": jitter_params,
            "n_cosmic_airs": int(truth["cr_airs_frame"].size),
            "n_cosmic_fgs1": int(truth["cr_fgs1_frame"].size)}


# ---------------------------------------------------------------- public entry point
def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_arguments(n_planets: int, seed: int, split: str, two_visit_fraction: float, background_fraction: float,
                     row_group_frames: int | None, cosmic_rate: float, compression: str,
                     trace_hot_pixels: int = 0, parquet_layout: str = DEFAULT_LAYOUT) -> None:
    """Refuse arguments of :func:`simulate_dataset` that it cannot honour, before anything is written."""
    if not _is_integer(n_planets) or n_planets < 1:
        raise ValueError(f"n_planets must be an integer >= 1, got {n_planets!r}")
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for name, value in (("two_visit_fraction", two_visit_fraction),
                        ("background_fraction", background_fraction)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be within [0, 1], got {value!r}")
    if row_group_frames is not None and (not _is_integer(row_group_frames) or row_group_frames < 1):
        raise ValueError(f"row_group_frames must be None or an integer >= 1, got {row_group_frames!r}")
    if not (isinstance(cosmic_rate, (int, float)) and math.isfinite(cosmic_rate) and cosmic_rate >= 0):
        raise ValueError(f"cosmic_rate must be a finite number >= 0, got {cosmic_rate!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    check_layout(parquet_layout, compression)
    most = trace_core_pixels().size // 2
    if not _is_integer(trace_hot_pixels) or not 0 <= trace_hot_pixels <= most:
        raise ValueError(f"trace_hot_pixels must be an integer within [0, {most}], got {trace_hot_pixels!r}")


def _refuse_foreign_planets(split_dir: Path, taken: set[int], split: str) -> None:
    """Refuse a folder holding planets this simulation does not write: their truth would be lost.

    ``<split>_star_info.csv`` and ``train.csv`` are rewritten with this simulation's planets only, so
    planet folders of another simulation would be left without their truth.
    """
    if not split_dir.is_dir():
        return
    foreign = sorted(d.name for d in split_dir.iterdir()
                     if d.is_dir() and d.name.isdigit() and int(d.name) not in taken)
    if foreign:
        truth = f"{split}_star_info.csv" + (" and train.csv" if split == "train" else "")
        raise OutputError(f"{split_dir}: holds {len(foreign)} planet folder(s) this simulation does not write "
                          f"(e.g. {foreign[0]}); {truth} would lose their truth: simulate into a new folder")


def simulate_dataset(out_dir: str | Path, *, n_planets: int, scale: float = 1.0, seed: int = 0, split: str = "train",
                     two_visit_fraction: float = 0.1, row_group_frames: int | None = None,
                     cosmic_rate: float = 1.6e-5, background_fraction: float = 0.3,
                     compression: str = "zstd", page_checksums: bool = False,
                     trace_hot_pixels: int = 0, parquet_layout: str = DEFAULT_LAYOUT) -> list[tuple[int, int]]:
    """Write an ADC2025-shaped folder; return ``[(planet_id, n_visits), ...]`` in simulation order.

    Parameters
    ----------
    out_dir : folder to write into (created with its parents; may already exist).
    n_planets : number of planets (>= 1).
    scale : visit length relative to the real one (1.0: 11,250 AIRS frames); see `frame_counts`.
    seed : non-negative integer; the data are a deterministic function of the arguments.
    split : "train" (writes train.csv with the true spectra) or "test".
    two_visit_fraction : probability that a planet has a second visit; when ``n_planets >= 2``
        the planet simulated second always has two.
    row_group_frames : frames per Parquet row group of the signal files (None: one row group).
    cosmic_rate : cosmic-ray hits per pixel per second of exposure.
    background_fraction : probability that a planet has a diffuse background.
    compression : Parquet codec of the signal files in the ``pyarrow`` layout (calibration files are always
        zstd; the other layouts are zstd).
    page_checksums : write a CRC32 in every Parquet page of the signal and calibration files (the
        competition's files have none); the readers verify them.
    trace_hot_pixels : AIRS pixels per planet in the trace core (the two rows nearest the trace
        centre of the target columns) made hot, dark log-uniform in `TRACE_HOT_RANGE` (1-10 e/s, as
        the real file's trace core); drawn from a random stream of their own, so every other draw,
        and a folder simulated with 0 (the default), is unchanged. Visit 1 keeps them (its dark is
        the redrawn dark of visit 0).
    parquet_layout : how the signal and calibration files are written: ``"pyarrow"`` (pyarrow's writer
        defaults, the default), ``"polars"`` (the competition's: zstd, PLAIN, one page per column chunk,
        page index) or ``"zstd-dictionary"`` (the same with dictionary encoding); see
        :mod:`arielstream.simulate.layouts`. The values are the same in every layout.
    """
    _check_arguments(n_planets, seed, split, two_visit_fraction, background_fraction, row_group_frames,
                     cosmic_rate, compression, trace_hot_pixels, parquet_layout)
    writer_options(parquet_layout, compression, page_checksums)  # refused before anything is written
    n_bins, airs_frames, fgs1_frames = frame_counts(scale)
    n_planets, seed = int(n_planets), int(seed)
    row_group_frames = None if row_group_frames is None else int(row_group_frames)

    out = Path(out_dir)
    manifest_path = out / "simulation_truth" / "manifest.json"
    _other_split_runs(manifest_path, split, float(scale))
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulation_truth").mkdir(exist_ok=True)
    log.info("simulating %d %s planet(s) into %s: scale %g (%d bins, %d AIRS / %d FGS1 frames), seed %d",
             n_planets, split, out, scale, n_bins, airs_frames, fgs1_frames, seed)

    planets: list[Planet] = []
    taken: set[int] = set()
    for index in range(n_planets):
        p = _draw_planet(seed, split, index, taken, two_visit_fraction=two_visit_fraction,
                         background_fraction=background_fraction, force_two_visits=(index == 1))
        taken.add(p.planet_id)
        planets.append(p)

    _refuse_foreign_planets(out / split, taken, split)

    _write_metadata(out, n_bins)
    _write_csv(out / f"{split}_star_info.csv", ["planet_id", *STAR_COLUMNS],
               [[p.planet_id, *(p.star[c] for c in STAR_COLUMNS)] for p in planets])
    if split == "train":
        _write_csv(out / "train.csv", ["planet_id", *(f"wl_{i}" for i in range(1, N_TARGETS + 1))],
                   [[p.planet_id, *p.depth_target] for p in planets])

    axis = _axis_times(n_bins)
    planet_entries = []
    for p in planets:
        t_start = time.perf_counter()
        dets = {inst.name: _draw_detector(inst, _rng(seed, split, p.index, 0, inst.name, _P_DETECTOR))
                for inst in (AIRS, FGS1)}
        if trace_hot_pixels:
            dets[AIRS.name] = _add_trace_hot_pixels(dets[AIRS.name], int(trace_hot_pixels),
                                                    _rng(seed, split, p.index, 0, AIRS.name, _P_TRACE_HOT))
        visits = []
        for v in range(p.n_visits):
            if v > 0:
                dets = {name: _next_visit_detector(d, _rng(seed, split, p.index, v, name, _P_DARK))
                        for name, d in dets.items()}
            visits.append(_simulate_visit(out, split, seed, p, v, dets, axis, cosmic_rate=cosmic_rate,
                                          row_group_frames=row_group_frames, compression=compression,
                                          page_checksums=page_checksums, parquet_layout=parquet_layout))
        planet_entries.append({**p.manifest(), "visits": visits})
        log.info("planet %d (%d/%d): %d visit(s) in %.1f s", p.planet_id, p.index + 1, n_planets,
                 p.n_visits, time.perf_counter() - t_start)

    common = {"arielstream_version": __version__, "scale": float(scale), "n_bins": n_bins,
              "airs_frames": airs_frames, "fgs1_frames": fgs1_frames,
              "adc_gain": ADC_GAIN, "adc_offset": ADC_OFFSET}
    run = {"seed": seed, "n_planets": n_planets, "two_visit_fraction": two_visit_fraction,
           "row_group_frames": row_group_frames, "cosmic_rate": cosmic_rate,
           "background_fraction": background_fraction, "compression": compression,
           "planets": planet_entries}
    if trace_hot_pixels:  # absent when 0: the manifests of folders simulated without stay as they were
        run["trace_hot_pixels"] = int(trace_hot_pixels)
    if parquet_layout != DEFAULT_LAYOUT:  # absent for the default, likewise
        run["parquet_layout"] = parquet_layout
    splits = {**_other_split_runs(manifest_path, split, float(scale)), split: run}
    _write_json(manifest_path, {**common, "split": split, "seed": seed, "planets": planet_entries,
                                "splits": dict(sorted(splits.items()))})
    return [(p.planet_id, p.n_visits) for p in planets]
