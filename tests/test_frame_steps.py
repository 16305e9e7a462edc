"""Units: the steps over binned frames, on tiny seeded cubes whose answers are known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from arielstream.calibration import frame_steps
from arielstream.io.calibration import read_frame_table

from .conftest import REFERENCE_PLANET


def _noisy_spectrum(seed=0, t=3, nx=40, ny=4):
    """A smooth ramp along x (wavelength), unit-variance noise; the variance cube that says so."""
    rng = np.random.default_rng(seed)
    cube = 1000.0 + 5.0 * np.arange(nx)[None, :, None] + rng.normal(0, 1, (t, nx, ny))
    return cube, np.ones(cube.shape)


def test_the_typical_read_noise_is_that_of_the_real_airs_read_file():
    read = read_frame_table(REFERENCE_PLANET / "AIRS-CH0_calibration_0" / "read.parquet", 32, 356, "float")
    assert abs(np.median(read) - frame_steps.TYPICAL_READ_NOISE) < 0.1


def test_unknown_read_noise_is_the_typical_one():
    out = frame_steps.read_noise_or_typical(np.array([[np.nan, 12.0]], dtype=np.float32))
    np.testing.assert_array_equal(out, [[frame_steps.TYPICAL_READ_NOISE, 12.0]])


def test_unknown_read_noise_of_a_binned_pixel_is_the_typical_one_of_its_block():
    out = frame_steps.read_noise_or_typical(np.array([np.nan, 12.0]), factor=3)
    np.testing.assert_array_equal(out, [3 * frame_steps.TYPICAL_READ_NOISE, 12.0])  # sqrt(9 * 13^2)
    np.testing.assert_array_equal(frame_steps.read_noise_or_typical(None, shape=(2,)), [13.0, 13.0])


def test_the_light_curves_use_the_same_variance_model():
    from arielstream.products import lightcurves

    assert lightcurves.pixel_variance is frame_steps.pixel_variance
    plan = lightcurves.plan_airs(np.ones((2, 20)), np.ones((2, 20), bool), np.full((2, 20), np.nan), n_reads=4)
    np.testing.assert_array_equal(plan.read_noise, frame_steps.TYPICAL_READ_NOISE)


def test_pixel_variance_is_photons_plus_reads_times_read_noise_squared():
    cube = np.array([[[-5.0, 100.0, np.nan]]], dtype=np.float32)  # (t, x, y) = (1, 1, 3)
    read_noise = np.array([[2.0, 3.0, 4.0]], dtype=np.float32)
    out = frame_steps.pixel_variance(cube, read_noise, 60)
    np.testing.assert_array_equal(out, [[[60 * 4.0, 100 + 60 * 9.0, 60 * 16.0]]])  # negative and NaN: no photons
    assert out.dtype == np.float32


def test_spatial_outliers_finds_an_injected_spike_and_nothing_else():
    cube, variance = _noisy_spectrum()
    cube[1, 20, 2] += 50.0  # 50 sigma
    cube[2, 7, 1] = np.nan
    flagged = frame_steps.spatial_outliers(cube, variance, kernel=5, sigma=10.0)
    expected = np.zeros(cube.shape, bool)
    expected[1, 20, 2] = True
    np.testing.assert_array_equal(flagged, expected)


def test_spatial_outliers_scales_with_the_expected_noise():
    cube, variance = _noisy_spectrum(seed=1)
    cube[0, 10, 0] += 50.0
    assert not frame_steps.spatial_outliers(cube, variance * 100, kernel=5, sigma=10.0).any()  # 5 sigma now


def test_spatial_outliers_refuses_an_even_kernel():
    cube, variance = _noisy_spectrum()
    with pytest.raises(ValueError, match="odd kernel"):
        frame_steps.spatial_outliers(cube, variance, kernel=4)


def test_isolated_bad_pixels_are_interpolated_along_the_spatial_axis():
    cube = np.arange(2 * 3 * 5, dtype=np.float64).reshape(2, 3, 5)
    cube[:, 1, 2] = np.nan  # isolated: both row neighbours good
    cube[:, 2, 0] = np.nan  # on the edge: left alone
    cube[:, 0, 2:4] = np.nan  # a cluster of two: left alone
    out, filled = frame_steps.interpolate_isolated(cube, ~np.isfinite(cube))
    np.testing.assert_array_equal(out[:, 1, 2], 0.5 * (cube[:, 1, 1] + cube[:, 1, 3]))
    expected = np.zeros(cube.shape, bool)
    expected[:, 1, 2] = True
    np.testing.assert_array_equal(filled, expected)
    assert np.isnan(out[:, 2, 0]).all() and np.isnan(out[:, 0, 2:4]).all()
    np.testing.assert_array_equal(out[~np.isnan(cube)], cube[~np.isnan(cube)])


def test_a_static_bad_plane_applies_at_every_time():
    cube = np.arange(2 * 1 * 3, dtype=np.float64).reshape(2, 1, 3)
    bad = np.array([[False, True, False]])  # (x, y): a finite but unusable pixel
    out, filled = frame_steps.interpolate_isolated(cube, bad)
    np.testing.assert_array_equal(out[:, 0, 1], 0.5 * (cube[:, 0, 0] + cube[:, 0, 2]))
    assert filled.shape == cube.shape and filled[:, 0, 1].all() and filled.sum() == 2


def test_clipped_mean_ignores_an_outlier_and_nans():
    row = np.append(np.arange(1.0, 21.0), 1000.0)
    values = np.stack([row, np.append(np.arange(1.0, 21.0), np.nan)])
    np.testing.assert_array_equal(frame_steps.clipped_mean(values, sigma=3.0), [10.5, 10.5])
    with pytest.raises(ValueError, match="sigma"):
        frame_steps.clipped_mean(values, sigma=0.0)


def test_clipped_mean_clips_until_nothing_more_goes_and_a_row_without_data_is_nan():
    """±1 (50 each), 8 and 1e4 (as the hot-pixel clip's test): one pass drops 1e4 only, more drop 8 too."""
    row = np.concatenate([np.tile([-1.0, 1.0], 50), [8.0, 1e4]])
    values = np.stack([row, np.full(row.size, np.nan), np.where(np.arange(row.size) == 3, np.inf, 2.0)])
    np.testing.assert_array_equal(frame_steps.clipped_mean(values, sigma=5.0), [0.0, np.nan, 2.0])
    np.testing.assert_array_equal(frame_steps.clipped_mean(values[:1].astype(np.float32), sigma=5.0, maxiters=1),
                                  [8.0 / 101])


AIRS_ROWS = (0, 1, 2, 3, 4, 5, 26, 27, 28, 29, 30, 31)


def test_airs_background_is_the_level_of_the_rows_off_the_trace():
    level = np.array([[10.0, 25.0, 30.0], [11.0, 21.0, 41.0]])  # (t, x)
    cube = np.repeat(level[:, :, None], 32, axis=2)
    cube[:, :, 12:20] += 5000.0  # the star's trace
    cube[0, 1, 3] += 1000.0  # a hot pixel among the background rows
    np.testing.assert_array_equal(frame_steps.airs_background(cube, AIRS_ROWS, sigma=3.0, window=0), level)
    # the default window: column 1 pools columns 0..2, its hot pixel clipped (11 of its pixels kept)
    pooled = frame_steps.airs_background(cube, AIRS_ROWS, sigma=3.0)
    np.testing.assert_allclose(pooled[:, 1], [(12 * 10 + 11 * 25 + 12 * 30) / 35, (11 + 21 + 41) / 3], rtol=1e-12)
    np.testing.assert_array_equal(pooled[:, [0, 2]], level[:, [0, 2]])  # the first and last: their own rows


def _sky(t=300, nx=60, level=100.0, noise=10.0, seed=5):
    """A sky of known level and Gaussian noise on every pixel, a bright trace in the middle rows."""
    rng = np.random.default_rng(seed)
    cube = level + rng.normal(0.0, noise, (t, nx, 32))
    cube[:, :, 12:20] += 5e4
    return cube


def test_the_windowed_background_is_the_mean_of_every_pixel_of_the_window():
    cube = _sky(t=4, nx=30)
    k = frame_steps.BACKGROUND_WINDOW
    level = frame_steps.airs_background(cube, AIRS_ROWS, sigma=100.0)  # nothing clipped
    for x in (k, 12, 30 - 1 - k):
        np.testing.assert_allclose(level[:, x], cube[:, x - k:x + k + 1][:, :, list(AIRS_ROWS)].mean(axis=(1, 2)),
                                   rtol=1e-12)


def test_the_window_cuts_the_estimate_s_variance_by_its_number_of_columns():
    """Per column the level of 12 pixels has variance noise²/12; over 2K+1 columns, (2K+1) times less."""
    cube, noise = _sky(), 10.0
    k = frame_steps.BACKGROUND_WINDOW
    interior = slice(k, cube.shape[1] - k)
    own = frame_steps.airs_background(cube, AIRS_ROWS, window=0)[:, interior] - 100.0
    pooled = frame_steps.airs_background(cube, AIRS_ROWS)[:, interior] - 100.0
    n = len(AIRS_ROWS)
    # 300 x 46 per-column levels: the sample variance within 3 %; the pooled ones share pixels: within 10 %
    assert abs(own.var() / (noise**2 / n) - 1) < 0.03
    assert abs(pooled.var() / (noise**2 / (n * (2 * k + 1))) - 1) < 0.1
    assert abs(pooled.mean()) < 3 * noise / np.sqrt(n * own.size)  # no bias


def test_a_background_linear_along_the_columns_is_removed_without_bias_and_a_curved_one_as_predicted():
    nx, k = 40, frame_steps.BACKGROUND_WINDOW
    x = np.arange(nx, dtype=np.float64)
    cases = ((50.0 + 3.0 * x, 50.0 + 3.0 * x, slice(None)),  # linear: exact in every column, the edges included
             (0.5 * x**2, 0.5 * x**2 + 0.5 * k * (k + 1) / 3, slice(k, nx - k)))  # f''/2 x K(K+1)/3, whole windows
    for f, expected, columns in cases:
        cube = np.repeat(np.repeat(f[None, :, None], 32, axis=2), 3, axis=0)
        cube[:, :, 12:20] += 5e4
        level = frame_steps.airs_background(cube, AIRS_ROWS)
        np.testing.assert_allclose(level[:, columns], np.broadcast_to(expected, level.shape)[:, columns], rtol=1e-12)


def test_the_window_narrows_at_the_edges_and_spans_columns_without_background_pixels():
    cube = _sky(t=2, nx=20)
    cube[:, 5][:, list(AIRS_ROWS)] = np.nan  # column 5: no background pixel of its own
    level = frame_steps.airs_background(cube, AIRS_ROWS, sigma=100.0)
    rows = list(AIRS_ROWS)
    for x in (0, 1, 3):  # within K of the first column: the columns 0 .. 2x, centred on x
        np.testing.assert_allclose(level[:, x], np.nanmean(cube[:, :2 * x + 1][:, :, rows], axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(level[:, 19], cube[:, 19][:, rows].mean(axis=1), rtol=1e-12)  # the last: its own
    np.testing.assert_allclose(level[:, 18], cube[:, 17:20][:, :, rows].mean(axis=(1, 2)), rtol=1e-12)
    assert np.isfinite(level[:, 5]).all()  # its neighbours' pixels
    assert np.isnan(frame_steps.airs_background(cube, AIRS_ROWS, window=0)[:, 5]).all()  # unknown on its own


def test_the_light_curves_use_the_calibration_s_window():
    from arielstream.products import lightcurves

    assert lightcurves.window_weights is frame_steps.window_weights
    assert lightcurves.BACKGROUND_WINDOW == frame_steps.BACKGROUND_WINDOW
    counts = np.array([3, 0, 5, 2, 2])
    np.testing.assert_array_equal(frame_steps.window_weights(counts, 1) > 0,
                                  frame_steps.window_members(5, 1) & (counts > 0)[None, :])
    with pytest.raises(ValueError, match="background window"):
        frame_steps.window_members(5, -1)


def test_fgs1_background_is_the_level_near_the_edge():
    level = np.array([7.0, 9.0])
    cube = np.repeat(level, 12 * 12).reshape(2, 12, 12)
    cube[:, 5:7, 5:7] += 1000.0  # a compact star in the middle
    np.testing.assert_array_equal(frame_steps.fgs1_background(cube, width=3), level)
    ring = frame_steps.edge_mask(5, 5, 1)
    assert ring.sum() == 16 and not ring[1:4, 1:4].any()


def _gaussian(nx, ny, x0, y0, sigma=1.0, amplitude=1000.0):
    xx, yy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    return amplitude * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))


def test_centroids_find_a_gaussian_star():
    truth = np.array([[10.3, 7.6], [10.8, 7.1]])
    cube = np.stack([_gaussian(21, 17, x, y) for x, y in truth])
    cube[0, 0, 0] = np.nan  # far from the star: left out
    np.testing.assert_allclose(frame_steps.centroids(cube), truth, atol=1e-5)


def test_trace_rows_are_the_flux_weighted_mean_row():
    cube = np.zeros((2, 4, 32))
    cube[0, :, 14:17] = [1.0, 2.0, 1.0]  # centred on row 15
    cube[1, :, 15:18] = [1.0, 2.0, 1.0]  # on row 16
    cube[:, :, 3] = -5.0  # negative flux does not pull the trace
    cube[1, 2, 20] = np.nan
    np.testing.assert_allclose(frame_steps.trace_rows(cube), [15.0, 16.0], rtol=1e-12)


def test_spatial_bin_sums_blocks_and_drops_the_tail():
    cube = np.arange(5 * 4, dtype=np.float64).reshape(1, 5, 4)
    out = frame_steps.spatial_bin(cube, 2)
    expected = [[cube[0, 0:2, 0:2].sum(), cube[0, 0:2, 2:4].sum()],
                [cube[0, 2:4, 0:2].sum(), cube[0, 2:4, 2:4].sum()]]
    np.testing.assert_array_equal(out, [expected])
    cube[0, 3, 3] = np.nan
    with_nan = frame_steps.spatial_bin(cube, 2)
    assert np.isnan(with_nan[0, 1, 1]) and np.isfinite(with_nan[0, 0]).all() and np.isfinite(with_nan[0, 1, 0])
    assert frame_steps.spatial_bin(cube, 1) is cube


def test_bin_planes_reduces_each_block():
    bits = np.array([[1, 2, 0, 0], [4, 0, 8, 0]], dtype=np.uint16)  # (x, y) = (2, 4)
    np.testing.assert_array_equal(frame_steps.bin_planes(bits, 2, "or"), [[1 | 2 | 4, 8]])
    noise = np.array([[3.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(frame_steps.bin_planes(noise, 2, "rms"), [[5.0]])
    np.testing.assert_array_equal(frame_steps.bin_planes(noise, 2, "sum"), [[7.0]])
    np.testing.assert_array_equal(frame_steps.bin_planes(noise, 2, "mean"), [[1.75]])
    over_time = np.stack([bits, bits << 4])  # (t, x, y)
    np.testing.assert_array_equal(frame_steps.bin_planes(over_time, 2, "or"), [[[7, 8]], [[7 << 4, 8 << 4]]])


@pytest.mark.parametrize("call", [
    lambda: frame_steps.bin_planes(np.zeros((2, 2)), 2, "max"),
    lambda: frame_steps.bin_planes(np.zeros((2, 2)), 0, "or"),
    lambda: frame_steps.spatial_bin(np.zeros((1, 2, 2)), 0),
    lambda: frame_steps.bin_background(np.zeros(3), -1),
])
def test_bad_parameters_raise(call):
    with pytest.raises(ValueError):
        call()


def test_a_binned_background_is_the_background_of_the_binned_pixels():
    airs = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])  # (t, x): the same on every row
    np.testing.assert_array_equal(frame_steps.bin_background(airs, 2), [[(1 + 2) * 2, (3 + 4) * 2]])
    per_pixel = np.repeat(airs[:, :, None], 4, axis=2)
    np.testing.assert_array_equal(frame_steps.bin_background(airs, 2), frame_steps.spatial_bin(per_pixel, 2)[:, :, 0])
    fgs1 = np.array([3.0, 4.0])  # (t,)
    np.testing.assert_array_equal(frame_steps.bin_background(fgs1, 2), [12.0, 16.0])


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_a_binned_position_is_the_centroid_of_the_binned_frame(factor):
    # a point source filling detector pixels of output pixel (2, 1) only: its detector centroid is the
    # centre of that block, (2f + (f-1)/2, f + (f-1)/2); in output pixels it is exactly (2, 1)
    cube = np.zeros((1, 4 * factor, 3 * factor))
    cube[0, 2 * factor:3 * factor, factor:2 * factor] = 5.0
    detector = frame_steps.centroids(cube, radius=10.0 * factor)
    np.testing.assert_allclose(detector, [[2 * factor + (factor - 1) / 2, factor + (factor - 1) / 2]])
    binned = frame_steps.spatial_bin(cube, factor)
    np.testing.assert_allclose(frame_steps.bin_positions(detector, factor), frame_steps.centroids(binned, radius=10.0))
    np.testing.assert_allclose(frame_steps.bin_positions(detector, factor), [[2.0, 1.0]])
    rows = frame_steps.trace_rows(cube)
    np.testing.assert_allclose(frame_steps.bin_positions(rows, factor), frame_steps.trace_rows(binned))
    np.testing.assert_allclose(frame_steps.bin_positions(np.array([3.0, 7.0]), 2), [1.25, 3.25])


def test_frame_steps_do_not_modify_their_inputs():
    cube, variance = _noisy_spectrum(t=2, nx=12, ny=32)
    cube[0, 3, 16] = np.nan
    read_noise = np.full((12, 32), np.nan, dtype=np.float32)
    inputs = [cube, variance, read_noise]
    kept = [a.copy() for a in inputs]
    frame_steps.read_noise_or_typical(read_noise)
    frame_steps.pixel_variance(cube, read_noise, 60)
    frame_steps.spatial_outliers(cube, variance)
    frame_steps.interpolate_isolated(cube, ~np.isfinite(cube))
    frame_steps.clipped_mean(cube)
    frame_steps.airs_background(cube, (0, 1, 30, 31))
    frame_steps.clipped_sums(cube)
    frame_steps.fgs1_background(cube[:, :, :12])
    frame_steps.centroids(cube)
    frame_steps.trace_rows(cube)
    frame_steps.spatial_bin(cube, 2)
    frame_steps.bin_planes(variance, 2, "rms")
    for before, after in zip(kept, inputs, strict=True):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_the_running_median_is_numpys_nanmedian_of_each_window(dtype, kernel):
    rng = np.random.default_rng(kernel)
    cube = rng.normal(1000, 30, (9, 40, 5)).astype(dtype)
    cube[rng.random(cube.shape) < 0.2] = np.nan
    cube[:, 10:18, 2] = np.nan  # windows with no finite value at all
    half = kernel // 2
    padded = np.pad(cube, ((0, 0), (half, half), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows
        expected = np.nanmedian(windows, axis=-1)
    np.testing.assert_array_equal(frame_steps._median_filter_x(cube, kernel), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("length", [1, 2, 5, 8, 13])
def test_the_background_median_is_numpys_nanmedian(dtype, length):
    """The sorted median gives nanmedian's very bits, NaN where a row has no value."""
    rng = np.random.default_rng(length)
    values = rng.normal(50, 7, (11, 17, length)).astype(dtype)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[3, 4] = np.nan
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        expected = np.nanmedian(values, axis=-1)
    np.testing.assert_array_equal(frame_steps._nanmedian_last(values), expected)
