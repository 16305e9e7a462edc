"""A calibration run: discover observations, lay out the output, calibrate each, publish.

The output is built as ``OUT.h5.partial`` and renamed to ``OUT.h5`` only when
every observation has a final status (done or failed), so a file under the final
name is never half-written. One bad observation is recorded as failed (NaN data,
the error in ``/error``) and the others go on.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .config import CalibrationConfig
from .dq import BITS
from .errors import ArielstreamError, InputError, OutputError
from .layout import INSTRUMENTS, Observation, discover_observations
from .memory import chunk_budget, format_bytes, parse_bytes
from .metadata import DatasetInfo, read_dataset_info
from .pipeline import calibrate_observation, instrument_layout
from .recipe import describe_recipe
from .store import STATUS_DONE, STATUS_FAILED, ArrayDescriptor, create_output, record_result

log = logging.getLogger(__name__)

DEFAULT_MEMORY = "2GB"


@dataclass
class ObservationResult:
    index: int
    planet_id: int
    visit: int
    status: int
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == STATUS_DONE


@dataclass
class RunSummary:
    output: Path
    results: list[ObservationResult] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss: int = 0

    @property
    def failed(self) -> list[ObservationResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed


def peak_rss() -> int:
    """Peak resident set size of this process so far (bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fail_observation(descriptors: dict[str, ArrayDescriptor], config: CalibrationConfig, index: int,
                      message: str) -> None:
    """NaN every cube of the observation and record why, so nothing half-written looks valid."""
    for name in config.instruments:
        mm = descriptors[f"{name}/signal"].open(index)
        mm[...] = np.nan
        mm.flush()
        del mm
    record_result(descriptors, index, STATUS_FAILED, error=message)


def run_observation(index: int, obs: Observation, info: DatasetInfo, config: CalibrationConfig,
                    layouts: dict, descriptors: dict[str, ArrayDescriptor], budget: int,
                    use_threads: bool = True) -> ObservationResult:
    """Calibrate one observation and record its status; never raises for bad input."""
    t0 = time.perf_counter()
    try:
        provenance = calibrate_observation(obs, index, info, config, layouts, descriptors, budget, use_threads)
    except ArielstreamError as exc:
        message = str(exc)
        log.error("%s failed: %s", obs.label, message)
    except MemoryError:
        message = f"{obs.label}: out of memory (budget {format_bytes(budget)} for chunks)"
        log.error(message)
    except Exception as exc:  # a bug must not sink the batch either; keep the traceback in the log
        message = f"{obs.label}: internal error {type(exc).__name__}: {exc}"
        log.exception("%s failed with an unexpected error", obs.label)
    else:
        record_result(descriptors, index, STATUS_DONE, provenance=provenance)
        return ObservationResult(index, obs.planet_id, obs.visit, STATUS_DONE,
                                 seconds=time.perf_counter() - t0)
    _fail_observation(descriptors, config, index, message)
    return ObservationResult(index, obs.planet_id, obs.visit, STATUS_FAILED, message, time.perf_counter() - t0)


def _progress(total: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="obs", desc="calibrating", dynamic_ncols=True)


def calibrate(data_dir: str | Path, output: str | Path, split: str = "train", planets: list[int] | None = None,
              config: CalibrationConfig | None = None, memory: str | int = DEFAULT_MEMORY,
              overwrite: bool = False, progress: bool | None = None, chunk_bytes: int | None = None) -> RunSummary:
    """Calibrate every visit of the chosen planets of ``data_dir/split`` into ``output``.

    ``memory`` is the RAM budget of the run; the chunk size is derived from it
    (``chunk_bytes`` sets the chunk budget directly, for tests and experiments).
    """
    t_start = time.perf_counter()
    config = config or CalibrationConfig()
    total_budget = parse_bytes(memory)
    data_dir, output = Path(data_dir), Path(output)
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists (pass overwrite=True / --overwrite to replace it)")
    if not output.parent.is_dir():
        raise OutputError(f"{output.parent}: output folder does not exist")
    info = read_dataset_info(data_dir)
    observations = discover_observations(data_dir, split, planets)
    if not observations:
        raise InputError(data_dir / split, "no planet folders found")
    layouts = {name: instrument_layout(INSTRUMENTS[name], info, config) for name in config.instruments}
    budget = chunk_budget(total_budget) if chunk_bytes is None else int(chunk_bytes)
    log.info("%d observation(s) of %d planet(s) from %s/%s; memory budget %s, %s for chunks",
             len(observations), len({o.planet_id for o in observations}), data_dir, split,
             format_bytes(total_budget), format_bytes(budget))

    partial = output.with_name(output.name + ".partial")
    attrs: dict[str, Any] = {
        "arielstream_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(data_dir.resolve()),
        "split": split,
        "profile": config.profile,
        "config": config.to_json(),
        "recipe": describe_recipe(),
        "wavelength_order": config.wavelength_order,
        "dq_bits": dict(BITS),
        "host": platform.node(),
    }
    descriptors = create_output(partial, observations, list(layouts.values()), attrs)
    summary = RunSummary(output)
    bar = _progress(len(observations), progress)
    try:
        for index, obs in enumerate(observations):
            result = run_observation(index, obs, info, config, layouts, descriptors, budget)
            summary.results.append(result)
            if bar is not None:
                bar.update(1)
            else:
                log.info("[%d/%d] %s %s in %.1f s", index + 1, len(observations), obs.label,
                         "done" if result.ok else "FAILED", result.seconds)
    finally:
        if bar is not None:
            bar.close()
    os.replace(partial, output)
    summary.seconds = time.perf_counter() - t_start
    summary.peak_rss = peak_rss()
    log.info("%d done, %d failed in %.1f s; peak RSS %s; wrote %s", len(summary.results) - len(summary.failed),
             len(summary.failed), summary.seconds, format_bytes(summary.peak_rss), output)
    return summary
