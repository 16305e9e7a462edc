"""RunOptions: its flags and type checks come from the dataclass, and the CLI hands the run one RunOptions."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from arielstream.cli import app as cli
from arielstream.cli.calibrate import CALIBRATION_FLAGS, CONFIG_FILE_ONLY, RUN_FLAGS, STEP_NAMES, STEP_SWITCHES
from arielstream.config.options import (
    CalibrationConfig,
    ConfigError,
    RunOptions,
    build_config,
    check_types,
    load_run_options,
)
from arielstream.run import runner
from arielstream.run.runner import RunSummary


def _calibrate_dests() -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in sub.choices["calibrate"]._actions}


def test_every_run_option_has_a_flag_named_after_it():
    names = [f.name for f in dataclasses.fields(RunOptions)]
    assert list(RUN_FLAGS) == names
    missing = sorted(set(names) - _calibrate_dests())
    assert not missing, f"RunOptions fields without a calibrate flag (dest=<field name>): {missing}"


def test_every_calibration_option_is_a_flag_a_step_switch_or_config_file_only():
    names = {f.name for f in dataclasses.fields(CalibrationConfig)}
    dests = _calibrate_dests()
    missing = sorted(set(CALIBRATION_FLAGS) - dests)
    assert not missing, f"calibration options without a flag; add one or list them in CONFIG_FILE_ONLY: {missing}"
    assert set(CONFIG_FILE_ONLY) <= names and set(STEP_SWITCHES) <= names  # no stale names in the lists
    assert set(STEP_SWITCHES) <= set(STEP_NAMES)  # --skip / --with name them
    # a flag for an option listed as config-file only (or a switch) would be read by nobody: config_from_args
    # takes the options of CALIBRATION_FLAGS from the command line, the switches from --skip / --with
    unread = sorted((set(CONFIG_FILE_ONLY) | set(STEP_SWITCHES)) & dests)
    assert not unread, f"flags whose option is listed as having none: {unread}"
    assert set(CALIBRATION_FLAGS) | set(CONFIG_FILE_ONLY) | set(STEP_SWITCHES) == names
    assert set(CALIBRATION_FLAGS) == {"profile", "airs_bin", "fgs1_bin", "wavelength_order", "bad_pixels",
                                      "missing_calibration", "instruments", "spatial_bin", "master_calibration",
                                      "saturation_level"}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(RunOptions)])
def test_every_run_option_refuses_a_value_of_the_wrong_type(name):
    with pytest.raises(ConfigError, match=rf"^{name} must be .*; got \[1\]$"):
        RunOptions(**{name: [1]})


@pytest.mark.parametrize("changes,message", [
    ({"split": 5}, "split must be a folder name such as \"train\" or \"test\"; got 5"),
    ({"split": ""}, "split must be a folder name such as \"train\" or \"test\"; got ''"),
    ({"planets": "abc"}, "planets must be a list of planet ids (integers); got 'abc'"),
    ({"planets": (1, True)}, "planets must be a list of planet ids (integers); got (1, True)"),
    ({"memory": True}, "memory must be a size such as \"2GB\"; got True"),
    ({"jobs": "x"}, "jobs must be a positive integer or \"auto\"; got 'x'"),
    ({"jobs": True}, "jobs must be a positive integer or \"auto\"; got True"),
    ({"jobs": 0}, "jobs must be a positive integer or \"auto\"; got 0"),
    ({"backend": "ray"}, "backend must be one of loky, dask; got 'ray'"),
    ({"scheduler": 8786}, "scheduler must be an address such as \"tcp://host:8786\"; got 8786"),
    ({"task_timeout": "x"}, "task_timeout must be a positive number of seconds; got 'x'"),
    ({"task_timeout": float("inf")}, "task_timeout must be a positive number of seconds; got inf"),
    ({"task_timeout": 0}, "task_timeout must be a positive number of seconds; got 0"),
    ({"progress": 1}, "progress must be true or false; got 1"),
    ({"force": "yes"}, "force must be true or false; got 'yes'"),
    ({"verify_inputs": 5}, "verify_inputs must be a string; got 5"),  # unchecked before the derived check
])
def test_run_option_messages(changes, message):
    with pytest.raises(ConfigError) as info:
        RunOptions(**changes)
    assert str(info.value) == message


def test_run_options_accept_what_their_annotations_allow():
    RunOptions(memory=2_000_000_000, task_timeout=900, jobs=3, planets=(1, 2), progress=None, verify_inputs="m.json")
    RunOptions(backend="dask", scheduler="tcp://host:8786")


@dataclass(frozen=True)
class _Example:
    count: int = 1
    ids: tuple[int, ...] | None = None
    level: float = 1.0
    name: str | None = None


@pytest.mark.parametrize("changes,message", [
    ({"count": 1.5}, "count must be an integer; got 1.5"),
    ({"ids": (1, "2")}, "ids must be a list of integers; got (1, '2')"),
    ({"level": "high"}, "level must be a number; got 'high'"),
    ({"name": 3}, "name must be a string; got 3"),
])
def test_the_generic_check_words_the_annotation(changes, message):
    check_types(_Example(level=2))  # an int is a number
    with pytest.raises(ConfigError) as info:
        check_types(_Example(**changes))
    assert str(info.value) == message


def _fake_run(monkeypatch) -> list:
    calls: list = []

    def run_calibration(data_dir, config, options, **kw):
        calls.append((data_dir, config, options, kw))
        return RunSummary(Path(kw.get("output") or "o.h5"))

    monkeypatch.setattr(runner, "run_calibration", run_calibration)
    return calls


def test_the_cli_passes_one_run_options_to_the_run(monkeypatch, tmp_path):
    calls = _fake_run(monkeypatch)
    config = tmp_path / "run.toml"
    config.write_text('[run]\nmemory = "3GB"\ntask_timeout = 60\n')
    code = cli.main(["calibrate", str(tmp_path / "data"), "-o", str(tmp_path / "o.h5"), "--config", str(config),
                     "--planets", "1", "2", "--jobs", "2", "--frozen", "--no-log-file", "--profile", "notebook",
                     "--skip", "flat", "-q"])
    assert code == 0 and len(calls) == 1
    data_dir, got_config, options, kw = calls[0]
    assert data_dir == tmp_path / "data"
    assert got_config == build_config(profile="notebook", flat=False)
    assert options == RunOptions(planets=(1, 2), memory="3GB", jobs=2, task_timeout=60, frozen=True,
                                 log_file=False, progress=False)  # -q: no progress bar
    assert kw == {"output": tmp_path / "o.h5", "run_name": None, "runs_dir": Path("runs")}
    assert options == dataclasses.replace(load_run_options(config, planets=[1, 2], jobs=2, frozen=True,
                                                           log_file=False), progress=False)


def test_the_dry_run_gets_the_same_run_options(monkeypatch, tmp_path, capsys):
    from arielstream.run import dryrun

    calls: list = []

    class Plan:
        def lines(self) -> list[str]:
            return ["planned"]

    def dry_run(data_dir, config, options, **kw):
        calls.append(options)
        return Plan()

    monkeypatch.setattr(dryrun, "dry_run", dry_run)
    code = cli.main(["calibrate", str(tmp_path), "--run", "a", "--dry-run", "--memory", "1GB", "--split", "test"])
    assert code == 0 and calls == [RunOptions(split="test", memory="1GB")]
    assert "planned" in capsys.readouterr().out


def test_the_python_calibrate_builds_the_same_run_options(monkeypatch, tmp_path):
    calls = _fake_run(monkeypatch)
    runner.calibrate(tmp_path, tmp_path / "o.h5", split="test", planets=[3], memory="1GB", jobs=2,
                     task_timeout=5.0, progress=False, verify_inputs="m.json", drop_missing=True)
    _, config, options, kw = calls[0]
    assert config == CalibrationConfig()
    assert options == RunOptions(split="test", planets=(3,), memory="1GB", jobs=2, task_timeout=5.0,
                                 progress=False, verify_inputs="m.json", drop_missing=True)
    assert kw == {"output": tmp_path / "o.h5", "run_name": None, "runs_dir": runner.DEFAULT_RUNS_DIR,
                  "chunk_bytes": None}
