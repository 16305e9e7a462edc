"""Calibrating from Python or a notebook: the run's log file, the summary's repr, import hygiene, ``--version``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pyarrow
import pytest

import arielstream
from arielstream.cli import app
from arielstream.run import budget, dispatch, runner, worker
from arielstream.run.identity import code_version

from .conftest import DATA_SAMPLES, REPO

PLANET = 73079497  # one visit in the committed samples


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process with pipes for its output (so no TTY: no progress bar)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "MALLOC_ARENA_MAX")} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=environ,
                          timeout=600, stdin=subprocess.DEVNULL)


def test_calibrate_from_python_logs_each_observation_and_the_summary(tmp_path):
    out = tmp_path / "nb.h5"
    proc = _python(f"import arielstream; print(arielstream.calibrate({str(DATA_SAMPLES)!r}, {str(out)!r}, "
                   f"planets=[{PLANET}], jobs=1))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"<RunSummary {out}: new, 1 done, 0 failed of 1;"), proc.stdout
    assert "peak RSS <=" in proc.stdout
    assert "INFO" not in proc.stderr  # logging not set up: the console only gets warnings
    lines = (tmp_path / "nb.h5.log").read_text().splitlines()
    per_observation = [line for line in lines if "[1/1]" in line]
    assert len(per_observation) == 1 and f"{PLANET}/visit 0 done" in per_observation[0]
    assert "1 done, 0 failed in" in lines[-1]  # the log ends with the run's summary line


def test_run_summary_repr_is_one_readable_line(tmp_path):
    summary = runner.RunSummary(tmp_path / "o.h5", statuses=[(1, 0, "done", ""), (2, 0, "failed", "bad")],
                                seconds=12.34, peak_rss_bound=3 * 2**30)
    text = repr(summary)
    assert text == (f"<RunSummary {tmp_path / 'o.h5'}: new, 1 done, 1 failed of 2; this run computed 0 in 12.3 s, "
                    "peak RSS <= 3.22 GB>")
    assert "\n" not in text and "statuses" not in text


def test_progress_lines_reach_the_console_only_with_verbose():
    logger = logging.getLogger("arielstream")
    saved = logger.handlers[:], logger.level
    try:
        for verbose, shown in ((0, False), (1, True)):
            app.setup_logging(verbose, False)
            record = logger.makeRecord("arielstream", logging.INFO, __file__, 1, "[1/1] x done", (), None,
                                       extra={dispatch.CONSOLE_OPTIONAL: True})
            assert bool(logger.handlers[0].filter(record)) is shown
            record = logger.makeRecord("arielstream", logging.INFO, __file__, 1, "run started", (), None)
            assert logger.handlers[0].filter(record)
    finally:
        logger.handlers[:], _ = saved
        logger.setLevel(saved[1])


def test_import_changes_no_process_wide_setting():
    proc = _python("import os; before = dict(os.environ); import arielstream, pyarrow; "
                   "assert dict(os.environ) == before, 'environment changed'; "
                   "print(pyarrow.default_memory_pool().backend_name)")
    assert proc.returncode == 0, proc.stderr
    reference = _python("import pyarrow; print(pyarrow.default_memory_pool().backend_name)")
    assert proc.stdout == reference.stdout  # the pool pyarrow picks by itself


def test_a_run_uses_the_system_allocator_and_gives_the_caller_its_pool_back(monkeypatch):
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "3")  # the user's own: kept
    before = pyarrow.default_memory_pool().backend_name
    with runner._worker_environment():
        worker._system_arrow_pool()  # what every task does first
        assert pyarrow.default_memory_pool().backend_name == "system"
        assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "system"  # what workers started now inherit
        assert os.environ["MALLOC_ARENA_MAX"] == "3"
    assert pyarrow.default_memory_pool().backend_name == before
    assert "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and os.environ["MALLOC_ARENA_MAX"] == "3"
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    with runner._worker_environment():
        assert os.environ["MALLOC_ARENA_MAX"] == str(budget.MALLOC_ARENAS)
    assert "MALLOC_ARENA_MAX" not in os.environ


def test_import_loads_no_numerical_library_and_the_command_chooses_its_allocators_first():
    """``import arielstream`` is light (PEP 562); the command sets Arrow's pool before pyarrow loads."""
    proc = _python("import sys, arielstream; print(sorted(m for m in ('numpy', 'pyarrow', 'h5py', 'numba') "
                   "if m in sys.modules)); arielstream.calibrate; print('pyarrow' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "True"]
    imported = ("import sys, os, arielstream.cli; "
                "print('pyarrow' in sys.modules, 'ARROW_DEFAULT_MEMORY_POOL' in os.environ)")
    assert _python(imported).stdout.strip() == "False False"  # importing the command changes nothing
    command = ("import contextlib, arielstream.cli\n"
               "with contextlib.suppress(SystemExit): arielstream.cli.main(['--version'])\n"
               "import pyarrow\n"
               "print(pyarrow.default_memory_pool().backend_name)")
    assert _python(command).stdout.split()[-1] == "system"
    assert _python(command, ARROW_DEFAULT_MEMORY_POOL="mimalloc").stdout.split()[-1] == "mimalloc"  # the user's kept


def test_capped_malloc_arenas_keep_new_threads_from_reserving_address_space():
    """glibc gives each new thread an arena of its own (64 MB of address space); capped, threads share one."""
    code = """
import ctypes, threading
from arielstream.run import budget
if MODE == "capped":
    assert budget.limit_malloc_arenas()
malloc = ctypes.CDLL("libc.so.6").malloc
def vm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
before = vm()
together = threading.Barrier(7)  # all six alive at once, each after its first malloc
def work():
    malloc(1000)
    together.wait()
    together.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
together.wait()
print(vm() - before)
together.wait()
"""
    grown = {}
    for mode in ("capped", "default"):
        proc = _python(f"MODE = {mode!r}" + code)
        assert proc.returncode == 0, proc.stderr
        grown[mode] = int(proc.stdout)
    # six thread stacks either way; by default (8 arenas per core) each thread its own 64 MB arena too
    assert grown["default"] - grown["capped"] >= 3 * 64 * 2**20, grown


def test_star_import_keeps_the_builtin_open():
    namespace: dict = {}
    exec("from arielstream import *", namespace)
    assert "open" not in namespace and "calibrate" in namespace
    assert arielstream.open.__module__ == "arielstream.products.results"


def test_version_names_the_numerical_code(capsys):
    with pytest.raises(SystemExit) as stop:
        app.main(["--version"])
    assert stop.value.code == 0
    digest = code_version().partition("+")[2]
    assert capsys.readouterr().out.strip() == (f"arielstream {arielstream.__version__} (numerical code {digest}; "
                                               f"output files record arielstream_version = {code_version()})")


def test_a_failed_observation_reaches_stderr_from_python_while_the_log_file_is_written(tmp_path, monkeypatch, capsys):
    """No handler of the caller's: the run's file handler must not silence Python's last resort (a notebook cell)."""
    import shutil

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a notebook: pytest's capture handlers gone
    logger = logging.getLogger("arielstream")
    monkeypatch.setattr(logger, "handlers", [])  # nor one a CLI test in this process left
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    data = tmp_path / "data"
    shutil.copytree(DATA_SAMPLES, data, ignore=shutil.ignore_patterns("reference", "simulation_truth"))
    (data / "train" / str(PLANET) / "AIRS-CH0_signal_0.parquet").write_bytes(b"not a parquet file")
    out = tmp_path / "nb.h5"
    summary = arielstream.calibrate(data, out, jobs=1, progress=False)
    assert not summary.ok
    err = capsys.readouterr().err
    assert f"ERROR arielstream.run.dispatch: {PLANET}/visit 0 failed: " in err and "AIRS-CH0_signal_0.parquet" in err
    assert "INFO" not in err  # warnings and errors only, as the last resort prints them
    assert f"{PLANET}/visit 0 failed" in (tmp_path / "nb.h5.log").read_text()  # and the file has it too
    assert logger.handlers == []  # for the run only


def test_the_refusal_to_mix_results_names_the_python_keyword_too(tmp_path):
    from arielstream.io.output import refused

    message = str(refused(tmp_path / "o.h5", ["config differs in flat"]))
    assert "use --force (force=True from Python)" in message
