"""Fast path == reference: every numexpr kernel against its plain-numpy twin."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from arielstream.calibration import compiled, engine, kernels


def _coeffs(rng, n):
    beta = rng.uniform(5e-7, 2e-6, n)
    return np.stack([rng.normal(0.14, 0.15, n), 1 + rng.normal(0, 3e-3, n), beta, 2 * beta**2, 5 * beta**3,
                     14 * beta**4])


def _raw(rng, pixels, frames):
    level = rng.uniform(2000, 20000, size=(pixels, 1))
    raw = np.empty((pixels, frames))
    raw[:, 0::2] = level * 0.02
    raw[:, 1::2] = level
    return np.clip(raw + rng.normal(0, 6, raw.shape) + 437, 0, 65535).astype(np.uint16)


def test_nonlinear_cds_matches_reference():
    rng = np.random.default_rng(5)
    raw = _raw(rng, 17, 40)
    coeffs = _coeffs(rng, 17)
    start, end = raw[:, 0::2].astype(np.float32), raw[:, 1::2].astype(np.float32)
    fast = kernels.nonlinear_cds(start, end, coeffs, 0.4369, -1000.0)
    ref = kernels.nonlinear_cds_reference(raw[:, 0::2], raw[:, 1::2], coeffs, 0.4369, -1000.0)
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-9 * np.abs(ref).max())


def test_folding_the_adc_into_the_polynomial_is_exact():
    rng = np.random.default_rng(4)
    coeffs = _coeffs(rng, 5)
    raw = rng.integers(0, 65535, size=(5, 50)).astype(np.float64)
    q = kernels.fold_adc(coeffs, 0.4369, -1000.0)
    folded = sum(q[k][:, None] * raw**k for k in range(6))
    direct = kernels.steps.correct_nonlinearity(raw / 0.4369 - 1000.0, coeffs)
    np.testing.assert_allclose(folded, direct, rtol=1e-12)
    np.testing.assert_array_equal(kernels.fold_adc(coeffs, None, -1000.0), coeffs)


@pytest.mark.skipif(compiled.numba is None, reason="numba not installed")
def test_compiled_cds_series_matches_numexpr_and_reference():
    rng = np.random.default_rng(8)
    raw = _raw(rng, 13, 48)
    coeffs = _coeffs(rng, 13)
    q = kernels.fold_adc(coeffs, 0.4369, -1000.0)
    fast = compiled.cds_polynomial_samples(raw, q)
    start, end = raw[:, 0::2].astype(np.float32), raw[:, 1::2].astype(np.float32)
    numexpr = kernels.nonlinear_cds(start, end, coeffs, 0.4369, -1000.0)
    ref = kernels.nonlinear_cds_reference(raw[:, 0::2], raw[:, 1::2], coeffs, 0.4369, -1000.0)
    assert fast.shape == (13, 24) and fast.dtype == np.float64
    np.testing.assert_allclose(fast, numexpr, rtol=1e-12, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-9 * np.abs(ref).max())
    # and the bin sums of the series are the binned kernel's
    np.testing.assert_allclose(fast.reshape(13, 4, 6).sum(axis=-1), compiled.cds_polynomial_bins(raw, q, 6),
                               rtol=1e-12)


def test_nonlinear_reads_matches_reference():
    rng = np.random.default_rng(6)
    raw = _raw(rng, 9, 12)
    coeffs = _coeffs(rng, 9)
    fast = kernels.nonlinear_reads(raw.astype(np.float32), coeffs, 0.4369, -1000.0)
    ref = kernels.steps.correct_nonlinearity(kernels.steps.adc_convert(raw, 0.4369, -1000.0), coeffs)
    np.testing.assert_allclose(fast, ref, rtol=1e-13)


SWITCHES = list(itertools.product([True, False], repeat=5))
ENGINES = ["numexpr"] + (["numba"] if compiled.numba is not None else [])


@pytest.fixture(params=ENGINES)
def engine_name(request, monkeypatch):
    """Each engine in turn (the process's choice is cached: cleared before and after)."""
    monkeypatch.setenv(engine.ENV, request.param)
    engine.current.cache_clear()
    assert engine.current().name == request.param
    yield request.param
    engine.current.cache_clear()


@pytest.mark.parametrize("adc,nonlin,dark,cds,flat", SWITCHES)
@pytest.mark.parametrize("width", [1, 3])
def test_calibrate_block_matches_the_step_by_step_recipe(engine_name, adc, nonlin, dark, cds, flat, width):
    rng = np.random.default_rng(7)
    pixels, frames = 11, 2 * width * 5
    raw = _raw(rng, pixels, frames)
    cal = kernels.BlockCalibration(
        gain=0.4369 if adc else None, offset=-1000.0,
        coeffs=_coeffs(rng, pixels) if nonlin else None,
        dark=rng.lognormal(np.log(0.0063), 0.3, pixels) if dark else None,
        flat=rng.normal(1, 0.015, pixels) if flat else None,
        cds=cds, width=width)
    dt = np.tile([0.1, 4.6], frames // 2)
    fast = kernels.calibrate_block(raw, dt, cal)
    ref = kernels.calibrate_block_reference(raw, dt, cal)
    assert fast.shape == ref.shape == (pixels, frames // cal.frames_per_bin)
    # the fast path reorders exact arithmetic (offset cancels, dark after binning): float64 rounding only
    np.testing.assert_allclose(fast, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


def test_calibrate_block_refuses_a_block_that_splits_a_bin():
    cal = kernels.BlockCalibration(gain=0.4369, offset=-1000.0, coeffs=None, dark=None, flat=None, cds=True,
                                   width=30)
    with pytest.raises(ValueError, match="whole bins of 60"):
        kernels.calibrate_block(np.zeros((2, 90), np.uint16), None, cal)


def test_the_dark_step_refuses_a_block_without_exposure_times():
    cal = kernels.BlockCalibration(gain=0.4369, offset=-1000.0, coeffs=None, dark=np.full(2, 0.01), flat=None,
                                   cds=True, width=1)
    raw = np.zeros((2, 4), np.uint16)
    for calibrate in (kernels.calibrate_block, kernels.calibrate_block_reference):
        with pytest.raises(ValueError, match="exposure times"):
            calibrate(raw, None, cal)


def test_outlier_rejection_needs_its_options():
    cal = kernels.BlockCalibration(gain=0.4369, offset=-1000.0, coeffs=None, dark=None, flat=None, cds=True,
                                   width=1)
    with pytest.raises(ValueError, match="outliers is None"):
        kernels.calibrate_block_with_outliers(np.zeros((2, 4), np.uint16), None, cal)


@pytest.mark.skipif(compiled.numba is None, reason="numba not installed")
def test_compiled_kernels_match_numexpr_and_reference():
    rng = np.random.default_rng(8)
    raw = _raw(rng, 13, 120)
    coeffs = _coeffs(rng, 13)
    q = kernels.fold_adc(coeffs, 0.4369, -1000.0)
    fast = compiled.cds_polynomial_bins(raw, q, 6)
    ref = kernels.steps.bin_time(kernels.nonlinear_cds_reference(raw[:, 0::2], raw[:, 1::2], coeffs, 0.4369,
                                                                 -1000.0), 6)
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    counts = compiled.cds_count_bins(raw, 6)
    np.testing.assert_array_equal(counts, kernels.steps.bin_time(raw[:, 1::2].astype(np.int64) - raw[:, 0::2], 6))


def test_integer_cds_path_is_exact(engine_name):
    """Without non-linearity the CDS and binning are integer sums: no rounding at all before the gain."""
    raw = np.array([[100, 65535, 0, 65535]], dtype=np.uint16)
    cal = kernels.BlockCalibration(gain=1.0, offset=-1000.0, coeffs=None, dark=None, flat=None, cds=True, width=2)
    assert kernels.calibrate_block(raw, None, cal)[0, 0] == (65535 - 100) + 65535


def test_the_engine_is_chosen_once_per_process(monkeypatch):
    monkeypatch.setenv(engine.ENV, "numexpr")
    engine.current.cache_clear()
    try:
        first = engine.current()
        assert first.name == "numexpr" and not first.compiled and str(first).startswith("numexpr ")
        monkeypatch.setenv(engine.ENV, "numba")  # too late: this process has chosen
        assert engine.current() is first
    finally:
        engine.current.cache_clear()


@pytest.mark.parametrize("value", ["auto", "numba", "", "turbo"])
def test_every_other_setting_uses_numba_when_it_is_installed(monkeypatch, value):
    monkeypatch.setenv(engine.ENV, value)
    engine.current.cache_clear()
    try:
        assert engine.current().name == ("numba" if compiled.numba is not None else "numexpr")
    finally:
        engine.current.cache_clear()
