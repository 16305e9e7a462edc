"""One observation in the process that calibrates it: what the dispatch sends, and what comes back.

A run (:mod:`arielstream.run.runner`) dispatches (:mod:`arielstream.run.dispatch`) one
:class:`Task` per observation to a worker process (loky on one machine, dask on a
cluster), or runs it in the coordinator itself (``--jobs 1`` without a task timeout).
:func:`run_task` calibrates it (:func:`arielstream.run.observation.calibrate_observation`),
records its outcome in the output through the task's memmap descriptors and returns an
:class:`ObservationResult`. It is pickled by reference (``arielstream.run.worker.run_task``):
this module imports neither the runner nor the dispatch, so a worker loads only what a
task needs.

Test hooks (fault injection, read from ``ARIELSTREAM_FAULT``; never set them in production):

``kill-worker:PLANET:VISIT[:MARKER]``
    a worker calibrating that observation kills itself (SIGKILL) at its first chunk
    (only while file ``MARKER`` does not exist, which it then creates: a one-off death);
``hang-obs:PLANET:VISIT[:MARKER]``
    that observation hangs at its first chunk (sleeps for an hour) after creating
    ``MARKER``, on every attempt: the run cannot finish before a test acts on it;
``kill-coordinator:N``
    the coordinator kills itself after N results;
``hang-once:PLANET:VISIT:MARKER``
    that observation hangs at its first chunk after writing its process id into
    ``MARKER``, only while ``MARKER`` does not exist (a test then kills that worker);
``kill-publishing:PLANET:VISIT[:MARKER]`` (parts mode)
    a worker kills itself once that observation's part is whole under its temporary
    name in the parts folder, before linking it to its part name (with ``MARKER``:
    once, writing that temporary name into it);
``hang-published:PLANET:VISIT:MARKER`` (parts mode)
    that observation hangs once its part is published, after creating ``MARKER``.

In parts mode (:mod:`arielstream.io.parts`) a task calibrates into a part in its own
temporary folder and publishes it into the output's parts folder; its result names the part.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config.options import CalibrationConfig
from ..errors import ArielstreamError, OutputError, flag
from ..io.atomic import discard
from ..io.dataset import DatasetInfo, read_dataset_info
from ..io.ledger import Ledger
from ..io.parts import PartTarget, local_part, publish_part
from ..io.schema import STATUS, STATUS_DONE, STATUS_FAILED, STATUS_RUNNING
from ..io.storage import RemotePath, data_path, locator, stamp
from ..io.store import ArrayDescriptor, ChecksumScope, InstrumentLayout
from ..layout import Observation
from ..units import format_bytes
from .budget import is_out_of_memory, out_of_memory_cause, peak_rss, pin_threads, release_memory
from .observation import calibrate_observation
from .worker_logs import DaskLogChannel, LogChannel, forward_to

log = logging.getLogger(__name__)

HANG_SECONDS = 3600  # how long the hang-obs test hook sleeps: far longer than any test waits


class OrphanedWorker(BaseException):
    """This worker's coordinator is gone: abandon the observation."""


class Superseded(BaseException):
    """The coordinator revoked this attempt (it gave the observation up or to another writer)."""


@dataclass(frozen=True)
class Task:
    """Everything a worker needs for one observation: plain, picklable values."""

    index: int
    observation: Observation
    # a local folder, or the data folder's full URL (io/storage.locator): it may hold credentials, so a task's
    # repr (in a dask worker's log of a failed task) leaves it out; the observation's folder shows without them
    data_dir: str = field(repr=False)
    config: CalibrationConfig
    layouts: dict[str, InstrumentLayout]
    descriptors: dict[str, ArrayDescriptor]
    chunk_bytes: int
    threads: int
    parent_pid: int | None  # the coordinator, when the task runs in a local worker process
    in_coordinator: bool = False  # runs in the coordinator's own process (--jobs 1 without a timeout)
    masters: dict[str, Any] | None = None  # master dark/flat per instrument (master_calibration="dataset")
    manifest: str | None = None  # input manifest each input file is checked against (io/manifest.py)
    log_channel: LogChannel | DaskLogChannel | None = None  # where a worker sends its log records (run/worker_logs.py)
    inputs: str = ""  # fingerprint of its input files, recorded beside it (io/manifest.fingerprint)
    scope: ChecksumScope | None = None  # the output's keys, axes, attributes its checksum covers (read once)
    part: PartTarget | None = None  # parts mode: the part to write and publish (descriptors unused)


