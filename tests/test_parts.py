"""Parts mode: each observation written into a part file of its own, published as an index (io/parts.py).

Whatever happens (a worker killed mid-observation or while publishing its part, the
coordinator killed or stopped, dask workers in processes of their own, one of them
killed), the published output reads through h5py exactly as a single-file run of the same
data: the same cubes, DQ planes, statuses and checksums. Faults are injected with the
project's hooks (``ARIELSTREAM_FAULT``) and signals, never by timing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from arielstream import calibrate
from arielstream.cli import app as cli
from arielstream.cli.exits import EXIT_OK, EXIT_TERMINATED
from arielstream.io import store
from arielstream.io.output import RunLock
from arielstream.io.parts import LOCAL_PREFIX, TEMP_SUFFIX, PartsLedger, check_part, sweep_local_parts, temp_number
from arielstream.io.sidefiles import OutputFiles
from arielstream.layout import discover_observations
from arielstream.run import dispatch

from .conftest import DATA_SAMPLES, REPO
from .test_batch import _wait_until_hanging, calibrate_cli, hang, same_bytes, signal_while_hanging, start_cli
from .test_incremental import observation_bytes, referenced

FAULT = "ARIELSTREAM_FAULT"


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """The reference: data_samples calibrated in one uninterrupted serial run into a single file."""
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    summary = calibrate(DATA_SAMPLES, out, jobs=1, progress=False, log_file=False)
    assert summary.ok and summary.action == "new"
    return out


def key(index: int) -> tuple[int, int]:
    obs = discover_observations(DATA_SAMPLES, "train")[index]
    return obs.planet_id, obs.visit


def temporaries(out: Path) -> list[str]:
    """What the parts folder holds besides parts (temporary names of parts being copied in)."""
    folder = OutputFiles.of(out).parts
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".h5") if folder.is_dir() else []


def part_keys(out: Path) -> dict[tuple[int, int], str]:
    """Each observation of the parts folder's parts, and the part holding it."""
    found = {}
    for path in sorted(OutputFiles.of(out).parts.glob("*.h5")):
        with h5py.File(path, "r") as f:
            for planet, visit in zip(f["planet_id"][()].tolist(), f["visit"][()].tolist(), strict=True):
                found[planet, visit] = path.name
    return found


def identical(out: Path, clean: Path) -> None:
    """``out`` is an index over one-observation parts that reads exactly as ``clean``, and verifies."""
    with h5py.File(out, "r") as f:
        assert store.is_index(f) and (f["status"][()] == 1).all()
        n = f["status"].shape[0]
    assert len(referenced(out)) == n  # one part per observation
    assert same_bytes(out, clean)  # every dataset through h5py, and each observation's stored bytes
    assert observation_bytes(out) == observation_bytes(clean)  # cubes, DQ, provenance, inputs, checksum
    assert temporaries(out) == []
    assert cli.main(["verify", str(out)]) == EXIT_OK


@pytest.mark.parametrize("jobs", [2, 1])
def test_a_parts_run_publishes_what_a_single_file_run_does(clean_run, tmp_path, jobs):
    out = tmp_path / "parts.h5"
    summary = calibrate(DATA_SAMPLES, out, jobs=jobs, parts=True, progress=False, log_file=False)
    assert summary.ok and summary.action == "new" and len(summary.results) == 3
    assert os.getpid() not in {r.pid for r in summary.results}  # --jobs 1 too: in a worker process of its own
    assert sorted(r.part for r in summary.results) == referenced(out)  # each result named the part it published
    assert not OutputFiles.of(out).partial.exists()
    identical(out, clean_run)


def test_a_worker_killed_mid_observation_is_retried_and_the_output_is_unchanged(clean_run, tmp_path):
    planet, visit = key(1)
    marker = tmp_path / "killed-once"
    out = tmp_path / "o.h5"
    code, _, stderr = calibrate_cli(out, "--jobs", "2", "--parts",
                                    env={FAULT: f"kill-worker:{planet}:{visit}:{marker}", "TMPDIR": str(tmp_path)})
    assert marker.exists(), "the fault was injected"
    assert code == EXIT_OK, stderr
    assert "a worker died" in stderr
    identical(out, clean_run)


