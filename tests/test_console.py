"""What the command says on the console, and when it stops before writing anything (issue 22).

``-v``/``-vv``, a night with nothing to do, ``--jobs`` capped, and a missing optional package
(exit 69, nothing written, an install hint that works offline).
"""

from __future__ import annotations

import logging
import socket
import sys

import pytest

import arielstream
from arielstream.cli import app as cli
from arielstream.cli.exits import EXIT_OK, EXIT_UNAVAILABLE
from arielstream.errors import MissingDependencyError
from arielstream.products import results
from arielstream.run import budget, runner
from arielstream.run.worker_logs import above_bar

from .conftest import DATA_SAMPLES
from .test_batch import calibrate_cli

PLANET = 73079497  # one visit in the committed samples
OFFLINE_HINT = "pip install --no-index --find-links"


@pytest.fixture()
def console_logging():
    """The ``arielstream`` logger as it was: :func:`cli.main` replaces its handlers."""
    logger = logging.getLogger("arielstream")
    saved = logger.handlers[:], logger.level
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("console") / "one.h5"
    arielstream.calibrate(DATA_SAMPLES, out, planets=[PLANET], jobs=1, progress=False, log_file=False)
    return out


# -- -v and -vv ---------------------------------------------------------------------------------


def test_the_bars_handler_keeps_the_consoles_filter(console_logging):
    from arielstream.run.dispatch import CONSOLE_OPTIONAL

    logger = logging.getLogger("arielstream")
    cli.setup_logging(0, False)
    record = logger.makeRecord("arielstream", logging.INFO, __file__, 1, "[1/1] x done", (), None,
                               extra={CONSOLE_OPTIONAL: True})
    with above_bar(True):
        (handler,) = logger.handlers
        assert type(handler) is not logging.StreamHandler  # replaced by the one writing above the bar
        assert not handler.filter(record) and handler.level == logging.INFO


@pytest.mark.parametrize("bar", [False, True], ids=["no-bar", "bar"])
@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_verbose_adds_the_line_per_observation_and_vv_debug_lines(tmp_path, capsys, console_logging, bar, verbose):
    config = tmp_path / "run.toml"
    config.write_text(f"[run]\nprogress = {'true' if bar else 'false'}\n")
    argv = ["calibrate", str(DATA_SAMPLES), "-o", str(tmp_path / "o.h5"), "--planets", str(PLANET), "--jobs", "1",
            "--no-log-file", "--config", str(config)] + (["-" + "v" * verbose] if verbose else [])
    assert cli.main(argv) == EXIT_OK
    err = capsys.readouterr().err
    assert ("[1/1] 73079497/visit 0 done" in err) is (verbose > 0), err
    assert (" DEBUG " in err) is (verbose > 1), err
    assert ("calibrating" in err) is bar  # the bar was shown (or not)


# -- nothing to do ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_night_with_nothing_to_do_says_one_line(tmp_path):
    out = tmp_path / "o.h5"
    log_file = out.with_name(out.name + ".log")
    code, _, stderr = calibrate_cli(out, "--jobs", "1")
    assert code == EXIT_OK, stderr
    assert "airs_bin 30 leaves the last" in stderr  # a run with work says what its bins drop
    before = log_file.read_text().splitlines()
    code, stdout, stderr = calibrate_cli(out, "--jobs", "1")
    assert code == EXIT_OK
    assert stderr == "" and stdout.count("\n") == 1 and "nothing to do" in stdout  # one line on the console
    added = log_file.read_text().splitlines()[len(before):]
    assert len(added) == 1 and "already complete" in added[0] and "nothing to do" in added[0]  # one in the log
    code, stdout, stderr = calibrate_cli(out, "--jobs", "1", "-v")  # -v: the log line on the console too
    assert code == EXIT_OK and "nothing to do" in stderr and "airs_bin" not in stderr


# -- --jobs capped ------------------------------------------------------------------------------


