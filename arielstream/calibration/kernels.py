"""Fused fast paths for one block of raw frames, with their plain-numpy twin.

A block is ``(pixels, frames)`` uint16, frames starting on an even (start-of-
exposure) frame and spanning whole time bins. :func:`calibrate_block` computes the
binned, calibrated block in as few passes as the recipe allows;
:func:`calibrate_block_reference` composes the readable steps of
:mod:`arielstream.calibration.steps` in the notebook's order. ``tests/test_kernels.py`` holds
the two equal.

What the fast path uses (all exact rearrangements of the recipe):

* ADC, dark and flat are affine per pixel, so after CDS the ADC offset cancels and
  the dark term becomes ``dark * sum(dt_end - dt_start)`` per bin; dark and flat
  are applied to the binned block, 30-360 times fewer values.
* Without non-linearity, CDS and binning are integer sums of raw counts (exact);
  the gain is applied once per bin.
* With non-linearity, the ADC is folded into the polynomial's coefficients (per
  pixel, once per block) and one numexpr expression evaluates the Horner
  polynomial on both reads of a pair and their difference, in cache-sized blocks.
* Where the process's engine is numba (:mod:`arielstream.calibration.engine`),
  :mod:`arielstream.calibration.compiled` does the CDS paths in one pass over the raw
  block instead (same maths, no intermediate arrays).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numexpr as ne
import numpy as np
import numpy.typing as npt

from .. import layout
from . import compiled, engine, steps


@dataclass(frozen=True)
class BlockCalibration:
    """The calibration of one block of pixels: every array is indexed by block pixel."""

    gain: float | None  # None: the ADC step is off (raw counts are used as they are)
    offset: float
    coeffs: np.ndarray | None  # (6, P) non-linearity, None when off
    dark: np.ndarray | None  # (P,) e/s, None when off
    flat: np.ndarray | None  # (P,), None when off
    cds: bool
    width: int  # samples per time bin (1: no binning)
    outliers: dict | None = None  # temporal outlier rejection on the CDS series (steps.reject_temporal_outliers)
    clip: tuple[float, np.ndarray] | None = None  # (sigma, floor variance (P,)): steps.reject_bin_maxima per bin

    @property
    def frames_per_bin(self) -> int:
        """Raw frames per time bin: ``width`` samples of :data:`~arielstream.layout.FRAMES_PER_CDS` frames with CDS."""
        return self.width * (layout.FRAMES_PER_CDS if self.cds else 1)


def fold_adc(coeffs: np.ndarray, gain: float | None, offset: float) -> np.ndarray:
    """Coefficients ``q`` of the polynomial in raw counts equal to ``P(raw / gain + offset)``.

    ``q_k = gain^-k * sum_{j>=k} c_j * C(j, k) * offset^(j-k)`` (float64): evaluating
    ``Q(raw)`` by Horner saves the two ADC operations per read. ``gain=None``: no ADC.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    if gain is None:
        return c.copy()
    q = np.zeros_like(c)
    for k in range(c.shape[0]):
        for j in range(k, c.shape[0]):
            q[k] += c[j] * (math.comb(j, k) * float(offset) ** (j - k))
        q[k] *= (1.0 / gain) ** k
    return q


def _horner_expr(var: str, order: int, constant: bool) -> str:
    """``q_order*v^order + ... + q1*v (+ q0)`` as a Horner-form numexpr expression."""
    expr = f"q{order}"
    for k in range(order - 1, 0, -1):
        expr = f"({expr}*{var} + q{k})"
    expr = f"{expr}*{var}"
    return f"({expr} + q0)" if constant else expr


def _coefficient_env(q: np.ndarray) -> dict[str, np.ndarray]:
    """The numexpr variables ``q0..qN`` of the coefficients, each a ``(P, 1)`` column."""
    return {f"q{k}": np.ascontiguousarray(q[k])[:, np.newaxis] for k in range(q.shape[0])}


def nonlinear_cds(start: np.ndarray, end: np.ndarray, coeffs: np.ndarray, gain: float | None,
                  offset: float) -> np.ndarray:
    """``P(adc(end)) - P(adc(start))`` per pixel and pair, float64 (numexpr).

    ``start``/``end`` are ``(P, pairs)`` raw reads in any dtype numexpr reads (float32
    holds uint16 exactly; strided views of one array are fine); ``coeffs`` is
    ``(N+1, P)``. The ADC is folded into the coefficients and the constant term,
    which cancels in the difference, is left out: 2N operations per read.
    """
    q = fold_adc(coeffs, gain, offset)
    env = _coefficient_env(q)
    env.update(s=start, e=end)
    order = q.shape[0] - 1
    expr = f"{_horner_expr('e', order, False)} - {_horner_expr('s', order, False)}"
    return ne.evaluate(expr, local_dict=env, global_dict={})


