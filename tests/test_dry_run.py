"""``calibrate --dry-run``: the plan, sizes and estimate of a run, and nothing written (no file, no lock)."""

from __future__ import annotations

import tempfile

import pytest

from arielstream.cli.app import EXIT_CONFIG, EXIT_NOINPUT, EXIT_OK, main
from arielstream.config.options import CalibrationConfig, RunOptions
from arielstream.run import dryrun

from .conftest import DATA_SAMPLES


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    assert main(["calibrate", str(DATA_SAMPLES), "-o", str(tmp_path / "out.h5"), "--dry-run", "--memory", "1GB"]) \
        == EXIT_OK
    assert _tree(tmp_path) == []  # no output, no .partial, no .lock, no .log
    text = capsys.readouterr().out
    for expected in ("nothing written", "observations: 3 of 2 planet(s), 3 to calibrate", "output size:",
                     "disk free at the output:", "workers: ", "budget 1.00 GB", "estimated time:"):
        assert expected in text, text


def test_a_named_dry_run_creates_no_run_folder(tmp_path, capsys):
    assert main(["calibrate", str(DATA_SAMPLES), "--run", "trial", "--runs-dir", str(tmp_path / "runs"),
                 "--dry-run"]) == EXIT_OK
    assert not (tmp_path / "runs").exists()
    assert f"output {tmp_path / 'runs' / 'trial' / 'train.h5'}" in capsys.readouterr().out


def test_a_dry_run_checks_the_command_line_as_a_run_would(tmp_path, capsys):
    assert main(["calibrate", str(DATA_SAMPLES), "-o", str(tmp_path / "out.h5"), "--planets", "1", "--dry-run"]) \
        == EXIT_NOINPUT
    assert "no data for planet(s) 1" in capsys.readouterr().err
    assert _tree(tmp_path) == []


def test_the_predicted_size_is_the_size_a_run_writes(tmp_path):
    from arielstream.run.runner import calibrate

    out = tmp_path / "out.h5"
    plan = dryrun.dry_run(DATA_SAMPLES, CalibrationConfig(), RunOptions(), output=out)
    calibrate(DATA_SAMPLES, out, jobs=1, progress=False, log_file=False)
    assert 0 <= out.stat().st_size - plan.output_bytes < 2**20  # the data plus HDF5 metadata
    again = dryrun.dry_run(DATA_SAMPLES, CalibrationConfig(), RunOptions(), output=out)
    assert again.todo == 0 and "3 of 3 observation(s) done" in again.existing and again.seconds == 0


def test_the_estimate_scales_with_the_plan(tmp_path):
    plan = dryrun.dry_run(DATA_SAMPLES, CalibrationConfig(), RunOptions(jobs=1), output=tmp_path / "o.h5")
    assert plan.seconds == pytest.approx(3 * plan.core_seconds / plan.plan.threads)
    assert plan.estimate_from.startswith("measured constants")


def test_measure_times_one_planet_in_a_temporary_folder_it_removes(tmp_path, monkeypatch, capsys):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(["calibrate", str(DATA_SAMPLES), "-o", str(tmp_path / "out.h5"), "--dry-run-measure"]) == EXIT_OK
    assert _tree(tmp_path) == ["tmp"] and _tree(scratch) == []
    assert "measured here on planet" in capsys.readouterr().out


def test_the_estimate_charges_only_the_whole_series_cosmic_ray_rejection():
    from arielstream import build_config
    from arielstream.run.dryrun import _constant_core_seconds

    plain = _constant_core_seconds(build_config(cosmic_rays=False), 11250)[0]
    assert _constant_core_seconds(build_config(), 11250)[0] == plain  # per bin: in the streaming pass
    assert _constant_core_seconds(build_config(cr_method="series"), 11250)[0] > plain


@pytest.mark.parametrize("argv,code,message", [
    (["--memory", "100TB"], EXIT_CONFIG,
     "--memory 100TB (memory='100TB' from Python) is more than this machine's memory"),
    (["--memory", "10MB"], EXIT_CONFIG, "--memory 10MB (memory='10MB' from Python): memory budget"),
], ids=["above-the-ram", "too-small"])
def test_a_dry_run_refuses_what_the_run_refuses_with_its_exit_code(tmp_path, capsys, argv, code, message):
    """One check for both (``runner.checked_budget``): a dry run never says "fits" for what the run refuses."""
    out = tmp_path / "out.h5"
    for dry in (["--dry-run"], []):
        assert main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", *argv, *dry]) == code
        captured = capsys.readouterr()
        assert message in captured.err and "fits" not in captured.out
        assert _tree(tmp_path) == []
