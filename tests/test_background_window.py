"""AIRS background from the outer rows of a window of columns: the window, its exact variances, its bias."""

from __future__ import annotations

import numpy as np
import pytest

from arielstream.products import lightcurves as lc


def trace(n_x=40, n_y=32, centre=15.5, sigma=1.5, flux=2e4):
    """A Gaussian trace along x, the same in every column: ``(x, y)`` electrons per bin."""
    y = np.arange(n_y, dtype=np.float64)
    profile = np.exp(-0.5 * ((y - centre) / sigma) ** 2)
    return np.tile(flux * profile / profile.sum(), (n_x, 1))


# ---------------------------------------------------------------- the window matrix
def test_window_is_row_normalised_weighted_by_pixel_counts_and_centred():
    counts = np.array([4, 0, 2, 2, 6, 2, 2, 0, 0, 0])
    k = lc.window_weights(counts, reach=2)
    x = np.arange(counts.size)
    # interior column 4: columns 2..6 weighted by their counts 2, 2, 6, 2, 2 (the mean of their 14 pixels)
    np.testing.assert_allclose(k[4], np.where(np.abs(x - 4) <= 2, counts, 0) / 14)
    # column 1 (no pixels of its own): the window narrows to 0..2, pixels of columns 0 and 2
    np.testing.assert_allclose(k[1], [4 / 6, 0, 2 / 6, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(k[0], np.eye(10)[0])  # the first column: its own pixels only
    # column 8's window (7..9) holds no pixel: no correction; column 9 (last, its own only) neither
    assert not k[8].any() and not k[9].any()
    rows = k.sum(axis=1)
    np.testing.assert_allclose(rows[rows > 0], 1.0)
    assert (k[:, counts == 0] == 0).all()  # a column without background pixels contributes nothing
    assert (k[np.abs(x[:, None] - x[None, :]) > 2] == 0).all()  # banded


def test_a_zero_window_is_each_column_s_own_background():
    counts = np.array([3, 0, 5])
    np.testing.assert_array_equal(lc.window_weights(counts, reach=0), np.diag([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="background window"):
        lc.window_weights(counts, reach=-1)


def test_a_zero_window_is_the_per_column_subtraction():
    """``background_window=0``: each column less its aperture's rows times the mean of its own outer rows."""
    rng = np.random.default_rng(3)
    frame = trace(n_x=6)
    cube = frame + rng.normal(50.0, 20.0, (3, *frame.shape))  # a sky that differs from column to column
    usable = np.ones(frame.shape, bool)
    usable[2, 1] = False
    plan = lc.plan_airs(frame, usable, None, n_reads=2, half_width=5, background_window=0)
    flux, _ = lc.apply_weights(cube, plan)
    sky = np.r_[0:8, 24:32]  # |y - 15.5| >= 8
    expected = [cube[:, x, 11:21].sum(axis=1)
                - 10 * cube[:, x, sky][:, usable[x, sky]].mean(axis=1) for x in range(6)]
    np.testing.assert_allclose(flux, np.transpose(expected), rtol=1e-12)


def test_columns_whose_window_holds_no_background_pixel_are_counted():
    frame = trace(n_x=12)
    usable = np.ones(frame.shape, bool)
    sky_rows = np.abs(np.arange(32) - 15.5) >= 8
    usable[8:, sky_rows] = False  # columns 8-11 have no outer rows
    plan = lc.plan_airs(frame, usable, None, n_reads=2, half_width=5, background_window=2)
    # windows: 8 -> 6..10 and 9 -> 7..11 reach columns 6, 7; 10 -> 9..11 and 11 -> 11 hold none
    assert plan.extra["no_background_columns"] == 2
    assert plan.extra["background_window"] == 2
    np.testing.assert_array_equal(plan.extra["background_pixels"], [16] * 8 + [0] * 4)
    assert plan.sky_mix is not None and not plan.sky_mix[10:].any() and plan.sky_mix[9, 7] > 0


# ---------------------------------------------------------------- exact variances, per column and white
@pytest.mark.parametrize("weighted", [False, True])
def test_white_variance_is_the_scatter_of_the_white_sum_not_the_sum_of_the_columns(weighted):
    """Monte Carlo on frames with a known variance; the background rows dominate the noise of the white sum."""
    rng = np.random.default_rng(11)
    truth = trace(n_x=40, flux=3e3) + 30.0  # a faint star on a sky of 30 e per pixel
    rn = rng.uniform(10.0, 20.0, truth.shape)
    n_reads = 60
    variance = lc.pixel_variance(truth, rn, n_reads)
    bins = truth + rng.standard_normal((4000, *truth.shape)) * np.sqrt(variance)
    usable = np.ones(truth.shape, bool)
    usable[5, 15] = usable[20, 2] = usable[39, 30] = False  # in the trace, in the outer rows, at the edge
    plan = lc.plan_airs(truth, usable, rn, n_reads=n_reads, half_width=6, weighted=weighted)
    assert plan.extra["background_window"] == lc.BACKGROUND_WINDOW
    flux, var, white, white_var = lc.apply_extraction(bins, plan)
    # each column, edge columns included: the propagated sigma is the scatter (sampling error 1.1 %)
    np.testing.assert_allclose(flux.std(axis=0), np.sqrt(var.mean(axis=0)), rtol=0.05)
    np.testing.assert_allclose(white, flux.sum(axis=1), rtol=1e-12)
    assert white.std() == pytest.approx(np.sqrt(white_var.mean()), rel=0.05)
    # the columns share background pixels: the sum of their variances misses their covariance (0.74 and 0.84
    # of the scatter here, plain and weighted), so a white error computed that way fails the check above
    assert np.sqrt(var.sum(axis=1).mean()) < 0.9 * white.std()


def test_the_window_brings_the_background_noise_down():
    """The same frames: 15 columns' outer rows instead of one's cut the background term ~15-fold."""
    truth = trace(n_x=40, flux=3e3) + 30.0
    rn = np.full(truth.shape, 15.0)
    usable = np.ones(truth.shape, bool)
    var = {}
    for window in (0, lc.BACKGROUND_WINDOW):
        plan = lc.plan_airs(truth, usable, rn, n_reads=60, half_width=6, background_window=window)
        var[window] = lc.apply_weights(truth[None], plan)[1][0]
    plan = lc.plan_airs(truth, usable, rn, n_reads=60, half_width=6, background=False)
    aperture = lc.apply_weights(truth[None], plan)[1][0]
    interior = slice(lc.BACKGROUND_WINDOW, 40 - lc.BACKGROUND_WINDOW)
    ratio = (var[lc.BACKGROUND_WINDOW] - aperture)[interior] / (var[0] - aperture)[interior]
    np.testing.assert_allclose(ratio, 1 / (2 * lc.BACKGROUND_WINDOW + 1), rtol=1e-9)


# ---------------------------------------------------------------- a background that varies with wavelength
def test_a_linear_background_gradient_is_removed_without_bias():
    """The window is centred (it narrows at the edges): a background linear in x cancels in every column."""
    frame = trace(n_x=40)
    x = np.arange(40, dtype=np.float64)[:, None]
    sky = 200.0 + 12.5 * x + 0 * frame  # rising along the wavelength axis, flat along the rows
    usable = np.ones(frame.shape, bool)
    clean = lc.apply_weights(frame[None], lc.plan_airs(frame, usable, None, n_reads=2, half_width=5))[0]
    plan = lc.plan_airs(frame + sky, usable, None, n_reads=2, half_width=5)
    flux = lc.apply_weights((frame + sky)[None], plan)[0]
    np.testing.assert_allclose(flux, clean, rtol=1e-10)
    # a bad outer-row pixel moves the window's centre: the bias is the slope × that shift × the aperture's rows
    usable[20, 2] = False
    clean = lc.apply_weights(frame[None], lc.plan_airs(frame, usable, None, n_reads=2, half_width=5))[0]
    plan = lc.plan_airs(frame + sky, usable, None, n_reads=2, half_width=5)
    flux = lc.apply_weights((frame + sky)[None], plan)[0]
    assert plan.sky_mix is not None
    shift = (plan.sky_mix / 10.0) @ x[:, 0] - x[:, 0]  # sky_mix = rows (10) × window weights
    np.testing.assert_allclose(flux - clean, [-10 * 12.5 * shift], atol=1e-8)
    assert 0 < np.abs(shift).max() < 0.05  # one pixel of the 240 of a window: 7/239 column at most


def test_a_curved_background_leaves_its_second_derivative_times_the_window_s_spread():
    """``a x²``: each interior column keeps ``a K(K+1)/3`` per aperture row (the window's mean squared offset)."""
    frame = trace(n_x=40)
    a = 0.5
    x = np.arange(40, dtype=np.float64)
    sky = (a * x**2)[:, None] + 0 * frame
    usable = np.ones(frame.shape, bool)
    clean = lc.apply_weights(frame[None], lc.plan_airs(frame, usable, None, n_reads=2, half_width=5))[0][0]
    flux = lc.apply_weights((frame + sky)[None], lc.plan_airs(frame + sky, usable, None, n_reads=2,
                                                              half_width=5))[0][0]
    k = lc.BACKGROUND_WINDOW
    reach = np.minimum(k, np.minimum(x, 39 - x))
    np.testing.assert_allclose(clean - flux, 10 * a * reach * (reach + 1) / 3, atol=1e-8)  # oversubtracted


# ---------------------------------------------------------------- no BLAS, and a calibration that subtracted first
def test_the_band_product_is_the_matrix_product():
    from arielstream.calibration import frame_steps

    rng = np.random.default_rng(11)
    values = rng.normal(size=(5, 30))
    for matrix in (lc.window_weights(rng.integers(0, 5, 30), reach=7), rng.normal(size=(30, 30)),
                   np.zeros((30, 30)), rng.normal(size=(20, 30))):
        np.testing.assert_allclose(frame_steps.band_product(values, matrix), values @ matrix.T, atol=1e-12)
    band = lc.window_weights(np.full(30, 4), reach=2)
    values[:, 10] = np.nan  # a NaN reaches the columns whose window holds it, not every column
    out = frame_steps.band_product(values, band)
    assert np.isnan(out[:, 8:13]).all() and np.isfinite(out[:, :8]).all() and np.isfinite(out[:, 13:]).all()


@pytest.mark.parametrize("weighted", [False, True])
def test_light_curves_of_data_whose_background_the_calibration_took_out_are_those_of_the_data_before(weighted):
    """The full profile: the calibration's windowed estimate L is put back, so its noise does not stay unaccounted."""
    from arielstream.calibration import frame_steps

    rng = np.random.default_rng(5)
    frame = trace(n_x=40)
    sky = 80.0 + 0.5 * np.arange(40)[None, :, None]
    raw = rng.poisson(frame[None] + sky, size=(6, *frame.shape)).astype(np.float64)
    rows = tuple(range(0, 8)) + tuple(range(24, 32))
    level = frame_steps.airs_background(raw, rows)  # (t, x): the calibration's own estimate, window 7
    calibrated = raw - level[:, :, None]
    usable = np.ones(frame.shape, bool)
    usable[7, 15] = False
    plan = lc.plan_airs(raw.mean(axis=0), usable, None, n_reads=2, half_width=5, weighted=weighted)
    before = lc.apply_extraction(raw, plan)
    after = lc.apply_extraction(calibrated, plan, subtracted=level[:, :, None])
    for name in ("flux", "var", "white", "white_var"):
        np.testing.assert_allclose(getattr(after, name), getattr(before, name), rtol=1e-9, err_msg=name)
    without = lc.apply_extraction(calibrated, plan)  # the estimate's residual s (I - K) L stays in the flux
    assert not np.allclose(without.flux, before.flux, rtol=1e-6)
