"""A calibration run: many observations, in parallel, in a RAM budget, crash-safe and resumable.

The coordinator (this module's :func:`calibrate`):

1. takes the run lock (``OUT.h5.lock``; a second run on the same output stops at once);
2. reads the dataset-level files, lists the observations and decides from what is
   on disk whether to start, resume, retry failures or do nothing
   (:mod:`arielstream.lifecycle`); a new file is laid out and closed before any
   worker starts, with its disk space reserved;
3. derives the worker count, threads per worker and chunk budget from the RAM
   budget and its own measured footprint (:func:`arielstream.resources.plan_workers`);
4. runs one :class:`Task` per observation through joblib (loky processes on one
   machine, or dask workers on a cluster). A task carries descriptors
   ``(path, offset, shape, dtype)``, never an open file or memmap, and writes its
   observation's bytes, then its checksum and status, through memmaps;
5. when a worker dies (killed, out of memory, timed out), its observation goes back
   to pending and is retried once; a second death fails it, and the rest go on;
6. verifies every checksum, and publishes ``OUT.h5`` by an atomic rename.

SIGTERM and Ctrl-C stop the dispatch, leave what is done in ``OUT.h5.partial``,
release the lock and exit; running the same command again resumes.

Test hooks (fault injection, read from ``ARIELSTREAM_FAULT``; never set them in production):
``kill-worker:PLANET:VISIT[:MARKER]`` a worker calibrating that observation kills itself
(SIGKILL) after writing its first chunk (only while file ``MARKER`` does not exist, which it
then creates: a one-off death); ``kill-coordinator:N`` the coordinator kills itself after N
results; ``slow:SECONDS`` every chunk write waits that long; ``slow-obs:PLANET:VISIT:SECONDS`` only
that observation's.
"""

from __future__ import annotations

import contextlib
import hashlib
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

