"""Batch runs: parallel == serial, crashes, resumes, locks, limits, the memory budget, dask.

Signals, locks and kills are exercised on real subprocesses running the CLI.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from arielstream import calibrate
from arielstream.cli.app import (
    EXIT_CANTCREAT,
    EXIT_CONFIG,
    EXIT_FAILURES,
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_TEMPFAIL,
    EXIT_TERMINATED,
)
from arielstream.io import schema, store
from arielstream.io.output import RunLock
from arielstream.io.sidefiles import OutputFiles
from arielstream.layout import discover_observations

from .conftest import DATA_SAMPLES, REPO

pytestmark = pytest.mark.slow  # every test here runs whole calibrations in subprocesses (signals, kills, locks)


def start_cli(*args, env=None, **kw):
    # the repository on the path whatever the working directory (the tests may run from a checkout)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.Popen([sys.executable, "-m", "arielstream", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": path, **(env or {})}, **kw)


def run_cli(*args, env=None, timeout=300, **kw):
    proc = start_cli(*args, env=env, **kw)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def calibrate_cli(out, *extra, env=None, data=DATA_SAMPLES):
    return run_cli("calibrate", data, "-o", out, "--no-progress", *extra, env=env)


TASK_TIMEOUT = 30  # seconds: an observation of the samples takes about one, a hanging one never ends


def hang(index: int, marker: Path) -> dict[str, str]:
    """The fault that makes observation ``index`` of the samples hang, creating ``marker`` when it does."""
    obs = discover_observations(DATA_SAMPLES, "train")[index]
    return {"ARIELSTREAM_FAULT": f"hang-obs:{obs.planet_id}:{obs.visit}:{marker}"}


def same_bytes(a: Path, b: Path) -> bool:
    """The same file bytes; for an index over parts (a rerun that retried some), the same bytes per observation.

    An index holds the same datasets as a single file through HDF5 virtual datasets: every
    dataset (but ``part`` and ``part_index``) must read the same, and each observation's
    stored bytes (cubes, DQ planes, checksum, provenance, inputs) must be those of the
    other file's observation.
    """
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        if not (store.is_index(fa) or store.is_index(fb)):
            return a.read_bytes() == b.read_bytes()
        names: list[str] = []  # every dataset but an index's own bookkeeping (which part holds what)
        fb.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset)
                      and name not in (schema.PART, schema.PART_INDEX) else None)
        for name in names:
            x, y = fa[name][()], fb[name][()]
            if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                return False
    da, db = store.read_descriptors(a), store.read_descriptors(b)
    if sorted(da) != sorted(db):
        return False
    return all(np.asarray(da[k].open(i, mode="r")).tobytes() == np.asarray(db[k].open(i, mode="r")).tobytes()
               for k in da for i in range(da[k].shape[0]))


def statuses(path: Path) -> np.ndarray:
    """Observation statuses; empty while the file is being laid out (it is locked then)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return f["status"][()]
    except (OSError, KeyError):
        return np.array([], dtype=np.int8)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """The reference: data_samples calibrated in one uninterrupted serial run."""
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    summary = calibrate(DATA_SAMPLES, out, jobs=1, progress=False)
    assert summary.ok and summary.action == "new"
    return out


def test_jobs_2_is_bit_identical_to_jobs_1(clean_run, tmp_path):
    out = tmp_path / "parallel.h5"
    code, stdout, stderr = calibrate_cli(out, "--jobs", "2")
    assert code == 0, stderr
    assert "2 worker(s) x 1 thread(s)" in stderr
    assert same_bytes(out, clean_run)


def test_rerun_after_success_changes_nothing(clean_run, tmp_path):
    out = tmp_path / "o.h5"
    shutil.copy(clean_run, out)
    before = (out.stat().st_mtime_ns, out.read_bytes())
    code, stdout, _ = calibrate_cli(out, "--jobs", "1")
    assert code == 0 and "already complete" in stdout and "nothing to do" in stdout
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before
    assert not OutputFiles.of(out).partial.exists()


