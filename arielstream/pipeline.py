"""One observation through the recipe: reader → kernels → memmapped output.

This module composes the layers and owns no maths and no file format: the
reader yields aligned chunks, :mod:`arielstream.kernels` calibrates them, and the
results are written into the observation's slice of the output through memmaps
opened from descriptors. Everything here runs in a worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import steps
from .calibration_files import DetectorCalibration, load_calibration
from .config import CalibrationConfig
from .dq import DARK_INVALID, DO_NOT_USE
from .errors import InputError
from .kernels import BlockCalibration, calibrate_block
from .layout import INSTRUMENTS, Instrument, Observation
from .memory import plan_chunks
from .metadata import DatasetInfo, target_labels
from .reader import SignalFile, prefetch
from .recipe import needed_calibration, runs, step_status
from .store import ArrayDescriptor, InstrumentLayout

log = logging.getLogger(__name__)


def frames_per_bin(config: CalibrationConfig, inst: Instrument) -> int:
    return config.bin_width(inst.name) * (2 if config.cds else 1)


def instrument_layout(inst: Instrument, info: DatasetInfo, config: CalibrationConfig) -> InstrumentLayout:
    """Output axes of ``inst`` under ``config``: bins, columns in output order, wavelengths."""
    n_frames = info.n_frames(inst)
    fpb = frames_per_bin(config, inst)
    n_bins = n_frames // fpb
    if n_bins < 1:
        raise InputError(info.root / "axis_info.parquet",
                         f"{n_frames} {inst.name} frames make no whole time bin of {fpb} frames")
    times = info.frame_times[inst.name][: n_bins * fpb].reshape(n_bins, fpb).mean(axis=1)
    if inst.name == "AIRS-CH0":
        start, stop = (config.cut_start, config.cut_stop) if config.wavelength_cut else (0, inst.columns)
        columns = np.arange(start, stop)
        if config.wavelength_order == "target":  # wavelength decreases along the detector columns
            columns = columns[::-1]
        wavelength = info.airs_wavelength[columns]
        labels = target_labels(columns)
    else:
        columns = np.arange(inst.columns)
        wavelength = np.full(inst.columns, 0.7)
        labels = [""] * inst.columns
    return InstrumentLayout(inst.name, times, columns, inst.rows, wavelength, labels)


@dataclass(frozen=True)
class PixelSelection:
    """The pixels decoded for an output, in file order, and where each one goes."""

    pixels: np.ndarray  # flat row-major pixel indices (column indices of the signal file)
    x: np.ndarray  # output x index of each pixel
    y: np.ndarray  # output y index (spatial row)
    region: tuple[np.ndarray, np.ndarray]  # detector (rows, columns) of the region in file order

    @property
    def per_row(self) -> int:
        return int(self.region[1].shape[0])


def select_pixels(inst: Instrument, layout: InstrumentLayout) -> PixelSelection:
    cols = np.sort(layout.columns)
    rows = np.arange(inst.rows)
    x_of_column = np.empty(inst.columns, dtype=np.int64)
    x_of_column[layout.columns] = np.arange(layout.columns.shape[0])
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    pixels = (rr * inst.columns + cc).ravel()
    return PixelSelection(pixels, x_of_column[cc.ravel()], rr.ravel(), (rows, cols))


def _region(a: np.ndarray | None, sel: PixelSelection) -> np.ndarray | None:
    """Restrict a ``(..., rows, columns)`` calibration array to the selected region."""
    if a is None:
        return None
    return a[..., sel.region[0][:, None], sel.region[1][None, :]]


def _flat_pixels(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    return a.reshape(*a.shape[:-2], -1)


def quality_plane(cal: DetectorCalibration, status: dict[str, str], config: CalibrationConfig,
                  sel: PixelSelection) -> np.ndarray:
    """Data-quality bits of the selected region, ``(rows, columns)`` in file order."""
    dark = _region(cal.dark, sel)
    masked = runs(status, "mask")
    parts = {
        "dark": dark if masked else None,
        "dead": _region(cal.dead, sel) if masked else None,
        "flat": _region(cal.flat, sel) if runs(status, "flat") else None,
        "coeffs": _region(cal.linear_corr, sel) if runs(status, "nonlinearity") else None,
    }
    shape = (sel.region[0].shape[0], sel.region[1].shape[0])
    if all(v is None for v in parts.values()):
        dq = np.zeros(shape, dtype=np.uint16)
    else:
        dq = steps.pixel_quality(**parts, sigma=config.hot_sigma, maxiters=config.hot_maxiters)
    if runs(status, "dark") and dark is not None:
        dq[~np.isfinite(dark)] |= DARK_INVALID
    return dq


def calibrate_instrument(obs: Observation, inst: Instrument, info: DatasetInfo, config: CalibrationConfig,
                         layout: InstrumentLayout, outputs: dict[str, ArrayDescriptor], index: int,
                         budget: int, checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Calibrate one instrument of one observation into its output slice; return its provenance.

    ``checkpoint`` is called before every write: it may raise to abandon the
    observation (a worker whose coordinator died, an interrupted run).
    """
    t0 = time.perf_counter()
    cal = load_calibration(obs, inst, needed_calibration(config), config.missing_calibration)
    status = step_status(config, inst.name, cal)
    sel = select_pixels(inst, layout)
    dq_region = quality_plane(cal, status, config, sel)
    dq_flat = dq_region.ravel()
    bad = (dq_flat & DO_NOT_USE) != 0 if config.bad_pixels == "nan" else np.zeros(dq_flat.shape, bool)

    fpb = frames_per_bin(config, inst)
    n_used = layout.n_bins * fpb
    reader = SignalFile(obs.signal_path(inst), inst, info.n_frames(inst))
    plan = plan_chunks(len(sel.pixels), sel.per_row, reader.row_group_rows, n_used, fpb, budget)

    adc = info.adc[inst.name]
    dt = steps.frame_dt(inst.name, info.n_frames(inst), info.airs_integration_time) if runs(status, "dark") else None
    coeffs = _flat_pixels(_region(cal.linear_corr, sel)) if runs(status, "nonlinearity") else None
    dark = _flat_pixels(_region(cal.dark, sel)) if runs(status, "dark") else None
    flat = _flat_pixels(_region(cal.flat, sel)) if runs(status, "flat") else None

    out = outputs["signal"].open(index)
    try:
        for chunk in prefetch(reader.iter_chunks(sel.pixels, plan, n_used, fpb)):
            p = chunk.pixels
            block_cal = BlockCalibration(
                gain=adc.gain if runs(status, "adc") else None,
                offset=adc.offset,
                coeffs=None if coeffs is None else coeffs[:, p],
                dark=None if dark is None else dark[p],
                flat=None if flat is None else flat[p],
                cds=config.cds,
                width=config.bin_width(inst.name),
            )
            chunk_dt = None if dt is None else dt[chunk.frame_start:chunk.frame_stop]
            binned = calibrate_block(chunk.data, chunk_dt, block_cal)
            binned[bad[p]] = np.nan
            b0, b1 = chunk.frame_start // fpb, chunk.frame_stop // fpb
            checkpoint()
            out[b0:b1, sel.x[p], sel.y[p]] = binned.T
        out.flush()
    finally:
        del out
    checkpoint()
    read = _region(cal.read, sel)
    read_flat = np.full(dq_flat.shape, np.nan) if read is None else read.ravel()
    for key, plane in (("dq", dq_flat), ("read_noise", read_flat)):
        mm = outputs[key].open(index)
        mm[sel.x, sel.y] = plane
        mm.flush()
        del mm

    log.debug("%s %s: %s in %.2f s", obs.label, inst.name, plan.describe(), time.perf_counter() - t0)
    sources = {k: (v if v == "missing" else _relative(v, info.root)) for k, v in cal.sources.items()}
    return {
        "steps": status,
        "calibration": sources,
        "bad_pixels": int(((dq_flat & DO_NOT_USE) != 0).sum()),
    }


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def calibrate_observation(obs: Observation, index: int, info: DatasetInfo, config: CalibrationConfig,
                          layouts: dict[str, InstrumentLayout], descriptors: dict[str, ArrayDescriptor],
                          budget: int, checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Every configured instrument of ``obs``; raises on bad input (the caller records it)."""
    provenance: dict[str, Any] = {}
    for name in config.instruments:
        inst = INSTRUMENTS[name]
        outputs = {key: descriptors[f"{name}/{key}"] for key in ("signal", "dq", "read_noise")}
        provenance[name] = calibrate_instrument(obs, inst, info, config, layouts[name], outputs, index, budget,
                                                checkpoint)
    return provenance
