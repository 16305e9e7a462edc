"""End to end on the committed ``data_samples/``: the CLI, the file, and the injected truth."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from arielstream.dq import DO_NOT_USE, HOT
from arielstream.io.calibration import read_frame_table
from arielstream.layout import AIRS, INSTRUMENTS, discover_observations

from .conftest import DATA_SAMPLES


def run_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "arielstream", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "samples.h5"
    proc = run_cli("calibrate", DATA_SAMPLES, "--split", "train", "-o", out, "--memory", "1GB")
    assert "3 of 3 observation(s) calibrated" in proc.stdout
    return out


def test_layout_shapes_and_visits(sample_run):
    manifest = json.loads((DATA_SAMPLES / "simulation_truth" / "manifest.json").read_text())
    n_bins = manifest["n_bins"]
    observations = discover_observations(DATA_SAMPLES, "train")
    with h5py.File(sample_run) as f:
        n = len(observations)
        assert f["AIRS-CH0/signal"].shape == (n, n_bins, 282, 32)
        assert f["FGS1/signal"].shape == (n, n_bins, 32, 32)
        assert f["AIRS-CH0/signal"].dtype == np.float32
        assert f["planet_id"].dtype == np.int64 and f["planet_id"][()].max() > 2**31  # ids overflow int32
        pairs = list(zip(f["planet_id"][()].tolist(), f["visit"][()].tolist(), strict=True))
        assert pairs == [(o.planet_id, o.visit) for o in observations]
        assert any(v == 1 for _, v in pairs), "the second visit is calibrated too"
        assert (f["status"][()] == 1).all()
        assert f["AIRS-CH0/signal"].chunks is None and f["AIRS-CH0/signal"].compression is None
        wl = f["AIRS-CH0/wavelength"][()]
        assert (np.diff(wl) > 0).all(), "default profile: ascending target order"
        assert f["AIRS-CH0/wavelength_label"][0] == b"wl_2" and f["AIRS-CH0/wavelength_label"][-1] == b"wl_283"
        config = json.loads(f.attrs["config"])
        assert config["nonlinearity"] is True and f.attrs["profile"] == "default"
        prov = json.loads(f["provenance"][0].decode())
        assert prov["AIRS-CH0"]["steps"]["nonlinearity"] == "ran"
        assert prov["FGS1"]["steps"]["wavelength_cut"] == "n/a"


def test_bad_pixels_are_nan_and_flagged(sample_run):
    observations = discover_observations(DATA_SAMPLES, "train")
    with h5py.File(sample_run) as f:
        for i, obs in enumerate(observations):
            dead = read_frame_table(obs.calibration_path(AIRS, "dead"), 32, 356, "bool")
            dq = f["AIRS-CH0/dq"][i]  # (x, y), x in target order = columns 320..39
            columns = f["AIRS-CH0/column"][()]
            np.testing.assert_array_equal((dq & 1) != 0, dead[:, columns].T)
            cube = f["AIRS-CH0/signal"][i]
            unusable = (dq & DO_NOT_USE) != 0  # HOT alone is not: a usable hot pixel keeps its value (issue 23)
            np.testing.assert_array_equal(np.isnan(cube).all(axis=0), unusable)
            assert not np.isnan(cube[:, ~unusable]).any()
            assert (((dq & HOT) != 0) & ~unusable).sum() > 10  # the simulator's hot pixels, dead ones aside


def _fit_depth(flux: np.ndarray, shape: np.ndarray, variance: np.ndarray) -> tuple[float, float]:
    """Weighted least squares of flux = F0 * (1 - depth * shape): depth and its standard error."""
    design = np.stack([np.ones_like(shape), -shape], axis=1)
    w = 1.0 / variance
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    a, b = cov @ (design.T @ (w * flux))
    depth = b / a
    # error propagation of b/a
    err = abs(depth) * np.sqrt(cov[0, 0] / a**2 + cov[1, 1] / b**2 - 2 * cov[0, 1] / (a * b))
    return float(depth), float(err)


def test_transit_depth_is_recovered_within_the_noise(sample_run):
    """White-light depth of every visit, AIRS and FGS1, against the simulator's truth."""
    observations = discover_observations(DATA_SAMPLES, "train")
    pulls = []
    with h5py.File(sample_run) as f:
        for i, obs in enumerate(observations):
            truth = np.load(DATA_SAMPLES / "simulation_truth" / "train" / f"{obs.planet_id}_visit{obs.visit}.npz")
            for inst, fpb in (("AIRS-CH0", 60), ("FGS1", 720)):
                cube = f[f"{inst}/signal"][i].astype(np.float64)  # (bins, x, y)
                n_bins = cube.shape[0]
                good = ~np.isnan(cube[0])
                flux = cube[:, good].sum(axis=1)
                key = "airs" if inst == "AIRS-CH0" else "fgs1"
                shape = truth[f"{key}_transit_shape"][: n_bins * fpb].reshape(n_bins, fpb).mean(axis=1)
                if inst == "AIRS-CH0":
                    columns = f["AIRS-CH0/column"][()]
                    weights = np.where(good, cube[0], 0).sum(axis=1)  # flux per wavelength column
                    true_depth = float(np.sum(weights * truth["depth_airs"][columns]) / weights.sum())
                else:
                    true_depth = float(truth["depth_fgs1"])
                instrument = INSTRUMENTS[inst]
                read = read_frame_table(obs.calibration_path(instrument, "read"), 32, instrument.columns, "float")
                read = (read[:, f["AIRS-CH0/column"][()]] if key == "airs" else read).T[good]
                cds_per_bin = fpb // 2
                variance = flux + cds_per_bin * 2 * np.sum(read**2)  # photon + read noise, electrons
                depth, err = _fit_depth(flux, shape, np.full(n_bins, variance.mean()))
                pulls.append((obs.label, inst, depth, true_depth, err))
    for label, inst, depth, true_depth, err in pulls:
        assert abs(depth - true_depth) < 5 * err, (
            f"{label} {inst}: depth {depth:.5f} vs truth {true_depth:.5f} (σ {err:.5f})")
    # and the estimate is informative: noise well below the depth itself
    assert all(err < 0.2 * true_depth for *_, true_depth, err in pulls)


def test_info_lists_every_observation(sample_run):
    out = run_cli("info", sample_run).stdout
    assert "3 done" in out and "AIRS-CH0/signal" in out and "(3, " in out


def test_simulated_signal_files_look_like_the_format(sample_run):
    obs = discover_observations(DATA_SAMPLES, "train")[0]
    meta = pq.ParquetFile(obs.signal_path(AIRS)).metadata
    assert meta.num_columns == 11392
