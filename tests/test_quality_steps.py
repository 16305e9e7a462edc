"""The steps beyond the notebook: cosmic rays, spatial outliers, background, tracking, masters, spatial binning."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from arielstream import build_config, calibrate
from arielstream.calibration import compiled, steps
from arielstream.calibration.kernels import BlockCalibration, cds_samples
from arielstream.calibration.steps import master_frame
from arielstream.config.recipe import RECIPE
from arielstream.io.dataset import read_dataset_info
from arielstream.io.signal import ChunkPlan, SignalFile
from arielstream.layout import AIRS, discover_observations
from arielstream.run.observation import instrument_layout, outlier_options, select_pixels

pytestmark = pytest.mark.slow  # simulated planets with cosmic rays and jitter, calibrated with every step on

NEW_STEPS = ["cosmic_rays", "spatial_outliers", "interpolate_bad_pixels", "background", "tracking"]


@pytest.mark.parametrize("profile", ["default", "notebook"])
def test_new_steps_are_off_unless_asked_for_but_cosmic_rays_by_default(profile):
    config = build_config(profile=profile)
    on = {s for s in NEW_STEPS if getattr(config, s)}
    assert on == ({"cosmic_rays"} if profile == "default" else set())  # the cheap per-bin rejection
    assert config.cr_method == "bin"
    assert config.spatial_bin == 1 and config.master_calibration == "off"
    assert all(getattr(build_config(profile="full"), s) for s in NEW_STEPS)
    assert set(NEW_STEPS) <= {s.name for s in RECIPE}


def _series_with_hits(seed=0, pixels=40, samples=600):
    rng = np.random.default_rng(seed)
    level = rng.uniform(100, 8000, size=(pixels, 1))
    x = level * (1 + 0.01 * np.sin(np.linspace(0, 3, samples)))[None, :] + rng.normal(0, 1, (pixels, samples)) \
        * np.sqrt(level + 2 * 13**2)
    hits = np.zeros(x.shape, bool)
    idx = rng.choice(x.size, 60, replace=False)
    hits.flat[idx] = True
    x[hits] += rng.uniform(1500, 20000, size=60)
    return x, hits


@pytest.mark.parametrize("replace", ["median", "mask"])
def test_temporal_outliers_are_found_and_removed_from_the_bins(replace):
    x, hits = _series_with_hits()
    binned, flagged = steps.reject_temporal_outliers(x, 30, replace=replace)
    assert (flagged & hits).sum() == hits.sum()
    assert (flagged & ~hits).sum() <= 0.001 * (~hits).sum()
    clean = np.where(hits, np.nan, x).reshape(x.shape[0], -1, 30)
    expected = np.nanmean(clean, axis=-1) * 30
    np.testing.assert_allclose(binned, expected, rtol=3e-3)  # a bin's sum no longer carries the hit
    if compiled.numba is not None:
        fast, fast_flags = compiled.reject_temporal_outliers(x, 30, replace=replace)
        np.testing.assert_array_equal(fast_flags, flagged)
        np.testing.assert_allclose(fast, binned, rtol=1e-12)


@pytest.fixture(scope="module")
def hits_dataset(tmp_path_factory):
    """Two planets with many cosmic rays and a background on every planet."""
    from arielstream.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("hits")
    simulate_dataset(root, n_planets=2, scale=0.1, seed=21, cosmic_rate=2e-4, background_fraction=1.0,
                     two_visit_fraction=0.0)
    return root


def _first_visit_series(hits_dataset):
    """The first observation's whole AIRS CDS series (ADC and non-linearity applied), its truth, and more.

    Returns ``(series, truth, sel, floor)``: ``series`` is ``(pixels, samples)``, ``floor`` the
    pixels' CDS read-noise variance ``2 * read_noise**2``.
    """
    from arielstream.io.calibration import load_calibration

    info = read_dataset_info(hits_dataset)
    obs = discover_observations(hits_dataset, "train")[0]
    truth = np.load(hits_dataset / "simulation_truth" / "train" / f"{obs.planet_id}_visit0.npz")
    layout = instrument_layout(AIRS, info, build_config())
    sel = select_pixels(AIRS, layout)
    n_frames = layout.n_bins * 60
    reader = SignalFile(obs.signal_path(AIRS), AIRS, info.n_frames(AIRS))
    (chunk,) = list(reader.iter_chunks(sel.pixels, ChunkPlan(len(sel.pixels), n_frames, None, 0), n_frames, 60))
    loaded = load_calibration(obs, AIRS, {"linear_corr": True, "read": True})
    region = (sel.region[0][:, None], sel.region[1][None, :])
    coeffs = loaded.linear_corr[:, region[0], region[1]].reshape(6, -1)
    adc = info.adc[AIRS.name]
    series = cds_samples(chunk.data, BlockCalibration(adc.gain, adc.offset, coeffs, None, None, True, 30))
    return series, truth, sel, 2 * loaded.read[region].ravel().astype(np.float64) ** 2


def _hits(truth, sel, shape, samples_per_cell):
    """The simulated hits on a ``shape`` grid (pixels × cells of ``samples_per_cell`` CDS samples), and their sum.

    Returns ``(hit, amplitude)``: where a hit is, and the summed amplitude of the hits of each cell.
    """
    position = {int(p): i for i, p in enumerate(sel.pixels)}
    dead = truth["dead_airs"].ravel()
    hit = np.zeros(shape, bool)
    amplitude = np.zeros(shape)
    for frame, pixel, amp in zip(truth["cr_airs_frame"], truth["cr_airs_pixel"], truth["cr_airs_amplitude"],
                                 strict=True):
        cell = frame // (2 * samples_per_cell)
        if int(pixel) in position and cell < shape[1] and not dead[int(pixel)]:
            hit[position[int(pixel)], cell] = True
            amplitude[position[int(pixel)], cell] += amp
    return hit, amplitude


def test_cosmic_ray_recall_and_false_flags_on_simulated_data(hits_dataset):
    """Recall over the hits a 5-sigma test can see (amplitude >= 10 sigma of their pixel); false flags overall."""
    series, truth, sel, _ = _first_visit_series(hits_dataset)
    _, flagged = steps.reject_temporal_outliers(series, 30, **outlier_options(build_config(cr_method="series")))
    hit, amplitude = _hits(truth, sel, series.shape, 1)
    sigma = 1.4826 * np.median(np.abs(series - np.median(series, axis=1, keepdims=True)), axis=1, keepdims=True)
    visible = hit & (amplitude >= 10 * sigma)
    recall = (flagged & visible).sum() / visible.sum()
    false_rate = (flagged & ~hit).sum() / (~hit).sum()
    print(f"hits {hit.sum()}, visible {visible.sum()}, recall {recall:.4f}, "
          f"all-hit recall {(flagged & hit).sum() / hit.sum():.4f}, false-flag rate {false_rate:.2e}")
    assert visible.sum() > 200
    assert recall >= 0.95
    assert false_rate <= 0.001


def test_cosmic_ray_recall_per_bin_on_simulated_data(hits_dataset):
    """The default (per-bin) rejection on the same visit: the bins holding a visible hit, and false flags."""
    series, truth, sel, floor = _first_visit_series(hits_dataset)
    _, flagged = steps.reject_bin_maxima(series, 30, build_config().cr_bin_sigma, floor)
    hit, amplitude = _hits(truth, sel, flagged.shape, 30)
    sigma = np.sqrt(np.maximum(series, 0).mean(axis=1, keepdims=True) + floor[:, None])  # one sample's noise
    visible = hit & (amplitude >= 10 * sigma)
    recall = (flagged & visible).sum() / visible.sum()
    false_rate = (flagged & ~hit).sum() / (~hit).sum()
    print(f"bins with a hit {hit.sum()}, visible {visible.sum()}, recall {recall:.4f}, false-flag rate "
          f"{false_rate:.2e}")
    assert visible.sum() > 100
    assert recall >= 0.95
    assert false_rate <= 1e-3


def _white_depth(cube, shape):
    good = np.isfinite(cube).all(axis=0)
    flux = cube[:, good].sum(axis=1)
    design = np.stack([np.ones_like(shape), -shape], axis=1)
    a, b = np.linalg.lstsq(design, flux, rcond=None)[0]
    return b / a


@pytest.fixture(scope="module")
def runs(hits_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    out = {}
    configs = {"without": build_config(cosmic_rays=False), "full": build_config(profile="full")}
    for name, config in configs.items():
        out[name] = folder / f"{name}.h5"
        calibrate(hits_dataset, out[name], config=config, jobs=1, progress=False, log_file=False)
    return out


def test_the_new_steps_bring_the_transit_depth_closer_to_the_truth(hits_dataset, runs):
    errors = {profile: [] for profile in runs}
    for profile, path in runs.items():
        with h5py.File(path) as f:
            for i, (planet, visit) in enumerate(zip(f["planet_id"][()], f["visit"][()], strict=True)):
                truth = np.load(hits_dataset / "simulation_truth" / "train" / f"{planet}_visit{visit}.npz")
                cube = f["AIRS-CH0/signal"][i].astype(np.float64)
                n_bins = cube.shape[0]
                shape = truth["airs_transit_shape"][: n_bins * 60].reshape(n_bins, 60).mean(axis=1)
                columns = f["AIRS-CH0/column"][()]
                weights = np.nansum(cube[0], axis=1)
                true = np.sum(weights * truth["depth_airs"][columns]) / weights.sum()
                errors[profile].append(abs(_white_depth(cube, shape) - true) / true)
    print({k: [round(e, 4) for e in v] for k, v in errors.items()})
    assert all(full < without for full, without in zip(errors["full"], errors["without"], strict=True))
    assert max(errors["full"]) < 0.03


def test_the_centroid_track_follows_the_injected_jitter(hits_dataset, runs):
    with h5py.File(runs["full"]) as f:
        planet, visit = int(f["planet_id"][0]), int(f["visit"][0])
        centroid = f["FGS1/centroid"][0]
        trace = f["AIRS-CH0/trace_row"][0]
        prov = json.loads(f["provenance"][0].decode())
    truth = np.load(hits_dataset / "simulation_truth" / "train" / f"{planet}_visit{visit}.npz")
    n_bins = centroid.shape[0]
    jitter = truth["jitter_fgs1"][: n_bins * 720].reshape(n_bins, 720, 2).mean(axis=1)
    for axis in (0, 1):  # x (columns), y (rows)
        r = np.corrcoef(centroid[:, axis], jitter[:, axis])[0, 1]
        assert r > 0.8, f"axis {axis}: correlation {r:.2f}"
    jitter_airs = truth["jitter_airs"][: n_bins * 60].reshape(n_bins, 60, 2).mean(axis=1)
    assert np.corrcoef(trace, jitter_airs[:, 1])[0, 1] > 0.8
    assert prov["AIRS-CH0"]["cosmic_ray_samples"] > 0 and prov["FGS1"]["steps"]["spatial_outliers"] == "n/a"


def test_background_is_saved_and_matches_the_injected_level(hits_dataset, runs):
    with h5py.File(runs["full"]) as f:
        planet, visit = int(f["planet_id"][0]), int(f["visit"][0])
        background = f["AIRS-CH0/background"][0]  # (time, x) electrons per pixel per bin
        fgs1 = f["FGS1/background"][0]
    truth = np.load(hits_dataset / "simulation_truth" / "train" / f"{planet}_visit{visit}.npz")
    # e/s/pixel x 4.5 s x 30 CDS per bin (flat-fielded: the background is multiplied by the flat)
    expected = truth["background_airs_rows"][[0, 1, 2, 3, 4, 5, 26, 27, 28, 29, 30, 31]].mean() * 4.5 * 30
    assert abs(np.median(background) / expected - 1) < 0.05
    assert abs(np.median(fgs1) / (truth["background_fgs1"] * 0.1 * 360) - 1) < 0.1


@pytest.mark.parametrize("chunk_bytes", [2_000_000, 600_000])
def test_streaming_equals_whole_with_every_step_on(hits_dataset, runs, tmp_path, chunk_bytes):
    out = tmp_path / "chunked.h5"
    calibrate(hits_dataset, out, config=build_config(profile="full"), jobs=1, progress=False, log_file=False,
              chunk_bytes=chunk_bytes)
    with h5py.File(out) as a, h5py.File(runs["full"]) as b:
        for key in ("AIRS-CH0/signal", "AIRS-CH0/dq_time", "AIRS-CH0/background", "FGS1/centroid", "FGS1/signal"):
            np.testing.assert_array_equal(a[key][()], b[key][()], err_msg=key)


def test_spatial_binning_sums_pixel_blocks(hits_dataset, runs, tmp_path):
    out = tmp_path / "binned.h5"
    calibrate(hits_dataset, out, config=build_config(spatial_bin=2, cosmic_rays=False), jobs=1, progress=False,
              log_file=False)
    with h5py.File(out) as a, h5py.File(runs["without"]) as b:
        binned, full = a["AIRS-CH0/signal"][0], b["AIRS-CH0/signal"][0].astype(np.float64)
        assert binned.shape == (full.shape[0], 141, 16)
        expected = full.reshape(full.shape[0], 141, 2, 16, 2).sum(axis=(2, 4))
        np.testing.assert_allclose(binned, expected, rtol=1e-5)
        np.testing.assert_allclose(a["AIRS-CH0/wavelength"][()],
                                   b["AIRS-CH0/wavelength"][()].reshape(141, 2).mean(axis=1))


def test_master_dark_over_a_planets_visits(small_dataset, tmp_path):
    out = tmp_path / "master.h5"
    calibrate(small_dataset, out, config=build_config(master_calibration="planet"), jobs=1, progress=False,
              log_file=False)
    with h5py.File(out) as f:
        visits = f["visit"][()]
        second = int(np.flatnonzero(visits == 1)[0])
        prov = json.loads(f["provenance"][second].decode())
    assert prov["AIRS-CH0"]["calibration"]["dark"].startswith("master of 2 visit(s)")
    frames = np.stack([np.full((2, 3), 1.0), np.full((2, 3), 3.0), np.full((2, 3), 2.0), np.full((2, 3), 50.0)])
    np.testing.assert_allclose(master_frame(frames), 2.0)