def test_explicit_jobs_are_capped_by_cores_and_tasks():
    mb = 10**6
    assert budget.plan_workers(8000 * mb, 3, 24, 2, 200 * mb).jobs == 2
    assert budget.plan_workers(8000 * mb, 1, 24, 16, 200 * mb).jobs == 1
    assert budget.plan_workers(8000 * mb, 3, 24, 16, 200 * mb).jobs == 3
    assert budget.plan_workers(8000 * mb, 3, None, 2, 200 * mb).jobs == 2  # auto, as before


@pytest.mark.slow
def test_jobs_24_on_two_cores_starts_two_workers_and_says_so_once(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setattr(runner, "available_cores", lambda: 2)
    caplog.set_level(logging.INFO, logger="arielstream")
    summary = runner.calibrate(DATA_SAMPLES, tmp_path / "o.h5", jobs=24, progress=False, log_file=False)
    assert summary.ok and summary.plan is not None and summary.plan.jobs == 2
    assert len({r.pid for r in summary.results}) <= 2
    capped = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert capped == ["--jobs 24 capped at 2: 2 core(s), 3 observation(s) to calibrate"]
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(tmp_path / "d.h5"), "--jobs", "24",
                     "--dry-run"]) == EXIT_OK
    assert "workers: 2 worker(s)" in capsys.readouterr().out


# -- a missing optional package -----------------------------------------------------------------


@pytest.fixture()
def listening():
    """A tcp:// address something listens at (the scheduler probe connects; nothing answers)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_the_dask_backend_without_distributed_exits_69_before_writing_anything(tmp_path, monkeypatch, capsys,
                                                                               console_logging, listening, dry_run):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now raises ImportError
    out = tmp_path / "out" / "o.h5"
    out.parent.mkdir()
    argv = ["calibrate", str(DATA_SAMPLES), "-o", str(out), "--backend", "dask", "--scheduler", listening,
            "--no-progress"] + (["--dry-run"] if dry_run else [])
    assert cli.main(argv) == EXIT_UNAVAILABLE
    assert list(out.parent.iterdir()) == []  # no .partial, no lock, no log
    err = capsys.readouterr().err
    assert "the dask backend needs dask.distributed: pip install 'dask[distributed]'" in err
    assert "arielstream[dask]" in err and f"{OFFLINE_HINT} WHEEL_DIR 'dask[distributed]'" in err
    assert err.count("\n") == 1


def test_the_dask_backend_with_joblib_1_3_exits_69_before_writing_anything(tmp_path, monkeypatch, capsys,
                                                                           console_logging, listening):
    pytest.importorskip("distributed")
    import joblib

    # joblib 1.3 (install_requires' floor) raises ValueError for return_as="generator" with dask, mid-run
    monkeypatch.setattr(joblib, "__version__", "1.3.2")
    out = tmp_path / "out" / "o.h5"
    out.parent.mkdir()
    argv = ["calibrate", str(DATA_SAMPLES), "-o", str(out), "--backend", "dask", "--scheduler", listening,
            "--no-progress"]
    assert cli.main(argv) == EXIT_UNAVAILABLE
    assert list(out.parent.iterdir()) == []
    err = capsys.readouterr().err
    assert "the dask backend (joblib 1.3.2 here) needs joblib >= 1.4: pip install 'joblib>=1.4'" in err
    assert "arielstream[dask]" in err and err.count("\n") == 1


def test_quicklook_without_matplotlib_exits_69_with_an_offline_hint(calibrated, tmp_path, monkeypatch, capsys,
                                                                    console_logging):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    target = tmp_path / "ql"
    assert cli.main(["quicklook", str(calibrated), "-o", str(target)]) == EXIT_UNAVAILABLE
    assert not target.exists()
    err = capsys.readouterr().err
    assert "quicklook needs matplotlib: pip install matplotlib" in err
    assert "arielstream[plots]" in err and f"{OFFLINE_HINT} WHEEL_DIR matplotlib" in err


def test_to_xarray_without_xarray_names_the_offline_install(calibrated, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with results.open(calibrated) as res, pytest.raises(MissingDependencyError) as info:
        res.to_xarray()
    assert f"{OFFLINE_HINT} WHEEL_DIR xarray" in str(info.value) and "arielstream[xarray]" in str(info.value)
