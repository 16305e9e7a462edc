"""``calibrate --dry-run``: what a run would do, and need, without writing anything.

:func:`dry_run` lists the observations, the output's size (from the layout, as
:func:`arielstream.io.store.create_output` would lay it out), the free disk at the
output, the worker plan (:func:`arielstream.run.budget.plan_workers`) and an
estimated time. It takes no lock and creates no file or folder; the estimate comes
from measured constants (:data:`CORE_SECONDS`), or, with ``measure=True``, from
calibrating the first planet into a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config.options import CalibrationConfig, RunOptions
from ..errors import ArielstreamError
from ..io import schema, store
from ..io.storage import RemotePath
from ..layout import AIRS
from ..units import format_bytes
from .budget import WorkerPlan
from .runs import DEFAULT_RUNS_DIR

log = logging.getLogger(__name__)

# Core-seconds per full-size observation (11,250 AIRS + 135,000 FGS1 frames), default profile with the
# non-linearity, files in the page cache; measured on a 2-core AMD EPYC (BENCHMARKS.md, `make bench`):
# one worker with 2 threads takes 1.20 s with the numba kernels and ~2.0 s with numexpr.
FULL_SIZE_AIRS_FRAMES = 11_250
CORE_SECONDS = {"numba": 2.4, "numexpr": 4.0}
# what the slow data-quality steps add (same benchmark, 2 threads): cosmic rays over the whole series +2.5 s
# (cr_method = "series"; the default per-bin rejection ~0.1 s), spatial outliers +0.5 s
EXTRA_CORE_SECONDS = {"series_cosmic_rays": 5.0, "spatial_outliers": 1.0}


@dataclass
class DryRun:
    """What a run would do: see :func:`dry_run`."""

    output: Path
    planets: int
    observations: int
    todo: int  # observations a run would calibrate (those not done in an existing output)
    existing: str  # what is at the output now, in words ("" if nothing)
    output_bytes: int
    free_bytes: int
    plan: WorkerPlan
    core_seconds: float  # per observation
    estimate_from: str  # "measured constants" or "measured here"
    capped: str = ""  # "--jobs N capped at M: ..." when the plan runs fewer workers than asked for
    parts: bool = False  # parts mode: each observation in a part of its own, calibrated in the worker's TMPDIR

    @property
    def seconds(self) -> float:
        """Estimated wall time of the run: core-seconds spread over the plan's workers and threads."""
        return self.todo * self.core_seconds / max(1, self.plan.jobs * self.plan.threads)

    def lines(self) -> list[str]:
        """The plan in words, one line per fact (what ``calibrate --dry-run`` prints)."""
        room = "fits" if self.output_bytes + 2**20 <= self.free_bytes else "DOES NOT FIT"
        lines = [f"dry run: nothing written, no lock taken; output {self.output}",
                 f"  observations: {self.observations} of {self.planets} planet(s), {self.todo} to calibrate"]
        if self.existing:
            lines.append(f"  existing output: {self.existing}")
        where = (f"parts mode: each observation calibrated in its worker's TMPDIR (one observation's size there), "
                 f"then copied into {self.output.name}.parts/; an index over the parts is published" if self.parts
                 else f"written in place as {self.output.name}.partial and renamed when done: no other scratch space")
        lines += [f"  output size: {format_bytes(self.output_bytes)} ({where})",
                  f"  disk free at the output: {format_bytes(self.free_bytes)} ({room})",
                  f"  workers: {self.plan.describe()}" + (f" ({self.capped})" if self.capped else ""),
                  f"  estimated time: {_duration(self.seconds)} ({self.core_seconds:.1f} core-s per observation, "
                  f"{self.estimate_from}; --dry-run-measure times one planet here)"]
        return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _existing(output: Path, total: int) -> tuple[str, int]:
    """What is at ``output`` (or its ``.partial``) now, and how many observations are done there."""
    for path in (output, output.with_name(output.name + ".partial")):
        if not path.exists():
            continue
        try:
            status = store.read_field(store.read_descriptors(path), schema.STATUS)
        except (ArielstreamError, OSError) as exc:
            return f"{path} exists but is not a readable arielstream file ({exc})", 0
        done = int((status == schema.STATUS_DONE).sum())
        return (f"{path}: {done} of {status.shape[0]} observation(s) done (a run with the same config and "
                "code resumes it; another config needs --force)"), min(done, total)
    return "", 0


def _constant_core_seconds(config: CalibrationConfig, airs_frames: int) -> tuple[float, str]:
    from ..calibration import engine

    seconds = CORE_SECONDS["numba" if engine.current().compiled else "numexpr"]
    steps = {"series_cosmic_rays": config.cosmic_rays and config.cr_method == "series",
             "spatial_outliers": config.spatial_outliers}
    seconds += sum(extra for name, extra in EXTRA_CORE_SECONDS.items() if steps[name])
    return seconds * airs_frames / FULL_SIZE_AIRS_FRAMES, "measured constants, warm page cache"


def _measured_core_seconds(data_dir: Path | RemotePath, config: CalibrationConfig, options: RunOptions,
                           planet: int) -> tuple[float, str]:
    """Calibrate ``planet`` into a temporary folder (removed after) and time its observations."""
    from .runner import calibrate

    with tempfile.TemporaryDirectory(prefix="arielstream-dry-run-") as tmp:
        t0 = time.perf_counter()
        summary = calibrate(data_dir, Path(tmp) / "measure.h5", split=options.split, planets=[planet], config=config,
                            memory=options.memory, jobs=1, progress=False, log_file=False)
        wall = time.perf_counter() - t0
    per_obs = sum(r.seconds for r in summary.results) / max(1, len(summary.results))
    threads = summary.plan.threads if summary.plan is not None else 1
    return per_obs * threads, f"measured here on planet {planet} ({wall:.1f} s with {threads} thread(s))"


def dry_run(data_dir: str | Path | RemotePath, config: CalibrationConfig, options: RunOptions, *,
            output: str | Path | None = None, run_name: str | None = None,
            runs_dir: str | Path = DEFAULT_RUNS_DIR, measure: bool = False) -> DryRun:
    """What :func:`arielstream.run.runner.run_calibration` would do with these arguments; writes nothing.

    Bad input fails as the run would, with the same error (exit code): the run's own
    checks run first (:func:`~arielstream.run.runner.checked_budget`: a ``--memory`` above
    this machine's RAM or too small for one worker, the dask backend without its package
    or scheduler), then a missing data folder or unknown planet; so a dry run also checks a
    command line.
    """
    from .runner import checked_budget, identify, jobs_capped, plan_run
    from .worker import dataset_info

    budget = checked_budget(options)
    job = identify(data_dir, config, options, output, run_name, runs_dir, create=False)
    existing, done = _existing(job.output, len(job.observations))
    todo = len(job.observations) - done
    plan = plan_run(options, budget, max(1, todo))
    capped = jobs_capped(options, plan, todo) if todo else None
    probe = job.output.parent
    while not probe.exists():  # a named run's folder is created only by the run itself
        probe = probe.parent
    if measure:
        core_seconds, source = _measured_core_seconds(job.data_dir, config, options, job.observations[0].planet_id)
    else:
        core_seconds, source = _constant_core_seconds(config, dataset_info(job.data_dir).n_frames(AIRS))
    return DryRun(job.output, len({o.planet_id for o in job.observations}), len(job.observations), todo, existing,
                  store.output_bytes(len(job.observations), list(job.layouts.values())),
                  shutil.disk_usage(probe).free, plan, core_seconds, source, capped or "", options.uses_parts)
