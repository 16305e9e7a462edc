"""A calibration run: many observations, in parallel, in a RAM budget, crash-safe and resumable.

:func:`calibrate` (the public call, keyword options) builds a
:class:`~arielstream.config.options.RunOptions` and hands it to :func:`run_calibration`,
which runs four stages:

1. **identity** (:func:`identify`): resolve the paths, read the dataset-level files, list
   the observations and compute what identifies the output (:mod:`arielstream.run.identity`).
   Then, under the run lock (``OUT.h5.lock``; a second run on the same output stops at
   once), decide from what is on disk whether to start, resume, retry failures or do
   nothing (:mod:`arielstream.run.lifecycle`); a new file is laid out and closed before
   any worker starts, with its disk space reserved;
2. **plan** (:func:`plan_run`): the worker count, threads per worker and chunk budget from the
   RAM budget and the coordinator's measured footprint (:func:`arielstream.run.budget.plan_workers`);
3. **dispatch** (:func:`dispatch`): one :class:`Task` per observation through joblib (loky
   processes on one machine, or dask workers on a cluster). A task carries descriptors
   ``(path, offset, shape, dtype)``, never an open file or memmap, and writes its
   observation's bytes, then its checksum and status, through memmaps. When a worker
   dies (killed, out of memory, timed out), its observation goes back to pending and is
   retried alone; a second death fails it, and the rest go on. Every checksum is
   verified, and ``OUT.h5`` is published by an atomic rename;
4. **summary** (:func:`summarize`): the time taken and a bound on the process tree's peak RSS.

SIGTERM, SIGHUP and Ctrl-C stop the dispatch, leave what is done in ``OUT.h5.partial``,
release the lock and exit; running the same command again resumes.

Test hooks (fault injection, read from ``ARIELSTREAM_FAULT``; never set them in production):

``kill-worker:PLANET:VISIT[:MARKER]``
    a worker calibrating that observation kills itself (SIGKILL) at its first chunk
    (only while file ``MARKER`` does not exist, which it then creates: a one-off death);
``hang-obs:PLANET:VISIT[:MARKER]``
    that observation hangs at its first chunk (sleeps for an hour) after creating
    ``MARKER``, on every attempt: the run cannot finish before a test acts on it;
``kill-coordinator:N``
    the coordinator kills itself after N results.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import logging.handlers
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py

from ..config.options import CalibrationConfig, RunOptions
from ..config.recipe import describe_recipe
from ..errors import ArielstreamError, InputError, MemoryBudgetError, OutputError, RunInterrupted
from ..io.dataset import DatasetInfo, read_dataset_info
from ..io.manifest import check_manifest_covers, fingerprint, observation_inputs, resolve_manifest
from ..io.output import OutputFiles, check_write_targets
from ..io.store import (
    ERROR,
    PLANET_ID,
    STATUS,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_PENDING,
    STATUS_RUNNING,
    VISIT,
    ArrayDescriptor,
    ChecksumScope,
    InstrumentLayout,
    checksum_scope,
    fail_observation,
    owner,
    read_field,
    record_result,
    write_field,
)
from ..layout import AIRS, INSTRUMENTS, Instrument, Observation, discover_observations, frames_per_bin
from ..units import format_bytes, parse_bytes
from . import identity
from .budget import (
    ARENA_ENV,
    MALLOC_ARENAS,
    WorkerPlan,
    address_headroom,
    available_cores,
    available_memory,
    current_rss,
    effective_budget,
    is_out_of_memory,
    out_of_memory_cause,
    peak_rss,
    physical_memory,
    pin_threads,
    plan_workers,
    release_memory,
)
from .lifecycle import PreparedOutput, RunLock, prepare_output, publish, reconcile, verify
from .observation import calibrate_observation, instrument_layout, load_masters
from .runs import DEFAULT_RUNS_DIR, prepare_run, run_output
from .worker_logs import LogChannel, LogForwarder, above_bar, forward_to

log = logging.getLogger(__name__)

DEFAULT_MEMORY = "2GB"
IDLE_WORKER_TIMEOUT_S = 10  # idle loky workers exit this soon (they outlive a killed coordinator otherwise)
MAX_ROUNDS = 4  # dispatch rounds after worker deaths or checksum mismatches before giving up
CONSOLE_OPTIONAL = "arielstream_console_optional"  # log-record flag: the console may drop it (a bar shows it)
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
    data_dir: str
    config: CalibrationConfig
    layouts: dict[str, InstrumentLayout]
    descriptors: dict[str, ArrayDescriptor]
    chunk_bytes: int
    threads: int
    parent_pid: int | None  # the coordinator, when the task runs in a local worker process
    in_coordinator: bool = False  # runs in the coordinator's own process (--jobs 1 without a timeout)
    masters: dict[str, Any] | None = None  # master dark/flat per instrument (master_calibration="dataset")
    manifest: str | None = None  # input manifest each input file is checked against (io/manifest.py)
    log_channel: LogChannel | None = None  # where a local worker sends its log records (run/worker_logs.py)
    inputs: str = ""  # fingerprint of its input files, recorded beside it (io/manifest.fingerprint)
    scope: ChecksumScope | None = None  # the output's keys, axes, attributes its checksum covers (read once)


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

    @property
    def ok(self) -> bool:
        """The observation is done."""
        return self.status == STATUS_DONE


@dataclass
class RunSummary:
    """What a run did: its output, how it started, every observation's status and what it computed."""

    output: Path
    action: str = "new"  # lifecycle.PreparedOutput.action: "new", "resume", "extend", ... or "complete"
    statuses: list[tuple[int, int, str, str]] = field(default_factory=list)  # planet, visit, status, error
    results: list[ObservationResult] = field(default_factory=list)  # what this run computed
    seconds: float = 0.0
    peak_rss_bound: int = 0  # coordinator + every worker + resource trackers, each at its peak: >= the tree's
    plan: WorkerPlan | None = None
    counts: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # added, recomputed, retried, kept, ...

    @property
    def failed(self) -> list[tuple[int, int, str, str]]:
        """The statuses of the observations that are not done."""
        return [s for s in self.statuses if s[2] != "done"]

    @property
    def ok(self) -> bool:
        """Every observation of the output is done."""
        return not self.failed

    def __repr__(self) -> str:
        """One readable line (a notebook shows it): output, counts, time and peak memory."""
        done = len(self.statuses) - len(self.failed)
        return (f"<RunSummary {self.output}: {self.action}, {done} done, {len(self.failed)} failed of "
                f"{len(self.statuses)}; this run computed {len(self.results)} in {self.seconds:.1f} s, "
                f"peak RSS <= {format_bytes(self.peak_rss_bound)}>")

    @property
    def out_of_memory(self) -> list[ObservationResult]:
        """What this run failed for want of memory (not for its input): a rerun with more retries them."""
        return [r for r in self.results if r.out_of_memory]