def test_a_writer_killed_while_publishing_leaves_a_temporary_name_never_read_and_then_removed(clean_run, tmp_path):
    planet, visit = key(0)
    marker = tmp_path / "killed-once"
    out = tmp_path / "o.h5"
    code, _, stderr = calibrate_cli(out, "--jobs", "2", "--parts",
                                    env={FAULT: f"kill-publishing:{planet}:{visit}:{marker}", "TMPDIR": str(tmp_path)})
    assert code == EXIT_OK, stderr
    left = Path(marker.read_text())  # the whole part the killed writer left under its temporary name
    assert left.parent == OutputFiles.of(out).parts and left.name.endswith(TEMP_SUFFIX) and temp_number(left) > 0
    assert "a worker died" in stderr
    assert not left.exists()  # removed by the publish
    assert f"{temp_number(left):04d}.h5" not in referenced(out)  # its attempt's part name was never used
    identical(out, clean_run)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_stopped_coordinator_leaves_whole_parts_that_the_rerun_keeps(clean_run, tmp_path, signum):
    """One job (in a worker process): the first two observations are published when the third hangs.

    A part renamed to a temporary name (what a writer killed between its fsync and its link
    leaves) is not read by the rerun, which computes that observation again and removes it.
    """
    out, hanging, report = tmp_path / "o.h5", tmp_path / "hanging", tmp_path / "report.json"
    env = {**hang(2, hanging), "TMPDIR": str(tmp_path)}
    proc = start_cli("calibrate", DATA_SAMPLES, "-o", out, "--jobs", "1", "--parts", "--no-progress", env=env)
    stderr = signal_while_hanging(proc, hanging, signum)
    if signum == signal.SIGTERM:
        assert proc.returncode == EXIT_TERMINATED, stderr
        assert "run the same command to resume" in stderr and "o.h5.parts" in stderr and "Traceback" not in stderr
        with RunLock(out):  # released
            pass
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    found = part_keys(out)
    assert sorted(found) == sorted([key(0), key(1)])
    parts = OutputFiles.of(out).parts
    kept, renamed = found[key(0)], found[key(1)]
    before = (parts / kept).stat()
    (parts / renamed).rename(parts / f".{renamed}.0123456789ab{TEMP_SUFFIX}")

    code, _, stderr = calibrate_cli(out, "--jobs", "1", "--parts", "--report", report, env={"TMPDIR": str(tmp_path)})
    assert code == EXIT_OK, stderr
    done = json.loads(report.read_text())
    assert (done["action"], done["computed"]) == ("resume", 2)  # the kept part was not computed again
    after = (parts / kept).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and kept in referenced(out)
    assert "cannot be read" not in stderr
    identical(out, clean_run)


RECORDER = '''
import os, sys
import h5py

record = open(sys.argv[1], "a", buffering=1)


def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and ".parts" in os.fsdecode(args[0]):
        record.write(f"{os.getpid()} {os.fsdecode(args[0])}\\n")


sys.addaudithook(hook)  # Python's own opens (open(), os.open, numpy.memmap) of this process


class Recorded(h5py.File):  # and HDF5's, which Python does not see
    def __init__(self, name, *args, **kwargs):
        hook("open", (name,))
        super().__init__(name, *args, **kwargs)


h5py.File = Recorded
from arielstream.cli import app

sys.exit(app.main(sys.argv[2:]))
'''


def test_the_coordinator_opens_a_part_only_after_its_task_returned(tmp_path):
    """The first observation's worker hangs once its part is published: its task never returns.

    Every file the coordinator opens under the parts folder is recorded (an audit hook and
    h5py); the others' parts are opened (checked when their tasks returned), that one never.
    """
    out, hanging, opened = tmp_path / "o.h5", tmp_path / "hanging", tmp_path / "opened.txt"
    driver = tmp_path / "driver.py"
    driver.write_text(RECORDER)
    planet, visit = key(0)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([sys.executable, driver, opened, "calibrate", DATA_SAMPLES, "-o", out, "--jobs", "2",
                             "--parts", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": path, "TMPDIR": str(tmp_path),
                                 FAULT: f"hang-published:{planet}:{visit}:{hanging}"})
    log = OutputFiles.of(out).log
    try:
        _wait_until_hanging(proc, hanging)
        deadline = time.monotonic() + 120
        while not (log.exists() and "[2/3]" in log.read_text()):  # the two others returned and were checked
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_TERMINATED
    found = part_keys(out)
    assert len(found) == 3
    by_coordinator = {Path(line.split(" ", 1)[1]).name for line in opened.read_text().splitlines()
                      if int(line.split(" ", 1)[0]) == proc.pid}
    returned = {name for k, name in found.items() if k != (planet, visit)}
    assert returned <= by_coordinator  # the recording sees the coordinator's reads
    assert found[planet, visit] not in by_coordinator


