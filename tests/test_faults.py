"""Faults of the machine, not of the input: out of memory, a full disk, I/O errors, a closed terminal.

Each gets its own message and exit code, never a traceback, never an input blamed, nothing
half-written beside the user's files, and the rerun recovers. Faults are injected with
resource limits in subprocesses (``RLIMIT_AS``, ``RLIMIT_FSIZE``) or by monkeypatching the
calls that write (``os.fsync``, ``os.replace``, ``shutil.copyfile``, memmap flushes).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arielstream import calibrate
from arielstream.cli import app as cli
from arielstream.cli.exits import (
    EXIT_CANTCREAT,
    EXIT_CONFIG,
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_OSERR,
    EXIT_TEMPFAIL,
)
from arielstream.errors import InputError, OutOfMemoryError, OutputError
from arielstream.io import store
from arielstream.io.dataset import read_axis_info
from arielstream.io.sidefiles import OutputFiles
from arielstream.layout import Observation
from arielstream.run import budget, lifecycle, runner, worker
from arielstream.units import parse_bytes

from .conftest import DATA_SAMPLES, REPO
from .test_batch import calibrate_cli, run_cli, same_bytes, statuses


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """data_samples calibrated in one uninterrupted serial run: what every recovered run must equal."""
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    assert calibrate(DATA_SAMPLES, out, jobs=1, progress=False).ok
    return out


@pytest.fixture()
def data_copy(tmp_path):
    """A writable copy of data_samples (without the truth and the reference files)."""
    root = tmp_path / "data"
    shutil.copytree(DATA_SAMPLES, root, ignore=shutil.ignore_patterns("reference", "simulation_truth"))
    return root


def leftovers(folder, out):
    """Files beside the output other than the output itself, its lock and its log."""
    keep = {out.name, out.name + ".lock", out.name + ".log"}
    return sorted(p.name for p in folder.iterdir() if p.name not in keep and p.name.startswith(out.name))


# -- out of memory -----------------------------------------------------------------------------


def test_memory_exhaustion_in_all_its_forms_is_recognised_and_corruption_is_not():
    with_context = InputError("AIRS-CH0_signal_0.parquet", "row group 0 could not be decoded")
    with_context.__context__ = pa.ArrowException("Failed to launch worker thread")
    assert budget.is_out_of_memory(with_context)
    assert budget.is_out_of_memory(MemoryError())
    assert budget.is_out_of_memory(OSError("Couldn't deserialize thrift: std::bad_alloc"))
    assert budget.is_out_of_memory(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert budget.is_out_of_memory(RuntimeError("Unable to allocate 3.2 GiB for an array with shape (9, 9)"))
    assert budget.is_out_of_memory(pa.ArrowMemoryError("malloc of size 64 failed: out of memory"))
    corrupt = InputError("AIRS-CH0_signal_0.parquet", "not a readable Parquet file")
    corrupt.__context__ = pa.ArrowInvalid("Parquet magic bytes not found in footer")
    assert not budget.is_out_of_memory(corrupt)


def test_a_library_that_cannot_be_mapped_is_out_of_memory_only_under_an_address_space_limit(monkeypatch):
    failed = OSError("/x/libllvmlite.so: failed to map segment from shared object")  # dlopen's words
    monkeypatch.setattr(budget, "address_space_limit", lambda: 500 * 2**20)
    assert budget.is_out_of_memory(failed)
    monkeypatch.setattr(budget, "address_space_limit", lambda: None)
    assert not budget.is_out_of_memory(failed)  # e.g. a noexec mount: not memory


def test_an_address_space_limit_too_small_exits_71_before_anything_is_written_and_the_limit_it_names_runs(tmp_path):
    """900 MB is refused by the plan, before the layout; the limit its message asks for runs to the end.

    The command caps its malloc arenas and starts with Arrow's system allocator, so its address space
    stays near 650 MB on the samples; before, Arrow's mimalloc reserved 1 GiB and every thread's arena
    64 MB, and a limit the plan accepted (1000 MB) aborted in glibc (exit 127) after the first observation.
    """
    out = tmp_path / "o.h5"

    def limited(limit_bytes):
        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        return run_cli("calibrate", DATA_SAMPLES, "-o", out, "--no-progress", "--jobs", "1", preexec_fn=limit)

    code, _, stderr = limited(900 * 2**20)
    assert code == EXIT_OSERR, stderr
    assert "arielstream: out of memory" in stderr and "Traceback" not in stderr
    assert "parquet" not in stderr.split("out of memory")[1].lower()  # no input blamed
    assert "the address-space limit (ulimit -v) of" in stderr
    assert not out.exists() and not OutputFiles.of(out).partial.exists() and leftovers(tmp_path, out) == []
    needed = re.search(r"it needs at least ([0-9.]+ [kMG]B)", stderr)
    assert needed, stderr
    code, _, stderr = limited(int(parse_bytes(needed.group(1)) * 1.05))  # (5 %: this process may measure a bit more)
    assert code == EXIT_OK, stderr
    assert out.exists()


def test_the_address_space_limit_shrinks_the_plan_and_refuses_what_cannot_fit():
    mb = 10**6
    roomy = budget.plan_workers(2000 * mb, 4, 1, 2, 200 * mb, address_headroom=320 * mb)
    assert roomy.chunk_bytes == 320 * mb - 200 * mb - budget.PROCESS_RESERVE_BYTES - 2 * budget.THREAD_STACK_BYTES
    with pytest.raises(OutOfMemoryError, match="ulimit -v"):
        budget.plan_workers(2000 * mb, 4, 1, 2, 200 * mb, address_headroom=260 * mb)


def test_a_cgroup_limit_below_the_budget_is_what_the_run_plans_for(monkeypatch, caplog):
    monkeypatch.setattr(budget, "cgroup_memory_limit", lambda: 10**9)
    with caplog.at_level("WARNING", logger="arielstream"):
        assert budget.effective_budget(2 * 10**9) == 10**9
    assert "cgroup memory.max" in caplog.text
    assert budget.effective_budget(5 * 10**8) == 5 * 10**8


def test_out_of_memory_in_an_observation_is_not_blamed_on_its_input_and_the_rerun_retries_it(
        tmp_path, monkeypatch, capsys, clean_run):
    out = tmp_path / "o.h5"
    real = worker.calibrate_observation
    victim = {"index": 1}

    def starved(obs, index, *args, **kwargs):
        if index == victim["index"]:
            try:
                raise pa.ArrowException("Failed to launch worker thread")
            except pa.ArrowException:
                raise InputError(obs.folder / "AIRS-CH0_signal_0.parquet", "row group 0 could not be decoded") \
                    from None
        return real(obs, index, *args, **kwargs)

    monkeypatch.setattr(worker, "calibrate_observation", starved)
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--jobs", "1"]) == EXIT_OSERR
    with h5py.File(out) as f:
        assert list(f["status"][()]) == [1, 2, 1]
        error = f["error"][1].decode()
    assert "out of memory, not an input error" in error and "Failed to launch worker thread" in error
    assert "out of memory, not an input error" in capsys.readouterr().out
    monkeypatch.setattr(worker, "calibrate_observation", real)
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--jobs", "1"]) == EXIT_OK
    assert same_bytes(out, clean_run)


# -- full disks and I/O errors -------------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _eio(*args, **kwargs):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_full_disk_while_publishing_a_retry_exits_73_leaves_the_output_as_it_was_and_the_rerun_publishes(
        data_copy, tmp_path, monkeypatch, capsys):
    victim = sorted((data_copy / "train").iterdir())[0] / "FGS1_signal_0.parquet"
    intact = victim.read_bytes()
    victim.write_bytes(intact[:100_000])
    out = tmp_path / "o.h5"
    args = ["calibrate", str(data_copy), "-o", str(out), "--no-progress", "--jobs", "1"]
    assert cli.main(args) == EXIT_FAILURES
    published = out.read_bytes()
    victim.write_bytes(intact)  # the input is fixed: the rerun retries it into a part, then links OUT.h5 as another
    monkeypatch.setattr(lifecycle.os, "link", _enospc)
    capsys.readouterr()
    assert cli.main(args) == EXIT_CANTCREAT
    stderr = capsys.readouterr().err
    assert f"{OutputFiles.of(out).parts}: cannot publish the extended output" in stderr
    assert "No space left on device" in stderr and "Traceback" not in stderr
    assert out.read_bytes() == published  # readers still see the published output, untouched
    assert leftovers(tmp_path, out) == ["o.h5.partial", "o.h5.parts"]  # the retried observation, kept for the rerun
    monkeypatch.undo()
    assert cli.main(args) == EXIT_OK
    assert list(statuses(out)) == [1, 1, 1] and leftovers(tmp_path, out) == ["o.h5.parts"]


def test_too_little_free_space_for_the_retry_is_refused_before_laying_it_out(data_copy, tmp_path, monkeypatch,
                                                                             capsys):
    victim = sorted((data_copy / "train").iterdir())[0] / "FGS1_signal_0.parquet"
    victim.write_bytes(victim.read_bytes()[:100_000])
    out = tmp_path / "o.h5"
    args = ["calibrate", str(data_copy), "-o", str(out), "--no-progress", "--jobs", "1"]
    assert cli.main(args) == EXIT_FAILURES
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    capsys.readouterr()
    assert cli.main(args) == EXIT_CANTCREAT
    stderr = capsys.readouterr().err
    assert "No space left on device" in stderr and "Traceback" not in stderr
    assert leftovers(tmp_path, out) == []


@pytest.mark.parametrize("fault", ["fsync", "rename"])
def test_an_io_error_while_publishing_exits_73_keeps_the_partial_whole_and_the_rerun_publishes_it(
        tmp_path, monkeypatch, capsys, clean_run, fault):
    out = tmp_path / "o.h5"
    args = ["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--jobs", "1"]
    if fault == "fsync":
        monkeypatch.setattr(lifecycle.os, "fsync", _eio)
    else:
        real = os.replace

        def replace(src, dst, *a, **kw):
            if str(src).endswith(".h5.partial"):
                _eio()
            return real(src, dst, *a, **kw)

        monkeypatch.setattr(lifecycle.os, "replace", replace)
    assert cli.main(args) == EXIT_CANTCREAT
    stderr = capsys.readouterr().err
    assert f"{out}: cannot publish o.h5.partial: [Errno 5] Input/output error" in stderr
    assert "Traceback" not in stderr and not out.exists()
    assert list(statuses(OutputFiles.of(out).partial)) == [1, 1, 1]
    monkeypatch.undo()
    assert cli.main(args) == EXIT_OK
    assert same_bytes(out, clean_run) and not OutputFiles.of(out).partial.exists()


def test_an_io_error_on_a_memmap_flush_stops_the_run_with_73_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                                                    capsys, clean_run):
    out = tmp_path / "o.h5"
    args = ["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--jobs", "1"]
    real, calls = np.memmap.flush, {"n": 0}

    def flush(self):
        calls["n"] += 1
        if calls["n"] > 40:  # after the first observation is recorded: its work must be kept
            _eio()
        return real(self)

    monkeypatch.setattr(np.memmap, "flush", flush)
    assert cli.main(args) == EXIT_CANTCREAT
    stderr = capsys.readouterr().err
    assert f"{OutputFiles.of(out).partial}: cannot write the output file: [Errno 5] Input/output error" in stderr
    assert "Traceback" not in stderr and not out.exists()
    done = statuses(OutputFiles.of(out).partial)
    assert 1 in done and 2 not in done  # work kept, no observation blamed
    monkeypatch.undo()
    assert cli.main(args) == EXIT_OK
    assert same_bytes(out, clean_run)


class _FullDisk:
    """A log file on a full disk: every write and flush fails."""

    def seek(self, offset, whence=0):
        return 0

    def tell(self):
        return 0

    def write(self, text):
        _enospc()

    def flush(self):
        _enospc()

    def close(self):
        _enospc()


def test_a_full_disk_under_the_log_file_does_not_fail_a_run(tmp_path, monkeypatch, capsys, clean_run):
    out = tmp_path / "o.h5"
    monkeypatch.setattr(runner._RunLogHandler, "_open", lambda self: _FullDisk())
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--jobs", "1"]) == EXIT_OK
    stderr = capsys.readouterr().err
    assert stderr.count("cannot write the log file") == 1 and "No space left on device" in stderr
    assert "Traceback" not in stderr and "Logging error" not in stderr
    assert same_bytes(out, clean_run)


@pytest.mark.parametrize("limit, rerun", [(5_000, False), pytest.param(10_000, True, marks=pytest.mark.slow),
                                          (200_000, False)])
def test_a_failed_hdf5_write_while_laying_out_exits_73_and_leaves_nothing(tmp_path, limit, rerun, request):
    """The free-space check is bypassed so that HDF5 itself meets the file-size limit.

    At 5-10 kB its very first metadata writes fail, which crashes HDF5 (SIGSEGV) when it runs in
    the process that calls it; at 200 kB its last flush fails. Both are one line and exit 73,
    and the rerun without the limit writes the same bytes as a clean run.
    """
    out = tmp_path / "o.h5"
    driver = ("import sys; import arielstream.io.store as s; s.check_room = lambda *a: None; "
              "from arielstream.cli.app import main; sys.exit(main(sys.argv[1:]))")

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    args = ["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--no-log-file"]
    proc = subprocess.run([sys.executable, "-c", driver, *args], preexec_fn=limit_file_size, capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == EXIT_CANTCREAT, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("arielstream:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"arielstream: {out}.partial.new: cannot create the output file: File too large (HDF5"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr and "HDF5-DIAG" not in proc.stderr
    assert leftovers(tmp_path, out) == []
    if rerun:
        assert cli.main([*args, "--quiet"]) == EXIT_OK
        assert same_bytes(out, request.getfixturevalue("clean_run"))


def test_hdf5_crashing_while_laying_out_is_an_output_error_naming_the_file(tmp_path, monkeypatch):
    """A layout process that dies by a signal (HDF5's SIGSEGV on failed writes) is reported, not shared."""
    def crash(path, *args):
        path.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(store, "_write_layout", crash)
    path = tmp_path / "o.h5.partial.new"
    with pytest.raises(OutputError, match=rf"^{path}: cannot create the output file: HDF5 crashed while laying out"):
        store.create_output(path, [Observation(1, 0, tmp_path)], [], {})
    assert not path.exists()


# -- smaller gaps --------------------------------------------------------------------------------


def test_a_refused_budget_leaves_nothing_that_blocks_the_next_run(tmp_path, capsys):
    out = tmp_path / "o.h5"
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--memory", "10MB"]) == \
        EXIT_CONFIG
    assert leftovers(tmp_path, out) == [] and not out.exists()
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--jobs", "1",
                     "--fgs1-bin", "180"]) == EXIT_OK