@lru_cache(maxsize=4)
def _dataset_info(data_dir: str, stamp: tuple[float, ...]) -> DatasetInfo:
    return read_dataset_info(data_dir)


def dataset_info(data_dir: str | Path) -> DatasetInfo:
    """The dataset-level files, read once per process (re-read if they change)."""
    root = Path(data_dir)
    stamp = tuple((root / name).stat().st_mtime if (root / name).exists() else -1.0
                  for name in ("adc_info.csv", "axis_info.parquet"))
    return _dataset_info(str(root), stamp)


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
        elif self.kind == "kill-worker" and self._targets(obs):
            marker = self._marker()
            if marker is not None:
                if marker.exists():
                    return
                marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def coordinator_result(self, n_results: int) -> None:
        if self.kind == "kill-coordinator" and n_results >= int(self.args[0]):
            os.kill(os.getpid(), signal.SIGKILL)


_WATCHED_PARENT: list[int] = []


def _watch_parent(parent_pid: int, period: float = 0.5) -> None:
    """In a worker process: exit soon after the coordinator dies, even while idle or never given a task.

    Idle loky workers otherwise linger for minutes after a killed coordinator, holding its
    pipes and overlapping the next cron run. The initializer of every local worker
    (:func:`_local_worker_options`); started once per worker process.
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
    """Calibrate one observation and record its outcome in the file; never raises for bad input."""
    t0 = time.perf_counter()
    obs, index, descriptors = task.observation, task.index, task.descriptors
    in_worker = task.parent_pid is not None and os.getpid() != task.parent_pid
    if in_worker:
        # Ctrl-C on a terminal reaches the whole process group: the coordinator stops the run and its
        # workers; a worker of its own would only print a KeyboardInterrupt traceback (main thread only).
        # A closed terminal's SIGHUP too: the coordinator stops the run and cleans up
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if in_worker and task.log_channel is not None:
        forward_to(task.log_channel)
    pin_threads(task.threads)
    _system_arrow_pool()
    fault = _Fault(os.environ.get("ARIELSTREAM_FAULT"))
    token = secrets.randbits(62) + 1
    write_field(descriptors, "owner", index, token)
    if task.in_coordinator:  # a death here is the coordinator's: count it against the observation
        write_field(descriptors, "attempts", index, int(read_field(descriptors, "attempts")[index]) + 1)
    write_field(descriptors, "status", index, STATUS_RUNNING)

    def checkpoint() -> None:
        if in_worker and os.getppid() != task.parent_pid:
            raise OrphanedWorker()
        if owner(descriptors, index) != token:
            raise Superseded()
        fault.worker_chunk(obs)

    def result(status: int, message: str = "", oom: bool = False) -> ObservationResult:
        return ObservationResult(index, obs.planet_id, obs.visit, status, message, time.perf_counter() - t0,
                                 os.getpid(), peak_rss(), oom)

    oom = False

    try:
        info = dataset_info(task.data_dir)
        provenance = calibrate_observation(obs, index, info, task.config, task.layouts, descriptors,
                                           task.chunk_bytes, checkpoint, task.masters, task.manifest)
    except OrphanedWorker:
        log.warning("%s: the coordinator is gone; abandoning it", obs.label)
        os._exit(1)
    except Superseded:
        log.warning("%s: this attempt was revoked by the coordinator; abandoning it", obs.label)
        return result(STATUS_RUNNING, "revoked")
    except OutputError:  # the output cannot be written (disk full, I/O error): the run stops, not only this one
        raise
    except Exception as exc:  # bad input fails this observation alone; so do a bug and a lack of memory
        message, oom = _failure_message(obs, exc, task.chunk_bytes), is_out_of_memory(exc)
    else:
        if owner(descriptors, index) != token:
            return result(STATUS_RUNNING, "revoked")
        record_result(descriptors, index, STATUS_DONE, provenance=provenance, inputs=task.inputs, scope=task.scope)
        _after_observation(in_worker)
        return result(STATUS_DONE)
    if owner(descriptors, index) != token:
        return result(STATUS_RUNNING, "revoked")
    fail_observation(descriptors, index, message)
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
                f"budget {format_bytes(chunk_bytes)}); a rerun retries it: lower --jobs or --memory, or raise the "
                "memory limit")
    if isinstance(exc, ArielstreamError):
        return str(exc)
    log.error("%s failed with an unexpected error", obs.label, exc_info=exc)  # a bug must not sink the batch
    return f"{obs.label}: internal error {type(exc).__name__}: {exc}"


def _local_worker_options() -> dict[str, Any]:
    """What every local worker process starts with: the watch on this coordinator."""
    return {"initializer": _watch_parent, "initargs": (os.getpid(),)}


def _infrastructure_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning a worker (not an observation) failed."""
    from joblib.externals.loky.process_executor import BrokenProcessPool, TerminatedWorkerError

    # joblib reports a task over its timeout with multiprocessing's TimeoutError, not the built-in one
    errors: list[type[BaseException]] = [TerminatedWorkerError, BrokenProcessPool, TimeoutError,
                                         multiprocessing.TimeoutError]
    with contextlib.suppress(ImportError):
        from distributed import KilledWorker

        errors.append(KilledWorker)
    return tuple(errors)


