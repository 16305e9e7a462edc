"""Nightly (cron) runs: ``calibrate --quiet`` says nothing on success, ``--report`` writes what the run did.

The runs are real subprocesses of the command line, both output streams captured.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from arielstream.cli import app as cli
from arielstream.cli.exits import EXIT_CANTCREAT, EXIT_FAILURES, EXIT_OK, EXIT_TEMPFAIL
from arielstream.io.output import RunLock
from arielstream.layout import discover_observations
from arielstream.run.identity import code_version

from .conftest import DATA_SAMPLES
from .test_batch import run_cli

REPORT_KEYS = {"exit_code", "error", "output", "arielstream_version", "action", "nothing_to_do", "observations",
               "done", "computed", "retried", "added", "recomputed", "kept_missing", "dropped", "failed",
               "out_of_memory", "seconds", "peak_rss_bound", "finished"}
# the planet whose second visit the corrupted copy fails (two observations: a small run)
PLANET = 4225610805


def nightly(data: Path, out: Path, report: Path, *extra: str):
    """The cron job's command: quiet, with a report; (exit code, stdout, stderr)."""
    return run_cli("calibrate", data, "-o", out, "--quiet", "--report", report, *extra)


def read_report(path: Path) -> dict:
    report = json.loads(path.read_text())
    assert set(report) == REPORT_KEYS
    assert report["arielstream_version"] == code_version()
    assert not path.with_name(path.name + ".partial").exists()
    return report


def corrupted_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the samples whose second visit of PLANET has a truncated AIRS signal file; (folder, that file)."""
    data = tmp_path / "data"
    shutil.copytree(DATA_SAMPLES, data, ignore=shutil.ignore_patterns("reference", "simulation_truth"))
    broken = data / "train" / str(PLANET) / "AIRS-CH0_signal_1.parquet"
    broken.write_bytes(broken.read_bytes()[:5000])
    return data, broken


@pytest.mark.slow
def test_a_quiet_run_prints_nothing_and_a_second_one_has_nothing_to_do(tmp_path):
    out, report = tmp_path / "out.h5", tmp_path / "report.json"
    code, stdout, stderr = nightly(DATA_SAMPLES, out, report)
    assert (code, stdout, stderr) == (EXIT_OK, "", "")
    fresh = read_report(report)
    total = len(discover_observations(DATA_SAMPLES, "train"))
    assert fresh["exit_code"] == EXIT_OK and fresh["error"] is None and fresh["output"] == str(out.resolve())
    assert (fresh["action"], fresh["nothing_to_do"]) == ("new", False)
    assert fresh["observations"] == fresh["done"] == fresh["computed"] == total
    assert (fresh["retried"], fresh["failed"], fresh["out_of_memory"]) == (0, [], 0)
    assert fresh["seconds"] > 0 and fresh["peak_rss_bound"] > 0
    log_file = out.with_name(out.name + ".log")
    first = log_file.read_text().splitlines()

    code, stdout, stderr = nightly(DATA_SAMPLES, out, report)
    assert (code, stdout, stderr) == (EXIT_OK, "", "")
    lines = log_file.read_text().splitlines()
    assert lines[:len(first)] == first  # appended: the earlier runs' lines stay (the handler rotates at 5 MB)
    assert [line for line in lines[len(first):] if "nothing to do" in line] != []
    again = read_report(report)
    assert (again["exit_code"], again["action"], again["nothing_to_do"]) == (EXIT_OK, "complete", True)
    assert (again["observations"], again["done"], again["computed"], again["retried"]) == (total, total, 0, 0)
    assert again["failed"] == [] and again["peak_rss_bound"] > 0


@pytest.mark.slow
def test_the_report_names_a_failed_observation_and_its_retry(tmp_path):
    data, broken = corrupted_copy(tmp_path)
    out, report = tmp_path / "out.h5", tmp_path / "report.json"
    code, stdout, stderr = nightly(data, out, report, "--planets", str(PLANET), "--jobs", "1")
    assert code == EXIT_FAILURES
    assert "Traceback" not in stderr and f"{PLANET}/visit 1 failed" in stderr  # a failure is not kept quiet
    failed = read_report(report)
    assert (failed["exit_code"], failed["error"], failed["action"]) == (EXIT_FAILURES, None, "new")
    assert (failed["observations"], failed["done"], failed["computed"], failed["retried"]) == (2, 1, 1, 0)
    [entry] = failed["failed"]
    assert (entry["planet_id"], entry["visit"], entry["status"]) == (PLANET, 1, "failed")
    assert str(broken) in entry["error"] and "Parquet" in entry["error"]

    code, stdout, stderr = nightly(data, out, report, "--planets", str(PLANET), "--jobs", "1")
    assert code == EXIT_FAILURES  # the next night retries only the failed one, and it fails again
    retry = read_report(report)
    assert (retry["action"], retry["retried"], retry["computed"], retry["done"]) == ("retry-failed", 1, 0, 1)
    assert [f["visit"] for f in retry["failed"]] == [1]


def test_a_run_refused_by_the_lock_exits_75_at_once_with_one_line_and_a_report(tmp_path):
    out, report = tmp_path / "out.h5", tmp_path / "report.json"
    with RunLock(out.resolve()):  # another run holds the output
        code, stdout, stderr = nightly(DATA_SAMPLES, out, report)
    assert code == EXIT_TEMPFAIL and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("arielstream: ") and "another arielstream run" in stderr
    refused = read_report(report)  # valid JSON although the run never had a summary
    assert refused["exit_code"] == EXIT_TEMPFAIL and "another arielstream run" in refused["error"]
    assert refused["output"] == str(out.resolve()) and refused["action"] is None and refused["nothing_to_do"] is False
    assert (refused["observations"], refused["done"], refused["peak_rss_bound"]) == (None, None, None)
    assert (refused["computed"], refused["failed"]) == (0, [])
    assert not out.exists()


def test_a_report_in_a_missing_folder_is_refused_before_the_run(tmp_path, capsys):
    out, report = tmp_path / "out.h5", tmp_path / "missing" / "report.json"
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "-q", "--report", str(report)]) == EXIT_CANTCREAT
    captured = capsys.readouterr()
    assert captured.out == "" and f"arielstream: {report}: the folder of --report does not exist" in captured.err
    assert not out.exists() and not out.with_name(out.name + ".log").exists()
