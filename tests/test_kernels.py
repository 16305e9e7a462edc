"""Fast path == reference: every numexpr kernel against its plain-numpy twin."""

from __future__ import annotations

import dataclasses
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


def test_nonlinear_cds_from_tables_is_bit_identical_to_the_expression(monkeypatch):
    """The table path (Q once per value a pixel takes) gives the very bits of the direct expression.

    A pixel whose reads span more values than it has pairs (here a saturated read) is
    evaluated directly, alone; a block of such pixels entirely.
    """
    rng = np.random.default_rng(15)
    coeffs = _coeffs(rng, 23)
    narrow = (rng.integers(0, 40, size=(23, 300)) + rng.integers(400, 30000, size=(23, 1))).astype(np.uint16)
    narrow[:, 1::2] += rng.integers(0, 60, size=(23, 1)).astype(np.uint16)  # the end reads hold signal
    hit = narrow.copy()
    hit[3, 77] = 65535
    wide = _raw(rng, 23, 300)  # start and end reads thousands apart
    direct = kernels.nonlinear_cds
    monkeypatch.setattr(kernels, "TABLE_SLAB_READS", 1000)  # several slabs of pixels
    calls: list[int] = []  # rows evaluated directly
    monkeypatch.setattr(kernels, "nonlinear_cds", lambda *a: calls.append(a[0].shape[0]) or direct(*a))
    for raw, rows_direct in ((narrow, 0), (hit, 1), (wide, 23)):
        expected = direct(raw[:, 0::2].astype(np.float32), raw[:, 1::2].astype(np.float32), coeffs, 0.4369, -1000.0)
        calls.clear()
        np.testing.assert_array_equal(kernels.nonlinear_cds_raw(raw, coeffs, 0.4369, -1000.0), expected)
        assert sum(calls) == rows_direct
    assert kernels.nonlinear_cds_raw(narrow[:, :0], coeffs, 0.4369, -1000.0).shape == (23, 0)
    with pytest.raises(ValueError, match="whole pairs"):
        kernels.nonlinear_cds_raw(narrow[:, :299], coeffs, 0.4369, -1000.0)


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


# -- cosmic rays, bin by bin (cr_method = "bin") --------------------------------------------------------------


def _hits(rng, pixels, frames, width, n_hits, size):
    """A raw block with ``n_hits`` hits of ``size`` counts added to the end read of random pairs; their places."""
    raw = _raw(rng, pixels, frames).astype(np.int64)
    pix = rng.choice(pixels, n_hits, replace=False)  # one hit per pixel: the bins are known
    pair = rng.integers(0, frames // 2, n_hits)
    raw[pix, 2 * pair + 1] += size
    return np.clip(raw, 0, 65535).astype(np.uint16), {(int(p), int(t) // width)
                                                      for p, t in zip(pix, pair, strict=True)}


def test_bin_rejection_finds_every_hit_and_leaves_a_clean_bin_alone(engine_name, monkeypatch):
    rng = np.random.default_rng(21)
    width, pixels, frames = 30, 400, 2 * 30 * 6
    raw, hits = _hits(rng, pixels, frames, width, 40, 2500)  # 5,700 e: > 5 sigma of photon + read noise
    coeffs = _coeffs(rng, pixels)
    floor = np.full(pixels, 2 * 13.0**2)
    cal = kernels.BlockCalibration(gain=0.4369, offset=-1000.0, coeffs=coeffs, dark=None, flat=None, cds=True,
                                   width=width, clip=(5.0, floor))
    binned, flagged = kernels.calibrate_block_clipped(raw, None, cal)
    monkeypatch.setattr(kernels, "SLAB_SAMPLES", 7 * frames // 2)  # numexpr: 58 slabs of 7 pixels, same bits
    in_slabs = kernels.calibrate_block_clipped(raw, None, cal)
    np.testing.assert_array_equal(in_slabs[0], binned)
    np.testing.assert_array_equal(in_slabs[1], flagged)
    assert {(int(p), int(b)) for p, b in zip(*np.nonzero(flagged), strict=True)} == hits  # every hit, nothing else
    clean = kernels.calibrate_block_reference(raw, None, dataclasses.replace(cal, clip=None))
    samples = kernels.nonlinear_cds_reference(raw[:, 0::2], raw[:, 1::2], coeffs, 0.4369, -1000.0)
    bins = samples.reshape(pixels, -1, width)
    for p, b in hits:  # a flagged bin: the others' mean in place of the hit
        others = np.delete(bins[p, b], np.argmax(bins[p, b]))
        assert binned[p, b] == pytest.approx(others.mean() * width, rel=1e-10)
    untouched = ~flagged.astype(bool)
    np.testing.assert_allclose(binned[untouched], clean[untouched], rtol=1e-10)


def test_bin_rejection_rarely_flags_clean_noise_and_does_not_clip_a_trend():
    rng = np.random.default_rng(3)
    width = 30
    noise = rng.normal(5000.0, 70.0, (2000, width * 20))  # 40,000 clean bins of Gaussian samples
    binned, flagged = kernels.steps.reject_bin_maxima(noise, width, 5.0, np.full(2000, 2 * 13.0**2))
    assert flagged.sum() <= 4  # 5 sigma over 30 samples: ~1e-5 per bin
    ramp = 5000.0 + np.linspace(0, 700.0, width)  # a steep change within a bin (10 sigma of the noise)
    trend = np.tile(ramp, (50, 1)) + rng.normal(0, 70.0, (50, width))
    assert not kernels.steps.reject_bin_maxima(trend, width, 5.0)[1].any()
    few = kernels.steps.reject_bin_maxima(noise[:, :40], 2, 5.0)  # bins of 2 samples: left alone
    assert not few[1].any() and np.allclose(few[0], noise[:, :40].reshape(2000, 20, 2).sum(-1))


@pytest.mark.skipif(compiled.numba is None, reason="numba not installed")
def test_compiled_bin_rejection_matches_the_reference():
    rng = np.random.default_rng(9)
    raw, _ = _hits(rng, 60, 2 * 12 * 8, 12, 20, 2500)
    coeffs = _coeffs(rng, 60)
    q = kernels.fold_adc(coeffs, 0.4369, -1000.0)
    floor = rng.uniform(100, 400, 60)
    samples = kernels.nonlinear_cds_reference(raw[:, 0::2], raw[:, 1::2], coeffs, 0.4369, -1000.0)
    ref, ref_flags = kernels.steps.reject_bin_maxima(samples, 12, 5.0, floor)
    fused, fused_flags = compiled.cds_polynomial_bins_clipped(raw, q, 12, 5.0, floor)
    reduced, reduced_flags = compiled.reject_bin_maxima(samples, 12, 5.0, floor)
    assert ref_flags.sum() == 20
    for values, flags in ((fused, fused_flags), (reduced, reduced_flags)):
        np.testing.assert_array_equal(flags, ref_flags)
        np.testing.assert_allclose(values, ref, rtol=1e-12)


def test_bin_rejection_needs_its_options():
    cal = kernels.BlockCalibration(gain=0.4369, offset=-1000.0, coeffs=None, dark=None, flat=None, cds=True,
                                   width=3)
    with pytest.raises(ValueError, match="clip is None"):
        kernels.calibrate_block_clipped(np.zeros((2, 6), np.uint16), None, cal)