def _execute(tasks: list[Task], plan: WorkerPlan, backend: str, task_timeout: float | None,
             ) -> Iterator[ObservationResult]:
    """Results in completion order: in this process for one local job, else through joblib.

    One local job with a task timeout runs in a single worker process instead, so that
    the timeout can be enforced and a dying task does not take the coordinator with it.
    """
    if backend == "loky" and plan.jobs == 1:
        if task_timeout is None:
            for task in tasks:
                yield run_task(task)
            return
        from joblib.externals.loky import ProcessPoolExecutor

        executor = ProcessPoolExecutor(max_workers=1, **_local_worker_options())
        try:
            for task in tasks:
                yield executor.submit(run_task, task).result(timeout=task_timeout)
        finally:
            executor.shutdown(wait=False, kill_workers=True)
        return
    from joblib import Parallel, delayed, parallel_config

    if backend == "loky":
        config = parallel_config(backend="loky", inner_max_num_threads=plan.threads,
                                 idle_worker_timeout=IDLE_WORKER_TIMEOUT_S, **_local_worker_options())
        n_jobs = plan.jobs
    else:
        config = parallel_config(backend="dask")
        n_jobs = -1
    with config:
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered", timeout=task_timeout,
                            pre_dispatch="n_jobs", batch_size=1)
        yield from parallel(delayed(run_task)(task) for task in tasks)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP (terminal closed) into :class:`RunInterrupted` while the run dispatches.

    Main thread only; elsewhere signals are left alone.
    """

    def handler(signum: int, frame: Any) -> None:
        raise RunInterrupted(signum)

    try:
        previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGHUP)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


class _RunLogHandler(logging.handlers.RotatingFileHandler):
    """The run's log file: a full disk or an I/O error under it stops the file (one warning), never the run."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` unless the file already failed."""
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """Stop writing the file and say so once on the console, instead of a traceback per record."""
        if not self.failed:
            self.failed = True
            log.warning("%s: cannot write the log file (%s); the run goes on without it", self.baseFilename,
                        sys.exc_info()[1])

    def close(self) -> None:
        """Close the file; a flush that fails (full disk) has already been reported or does not matter now."""
        try:
            super().close()
        except OSError:
            self.stream = None


