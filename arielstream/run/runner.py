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

SIGTERM and Ctrl-C stop the dispatch, leave what is done in ``OUT.h5.partial``,
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

from ..config.options import CalibrationConfig, RunOptions
from ..config.recipe import describe_recipe
from ..errors import ArielstreamError, InputError, OutputError, RunInterrupted
from ..io.dataset import DatasetInfo, read_dataset_info
from ..io.store import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_PENDING,
    STATUS_RUNNING,
    ArrayDescriptor,
    InstrumentLayout,
    fail_observation,
    owner,
    read_field,
    record_result,
    write_field,
)
from ..layout import INSTRUMENTS, Observation, discover_observations
from ..units import format_bytes, parse_bytes
from . import identity
from .budget import WorkerPlan, available_cores, current_rss, peak_rss, pin_threads, plan_workers, release_memory
from .lifecycle import PreparedOutput, RunLock, prepare_output, publish, reconcile, verify
from .observation import calibrate_observation, instrument_layout, load_masters
from .runs import DEFAULT_RUNS_DIR, prepare_run, run_output

log = logging.getLogger(__name__)

DEFAULT_MEMORY = "2GB"
IDLE_WORKER_TIMEOUT_S = 10  # idle loky workers exit this soon (they outlive a killed coordinator otherwise)
MAX_ROUNDS = 4  # dispatch rounds after worker deaths or checksum mismatches before giving up
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

    @property
    def ok(self) -> bool:
        """The observation is done."""
        return self.status == STATUS_DONE