@dataclass
class ObservationResult:
    """What one attempt at an observation came to, reported by the process that made it."""

    index: int
    planet_id: int
    visit: int
    status: int
    error: str = ""
    seconds: float = 0.0
    pid: int = 0
    peak_rss: int = 0
    out_of_memory: bool = False  # failed for want of memory, not for its input
    part: str = ""  # parts mode: the part it published (NNNN.h5 in the parts folder)

    @property
    def ok(self) -> bool:
        """The observation is done."""
        return self.status == STATUS_DONE


@lru_cache(maxsize=4)
def _dataset_info(data_dir: str, stamps: tuple[tuple[int, int | None] | None, ...]) -> DatasetInfo:
    return read_dataset_info(data_path(data_dir))


def dataset_info(data_dir: str | Path | RemotePath) -> DatasetInfo:
    """The dataset-level files, read once per process (re-read if they change); a local folder or a URL."""
    root = data_path(data_dir)
    return _dataset_info(locator(root), tuple(stamp(root / name) for name in ("adc_info.csv", "axis_info.parquet")))


class _Fault:
    """Test-only fault injection (see the module docstring)."""

    def __init__(self, spec: str | None):
        self.kind, self.args = None, []
        if spec:
            self.kind, *self.args = spec.split(":")

    def _targets(self, obs: Observation) -> bool:
        return int(self.args[0]) == obs.planet_id and int(self.args[1]) == obs.visit

    def _marker(self) -> Path | None:
        return Path(self.args[2]) if len(self.args) > 2 else None

    def worker_chunk(self, obs: Observation) -> None:
        if self.kind == "hang-obs" and self._targets(obs):
            marker = self._marker()
            if marker is not None:
                marker.touch()
            time.sleep(HANG_SECONDS)
        elif self.kind == "hang-once" and self._targets(obs):
            marker = self._marker()
            if marker is not None and not marker.exists():
                marker.write_text(str(os.getpid()))
                time.sleep(HANG_SECONDS)
        elif self.kind == "kill-worker" and self._targets(obs):
            marker = self._marker()
            if marker is not None:
                if marker.exists():
                    return
                marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def publishing(self, obs: Observation, temp: Path) -> None:
        if self.kind == "kill-publishing" and self._targets(obs):
            marker = self._marker()
            if marker is not None:
                if marker.exists():
                    return
                marker.write_text(str(temp))
            os.kill(os.getpid(), signal.SIGKILL)

    def published(self, obs: Observation) -> None:
        if self.kind == "hang-published" and self._targets(obs):
            marker = self._marker()
            if marker is not None:
                marker.touch()
            time.sleep(HANG_SECONDS)

    def coordinator_result(self, n_results: int) -> None:
        if self.kind == "kill-coordinator" and n_results >= int(self.args[0]):
            os.kill(os.getpid(), signal.SIGKILL)


_WATCHED_PARENT: list[int] = []


def _watch_parent(parent_pid: int, period: float = 0.5) -> None:
    """In a worker process: exit soon after the coordinator dies, even while idle or never given a task.

    Idle loky workers otherwise linger for minutes after a killed coordinator, holding its
    pipes and overlapping the next cron run. The initializer of every local worker
    (:func:`_local_worker_options`); started once per worker process. joblib < 1.5 takes no
    initializer for its pool (:func:`.dispatch._execute`): there each worker starts it with its
    first task (:func:`run_task`), and one never given a task exits on joblib's idle timeout.
    """
    if _WATCHED_PARENT:
        return
    _WATCHED_PARENT.append(parent_pid)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name="arielstream-parent-watch", daemon=True).start()


def run_task(task: Task) -> ObservationResult:
    """Calibrate one observation and record its outcome in its file or part; never raises for bad input."""
    t0 = time.perf_counter()
    in_worker = task.parent_pid is not None and os.getpid() != task.parent_pid
    if in_worker:
        # Ctrl-C on a terminal reaches the whole process group: the coordinator stops the run and its
        # workers; a worker of its own would only print a KeyboardInterrupt traceback (main thread only).
        # A closed terminal's SIGHUP too: the coordinator stops the run and cleans up
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if in_worker and task.parent_pid is not None:
        _watch_parent(task.parent_pid)  # started already where the pool ran it as the initializer
    if task.log_channel is not None and (in_worker or isinstance(task.log_channel, DaskLogChannel)):
        forward_to(task.log_channel, task.observation.label)
    pin_threads(task.threads)
    _system_arrow_pool()
    fault = _Fault(os.environ.get("ARIELSTREAM_FAULT"))
    if task.part is None:
        return _calibrate_into(task, task.descriptors, task.index, task.scope, in_worker, fault, t0)
    obs, target = task.observation, task.part
    key = (obs.planet_id, obs.visit)
    with local_part(target.template, key) as local:
        outcome = _calibrate_into(task, target.template.descriptors(local), 0, target.template.scope_for(key),
                                  in_worker, fault, t0)
        published = publish_part(local, Path(target.folder), target.name, lambda temp: fault.publishing(obs, temp))
    if not published:  # left by an attempt the coordinator gave up on: this one is computed again
        log.warning("%s: part %s is already there; not replaced", obs.label, target.name)
        outcome.status, outcome.error = STATUS_RUNNING, "part name taken"
        return outcome
    fault.published(obs)
    outcome.part, outcome.seconds = target.name, time.perf_counter() - t0
    return outcome