@contextlib.contextmanager
def _log_file(output: Path, enabled: bool) -> Iterator[None]:
    """Log the run to ``OUT.h5.log`` (rotating) beside the output, as well as to the console."""
    if not enabled:
        yield
        return
    try:
        handler = _RunLogHandler(OutputFiles.of(output).log, maxBytes=5 * 2**20, backupCount=3)
    except OSError as exc:
        log.warning("%s.log: cannot open the log file (%s); the run goes on without it", output, exc)
        yield
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("arielstream")
    level = root.level
    if root.getEffectiveLevel() > logging.INFO:  # called from Python: logging is not set up, WARNING applies
        root.setLevel(logging.INFO)  # the console still shows only warnings (Python's last-resort handler)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """For the run only: the objects this process holds now are left out of garbage collections.

    The run collects garbage before it measures itself and after each observation it
    computes here; a full collection scans every object of the process (~100-150k after
    the imports, 35-75 ms), this one only what the run creates. Only the young
    generations are collected before the freeze (~1 ms): a cycle the caller dropped
    long ago waits for the collection after the run. The caller's objects are frozen
    only while the run lasts (``gc.unfreeze`` after it).
    """
    gc.collect(1)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _system_arrow_pool() -> None:
    """Allocate Arrow buffers with the system allocator in this process (run only, never at import).

    Arrow's default allocator (mimalloc) keeps what a process freed: ~50 MB more peak
    RSS per worker on a full-size observation than the system allocator, for no speed
    (BENCHMARKS.md). Set per task, so importing arielstream changes nothing process-wide.
    """
    import pyarrow

    if pyarrow.default_memory_pool().backend_name != "system":
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """For the run only: the allocators of workers started now, and the caller's pool back after.

    Worker processes inherit ``ARROW_DEFAULT_MEMORY_POOL=system``: switching the pool
    inside an already started worker (:func:`_system_arrow_pool`) leaves what pyarrow
    allocates in its C++ internals in mimalloc, and measured ~40 MB more per worker (the
    tree budget test). They inherit ``MALLOC_ARENA_MAX`` too (:data:`budget.MALLOC_ARENAS`),
    which glibc reads when a process starts. Values the user set are kept; the variables and
    the caller's own pool (tasks run here with ``--jobs 1``) are restored when the run ends.
    """
    import pyarrow

    pool = pyarrow.default_memory_pool()
    ours = {ARROW_POOL_ENV: "system", ARENA_ENV: str(MALLOC_ARENAS)}
    set_here = [name for name in ours if name not in os.environ]
    os.environ.update({name: ours[name] for name in set_here})
    try:
        yield
    finally:
        for name in set_here:
            os.environ.pop(name, None)
        pyarrow.set_memory_pool(pool)


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (a progress widget there, though stderr is no TTY)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _progress(total: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty() or _in_notebook()
    if not enabled:
        return None
    from tqdm.auto import tqdm  # a widget in Jupyter, a text bar on a terminal

    return tqdm(total=total, unit="obs", desc="calibrating", dynamic_ncols=True, smoothing=0.1)


def _abandon_running(descriptors: dict[str, ArrayDescriptor]) -> list[int]:
    """In-flight observations go back to pending without counting their attempt; returns them.

    Used when the run itself stopped them (an interruption) or when a pool broke and
    took every running task down with it, so that none is blamed for another's death.
    """
    status = read_field(descriptors, "status")
    attempts = read_field(descriptors, "attempts")
    running = [i for i in range(status.shape[0]) if status[i] == STATUS_RUNNING]
    for index in running:
        write_field(descriptors, "owner", index, 0)  # a writer still running somewhere stops at its next write
        write_field(descriptors, "attempts", index, max(0, int(attempts[index]) - 1))
        write_field(descriptors, "status", index, STATUS_PENDING)
    return running


def _run_alone(task: Task, backend: str, task_timeout: float | None) -> ObservationResult | None:
    """Run one task in a worker process of its own; None if that worker dies or times out."""
    if backend == "dask":
        from distributed import get_client

        future = get_client().submit(run_task, task, pure=False)
        try:
            return future.result(timeout=task_timeout)
        except _infrastructure_errors():
            future.cancel()
            return None
    from joblib.externals.loky import ProcessPoolExecutor

    executor = ProcessPoolExecutor(max_workers=1, **_local_worker_options())
    try:
        return executor.submit(run_task, task).result(timeout=task_timeout)
    except _infrastructure_errors():
        return None
    finally:
        executor.shutdown(wait=False, kill_workers=True)


def _statuses(output: Path) -> list[tuple]:
    """Every observation of the published ``output``: planet, visit, status name and error."""
    with h5py.File(output, "r") as f:
        planets, visits = f[PLANET_ID][()].tolist(), f[VISIT][()].tolist()
        status, errors = f[STATUS][()], f[ERROR][()]
    return [(p, v, STATUS_NAMES.get(int(s), str(s)), e.decode(errors="replace").rstrip("\x00"))
            for p, v, s, e in zip(planets, visits, status, errors, strict=True)]


def calibrate(data_dir: str | Path, output: str | Path | None = None, split: str = "train",
              planets: list[int] | None = None, config: CalibrationConfig | None = None,
              memory: str | int = DEFAULT_MEMORY, jobs: int | None = None, backend: str = "loky",
              scheduler: str | None = None, task_timeout: float | None = None, force: bool = False,
              progress: bool | None = None, log_file: bool = True, chunk_bytes: int | None = None, *,
              run: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR,
              verify_inputs: str | None = None, frozen: bool = False, drop_missing: bool = False) -> RunSummary:
    """Calibrate every visit of the chosen planets of ``data_dir/split`` into ``output``.

    Give either ``output`` or ``run``: a named run writes ``runs_dir/run/<split>.h5``
    and records its options in ``runs_dir/run/config.toml`` (:mod:`arielstream.run.runs`).
    ``memory`` is the RAM budget of the whole process tree on this machine;
    ``jobs=None`` picks the worker count from it (``--jobs auto``). With
    ``backend="dask"``, ``scheduler`` is the address of a dask.distributed scheduler
    whose workers see the same files, and ``memory`` is the budget of one task.
    ``chunk_bytes`` sets the chunk budget directly (tests, experiments). The
    execution options are those of :class:`~arielstream.config.options.RunOptions`.
    """
    options = RunOptions(split=split, planets=None if planets is None else tuple(int(p) for p in planets),
                         memory=str(memory), jobs=jobs, backend=backend, scheduler=scheduler,
                         task_timeout=task_timeout, force=force, progress=progress, log_file=log_file,
                         verify_inputs=verify_inputs, frozen=frozen, drop_missing=drop_missing)
    return run_calibration(data_dir, config or CalibrationConfig(), options, output=output, run_name=run,
                           runs_dir=runs_dir, chunk_bytes=chunk_bytes)


def run_calibration(data_dir: str | Path, config: CalibrationConfig, options: RunOptions, *,
                    output: str | Path | None = None, run_name: str | None = None,
                    runs_dir: str | Path = DEFAULT_RUNS_DIR, chunk_bytes: int | None = None) -> RunSummary:
    """:func:`calibrate` with its options as a :class:`RunOptions`: identity, plan, dispatch, summary."""
    with _gc_frozen():
        return _run_calibration(data_dir, config, options, output, run_name, runs_dir, chunk_bytes)


def _run_calibration(data_dir: str | Path, config: CalibrationConfig, options: RunOptions, output: str | Path | None,
                     run_name: str | None, runs_dir: str | Path, chunk_bytes: int | None) -> RunSummary:
    t_start = time.perf_counter()
    budget = parse_bytes(options.memory)  # a bad size fails before anything is created
    check_options(options, budget, chunk_bytes)
    job = identify(data_dir, config, options, output, run_name, runs_dir)
    summary = RunSummary(job.output)
    with contextlib.ExitStack() as stack:
        stack.enter_context(RunLock(job.output))
        if run_name is not None:  # under the lock: config.toml always describes what the locked run writes
            prepare_run(run_name, config, options, runs_dir, force=options.force)
        stack.enter_context(_log_file(job.output, options.log_file))
        _report_dropped(job)
        stack.enter_context(_stop_on_signals())
        stack.enter_context(_worker_environment())
        # planned before the layout: a budget or an address-space limit the run cannot use leaves nothing behind
        plan = plan_run(options, budget, len(job.observations), chunk_bytes)
        layouts = list(job.layouts.values())
        prepared = prepare_output(job.output, job.observations, layouts, job.attrs, job.identity, options.force,
                                  fingerprints=job.fingerprints, frozen=options.frozen,
                                  drop_missing=options.drop_missing,
                                  extend=job.config.master_calibration != "dataset", on_disk=job.on_disk)
        summary.action, summary.counts = prepared.action, prepared.counts
        if prepared.action == "complete":
            log.info("%s: already complete with this config, numerical code and inputs; nothing to do", job.output)
        else:
            if prepared.todo:
                if len(prepared.todo) < plan.jobs:  # fewer left than workers planned: fewer, bigger workers
                    plan = plan_run(options, budget, len(prepared.todo), chunk_bytes)
                summary.plan = plan
                dispatch(job, options, summary.plan, prepared, summary)
            publish(prepared, job.output, layouts, job.attrs)
        summary.statuses = _statuses(job.output)
        return summarize(summary, t_start)  # inside: the log file ends with the summary line


@dataclass(frozen=True)
class RunJob:
    """What a run calibrates, where, and what identifies its output."""

    data_dir: Path  # absolute: tasks may run in other working directories (dask workers on other machines)
    split: str
    output: Path  # absolute
    config: CalibrationConfig
    observations: list[Observation]
    layouts: dict[str, InstrumentLayout]
    identity: dict[str, str]  # what an existing output must share with this run to be resumed by it
    attrs: dict[str, Any]  # the attributes of a new output: the identity and what describes the file
    manifest: str | None = None  # input manifest the workers check each input file against
    fingerprints: dict[tuple[int, int], str] = field(default_factory=dict)  # (planet, visit) -> its inputs now
    on_disk: set[tuple[int, int]] | None = None  # every observation in the data folder, selected or not


def identify(data_dir: str | Path, config: CalibrationConfig, options: RunOptions,
             output: str | Path | None, run_name: str | None, runs_dir: str | Path, *, create: bool = True,
             ) -> RunJob:
    """Stage 1: the input, the output path and the output's identity; a named run's folder is created.

    ``create=False`` (``--dry-run``) creates nothing: the run folder is only named.
    """
    if (output is None) == (run_name is None):
        raise ValueError("give either an output file or a run name (not both)")
    data_dir = Path(data_dir).resolve()
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise OutputError(f"{Path(output).resolve().parent}: output folder does not exist")
    if output is not None and Path(output).is_dir():
        raise OutputError(f"{output}: is a folder; -o names the HDF5 file to write (e.g. {Path(output) / 'out.h5'})")
    info = dataset_info(data_dir)
    observations = discover_observations(data_dir, options.split, options.planets)
    if not observations:
        raise InputError(data_dir / options.split, "no planet folders found")
    on_disk = None if options.planets is None else \
        {(o.planet_id, o.visit) for o in discover_observations(data_dir, options.split)}
    if run_name is not None:  # only once the input is known to be there: no empty run folders
        output = run_output(run_name, options.split, runs_dir)
        try:
            if create:
                output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{output.parent}: cannot create the run folder: {exc}") from None
    layouts = {name: instrument_layout(INSTRUMENTS[name], info, config) for name in config.instruments}
    run_identity = identity.run_identity(config, options.split)
    attrs = {**run_identity, "source": str(data_dir), "profile": config.profile, "recipe": describe_recipe(),
             "wavelength_order": config.wavelength_order}
    if output is None:
        raise ValueError("give either an output file or a run name")
    fingerprints = {(o.planet_id, o.visit): fingerprint(observation_inputs(
        o, data_dir, config.instruments, config.master_calibration == "planet"), data_dir) for o in observations}
    manifest = resolve_manifest(data_dir, options.verify_inputs)
    files = OutputFiles.of(output)
    check_write_targets(files, data_dir, [Path(manifest)] if manifest else [], log_file=options.log_file)
    check_manifest_covers(manifest, observations, data_dir, config.instruments, config.master_calibration == "planet")
    return RunJob(data_dir, options.split, files.path, config, observations, layouts, run_identity,
                  attrs, manifest, fingerprints, on_disk)


def _report_dropped(job: RunJob) -> None:
    """Log what the time and spatial bins leave out of every observation: never silently.

    A bin width that does not divide a visit's samples drops its incomplete last bin (the
    organisers' notebook does so with the default widths: half a bin of the real visits);
    a spatial bin that does not divide the columns drops the last columns. A width other
    than the default gets a warning, the default an info line.
    """
    config, info = job.config, dataset_info(job.data_dir)
    defaults = CalibrationConfig()
    for name, layout in job.layouts.items():
        inst = INSTRUMENTS[name]
        option = "airs_bin" if name == AIRS.name else "fgs1_bin"
        per_sample = frames_per_bin(config, inst) // config.bin_width(name)
        samples, width = info.n_frames(inst) // per_sample, config.bin_width(name)
        if config.time_binning and samples % width:
            exact = [str(n) for n in range(1, min(samples, 2000) + 1) if samples % n == 0]
            level = logging.INFO if width == getattr(defaults, option) else logging.WARNING
            log.log(level, "%s: %s %d leaves the last %d of %d %s of every observation out of a whole time bin: "
                    "they are dropped (widths that divide %d: %s)", name, option, width, samples % width, samples,
                    "CDS samples" if config.cds else "frames", samples, ", ".join(exact[:12]))
        if config.cosmic_rays and config.cr_method == "bin" and config.bin_width(name) < 3:
            log.warning("%s: cosmic rays are looked for per time bin, and bins of %d sample(s) are too short: none "
                        "is rejected (cr_method = \"series\" looks along each pixel's whole series)", name,
                        config.bin_width(name))
        columns = int(layout.columns.shape[0])
        if columns % config.spatial_bin:
            log.warning("%s: spatial_bin %d leaves the last %d of %d output columns out of a whole block: they "
                        "are dropped", name, config.spatial_bin, columns % config.spatial_bin, columns)


def check_options(options: RunOptions, budget: int, chunk_bytes: int | None = None) -> None:
    """Refuse a memory budget or a scheduler the run cannot use, before any output is laid out.

    ``--memory`` above this machine's RAM, or too small for one worker (what :func:`plan_run`
    would refuse later), and an unreachable dask scheduler stop the run here.
    """
    if options.backend == "loky" and budget > physical_memory():
        raise MemoryBudgetError(f"--memory {options.memory} is more than this machine's memory "
                                f"({format_bytes(physical_memory())}); give at most that")
    if chunk_bytes is None:  # what plan_run refuses later, for one task, without its log lines
        release_memory()
        jobs = options.jobs if options.backend == "loky" else 1
        try:
            plan_workers(min(budget, available_memory()), 1, jobs, available_cores(), current_rss())
        except MemoryBudgetError as exc:
            raise MemoryBudgetError(f"--memory {options.memory}: {exc}") from None
    if options.backend == "dask" and options.scheduler:
        _probe_scheduler(options.scheduler)


def _probe_scheduler(address: str, timeout: float = 10.0) -> None:
    """Raise :class:`ArielstreamError` if nothing listens at a ``tcp://`` scheduler ``address``."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(address if "://" in address else f"tcp://{address}")
    if url.scheme != "tcp":  # tls://, ucx://, inproc://: left to dask.distributed to check
        return
    try:
        host, port = url.hostname, url.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ArielstreamError(f"--scheduler {address}: not a scheduler address (use tcp://HOST:PORT)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ArielstreamError(f"--scheduler {address}: cannot reach the dask scheduler "
                               f"({exc.strerror or type(exc).__name__})") from None