def test_changed_config_is_refused_unless_forced(clean_run, tmp_path):
    out = tmp_path / "o.h5"
    shutil.copy(clean_run, out)
    code, _, stderr = calibrate_cli(out, "--skip", "flat")
    assert code == EXIT_CONFIG and "config differs in flat" in stderr and "--force" in stderr
    assert same_bytes(out, clean_run)
    code, _, stderr = calibrate_cli(out, "--skip", "flat", "--force", "--jobs", "1")
    assert code == 0, stderr
    with h5py.File(out) as f:
        assert '"flat": false' in f.attrs["config"]


def test_a_worker_killed_mid_observation_is_retried_and_the_output_equals_a_clean_run(clean_run, tmp_path):
    obs = discover_observations(DATA_SAMPLES, "train")[1]
    out = tmp_path / "o.h5"
    marker = tmp_path / "killed-once"
    code, _, stderr = calibrate_cli(out, "--jobs", "2",
                                    env={"ARIELSTREAM_FAULT": f"kill-worker:{obs.planet_id}:{obs.visit}:{marker}"})
    assert marker.exists(), "the fault was injected"
    assert code == 0, stderr
    assert "a worker died" in stderr
    assert same_bytes(out, clean_run)
    with h5py.File(out) as f:
        assert (f["status"][()] == 1).all() and (f["attempts"][()] == 0).all()


def test_a_worker_that_keeps_dying_fails_only_its_observation(tmp_path):
    obs = discover_observations(DATA_SAMPLES, "train")[0]
    out = tmp_path / "o.h5"
    code, stdout, stderr = calibrate_cli(out, "--jobs", "2",
                                         env={"ARIELSTREAM_FAULT": f"kill-worker:{obs.planet_id}:{obs.visit}"})
    assert code == EXIT_FAILURES, stderr
    assert "its worker died while calibrating it alone" in stdout
    assert list(statuses(out)) == [2, 1, 1]
    with h5py.File(out) as f:
        assert np.isnan(f["AIRS-CH0/signal"][0]).all()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_killed_coordinator_leaves_a_readable_file_and_the_rerun_finishes_it(clean_run, tmp_path, jobs):
    out = tmp_path / "o.h5"
    code, _, _ = calibrate_cli(out, "--jobs", jobs, env={"ARIELSTREAM_FAULT": "kill-coordinator:1"})
    assert code == -signal.SIGKILL
    assert not out.exists() and OutputFiles.of(out).partial.exists()
    assert (statuses(OutputFiles.of(out).partial) == 1).sum() >= 1  # h5py opens it; what was done is recorded
    code, stdout, stderr = calibrate_cli(out, "--jobs", jobs)
    assert code == 0, stderr
    assert "resume" in stderr
    assert same_bytes(out, clean_run)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def signal_while_hanging(proc: subprocess.Popen, hanging: Path, signum: int) -> str:
    """Send ``signum`` to a run once its hang fault fired; its stderr once it ended (killed if it did not)."""
    try:
        _wait_until_hanging(proc, hanging)
        proc.send_signal(signum)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()


def _wait_until_hanging(proc: subprocess.Popen, marker: Path) -> None:
    """Until the ``hang-obs`` fault fires in ``proc``'s run; fails at once if that run ends first."""
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the fault fired:\n"
                                 f"{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the hang-obs fault to fire")
        time.sleep(0.05)