# The table path of nonlinear_cds_raw: reads are integers, and a pixel's reads in a block span a
# narrow range (median ~45 values on real-shaped frames), so Q is evaluated once per value in
# that range and gathered, instead of twice per pair. A pixel whose range is more than half its
# reads (a cosmic ray in a short block) is evaluated directly, so the tables never hold more
# values than the block has pairs: the bytes of the float32 copy the direct path makes.
TABLE_SLAB_READS = 1 << 16  # reads gathered at a time (512 kB of int64 indices: in cache)
SLAB_SAMPLES = 1 << 18  # CDS samples per slab of pixels where the numpy twins take their bin statistics (2 MB)


def nonlinear_cds_raw(raw: np.ndarray, coeffs: np.ndarray, gain: float | None, offset: float) -> np.ndarray:
    """:func:`nonlinear_cds` of a raw ``(P, frames)`` block's pairs (start, end), ``(P, frames // 2)`` float64.

    Bit-identical to :func:`nonlinear_cds` on the block's start and end reads: the same
    numexpr Horner expression, on the same float64 values, evaluated once per integer
    value a pixel takes in the block (its table), then gathered for both reads of each
    pair and subtracted: ~30 against ~50-70 ms a real-shaped AIRS block of 1128 pixels
    x 11,250 frames on one core (BENCHMARKS.md). Pixels whose reads span more values
    than they have pairs use the direct expression.
    """
    n_pix, n_frames = raw.shape
    if n_frames % 2 or raw.dtype != np.uint16:
        raise ValueError(f"a raw uint16 block of whole pairs is needed, not {raw.dtype} {raw.shape}")
    out = np.empty((n_pix, n_frames // 2), dtype=np.float64)
    if raw.size == 0:
        return out
    low = raw.min(axis=1).astype(np.intp)
    span = raw.max(axis=1).astype(np.intp) - low + 1
    wide = span > n_frames // 2
    if wide.any():
        rows = np.flatnonzero(wide)
        reads = _as_float32(raw[rows])
        out[rows] = nonlinear_cds(reads[:, 0::2], reads[:, 1::2], coeffs[:, rows], gain, offset)
        span[rows] = 0
    rows = np.flatnonzero(~wide)
    if rows.size == 0:
        return out
    start = np.cumsum(span) - span  # where each pixel's table begins
    pixel_of = np.repeat(np.arange(n_pix), span)  # the pixel of each table entry
    q = fold_adc(coeffs, gain, offset)
    env = {f"q{k}": q[k][pixel_of] for k in range(q.shape[0])}
    env["x"] = (np.arange(pixel_of.size) - np.repeat(start - low, span)).astype(np.float64)  # the value itself
    table = ne.evaluate(_horner_expr("x", q.shape[0] - 1, False), local_dict=env, global_dict={})
    shift = (start - low)[:, np.newaxis]
    slab = max(1, TABLE_SLAB_READS // n_frames)
    index = np.empty((min(slab, rows.size), n_frames), dtype=np.intp)
    values = np.empty(index.shape, dtype=np.float64)
    contiguous = rows.size == n_pix
    for lo in range(0, rows.size, slab):
        hi = min(lo + slab, rows.size)
        these = slice(lo, hi) if contiguous else rows[lo:hi]
        idx, val = index[: hi - lo], values[: hi - lo]
        np.add(raw[these], shift[these], out=idx, casting="unsafe")
        np.take(table, idx, out=val)
        if contiguous:
            np.subtract(val[:, 1::2], val[:, 0::2], out=out[these])
        else:
            out[these] = val[:, 1::2] - val[:, 0::2]
    return out


def nonlinear_cds_reference(start: np.ndarray, end: np.ndarray, coeffs: np.ndarray, gain: float | None,
                            offset: float) -> np.ndarray:
    """Numpy twin of :func:`nonlinear_cds`: ADC, then the polynomial, then the difference."""
    def convert(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) if gain is None else steps.adc_convert(x, gain, offset)

    return steps.correct_nonlinearity(convert(end), coeffs) - steps.correct_nonlinearity(convert(start), coeffs)


def nonlinear_reads(x: np.ndarray, coeffs: np.ndarray, gain: float | None, offset: float) -> np.ndarray:
    """``P(adc(x))`` per pixel and frame, float64 (numexpr), for runs without CDS."""
    q = fold_adc(coeffs, gain, offset)
    env = _coefficient_env(q)
    env.update(x=x)
    return ne.evaluate(_horner_expr("x", q.shape[0] - 1, True), local_dict=env, global_dict={})


def _as_float32(a: np.ndarray) -> np.ndarray:
    """A float32 copy of ``a`` (uint16 raw counts are exact in float32)."""
    out = np.empty(a.shape, dtype=np.float32)
    np.copyto(out, a, casting="unsafe")
    return out


def _bin_sum(x: np.ndarray, width: int, dtype: npt.DTypeLike | None = None) -> np.ndarray:
    """Sums of consecutive groups of ``width`` along the last axis of ``(P, n)``; the incomplete tail dropped."""
    nbins = x.shape[-1] // width
    return x[:, : nbins * width].reshape(x.shape[0], nbins, width).sum(axis=-1, dtype=dtype)


def _dark_dt(dt: np.ndarray | None) -> np.ndarray:
    """``dt``, which the dark step cannot do without."""
    if dt is None:
        raise ValueError("the dark step needs the per-frame exposure times (dt)")
    return dt


def bin_dt(dt: np.ndarray, cal: BlockCalibration) -> np.ndarray:
    """The exposure time that the dark term carries into each bin."""
    samples = steps.correlated_double_sampling(dt) if cal.cds else np.asarray(dt, np.float64)
    return steps.bin_time(samples, cal.width)


def _compiled_polynomial(coeffs: np.ndarray) -> bool:
    """True when the compiled non-linear kernels apply: numba engine and a quintic."""
    return engine.current().compiled and coeffs.shape[0] - 1 == compiled.POLYNOMIAL_ORDER


def _check_whole_bins(raw: np.ndarray, frames_per_bin: int) -> None:
    """A ``(P, frames)`` block must span whole bins: ``ValueError`` otherwise."""
    if raw.ndim != 2 or raw.shape[1] % frames_per_bin:
        raise ValueError(f"block of shape {raw.shape} does not span whole bins of {frames_per_bin} frames")


def calibrate_block(raw: np.ndarray, dt: np.ndarray | None, cal: BlockCalibration) -> np.ndarray:
    """Calibrate and bin a ``(P, frames)`` uint16 block; returns ``(P, bins)`` float64.

    ``frames`` must be a multiple of ``cal.frames_per_bin``; ``dt`` holds the
    per-frame exposure times used by the dark step (ignored when it is off).
    """
    _check_whole_bins(raw, cal.frames_per_bin)
    if cal.cds:
        if cal.coeffs is None:
            if engine.current().compiled:
                counts = compiled.cds_count_bins(raw, cal.width)
            else:
                counts = _bin_sum(np.subtract(raw[:, 1::2], raw[:, 0::2], dtype=np.int32), cal.width, dtype=np.int64)
            binned = counts.astype(np.float64)
            if cal.gain is not None:
                binned /= cal.gain
        elif _compiled_polynomial(cal.coeffs):
            binned = compiled.cds_polynomial_bins(raw, fold_adc(cal.coeffs, cal.gain, cal.offset), cal.width)
        else:
            binned = _bin_sum(nonlinear_cds_raw(raw, cal.coeffs, cal.gain, cal.offset), cal.width)
    else:
        if cal.coeffs is None:
            binned = _bin_sum(raw, cal.width, dtype=np.int64).astype(np.float64)
            if cal.gain is not None:
                binned = binned / cal.gain + cal.offset * cal.width
        else:
            binned = _bin_sum(nonlinear_reads(_as_float32(raw), cal.coeffs, cal.gain, cal.offset), cal.width)
    return _dark_and_flat(binned, dt, cal)


def _dark_and_flat(binned: np.ndarray, dt: np.ndarray | None, cal: BlockCalibration) -> np.ndarray:
    """Dark (on the binned exposure times) and flat applied to a binned block, in place."""
    if cal.dark is not None:
        binned -= np.asarray(cal.dark, np.float64)[:, np.newaxis] * bin_dt(_dark_dt(dt), cal)
    if cal.flat is not None:
        binned /= np.asarray(cal.flat, np.float64)[:, np.newaxis]
    return binned


def cds_samples(raw: np.ndarray, cal: BlockCalibration) -> np.ndarray:
    """The ``(P, pairs)`` CDS series, ADC and non-linearity applied, before dark and binning (float64)."""
    if cal.coeffs is None:
        samples = np.subtract(raw[:, 1::2], raw[:, 0::2], dtype=np.float64)
        return samples if cal.gain is None else samples / cal.gain
    if _compiled_polynomial(cal.coeffs):  # one pass over the raw block, no float32 copy
        return compiled.cds_polynomial_samples(raw, fold_adc(cal.coeffs, cal.gain, cal.offset))
    return nonlinear_cds_raw(raw, cal.coeffs, cal.gain, cal.offset)


def calibrate_block_with_outliers(raw: np.ndarray, dt: np.ndarray | None,
                                  cal: BlockCalibration) -> tuple[np.ndarray, np.ndarray]:
    """:func:`calibrate_block` with temporal outliers rejected from each pixel's CDS series.

    The block must hold each pixel's whole series (the planner arranges it), so the
    statistics see the whole visit and no halo is needed. Returns the binned block
    and the number of rejected samples per pixel and bin (uint8, saturating).
    """
    if not cal.cds:
        raise ValueError("temporal outlier rejection works on the CDS series")
    if cal.outliers is None:
        raise ValueError("no temporal outlier rejection configured (BlockCalibration.outliers is None)")
    reject = compiled.reject_temporal_outliers if engine.current().compiled else steps.reject_temporal_outliers
    binned, flagged = reject(cds_samples(raw, cal), cal.width, **cal.outliers)
    counts = flagged.reshape(flagged.shape[0], -1, cal.width).sum(axis=-1)
    return _dark_and_flat(binned, dt, cal), np.minimum(counts, 255).astype(np.uint8)


def calibrate_block_clipped(raw: np.ndarray, dt: np.ndarray | None,
                            cal: BlockCalibration) -> tuple[np.ndarray, np.ndarray]:
    """:func:`calibrate_block` with each bin's largest CDS sample rejected when it stands out (cosmic rays).

    Needs whole bins only (no whole series: it streams like :func:`calibrate_block`).
    With numba and the quintic non-linearity, one pass over the raw block
    (:func:`arielstream.calibration.compiled.cds_polynomial_bins_clipped`); otherwise the
    CDS series (:func:`cds_samples`), then :func:`arielstream.calibration.steps.reject_bin_maxima`
    (or its compiled twin). Returns the binned block and the rejected samples per
    pixel and bin (uint8: 0 or 1).
    """
    if not cal.cds:
        raise ValueError("cosmic-ray rejection works on the CDS series")
    _check_whole_bins(raw, cal.frames_per_bin)
    if cal.clip is None:
        raise ValueError("no per-bin cosmic-ray rejection configured (BlockCalibration.clip is None)")
    sigma, floor = cal.clip
    if cal.coeffs is not None and _compiled_polynomial(cal.coeffs):
        binned, flagged = compiled.cds_polynomial_bins_clipped(raw, fold_adc(cal.coeffs, cal.gain, cal.offset),
                                                               cal.width, sigma, floor)
    elif engine.current().compiled:
        binned, flagged = compiled.reject_bin_maxima(cds_samples(raw, cal), cal.width, sigma, floor)
    else:  # slabs of pixels whose CDS series stays in cache for the bin statistics: 26 -> 10 ms per AIRS block
        rows = max(1, SLAB_SAMPLES // max(1, raw.shape[1] // 2))
        parts = []
        for lo in range(0, raw.shape[0], rows):
            these = slice(lo, lo + rows)
            slab = dataclasses.replace(cal, coeffs=None if cal.coeffs is None else cal.coeffs[:, these])
            parts.append(steps.reject_bin_maxima(cds_samples(raw[these], slab), cal.width, sigma, floor[these]))
        binned = np.concatenate([b for b, _ in parts]) if parts else np.zeros((0, raw.shape[1] // cal.frames_per_bin))
        flagged = np.concatenate([f for _, f in parts]) if parts else np.zeros(binned.shape, dtype=bool)
    return _dark_and_flat(binned, dt, cal), flagged.astype(np.uint8)


def saturation_counts(raw: np.ndarray, level: int, frames_per_bin: int) -> np.ndarray | None:
    """Saturated reads per pixel and bin of a raw block (:func:`arielstream.calibration.steps.saturated_reads`).

    ``None`` when no read of the block reaches ``level`` (or ``level`` is 0: detection
    off): one max-reduction of the uint16 block, the whole cost on the usual path.
    Otherwise the ``(P, bins)`` counts, one pass of the compiled kernel where the
    engine is numba, numpy's comparison and bin sums otherwise.
    """
    if level <= 0 or raw.size == 0 or int(raw.max()) < level:
        return None
    _check_whole_bins(raw, frames_per_bin)
    if engine.current().compiled:
        return compiled.saturated_bins(raw, level, frames_per_bin)
    return np.count_nonzero((raw >= level).reshape(raw.shape[0], -1, frames_per_bin), axis=-1).astype(np.int64)


def calibrate_block_reference(raw: np.ndarray, dt: np.ndarray | None, cal: BlockCalibration) -> np.ndarray:
    """The recipe step by step, in the notebook's order (numpy twin of :func:`calibrate_block`)."""
    x = np.asarray(raw, np.float64) if cal.gain is None else steps.adc_convert(raw, cal.gain, cal.offset)
    if cal.coeffs is not None:
        x = steps.correct_nonlinearity(x, cal.coeffs)
    if cal.dark is not None:
        x = steps.subtract_dark(x, cal.dark, _dark_dt(dt))
    if cal.cds:
        x = steps.correlated_double_sampling(x)
    x = steps.bin_time(x, cal.width)
    if cal.flat is not None:
        x = steps.flat_field(x, cal.flat)
    return x
