"""Fused fast paths for one block of raw frames, with their plain-numpy twin.

A block is ``(pixels, frames)`` uint16, frames starting on an even (start-of-
exposure) frame and spanning whole time bins. :func:`calibrate_block` computes the
binned, calibrated block in as few passes as the recipe allows;
:func:`calibrate_block_reference` composes the readable steps of
:mod:`arielstream.steps` in the notebook's order. ``tests/test_kernels.py`` holds
the two equal.

What the fast path uses (all exact rearrangements of the recipe):

* ADC, dark and flat are affine per pixel, so after CDS the ADC offset cancels and
  the dark term becomes ``dark * sum(dt_end - dt_start)`` per bin; dark and flat
  are applied to the binned block, 30-360 times fewer values.
* Without non-linearity, CDS and binning are integer sums of raw counts (exact);
  the gain is applied once per bin.
* With non-linearity, one numexpr expression evaluates ADC + Horner polynomial on
  both reads of a pair and their difference, in cache-sized blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numexpr as ne
import numpy as np

from . import steps


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

    @property
    def frames_per_bin(self) -> int:
        return self.width * (2 if self.cds else 1)


def _horner_expr(var: str, order: int) -> str:
    expr = f"c{order}"
    for k in range(order - 1, -1, -1):
        expr = f"({expr}*{var} + c{k})"
    return expr


def _coefficient_env(coeffs: np.ndarray) -> dict[str, np.ndarray]:
    c = np.asarray(coeffs, dtype=np.float64)
    return {f"c{k}": np.ascontiguousarray(c[k])[:, np.newaxis] for k in range(c.shape[0])}


def nonlinear_cds(start: np.ndarray, end: np.ndarray, coeffs: np.ndarray, gain: float | None,
                  offset: float) -> np.ndarray:
    """``P(adc(end)) - P(adc(start))`` per pixel and pair (numexpr).

    ``start``/``end`` are ``(P, pairs)`` reads (any real dtype numexpr reads:
    float32 holds uint16 exactly); ``coeffs`` is ``(N+1, P)``.
    """
    order = coeffs.shape[0] - 1
    env = _coefficient_env(coeffs)
    scale = 1.0 if gain is None else 1.0 / gain
    shift = 0.0 if gain is None else float(offset)
    env.update(s=start, e=end, g=np.float64(scale), o=np.float64(shift))
    xs, xe = "(s*g + o)", "(e*g + o)"
    expr = f"{_horner_expr(xe, order)} - {_horner_expr(xs, order)}"
    return ne.evaluate(expr, local_dict=env, global_dict={})


def nonlinear_cds_reference(start: np.ndarray, end: np.ndarray, coeffs: np.ndarray, gain: float | None,
                            offset: float) -> np.ndarray:
    """Numpy twin of :func:`nonlinear_cds`."""
    def convert(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) if gain is None else steps.adc_convert(x, gain, offset)

    return steps.correct_nonlinearity(convert(end), coeffs) - steps.correct_nonlinearity(convert(start), coeffs)


def nonlinear_reads(x: np.ndarray, coeffs: np.ndarray, gain: float | None, offset: float) -> np.ndarray:
    """``P(adc(x))`` per pixel and frame (numexpr), for runs without CDS."""
    order = coeffs.shape[0] - 1
    env = _coefficient_env(coeffs)
    scale = 1.0 if gain is None else 1.0 / gain
    shift = 0.0 if gain is None else float(offset)
    env.update(x=x, g=np.float64(scale), o=np.float64(shift))
    return ne.evaluate(_horner_expr("(x*g + o)", order), local_dict=env, global_dict={})


def _as_float32(a: np.ndarray) -> np.ndarray:
    out = np.empty(a.shape, dtype=np.float32)
    np.copyto(out, a, casting="unsafe")
    return out


def _bin_sum(x: np.ndarray, width: int, dtype=None) -> np.ndarray:
    nbins = x.shape[-1] // width
    return x[:, : nbins * width].reshape(x.shape[0], nbins, width).sum(axis=-1, dtype=dtype)


def bin_dt(dt: np.ndarray, cal: BlockCalibration) -> np.ndarray:
    """The exposure time that the dark term carries into each bin."""
    samples = steps.correlated_double_sampling(dt) if cal.cds else np.asarray(dt, np.float64)
    return steps.bin_time(samples, cal.width)


def calibrate_block(raw: np.ndarray, dt: np.ndarray | None, cal: BlockCalibration) -> np.ndarray:
    """Calibrate and bin a ``(P, frames)`` uint16 block; returns ``(P, bins)`` float64.

    ``frames`` must be a multiple of ``cal.frames_per_bin``; ``dt`` holds the
    per-frame exposure times used by the dark step (ignored when it is off).
    """
    if raw.ndim != 2 or raw.shape[1] % cal.frames_per_bin:
        raise ValueError(f"block of shape {raw.shape} does not span whole bins of {cal.frames_per_bin} frames")
    if cal.cds:
        start, end = raw[:, 0::2], raw[:, 1::2]
        if cal.coeffs is None:
            diff = np.subtract(end, start, dtype=np.int32)
            binned = _bin_sum(diff, cal.width, dtype=np.int64).astype(np.float64)
            if cal.gain is not None:
                binned /= cal.gain
        else:
            samples = nonlinear_cds(_as_float32(start), _as_float32(end), cal.coeffs, cal.gain, cal.offset)
            binned = _bin_sum(samples, cal.width)
    else:
        if cal.coeffs is None:
            binned = _bin_sum(raw, cal.width, dtype=np.int64).astype(np.float64)
            if cal.gain is not None:
                binned = binned / cal.gain + cal.offset * cal.width
        else:
            binned = _bin_sum(nonlinear_reads(_as_float32(raw), cal.coeffs, cal.gain, cal.offset), cal.width)
    if cal.dark is not None:
        binned -= np.asarray(cal.dark, np.float64)[:, np.newaxis] * bin_dt(dt, cal)
    if cal.flat is not None:
        binned /= np.asarray(cal.flat, np.float64)[:, np.newaxis]
    return binned


def calibrate_block_reference(raw: np.ndarray, dt: np.ndarray | None, cal: BlockCalibration) -> np.ndarray:
    """The recipe step by step, in the notebook's order (numpy twin of :func:`calibrate_block`)."""
    x = np.asarray(raw, np.float64) if cal.gain is None else steps.adc_convert(raw, cal.gain, cal.offset)
    if cal.coeffs is not None:
        x = steps.correct_nonlinearity(x, cal.coeffs)
    if cal.dark is not None:
        x = steps.subtract_dark(x, cal.dark, dt)
    if cal.cds:
        x = steps.correlated_double_sampling(x)
    x = steps.bin_time(x, cal.width)
    if cal.flat is not None:
        x = steps.flat_field(x, cal.flat)
    return x
