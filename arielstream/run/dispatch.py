"""Stage 3 of a run: the coordinator dispatches the observations left to do to workers.

:func:`dispatch` sends one :class:`~arielstream.run.worker.Task` per observation through
joblib (loky processes on one machine, or dask workers on a cluster), or runs them in
this process (``--jobs 1`` without a task timeout), and collects each
:class:`~arielstream.run.worker.ObservationResult` (:class:`_Dispatcher`). When a worker
dies (killed, out of memory, timed out), the observations that were running go back to
pending and are retried alone, each in a worker of its own; a second death fails it, and
the rest go on. Each round ends with what is left pending, else with the done
observations whose bytes fail their checksum, for up to :data:`MAX_ROUNDS` rounds. An
interruption sends the running observations back to pending. What runs in a worker is
:mod:`arielstream.run.worker`; the run as a whole, :mod:`arielstream.run.runner`.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..config.options import RunOptions
from ..errors import ArielstreamError, InputError, MissingDependencyError, OutputError, RunInterrupted, flag
from ..io import atomic
from ..io.ledger import Ledger
from ..io.output import PreparedOutput, key_of, new_part_path
from ..io.parts import PartsLedger, PartTarget, PartTemplate
from ..io.schema import STATUS_FAILED, STATUS_RUNNING
from ..io.sidefiles import OutputFiles
from ..io.storage import locator
from ..io.store import checksum_scope
from ..layout import INSTRUMENTS, Instrument, Observation
from ..units import format_bytes
from .budget import WorkerPlan
from .observation import load_masters
from .worker import ObservationResult, Task, _Fault, _watch_parent, run_task
from .worker_logs import DaskLogChannel, DaskLogs, LogChannel, LogForwarder, above_bar

if TYPE_CHECKING:  # annotations only: the runner imports this module, never the other way round
    from .runner import RunJob, RunSummary

log = logging.getLogger(__name__)

IDLE_WORKER_TIMEOUT_S = 10  # idle loky workers exit this soon (they outlive a killed coordinator otherwise)
MAX_ROUNDS = 4  # dispatch rounds after worker deaths or checksum mismatches before giving up
# log-record flag: the command's console drops it unless -v (a bar or the printed summary says it); the log keeps it
CONSOLE_OPTIONAL = "arielstream_console_optional"


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


def _execute(tasks: Iterable[Task], plan: WorkerPlan, backend: str, task_timeout: float | None,
             in_coordinator: bool = False) -> Iterator[ObservationResult]:
    """Results in completion order: in this process (``in_coordinator``), else through joblib.

    One local job with a task timeout (or in parts mode) runs in a single worker process
    instead, so that the timeout can be enforced and a dying task does not take the
    coordinator with it. ``tasks`` is read as the tasks are handed out.
    """
    if backend == "loky" and plan.jobs == 1:
        if in_coordinator:
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
        try:
            config = parallel_config(backend="loky", inner_max_num_threads=plan.threads,
                                     idle_worker_timeout=IDLE_WORKER_TIMEOUT_S, **_local_worker_options())
        except TypeError:
            # joblib < 1.5 (setup.cfg's floor is 1.3) takes no executor options here: idle workers keep joblib's
            # own timeout (300 s), and each worker starts its watch on this process with its first task (run_task)
            log.debug("joblib %s: no idle_worker_timeout or initializer through parallel_config", _joblib_version())
            config = parallel_config(backend="loky", inner_max_num_threads=plan.threads)
        n_jobs = plan.jobs
    else:
        config = parallel_config(backend="dask")
        n_jobs = -1
    with config:
        options = {"n_jobs": n_jobs, "timeout": task_timeout, "pre_dispatch": "n_jobs", "batch_size": 1}
        try:
            parallel = Parallel(return_as="generator_unordered", **options)
        except ValueError:  # joblib 1.3: results in the order of the tasks (joblib >= 1.4: as they finish)
            parallel = Parallel(return_as="generator", **options)
        yield from parallel(delayed(run_task)(task) for task in tasks)


def _joblib_version() -> str:
    import joblib

    return str(joblib.__version__)


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


def dispatch(job: RunJob, options: RunOptions, worker_plan: WorkerPlan, prepared: PreparedOutput,
             summary: RunSummary) -> None:
    """Stage 3: run the observations left to do until each has a final status and every done one its checksum.

    What each computed is appended to ``summary.results``. An interruption sends the
    running observations back to pending and propagates.
    """
    log.info("%s %s: %d of %d observation(s) of %d planet(s) to calibrate from %s/%s; %s; backend %s",
             prepared.action, OutputFiles.of(job.output).parts if prepared.parts else prepared.partial,
             len(prepared.todo), len(prepared.keys),
             len({p for p, _ in prepared.keys}), job.data_dir, job.split, worker_plan.describe(),
             options.backend)
    dispatcher = _Dispatcher(job, options, worker_plan, prepared, summary)
    client = _dask_client(options.scheduler) if options.backend == "dask" else contextlib.nullcontext()
    try:
        with client as dask_client, _worker_logs(dispatcher, dask_client):
            todo = prepared.todo
            for _ in range(MAX_ROUNDS):
                dispatcher.round(todo)
                todo = dispatcher.left_to_do()
                if not todo:
                    dispatcher.add_parts(prepared)
                    return
            raise OutputError(f"{dispatcher.kept_in}: observations still unfinished after {MAX_ROUNDS} rounds; "
                              "run again to resume")
    except (KeyboardInterrupt, RunInterrupted):
        dispatcher.ledger.abandon()
        log.warning("interrupted: %d observation(s) done are kept in %s; run the same command to resume",
                    sum(r.ok for r in summary.results), dispatcher.kept_in)
        raise
    except OutputError:  # the output cannot be written: stop; what is done stays in .partial for the rerun
        with contextlib.suppress(OutputError):  # the disk may refuse this too: the rerun reconciles it then
            dispatcher.ledger.abandon()
        raise
    finally:
        if dispatcher.bar is not None:
            dispatcher.bar.close()


@contextlib.contextmanager
def _worker_logs(dispatcher: _Dispatcher, dask_client: Any = None) -> Iterator[None]:
    """While dispatching: workers' log records logged here (run/worker_logs.py), console lines above the bar."""
    forwarder: LogForwarder | None = None
    receiver: Any = contextlib.nullcontext()
    if dask_client is not None:
        receiver = DaskLogs(dask_client)
        dispatcher.log_channel = receiver.channel
    elif not dispatcher.in_coordinator:
        forwarder = LogForwarder()
        dispatcher.log_channel = forwarder.channel
    try:
        with receiver, above_bar(dispatcher.bar is not None):
            yield
    finally:
        dispatcher.log_channel = None
        if forwarder is not None:
            forwarder.close()


