"""User mistakes and bad input: a clear message naming the file, an exit code, never a traceback."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from arielstream.cli import app as cli
from arielstream.cli.app import EXIT_CANTCREAT, EXIT_CONFIG, EXIT_FAILURES, EXIT_NOINPUT, EXIT_OK

from .conftest import DATA_SAMPLES, write_signal
from .test_end_to_end import run_cli


@pytest.fixture()
def data_copy(tmp_path):
    """A writable copy of data_samples (without the truth and the reference files)."""
    root = tmp_path / "data"
    shutil.copytree(DATA_SAMPLES, root, ignore=shutil.ignore_patterns("reference", "simulation_truth"))
    return root


def _planets(root):
    return sorted((root / "train").iterdir())


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_missing_data_folder(tmp_path):
    proc = run_cli("calibrate", tmp_path / "nowhere", "-o", tmp_path / "o.h5", check=False)
    assert proc.returncode == EXIT_NOINPUT
    assert "nowhere: no such data folder" in proc.stderr
    _no_traceback(proc)


def test_missing_axis_info(data_copy, tmp_path):
    (data_copy / "axis_info.parquet").unlink()
    proc = run_cli("calibrate", data_copy, "-o", tmp_path / "o.h5", check=False)
    assert proc.returncode == EXIT_NOINPUT and "axis_info.parquet: missing" in proc.stderr
    _no_traceback(proc)
    assert not (tmp_path / "o.h5").exists()


def test_unknown_planet(data_copy, tmp_path):
    proc = run_cli("calibrate", data_copy, "-o", tmp_path / "o.h5", "--planets", "12345", check=False)
    assert proc.returncode == EXIT_NOINPUT and "no data for planet(s) 12345" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing_calibration", "wrong_shape", "truncated"])
def test_one_bad_observation_fails_alone_with_its_file_named(data_copy, tmp_path, damage):
    victim = _planets(data_copy)[0]
    if damage == "missing_calibration":
        target = victim / "FGS1_calibration_0" / "flat.parquet"
        target.unlink()
        expected = "FGS1_calibration_0/flat.parquet: calibration file missing"
    elif damage == "wrong_shape":
        target = victim / "AIRS-CH0_signal_0.parquet"
        write_signal(target, np.zeros((270, 100), np.uint16))
        expected = "AIRS-CH0_signal_0.parquet: 100 columns, expected 11392"
    else:
        target = victim / "FGS1_signal_0.parquet"
        target.write_bytes(target.read_bytes()[:100_000])
        expected = "FGS1_signal_0.parquet: not a readable Parquet file"
    out = tmp_path / "o.h5"
    proc = run_cli("calibrate", data_copy, "-o", out, check=False)
    assert proc.returncode == EXIT_FAILURES
    assert expected in proc.stdout
    _no_traceback(proc)
    with h5py.File(out) as f:
        status = f["status"][()]
        failed = np.flatnonzero(status == 2)
        assert len(failed) == 1 and (np.delete(status, failed) == 1).all()
        assert expected in f["error"][failed[0]].decode()
        assert f["planet_id"][failed[0]] == int(victim.name)
        assert np.isnan(f["AIRS-CH0/signal"][failed[0]]).all()  # nothing half-written that looks valid
    info = run_cli("info", out).stdout
    assert "1 failed" in info and expected in info


def test_missing_calibration_can_be_skipped_and_is_recorded(data_copy, tmp_path):
    victim = _planets(data_copy)[0]
    (victim / "AIRS-CH0_calibration_0" / "linear_corr.parquet").unlink()
    out = tmp_path / "o.h5"
    proc = run_cli("calibrate", data_copy, "-o", out, "--missing-calibration", "skip", check=False)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "linear_corr.parquet: missing" in proc.stderr  # the warning
    with h5py.File(out) as f:
        index = list(f["planet_id"][()]).index(int(victim.name))
        prov = f["provenance"][index].decode()
        assert '"nonlinearity": "skipped: linear_corr missing"' in prov


@pytest.mark.slow
def test_a_foreign_file_at_the_output_path_is_not_replaced_without_force(data_copy, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"precious")
    proc = run_cli("calibrate", data_copy, "-o", out, check=False)
    assert proc.returncode == EXIT_CONFIG and "made by a different run" in proc.stderr and "--force" in proc.stderr
    assert out.read_bytes() == b"precious"
    run_cli("calibrate", data_copy, "-o", out, "--force")
    with h5py.File(out) as f:
        assert (f["status"][()] == 1).all()


def test_missing_output_folder(data_copy, tmp_path):
    proc = run_cli("calibrate", data_copy, "-o", tmp_path / "nowhere" / "o.h5", check=False)
    assert proc.returncode == EXIT_CANTCREAT and "output folder does not exist" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--memory", "lots"], "not a memory size"),
    (["--memory", "10MB"], "memory budget 10.00 MB is too small for 1 worker(s)"),
])
def test_bad_configuration(data_copy, tmp_path, args, message):
    proc = run_cli("calibrate", data_copy, "-o", tmp_path / "o.h5", *args, check=False)
    assert proc.returncode == EXIT_CONFIG and message in proc.stderr
    _no_traceback(proc)


def test_bad_config_file(data_copy, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[calibration]\nairs_bin = 0\n")
    proc = run_cli("calibrate", data_copy, "-o", tmp_path / "o.h5", "--config", cfg, check=False)
    assert proc.returncode == EXIT_CONFIG and "run.toml: airs_bin must be a positive integer" in proc.stderr


def test_step_switches_and_binning_from_the_command_line(data_copy, tmp_path):
    out = tmp_path / "o.h5"
    run_cli("calibrate", data_copy, "-o", out, "--skip", "flat,nonlinearity", "--airs-bin", "15",
            "--instruments", "AIRS-CH0")
    with h5py.File(out) as f:
        assert "FGS1" not in f
        n_frames = json.loads((DATA_SAMPLES / "simulation_truth" / "manifest.json").read_text())["airs_frames"]
        assert f["AIRS-CH0/signal"].shape[1] == n_frames // (2 * 15)  # 15 CDS per bin
        prov = f["provenance"][0].decode()
        assert '"flat": "off"' in prov and '"nonlinearity": "off"' in prov


def test_simulate_cli_rejects_a_bad_scale(tmp_path):
    proc = run_cli("simulate", tmp_path / "sim", "--scale", "0", check=False)
    assert proc.returncode == 2 and "must be positive" in proc.stderr


@pytest.mark.parametrize("command", [["info"], ["extract"], ["export", "--format", "npy", "-o", "{out}"],
                                     ["export", "--format", "csv", "-o", "{out}"], ["quicklook", "-o", "{out}"]])
def test_a_missing_input_file_exits_66_for_every_reader(tmp_path, capsys, command):
    missing = tmp_path / "missing.h5"
    name, *options = command
    argv = [name, str(missing), *(o.format(out=tmp_path / "out") for o in options), "-q"]
    assert cli.main(argv) == EXIT_NOINPUT
    err = capsys.readouterr().err
    assert f"arielstream: {missing}: cannot read: no such file" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # the input is checked before any output is created


def test_a_missing_output_names_the_partial_an_unfinished_run_left(tmp_path, capsys):
    missing = tmp_path / "o.h5"
    (tmp_path / "o.h5.partial").write_bytes(b"")
    assert cli.main(["info", str(missing)]) == EXIT_NOINPUT
    assert "an unfinished run left o.h5.partial" in capsys.readouterr().err
