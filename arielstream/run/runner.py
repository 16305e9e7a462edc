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
3. **dispatch** (:func:`arielstream.run.dispatch.dispatch`): one
   :class:`~arielstream.run.worker.Task` per observation through joblib (loky
   processes on one machine, or dask workers on a cluster). A task carries descriptors
   ``(path, offset, shape, dtype)``, never an open file or memmap, and writes its
   observation's bytes, then its checksum and status, through memmaps
   (:func:`arielstream.run.worker.run_task`). When a worker
   dies (killed, out of memory, timed out), its observation goes back to pending and is
   retried alone; a second death fails it, and the rest go on. Every checksum is
   verified, and ``OUT.h5`` is published by an atomic rename;
4. **summary** (:func:`summarize`): the time taken and a bound on the process tree's peak RSS.

SIGTERM, SIGHUP and Ctrl-C stop the dispatch, leave what is done in ``OUT.h5.partial``,
release the lock and exit; running the same command again resumes.

What runs in a worker process for one observation is :mod:`arielstream.run.worker` (with
the test hooks, ``ARIELSTREAM_FAULT``); how the coordinator hands the observations to
workers and retries those a dead worker left, :mod:`arielstream.run.dispatch`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import logging.handlers
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from ..config.options import CalibrationConfig, RunOptions
from ..config.recipe import describe_recipe
from ..errors import (
    ArielstreamError,
    InputError,
    MemoryBudgetError,
    MissingDependencyError,
    OutputError,
    RunInterrupted,
    flag,
)
from ..io.manifest import check_manifest_covers, input_fingerprints, resolve_manifest
from ..io.output import OutputFiles, RunLock, check_write_targets, publish
from ..io.schema import ERROR, PLANET_ID, STATUS, STATUS_NAMES, VISIT
from ..io.storage import DataPath, RemotePath, data_folder, describe, local_output
from ..io.store import InstrumentLayout
from ..layout import AIRS, INSTRUMENTS, Observation, discover_observations, frames_per_bin
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
    peak_rss,
    physical_memory,
    plan_workers,
    release_memory,
)
from .dispatch import CONSOLE_OPTIONAL, dispatch
from .lifecycle import prepare_output
from .observation import instrument_layout
from .runs import DEFAULT_RUNS_DIR, prepare_run, run_output
from .worker import ObservationResult, dataset_info

log = logging.getLogger(__name__)

DEFAULT_MEMORY = "2GB"
DASK_JOBLIB = (1, 4)  # the first joblib whose dask backend streams results (setup.cfg's dask extra requires it)


@dataclass
class RunSummary:
    """What a run did: its output, how it started, every observation's status and what it computed."""

    output: Path
    action: str = "new"  # io.output.PreparedOutput.action: "new", "resume", "extend", ... or "complete"
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
    """Log the run to ``OUT.h5.log`` (rotating) beside the output, as well as to the console.

    Where the caller has no handler for ``arielstream`` (nor above it), warnings and errors
    go to stderr for the run's length, as they would without the file.
    """
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
        root.setLevel(logging.INFO)
    console = None
    if not root.hasHandlers():
        # Called from Python (a notebook) with no handler set up: warnings and errors went to Python's
        # last-resort handler, which the file's handler would switch off (it runs only when no handler is
        # found). One on stderr at WARNING instead, for this run only: a failed observation still shows.
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(console)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        if console is not None:
            root.removeHandler(console)
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


def _statuses(output: Path) -> list[tuple]:
    """Every observation of the published ``output``: planet, visit, status name and error."""
    with h5py.File(output, "r") as f:
        planets, visits = f[PLANET_ID][()].tolist(), f[VISIT][()].tolist()
        status, errors = f[STATUS][()], f[ERROR][()]
    return [(p, v, STATUS_NAMES.get(int(s), str(s)), e.decode(errors="replace").rstrip("\x00"))
            for p, v, s, e in zip(planets, visits, status, errors, strict=True)]


