"""Light curves: closed-form units on tiny arrays, then the injected transit of simulated planets."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest

import arielstream
from arielstream.config.options import build_config
from arielstream.dq import HOT, HOT_UNUSABLE
from arielstream.errors import OutputError
from arielstream.io.output import UnsafeTargetError
from arielstream.layout import frames_per_bin
from arielstream.nan import quiet_nan
from arielstream.products import lightcurves as lc

from .conftest import DATA_SAMPLES


# ---------------------------------------------------------------- units: tiny arrays, analytic answers
def gaussian_trace(n_x=40, n_y=32, centre=12.3, sigma=1.5, flux=1000.0, background=0.0):
    y = np.arange(n_y, dtype=np.float64)
    prof = np.exp(-0.5 * ((y - centre) / sigma) ** 2)
    prof /= prof.sum()
    return np.tile(flux * prof, (n_x, 1)) + background  # (x, y)


def test_trace_row_and_aperture():
    frame = gaussian_trace(centre=12.3)
    usable = np.ones(frame.shape, bool)
    assert lc.trace_row(frame, usable) == pytest.approx(12.3, abs=0.02)
    # a constant background does not pull the centre towards the middle of the frame
    assert lc.trace_row(frame + 50.0, usable) == pytest.approx(12.3, abs=0.05)
    rows = lc.aperture_rows(12.3, 3, 32)
    np.testing.assert_array_equal(np.flatnonzero(rows), [10, 11, 12, 13, 14, 15])
    with pytest.raises(ValueError):
        lc.aperture_rows(12.3, -1, 32)


def test_plain_sum_and_variance_closed_form():
    rng = np.random.default_rng(0)
    cube = rng.uniform(-5, 100, size=(3, 2, 8))  # (t, x, y)
    mean = np.zeros((2, 8))
    mean[:, 4] = 1.0  # trace on row 4
    rn = np.full((2, 8), 2.0)
    plan = lc.plan_airs(mean, np.ones((2, 8), bool), rn, n_reads=10, half_width=1, background=False)
    flux, var = lc.apply_weights(cube, plan)
    np.testing.assert_allclose(flux, cube[:, :, 3:6].sum(axis=2))
    np.testing.assert_allclose(var, (np.maximum(cube[:, :, 3:6], 0) + 10 * 4.0).sum(axis=2))
    np.testing.assert_array_equal(plan.n_pixels, [3, 3])


def test_background_is_removed_exactly():
    frame = gaussian_trace(centre=15.5, sigma=1.2)
    usable = np.ones(frame.shape, bool)
    plan = lc.plan_airs(frame, usable, None, n_reads=2, half_width=5)
    clean, _ = lc.apply_weights(frame[None], plan)
    for level in (0.0, 7.0, 300.0):
        # the plan is decided on the frame with its background
        plan_bg = lc.plan_airs(frame + level, usable, None, n_reads=2, half_width=5)
        flux, _ = lc.apply_weights((frame + level)[None], plan_bg)
        np.testing.assert_allclose(flux, clean, rtol=1e-12)
    inside = frame[:, 11:21].sum(axis=1)  # rows 10.5..20.5
    np.testing.assert_allclose(clean[0], inside - 10 * frame[:, np.r_[0:8, 24:32]].mean(axis=1))


def test_a_background_already_subtracted_still_counts_as_noise():
    frame = gaussian_trace(centre=15.5, sigma=1.2)
    usable = np.ones(frame.shape, bool)
    plan = lc.plan_airs(frame, usable, None, n_reads=2, half_width=5, background=False)
    level = np.full((1, frame.shape[0], 1), 250.0)  # (t, x, 1): what the calibration's background step removed
    flux, var = lc.apply_weights(frame[None], plan)
    flux_bg, var_bg = lc.apply_weights(frame[None], plan, subtracted=level)
    np.testing.assert_array_equal(flux_bg, flux)  # the flux is that of the cube
    np.testing.assert_allclose(var_bg - var, 10 * 250.0)  # 10 rows in the aperture, 250 e each


def test_weighted_extraction_is_unbiased_and_tighter():
    frame = gaussian_trace(centre=15.5, sigma=1.5, flux=5e4)
    usable = np.ones(frame.shape, bool)
    rn = np.full(frame.shape, 15.0)
    plain = lc.plan_airs(frame, usable, rn, n_reads=60, half_width=6)
    optimal = lc.plan_airs(frame, usable, rn, n_reads=60, half_width=6, weighted=True)
    f_plain, v_plain = lc.apply_weights(frame[None], plain)
    f_opt, v_opt = lc.apply_weights(frame[None], optimal)
    np.testing.assert_allclose(f_opt, f_plain, rtol=1e-9)  # noiseless: both give the aperture flux
    assert (v_opt < 0.9 * v_plain).all()  # read noise dominates the wings: weighting pays


@pytest.mark.parametrize("weighted", [False, True])
def test_propagated_sigma_matches_the_scatter(weighted):
    """Monte Carlo: noise drawn from the variance model; the predicted sigma equals the measured scatter."""
    rng = np.random.default_rng(42)
    truth = gaussian_trace(n_x=6, centre=15.5, sigma=1.8, flux=2e4, background=40.0)
    rn = rng.uniform(10, 20, truth.shape)
    n_reads = 60
    variance = lc.pixel_variance(truth, rn, n_reads)
    bins = truth + rng.standard_normal((4000, *truth.shape)) * np.sqrt(variance)
    usable = np.ones(truth.shape, bool)
    usable[2, 15] = usable[3, 2] = False  # a bad pixel in the trace and one in the background
    plan = lc.plan_airs(truth, usable, rn, n_reads=n_reads, half_width=6, weighted=weighted)
    flux, var, white, white_var = lc.apply_extraction(bins, plan)
    np.testing.assert_allclose(flux.std(axis=0), np.sqrt(var.mean(axis=0)), rtol=0.06)
    assert white.std() == pytest.approx(np.sqrt(white_var.mean()), rel=0.06)


def test_bad_pixels_are_excluded_at_all_times():
    rng = np.random.default_rng(1)
    cube = rng.uniform(50, 100, size=(5, 3, 10))
    cube[2, 1, 5] = np.nan  # NaN in one bin only
    dq = np.zeros((3, 10), np.uint16)
    dq[0, 4] = HOT | HOT_UNUSABLE  # flagged but finite (the notebook profile keeps bad values)
    dq[2, 6] = HOT  # a usable hot pixel: its value is kept and used
    usable = lc.usable_pixels(np.isfinite(cube).all(axis=0), dq)
    assert not usable[1, 5] and not usable[0, 4] and usable[2, 6] and usable.sum() == 28
    mean = np.zeros((3, 10))
    mean[:, 5] = 1.0
    plan = lc.plan_airs(mean, usable, None, n_reads=2, half_width=2, background=False)
    flux, _ = lc.apply_weights(cube, plan)
    assert np.isfinite(flux).all()
    expected = np.where(usable[None, :, 3:8], cube[:, :, 3:8], 0).sum(axis=2)
    np.testing.assert_allclose(flux, expected)


def test_fgs1_aperture_and_centroid():
    x = np.arange(32.0)[:, None]
    y = np.arange(32.0)[None, :]
    frame = 1e5 * np.exp(-0.5 * (((x - 14.2) / 1.5) ** 2 + ((y - 17.6) / 1.5) ** 2)) + 20.0
    usable = np.ones(frame.shape, bool)
    np.testing.assert_allclose(lc.centroid(frame, usable), [14.2, 17.6], atol=0.01)
    plan = lc.plan_fgs1(frame, usable, None, n_reads=720, radius=6)
    white = lc.apply_extraction(frame[None], plan).white
    inside = lc.disk(plan.extra["aperture_centre"], 6, frame.shape)
    assert white[0] == pytest.approx((frame - 20.0)[inside].sum(), rel=1e-6)  # background removed exactly
    assert white[0] == pytest.approx((frame - 20.0).sum(), rel=1e-3)  # a 4-sigma radius holds the PSF


def test_reads_per_bin_follows_the_config():
    assert lc.reads_per_bin({"airs_bin": 30, "cds": True, "time_binning": True}, "AIRS-CH0") == 60
    assert lc.reads_per_bin({"fgs1_bin": 12, "cds": False, "time_binning": True}, "FGS1") == 12
    assert lc.reads_per_bin({"airs_bin": 30, "cds": True, "time_binning": False}, "AIRS-CH0") == 2
    # an older file's config: missing options take today's defaults, options this version lacks are ignored
    assert lc.reads_per_bin({"removed_option": 1}, "FGS1") == 2 * build_config().fgs1_bin
    config = build_config(airs_bin=15)
    assert lc.reads_per_bin(config.to_dict(), "AIRS-CH0") == frames_per_bin(config, "AIRS-CH0") == 30


def test_statistics_over_slices_without_data_are_nan_quietly_and_other_warnings_still_show():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quiet_nan():
            assert np.isnan(np.nanmedian(np.full(3, np.nan)))
            assert np.isnan(np.nanmean(np.full(3, np.nan)))
        assert np.isnan(lc.normalise(np.full((2, 1), np.nan), np.ones((2, 1)))[0]).all()
        with pytest.raises(RuntimeWarning, match="something else"), quiet_nan():
            warnings.warn("something else", RuntimeWarning, stacklevel=1)
        with pytest.raises(RuntimeWarning, match="All-NaN slice"):
            np.nanmedian(np.full(3, np.nan))  # outside the helper numpy still warns


# ---------------------------------------------------------------- the wavelength order of the file does not matter
@pytest.fixture(scope="module")
def sample_profiles(tmp_path_factory):
    """data_samples calibrated twice: default, and notebook order with bad values kept (same numbers otherwise)."""
    root = tmp_path_factory.mktemp("lc_profiles")
    target, detector = root / "target.h5", root / "detector.h5"
    kw = {"jobs": 1, "progress": False, "log_file": False}
    arielstream.calibrate(DATA_SAMPLES, target, **kw)
    arielstream.calibrate(DATA_SAMPLES, detector, config=arielstream.build_config(
        profile="notebook", nonlinearity=True, hot_rule="physical", cosmic_rays=True), **kw)  # the default's steps
    return target, detector


@pytest.mark.slow
def test_light_curves_come_out_in_target_order_whatever_the_file_order(sample_profiles):
    target, detector = sample_profiles
    with h5py.File(target) as ft, h5py.File(detector) as fd:
        assert fd["AIRS-CH0/wavelength_label"][0] == b"wl_283"  # stored long to short
        a = lc.observation_light_curves(ft, 0)
        b = lc.observation_light_curves(fd, 0)
    assert a.wavelength_label[0] == "wl_2" and a.wavelength_label[-1] == "wl_283"
    assert b.wavelength_label == a.wavelength_label
    assert (np.diff(b.wavelength) > 0).all()
    np.testing.assert_array_equal(b.column, a.column)
    # bad pixels: NaN in one file, kept values in the other; both excluded through the DQ plane
    np.testing.assert_allclose(b.airs_flux, a.airs_flux, rtol=1e-5)
    np.testing.assert_allclose(b.fgs1_flux, a.fgs1_flux, rtol=1e-5)


def test_extract_writes_the_documented_file(sample_profiles, tmp_path):
    target, _ = sample_profiles
    out = lc.extract(target, tmp_path / "lc.h5", half_width=4, weighted=True, block_bytes=200_000)
    assert not (tmp_path / "lc.h5.partial").exists()
    with h5py.File(target) as src, h5py.File(out) as f:
        n = src["planet_id"].shape[0]
        t_airs, t_fgs1 = src["AIRS-CH0/time"].shape[0], src["FGS1/time"].shape[0]
        assert f.attrs["format"] == lc.LC_FORMAT_NAME and f.attrs["half_width"] == 4 and f.attrs["weighted"]
        assert f.attrs["background_window"] == lc.BACKGROUND_WINDOW
        assert f.attrs["source_config"] == src.attrs["config"]
        assert f["AIRS-CH0/flux"].shape == (n, t_airs, 282) and f["AIRS-CH0/flux_err"].shape == (n, t_airs, 282)
        assert f["AIRS-CH0/white_flux"].shape == (n, t_airs) and f["FGS1/flux"].shape == (n, t_fgs1)
        assert f["FGS1/centroid"].shape == (n, t_fgs1, 2)
        np.testing.assert_array_equal(f["planet_id"][()], src["planet_id"][()])
        assert f["AIRS-CH0/wavelength_label"][0] == b"wl_2"
        ref = lc.observation_light_curves(src, 1, half_width=4, weighted=True)
        np.testing.assert_allclose(f["AIRS-CH0/flux"][1], ref.airs_flux)  # blocks of bins == whole observation
        np.testing.assert_allclose(f["AIRS-CH0/white_flux_err"][1], ref.airs_white_err)
        assert (f["AIRS-CH0/aperture_rows"][1] == ref.aperture_rows).all()
        assert np.all(f["AIRS-CH0/flux_err"][()] > 0)


def test_extract_refuses_to_overwrite_its_source(sample_profiles):
    target, _ = sample_profiles
    with pytest.raises(UnsafeTargetError, match="would overwrite"):
        lc.extract(target, target)


def test_a_failed_extract_leaves_no_file_that_looks_complete(sample_profiles, tmp_path, monkeypatch):
    target, _ = sample_profiles
    out = tmp_path / "lc.h5"
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure in the second observation")
        return original(*args, **kwargs)

    original = lc.observation_light_curves
    monkeypatch.setattr(lc, "observation_light_curves", failing)
    with pytest.raises(RuntimeError, match="injected"):
        lc.extract(target, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "a_dir.h5").mkdir()  # an output path that cannot be replaced: exit 73, not a traceback
    with pytest.raises(OutputError, match="a_dir.h5: cannot write"):
        lc.extract(target, tmp_path / "a_dir.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir.h5"]


def test_extract_cli_selects_observations_and_switches_the_background_off(sample_profiles, tmp_path):
    from arielstream.cli import app as cli

    target, _ = sample_profiles
    out = tmp_path / "lc.h5"
    assert cli.main(["-q", "extract", str(target), "-o", str(out), "--obs", "0", "2", "--no-background"]) == 0
    with h5py.File(out) as f, h5py.File(target) as src:
        assert f["source_index"][()].tolist() == [0, 2] and not f.attrs["background"]
        assert f["planet_id"][()].tolist() == src["planet_id"][()][[0, 2]].tolist()
        expected = lc.observation_light_curves(src, 2, background=False)
        np.testing.assert_array_equal(f["AIRS-CH0/flux"][1], expected.airs_flux)
    assert cli.main(["-q", "extract", str(target), "-o", str(out), "--obs", "9"]) == cli.EXIT_USAGE


# ---------------------------------------------------------------- the injected transit, per wavelength
@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from arielstream.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("lc_sim")
    simulate_dataset(root / "data", n_planets=2, scale=0.1, seed=5)
    out = root / "out.h5"
    arielstream.calibrate(root / "data", out, jobs=1, progress=False, log_file=False)
    return root / "data", out


def truth_of(data, planet_id, visit):
    return np.load(data / "simulation_truth" / "train" / f"{planet_id}_visit{visit}.npz")


def binned(shape_per_frame, n_bins, frames_per_bin):
    return shape_per_frame[: n_bins * frames_per_bin].reshape(n_bins, frames_per_bin).mean(axis=1)


def fit_depth(flux, shape, variance, regressors=(), chi2=False):
    """Weighted least squares of flux = F0 * (1 - depth * shape) + c·regressors: depth, its error (, chi²/dof)."""
    design = np.stack([np.ones_like(shape), -shape, *[r - r.mean() for r in regressors]], axis=1)
    w = 1.0 / variance
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    params = cov @ (design.T @ (w * flux))
    a, b = params[:2]
    depth = b / a
    err = abs(depth) * np.sqrt(cov[0, 0] / a**2 + cov[1, 1] / b**2 - 2 * cov[0, 1] / (a * b))
    if chi2:
        reduced = np.sum(w * (flux - design @ params) ** 2) / (flux.size - design.shape[1])
        return float(depth), float(err), float(reduced)
    return float(depth), float(err)


def per_wavelength_pulls(data, out, **options):
    rows = []
    with h5py.File(out) as f:
        config = lc.file_config(f)
        for i in lc.done_observations(f):
            curves = lc.observation_light_curves(f, i, **options)
            truth = truth_of(data, curves.planet_id, curves.visit)
            shape = binned(truth["airs_transit_shape"], curves.airs_time.size, 2 * config["airs_bin"])
            true_depth = truth["depth_airs"][curves.column]  # target order -> detector columns
            for k in range(curves.airs_flux.shape[1]):
                depth, err, chi2 = fit_depth(curves.airs_flux[:, k], shape, curves.airs_flux_err[:, k] ** 2,
                                             chi2=True)
                rows.append((i, (depth - true_depth[k]) / err, err / true_depth[k], chi2))
    return np.array(rows)


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True])
def test_transit_depth_per_wavelength_within_the_propagated_noise(simulated, weighted):
    data, out = simulated
    rows = per_wavelength_pulls(data, out, weighted=weighted)
    obs, pulls, rel_err, chi2 = rows.T
    assert len(np.unique(obs)) >= 2 and pulls.size >= 2 * 282
    assert np.abs(pulls).max() < 5, f"worst wavelength {np.abs(pulls).max():.1f} sigma off"
    for i in np.unique(obs):
        # no bias beyond the common-mode pointing jitter (~0.3 sigma of one wavelength here)
        assert abs(pulls[obs == i].mean()) < 0.5, f"observation {i}: mean pull {pulls[obs == i].mean():.2f}"
    # the sigmas are right: neither under- nor over-estimated (the pulls' spread), and so is the variance of
    # each bin: the median chi²/dof of the fits (17 dof; 0.96 for a perfect model; the median, because
    # cosmic rays, left in by the default profile, make a tail) moves by ~0.2 for a 20% error in the variance
    assert 0.85 < pulls.std() < 1.2, f"pull spread {pulls.std():.2f}"
    assert 0.9 < np.median(chi2) < 1.18, f"median chi²/dof {np.median(chi2):.3f}"
    # and informative
    assert np.median(rel_err) < 0.3


def test_errors_follow_the_scatter_when_a_large_background_was_subtracted():
    """Monte Carlo: a sky of 20,000 e per pixel, removed upstream, must stay in the error bars."""
    rng = np.random.default_rng(7)
    frame = gaussian_trace(n_x=6, centre=15.5, sigma=1.5, flux=40_000.0)
    sky = 20_000.0
    usable = np.ones(frame.shape, bool)
    read_noise = np.full(frame.shape, 13.0)
    plan = lc.plan_airs(frame, usable, read_noise, n_reads=60, half_width=5)
    n = 4000
    reads = rng.normal(0.0, 13.0 * np.sqrt(60), (n, *frame.shape))
    cube = rng.poisson(frame + sky, (n, *frame.shape)) - sky + reads  # the calibration removed the sky
    level = np.full((n, frame.shape[0], 1), sky)
    flux, var = lc.apply_weights(cube, plan, subtracted=level)
    truth = lc.apply_weights(frame[None], plan)[0]
    pulls = (flux - truth) / np.sqrt(var)
    assert 0.95 < pulls.std() < 1.05, pulls.std()
    _, var_without = lc.apply_weights(cube, plan)
    assert ((flux - truth) / np.sqrt(var_without)).std() > 1.5  # what leaving it out would claim


@pytest.mark.slow
def test_the_files_background_dataset_enters_the_errors(simulated, tmp_path):
    """``observation_light_curves`` reads ``<inst>/background``: larger errors where a sky was removed.

    The flux is that of the data before the calibration's estimate (put back and re-estimated over the same
    window: its residual ``s (I - K) L``, a noise the errors do not count, would stay in the flux without the plane).
    """
    import shutil

    data, out = simulated
    bg_out = out.with_name("out_background.h5")
    if not bg_out.exists():
        arielstream.calibrate(data, bg_out, config=arielstream.build_config(background=True), jobs=1,
                              progress=False, log_file=False)
    stripped = tmp_path / "stripped.h5"
    shutil.copy(bg_out, stripped)
    with h5py.File(stripped, "r+") as f:
        del f["AIRS-CH0/background"], f["FGS1/background"]
    with h5py.File(bg_out) as f, h5py.File(stripped) as g:
        sky = [i for i in lc.done_observations(f)
               if float(truth_of(data, f["planet_id"][i], f["visit"][i])["background_airs"]) > 0]
        assert sky, "the seed should give one planet a background"
        for i in sky:
            a, b = lc.observation_light_curves(f, i), lc.observation_light_curves(g, i)
            residual = np.abs(a.airs_flux - b.airs_flux) / a.airs_flux_err
            assert 0 < np.nanmedian(residual) < 0.5  # the estimate's residual: a fraction of the error
            # the sky's photons in the aperture's rows (and, a 15th as much, in the background window's): 1.02 here
            assert np.nanmedian(a.airs_flux_err**2 / b.airs_flux_err**2) > 1.01
            assert np.median(a.fgs1_flux_err**2 / b.fgs1_flux_err**2) > 1.0


@pytest.mark.slow
def test_without_background_subtraction_the_depth_is_diluted(simulated):
    """Planet 37555021 of this seed has a sky background: leaving it in biases every wavelength low."""
    data, out = simulated
    with_bg = per_wavelength_pulls(data, out)
    without = per_wavelength_pulls(data, out, background=False)
    with h5py.File(out) as f:
        has_bg = [i for i in lc.done_observations(f)
                  if float(truth_of(data, f["planet_id"][i], f["visit"][i])["background_airs"]) > 0]
    assert has_bg, "the seed should give one planet a background"
    for i in has_bg:
        assert without[without[:, 0] == i, 1].mean() < with_bg[with_bg[:, 0] == i, 1].mean() - 0.3


@pytest.mark.slow
def test_white_light_depth_and_centroid_track(simulated):
    """AIRS white light, decorrelated against the FGS1 centroid track, and the track against the true jitter."""
    data, out = simulated
    with h5py.File(out) as f:
        config = lc.file_config(f)
        for i in lc.done_observations(f):
            curves = lc.observation_light_curves(f, i)
            truth = truth_of(data, curves.planet_id, curves.visit)
            jitter = truth["jitter_fgs1"]
            n_fgs1 = curves.fgs1_time.size
            true_track = jitter[: n_fgs1 * 2 * config["fgs1_bin"]].reshape(n_fgs1, -1, 2).mean(axis=1)
            for axis in (0, 1):
                assert np.corrcoef(curves.fgs1_centroid[:, axis], true_track[:, axis])[0, 1] > 0.95
            shape = binned(truth["airs_transit_shape"], curves.airs_time.size, 2 * config["airs_bin"])
            weights = np.nan_to_num(curves.airs_flux[0])
            true_depth = float(np.sum(weights * truth["depth_airs"][curves.column]) / weights.sum())
            depth, err = fit_depth(curves.airs_white, shape, curves.airs_white_err**2,
                                   regressors=(curves.fgs1_centroid[:, 0], curves.fgs1_centroid[:, 1]))
            assert abs(depth - true_depth) < 4 * err, f"obs {i}: {depth:.5f} vs {true_depth:.5f} ± {err:.5f}"
            assert err < 0.05 * true_depth
