"""User mistakes end in a one-line message naming the option, a documented exit code, and nothing laid out."""

from __future__ import annotations

import json
import socket

import pytest

from arielstream.cli.app import main
from arielstream.cli.exits import EXIT_CANTCREAT, EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from arielstream.run.budget import physical_memory

from .conftest import DATA_SAMPLES


def cli(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of ``arielstream ARGS`` run in this process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: a connection is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SIMULATE = [
    (["--seed", "-1"], "argument --seed: must be >= 0"),
    (["--scale", "inf"], "argument --scale: not a finite number"),
    (["--scale", "nan"], "argument --scale: not a finite number"),
    (["--two-visit-fraction", "1.5"], "argument --two-visit-fraction: must be within [0, 1]"),
    (["--background-fraction", "-0.1"], "argument --background-fraction: must be within [0, 1]"),
    (["--cosmic-rate", "-1"], "argument --cosmic-rate: must be >= 0"),
    (["--compression", "foo"], "argument --compression: invalid choice: 'foo'"),
]


@pytest.mark.parametrize("args,message", SIMULATE)
def test_simulate_refuses_bad_arguments(capsys, tmp_path, args, message):
    code, err = cli(capsys, "simulate", tmp_path / "sim", "--planets", 1, "--scale", 0.01, *args)
    assert code == EXIT_USAGE and message in err
    assert not (tmp_path / "sim").exists()


def test_simulate_refuses_a_file_as_its_folder(capsys, tmp_path):
    out = tmp_path / "sim"
    out.write_text("precious")
    code, err = cli(capsys, "simulate", out, "--planets", 1, "--scale", 0.01)
    assert code == EXIT_CANTCREAT and f"{out}: is a file" in err
    assert out.read_text() == "precious"


CONFIG_FILES = [
    ("[run]\nplanets = \"abc\"\n", "planets must be a list of planet ids (integers); got 'abc'"),
    ("[run]\nplanets = [73079497, \"2\"]\n", "planets must be a list of planet ids"),
    ("[run]\nsplit = 5\n", "split must be a folder name"),
    ("[run]\ntask_timeout = \"x\"\n", "task_timeout must be a positive number of seconds; got 'x'"),
    ("[run]\nprogress = 1\n", "progress must be true or false; got 1"),
    ("[calibration]\nhot_sigma = \"x\"\n", "hot_sigma must be a number; got 'x'"),
    ("[calibration]\nairs_bin = 2.5\n", "airs_bin must be an integer; got 2.5"),
    ("[calibration]\ninstruments = 5\n", "instruments must be a list; got 5"),
    ("[calibration]\ncr_sigmas = [8, \"x\"]\n", "cr_sigmas must be a list of numbers"),
    ("[calbration]\nhot_sigma = 3.0\n", "unknown table(s) or top-level key(s) calbration"),
    ("hot_sigma = 3.0\n", "unknown table(s) or top-level key(s) hot_sigma"),
    ("[calibration]\nhot_sigmaa = 3.0\n", "unknown option(s): hot_sigmaa"),
    ("[run]\njob = 2\n", "unknown option(s) in [run]: job"),
]


@pytest.mark.parametrize("text,message", CONFIG_FILES)
def test_config_file_mistakes(capsys, tmp_path, text, message):
    config = tmp_path / "run.toml"
    config.write_text(text)
    out = tmp_path / "o.h5"
    code, err = cli(capsys, "calibrate", DATA_SAMPLES, "-o", out, "--config", config)
    assert code == EXIT_CONFIG and f"run.toml: {message}" in err
    assert list(tmp_path.iterdir()) == [config]  # nothing laid out


def test_config_file_that_is_not_utf8_or_a_folder(capsys, tmp_path):
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[run]\n")
    code, err = cli(capsys, "calibrate", DATA_SAMPLES, "-o", tmp_path / "o.h5", "--config", binary)
    assert code == EXIT_CONFIG and "bin.toml: not UTF-8 text" in err
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    code, err = cli(capsys, "calibrate", DATA_SAMPLES, "-o", tmp_path / "o.h5", "--config", folder)
    assert code == EXIT_CONFIG and "folder.toml: is a folder" in err
    assert not (tmp_path / "o.h5.partial").exists()


def command_line_mistakes() -> list:
    return [
        (["--memory", "2"], EXIT_CONFIG, "--memory 2 (memory='2' from Python): memory budget 2 B is too small"),
        (["--memory", f"{physical_memory() * 2}"], EXIT_CONFIG, "is more than this machine's memory"),
        (["--spatial-bin", "5"], EXIT_CONFIG,
         "spatial_bin must divide the 32 detector rows: one of 1, 2, 4, 8, 16, 32; got 5"),
        (["--spatial-bin", "64"], EXIT_CONFIG, "spatial_bin must divide the 32 detector rows"),
        (["--backend", "dask", "--scheduler", f"tcp://127.0.0.1:{_closed_port()}"], EXIT_CONFIG,
         "cannot reach the dask scheduler"),
        (["--task-timeout", "inf"], EXIT_USAGE, "argument --task-timeout: not a finite number"),
    ]


@pytest.mark.parametrize("args,code,message", command_line_mistakes())
def test_calibrate_command_line_mistakes(capsys, tmp_path, args, code, message):
    if "dask" in args:
        pytest.importorskip("distributed")
    got, err = cli(capsys, "calibrate", DATA_SAMPLES, "-o", tmp_path / "o.h5", "--no-progress", *args)
    assert got == code and message in err
    assert list(tmp_path.iterdir()) == []  # refused before the output (or its lock, log, partial) is laid out


def test_output_naming_a_folder_is_refused_before_any_work(capsys, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    code, err = cli(capsys, "calibrate", DATA_SAMPLES, "-o", folder, "--no-progress")
    assert code == EXIT_CANTCREAT and f"{folder}: is a folder" in err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_bin_that_drops_samples_says_so(capsys, tmp_path):
    """--airs-bin 7 drops the incomplete last bin of every observation: logged as a warning, with the count."""
    n_frames = json.loads((DATA_SAMPLES / "simulation_truth" / "manifest.json").read_text())["airs_frames"]
    samples = n_frames // 2  # CDS pairs
    assert samples % 7  # the sample makes the case: 7 does not divide it
    out = tmp_path / "o.h5"
    code, err = cli(capsys, "calibrate", DATA_SAMPLES, "-o", out, "--planets", 73079497, "--instruments", "AIRS-CH0",
                    "--airs-bin", 7, "--no-progress")
    assert code == EXIT_OK
    line = f"airs_bin 7 leaves the last {samples % 7} of {samples} CDS samples of every observation"
    assert line in err and "WARNING" in err  # on the console
    assert line in (tmp_path / "o.h5.log").read_text()
    # --quiet (cron) prints nothing on success: the warning is in the log file only
    code, err = cli(capsys, "calibrate", DATA_SAMPLES, "-o", out, "--planets", 73079497, "--instruments", "AIRS-CH0",
                    "--airs-bin", 7, "--no-progress", "-q", "--force")
    assert code == EXIT_OK and err == ""
    assert (tmp_path / "o.h5.log").read_text().count(line) == 2


def test_a_time_bin_longer_than_the_observation_is_a_configuration_error(capsys, tmp_path):
    """A bin width is the user's choice: exit 78 naming the option, not 66 blaming axis_info.parquet."""
    code, err = cli(capsys, "calibrate", DATA_SAMPLES, "-o", tmp_path / "o.h5", "--airs-bin", 1000, "--no-progress")
    assert code == EXIT_CONFIG
    assert "airs_bin 1000" in err and "give at most" in err and "Traceback" not in err
    assert not (tmp_path / "o.h5").exists()