def calibrate(data_dir: str | Path | RemotePath, output: str | Path | None = None, *, split: str = "train",
              planets: list[int] | None = None, config: CalibrationConfig | None = None,
              memory: str | int = DEFAULT_MEMORY, jobs: int | None = None, backend: str = "loky",
              scheduler: str | None = None, task_timeout: float | None = None, force: bool = False,
              progress: bool | None = None, log_file: bool = True, chunk_bytes: int | None = None,
              run: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR,
              verify_inputs: str | None = None, frozen: bool = False, drop_missing: bool = False,
              parts: bool | None = None) -> RunSummary:
    """Calibrate every visit of the chosen planets of ``data_dir/split`` into ``output``.

    The options after ``output`` are keyword-only; they are those of
    :class:`~arielstream.config.options.RunOptions` and the command line's
    (``jobs=2`` is ``--jobs 2``). Warnings and errors (a failed observation) print on
    stderr while the run lasts when logging is not set up; ``OUT.h5.log`` has every line.

    Parameters
    ----------
    data_dir : str or Path
        The ADC2025 data folder (``train.csv``, ``<split>/<planet_id>/...``): a local folder, or a URL
        (``s3://bucket/prefix``, ``gs://...``) that every task reads through pyarrow's filesystems.
    output : str or Path, optional
        The HDF5 file to write, resume or extend. Give either ``output`` or ``run``.
    split : str
        The folder of ``data_dir`` to calibrate (``"train"`` or ``"test"``).
    planets : list of int, optional
        The planets to calibrate (default all); the output keeps the others it holds.
    config : CalibrationConfig, optional
        The science (default :class:`CalibrationConfig()`; see :func:`build_config`).
    memory : str or int
        The RAM budget of the whole process tree on this machine (``"8GB"`` or bytes);
        with ``backend="dask"``, the budget of one task.
    jobs : int, optional
        Worker processes; ``None`` picks them from ``memory`` and the cores (``--jobs auto``).
        ``jobs=1`` without ``task_timeout`` runs in this process.
    backend : str
        ``"loky"`` (processes on this machine) or ``"dask"`` (a dask.distributed cluster).
    scheduler : str, optional
        With ``backend="dask"``: the scheduler's address, whose workers see the same files.
    task_timeout : float, optional
        Seconds after which an observation still running counts as a dead worker.
    force : bool
        Recompute everything, replacing an output made with another config or code.
    progress : bool, optional
        A progress bar (default: on a terminal only).
    log_file : bool
        Write the run's log to ``OUT.h5.log`` beside the output.
    chunk_bytes : int, optional
        The chunk budget, set directly (tests, experiments) instead of planned from ``memory``.
    run : str, optional
        A named run instead of ``output``: it writes ``runs_dir/run/<split>.h5`` and records its
        options in ``runs_dir/run/config.toml`` (:mod:`arielstream.run.runs`).
    runs_dir : str or Path
        The folder of the named runs.
    verify_inputs : str, optional
        An input manifest to check every input file against (default: the data folder's, when there).
    frozen : bool
        Refuse, instead of recomputing, observations whose input files changed.
    drop_missing : bool
        Leave out of the output the observations no longer in the data folder.
    parts : bool, optional
        Parts mode: each observation is written into a part file of its own with ordinary
        writes and the output is published as an index over them (storage with NFS
        semantics suffices; :mod:`arielstream.io.parts`). ``None``: on with ``backend="dask"``.

    Returns
    -------
    RunSummary
        The output, every observation's status (``summary.failed``, ``summary.ok``), what this
        run computed, its time and peak memory; its repr is one line.

    Raises
    ------
    ConfigError
        An option the run cannot use (a bad ``jobs``, ``backend`` or ``output``), a ``ValueError``.
    MemoryBudgetError
        ``memory`` is more than this machine has, or too little for one worker.
    InputError
        ``data_dir`` is missing or holds no planet of ``split``.
    ConfigMismatchError
        ``output`` was made differently (another config or code): use ``force=True``.
    LockBusyError
        Another run writes ``output``.
    ArielstreamError
        The base of the errors above but ``ConfigError``, and of the others a user can act on.
        An observation that fails does not raise: it is ``failed`` in the summary.
    """
    options = RunOptions(split=split, planets=None if planets is None else tuple(int(p) for p in planets),
                         memory=str(memory), jobs=jobs, backend=backend, scheduler=scheduler,
                         task_timeout=task_timeout, force=force, progress=progress, log_file=log_file,
                         verify_inputs=verify_inputs, frozen=frozen, drop_missing=drop_missing, parts=parts)
    return run_calibration(data_dir, config or CalibrationConfig(), options, output=output, run_name=run,
                           runs_dir=runs_dir, chunk_bytes=chunk_bytes)