class _Dispatcher:
    """The state of one dispatch: makes the tasks, collects their results, retries dead workers' ones."""

    def __init__(self, job: RunJob, options: RunOptions, worker_plan: WorkerPlan, prepared: PreparedOutput,
                 summary: RunSummary):
        self.job, self.options, self.plan = job, options, worker_plan
        self.descriptors, self.summary = prepared.descriptors, summary
        self.observations = prepared.observations  # what the .partial holds (or the parts): task indices refer to it
        self.parts: PartsLedger | None = None  # parts mode: the bookkeeping is in memory, the parts on disk
        self.kept_in = prepared.partial  # where what is done stays when the run stops
        if prepared.parts:
            self.parts = _parts_ledger(job, self.observations)
            self.kept_in = self.parts.folder
        # the only writer of the observations' status, here
        self.ledger: Ledger | PartsLedger = self.parts or Ledger(self.descriptors)
        self.scope = checksum_scope(self.descriptors) if self.descriptors else None  # once, not in every worker
        self.total = len(prepared.todo)  # observations left to do when the dispatch started
        self.fault = _Fault(os.environ.get("ARIELSTREAM_FAULT"))
        self.parent = os.getpid() if options.backend == "loky" else None
        self.in_coordinator = options.backend == "loky" and worker_plan.jobs == 1 and options.task_timeout is None \
            and self.parts is None  # parts mode: a death in a worker process is counted in memory, as any other
        self.masters = None
        self.log_channel: LogChannel | DaskLogChannel | None = None  # set while workers forward their logs here
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
        return Task(index, obs, locator(job.data_dir), job.config, job.layouts, self.descriptors,
                    self.plan.chunk_bytes, self.plan.threads, self.parent, self.in_coordinator, self.masters,
                    job.manifest, self.log_channel, job.fingerprints.get((obs.planet_id, obs.visit), ""),
                    scope=self.scope, part=None if self.parts is None else
                    PartTarget(self.parts.template, str(self.parts.folder), self.parts.attempt(index)))

    def collect(self, result: ObservationResult) -> None:
        if result.status == STATUS_RUNNING:  # a revoked attempt: another one owns the observation
            return
        if self.parts is not None and not self.parts.accept(result.index, result.part, result.status):
            return  # its part is not what its result says: pending, computed again
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
            self.ledger.fail(index, why)
            part = "" if self.parts is None else self.parts.parts[index].name
            self.collect(ObservationResult(index, obs.planet_id, obs.visit, STATUS_FAILED, why, part=part))
        todo = [i for i in todo if i not in unusable]
        try:  # each task made as it is handed out: in parts mode, an attempt is running from then on
            for result in _execute((self.task(i) for i in todo), self.plan, self.options.backend, timeout,
                                   self.in_coordinator):
                self.collect(result)
        except _infrastructure_errors() as exc:
            # The pool is gone with every task in it: the culprit is among those running.
            suspects = self.ledger.abandon()
            log.warning("a worker died (%s: %s); %d observation(s) that were running are retried one at a time",
                        type(exc).__name__, exc, len(suspects))
            for index in suspects:
                alone = _run_alone(self.task(index), self.options.backend, timeout)
                if alone is None:
                    message = (f"{self.observations[index].label}: its worker died while calibrating it "
                               "alone (killed, out of memory, or over the task timeout)")
                    log.error(message)
                    self.ledger.fail(index, message)
                else:
                    self.collect(alone)

    def add_parts(self, prepared: PreparedOutput) -> None:
        """Parts mode, every observation finished: its part is what the published index refers to."""
        if self.parts is None:
            return
        for index, path in self.parts.parts.items():
            prepared.kept[key_of(self.observations[index])] = (path, 0)
            prepared.sizes[path] = 1

    def left_to_do(self) -> list[int]:
        """After a round: what a dead worker left pending, else the done ones whose bytes fail their checksum."""
        todo = self.ledger.reconcile()
        if todo:
            return todo
        mismatched = self.ledger.verify()[1]
        for index in mismatched:
            log.warning("observation %d: bytes differ from its checksum; recomputing", index)
            self.ledger.reset(index)
        return mismatched


