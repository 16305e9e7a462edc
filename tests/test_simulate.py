"""The simulator: exact ADC2025 layout, determinism, and data that agree with the injected truth.

The physics checks rebuild the expected signal from the truth files with the
formulas of the specification (written out here, not imported), calibrate the
simulated raw reads with the simulated calibration files (ADC, linear_corr) and
compare within the noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from arielstream.cli import app as cli
from arielstream.cli.exits import EXIT_CONFIG
from arielstream.io import pages
from arielstream.io.signal import SignalFile
from arielstream.layout import AIRS, AIRS_CUT, CALIBRATION_NAMES, FGS1, PARQUET_LAYOUTS
from arielstream.simulate import dataset as sim
from arielstream.simulate.dataset import frame_counts, simulate_dataset
from arielstream.simulate.layouts import writer_options

from .conftest import REFERENCE

SCALE = 0.02  # 4 bins: 270 AIRS / 3240 FGS1 frames
SEED = 7
GAIN, OFFSET = 0.4369, -1000.0
EXPOSURE = {AIRS.name: (0.1, 4.6), FGS1.name: (0.1, 0.2)}


# ---------------------------------------------------------------- helpers
def read_signal(path: Path) -> np.ndarray:
    table = pq.read_table(path)
    return np.stack([c.to_numpy() for c in table.columns], axis=1)


def read_calibration(folder: Path, name: str) -> np.ndarray:
    table = pq.read_table(folder / f"{name}.parquet")
    return np.stack([c.to_numpy() for c in table.columns], axis=1)


def apply_linear_corr(x: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """sum_k c_k x^k, coefficient arrays (6, pixels), x (..., pixels)."""
    out = np.zeros_like(x)
    for c in coeffs[::-1]:
        out = out * x + c
    return out


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


def planet_dirs(root: Path, split: str = "train") -> list[Path]:
    return sorted(p for p in (root / split).iterdir() if p.is_dir())


def expected_rates(inst, truth: dict, cal: dict) -> np.ndarray:
    """Noiseless charge rate (e/s) of every pixel in every read pair, from the truth (spec formulas)."""
    key = "airs" if inst is AIRS else "fgs1"
    jit = truth[f"jitter_{key}"]
    jx, jy = 0.5 * (jit[0::2, 0] + jit[1::2, 0]), 0.5 * (jit[0::2, 1] + jit[1::2, 1])
    shape = truth[f"{key}_transit_shape"][0::2]
    if inst is AIRS:
        cols = np.arange(356.0)
        flux = np.stack([np.interp(cols - x, cols, truth["airs_column_flux"]) for x in jx])
        flux *= 1.0 - truth["depth_airs"][None, :] * shape[:, None]
        centre = 15.5 + 0.4 * ((cols - 178.0) / 178.0) ** 2 + jy[:, None]
        rows = np.arange(32.0)
        prof = np.exp(-0.5 * ((rows[None, :, None] - centre[:, None, :]) / truth["airs_profile_sigma"]) ** 2)
        prof /= prof.sum(axis=1, keepdims=True)
        star = prof * flux[:, None, :]
        background = truth["background_airs_rows"][None, :, None]
    else:
        pix = np.arange(32.0)
        gx = np.exp(-0.5 * ((pix[None, :] - 15.5 - jx[:, None]) / 1.5) ** 2)
        gy = np.exp(-0.5 * ((pix[None, :] - 15.5 - jy[:, None]) / 1.5) ** 2)
        gx /= gx.sum(axis=1, keepdims=True)
        gy /= gy.sum(axis=1, keepdims=True)
        total = truth["fgs1_total_flux"] * (1.0 - truth["depth_fgs1"] * shape)
        star = total[:, None, None] * gy[:, :, None] * gx[:, None, :]
        background = truth["background_fgs1"]
    rate = (star + background) * cal["flat"] + cal["dark"]
    rate[:, cal["dead"]] = 0.0
    return rate.reshape(rate.shape[0], -1)


# ---------------------------------------------------------------- simulations shared by the tests
@pytest.fixture(scope="module")
def sim_a(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_a")
    result = simulate_dataset(root, n_planets=2, scale=SCALE, seed=SEED, background_fraction=1.0)
    return root, result


@pytest.fixture(scope="module")
def sim_one_planet(tmp_path_factory):
    """Same arguments as sim_a but one planet: planet 0 must be byte-identical."""
    root = tmp_path_factory.mktemp("sim_b")
    simulate_dataset(root, n_planets=1, scale=SCALE, seed=SEED, background_fraction=1.0)
    return root


@pytest.fixture(scope="module")
def sim_row_groups(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_rg")
    simulate_dataset(root, n_planets=1, scale=SCALE, seed=SEED, background_fraction=1.0, row_group_frames=101)
    return root


@pytest.fixture(scope="module")
def calibrated(sim_a):
    """Planet 0 visit 0 of sim_a, calibrated with its own files: per instrument, the arrays the checks use."""
    root, result = sim_a
    pid = result[0][0]
    truth = dict(np.load(root / "simulation_truth" / "train" / f"{pid}_visit0.npz"))
    out = {}
    for inst in (AIRS, FGS1):
        folder = root / "train" / str(pid)
        cal_dir = folder / inst.calibration_dir(0)
        cal = {n: read_calibration(cal_dir, n) for n in ("dark", "dead", "flat", "read")}
        coeffs = read_calibration(cal_dir, "linear_corr").reshape(6, -1)
        raw = read_signal(folder / inst.signal_name(0))
        q = apply_linear_corr(raw / GAIN + OFFSET, coeffs)  # (frames, pixels), electrons
        rate = expected_rates(inst, truth, cal)  # (pairs, pixels)
        t0, t1 = EXPOSURE[inst.name]
        key = "airs" if inst is AIRS else "fgs1"
        hit = np.zeros(rate.shape, dtype=bool)
        hits = (truth[f"cr_{key}_frame"] // 2, truth[f"cr_{key}_pixel"])
        hit[hits] = True
        out[inst.name] = {
            "even": q[0::2] - rate * t0,  # residual of the start read
            "cds": q[1::2] - q[0::2] - rate * (t1 - t0),  # residual of the CDS
            "rate": rate, "hit": hit, "cal": cal, "truth": truth, "key": key,
            "cds_raw": q[1::2] - q[0::2],
        }
    return out


# ---------------------------------------------------------------- geometry and arguments
def test_frame_counts():
    assert frame_counts(1.0) == (187, 11250, 135000)
    assert frame_counts(SCALE) == (4, 270, 3240)
    assert frame_counts(1e-6) == (1, 90, 1080)
    for bad in (0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError):
            frame_counts(bad)


def test_axis_times_and_wavelengths_reproduce_the_real_file():
    table = pq.read_table(REFERENCE / "axis_info.parquet")  # the competition's own file, committed

    def col(name):
        a = table[name].to_numpy()
        return a[~np.isnan(a)]

    airs, fgs1 = sim._axis_times(187)
    np.testing.assert_allclose(airs, col("AIRS-CH0-axis0-h"), rtol=0, atol=1e-9)
    np.testing.assert_allclose(fgs1, col("FGS1-axis0-h"), rtol=0, atol=1e-9)
    np.testing.assert_allclose(sim.airs_wavelengths(), col("AIRS-CH0-axis2-um"), rtol=0, atol=1e-8)
    _, rows = read_csv(REFERENCE / "wavelengths.csv")
    np.testing.assert_allclose(sim.target_wavelengths(), np.array(rows[0], float), rtol=0, atol=1e-8)


@pytest.mark.parametrize("kwargs", [
    {"n_planets": 0}, {"n_planets": 1.5}, {"scale": 0}, {"seed": -1}, {"split": "val"},
    {"two_visit_fraction": 1.5}, {"background_fraction": -0.1}, {"row_group_frames": 0},
    {"cosmic_rate": -1.0}, {"compression": "xz"}, {"trace_hot_pixels": -1}, {"trace_hot_pixels": 283},
    {"trace_hot_pixels": 2.0}, {"parquet_layout": "parquet"}, {"parquet_layout": "polars", "compression": "snappy"},
])
def test_bad_arguments_raise_before_writing(tmp_path, kwargs):
    args = {"n_planets": 1, "scale": 0.005, **kwargs}
    with pytest.raises(ValueError):
        simulate_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- layout
def test_metadata_files(sim_a):
    root, result = sim_a
    header, rows = read_csv(root / "adc_info.csv")
    assert header == ["FGS1_adc_offset", "FGS1_adc_gain", "AIRS-CH0_adc_offset", "AIRS-CH0_adc_gain"]
    assert rows == [["-1000.0", "0.4369", "-1000.0", "0.4369"]]

    axis = pq.read_table(root / "axis_info.parquet")
    assert axis.column_names == ["AIRS-CH0-axis0-h", "AIRS-CH0-axis2-um", "AIRS-CH0-integration_time",
                                 "FGS1-axis0-h"]
    assert axis.num_rows == 3240
    lengths = {}
    for name in axis.column_names:
        assert str(axis.schema.field(name).type) == "double"
        a = axis[name].to_numpy()
        lengths[name] = int(np.count_nonzero(~np.isnan(a)))
        assert np.all(np.isnan(a[lengths[name]:]))  # NaN padding only at the end
    assert lengths == {"AIRS-CH0-axis0-h": 270, "AIRS-CH0-axis2-um": 356, "AIRS-CH0-integration_time": 270,
                       "FGS1-axis0-h": 3240}
    integ = axis["AIRS-CH0-integration_time"].to_numpy()[:270]
    assert np.all(integ[0::2] == 0.1) and np.all(integ[1::2] == 4.5)
    t_airs = axis["AIRS-CH0-axis0-h"].to_numpy()[:270]
    t_fgs1 = axis["FGS1-axis0-h"].to_numpy()
    assert np.all(np.diff(t_airs) > 0) and np.all(np.diff(t_fgs1) > 0)
    assert 7.4 < t_airs[-1] < 7.5  # the visit still spans 7.5 h at a small scale
    np.testing.assert_allclose(t_fgs1[0::24], t_airs[0::2], atol=1e-12)  # FGS1 pair 12j starts with AIRS pair j

    header, rows = read_csv(root / "wavelengths.csv")
    assert header == [f"wl_{i}" for i in range(1, 284)]
    wl = np.array(rows[0], float)
    assert wl[0] == 0.7 and wl.size == 283
    np.testing.assert_array_equal(wl[1:], axis["AIRS-CH0-axis2-um"].to_numpy()[320:38:-1])


def test_star_info_and_train_csv(sim_a):
    root, result = sim_a
    ids = [pid for pid, _ in result]
    header, rows = read_csv(root / "train_star_info.csv")
    assert header == ["planet_id", "Rs", "Ms", "Ts", "Mp", "e", "P", "sma", "i"]
    assert [int(r[0]) for r in rows] == ids
    assert all(r[0].isdigit() for r in rows)  # written as integers, not 1.2e9 or 123.0
    assert len(set(ids)) == len(ids) and all(10_000 <= p <= 4_294_967_295 for p in ids)
    assert any(p > 2**31 for p in ids)  # ids overflow int32
    values = np.array([[float(v) for v in r[1:]] for r in rows])
    Rs, Ms, Ts, Mp, e, P, sma, inc = values.T
    assert np.all((0.6 < Rs) & (Rs < 3)) and np.all((0.5 < Ms) & (Ms < 2)) and np.all((4000 < Ts) & (Ts < 7100))
    assert np.all(e == 0) and np.all((2.7 < P) & (P < 7.7)) and np.all((4 < sma) & (sma < 21.5))
    assert np.all((85 < inc) & (inc <= 90)) and np.all(Mp > 0)

    header, rows = read_csv(root / "train.csv")
    assert header == ["planet_id"] + [f"wl_{i}" for i in range(1, 284)]
    assert [int(r[0]) for r in rows] == ids
    for pid, row in zip(ids, rows, strict=True):
        truth = np.load(root / "simulation_truth" / "train" / f"{pid}_visit0.npz")
        depth = np.array(row[1:], float)
        np.testing.assert_array_equal(depth, truth["depth_target"])
        assert depth[0] == truth["depth_fgs1"]
        lo, hi = AIRS_CUT
        np.testing.assert_array_equal(depth[1:], truth["depth_airs"][hi - 1:lo - 1:-1])
        assert np.all((0.002 < depth) & (depth < 0.03))

    for name in ("train_star_info.csv", "train.csv"):
        assert str(pacsv.read_csv(root / name).schema.field("planet_id").type) == "int64"


def test_planet_folders_signal_and_calibration_files(sim_a):
    root, result = sim_a
    assert [p.name for p in planet_dirs(root)] == sorted(str(pid) for pid, _ in result)
    assert any(n == 2 for _, n in result)
    _, airs_frames, fgs1_frames = frame_counts(SCALE)
    for pid, n_visits in result:
        folder = root / "train" / str(pid)
        expected = set()
        for v in range(n_visits):
            for inst, frames in ((AIRS, airs_frames), (FGS1, fgs1_frames)):
                expected |= {inst.signal_name(v), inst.calibration_dir(v)}
                f = pq.ParquetFile(folder / inst.signal_name(v))
                schema = f.schema_arrow
                assert f.metadata.num_rows == frames and f.metadata.num_row_groups == 1
                assert schema.names == [f"column_{p}" for p in range(inst.pixels)]
                assert {str(t) for t in schema.types} == {"uint16"}
                assert f.metadata.row_group(0).column(0).compression == "ZSTD"
                cal_dir = folder / inst.calibration_dir(v)
                assert sorted(p.name for p in cal_dir.iterdir()) == sorted(f"{n}.parquet" for n in CALIBRATION_NAMES)
                for name in CALIBRATION_NAMES:
                    cf = pq.ParquetFile(cal_dir / f"{name}.parquet")
                    rows = 6 * 32 if name == "linear_corr" else 32
                    assert cf.metadata.num_rows == rows and cf.metadata.num_row_groups == 1
                    assert cf.schema_arrow.names == [f"column_{j}" for j in range(inst.columns)]
                    assert {str(t) for t in cf.schema_arrow.types} == {"bool" if name == "dead" else "double"}
                    assert cf.metadata.row_group(0).column(0).compression == "ZSTD"
                truth = np.load(root / "simulation_truth" / "train" / f"{pid}_visit{v}.npz")
                key = "airs" if inst is AIRS else "fgs1"
                for name in ("dark", "flat", "dead"):
                    np.testing.assert_array_equal(read_calibration(cal_dir, name), truth[f"{name}_{key}"])
                np.testing.assert_array_equal(read_calibration(cal_dir, "linear_corr").reshape(6, 32, -1),
                                              truth[f"linear_corr_{key}"])
        assert {p.name for p in folder.iterdir()} == expected


def test_truth_files(sim_a):
    root, result = sim_a
    _, na, nf = frame_counts(SCALE)
    shapes = {
        "depth_airs": (356,), "depth_fgs1": (), "depth_target": (283,), "t0_h": (), "t14_h": (), "t23_h": (),
        "airs_transit_shape": (na,), "fgs1_transit_shape": (nf,), "airs_column_flux": (356,),
        "fgs1_total_flux": (), "airs_profile_sigma": (356,), "jitter_airs": (na, 2), "jitter_fgs1": (nf, 2),
        "background_airs": (), "background_fgs1": (), "dark_airs": (32, 356), "flat_airs": (32, 356),
        "dead_airs": (32, 356), "dark_fgs1": (32, 32), "flat_fgs1": (32, 32), "dead_fgs1": (32, 32),
    }
    manifest = json.loads((root / "simulation_truth" / "manifest.json").read_text())
    assert manifest["scale"] == SCALE and manifest["n_bins"] == 4
    assert (manifest["airs_frames"], manifest["fgs1_frames"]) == (na, nf)
    assert manifest["split"] == "train" and manifest["splits"]["train"]["seed"] == SEED
    entries = manifest["splits"]["train"]["planets"]
    assert manifest["planets"] == entries and manifest["seed"] == SEED
    assert [(e["planet_id"], e["n_visits"]) for e in entries] == [tuple(r) for r in result]
    for (pid, n_visits), entry in zip(result, entries, strict=True):
        for v in range(n_visits):
            t = np.load(root / "simulation_truth" / "train" / f"{pid}_visit{v}.npz")
            for k, s in shapes.items():
                assert t[k].shape == s, k
            for inst in ("airs", "fgs1"):
                assert t[f"cr_{inst}_frame"].shape == t[f"cr_{inst}_pixel"].shape == t[f"cr_{inst}_amplitude"].shape
                assert np.all(t[f"cr_{inst}_frame"] % 2 == 1)
                amp = t[f"cr_{inst}_amplitude"]
                assert np.all((amp >= 100) & (amp <= 20000))
            assert t["cr_airs_frame"].size > 20  # ~0.8 hits per AIRS exposure
            assert 1.5 <= t["t14_h"] <= 4.0 and 0 < t["t23_h"] < t["t14_h"]
            assert 3.0 <= t["t0_h"] <= 4.5 and entry["visits"][v]["t0_h"] == t["t0_h"]
            # the trapezoid: 0 outside, 1 inside, linear between, at the frame times
            axis = pq.read_table(root / "axis_info.parquet")["AIRS-CH0-axis0-h"].to_numpy()[:na]
            tm = np.repeat(0.5 * (axis[0::2] + axis[1::2]), 2)
            x = (t["t14_h"] / 2 - np.abs(tm - t["t0_h"])) / ((t["t14_h"] - t["t23_h"]) / 2)
            np.testing.assert_allclose(t["airs_transit_shape"], np.clip(x, 0, 1), atol=1e-12)
            assert t["airs_transit_shape"].max() == 1 and t["airs_transit_shape"].min() == 0
            assert 0.3 * 5000 < t["airs_column_flux"].max() < 1.5 * 6000
            rms = t["jitter_fgs1"].std(axis=0)
            assert np.all((0.01 < rms) & (rms < 0.6))
            dead = t["dead_airs"]
            assert 1 <= dead.sum() < 60 and t["dead_fgs1"].sum() >= 1
            assert np.all(t["flat_airs"][dead] < 0.11) and np.all(t["flat_airs"][~dead] >= 0.9)


def test_second_visit_shares_the_detector_but_not_the_dark(sim_a):
    root, result = sim_a
    pid = next(p for p, n in result if n == 2)
    t0, t1 = (np.load(root / "simulation_truth" / "train" / f"{pid}_visit{v}.npz") for v in (0, 1))
    for key in ("airs", "fgs1"):
        for name in ("flat", "dead", "read", "linear_corr"):
            np.testing.assert_array_equal(t0[f"{name}_{key}"], t1[f"{name}_{key}"])
        ratio = t1[f"dark_{key}"] / t0[f"dark_{key}"] - 1
        assert 0.01 < np.median(np.abs(ratio)) < 0.03  # re-drawn at 2 %
        assert np.count_nonzero(np.abs(ratio) > 0.2) <= 2  # plus the new hot pixels
    assert np.count_nonzero(np.abs(t1["dark_airs"] / t0["dark_airs"] - 1) > 0.2) >= 1
    assert t0["t0_h"] != t1["t0_h"]
    assert not np.array_equal(t0["jitter_fgs1"], t1["jitter_fgs1"])
    np.testing.assert_array_equal(t0["depth_target"], t1["depth_target"])


# ---------------------------------------------------------------- determinism and row groups
def test_same_seed_same_bytes_and_independent_of_planet_count(sim_a, sim_one_planet):
    root, result = sim_a
    pid, n_visits = result[0]
    a, b = root / "train" / str(pid), sim_one_planet / "train" / str(pid)
    assert [p.name for p in planet_dirs(sim_one_planet)] == [str(pid)]
    names = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    assert names == sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_different_seed_gives_different_data(sim_a, tmp_path):
    root, result = sim_a
    other = simulate_dataset(tmp_path, n_planets=1, scale=SCALE, seed=SEED + 1, background_fraction=1.0)
    assert other[0][0] != result[0][0]
    a = read_signal(root / "train" / str(result[0][0]) / "FGS1_signal_0.parquet")
    b = read_signal(tmp_path / "train" / str(other[0][0]) / "FGS1_signal_0.parquet")
    assert a.shape == b.shape and np.mean(a != b) > 0.5


@pytest.mark.slow  # a simulation of its own with 101-frame row groups
def test_row_groups_change_the_file_not_the_data(sim_a, sim_row_groups):
    root, result = sim_a
    pid, n_visits = result[0]
    _, airs_frames, fgs1_frames = frame_counts(SCALE)
    rg = 101  # odd: row groups split read pairs
    for v in range(n_visits):
        for inst, frames in ((AIRS, airs_frames), (FGS1, fgs1_frames)):
            path = sim_row_groups / "train" / str(pid) / inst.signal_name(v)
            meta = pq.ParquetFile(path).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            assert sizes == [rg] * (frames // rg) + ([frames % rg] if frames % rg else [])
            # reading 11k columns x several row groups is slow: compare a spread of AIRS columns
            columns = None if inst is FGS1 else [f"column_{p}" for p in range(0, inst.pixels, 37)]
            one = pq.read_table(root / "train" / str(pid) / inst.signal_name(v), columns=columns)
            assert pq.read_table(path, columns=columns).equals(one)


def test_test_split_and_shared_folder_rules(tmp_path):
    result = simulate_dataset(tmp_path, n_planets=1, scale=0.005, seed=1, split="test", cosmic_rate=0.0)
    assert (tmp_path / "test_star_info.csv").exists() and not (tmp_path / "train.csv").exists()
    assert (tmp_path / "test" / str(result[0][0]) / "AIRS-CH0_signal_0.parquet").exists()
    truth = np.load(tmp_path / "simulation_truth" / "test" / f"{result[0][0]}_visit0.npz")
    assert truth["cr_airs_frame"].size == 0 and truth["cr_fgs1_frame"].size == 0
    # the same seed in the train split gives other planets (no leak between splits)
    train = simulate_dataset(tmp_path, n_planets=1, scale=0.005, seed=1, split="train")
    assert train[0][0] != result[0][0]
    manifest = json.loads((tmp_path / "simulation_truth" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "test"}
    # axis_info.parquet is shared: another scale in the same folder is refused
    with pytest.raises(ValueError, match="scale"):
        simulate_dataset(tmp_path, n_planets=1, scale=0.01, seed=1, split="test")


# ---------------------------------------------------------------- non-linearity
def test_newton_inverse_matches_the_polynomial():
    rng = np.random.default_rng(0)
    det = sim._draw_detector(AIRS, rng)
    coeffs = det.linear_corr.reshape(6, -1)
    assert np.any(det.dead)
    q = rng.uniform(-50.0, 140_000.0, size=(40, AIRS.pixels))
    q[:5] = rng.uniform(0, 50, size=(5, AIRS.pixels))
    m_fast = sim.invert_nonlinearity(q, coeffs)
    m_numpy = sim.invert_nonlinearity(q, coeffs, fast=False)
    np.testing.assert_allclose(apply_linear_corr(m_fast, coeffs), q, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m_fast, m_numpy, rtol=0, atol=1e-8)
    live = ~det.dead.ravel()
    linear = (q - coeffs[0]) / coeffs[1]
    assert np.all((m_fast < linear)[:, live][q[:, live] > 1e3])  # the detector reads low
    np.testing.assert_array_equal(m_fast[:, det.dead.ravel()], q[:, det.dead.ravel()])  # identity
    with pytest.raises(RuntimeError, match="converge"):
        sim.invert_nonlinearity(q, coeffs, max_iter=1)
    with pytest.raises(ValueError):
        sim.invert_nonlinearity(q, coeffs[:, :10])


def test_nonlinearity_coefficients_look_like_the_real_ones():
    det = sim._draw_detector(FGS1, np.random.default_rng(3))
    c = det.linear_corr[:, ~det.dead]
    beta = c[2]
    assert np.all((5e-7 <= beta) & (beta <= 2e-6))
    np.testing.assert_allclose(c[3], 2 * beta**2)
    np.testing.assert_allclose(c[5], 14 * beta**4)
    assert abs(np.median(c[1]) - 1) < 0.002 and abs(np.median(c[0]) - 0.14) < 0.05


# ---------------------------------------------------------------- the data against the truth
@pytest.mark.parametrize("inst", [AIRS, FGS1], ids=lambda i: i.name)
def test_start_reads_recover_the_charge_within_the_read_noise(calibrated, inst):
    """linear_corr applied to the ADC-converted start reads gives the noiseless charge + read noise."""
    c = calibrated[inst.name]
    read = c["cal"]["read"].ravel()
    t0 = EXPOSURE[inst.name][0]
    photon = c["rate"] * t0  # Poisson variance of the charge before t0
    z = c["even"] / np.sqrt(read**2 + photon + 1.0)  # + ADC quantisation
    n = z.shape[0]
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert 0.95 < z.std() < 1.05
    per_pixel = z.mean(axis=0) * math.sqrt(n)
    assert 0.85 < per_pixel.std() < 1.15 and np.abs(per_pixel).max() < 6
    # the read-noise file is the read noise of the data
    dim = (photon.max(axis=0) < 1.0)
    ratio = c["even"][:, dim].std(axis=0) / read[dim]
    assert 0.97 < np.median(ratio) < 1.03


@pytest.mark.parametrize("inst", [AIRS, FGS1], ids=lambda i: i.name)
def test_cds_out_of_transit_matches_the_expected_charge(calibrated, inst):
    """CDS averaged over out-of-transit pairs = ((S + B) * flat + D) * (t1 - t0) within its standard error."""
    c = calibrated[inst.name]
    out = c["truth"][f"{c['key']}_transit_shape"][0::2] == 0
    assert out.sum() > 20
    resid = np.where(c["hit"], np.nan, c["cds"])[out]
    n = np.count_nonzero(~np.isnan(resid), axis=0)
    z = np.nanmean(resid, axis=0) / (np.nanstd(resid, axis=0, ddof=1) / np.sqrt(n))
    assert np.abs(z).max() < 6
    assert abs(z.mean()) < 5 / math.sqrt(z.size) and 0.85 < z.std() < 1.15
    t = EXPOSURE[inst.name][1] - EXPOSURE[inst.name][0]
    expected = c["rate"][out].mean(axis=0) * t
    bright = np.argsort(expected)[-(100 if inst is AIRS else 20):]
    assert expected[bright].min() > (1000 if inst is AIRS else 100)
    assert 0.8 < z[bright].std() < 1.25 and abs(z[bright].mean()) < 0.5
    # the model matters: a 1 % flux error on the bright pixels would be seen
    wrong = (np.nanmean(resid, axis=0) - 0.01 * expected) / (np.nanstd(resid, axis=0, ddof=1) / np.sqrt(n))
    assert np.abs(wrong[bright]).mean() > 3
    # hot pixels carry their dark current
    dark = c["cal"]["dark"].ravel()
    hot = (dark > 2.0) & ~c["cal"]["dead"].ravel()
    if inst is AIRS:
        assert hot.any()
    if hot.any():
        assert np.abs(z[hot]).max() < 6


@pytest.mark.parametrize("inst", [AIRS, FGS1], ids=lambda i: i.name)
def test_cosmic_rays_are_jumps_at_the_recorded_frames_and_nowhere_else(calibrated, inst):
    c = calibrated[inst.name]
    truth, key = c["truth"], c["key"]
    live = ~c["cal"]["dead"].ravel()
    pair, pixel, amp = truth[f"cr_{key}_frame"] // 2, truth[f"cr_{key}_pixel"], truth[f"cr_{key}_amplitude"]
    total = np.zeros(c["cds"].shape)
    np.add.at(total, (pair, pixel), amp)
    clean = np.where(c["hit"], np.nan, c["cds"])
    sigma = np.nanstd(clean, axis=0, ddof=1)
    # every hit on a live pixel: the CDS jumps by the recorded charge, the start read does not
    on = live[pixel]
    if inst is AIRS:
        assert on.sum() > 20
    jump = (c["cds"][pair, pixel] - total[pair, pixel])[on] / sigma[pixel[on]]
    assert np.all(np.abs(jump) < 6)
    even_sigma = np.std(c["even"], axis=0)
    assert np.all(np.abs(c["even"][pair, pixel][on] / even_sigma[pixel[on]]) < 6)
    big = on & (amp > 10 * sigma[pixel])
    if inst is AIRS:
        assert big.sum() > 5  # the check above saw real jumps
    # no jump where none was recorded
    assert np.nanmax(np.abs(clean) / sigma) < 7
    # dead pixels do not respond to cosmic rays either
    if (~on).any():
        assert np.all(np.abs(c["cds"][pair[~on], pixel[~on]]) < 6 * sigma[pixel[~on]])


@pytest.mark.parametrize("inst", [AIRS, FGS1], ids=lambda i: i.name)
def test_the_transit_depth_is_in_the_data(calibrated, inst):
    c = calibrated[inst.name]
    truth, key = c["truth"], c["key"]
    shape = truth[f"{key}_transit_shape"][0::2]
    t = EXPOSURE[inst.name][1] - EXPOSURE[inst.name][0]
    cal = c["cal"]
    live = ~cal["dead"].ravel()
    # star-only light curve: CDS minus the expected background and dark, summed over the live pixels
    bg = (truth["background_airs_rows"][:, None] if inst is AIRS else truth["background_fgs1"])
    other = ((bg * cal["flat"] + cal["dark"]).ravel() * t)[live].sum()
    cds = np.where(c["hit"], 0.0, c["cds_raw"])  # drop the cosmic rays, then rescale the missing pixels
    weight = np.where(c["hit"], 0.0, 1.0)[:, live].sum(axis=1) / live.sum()
    flux = cds[:, live].sum(axis=1) / weight - other
    out, full = flux[shape == 0], flux[shape == 1]
    assert out.size > 10 and full.size > 5
    measured = 1 - full.mean() / out.mean()
    error = out.std(ddof=1) / out.mean() * math.sqrt(1 / out.size + 1 / full.size)
    if inst is AIRS:
        weights = (truth["airs_column_flux"] * cal["flat"].mean(axis=0))
        expected = np.sum(truth["depth_airs"] * weights) / weights.sum()
    else:
        expected = float(truth["depth_fgs1"])
    assert abs(measured - expected) < 4 * error + 3e-4
    assert error < expected / 3  # the check can tell a transit from none


def test_simulating_over_another_simulations_planets_is_refused(tmp_path):
    """train.csv and the star info are rewritten: planets of another simulation would lose their truth."""
    from arielstream.errors import OutputError

    simulate_dataset(tmp_path, n_planets=1, scale=0.02, seed=1)
    before = (tmp_path / "train.csv").read_bytes()
    with pytest.raises(OutputError, match="would lose their truth"):
        simulate_dataset(tmp_path, n_planets=1, scale=0.02, seed=2)
    assert (tmp_path / "train.csv").read_bytes() == before


# ---------------------------------------------------------------- hot pixels in the trace core
def test_trace_hot_pixels_change_only_their_dark(tmp_path):
    """trace_hot_pixels: n live trace-core pixels get a 1-10 e/s dark, kept in visit 1; no other draw changes."""
    n = 5
    plain = simulate_dataset(tmp_path / "plain", n_planets=2, scale=0.005, seed=3, cosmic_rate=0.0)
    hot = simulate_dataset(tmp_path / "hot", n_planets=2, scale=0.005, seed=3, cosmic_rate=0.0, trace_hot_pixels=n)
    assert hot == plain
    assert (tmp_path / "hot" / "train.csv").read_bytes() == (tmp_path / "plain" / "train.csv").read_bytes()
    manifest = json.loads((tmp_path / "hot" / "simulation_truth" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["trace_hot_pixels"] == n
    assert "trace_hot_pixels" not in json.loads(
        (tmp_path / "plain" / "simulation_truth" / "manifest.json").read_text())["splits"]["train"]
    # the core: the two rows nearest the trace centre (15.5 + 0.4 ((c - 178) / 178)²: rows 15 and 16) of each
    # target column
    lo, hi = AIRS_CUT
    core = np.sort(np.concatenate([15 * AIRS.columns + np.arange(lo, hi), 16 * AIRS.columns + np.arange(lo, hi)]))
    np.testing.assert_array_equal(sim.trace_core_pixels(), core)
    pid, n_visits = plain[1]
    assert n_visits == 2
    chosen = None
    for v in range(n_visits):
        a = np.load(tmp_path / "plain" / "simulation_truth" / "train" / f"{pid}_visit{v}.npz")
        b = np.load(tmp_path / "hot" / "simulation_truth" / "train" / f"{pid}_visit{v}.npz")
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            if key != "dark_airs":
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        changed = np.flatnonzero(a["dark_airs"].ravel() != b["dark_airs"].ravel())
        if chosen is None:
            chosen = changed
            assert changed.size == n and np.isin(changed, core).all()
            assert not b["dead_airs"].ravel()[changed].any()
            assert np.all((b["dark_airs"].ravel()[changed] >= 1.0) & (b["dark_airs"].ravel()[changed] <= 10.0))
        np.testing.assert_array_equal(changed, chosen)  # visit 1 keeps them
        folder_a, folder_b = tmp_path / "plain" / "train" / str(pid), tmp_path / "hot" / "train" / str(pid)
        assert (folder_a / FGS1.signal_name(v)).read_bytes() == (folder_b / FGS1.signal_name(v)).read_bytes()
        raw_a = read_signal(folder_a / AIRS.signal_name(v)).astype(np.float64)
        raw_b = read_signal(folder_b / AIRS.signal_name(v)).astype(np.float64)
        others = np.ones(AIRS.pixels, dtype=bool)
        others[chosen] = False
        np.testing.assert_array_equal(raw_a[:, others], raw_b[:, others])  # the same noise draws
        # the end read of each pair holds the extra dark charge (dark difference x 4.6 s, in ADU)
        extra = (b["dark_airs"].ravel() - a["dark_airs"].ravel())[chosen] * EXPOSURE[AIRS.name][1] * GAIN
        measured = (raw_b[1::2, chosen] - raw_a[1::2, chosen]).mean(axis=0)
        np.testing.assert_allclose(measured, extra, rtol=0.1, atol=1.0)


# ---------------------------------------------------------------- Parquet layouts
@pytest.fixture(scope="module")
def sim_layouts(tmp_path_factory, sim_a):
    """Planet 0 of sim_a in every layout (the pyarrow one is sim_a itself): ``({layout: root}, (pid, visits))``."""
    root, result = sim_a
    roots = {"pyarrow": root}
    for layout in PARQUET_LAYOUTS:
        if layout != "pyarrow":
            roots[layout] = tmp_path_factory.mktemp(f"sim_{layout}")
            simulate_dataset(roots[layout], n_planets=1, scale=SCALE, seed=SEED, background_fraction=1.0,
                             parquet_layout=layout)
    return roots, result[0]


def page_list(path: Path, meta: pq.ColumnChunkMetaData | None = None,
              raw: np.ndarray | None = None) -> list[tuple[int, ...]]:
    """``(page type, encoding, values, has a CRC)`` of each page of a column chunk (arielstream.io.pages' parser).

    ``meta``: the chunk (default: the first column of the first row group); ``raw``: the file's bytes.
    """
    meta = pq.ParquetFile(path).metadata.row_group(0).column(0) if meta is None else meta
    raw = np.fromfile(path, np.uint8) if raw is None else raw
    pos = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
    end = pos + meta.total_compressed_size
    h = np.zeros(pages.N_HEADER, np.int64)
    found = []
    while pos < end:
        data = int(pages._header(raw, pos, end, h))
        assert data > 0, f"{path}: a page header the parser refuses"
        found.append((int(h[pages.H_TYPE]), int(h[pages.H_ENC]), int(h[pages.H_NVAL]), int(h[pages.H_HAS_CRC])))
        pos = data + int(h[pages.H_COMP])
    return found


def check_layout_of(path: Path, layout: str, columns: list[int]) -> None:
    """The file and its ``columns`` are as ``layout`` says (arielstream.simulate.layouts)."""
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    raw = np.fromfile(path, np.uint8)
    assert meta.num_row_groups == 1
    for j in columns:
        chunk = meta.row_group(0).column(j)
        assert chunk.compression == "ZSTD", (path, j)
        assert chunk.has_offset_index == chunk.has_column_index == (layout != "pyarrow"), (path, j)
        assert meta.schema.column(j).max_definition_level == (0 if layout == "pyarrow" and "signal" in path.name
                                                              else 1)  # REQUIRED or OPTIONAL
        found = page_list(path, chunk, raw)
        assert not any(crc for *_, crc in found)
        kinds = [(kind, encoding) for kind, encoding, *_ in found]
        rows = meta.num_rows
        if layout == "polars" or chunk.physical_type == "BOOLEAN":  # (pyarrow dictionary-encodes no booleans)
            assert set(chunk.encodings) == {"PLAIN", "RLE"} and not chunk.has_dictionary_page
            if layout != "pyarrow":
                assert found == [(pages.DATA_PAGE, pages.PLAIN, rows, 0)]  # one data page v1 a chunk
        elif layout == "zstd-dictionary":
            assert "RLE_DICTIONARY" in chunk.encodings
            assert kinds[0] == (pages.DICTIONARY_PAGE, pages.PLAIN)
            assert found[1:] == [(pages.DATA_PAGE, pages.RLE_DICTIONARY, rows, 0)]
        else:
            assert "RLE_DICTIONARY" in chunk.encodings and kinds[0][0] == pages.DICTIONARY_PAGE


@pytest.mark.parametrize("layout", PARQUET_LAYOUTS)
def test_each_layout_writes_its_parquet_layout(sim_layouts, layout):
    roots, (pid, n_visits) = sim_layouts
    folder = roots[layout] / "train" / str(pid)
    for v in range(n_visits):
        for inst in (AIRS, FGS1):
            path = folder / inst.signal_name(v)
            check_layout_of(path, layout, [*range(0, inst.pixels, 97), inst.pixels - 1])
            column = pq.ParquetFile(path).metadata.schema.column(0)
            assert column.physical_type == "INT32" and str(column.logical_type) == "Int(bitWidth=16, isSigned=false)"
            for name in CALIBRATION_NAMES:
                check_layout_of(folder / inst.calibration_dir(v) / f"{name}.parquet", layout, [0, inst.columns - 1])
    # axis_info.parquet keeps pyarrow's layout (the real one is pyarrow-written); the manifest names the layout
    assert (roots[layout] / "axis_info.parquet").read_bytes() == (roots["pyarrow"] / "axis_info.parquet").read_bytes()
    run = json.loads((roots[layout] / "simulation_truth" / "manifest.json").read_text())["splits"]["train"]
    assert run.get("parquet_layout") == (None if layout == "pyarrow" else layout)  # absent for the default


def test_the_named_layouts_write_one_page_where_the_default_writer_splits(tmp_path):
    """A column of 300,000 values (1.2 MB PLAIN): pyarrow's defaults split it into pages, the layouts do not."""
    values = np.random.default_rng(0).integers(0, 65536, 300_000).astype(np.uint16)
    table = pa.Table.from_arrays([pa.array(values)], names=["column_0"])
    found = {}
    for layout in PARQUET_LAYOUTS:
        pq.write_table(table, tmp_path / f"{layout}.parquet", **writer_options(layout, "zstd"))
        found[layout] = [kind for kind, *_ in page_list(tmp_path / f"{layout}.parquet")]
    assert found["polars"] == [pages.DATA_PAGE]
    assert found["zstd-dictionary"] == [pages.DICTIONARY_PAGE, pages.DATA_PAGE]
    plain_defaults = dict(writer_options("polars", "zstd"), data_page_size=1 << 20)
    plain_defaults.pop("max_rows_per_page", None)
    pq.write_table(table, tmp_path / "split.parquet", **plain_defaults)
    assert len(page_list(tmp_path / "split.parquet")) > 1  # (so the first assertion can fail)


def test_every_layout_holds_the_same_values_through_either_decoder(sim_layouts, monkeypatch):
    """Every layout holds the same signal, calibration and truth, read by either decoder.

    The page decoder (ARIELSTREAM_DECODER=pages) decodes every layout itself: no fallback to pyarrow.
    """
    roots, (pid, n_visits) = sim_layouts
    reference = roots["pyarrow"]
    for layout, root in roots.items():
        for v in range(n_visits):
            a, b = np.load(reference / "simulation_truth" / "train" / f"{pid}_visit{v}.npz"), \
                np.load(root / "simulation_truth" / "train" / f"{pid}_visit{v}.npz")
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{layout} {key}")
            for inst in (AIRS, FGS1):
                expected = read_signal(reference / "train" / str(pid) / inst.signal_name(v))
                path = root / "train" / str(pid) / inst.signal_name(v)
                np.testing.assert_array_equal(read_signal(path), expected, err_msg=layout)
                for name in CALIBRATION_NAMES:
                    np.testing.assert_array_equal(
                        read_calibration(root / "train" / str(pid) / inst.calibration_dir(v), name),
                        read_calibration(reference / "train" / str(pid) / inst.calibration_dir(v), name))
                pixels = np.arange(0, inst.pixels, 7)
                for decoder in pages.CHOICES:
                    monkeypatch.setenv(pages.ENV, decoder)
                    signal = SignalFile(path, inst)
                    np.testing.assert_array_equal(signal.read_block([0], pixels), expected[:, pixels].T,
                                                  err_msg=f"{layout} {decoder}")
                    if decoder == "pages" and pages.COMPILED_KERNELS is not None:
                        assert signal._pages is not None, f"{layout}: the page decoder fell back to pyarrow"


def test_a_named_layout_with_another_codec_is_a_one_line_configuration_error(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["simulate", str(out), "--planets", "1", "--scale", "0.005", "--parquet-layout", "polars",
                     "--compression", "snappy"])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG and not out.exists()
    assert err.count("\n") == 1 and "--compression snappy" in err and "--parquet-layout polars" in err


def test_the_bench_floor_decodes_every_layout_as_pyarrow_does(sim_layouts):
    """``make bench``'s physical floor (benchmarks.decode) decodes real values, not just time."""
    pytest.importorskip("numba")
    from benchmarks import decode

    roots, (pid, _) = sim_layouts
    for layout, root in roots.items():
        for inst in (AIRS, FGS1):
            path = root / "train" / str(pid) / inst.signal_name(0)
            pixels = decode.needed_pixels(inst)
            block, stats = decode.decode_floor(path, pixels, pixels.size // inst.rows)
            np.testing.assert_array_equal(block, read_signal(path)[:, pixels].T, err_msg=f"{layout} {inst.name}")
            assert stats["decompress"] > 0 and stats["decode"] > 0