def run_calibration(data_dir: str | Path | RemotePath, config: CalibrationConfig, options: RunOptions, *,
                    output: str | Path | None = None, run_name: str | None = None,
                    runs_dir: str | Path = DEFAULT_RUNS_DIR, chunk_bytes: int | None = None) -> RunSummary:
    """:func:`calibrate` with its options as a :class:`RunOptions`: identity, plan, dispatch, summary."""
    with _gc_frozen():
        return _run_calibration(data_dir, config, options, output, run_name, runs_dir, chunk_bytes)


def _run_calibration(data_dir: str | Path | RemotePath, config: CalibrationConfig, options: RunOptions,
                     output: str | Path | None, run_name: str | None, runs_dir: str | Path,
                     chunk_bytes: int | None) -> RunSummary:
    t_start = time.perf_counter()
    budget = checked_budget(options, chunk_bytes)  # a bad size or budget fails before anything is created
    job = identify(data_dir, config, options, output, run_name, runs_dir)
    summary = RunSummary(job.output)
    with contextlib.ExitStack() as stack:
        stack.enter_context(RunLock(job.output))
        if run_name is not None:  # under the lock: config.toml always describes what the locked run writes
            prepare_run(run_name, config, options, runs_dir, force=options.force)
        stack.enter_context(_log_file(job.output, options.log_file))
        stack.enter_context(_stop_on_signals())
        stack.enter_context(_worker_environment())
        # planned before the layout: a budget or an address-space limit the run cannot use leaves nothing behind
        plan = plan_run(options, budget, len(job.observations), chunk_bytes)
        layouts = list(job.layouts.values())
        prepared = prepare_output(job.output, job.observations, layouts, job.attrs, job.identity, options.force,
                                  fingerprints=job.fingerprints, frozen=options.frozen,
                                  drop_missing=options.drop_missing,
                                  extend=job.config.master_calibration != "dataset", on_disk=job.on_disk,
                                  parts=options.uses_parts)
        summary.action, summary.counts = prepared.action, prepared.counts
        # said when there is work to do; a complete run's log is its one line (debug output has them)
        _report_dropped(job, logging.DEBUG if prepared.action == "complete" else None)
        if prepared.action == "complete":  # the command prints its summary: the console gets this with -v only
            log.info("%s: already complete with this config, numerical code and inputs; nothing to do", job.output,
                     extra={CONSOLE_OPTIONAL: True})
        else:
            if prepared.todo:
                if len(prepared.todo) < plan.jobs:  # fewer left than workers planned: fewer, bigger workers
                    plan = plan_run(options, budget, len(prepared.todo), chunk_bytes)
                capped = jobs_capped(options, plan, len(prepared.todo))
                if capped:
                    log.info("%s", capped)
                summary.plan = plan
                dispatch(job, options, summary.plan, prepared, summary)
            publish(prepared, job.output, layouts, job.attrs)
        summary.statuses = _statuses(job.output)
        return summarize(summary, t_start)  # inside: the log file ends with the summary line


@dataclass(frozen=True)
class RunJob:
    """What a run calibrates, where, and what identifies its output."""

    data_dir: DataPath  # absolute (tasks may run in other working directories), or a URL (io/storage.py)
    split: str
    output: Path  # absolute
    config: CalibrationConfig
    observations: list[Observation]
    layouts: dict[str, InstrumentLayout]
    identity: dict[str, str]  # what an existing output must share with this run to be resumed by it
    attrs: dict[str, Any]  # the attributes of a new output: the identity and what describes the file
    manifest: str | None = None  # input manifest the workers check each input file against
    fingerprints: dict[tuple[int, int], str] = field(default_factory=dict)  # (planet, visit) -> its inputs now
    on_disk: dict[tuple[int, int], Observation] = field(default_factory=dict)  # the data folder's, selected or not