def _calibrate_into(task: Task, descriptors: dict[str, ArrayDescriptor], slot: int, scope: ChecksumScope | None,
                    in_worker: bool, fault: _Fault, t0: float) -> ObservationResult:
    """Calibrate ``task``'s observation into observation ``slot`` of ``descriptors``; its result (``task.index``)."""
    obs, index = task.observation, task.index
    ledger = Ledger(descriptors)
    token = ledger.claim(slot, count_attempt=task.in_coordinator)  # in the coordinator, a death is its own

    def checkpoint() -> None:
        if in_worker and os.getppid() != task.parent_pid:
            raise OrphanedWorker()
        if ledger.owner(slot) != token:
            raise Superseded()
        fault.worker_chunk(obs)

    def result(status: int, message: str = "", oom: bool = False) -> ObservationResult:
        return ObservationResult(index, obs.planet_id, obs.visit, status, message, time.perf_counter() - t0,
                                 os.getpid(), peak_rss(), oom)

    oom = False

    try:
        info = dataset_info(task.data_dir)
        provenance = calibrate_observation(obs, slot, info, task.config, task.layouts, descriptors,
                                           task.chunk_bytes, checkpoint, task.masters, task.manifest)
    except OrphanedWorker:
        log.warning("%s: the coordinator is gone; abandoning it", obs.label)
        if task.part is not None:  # its local part: nobody else would remove it
            discard(Path(descriptors[STATUS].path))
        os._exit(1)
    except Superseded:
        log.warning("%s: this attempt was revoked by the coordinator; abandoning it", obs.label)
        return result(STATUS_RUNNING, "revoked")
    except OutputError:  # the output cannot be written (disk full, I/O error): the run stops, not only this one
        raise
    except Exception as exc:  # bad input fails this observation alone; so do a bug and a lack of memory
        message, oom = _failure_message(obs, exc, task.chunk_bytes), is_out_of_memory(exc)
    else:
        if ledger.owner(slot) != token:
            return result(STATUS_RUNNING, "revoked")
        ledger.done(slot, provenance, task.inputs, scope)
        _after_observation(in_worker)
        return result(STATUS_DONE)
    if ledger.owner(slot) != token:
        return result(STATUS_RUNNING, "revoked")
    ledger.fail(slot, message)
    return result(STATUS_FAILED, message, oom)


def _after_observation(in_worker: bool) -> None:
    """Release what the observation freed, so the next one starts from what the process holds.

    In a worker process, what survives is long-lived (imports, caches) and is frozen out
    of later collections: a full collection of a worker's ~150k objects takes ~75 ms,
    one of what an observation leaves, ~1 ms. (The coordinator's own objects are frozen
    for the run only: :func:`_gc_frozen`.)
    """
    release_memory()
    if in_worker:
        gc.freeze()


def _failure_message(obs: Observation, exc: Exception, chunk_bytes: int) -> str:
    """Why an observation failed: out of memory (whatever wrapped it), its input, or a bug (traceback logged)."""
    cause = out_of_memory_cause(exc)
    if cause is not None:
        where = "" if cause is exc else f", while: {exc}"
        return (f"{obs.label}: out of memory, not an input error ({str(cause) or type(cause).__name__}{where}; chunk "
                f"budget {format_bytes(chunk_bytes)}); a rerun retries it: lower {flag('jobs', ...)} or "
                f"{flag('memory', ...)}, or raise the memory limit")
    if isinstance(exc, ArielstreamError):
        return str(exc)
    log.error("%s failed with an unexpected error", obs.label, exc_info=exc)  # a bug must not sink the batch
    return f"{obs.label}: internal error {type(exc).__name__}: {exc}"


def _system_arrow_pool() -> None:
    """Allocate Arrow buffers with the system allocator in this process (run only, never at import).

    Arrow's default allocator (mimalloc) keeps what a process freed: ~50 MB more peak
    RSS per worker on a full-size observation than the system allocator, for no speed
    (BENCHMARKS.md). Set per task, so importing arielstream changes nothing process-wide.
    """
    import pyarrow

    if pyarrow.default_memory_pool().backend_name != "system":
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())
