"""Named runs (``--run NAME``): side by side, recorded, never silently replaced."""

from __future__ import annotations

import hashlib

import h5py
import pytest

import arielstream
from arielstream.cli import app as cli
from arielstream.config.options import ConfigError, RunOptions, build_config, load_config, load_run_options
from arielstream.config.template import render_config
from arielstream.run.runs import prepare_run, run_folder, run_output

from .conftest import DATA_SAMPLES


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("config", [build_config(), build_config(profile="notebook"), build_config(profile="full"),
                                    build_config(profile="notebook", nonlinearity=True, airs_bin=15,
                                                 instruments=["FGS1"], cr_sigmas=[6.0, 4.0])])
def test_the_recorded_config_reads_back_to_the_same_options(tmp_path, config):
    run = RunOptions(split="test", planets=(1, 2), memory="700MB", jobs=2, task_timeout=60.0, force=True)
    path = tmp_path / "config.toml"
    path.write_text(render_config(config, run))
    assert load_config(path) == config
    back = load_run_options(path)
    assert back == RunOptions(split="test", planets=(1, 2), memory="700MB", jobs=2, task_timeout=60.0)
    assert "force" not in path.read_text()  # an action of one call, not a setting to replay


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "-x", "x" * 101, "a b"])
def test_run_names_are_one_plain_path_component(tmp_path, name):
    with pytest.raises(ConfigError, match="run name"):
        run_folder(name, tmp_path)


def test_prepare_run_refuses_other_options_under_a_used_name(tmp_path):
    run = RunOptions()
    out = prepare_run("base", build_config(), run, tmp_path)
    assert out == run_output("base", "train", tmp_path) == tmp_path / "base" / "train.h5"
    recorded = (tmp_path / "base" / "config.toml").read_text()
    # other run options (memory, jobs) do not change the numbers: allowed, the record is kept
    assert prepare_run("base", build_config(), RunOptions(memory="4GB", split="test"), tmp_path) == \
        tmp_path / "base" / "test.h5"
    assert (tmp_path / "base" / "config.toml").read_text() == recorded
    with pytest.raises(ConfigError, match=r"other calibration options \(bad_pixels, cosmic_rays, hot_rule, "
                                          r"nonlinearity, profile"):
        prepare_run("base", build_config(profile="notebook"), run, tmp_path)
    assert (tmp_path / "base" / "config.toml").read_text() == recorded
    prepare_run("base", build_config(profile="notebook"), run, tmp_path, force=True)
    assert load_config(tmp_path / "base" / "config.toml") == build_config(profile="notebook")


def test_named_runs_sit_side_by_side(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [str(DATA_SAMPLES), "--split", "train", "--planets", "73079497", "--jobs", "1", "--no-progress", "-q"]
    assert cli.main(["calibrate", *common, "--run", "baseline"]) == 0
    first = tmp_path / "runs" / "baseline" / "train.h5"
    before = digest(first)
    assert cli.main(["calibrate", *common, "--run", "nb", "--profile", "notebook"]) == 0
    second = tmp_path / "runs" / "nb" / "train.h5"
    with h5py.File(first) as a, h5py.File(second) as b:
        assert a.attrs["profile"] == "default" and b.attrs["profile"] == "notebook"
        assert a["AIRS-CH0/signal"].shape == b["AIRS-CH0/signal"].shape
    # the same name with other options is refused (exit 78) and the first run is untouched
    assert cli.main(["calibrate", *common, "--run", "baseline", "--profile", "notebook"]) == cli.EXIT_CONFIG
    assert digest(first) == before
    assert load_config(tmp_path / "runs" / "baseline" / "config.toml") == build_config()
    # its recorded config reproduces it under a new name, to the byte of the science
    assert cli.main(["calibrate", *common, "--run", "again", "--config", "runs/baseline/config.toml"]) == 0
    with h5py.File(first) as a, h5py.File(tmp_path / "runs" / "again" / "train.h5") as c:
        assert a.attrs["config"] == c.attrs["config"]
        assert (a["AIRS-CH0/signal"][()].tobytes() == c["AIRS-CH0/signal"][()].tobytes())


def test_python_api_takes_a_run_name(tmp_path):
    summary = arielstream.calibrate(DATA_SAMPLES, run="api", runs_dir=tmp_path / "runs", planets=[73079497],
                                    jobs=1, progress=False, log_file=False)
    assert summary.output == (tmp_path / "runs" / "api" / "train.h5").resolve() and summary.ok
    with pytest.raises(ValueError, match="either an output file or a run name"):
        arielstream.calibrate(DATA_SAMPLES, tmp_path / "x.h5", run="api")


def test_output_and_run_are_exclusive_and_one_is_needed(capsys):
    for argv in (["calibrate", str(DATA_SAMPLES)], ["calibrate", str(DATA_SAMPLES), "-o", "x.h5", "--run", "a"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    assert "--run" in capsys.readouterr().err


def test_numpy_planet_ids_and_a_refused_run_leave_the_record_right(tmp_path):
    import numpy as np

    runs = tmp_path / "runs"
    summary = arielstream.calibrate(DATA_SAMPLES, run="np", runs_dir=runs, planets=np.array([73079497]), jobs=1,
                                    progress=False, log_file=False)
    assert summary.ok and load_run_options(runs / "np" / "config.toml").planets == (73079497,)
    # a second run of the same name and split while the first holds the lock: refused, record untouched
    from arielstream.errors import LockBusyError
    from arielstream.io.output import RunLock

    recorded = (runs / "np" / "config.toml").read_text()
    with RunLock(runs / "np" / "train.h5"):
        with pytest.raises(LockBusyError):
            arielstream.calibrate(DATA_SAMPLES, run="np", runs_dir=runs, planets=[73079497], force=True,
                                  config=build_config(profile="notebook"), jobs=1, progress=False, log_file=False)
    assert (runs / "np" / "config.toml").read_text() == recorded