def identify(data_dir: str | Path | RemotePath, config: CalibrationConfig, options: RunOptions,
             output: str | Path | None, run_name: str | None, runs_dir: str | Path, *, create: bool = True,
             ) -> RunJob:
    """Stage 1: the input, the output path and the output's identity; a named run's folder is created.

    ``create=False`` (``--dry-run``) creates nothing: the run folder is only named.
    """
    if (output is None) == (run_name is None):
        raise ValueError("give either an output file or a run name (not both)")
    data_dir = data_folder(data_dir)
    output = None if output is None else local_output(output)  # a URL: refused, the output is written here
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise OutputError(f"{Path(output).resolve().parent}: output folder does not exist")
    if output is not None and Path(output).is_dir():
        raise OutputError(f"{output}: is a folder; -o names the HDF5 file to write (e.g. {Path(output) / 'out.h5'})")
    info = dataset_info(data_dir)
    observations = discover_observations(data_dir, options.split, options.planets)
    if not observations:
        raise InputError(data_dir / options.split, "no planet folders found")
    if run_name is not None:
        output = run_output(run_name, options.split, runs_dir)
    if output is None:
        raise ValueError("give either an output file or a run name")
    manifest = resolve_manifest(data_dir, options.verify_inputs)
    files = OutputFiles.of(output)
    check_write_targets(files, data_dir, [Path(manifest)] if manifest else [], log_file=options.log_file,
                        option="-o" if run_name is None else "--run")  # before anything is created
    if run_name is not None and create:  # only once the input is known to be there: no empty run folders
        try:
            files.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{files.path.parent}: cannot create the run folder: {exc}") from None
    # a selection (--planets) leaves the others out of this run, not out of the output: they stay, and one of
    # them whose part is lost or damaged is recomputed (its inputs are still here)
    on_disk = observations if options.planets is None else discover_observations(data_dir, options.split)
    layouts = {name: instrument_layout(INSTRUMENTS[name], info, config) for name in config.instruments}
    run_identity = identity.run_identity(config, options.split)
    attrs = {**run_identity, "source": describe(data_dir), "profile": config.profile, "recipe": describe_recipe(),
             "wavelength_order": config.wavelength_order}
    fingerprints = input_fingerprints(on_disk, data_dir, config.instruments, config.master_calibration == "planet")
    check_manifest_covers(manifest, observations, data_dir, config.instruments, config.master_calibration == "planet")
    return RunJob(data_dir, options.split, files.path, config, observations, layouts, run_identity,
                  attrs, manifest, fingerprints, {(o.planet_id, o.visit): o for o in on_disk})