from . import compiled
from ._version import __version__
from .config import BACKENDS, CalibrationConfig, RunOptions
from .dq import BITS
from .errors import ArielstreamError, InputError, OutputError, RunInterrupted
from .layout import INSTRUMENTS, Observation, discover_observations
from .lifecycle import RunLock, prepare_output, publish, reconcile, verify
from .masters import load_masters
from .memory import current_rss, format_bytes, parse_bytes, release_memory
from .metadata import DatasetInfo, read_dataset_info
from .pipeline import calibrate_observation, instrument_layout
from .recipe import describe_recipe
from .resources import WorkerPlan, available_cores, peak_rss, pin_threads, plan_workers
from .runs import DEFAULT_RUNS_DIR, prepare_run, run_output
from .store import (
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

log = logging.getLogger(__name__)

DEFAULT_MEMORY = "2GB"
IDLE_WORKER_TIMEOUT_S = 10  # idle loky workers exit this soon (they outlive a killed coordinator otherwise)
MAX_ROUNDS = 4  # dispatch rounds after worker deaths or checksum mismatches before giving up


class OrphanedWorker(BaseException):  # noqa: N818
    """This worker's coordinator is gone: abandon the observation."""


class Superseded(BaseException):  # noqa: N818
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
        return self.status == STATUS_DONE


@dataclass
class RunSummary:
    output: Path
    action: str = "new"
    statuses: list[tuple[int, int, str, str]] = field(default_factory=list)  # planet, visit, status, error
    results: list[ObservationResult] = field(default_factory=list)  # what this run computed
    seconds: float = 0.0
    peak_rss_bound: int = 0  # coordinator peak + every worker's peak: >= the tree's peak
    plan: WorkerPlan | None = None

    @property
    def failed(self) -> list[tuple[int, int, str, str]]:
        return [s for s in self.statuses if s[2] != "done"]

    @property
    def ok(self) -> bool:
        return not self.failed


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a digest of its source: results of different code never mix."""
    digest = hashlib.blake2b(digest_size=6)
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()}"


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

    def worker_chunk(self, obs: Observation) -> None:
        if self.kind == "slow":
            time.sleep(float(self.args[0]))
        elif self.kind == "slow-obs" and int(self.args[0]) == obs.planet_id and int(self.args[1]) == obs.visit:
            time.sleep(float(self.args[2]))
        elif self.kind == "kill-worker" and int(self.args[0]) == obs.planet_id and int(self.args[1]) == obs.visit:
            if len(self.args) > 2:
                marker = Path(self.args[2])
                if marker.exists():
                    return
                marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def coordinator_result(self, n_results: int) -> None:
        if self.kind == "kill-coordinator" and n_results >= int(self.args[0]):
            os.kill(os.getpid(), signal.SIGKILL)


_WATCHED_PARENT: list[int] = []


def _watch_parent(parent_pid: int, period: float = 0.5) -> None:
    """In a worker process: exit soon after the coordinator dies, even while idle between tasks.

    Idle loky workers otherwise linger for minutes after a killed coordinator, holding its
    pipes and overlapping the next cron run. Started once per worker process.
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
        _watch_parent(task.parent_pid)
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

        executor = ProcessPoolExecutor(max_workers=1)
        try:
            for task in tasks:
                yield executor.submit(run_task, task).result(timeout=task_timeout)
        finally:
            executor.shutdown(wait=False, kill_workers=True)
        return
    from joblib import Parallel, delayed, parallel_config

    if backend == "loky":
        config = parallel_config(backend="loky", inner_max_num_threads=plan.threads,
                                 idle_worker_timeout=IDLE_WORKER_TIMEOUT_S)
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

    executor = ProcessPoolExecutor(max_workers=1)
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
    and records its options in ``runs_dir/run/config.toml`` (:mod:`arielstream.runs`).
    ``memory`` is the RAM budget of the whole process tree on this machine;
    ``jobs=None`` picks the worker count from it (``--jobs auto``). With
    ``backend="dask"``, ``scheduler`` is the address of a dask.distributed scheduler
    whose workers see the same files, and ``memory`` is the budget of one task.
    ``chunk_bytes`` sets the chunk budget directly (tests, experiments).
    """
    t_start = time.perf_counter()
    config = config or CalibrationConfig()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    budget = parse_bytes(memory)
    if (output is None) == (run is None):
        raise ValueError("give either an output file or a run name (not both)")
    # absolute: tasks may run in other working directories (dask workers on other machines)
    data_dir = Path(data_dir).resolve()
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise OutputError(f"{Path(output).resolve().parent}: output folder does not exist")
    info = dataset_info(data_dir)
    observations = discover_observations(data_dir, split, planets)
    if not observations:
        raise InputError(data_dir / split, "no planet folders found")
    if run is not None:  # only once the input is known to be there: no empty run folders
        options = RunOptions(split=split, planets=tuple(int(p) for p in planets) if planets else None,
                             memory=str(memory),
                             jobs=jobs, backend=backend, scheduler=scheduler, task_timeout=task_timeout,
                             progress=progress, log_file=log_file)
        output = run_output(run, split, runs_dir)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{output.parent}: cannot create the run folder: {exc}") from None
    output = Path(output).resolve()
    layouts = {name: instrument_layout(INSTRUMENTS[name], info, config) for name in config.instruments}
    identity = {"arielstream_version": code_version(), "engine": compiled.engine(), "config": config.to_json(),
                "split": split, "source": str(data_dir.resolve())}
    attrs: dict[str, Any] = {**identity, "profile": config.profile, "recipe": describe_recipe(),
                             "wavelength_order": config.wavelength_order, "dq_bits": dict(BITS)}
    fault = _Fault(os.environ.get("ARIELSTREAM_FAULT"))
    summary = RunSummary(output)
    with contextlib.ExitStack() as stack:
        stack.enter_context(RunLock(output))
        if run is not None:  # under the lock: config.toml always describes what the locked run writes
            prepare_run(run, config, options, runs_dir, force=force)
        stack.enter_context(_log_file(output, log_file))
        stack.enter_context(_stop_on_signals())
        prepared = prepare_output(output, observations, list(layouts.values()), attrs, identity, force)
        summary.action = prepared.action
        descriptors = prepared.descriptors
        if prepared.action == "complete":
            log.info("%s: already complete with this config and code; nothing to do", output)
            summary.statuses = _statuses(descriptors, observations)
            summary.seconds = time.perf_counter() - t_start
            return summary
        release_memory()  # measure what this process holds, not what it freed before the run
        if chunk_bytes is not None:  # set directly (tests, experiments): no budget planning
            jobs_now = 1 if backend == "dask" else (jobs or min(available_cores(), len(prepared.todo)))
            plan = WorkerPlan(jobs_now, max(1, available_cores() // jobs_now), int(chunk_bytes), budget,
                              current_rss())
        elif backend == "dask":
            plan = plan_workers(budget, 1, 1, 1, current_rss())
        else:
            plan = plan_workers(budget, len(prepared.todo), jobs, available_cores(), current_rss())
        client = _dask_client(scheduler) if backend == "dask" else contextlib.nullcontext()
        summary.plan = plan
        log.info("%s %s: %d of %d observation(s) of %d planet(s) to calibrate from %s/%s; %s; backend %s",
                 prepared.action, prepared.partial, len(prepared.todo), len(observations),
                 len({o.planet_id for o in observations}), data_dir, split, plan.describe(), backend)
        parent = os.getpid() if backend == "loky" else None
        bar = _progress(len(prepared.todo), progress)
        worker_peaks: dict[int, int] = {}
        todo = prepared.todo

        in_coordinator = backend == "loky" and plan.jobs == 1 and task_timeout is None
        masters = None
        if config.master_calibration == "dataset":
            masters = {name: load_masters(observations, INSTRUMENTS[name]) for name in config.instruments}
            log.info("master dark and flat combined over %d observation(s)", len(observations))

        def make_task(index: int) -> Task:
            return Task(index, observations[index], str(data_dir), config, layouts, descriptors, plan.chunk_bytes,
                        plan.threads, parent, in_coordinator, masters)

        def collect(result: ObservationResult) -> None:
            if result.status == STATUS_RUNNING:  # a revoked attempt: another one owns the observation
                return
            summary.results.append(result)
            worker_peaks[result.pid] = max(worker_peaks.get(result.pid, 0), result.peak_rss)
            _report(result, bar, len(summary.results), len(prepared.todo))
            fault.coordinator_result(len(summary.results))

        try:
            with client:
                for _ in range(MAX_ROUNDS):
                    try:
                        for result in _execute([make_task(i) for i in todo], plan, backend, task_timeout):
                            collect(result)
                    except _infrastructure_errors() as exc:
                        # The pool is gone with every task in it: the culprit is among those running.
                        suspects = _abandon_running(descriptors)
                        log.warning("a worker died (%s: %s); %d observation(s) that were running are retried "
                                    "one at a time", type(exc).__name__, exc, len(suspects))
                        for index in suspects:
                            result = _run_alone(make_task(index), backend, task_timeout)
                            if result is None:
                                message = (f"{observations[index].label}: its worker died while calibrating it "
                                           "alone (killed, out of memory, or over the task timeout)")
                                log.error(message)
                                fail_observation(descriptors, index, message)
                            else:
                                collect(result)
                    todo = reconcile(descriptors)
                    if not todo:
                        mismatched = verify(descriptors)
                        for index in mismatched:
                            log.warning("observation %d: bytes differ from its checksum; recomputing", index)
                            write_field(descriptors, "status", index, STATUS_PENDING)
                        todo = mismatched
                    if not todo:
                        break
                else:
                    raise OutputError(f"{prepared.partial}: observations still unfinished after {MAX_ROUNDS} "
                                      "rounds; run again to resume")
        except (KeyboardInterrupt, RunInterrupted):
            _abandon_running(descriptors)
            log.warning("interrupted: %d observation(s) done are kept in %s; run the same command to resume",
                        sum(r.ok for r in summary.results), prepared.partial)
            raise
        finally:
            if bar is not None:
                bar.close()
        summary.statuses = _statuses(descriptors, observations)
        publish(prepared.partial, output)
    summary.seconds = time.perf_counter() - t_start
    own = os.getpid()
    summary.peak_rss_bound = peak_rss() + sum(v for pid, v in worker_peaks.items() if pid != own)
    log.debug("peak RSS: coordinator %s, workers %s", format_bytes(peak_rss()),
              ", ".join(f"{pid}: {format_bytes(v)}" for pid, v in worker_peaks.items() if pid != own))
    log.info("%d done, %d failed in %.1f s (%.1f obs/min); peak RSS of the process tree <= %s; wrote %s",
             len(summary.statuses) - len(summary.failed), len(summary.failed), summary.seconds,
             60 * len(summary.results) / max(summary.seconds, 1e-9), format_bytes(summary.peak_rss_bound), output)
    return summary


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