def plan_run(options: RunOptions, budget: int, n_todo: int, chunk_bytes: int | None = None) -> WorkerPlan:
    """Stage 2: workers, threads and chunk budget for ``n_todo`` observations in ``budget`` bytes."""
    release_memory()  # measure what this process holds, not what it freed before the run
    if chunk_bytes is not None:  # set directly (tests, experiments): no budget planning
        jobs = 1 if options.backend == "dask" else (options.jobs or min(available_cores(), n_todo))
        return WorkerPlan(jobs, max(1, available_cores() // jobs), int(chunk_bytes), budget, current_rss())
    if options.backend == "dask":
        return plan_workers(budget, 1, 1, 1, current_rss())
    return plan_workers(effective_budget(budget), n_todo, options.jobs, available_cores(), current_rss(),
                        address_headroom=address_headroom())


def dispatch(job: RunJob, options: RunOptions, worker_plan: WorkerPlan, prepared: PreparedOutput,
             summary: RunSummary) -> None:
    """Stage 3: run the observations left to do until each has a final status and every done one its checksum.

    What each computed is appended to ``summary.results``. An interruption sends the
    running observations back to pending and propagates.
    """
    log.info("%s %s: %d of %d observation(s) of %d planet(s) to calibrate from %s/%s; %s; backend %s",
             prepared.action, prepared.partial, len(prepared.todo), len(prepared.keys),
             len({p for p, _ in prepared.keys}), job.data_dir, job.split, worker_plan.describe(),
             options.backend)
    dispatcher = _Dispatcher(job, options, worker_plan, prepared, summary)
    client = _dask_client(options.scheduler) if options.backend == "dask" else contextlib.nullcontext()
    try:
        with client, _worker_logs(dispatcher):
            todo = prepared.todo
            for _ in range(MAX_ROUNDS):
                dispatcher.round(todo)
                todo = dispatcher.left_to_do()
                if not todo:
                    return
            raise OutputError(f"{prepared.partial}: observations still unfinished after {MAX_ROUNDS} rounds; "
                              "run again to resume")
    except (KeyboardInterrupt, RunInterrupted):
        _abandon_running(prepared.descriptors)
        log.warning("interrupted: %d observation(s) done are kept in %s; run the same command to resume",
                    sum(r.ok for r in summary.results), prepared.partial)
        raise
    except OutputError:  # the output cannot be written: stop; what is done stays in .partial for the rerun
        with contextlib.suppress(OutputError):  # the disk may refuse this too: the rerun reconciles it then
            _abandon_running(prepared.descriptors)
        raise
    finally:
        if dispatcher.bar is not None:
            dispatcher.bar.close()


@contextlib.contextmanager
def _worker_logs(dispatcher: _Dispatcher) -> Iterator[None]:
    """While dispatching: local workers' log records logged here (run/worker_logs.py), console lines above the bar."""
    forwarder = None
    if dispatcher.parent is None:
        log.debug("dask backend: the workers' log records stay in the dask workers' own logs")
    elif not dispatcher.in_coordinator:
        forwarder = LogForwarder()
        dispatcher.log_channel = forwarder.channel
    try:
        with above_bar(dispatcher.bar is not None):
            yield
    finally:
        dispatcher.log_channel = None
        if forwarder is not None:
            forwarder.close()


def _helper_peaks() -> dict[int, int]:
    """Peak RSS of the resource-tracker processes that loky and multiprocessing started for this run.

    They belong to the process tree too (~30 MB each) but run no observation, so no result reports them.
    """
    import multiprocessing.resource_tracker as mp_tracker

    trackers = [mp_tracker._resource_tracker]
    with contextlib.suppress(ImportError):
        from joblib.externals.loky.backend import resource_tracker as loky_tracker

        trackers.append(loky_tracker._resource_tracker)
    peaks: dict[int, int] = {}
    for tracker in trackers:
        pid = getattr(tracker, "_pid", None)
        if not isinstance(pid, int):  # never started
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1]) * 1024
    return peaks