def _report_dropped(job: RunJob, level: int | None = None) -> None:
    """Log what the time and spatial bins leave out of every observation: never silently.

    A bin width that does not divide a visit's samples drops its incomplete last bin (the
    organisers' notebook does so with the default widths: half a bin of the real visits);
    a spatial bin that does not divide the columns drops the last columns. A width other
    than the default gets a warning, the default an info line; ``level`` logs every notice
    at that level instead (debug, for a run with nothing to do: the run that did the work
    said them).
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
            notice = level or (logging.INFO if width == getattr(defaults, option) else logging.WARNING)
            log.log(notice, "%s: %s %d leaves the last %d of %d %s of every observation out of a whole time bin: "
                    "they are dropped (widths that divide %d: %s)", name, option, width, samples % width, samples,
                    "CDS samples" if config.cds else "frames", samples, ", ".join(exact[:12]))
        warning = level or logging.WARNING
        if config.cosmic_rays and config.cr_method == "bin" and config.bin_width(name) < 3:
            log.log(warning, "%s: cosmic rays are looked for per time bin, and bins of %d sample(s) are too short: "
                    "none is rejected (cr_method = \"series\" looks along each pixel's whole series)", name,
                    config.bin_width(name))
        columns = int(layout.columns.shape[0])
        if columns % config.spatial_bin:
            log.log(warning, "%s: spatial_bin %d leaves the last %d of %d output columns out of a whole block: they "
                    "are dropped", name, config.spatial_bin, columns % config.spatial_bin, columns)


def checked_budget(options: RunOptions, chunk_bytes: int | None = None) -> int:
    """``--memory`` in bytes, once :func:`check_options` passed: what a run and ``--dry-run`` check first."""
    budget = parse_bytes(options.memory)
    check_options(options, budget, chunk_bytes)
    return budget


def check_options(options: RunOptions, budget: int, chunk_bytes: int | None = None) -> None:
    """Refuse a memory budget, a backend or a scheduler the run cannot use, before any output is laid out.

    ``--memory`` above this machine's RAM, or too small for one worker (what :func:`plan_run`
    would refuse later), the dask backend without dask.distributed installed
    (:class:`MissingDependencyError`, exit 69) and an unreachable dask scheduler stop the run here.
    """
    if options.backend == "loky" and budget > physical_memory():
        raise MemoryBudgetError(f"{flag('memory', options.memory)} is more than this machine's memory "
                                f"({format_bytes(physical_memory())}); give at most that")
    if chunk_bytes is None:  # what plan_run refuses later, for one task, without its log lines
        release_memory()
        jobs = options.jobs if options.backend == "loky" else 1
        try:
            plan_workers(min(budget, available_memory()), 1, jobs, available_cores(), current_rss())
        except MemoryBudgetError as exc:
            raise MemoryBudgetError(f"{flag('memory', options.memory)}: {exc}") from None
    if options.backend == "dask":
        try:
            import distributed  # noqa: F401 - only whether it imports
        except ImportError:
            raise MissingDependencyError.of("the dask backend", "dask.distributed", "dask[distributed]",
                                            "dask") from None
        import joblib

        found = re.match(r"(\d+)\.(\d+)", joblib.__version__)
        if found is None or (int(found[1]), int(found[2])) < DASK_JOBLIB:
            # joblib 1.3 (install_requires' floor) cannot stream results from dask (return_as="generator")
            raise MissingDependencyError.of(f"the dask backend (joblib {joblib.__version__} here)",
                                            f"joblib >= {'.'.join(map(str, DASK_JOBLIB))}",
                                            f"joblib>={'.'.join(map(str, DASK_JOBLIB))}", "dask")
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
        raise ArielstreamError(f"{flag('scheduler', address)}: not a scheduler address (use tcp://HOST:PORT)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ArielstreamError(f"{flag('scheduler', address)}: cannot reach the dask scheduler "
                               f"({exc.strerror or type(exc).__name__})") from None


def plan_run(options: RunOptions, budget: int, n_todo: int, chunk_bytes: int | None = None) -> WorkerPlan:
    """Stage 2: workers, threads and chunk budget for ``n_todo`` observations in ``budget`` bytes."""
    release_memory()  # measure what this process holds, not what it freed before the run
    if chunk_bytes is not None:  # set directly (tests, experiments): no budget planning
        cap = max(1, min(available_cores(), n_todo))
        jobs = 1 if options.backend == "dask" else min(options.jobs or cap, cap)
        return WorkerPlan(jobs, max(1, available_cores() // jobs), int(chunk_bytes), budget, current_rss())
    if options.backend == "dask":
        return plan_workers(budget, 1, 1, 1, current_rss())
    return plan_workers(effective_budget(budget), n_todo, options.jobs, available_cores(), current_rss(),
                        address_headroom=address_headroom())


def jobs_capped(options: RunOptions, plan: WorkerPlan, n_todo: int) -> str | None:
    """The line saying that ``--jobs N`` was capped (by the cores and the observations to do), or None."""
    if options.backend != "loky" or options.jobs is None or plan.jobs >= options.jobs:
        return None
    return (f"--jobs {options.jobs} capped at {plan.jobs}: {available_cores()} core(s), "
            f"{n_todo} observation(s) to calibrate")


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