@dataclass
class RunSummary:
    """What a run did: its output, how it started, every observation's status and what it computed."""

    output: Path
    action: str = "new"  # "new", "resume", "retry-failed" or "complete" (nothing to do)
    statuses: list[tuple[int, int, str, str]] = field(default_factory=list)  # planet, visit, status, error
    results: list[ObservationResult] = field(default_factory=list)  # what this run computed
    seconds: float = 0.0
    peak_rss_bound: int = 0  # coordinator peak + every worker's peak: >= the tree's peak
    plan: WorkerPlan | None = None

    @property
    def failed(self) -> list[tuple[int, int, str, str]]:
        """The statuses of the observations that are not done."""
        return [s for s in self.statuses if s[2] != "done"]

    @property
    def ok(self) -> bool:
        """Every observation of the output is done."""
        return not self.failed


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
        # workers; a worker of its own would only print a KeyboardInterrupt traceback (main thread only)
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    pin_threads(task.threads)
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

    def result(status: int, message: str = "") -> ObservationResult:
        return ObservationResult(index, obs.planet_id, obs.visit, status, message, time.perf_counter() - t0,
                                 os.getpid(), peak_rss())

    try:
        info = dataset_info(task.data_dir)
        provenance = calibrate_observation(obs, index, info, task.config, task.layouts, descriptors,
                                           task.chunk_bytes, checkpoint, task.masters)
    except OrphanedWorker:
        log.warning("%s: the coordinator is gone; abandoning it", obs.label)
        os._exit(1)
    except Superseded:
        log.warning("%s: this attempt was revoked by the coordinator; abandoning it", obs.label)
        return result(STATUS_RUNNING, "revoked")
    except ArielstreamError as exc:
        message = str(exc)
    except MemoryError:
        message = f"{obs.label}: out of memory (chunk budget {format_bytes(task.chunk_bytes)})"
    except Exception as exc:  # a bug must not sink the batch either; keep the traceback in the log
        message = f"{obs.label}: internal error {type(exc).__name__}: {exc}"
        log.exception("%s failed with an unexpected error", obs.label)
    else:
        if owner(descriptors, index) != token:
            return result(STATUS_RUNNING, "revoked")
        record_result(descriptors, index, STATUS_DONE, provenance=provenance)
        release_memory()  # the next observation starts from what the process holds, not its garbage
        return result(STATUS_DONE)
    if owner(descriptors, index) != token:
        return result(STATUS_RUNNING, "revoked")
    fail_observation(descriptors, index, message)
    return result(STATUS_FAILED, message)


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
    """Turn SIGTERM into :class:`RunInterrupted` while the run dispatches (main thread only)."""

    def handler(signum: int, frame: Any) -> None:
        raise RunInterrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _log_file(output: Path, enabled: bool) -> Iterator[None]:
    """Log the run to ``OUT.h5.log`` (rotating) beside the output, as well as to the console."""
    if not enabled:
        yield
        return
    handler = logging.handlers.RotatingFileHandler(output.with_name(output.name + ".log"),
                                                   maxBytes=5 * 2**20, backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("arielstream")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _progress(total: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

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


def _statuses(descriptors: dict[str, ArrayDescriptor], observations: list[Observation]) -> list[tuple]:
    status = read_field(descriptors, "status")
    errors = read_field(descriptors, "error")
    return [(o.planet_id, o.visit, STATUS_NAMES.get(int(s), str(s)), e.decode(errors="replace").rstrip("\x00"))
            for o, s, e in zip(observations, status, errors, strict=True)]


def calibrate(data_dir: str | Path, output: str | Path | None = None, split: str = "train",
              planets: list[int] | None = None, config: CalibrationConfig | None = None,
              memory: str | int = DEFAULT_MEMORY, jobs: int | None = None, backend: str = "loky",
              scheduler: str | None = None, task_timeout: float | None = None, force: bool = False,
              progress: bool | None = None, log_file: bool = True, chunk_bytes: int | None = None, *,
              run: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> RunSummary:
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
                         task_timeout=task_timeout, force=force, progress=progress, log_file=log_file)
    return run_calibration(data_dir, config or CalibrationConfig(), options, output=output, run_name=run,
                           runs_dir=runs_dir, chunk_bytes=chunk_bytes)


def run_calibration(data_dir: str | Path, config: CalibrationConfig, options: RunOptions, *,
                    output: str | Path | None = None, run_name: str | None = None,
                    runs_dir: str | Path = DEFAULT_RUNS_DIR, chunk_bytes: int | None = None) -> RunSummary:
    """:func:`calibrate` with its options as a :class:`RunOptions`: identity, plan, dispatch, summary."""
    t_start = time.perf_counter()
    budget = parse_bytes(options.memory)  # a bad size fails before anything is created
    job = identify(data_dir, config, options, output, run_name, runs_dir)
    summary = RunSummary(job.output)
    with contextlib.ExitStack() as stack:
        stack.enter_context(RunLock(job.output))
        if run_name is not None:  # under the lock: config.toml always describes what the locked run writes
            prepare_run(run_name, config, options, runs_dir, force=options.force)
        stack.enter_context(_log_file(job.output, options.log_file))
        stack.enter_context(_stop_on_signals())
        prepared = prepare_output(job.output, job.observations, list(job.layouts.values()), job.attrs,
                                  job.identity, options.force)
        summary.action = prepared.action
        if prepared.action == "complete":
            log.info("%s: already complete with this config and numerical code; nothing to do", job.output)
        else:
            summary.plan = plan_run(options, budget, len(prepared.todo), chunk_bytes)
            dispatch(job, options, summary.plan, prepared, summary)
        summary.statuses = _statuses(prepared.descriptors, job.observations)
        if prepared.action != "complete":
            publish(prepared.partial, job.output)
    return summarize(summary, t_start)


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


def identify(data_dir: str | Path, config: CalibrationConfig, options: RunOptions,
             output: str | Path | None, run_name: str | None, runs_dir: str | Path) -> RunJob:
    """Stage 1: the input, the output path and the output's identity; a named run's folder is created."""
    if (output is None) == (run_name is None):
        raise ValueError("give either an output file or a run name (not both)")
    data_dir = Path(data_dir).resolve()
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise OutputError(f"{Path(output).resolve().parent}: output folder does not exist")
    info = dataset_info(data_dir)
    observations = discover_observations(data_dir, options.split, options.planets)
    if not observations:
        raise InputError(data_dir / options.split, "no planet folders found")
    if run_name is not None:  # only once the input is known to be there: no empty run folders
        output = run_output(run_name, options.split, runs_dir)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{output.parent}: cannot create the run folder: {exc}") from None
    layouts = {name: instrument_layout(INSTRUMENTS[name], info, config) for name in config.instruments}
    run_identity = identity.run_identity(config, options.split, data_dir)
    attrs = {**run_identity, "profile": config.profile, "recipe": describe_recipe(),
             "wavelength_order": config.wavelength_order}
    if output is None:
        raise ValueError("give either an output file or a run name")
    return RunJob(data_dir, options.split, Path(output).resolve(), config, observations, layouts, run_identity,
                  attrs)


def plan_run(options: RunOptions, budget: int, n_todo: int, chunk_bytes: int | None = None) -> WorkerPlan:
    """Stage 2: workers, threads and chunk budget for ``n_todo`` observations in ``budget`` bytes."""
    release_memory()  # measure what this process holds, not what it freed before the run
    if chunk_bytes is not None:  # set directly (tests, experiments): no budget planning
        jobs = 1 if options.backend == "dask" else (options.jobs or min(available_cores(), n_todo))
        return WorkerPlan(jobs, max(1, available_cores() // jobs), int(chunk_bytes), budget, current_rss())
    if options.backend == "dask":
        return plan_workers(budget, 1, 1, 1, current_rss())
    return plan_workers(budget, n_todo, options.jobs, available_cores(), current_rss())


def dispatch(job: RunJob, options: RunOptions, worker_plan: WorkerPlan, prepared: PreparedOutput,
             summary: RunSummary) -> None:
    """Stage 3: run the observations left to do until each has a final status and every done one its checksum.

    What each computed is appended to ``summary.results``. An interruption sends the
    running observations back to pending and propagates.
    """
    log.info("%s %s: %d of %d observation(s) of %d planet(s) to calibrate from %s/%s; %s; backend %s",
             prepared.action, prepared.partial, len(prepared.todo), len(job.observations),
             len({o.planet_id for o in job.observations}), job.data_dir, job.split, worker_plan.describe(),
             options.backend)
    dispatcher = _Dispatcher(job, options, worker_plan, prepared.descriptors, summary, len(prepared.todo))
    client = _dask_client(options.scheduler) if options.backend == "dask" else contextlib.nullcontext()
    try:
        with client:
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
    finally:
        if dispatcher.bar is not None:
            dispatcher.bar.close()


def summarize(summary: RunSummary, t_start: float) -> RunSummary:
    """Stage 4: the run's time and the bound on its process tree's peak RSS, logged."""
    summary.seconds = time.perf_counter() - t_start
    if summary.action == "complete":
        return summary
    own = os.getpid()
    workers: dict[int, int] = {}
    for result in summary.results:
        if result.pid != own:
            workers[result.pid] = max(workers.get(result.pid, 0), result.peak_rss)
    summary.peak_rss_bound = peak_rss() + sum(workers.values())
    log.debug("peak RSS: coordinator %s, workers %s", format_bytes(peak_rss()),
              ", ".join(f"{pid}: {format_bytes(v)}" for pid, v in workers.items()))
    log.info("%d done, %d failed in %.1f s (%.1f obs/min); peak RSS of the process tree <= %s; wrote %s",
             len(summary.statuses) - len(summary.failed), len(summary.failed), summary.seconds,
             60 * len(summary.results) / max(summary.seconds, 1e-9), format_bytes(summary.peak_rss_bound),
             summary.output)
    return summary


class _Dispatcher:
    """The state of one dispatch: makes the tasks, collects their results, retries dead workers' ones."""

    def __init__(self, job: RunJob, options: RunOptions, worker_plan: WorkerPlan,
                 descriptors: dict[str, ArrayDescriptor], summary: RunSummary, total: int):
        self.job, self.options, self.plan = job, options, worker_plan
        self.descriptors, self.summary = descriptors, summary
        self.total = total  # observations left to do when the dispatch started
        self.fault = _Fault(os.environ.get("ARIELSTREAM_FAULT"))
        self.parent = os.getpid() if options.backend == "loky" else None
        self.in_coordinator = options.backend == "loky" and worker_plan.jobs == 1 and options.task_timeout is None
        self.masters = None
        if job.config.master_calibration == "dataset":
            self.masters = {name: load_masters(job.observations, INSTRUMENTS[name]) for name in job.config.instruments}
            log.info("master dark and flat combined over %d observation(s)", len(job.observations))
        self.bar = _progress(total, options.progress)  # last: nothing after it may fail and leave it open

    def task(self, index: int) -> Task:
        job = self.job
        return Task(index, job.observations[index], str(job.data_dir), job.config, job.layouts, self.descriptors,
                    self.plan.chunk_bytes, self.plan.threads, self.parent, self.in_coordinator, self.masters)

    def collect(self, result: ObservationResult) -> None:
        if result.status == STATUS_RUNNING:  # a revoked attempt: another one owns the observation
            return
        self.summary.results.append(result)
        _report(result, self.bar, len(self.summary.results), self.total)
        self.fault.coordinator_result(len(self.summary.results))

    def round(self, todo: list[int]) -> None:
        """Run ``todo``; if the pool breaks, retry each observation it was running alone, once."""
        timeout = self.options.task_timeout
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
                    message = (f"{self.job.observations[index].label}: its worker died while calibrating it "
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
    else:
        log.info("[%d/%d] %s %s in %.1f s", done, total, label, "done" if result.ok else "FAILED", result.seconds)


def _dask_client(scheduler: str | None):
    try:
        from distributed import Client
    except ImportError:
        raise ArielstreamError("the dask backend needs dask.distributed: pip install 'arielstream[dask]'") from None
    if not scheduler:
        raise ArielstreamError("the dask backend needs --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786)")
    return Client(scheduler)