def test_parts_on_a_single_file_output_extend_it(clean_run, tmp_path):
    """An output written as one file is extended in parts mode: it becomes a part (a link), the rest parts."""
    out, report = tmp_path / "o.h5", tmp_path / "report.json"
    first = key(0)[0]
    summary = calibrate(DATA_SAMPLES, out, planets=[first], jobs=1, progress=False, log_file=False)
    assert summary.ok and not OutputFiles.of(out).parts.exists()
    inode = out.stat().st_ino
    code, _, stderr = calibrate_cli(out, "--jobs", "2", "--parts", "--report", report)
    assert code == EXIT_OK, stderr
    done = json.loads(report.read_text())
    assert (done["action"], done["computed"], done["added"]) == ("extend", 2, 2)  # the other planet's two visits
    names = referenced(out)
    assert len(names) == 3 and inode in {(OutputFiles.of(out).parts / name).stat().st_ino for name in names}  # the
    # single file is one of the parts: linked, not copied
    assert same_bytes(out, clean_run)
    assert observation_bytes(out) == observation_bytes(clean_run)
    assert cli.main(["verify", str(out)]) == EXIT_OK


def test_a_default_mode_run_killed_then_resumed_in_parts_mode_keeps_what_it_finished(clean_run, tmp_path):
    """The killed run's ``.partial`` becomes a part (what it finished is kept); the rest are parts of their own."""
    out, report = tmp_path / "o.h5", tmp_path / "report.json"
    code, _, _ = calibrate_cli(out, "--jobs", "1", env={FAULT: "kill-coordinator:1"})
    assert code == -signal.SIGKILL and OutputFiles.of(out).partial.exists()
    code, _, stderr = calibrate_cli(out, "--jobs", "2", "--parts", "--report", report, env={"TMPDIR": str(tmp_path)})
    assert code == EXIT_OK, stderr
    assert json.loads(report.read_text())["computed"] == 2
    assert not OutputFiles.of(out).partial.exists()
    identical(out, clean_run)


def test_a_stopped_force_run_in_parts_mode_goes_on_with_its_own_parts_alone(clean_run, tmp_path):
    """The old output's third observation is damaged: a resumed --force run must not keep it."""
    out, hanging, report = tmp_path / "o.h5", tmp_path / "hanging", tmp_path / "report.json"
    shutil.copy(clean_run, out)
    with h5py.File(out, "r+") as f:
        f["FGS1/signal"][2, 0, 0, 0] = 12345.0
    proc = start_cli("calibrate", DATA_SAMPLES, "-o", out, "--jobs", "1", "--parts", "--force", "--no-progress",
                     env={**hang(2, hanging), "TMPDIR": str(tmp_path)})
    try:
        _wait_until_hanging(proc, hanging)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    code, _, stderr = calibrate_cli(out, "--jobs", "1", "--parts", "--report", report)
    assert code == EXIT_OK, stderr
    assert json.loads(report.read_text())["computed"] == 1  # the third observation, not kept from the old output
    identical(out, clean_run)
    assert not OutputFiles.of(out).fresh.exists()


def test_a_part_is_checked_against_its_template_key_status_and_checksum(tmp_path, monkeypatch):
    """What the coordinator checks before it accepts a part (io/parts.check_part)."""
    made: list[PartsLedger] = []
    real = dispatch._parts_ledger
    monkeypatch.setattr(dispatch, "_parts_ledger", lambda *args: made.append(real(*args)) or made[-1])
    out = tmp_path / "o.h5"
    assert calibrate(DATA_SAMPLES, out, jobs=1, parts=True, progress=False, log_file=False).ok
    template, k = made[0].template, key(0)
    part = OutputFiles.of(out).parts / part_keys(out)[k]
    assert check_part(part, template, k, 1) == ""
    assert "not those of a part of" in check_part(part, template, key(1), 1)  # another observation's key
    assert check_part(part, template, k, 2) == "its status is 1, not 2"
    damaged = tmp_path / "damaged.h5"
    raw = bytearray(part.read_bytes())
    signal_at = template.arrays["AIRS-CH0/signal"].offset
    raw[signal_at: signal_at + 4] = np.float32(1e9).tobytes()
    damaged.write_bytes(bytes(raw))
    assert check_part(damaged, template, k, 1) == "its bytes do not match its checksum"
    damaged.write_bytes(bytes(raw[:-1]))
    assert "bytes, not" in check_part(damaged, template, k, 1)