def test_workers_do_not_outlive_a_killed_coordinator(tmp_path):
    out, hanging = tmp_path / "o.h5", tmp_path / "hanging"
    proc = start_cli("calibrate", DATA_SAMPLES, "-o", out, "--jobs", "2", "--no-progress", env=hang(0, hanging))
    try:
        _wait_until_hanging(proc, hanging)
        workers = [p for p in _children(proc.pid) if _alive(p)]
        assert workers
        proc.kill()
        proc.communicate()
        _wait_for(lambda: not any(_alive(p) for p in workers), 5, "the orphaned workers to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
    code, _, stderr = calibrate_cli(out, "--jobs", "2")
    assert code == 0, stderr


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, EXIT_TERMINATED), (signal.SIGHUP, EXIT_HANGUP)],
                         ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_stops_keeps_what_is_done_releases_the_lock_and_resumes(clean_run, tmp_path, signum,
                                                                                  exit_code):
    """SIGTERM (a scheduler stopping the job) and SIGHUP (the terminal closed) stop a run the same way."""
    out, hanging = tmp_path / "o.h5", tmp_path / "hanging"
    # one job: the first two observations are done when the third hangs, and the run cannot finish
    proc = start_cli("calibrate", DATA_SAMPLES, "-o", out, "--jobs", "1", "--no-progress", env=hang(2, hanging))
    stderr = signal_while_hanging(proc, hanging, signum)
    assert proc.returncode == exit_code, stderr
    assert "run the same command to resume" in stderr
    assert f"interrupted by {signum.name}" in stderr and "Traceback" not in stderr
    assert list(statuses(OutputFiles.of(out).partial)) == [1, 1, 0]  # the one interrupted is pending, not "running"
    with RunLock(out):  # the lock was released
        pass
    code, _, stderr = calibrate_cli(out, "--jobs", "1")
    assert code == 0 and same_bytes(out, clean_run)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_on_the_terminal_stops_keeps_what_is_done_and_resumes(clean_run, tmp_path, jobs):
    """Ctrl-C signals the whole foreground process group: the coordinator and its workers alike."""
    out, hanging = tmp_path / "o.h5", tmp_path / "hanging"
    # the third observation hangs: the run cannot finish before the Ctrl-C, and it starts only once another is done
    proc = start_cli("calibrate", DATA_SAMPLES, "-o", out, "--jobs", jobs, "--no-progress", env=hang(2, hanging),
                     start_new_session=True)
    try:
        _wait_until_hanging(proc, hanging)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "run the same command to resume" in stderr and "Traceback" not in stderr
    status = statuses(OutputFiles.of(out).partial)
    assert (status == 1).sum() >= 1 and status[2] == 0 and not (status == 3).any()
    with RunLock(out):
        pass
    code, _, stderr = calibrate_cli(out, "--jobs", jobs)
    assert code == 0 and same_bytes(out, clean_run), stderr


def test_a_second_run_on_the_same_output_refuses_at_once(tmp_path):
    out = tmp_path / "o.h5"
    with RunLock(out):
        t0 = time.monotonic()
        code, _, stderr = calibrate_cli(out)
        assert code == EXIT_TEMPFAIL and "another arielstream run is writing it" in stderr
        assert time.monotonic() - t0 < 30
    hanging = tmp_path / "hanging"
    first = start_cli("calibrate", DATA_SAMPLES, "-o", out, "--jobs", "1", "--no-progress", env=hang(2, hanging))
    try:
        _wait_until_hanging(first, hanging)
        code, _, stderr = calibrate_cli(out)
        assert code == EXIT_TEMPFAIL and f"pid {first.pid}" in stderr
        first.send_signal(signal.SIGTERM)  # still running, undisturbed: it stops as it should
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == EXIT_TERMINATED
    assert list(statuses(OutputFiles.of(out).partial)) == [1, 1, 0]


def test_a_file_size_limit_fails_cleanly_before_any_worker_starts(tmp_path):
    out = tmp_path / "o.h5"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # the sample output is ~580 kB

    code, _, stderr = run_cli("calibrate", DATA_SAMPLES, "-o", out, "--no-progress", preexec_fn=limit)
    assert code == EXIT_CANTCREAT, stderr
    assert "o.h5.partial.new: cannot create the output file" in stderr and "File too large" in stderr
    assert "Traceback" not in stderr and "worker" not in stderr.split("cannot")[0]
    assert not out.exists() and not OutputFiles.of(out).partial.exists()
    assert not (tmp_path / "o.h5.partial.new").exists()