def summarize(summary: RunSummary, t_start: float) -> RunSummary:
    """Stage 4: the run's time and the bound on its process tree's peak RSS, logged."""
    summary.seconds = time.perf_counter() - t_start
    if summary.action == "complete":
        summary.peak_rss_bound = peak_rss()  # no worker ran: the coordinator is the whole tree
        return summary
    own = os.getpid()
    workers: dict[int, int] = {}
    for result in summary.results:
        if result.pid != own:
            workers[result.pid] = max(workers.get(result.pid, 0), result.peak_rss)
    helpers = _helper_peaks()
    summary.peak_rss_bound = peak_rss() + sum(workers.values()) + sum(helpers.values())
    log.debug("peak RSS: coordinator %s, workers %s, resource trackers %s", format_bytes(peak_rss()),
              ", ".join(f"{pid}: {format_bytes(v)}" for pid, v in workers.items()),
              ", ".join(f"{pid}: {format_bytes(v)}" for pid, v in helpers.items()) or "none")
    log.info("%d done, %d failed in %.1f s (%.1f obs/min); peak RSS of the process tree <= %s; wrote %s",
             len(summary.statuses) - len(summary.failed), len(summary.failed), summary.seconds,
             60 * len(summary.results) / max(summary.seconds, 1e-9), format_bytes(summary.peak_rss_bound),
             summary.output)
    return summary