@pytest.fixture()
def dask_cluster(tmp_path):
    """A dask scheduler and two workers (no nanny), each a process of its own with its own TMPDIR.

    Yields (scheduler address, {worker pid: its TMPDIR}, the hang-once marker the workers watch).
    """
    pytest.importorskip("distributed")
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("no dask command beside this Python")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    scheduler_file, marker = tmp_path / "scheduler.json", tmp_path / "hanging"
    planet, visit = key(1)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen([dask, "scheduler", "--scheduler-file", scheduler_file, "--port", "0",
                                       "--host", "127.0.0.1", "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        temps = {}
        for name in ("a", "b"):
            temp = tmp_path / f"tmp-{name}"
            temp.mkdir()
            worker = subprocess.Popen([dask, "worker", "--scheduler-file", scheduler_file, "--nthreads", "1",
                                       "--no-nanny", "--no-dashboard", "--local-directory", tmp_path / f"dask-{name}"],
                                      env={**env, "TMPDIR": str(temp), FAULT: f"hang-once:{planet}:{visit}:{marker}"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(worker)
            temps[worker.pid] = temp
        from distributed import Client

        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, "the scheduler did not start"
            time.sleep(0.05)
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        yield address, temps, marker
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_dask_workers_of_their_own_write_parts_and_a_worker_killed_mid_run_changes_nothing(clean_run, tmp_path,
                                                                                         dask_cluster):
    """A worker hangs in the second observation (hang-once); the test kills it; dask runs the task elsewhere."""
    address, temps, marker = dask_cluster
    killed: list[int] = []

    def kill_the_hanging_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = marker.read_text() if marker.exists() else ""
            if text:
                killed.append(int(text))
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_hanging_worker, daemon=True)
    killer.start()
    out = tmp_path / "dask.h5"
    summary = calibrate(DATA_SAMPLES, out, backend="dask", scheduler=address, progress=False, log_file=False)
    killer.join(timeout=5)
    assert killed and killed[0] in temps, "the fault fired in one of the workers, which was killed"
    assert summary.ok
    survivor = next(pid for pid in temps if pid != killed[0])
    assert [r.pid for r in summary.results if (r.planet_id, r.visit) == key(1)] == [survivor]  # ran again there
    # each worker calibrated in its own TMPDIR: the killed one's local part is still there, the other's are gone
    left = list(temps[killed[0]].glob(f"{LOCAL_PREFIX}*.h5"))
    assert left and not list(temps[survivor].glob(f"{LOCAL_PREFIX}*"))
    identical(out, clean_run)
    # the next task there removes it (its writer's lock went with it); nothing else in the folder is touched
    other = temps[killed[0]] / "someone-elses.h5"
    other.write_bytes(b"x")
    assert sweep_local_parts(temps[killed[0]], min_age=0) == left and other.exists() and not left[0].exists()


def test_a_local_part_is_removed_by_the_next_task_only_once_nobody_holds_it(tmp_path):
    """The writer's lock decides, not its process id (workers in other PID namespaces may share TMPDIR)."""
    import fcntl

    stale, held, fresh = (tmp_path / f"{LOCAL_PREFIX}{name}.h5" for name in ("1-stale", "2-held", "3-fresh"))
    for path in (stale, held, fresh):
        path.write_bytes(b"")
    for path in (stale, held):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    with open(held, "rb") as writer:  # another open file description: as another process's lock
        fcntl.flock(writer, fcntl.LOCK_EX)
        assert sweep_local_parts(tmp_path) == [stale]
    assert held.exists() and fresh.exists()
    assert sweep_local_parts(tmp_path) == [held]  # its writer gone; the fresh one's may not have locked it yet