def test_one_corrupt_dark_with_a_dataset_master_fails_its_observation_not_the_run(data_copy, tmp_path, capsys):
    planet = sorted((data_copy / "train").iterdir())[0]
    dark = planet / "AIRS-CH0_calibration_0" / "dark.parquet"
    dark.write_bytes(b"not parquet at all")
    out = tmp_path / "o.h5"
    code = cli.main(["calibrate", str(data_copy), "-o", str(out), "--no-progress", "--jobs", "1",
                     "--master-calibration", "dataset"])
    assert code == EXIT_FAILURES
    with h5py.File(out) as f:
        status, planets = f["status"][()], f["planet_id"][()]
        failed = np.flatnonzero(status == 2)
        assert len(failed) == 1 and planets[failed[0]] == int(planet.name)
        assert "AIRS-CH0_calibration_0/dark.parquet" in f["error"][failed[0]].decode()
        assert (np.delete(status, failed) == 1).all()


@pytest.mark.slow
def test_a_reader_holding_the_partial_open_for_writing_is_a_lock_conflict(tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    real = os.replace

    def replace(src, dst, *a, **kw):  # publishing fails: a whole .partial stays behind
        if str(src).endswith(".h5.partial"):
            _eio()
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(lifecycle.os, "replace", replace)
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--jobs", "1"]) == \
        EXIT_CANTCREAT
    monkeypatch.undo()
    with h5py.File(OutputFiles.of(out).partial, "r+"):
        code, _, stderr = calibrate_cli(out, "--jobs", "1")
    assert code == EXIT_TEMPFAIL, stderr
    assert "another process holds it open for writing" in stderr and "does not open as HDF5" not in stderr
    code, _, _ = calibrate_cli(out, "--jobs", "1")
    assert code == EXIT_OK


def test_the_peak_rss_bound_counts_the_resource_trackers_that_loky_starts():
    from joblib import Parallel, delayed
    from joblib.externals.loky.backend import resource_tracker

    Parallel(n_jobs=2, backend="loky")(delayed(abs)(i) for i in range(2))
    tracker = resource_tracker._resource_tracker._pid
    peaks = runner._helper_peaks()
    assert tracker in peaks and peaks[tracker] > 0


def test_an_infinite_frame_time_is_refused_naming_axis_info(tmp_path):
    table = pq.read_table(DATA_SAMPLES / "axis_info.parquet")
    name = "AIRS-CH0-axis0-h"
    assert name in table.column_names
    values = table[name].to_numpy().copy()
    values[3] = np.inf
    path = tmp_path / "axis_info.parquet"
    pq.write_table(table.set_column(table.column_names.index(name), name, pa.array(values)), path)
    with pytest.raises(InputError, match=rf"axis_info\.parquet: column '{name}' has 1 infinite value"):
        read_axis_info(path)
