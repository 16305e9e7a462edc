"""Units: each calibration step on tiny arrays with answers worked out by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clip
from astropy.utils.exceptions import AstropyUserWarning

from arielstream import dq
from arielstream.calibration import steps
from arielstream.io.calibration import read_frame_table

from .conftest import REFERENCE_PLANET


def test_adc_convert_is_raw_over_gain_plus_offset():
    raw = np.array([[0, 4369, 65535]], dtype=np.uint16)
    out = steps.adc_convert(raw, 0.4369, -1000.0)
    np.testing.assert_allclose(out, [[-1000.0, 9000.0, 65535 / 0.4369 - 1000.0]], rtol=1e-15)
    assert out.dtype == np.float64


def test_nonlinearity_is_per_pixel_polynomial_lowest_order_first():
    x = np.array([[0.0, 1.0, 2.0], [10.0, -1.0, 3.0]])  # 2 pixels x 3 frames
    coeffs = np.zeros((6, 2))
    coeffs[:, 0] = [1, 2, 3, 0, 0, 0]  # 1 + 2x + 3x^2
    coeffs[:, 1] = [0, 1, 0, 0, 0, 1e-3]  # x + 1e-3 x^5
    out = steps.correct_nonlinearity(x, coeffs)
    expected = np.array([[1, 1 + 2 + 3, 1 + 4 + 12], [10 + 1e-3 * 1e5, -1 - 1e-3, 3 + 1e-3 * 243]])
    np.testing.assert_allclose(out, expected, rtol=1e-14)


def test_nonlinearity_matches_numpy_polyval_on_random_planes():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1000, 40000, size=(4, 5, 7))
    coeffs = rng.normal(size=(6, 4, 5)) * np.array([0.1, 1, 1e-6, 1e-11, 1e-16, 1e-21])[:, None, None]
    out = steps.correct_nonlinearity(x, coeffs)
    for i in range(4):
        for j in range(5):
            np.testing.assert_allclose(out[i, j], np.polyval(coeffs[::-1, i, j], x[i, j]), rtol=1e-12)


def test_dark_is_subtracted_times_each_frame_dt():
    x = np.full((2, 4), 100.0)
    out = steps.subtract_dark(x, np.array([1.0, 10.0]), np.array([0.1, 4.6, 0.1, 4.6]))
    np.testing.assert_allclose(out, [[99.9, 95.4, 99.9, 95.4], [99.0, 54.0, 99.0, 54.0]])


def test_cds_is_end_minus_start_and_drops_an_unpaired_frame():
    x = np.array([[1.0, 5.0, 2.0, 9.0, 7.0]])
    np.testing.assert_array_equal(steps.correlated_double_sampling(x), [[4.0, 7.0]])


def test_binning_sums_whole_groups_and_drops_the_tail():
    x = np.arange(7.0)[None, :]
    np.testing.assert_array_equal(steps.bin_time(x, 3), [[0 + 1 + 2, 3 + 4 + 5]])


def test_flat_divides_per_pixel():
    np.testing.assert_allclose(steps.flat_field(np.full((2, 2), 6.0), np.array([2.0, 3.0])), [[3, 3], [2, 2]])


def test_frame_dt_follows_the_notebook_rules():
    airs = steps.frame_dt("AIRS-CH0", 4, np.array([0.1, 4.5, 0.1, 4.5]))
    np.testing.assert_allclose(airs, [0.1, 4.6, 0.1, 4.6])
    np.testing.assert_allclose(steps.frame_dt("FGS1", 4), [0.1, 0.2, 0.1, 0.2])
    with pytest.raises(ValueError, match="integration_time"):
        steps.frame_dt("AIRS-CH0", 4)


def test_steps_do_not_modify_their_inputs():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 8))
    keep = x.copy()
    coeffs = rng.normal(size=(6, 3))
    steps.correct_nonlinearity(x, coeffs)
    steps.subtract_dark(x, np.ones(3), np.ones(8))
    steps.correlated_double_sampling(x)
    steps.bin_time(x, 2)
    steps.flat_field(x, np.ones(3))
    steps.apply_quality(x, np.array([1, 0, 0], dtype=np.uint16))
    np.testing.assert_array_equal(x, keep)


def test_sigma_clip_matches_astropy_on_synthetic_outliers():
    """NaN masked before the call: the notebook's own mask of the raw frame, and no warning (pytest's are errors)."""
    rng = np.random.default_rng(3)
    for trial in range(20):
        data = rng.normal(0.0065, 0.002, size=(32, 40))
        idx = rng.choice(data.size, size=trial + 1, replace=False)
        data.flat[idx] = rng.uniform(-1, 12, size=idx.size)
        if trial % 3 == 0:
            data.flat[idx[0]] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)  # astropy warns that it masks the NaN
            expected = sigma_clip(data, sigma=5, maxiters=5).mask
        np.testing.assert_array_equal(steps.sigma_clip_mask(data, 5, 5), expected)


def test_sigma_clip_iterates_until_nothing_more_is_clipped():
    """Each pass clips with the values the last one kept, until a pass clips nothing.

    ±1 (50 each), 8 and 1e4. Pass 1: median 1, std ~985: only 1e4 goes. Pass 2: median 1, std
    sqrt(164/101 - (8/101)²) = 1.27, bounds 1 ± 6.4: 8 goes. Pass 3: median 0, std 1: nothing.
    """
    data = np.concatenate([np.tile([-1.0, 1.0], 50), [8.0, 1e4, np.nan]])
    outliers = np.zeros(data.size, dtype=bool)
    outliers[[100, 101, 102]] = True
    np.testing.assert_array_equal(steps.sigma_clip_mask(data, 5, 5), outliers)
    outliers[100] = False  # one pass: 8 stays inside median ± 5 std
    np.testing.assert_array_equal(steps.sigma_clip_mask(data, 5, 1), outliers)
    assert steps.sigma_clip_mask(np.full((2, 2), np.nan)).all()


@pytest.mark.parametrize("instrument,cols,hot,dead", [("AIRS-CH0", 356, 82, 12), ("FGS1", 32, 11, 3)])
def test_hot_and_dead_pixels_on_the_real_calibration(instrument, cols, hot, dead):
    folder = REFERENCE_PLANET / f"{instrument}_calibration_0"
    dark = read_frame_table(folder / "dark.parquet", 32, cols, "float")
    dead_map = read_frame_table(folder / "dead.parquet", 32, cols, "bool")
    np.testing.assert_array_equal(steps.sigma_clip_mask(dark, 5, 5), sigma_clip(dark, sigma=5, maxiters=5).mask)
    plane = steps.pixel_quality(dark, dead_map)
    assert int(((plane & dq.HOT) != 0).sum()) == hot  # the counts the reference README measured
    assert int(((plane & dq.DEAD) != 0).sum()) == dead


def test_pixel_quality_sets_each_bit():
    dark = np.zeros((3, 3)) + np.linspace(0, 1e-3, 9).reshape(3, 3)
    dark[0, 0] = 50.0
    dark[2, 2] = np.nan
    dead = np.zeros((3, 3), bool)
    dead[1, 1] = True
    flat = np.ones((3, 3))
    flat[0, 2] = -0.05
    coeffs = np.zeros((6, 3, 3))
    coeffs[1] = 1
    coeffs[3, 2, 0] = np.inf
    plane = steps.pixel_quality(dark, dead, flat, coeffs, sigma=2, maxiters=5)
    assert plane[0, 0] & dq.HOT
    assert plane[1, 1] & dq.DEAD
    assert plane[0, 2] == dq.FLAT_INVALID
    assert plane[2, 0] == dq.NONLINEARITY_INVALID
    assert plane[2, 2] & dq.DARK_INVALID and not plane[2, 2] & dq.HOT
    assert plane[0, 1] == 0


def test_apply_quality_fills_only_do_not_use_pixels():
    x = np.ones((3, 2), dtype=np.float32)
    out = steps.apply_quality(x, np.array([dq.DEAD, 0, dq.FLAT_INVALID], dtype=np.uint16))
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all() and (out[1] == 1).all()