def _tree_rss(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in (Path("/proc") / str(p) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
        stack.extend(_children(p))
    return total


@pytest.fixture(scope="module")
def wide_dataset(tmp_path_factory) -> Path:
    """Two planets with a quarter of the real frames: wide enough that chunks matter."""
    from arielstream.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("wide")
    simulate_dataset(root, n_planets=2, scale=0.25, seed=3, two_visit_fraction=0.0)
    return root


@pytest.mark.slow
def test_the_memory_budget_holds_for_the_whole_process_tree(wide_dataset, tmp_path):
    budget = 900_000_000
    out = tmp_path / "o.h5"
    proc = start_cli("calibrate", wide_dataset, "-o", out, "--jobs", "2", "--memory", budget, "--no-progress", "-vv")
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    bound = int(stdout.split("peak RSS of the process tree <= ")[1].split(" MB")[0]) * 10**6
    assert "2 worker(s)" in stderr
    assert peak <= budget, f"sampled tree RSS {peak / 1e6:.0f} MB over the {budget / 1e6:.0f} MB budget"
    assert bound <= budget, f"sum of process peaks {bound / 1e6:.0f} MB over the budget\n{stdout}\n{stderr}"
    assert peak > 0.3 * budget  # the measurement saw the work


def test_dask_backend_on_a_local_cluster_gives_the_same_bytes(clean_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        out = tmp_path / "dask.h5"
        summary = calibrate(DATA_SAMPLES, out, backend="dask", scheduler=cluster.scheduler_address,
                            task_timeout=300, progress=False, log_file=False)
        assert summary.ok
        pids = {r.pid for r in summary.results}
        assert os.getpid() not in pids  # the work ran in the cluster's processes
    assert same_bytes(out, clean_run)


def test_force_recomputes_even_a_complete_output(clean_run, tmp_path):
    out = tmp_path / "o.h5"
    shutil.copy(clean_run, out)
    with h5py.File(out, "r+") as f:  # tamper: only a recomputation restores it
        f["FGS1/signal"][0, 0, 0, 0] = 12345.0
    code, stdout, stderr = calibrate_cli(out, "--force", "--jobs", "1")
    assert code == 0 and "this run computed 3" in stdout, stderr
    assert same_bytes(out, clean_run)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_task_over_the_timeout_is_retried_alone_then_failed_and_the_rest_complete(tmp_path, jobs):
    out, hanging = tmp_path / "o.h5", tmp_path / "hanging"
    # the third observation hangs on every attempt, the others stay far below the timeout even on a loaded
    # machine; the test takes twice TASK_TIMEOUT (the task, then its retry alone)
    code, stdout, stderr = calibrate_cli(out, "--jobs", jobs, "--task-timeout", str(TASK_TIMEOUT),
                                         env=hang(2, hanging))
    assert hanging.exists(), "the fault was injected"
    assert code == EXIT_FAILURES, stderr
    assert "Traceback" not in stderr
    assert list(statuses(out)) == [1, 1, 2]
    assert "over the task timeout" in stdout



def test_coordinator_deaths_are_not_blamed_on_the_observations_of_its_workers(clean_run, tmp_path):
    out, hanging = tmp_path / "o.h5", tmp_path / "hanging"
    for _ in range(3):  # three coordinators killed while a worker was mid-observation (the same one)
        hanging.unlink(missing_ok=True)
        proc = start_cli("calibrate", DATA_SAMPLES, "-o", out, "--jobs", "2", "--no-progress", "--force"
                         if not OutputFiles.of(out).partial.exists() else "--no-log-file", env=hang(2, hanging))
        try:
            _wait_until_hanging(proc, hanging)
            assert statuses(OutputFiles.of(out).partial)[2] == 3
        finally:
            proc.kill()
            proc.communicate()
    code, stdout, stderr = calibrate_cli(out, "--jobs", "2")
    assert code == 0, stdout + stderr
    assert same_bytes(out, clean_run)


def test_a_run_killed_while_laying_out_the_file_does_not_block_the_next(clean_run, tmp_path):
    out = tmp_path / "o.h5"
    staging = tmp_path / "o.h5.partial.new"
    staging.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(3000))  # what a kill inside h5py's layout leaves
    code, _, stderr = calibrate_cli(out, "--jobs", "1")
    assert code == 0, stderr
    assert not staging.exists() and same_bytes(out, clean_run)


def test_relative_paths_are_resolved_for_the_workers(clean_run, tmp_path):
    code, _, stderr = run_cli("calibrate", os.path.relpath(DATA_SAMPLES, tmp_path), "-o", "o.h5", "--jobs", "2",
                              "--no-progress", cwd=tmp_path)
    assert code == 0, stderr
    assert same_bytes(tmp_path / "o.h5", clean_run)
