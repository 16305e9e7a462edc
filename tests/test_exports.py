"""Exports: notebook .npy, FITS cubes with provenance, light-curve tables; all equal to the HDF5 they came from."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import arielstream
from arielstream.cli import app as cli
from arielstream.errors import InputError, OutputError
from arielstream.io.schema import STATUS_FAILED
from arielstream.products import exports
from arielstream.products import lightcurves as lc

from .conftest import DATA_SAMPLES


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "samples.h5"
    arielstream.calibrate(DATA_SAMPLES, out, jobs=1, progress=False, log_file=False)
    return out


@pytest.fixture(scope="module")
def one_failed(calibrated, tmp_path_factory):
    """A copy of the file in which observation 1 is marked failed: exports must skip it."""
    copy = tmp_path_factory.mktemp("exports_failed") / "failed.h5"
    shutil.copy(calibrated, copy)
    with h5py.File(copy, "r+") as f:
        f["status"][1] = STATUS_FAILED
    return copy


def test_npy_equals_the_hdf5_slices(calibrated, tmp_path):
    written = exports.export_npy(calibrated, tmp_path, wavelength_order="file")
    airs = np.load(written["AIRS-CH0"], mmap_mode="r")
    fgs1 = np.load(written["FGS1"], mmap_mode="r")
    assert written["AIRS-CH0"].name == "data_train.npy" and written["FGS1"].name == "data_train_FGS.npy"
    with h5py.File(calibrated) as f:
        n, bins = f["planet_id"].shape[0], f["AIRS-CH0/time"].shape[0]
        assert airs.shape == (n, bins, 282, 32) and airs.dtype == np.float64
        assert fgs1.shape == (n, bins, 32, 32) and fgs1.dtype == np.float64
        for i in range(n):
            np.testing.assert_array_equal(airs[i], f["AIRS-CH0/signal"][i].astype(np.float64))
            np.testing.assert_array_equal(fgs1[i], f["FGS1/signal"][i].astype(np.float64))
        with open(written["index"], newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(int(r["planet_id"]), int(r["visit"])) for r in rows] == \
            list(zip(f["planet_id"][()].tolist(), f["visit"][()].tolist(), strict=True))
    assert np.isnan(airs[0]).any(), "default profile: bad pixels stay NaN unless a fill value is asked for"


@pytest.mark.parametrize("visits", ["first", "mean"])
def test_npy_one_row_per_planet_for_the_baseline(calibrated, tmp_path, visits, capsys):
    assert cli.main(["export", str(calibrated), "--format", "npy", "-o", str(tmp_path), "--visits", visits,
                     "--wavelength-order", "file", "--fill-value", "0"]) == 0
    airs = np.load(tmp_path / "data_train.npy")
    fgs1 = np.load(tmp_path / "data_train_FGS.npy")
    with open(tmp_path / "data_train_index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with h5py.File(calibrated) as f:
        pairs = list(zip(f["planet_id"][()].tolist(), f["visit"][()].tolist(), strict=True))
        planets = list(dict.fromkeys(p for p, _ in pairs))
        assert [int(r["planet_id"]) for r in rows] == planets and airs.shape[0] == fgs1.shape[0] == len(planets)
        two = next(p for p in planets if sum(q == p for q, _ in pairs) == 2)  # the sample planet with two visits
        k = planets.index(two)
        first, second = pairs.index((two, 0)), pairs.index((two, 1))
        both = f["AIRS-CH0/signal"][[first, second]].astype(np.float64)
        valid = ~np.isnan(both)  # the mean ignores NaN, written by hand: nanmean warns on all-NaN pixels
        mean = np.where(valid.any(axis=0), np.where(valid, both, 0).sum(axis=0) / np.maximum(valid.sum(axis=0), 1),
                        np.nan)
        expected = both[0] if visits == "first" else mean
        np.testing.assert_allclose(airs[k], np.nan_to_num(expected, nan=0.0), rtol=1e-12)
        assert rows[k]["visit"] == "0" and rows[k]["visits"] == {"first": "0", "mean": "0;1"}[visits]
    assert not np.isnan(airs).any() and not np.isnan(fgs1).any()  # --fill-value 0: what the baseline's models read


def test_npy_in_the_notebooks_detector_order(calibrated, tmp_path):
    written = exports.export_npy(calibrated, tmp_path, wavelength_order="detector", dtype="float32", fill_value=0.0)
    airs = np.load(written["AIRS-CH0"])
    with h5py.File(calibrated) as f:
        order = exports.x_order(f["AIRS-CH0/wavelength"][()], "detector")
        columns = f["AIRS-CH0/column"][()][order]
        np.testing.assert_array_equal(columns, np.arange(39, 321))  # the notebook's 39:321 slice
        expected = np.nan_to_num(f["AIRS-CH0/signal"][2][:, order], nan=0.0)
    assert airs.dtype == np.float32 and not np.isnan(airs).any()
    np.testing.assert_array_equal(airs[2], expected)


def test_npy_default_is_the_notebooks_order_and_nan_are_counted(calibrated, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="arielstream"):
        written = exports.export_npy(calibrated, tmp_path)
    airs = np.load(written["AIRS-CH0"], mmap_mode="r")
    with h5py.File(calibrated) as f:
        order = exports.x_order(f["AIRS-CH0/wavelength"][()], "detector")
        np.testing.assert_array_equal(f["AIRS-CH0/column"][()][order], np.arange(39, 321))
        for i in range(airs.shape[0]):
            np.testing.assert_array_equal(airs[i], f["AIRS-CH0/signal"][i][:, order].astype(np.float64))
        nans = sum(int(np.isnan(f[f"{inst}/signal"][()]).sum()) for inst in ("AIRS-CH0", "FGS1"))
    assert nans > 0
    assert any(f"{nans} NaN" in r.getMessage() and "--fill-value 0" in r.getMessage() for r in caplog.records)
    assert exports.x_order(np.arange(3.0), "file") is None and exports.x_order(np.arange(3.0), None) is None
    args = cli.build_parser().parse_args(["export", str(calibrated), "--format", "npy", "-o", str(tmp_path)])
    assert args.wavelength_order == "detector"
    assert cli.build_parser().parse_args(["export", str(calibrated), "--format", "npy", "-o", str(tmp_path),
                                          "--wavelength-order", "file"]).wavelength_order == "file"


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_npy_disk_full_in_the_second_file_keeps_the_previous_export(calibrated, tmp_path, monkeypatch):
    exports.export_npy(calibrated, tmp_path, dtype="float32", fill_value=0.0)
    before = _contents(tmp_path)
    assert set(before) == {"data_train.npy", "data_train_FGS.npy", "data_train_index.csv"}
    real, calls = os.posix_fallocate, []

    def full_disk_on_the_second(fd, offset, length):
        calls.append(length)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", full_disk_on_the_second)
    with pytest.raises(OutputError, match=r"data_train_FGS\.npy: cannot reserve .*No space left"):
        exports.export_npy(calibrated, tmp_path, observations=[0, 2])
    assert calls[0] >= 2 * 282 * 8  # the whole file of the first, reserved before its memmap writes
    assert _contents(tmp_path) == before, "no partial left, earlier files byte-identical"


def test_npy_index_write_failure_keeps_the_previous_export(calibrated, tmp_path):
    exports.export_npy(calibrated, tmp_path, dtype="float32")
    before = _contents(tmp_path)
    (tmp_path / "data_train_index.csv.partial").mkdir()  # in the way of the third file
    with pytest.raises(OutputError, match=r"data_train_index\.csv: cannot write"):
        exports.export_npy(calibrated, tmp_path, observations=[1])
    assert _contents(tmp_path) == before
    assert cli.main(["export", str(calibrated), "--format", "npy", "-o", str(tmp_path), "-q"]) == cli.EXIT_CANTCREAT
    assert _contents(tmp_path) == before


def test_npy_removes_a_stale_file_of_a_missing_instrument(calibrated, tmp_path, caplog):
    airs_only = tmp_path / "airs_only.h5"
    shutil.copy(calibrated, airs_only)
    with h5py.File(airs_only, "r+") as f:
        del f["FGS1"]
    out = tmp_path / "npy"
    exports.export_npy(calibrated, out)
    with caplog.at_level(logging.WARNING, logger="arielstream"):
        written = exports.export_npy(airs_only, out)
    assert set(written) == {"AIRS-CH0", "index"}
    assert sorted(p.name for p in out.iterdir()) == ["data_train.npy", "data_train_index.csv"]
    assert any("data_train_FGS.npy: removed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("fmt", "in_the_way"), [("csv", "lightcurves.csv.partial"),
                                                 ("parquet", "lightcurves.parquet"),
                                                 ("fits", "FITS")])
def test_write_failures_are_output_errors_naming_the_file(calibrated, tmp_path, fmt, in_the_way):
    with h5py.File(calibrated) as f:
        first = f"{int(f['planet_id'][0])}_visit{int(f['visit'][0])}.fits"
    name = first if in_the_way == "FITS" else in_the_way
    (tmp_path / name / "x").mkdir(parents=True)  # a non-empty folder where the file (or its partial) goes
    target = name.removesuffix(".partial")
    with pytest.raises(OutputError, match=f"{target}: cannot"):
        exports.export(calibrated, tmp_path, fmt, observations=[0])
    assert not (tmp_path / f"{target}.partial").is_file()
    assert cli.main(["export", str(calibrated), "--format", fmt, "-o", str(tmp_path), "--obs", "0", "-q"]) \
        == cli.EXIT_CANTCREAT


def test_light_curve_file_observations_are_source_indices(calibrated, tmp_path):
    lc_file = lc.extract(calibrated, tmp_path / "lc.h5", observations=[0, 2])
    with h5py.File(calibrated) as f:
        planet, visit = int(f["planet_id"][2]), int(f["visit"][2])
    [one] = exports.iter_light_curves(lc_file, observations=[2])
    assert (one.index, one.planet_id, one.visit) == (2, planet, visit)
    table = pq.read_table(exports.export_table(lc_file, tmp_path / "t", "parquet", observations=[2]))
    assert set(table.column("planet_id").to_pylist()) == {planet}
    with pytest.raises(lc.SelectionError, match="observation 1 is not in the light-curve file"):
        list(exports.iter_light_curves(lc_file, observations=[1]))
    with pytest.raises(lc.SelectionError):
        list(exports.iter_light_curves(lc_file, observations=[5]))
    args = ["export", str(lc_file), "--format", "csv", "-o", str(tmp_path / "t"), "--obs", "1", "-q"]
    assert cli.main(args) == 2
    assert not (tmp_path / "t" / "lightcurves.csv").exists()


def test_fits_cubes_carry_the_provenance(calibrated, tmp_path):
    from astropy.io import fits

    paths = exports.export_fits(calibrated, tmp_path)
    with h5py.File(calibrated) as f:
        assert len(paths) == f["planet_id"].shape[0]
        i = 2
        planet, visit = int(f["planet_id"][i]), int(f["visit"][i])
        assert paths[i].name == f"{planet}_visit{visit}.fits"
        with fits.open(paths[i]) as hdul:
            header = hdul[0].header
            assert json.loads(header["CONFIG"]) == json.loads(f.attrs["config"])  # CONTINUE cards reassembled
            assert header["PLANETID"] == planet and header["VISIT"] == visit
            assert header["PROFILE"] == f.attrs["profile"] and header["ASVER"] == f.attrs["arielstream_version"]
            # the data folder's name, not this machine's absolute path
            assert header["SOURCE"] == Path(str(f.attrs["source"])).name and "/" not in header["SOURCE"]
            assert exports.config_from_fits(paths[i])["airs_bin"] == 30
            table = hdul["CONFIG"].data
            assert json.loads(table["PROVENANCE"][0]) == json.loads(f["provenance"][i].decode())
            assert json.loads(table["RECIPE"][0]) == json.loads(f.attrs["recipe"])
            for inst in ("AIRS-CH0", "FGS1"):
                np.testing.assert_array_equal(hdul[inst].data, f[f"{inst}/signal"][i])
                assert hdul[inst].header["BUNIT"] == "electron"
                dq = hdul[f"{inst}_DQ"].data
                assert dq.dtype == np.uint16
                np.testing.assert_array_equal(dq, f[f"{inst}/dq"][i])
                np.testing.assert_array_equal(hdul[f"{inst}_TIME"].data["TIME"], f[f"{inst}/time"][()])
            axis = hdul["AIRS-CH0_AXIS"].data
            np.testing.assert_array_equal(axis["COLUMN"], f["AIRS-CH0/column"][()])
            assert axis["LABEL"][0] == "wl_2"
            assert hdul["FGS1_AXIS"].columns.names == ["COLUMN"]  # a photometer: no wavelength axis


def test_fits_is_standard_with_a_wavelength_and_time_wcs(calibrated, tmp_path):
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS

    paths = exports.export_fits(calibrated, tmp_path, observations=[0])
    with h5py.File(calibrated) as f, fits.open(paths[0]) as hdul, warnings.catch_warnings():
        warnings.simplefilter("error")  # astropy's verify: no warning (long strings, card lengths, ...)
        hdul.verify("exception")
        header = hdul[0].header
        assert header["TELESCOP"] == "Ariel" and header["OBJECT"] == str(f["planet_id"][0])
        assert header["INSTRUME"] == "AIRS-CH0,FGS1" and header["DATE"].startswith("20")
        cube = hdul["AIRS-CH0"]
        assert cube.header["INSTRUME"] == "AIRS-CH0" and cube.header["BUNIT"] == "electron"
        wcs = WCS(cube.header, fobj=hdul)
        wavelength, time = f["AIRS-CH0/wavelength"][()], f["AIRS-CH0/time"][()]
        _, world_x, _ = wcs.pixel_to_world_values(np.zeros(wavelength.size), np.arange(wavelength.size),
                                                  np.zeros(wavelength.size))
        np.testing.assert_allclose(world_x, wavelength, rtol=1e-12)  # WAVE-TAB: exact, not a linear fit
        _, _, world_t = wcs.pixel_to_world_values(np.zeros(time.size), np.zeros(time.size), np.arange(time.size))
        np.testing.assert_allclose(world_t, time * 3600, rtol=1e-9)  # seconds from the observation's start
        assert wcs.world_axis_units[1:] == ["um", "s"]
    if shutil.which("fitsverify") is None:
        pytest.skip("fitsverify is not installed (Debian: apt-get install fitsverify)")
    import subprocess

    report = subprocess.run(["fitsverify", "-q", str(paths[0])], capture_output=True, text=True).stdout
    assert "0 warnings and 0 errors" in report or report.startswith("verification OK"), report


def expected_rows(f) -> int:
    n = int(np.sum(f["status"][()] == 1))
    t_airs, t_fgs1 = f["AIRS-CH0/time"].shape[0], f["FGS1/time"].shape[0]
    return n * (t_airs * 282 + t_airs + t_fgs1)


def test_light_curve_tables_csv_and_parquet(calibrated, tmp_path):
    csv_path = exports.export_table(calibrated, tmp_path, "csv", half_width=5)
    pq_path = exports.export_table(calibrated, tmp_path, "parquet", half_width=5)
    a, b = pacsv.read_csv(csv_path), pq.read_table(pq_path)
    assert b.column_names == list(exports.TABLE_COLUMNS)
    assert a.num_rows == b.num_rows
    with h5py.File(calibrated) as f:
        assert b.num_rows == expected_rows(f)
        ref = lc.observation_light_curves(f, 1, half_width=5)
    np.testing.assert_allclose(a.column("flux").to_numpy(), b.column("flux").to_numpy(), rtol=1e-12)
    t = b.to_pydict()
    planet, inst, label = np.array(t["planet_id"]), np.array(t["instrument"]), np.array(t["wavelength_label"])
    visit = np.array(t["visit"])
    sel = (planet == ref.planet_id) & (visit == ref.visit) & (inst == "AIRS-CH0") & (label == "wl_100")
    np.testing.assert_allclose(np.array(t["flux"])[sel], ref.airs_flux[:, ref.wavelength_label.index("wl_100")])
    np.testing.assert_allclose(np.array(t["time"])[sel], ref.airs_time)
    sel = (planet == ref.planet_id) & (visit == ref.visit) & (inst == "FGS1")
    assert set(label[sel]) == {"wl_1"}
    np.testing.assert_allclose(np.array(t["flux_err"])[sel], ref.fgs1_flux_err)
    white = (planet == ref.planet_id) & (visit == ref.visit) & (inst == "AIRS-CH0-white")
    assert np.isnan(np.array(t["wavelength"])[white]).all()
    np.testing.assert_allclose(np.median(np.array(t["normalised_flux"])[white]), 1.0)
    assert pq.ParquetFile(pq_path).metadata.num_row_groups >= 3  # streamed: one write per observation


def test_tables_from_a_light_curve_file_equal_tables_from_the_cube(calibrated, tmp_path):
    lc_file = lc.extract(calibrated, tmp_path / "lc.h5", weighted=True)
    from_cube = pq.read_table(exports.export_table(calibrated, tmp_path / "a", "parquet", weighted=True))
    from_lc = pq.read_table(exports.export_table(lc_file, tmp_path / "b", "parquet"))
    assert from_lc.schema.equals(from_cube.schema) and from_lc.num_rows == from_cube.num_rows
    for name in from_cube.column_names:
        x = from_cube.column(name).to_numpy(zero_copy_only=False)
        y = from_lc.column(name).to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y)  # NaN (white-light wavelength) equal to NaN
        else:
            assert (x == y).all(), name


def test_exports_skip_observations_that_are_not_done(one_failed, tmp_path):
    written = exports.export_npy(one_failed, tmp_path)
    assert np.load(written["FGS1"], mmap_mode="r").shape[0] == 2
    assert len(exports.export_fits(one_failed, tmp_path)) == 2
    table = pq.read_table(exports.export_table(one_failed, tmp_path, "parquet"))
    with h5py.File(one_failed) as f:
        assert table.num_rows == expected_rows(f)
        skipped = int(f["planet_id"][1]), int(f["visit"][1])
    pairs = set(zip(table.column("planet_id").to_pylist(), table.column("visit").to_pylist(), strict=True))
    assert skipped not in pairs


def test_bad_requests_raise_clear_errors(calibrated, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        exports.export(calibrated, tmp_path, "xlsx")
    with pytest.raises(ValueError, match="wavelength_order"):
        exports.export_npy(calibrated, tmp_path, wavelength_order="reversed")
    not_ours = tmp_path / "other.h5"
    with h5py.File(not_ours, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not an arielstream output"):
        exports.export_fits(not_ours, tmp_path)


def test_options_that_cannot_apply_are_refused_not_ignored(calibrated, tmp_path, capsys):
    """--visits outside npy, extraction options outside csv/parquet or on a light-curve file: exit 2, one line."""
    lc_file = lc.extract(calibrated, tmp_path / "lc.h5", observations=[0])
    cases = [
        (["export", str(calibrated), "--format", "csv", "--visits", "first"], "--visits first applies to"),
        (["export", str(calibrated), "--format", "fits", "--half-width", "3"], "apply to --format csv|parquet"),
        (["export", str(lc_file), "--format", "csv", "--half-width", "3"], "holds light curves already"),
    ]
    for argv, message in cases:
        assert cli.main([*argv, "-o", str(tmp_path / "x")]) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_nothing_done_to_export_or_extract_is_refused_not_written_empty(one_failed, tmp_path, capsys):
    """Observation 1 failed: asking only for it writes no empty file that looks complete (exit 66)."""
    for argv in (["export", str(one_failed), "--format", "npy", "-o", str(tmp_path / "npy")],
                 ["export", str(one_failed), "--format", "csv", "-o", str(tmp_path / "csv")],
                 ["extract", str(one_failed), "-o", str(tmp_path / "lc.h5")]):
        assert cli.main([*argv, "--obs", "1"]) == cli.EXIT_NOINPUT
        err = capsys.readouterr().err
        assert "no done observation to" in err and "among observations [1]" in err
    assert not (tmp_path / "lc.h5").exists()
    assert not list((tmp_path / "npy").glob("*.npy")) if (tmp_path / "npy").exists() else True