class _Dispatcher:
    """The state of one dispatch: makes the tasks, collects their results, retries dead workers' ones."""

    def __init__(self, job: RunJob, options: RunOptions, worker_plan: WorkerPlan, prepared: PreparedOutput,
                 summary: RunSummary):
        self.job, self.options, self.plan = job, options, worker_plan
        self.descriptors, self.summary = prepared.descriptors, summary
        self.scope = checksum_scope(self.descriptors) if self.descriptors else None  # once, not in every worker
        self.observations = prepared.observations  # what the .partial holds: task indices refer to it
        self.total = len(prepared.todo)  # observations left to do when the dispatch started
        self.fault = _Fault(os.environ.get("ARIELSTREAM_FAULT"))
        self.parent = os.getpid() if options.backend == "loky" else None
        self.in_coordinator = options.backend == "loky" and worker_plan.jobs == 1 and options.task_timeout is None
        self.masters = None
        self.log_channel: LogChannel | None = None  # set while local workers forward their logs here
        self.unusable: dict[tuple[int, int], str] = {}  # (planet, visit) failed before dispatch, and why
        if job.config.master_calibration == "dataset":
            self.masters = {name: self._dataset_master(INSTRUMENTS[name]) for name in job.config.instruments}
        self.bar = _progress(self.total, options.progress)  # last: nothing after it may fail and leave it open

    def _dataset_master(self, inst: Instrument) -> Any:
        """The master over every observation whose calibration files read; the others fail, not the run."""
        usable = [o for o in self.job.observations if (o.planet_id, o.visit) not in self.unusable]
        while True:
            try:
                master = load_masters(usable, inst)
            except InputError as exc:
                bad = [o for o in usable if exc.path.parent == o.calibration_path(inst, "dark").parent]
                if not bad or len(bad) == len(usable):
                    raise
                for o in bad:
                    self.unusable[o.planet_id, o.visit] = f"{exc}; left out of the {inst.name} master dark and flat"
                    log.error("%s: %s", o.label, self.unusable[o.planet_id, o.visit])
                usable = [o for o in usable if o not in bad]
                continue
            log.info("%s master dark and flat combined over %d observation(s)", inst.name, len(usable))
            return master

    def task(self, index: int) -> Task:
        job, obs = self.job, self.observations[index]
        return Task(index, obs, str(job.data_dir), job.config, job.layouts, self.descriptors,
                    self.plan.chunk_bytes, self.plan.threads, self.parent, self.in_coordinator, self.masters,
                    job.manifest, self.log_channel, job.fingerprints.get((obs.planet_id, obs.visit), ""),
                    scope=self.scope)

    def collect(self, result: ObservationResult) -> None:
        if result.status == STATUS_RUNNING:  # a revoked attempt: another one owns the observation
            return
        self.summary.results.append(result)
        _report(result, self.bar, len(self.summary.results), self.total)
        self.fault.coordinator_result(len(self.summary.results))

    def round(self, todo: list[int]) -> None:
        """Run ``todo``; if the pool breaks, retry each observation it was running alone, once."""
        timeout = self.options.task_timeout
        unusable = {i: self.unusable[key] for i in todo
                    if (key := (self.observations[i].planet_id, self.observations[i].visit)) in self.unusable}
        for index, why in unusable.items():  # its calibration files do not read
            obs = self.observations[index]
            fail_observation(self.descriptors, index, why)
            self.collect(ObservationResult(index, obs.planet_id, obs.visit, STATUS_FAILED, why))
        todo = [i for i in todo if i not in unusable]
        try:
            for result in _execute([self.task(i) for i in todo], self.plan, self.options.backend, timeout):
                self.collect(result)
        except _infrastructure_errors() as exc:
            # The pool is gone with every task in it: the culprit is among those running.
            suspects = _abandon_running(self.descriptors)
            log.warning("a worker died (%s: %s); %d observation(s) that were running are retried one at a time",
                        type(exc).__name__, exc, len(suspects))
            for index in suspects:
                alone = _run_alone(self.task(index), self.options.backend, timeout)
                if alone is None:
                    message = (f"{self.observations[index].label}: its worker died while calibrating it "
                               "alone (killed, out of memory, or over the task timeout)")
                    log.error(message)
                    fail_observation(self.descriptors, index, message)
                else:
                    self.collect(alone)

    def left_to_do(self) -> list[int]:
        """After a round: what a dead worker left pending, else the done ones whose bytes fail their checksum."""
        todo = reconcile(self.descriptors)
        if todo:
            return todo
        mismatched = verify(self.descriptors)
        for index in mismatched:
            log.warning("observation %d: bytes differ from its checksum; recomputing", index)
            write_field(self.descriptors, "status", index, STATUS_PENDING)
        return mismatched


def _report(result: ObservationResult, bar: Any, done: int, total: int) -> None:
    label = f"{result.planet_id}/visit {result.visit}"
    if not result.ok:
        log.error("%s failed: %s", label, result.error)
    if bar is not None:
        bar.update(1)
    # always in the log file; on the console beside a progress bar only with -v (``cli.app.setup_logging``)
    log.info("[%d/%d] %s %s in %.1f s (pid %d, peak RSS %s)", done, total, label, "done" if result.ok else "FAILED",
             result.seconds, result.pid, format_bytes(result.peak_rss), extra={CONSOLE_OPTIONAL: bar is not None})


def _dask_client(scheduler: str | None):
    try:
        from distributed import Client
    except ImportError:
        raise ArielstreamError("the dask backend needs dask.distributed: pip install 'arielstream[dask]'") from None
    if not scheduler:
        raise ArielstreamError("the dask backend needs --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786)")
    try:
        return Client(scheduler)
    except (OSError, TimeoutError) as exc:
        raise ArielstreamError(f"--scheduler {scheduler}: cannot reach the dask scheduler ({exc})") from None