def _parts_ledger(job: RunJob, observations: list[Observation]) -> PartsLedger:
    """Parts mode: the template every part starts from, and the bookkeeping, numbering parts after those on disk."""
    folder = OutputFiles.of(job.output).parts
    with atomic.output_errors(folder, "create the parts folder"):
        folder.mkdir(exist_ok=True)
    template = PartTemplate.lay_out(observations[0], list(job.layouts.values()), job.attrs)
    first = int(new_part_path(job.output).stem)
    return PartsLedger(folder, first, template, [key_of(o) for o in observations])


def _report(result: ObservationResult, bar: Any, done: int, total: int) -> None:
    label = f"{result.planet_id}/visit {result.visit}"
    if not result.ok:
        log.error("%s failed: %s", label, result.error)
    if bar is not None:
        bar.update(1)
    # always in the log file; on the command's console only with -v, with or without a bar (a failure has
    # its own error line above) (``cli.app.setup_logging``)
    log.info("[%d/%d] %s %s in %.1f s (pid %d, peak RSS %s)", done, total, label, "done" if result.ok else "FAILED",
             result.seconds, result.pid, format_bytes(result.peak_rss), extra={CONSOLE_OPTIONAL: True})


def _dask_client(scheduler: str | None):
    try:
        from distributed import Client
    except ImportError:
        # (runner.check_options refuses this before anything is written; here if it went since)
        raise MissingDependencyError.of("the dask backend", "dask.distributed", "dask[distributed]", "dask") from None
    if not scheduler:
        raise ArielstreamError(f"the dask backend needs a scheduler address: {flag('scheduler', 'tcp://HOST:8786')}")
    try:
        return Client(scheduler)
    except (OSError, TimeoutError) as exc:
        raise ArielstreamError(f"{flag('scheduler', scheduler)}: cannot reach the dask scheduler ({exc})") from None
