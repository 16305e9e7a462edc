"""One observation through the recipe: reader → kernels → frame steps → memmapped output.

This module composes the layers and owns no maths and no file format. Per
instrument (:func:`calibrate_instrument`), four stages:

1. :func:`prepare_arrays`: calibration files and masters, the quality plane and
   the selected pixels, as flat per-pixel arrays in the reader's order;
2. :func:`stream`: the reader's aligned chunks through
   :mod:`arielstream.calibration.kernels` into the observation's binned cube;
3. :func:`frame_stage`: the steps over binned frames
   (:mod:`arielstream.calibration.frame_steps`);
4. :func:`write_outputs`: the spatially binned planes into the observation's
   slice of the output, through memmaps opened from descriptors.

Everything here runs in a worker, and the provenance it returns names the compute
engine of that worker (:mod:`arielstream.calibration.engine`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..calibration import engine, frame_steps, steps
from ..calibration.kernels import (
    BlockCalibration,
    calibrate_block,
    calibrate_block_clipped,
    calibrate_block_with_outliers,
    saturation_counts,
)
from ..calibration.steps import master_frame
from ..config.options import CalibrationConfig
from ..config.recipe import needed_calibration, runs, step_status
from ..dq import (
    DARK_INVALID,
    DO_NOT_USE,
    HOT,
    READ_NOISE_INVALID,
    SATURATED,
    TIME_COSMIC_RAY,
    TIME_INTERPOLATED,
    TIME_SATURATED,
    TIME_SPATIAL_OUTLIER,
)
from ..errors import ConfigError
from ..io.calibration import DetectorCalibration, load_calibration, read_master_stacks
from ..io.dataset import DatasetInfo, target_labels
from ..io.manifest import check_observation_inputs
from ..io.schema import (
    BACKGROUND,
    CENTROID,
    DARK_CHARGE,
    DQ,
    DQ_TIME,
    OPTIONAL,
    READ_NOISE,
    SIGNAL,
    TRACE_ROW,
    Field,
)
from ..io.signal import SignalFile, plan_chunks, prefetch
from ..io.storage import DataPath, relative_name
from ..io.store import ArrayDescriptor, InstrumentLayout, write_slice
from ..layout import AIRS, FGS1_WAVELENGTH_UM, INSTRUMENTS, Instrument, Observation, frames_per_bin

log = logging.getLogger(__name__)


def instrument_layout(inst: Instrument, info: DatasetInfo, config: CalibrationConfig) -> InstrumentLayout:
    """Output axes of ``inst`` under ``config``: bins, columns in output order, wavelengths."""
    n_frames = info.n_frames(inst)
    fpb = frames_per_bin(config, inst)
    n_bins = n_frames // fpb
    if n_bins < 1:  # the bin width is the user's choice: a configuration error, not a bad input
        option = "airs_bin" if inst.name == AIRS.name else "fgs1_bin"
        raise ConfigError(f"{option} {config.bin_width(inst.name)}: a time bin of {fpb} frames is longer than the "
                          f"{n_frames} {inst.name} frames of an observation ({info.root / 'axis_info.parquet'}); "
                          f"give at most {n_frames // (fpb // config.bin_width(inst.name))}")
    times = info.frame_times[inst.name][: n_bins * fpb].reshape(n_bins, fpb).mean(axis=1)
    if inst.name == AIRS.name:
        start, stop = (config.cut_start, config.cut_stop) if config.wavelength_cut else (0, inst.columns)
        columns = np.arange(start, stop)
        if config.wavelength_order == "target":  # wavelength decreases along the detector columns
            columns = columns[::-1]
        wavelength = info.airs_wavelength[columns]
        labels = target_labels(columns)
    else:
        columns = np.arange(inst.columns)
        wavelength = np.full(inst.columns, FGS1_WAVELENGTH_UM)
        labels = [""] * inst.columns
    layout = InstrumentLayout(inst.name, times, columns, inst.rows, wavelength, labels, config.spatial_bin)
    extras: list[Field] = []  # the optional planes the steps add (their dtypes and axes: the schema's)
    airs = inst.name == AIRS.name
    if config.cosmic_rays or config.interpolate_bad_pixels or (config.spatial_outliers and airs):
        extras.append(OPTIONAL[DQ_TIME])
    if config.background:
        extras.append(OPTIONAL[BACKGROUND])
    if config.tracking:
        extras.append(OPTIONAL[TRACE_ROW] if airs else OPTIONAL[CENTROID])
    if config.dark:
        extras.append(OPTIONAL[DARK_CHARGE])
    return dataclasses.replace(layout, extras=tuple(extras))


@dataclass(frozen=True)
class PixelSelection:
    """The pixels decoded for an output, in file order, and where each one goes."""

    pixels: np.ndarray  # flat row-major pixel indices (column indices of the signal file)
    x: np.ndarray  # output x index of each pixel
    y: np.ndarray  # output y index (spatial row)
    region: tuple[np.ndarray, np.ndarray]  # detector (rows, columns) of the region in file order

    @property
    def per_row(self) -> int:
        """Selected pixels per detector row (the region's columns)."""
        return int(self.region[1].shape[0])


def select_pixels(inst: Instrument, layout: InstrumentLayout) -> PixelSelection:
    """The pixels of the output's columns on every row, in signal-file order, with each one's output x and y."""
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
                  sel: PixelSelection, exposure: float | None = None) -> np.ndarray:
    """Data-quality bits of the selected region, ``(rows, columns)`` in file order.

    ``exposure``: the CDS exposure (s) that the ``physical`` hot-pixel rule weighs the dark over.
    """
    dark = _region(cal.dark, sel)
    read = _region(cal.read, sel)
    masked = runs(status, "mask")
    parts = {
        "dark": dark if masked else None,
        "dead": _region(cal.dead, sel) if masked else None,
        "flat": _region(cal.flat, sel) if runs(status, "flat") else None,
        "coeffs": _region(cal.linear_corr, sel) if runs(status, "nonlinearity") else None,
        "read": read,  # an invalid read noise is flagged and replaced by the typical one
    }
    shape = (sel.region[0].shape[0], sel.region[1].shape[0])
    if all(v is None for v in parts.values()):
        dq = np.zeros(shape, dtype=np.uint16)
    else:
        physical = masked and dark is not None and config.hot_rule == "physical"
        if physical and (read is None or exposure is None):
            log.warning("hot_rule 'physical' needs the read noise (read.parquet) and the exposure: "
                        "hot pixels by the sigma clip of the dark instead")
            physical = False
        dq = steps.pixel_quality(**parts, sigma=config.hot_sigma, maxiters=config.hot_maxiters,
                                 sigma_hot=not physical)
        if physical:
            assert dark is not None and read is not None and exposure is not None  # physical says so
            valid = np.where(steps.invalid_read_noise(read), np.nan, read)  # an invalid read noise judges nothing
            dq |= steps.physical_hot_bits(dark, valid, exposure)
    if runs(status, "dark") and dark is not None:
        dq[steps.invalid_dark(dark)] |= DARK_INVALID
    return dq


def load_masters(observations: list[Observation], inst: Instrument) -> tuple[dict[str, np.ndarray], int]:
    """Master dark and flat over the calibration folders of ``observations``, and how many were combined."""
    stacks = read_master_stacks(observations, inst)
    return {name: master_frame(stack) for name, stack in stacks.items()}, len(stacks["dark"])


def _masters(obs: Observation, inst: Instrument, config: CalibrationConfig,
             given: dict[str, Any] | None) -> tuple[dict[str, np.ndarray], str] | None:
    """The master dark and flat this observation uses, and where they come from (None: its own)."""
    if config.master_calibration == "off":
        return None
    if config.master_calibration == "dataset":
        if given is None or inst.name not in given:
            raise ValueError("master_calibration='dataset' needs the masters from the coordinator")
        frames, n = given[inst.name]
        return frames, f"master of {n} observation(s)"
    visits = sorted(int(d.name.rsplit("_", 1)[1]) for d in obs.folder.glob(f"{inst.name}_calibration_*")
                    if d.is_dir() and d.name.rsplit("_", 1)[1].isdigit())
    frames, n = load_masters([Observation(obs.planet_id, v, obs.folder) for v in visits], inst)
    return frames, f"master of {n} visit(s) of planet {obs.planet_id}"


@dataclass(frozen=True)
class InstrumentArrays:
    """What the streaming and frame stages need of one instrument of one observation.

    Per-pixel arrays are flat over the selected pixels in file order (``sel.pixels``);
    planes are ``(x, y)`` in output order, before spatial binning. ``None``: the
    step that uses it does not run.
    """

    cal: DetectorCalibration
    status: dict[str, str]  # step -> "ran" | "off" | "skipped: ..." | "n/a"
    sel: PixelSelection
    dq: np.ndarray  # (P,) uint16 static quality bits
    bad: np.ndarray  # (P,) bool: set to NaN in the cube
    dt: np.ndarray | None  # (frames,) s, for the dark
    coeffs: np.ndarray | None  # (6, P) non-linearity
    dark: np.ndarray | None  # (P,) e/s
    flat: np.ndarray | None  # (P,)
    dq_plane: np.ndarray  # (x, y) uint16
    read_plane: np.ndarray  # (x, y) float32 electrons per read, NaN where unknown
    dark_plane: np.ndarray | None = None  # (x, y) float32 dark charge subtracted per bin (e); None: no dark step


def calibrate_instrument(obs: Observation, inst: Instrument, info: DatasetInfo, config: CalibrationConfig,
                         layout: InstrumentLayout, outputs: dict[str, ArrayDescriptor], index: int,
                         budget: int, checkpoint: Callable[[], None] = lambda: None,
                         masters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Calibrate one instrument of one observation into its output slice; return its provenance.

    ``checkpoint`` is called after every chunk and before the writes: it may raise
    to abandon the observation (a worker whose coordinator died, a revoked attempt).
    """
    t0 = time.perf_counter()
    arrays = prepare_arrays(obs, inst, info, config, layout, masters)
    cube, dq_time, n_cosmic, saturation = stream(obs, inst, info, config, layout, arrays, budget, checkpoint)
    products, counts = frame_stage(cube, dq_time, arrays.read_plane, inst, config, arrays.status, arrays.dark_plane)
    counts["cosmic_ray_samples"] = n_cosmic
    checkpoint()
    write_outputs(output_planes(products, dq_time, arrays, outputs, config.spatial_bin), outputs, index)
    log.debug("%s %s: calibrated in %.2f s", obs.label, inst.name, time.perf_counter() - t0)
    provenance = instrument_provenance(arrays, counts, info.root)
    if config.saturation_level:
        provenance["saturation"] = saturation
    return provenance


def prepare_arrays(obs: Observation, inst: Instrument, info: DatasetInfo, config: CalibrationConfig,
                   layout: InstrumentLayout, masters: dict[str, Any] | None = None) -> InstrumentArrays:
    """Calibration files (and masters), step status, quality plane and pixel selection as arrays."""
    cal = load_calibration(obs, inst, needed_calibration(config), config.missing_calibration)
    master = _masters(obs, inst, config, masters)
    if master is not None:
        frames, origin = master
        for name, frame in frames.items():
            if getattr(config, name):
                setattr(cal, name, frame)
                cal.sources[name] = origin
    status = step_status(config, inst.name, cal)
    sel = select_pixels(inst, layout)
    exposure = steps.exposure_time(steps.frame_dt(inst.name, info.n_frames(inst), info.airs_integration_time))
    dq = quality_plane(cal, status, config, sel, exposure).ravel()
    bad = (dq & DO_NOT_USE) != 0 if config.bad_pixels == "nan" else np.zeros(dq.shape, bool)
    n_x, n_y = layout.columns.shape[0], layout.rows
    read = _region(cal.read, sel)
    read_plane = np.full((n_x, n_y), np.nan, dtype=np.float32)
    if read is not None:
        read_plane[sel.x, sel.y] = np.where((dq & READ_NOISE_INVALID) != 0, np.nan, read.ravel())
    dq_plane = np.zeros((n_x, n_y), dtype=np.uint16)
    dq_plane[sel.x, sel.y] = dq
    dark_on = runs(status, "dark")
    dt = steps.frame_dt(inst.name, info.n_frames(inst), info.airs_integration_time) if dark_on else None
    dark = _flat_pixels(_region(cal.dark, sel)) if dark_on else None
    dark_plane = np.zeros((n_x, n_y), dtype=np.float32) if config.dark else None  # 0: no dark subtracted
    if dark_plane is not None and dark is not None and dt is not None:
        fpb = frames_per_bin(config, inst)
        dark_plane[sel.x, sel.y] = steps.dark_charge_per_bin(dark, dt[: layout.n_bins * fpb], fpb, config.cds)
    return InstrumentArrays(
        cal=cal, status=status, sel=sel, dq=dq, bad=bad, dt=dt,
        coeffs=_flat_pixels(_region(cal.linear_corr, sel)) if runs(status, "nonlinearity") else None,
        dark=dark,
        flat=_flat_pixels(_region(cal.flat, sel)) if runs(status, "flat") else None,
        dq_plane=dq_plane, read_plane=read_plane, dark_plane=dark_plane)


def outlier_options(config: CalibrationConfig) -> dict[str, Any]:
    """Arguments of the cosmic-ray rejection (:func:`arielstream.calibration.steps.reject_temporal_outliers`)."""
    return dict(sigmas=config.cr_sigmas, until_clean=config.cr_until_clean, clean_sigma=config.cr_clean_sigma,
                max_iters=config.cr_max_iters, replace=config.cr_replace)


def stream(obs: Observation, inst: Instrument, info: DatasetInfo, config: CalibrationConfig,
           layout: InstrumentLayout, arrays: InstrumentArrays, budget: int,
           checkpoint: Callable[[], None] = lambda: None) -> tuple[np.ndarray, np.ndarray, int, dict[str, int]]:
    """The signal file, chunk by chunk, through the kernels into the binned cube.

    Returns the ``(t, x, y)`` float32 cube (unusable pixels NaN when
    ``bad_pixels="nan"``), the ``(t, x, y)`` uint8 time-resolved quality plane (cosmic
    rays and saturated bins so far), the number of samples rejected as cosmic rays on
    usable pixels and the saturation counts (:func:`_flag_saturation`, which also sets
    ``SATURATED`` in ``arrays.dq`` and ``arrays.dq_plane``). ``checkpoint`` is called
    after every chunk.
    """
    status, sel, bad = arrays.status, arrays.sel, arrays.bad
    fpb = frames_per_bin(config, inst)
    n_used = layout.n_bins * fpb
    temporal = runs(status, "cosmic_rays")
    whole_series = temporal and config.cr_method == "series"  # "bin" needs whole bins only: it streams
    reader = SignalFile(obs.signal_path(inst), inst, info.n_frames(inst))
    plan = plan_chunks(len(sel.pixels), sel.per_row, reader.row_group_rows, n_used, fpb, budget,
                       whole_series=whole_series)
    log.debug("%s %s: %s", obs.label, inst.name, plan.describe())
    adc = info.adc[inst.name]
    outliers = outlier_options(config) if whole_series else None

    # the CDS variance of two reads, in electrons: the least spread a bin's samples can have
    floor = 2.0 * frame_steps.read_noise_or_typical(arrays.read_plane)[sel.x, sel.y].astype(np.float64) ** 2 \
        if temporal and not whole_series else None
    cube = np.full((layout.n_bins, layout.columns.shape[0], layout.rows), np.nan, dtype=np.float32)
    dq_time = np.zeros(cube.shape, dtype=np.uint8)
    n_cosmic = 0
    saturation = {"level": config.saturation_level, "reads": 0, "bins": 0, "pixels": 0}
    for chunk in prefetch(reader.iter_chunks(sel.pixels, plan, n_used, fpb)):
        p = chunk.pixels
        block_cal = BlockCalibration(
            gain=adc.gain if runs(status, "adc") else None,
            offset=adc.offset,
            coeffs=None if arrays.coeffs is None else arrays.coeffs[:, p],
            dark=None if arrays.dark is None else arrays.dark[p],
            flat=None if arrays.flat is None else arrays.flat[p],
            cds=config.cds,
            width=config.bin_width(inst.name),
            outliers=outliers,
            clip=None if floor is None else (config.cr_bin_sigma, floor[p]),
        )
        chunk_dt = None if arrays.dt is None else arrays.dt[chunk.frame_start:chunk.frame_stop]
        b0, b1 = chunk.frame_start // fpb, chunk.frame_stop // fpb
        if temporal:
            binned, counts = calibrate_block_with_outliers(chunk.data, chunk_dt, block_cal) if whole_series \
                else calibrate_block_clipped(chunk.data, chunk_dt, block_cal)
            n_cosmic += int(counts[~bad[p]].sum())
            hit_pixel, hit_bin = np.nonzero(counts)  # few: flag only those (a dense OR costs ~10x more)
            dq_time[b0 + hit_bin, sel.x[p][hit_pixel], sel.y[p][hit_pixel]] |= TIME_COSMIC_RAY
        else:
            binned = calibrate_block(chunk.data, chunk_dt, block_cal)
        saturated = saturation_counts(chunk.data, config.saturation_level, fpb)
        if saturated is not None:
            _flag_saturation(saturated, binned, dq_time[b0:b1], p, arrays, saturation, config.bad_pixels == "nan")
        binned[bad[p]] = np.nan
        cube[b0:b1, sel.x[p], sel.y[p]] = binned.T
        checkpoint()
    return cube, dq_time, n_cosmic, saturation


def _flag_saturation(saturated: np.ndarray, binned: np.ndarray, dq_time: np.ndarray, p: slice,
                     arrays: InstrumentArrays, totals: dict[str, int], to_nan: bool) -> None:
    """Mark the bins of a chunk that hold a saturated read, in place; add to ``totals``.

    ``saturated`` is the chunk's ``(P, bins)`` count of saturated reads
    (:func:`arielstream.calibration.kernels.saturation_counts`), ``binned`` its
    calibrated bins, ``dq_time`` the ``(bins, x, y)`` slice of the time-resolved plane
    for the chunk's bins, ``p`` the chunk's pixels. The bins become NaN when ``to_nan``;
    each bin gets ``TIME_SATURATED``, each pixel ``SATURATED`` in the static plane.
    """
    sel = arrays.sel
    hit = saturated > 0
    if to_nan:
        binned[hit] = np.nan
    dq_time[:, sel.x[p], sel.y[p]] |= np.where(hit.T, TIME_SATURATED, 0).astype(np.uint8)
    pixels = np.arange(len(sel.pixels))[p][hit.any(axis=1)]
    newly = (arrays.dq[pixels] & SATURATED) == 0
    arrays.dq[pixels] |= SATURATED
    arrays.dq_plane[sel.x[pixels], sel.y[pixels]] |= SATURATED
    totals["reads"] += int(saturated.sum())
    totals["bins"] += int(hit.sum())
    totals["pixels"] += int(newly.sum())


def frame_stage(cube: np.ndarray, dq_time: np.ndarray, read_plane: np.ndarray, inst: Instrument,
                config: CalibrationConfig, status: dict[str, str],
                dark_plane: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The steps over an observation's binned frames (modifies ``cube`` and ``dq_time`` in place).

    ``dark_plane``: the dark charge subtracted per bin ``(x, y)``, for the noise of the
    spatial outliers. Returns the products (``cube``, and ``background``, ``trace_row``
    or ``centroid`` when their steps run) and the counts of flagged and interpolated pixels.
    """
    products: dict[str, np.ndarray] = {}
    counts = {"spatial_outliers": 0, "interpolated": 0}
    if runs(status, "spatial_outliers"):
        variance = frame_steps.pixel_variance(cube, frame_steps.read_noise_or_typical(read_plane),
                                              frames_per_bin(config, inst), 0.0 if dark_plane is None else dark_plane)
        flagged = frame_steps.spatial_outliers(cube, variance, config.spatial_kernel, config.spatial_sigma)
        counts["spatial_outliers"] = int(flagged.sum())
        dq_time[flagged] |= TIME_SPATIAL_OUTLIER
        if config.bad_pixels == "nan":
            cube[flagged] = np.nan
    if runs(status, "interpolate_bad_pixels"):
        filled_cube, filled = frame_steps.interpolate_isolated(cube, ~np.isfinite(cube))
        cube[...] = filled_cube
        dq_time[filled] |= TIME_INTERPOLATED
        counts["interpolated"] = int(filled.sum())
    if runs(status, "background"):
        if inst.name == AIRS.name:
            level = frame_steps.airs_background(cube, config.airs_background_rows, config.background_sigma)
            cube -= level[:, :, None].astype(np.float32)
        else:
            level = frame_steps.fgs1_background(cube, config.fgs1_background_width, config.background_sigma)
            cube -= level[:, None, None].astype(np.float32)
        products["background"] = level.astype(np.float32)
    if runs(status, "tracking"):
        if inst.name == AIRS.name:
            products["trace_row"] = frame_steps.trace_rows(cube).astype(np.float32)
        else:
            products["centroid"] = frame_steps.centroids(cube).astype(np.float32)
    products["cube"] = cube
    return products, counts


def output_planes(products: dict[str, np.ndarray], dq_time: np.ndarray, arrays: InstrumentArrays,
                  outputs: dict[str, ArrayDescriptor], factor: int) -> dict[str, np.ndarray]:
    """Every dataset of ``outputs`` for this observation, spatially binned by ``factor``."""
    planes = {SIGNAL: frame_steps.spatial_bin(products["cube"], factor),
              DQ: frame_steps.bin_planes(arrays.dq_plane, factor, "or"),
              READ_NOISE: frame_steps.bin_planes(arrays.read_plane, factor, "rms")}
    if DQ_TIME in outputs:
        planes[DQ_TIME] = frame_steps.bin_planes(dq_time, factor, "or")
    if DARK_CHARGE in outputs and arrays.dark_plane is not None:
        planes[DARK_CHARGE] = frame_steps.bin_planes(arrays.dark_plane, factor, "sum")
    if BACKGROUND in outputs:
        planes[BACKGROUND] = frame_steps.bin_background(products["background"], factor)
    for key in (TRACE_ROW, CENTROID):
        if key in outputs:
            planes[key] = frame_steps.bin_positions(products[key], factor)
    return planes


def write_outputs(planes: dict[str, np.ndarray], outputs: dict[str, ArrayDescriptor], index: int) -> None:
    """Write each plane into observation ``index``'s slice of its dataset, through a memmap."""
    for key, value in planes.items():
        write_slice(outputs[key], index, value)


_COUNT_STEP = {"cosmic_ray_samples": "cosmic_rays", "spatial_outliers": "spatial_outliers",
               "interpolated": "interpolate_bad_pixels"}


def instrument_provenance(arrays: InstrumentArrays, counts: dict[str, int], root: DataPath) -> dict[str, Any]:
    """The steps' status, the calibration files used (relative to ``root``) and the counts of the steps that ran."""
    sources = {k: (v if v == "missing" or v.startswith("master") else _relative(v, root))
               for k, v in arrays.cal.sources.items()}
    return {
        "steps": arrays.status,
        "calibration": sources,
        "bad_pixels": int(((arrays.dq & DO_NOT_USE) != 0).sum()),
        "hot_pixels": int(((arrays.dq & HOT) != 0).sum()),  # usable ones included: flagged, values kept
        **{k: v for k, v in counts.items() if runs(arrays.status, _COUNT_STEP[k])},
    }


def _relative(path: str, root: DataPath) -> str:
    return relative_name(path, root)  # a file under a URL too: provenance names it as a local run would


def calibrate_observation(obs: Observation, index: int, info: DatasetInfo, config: CalibrationConfig,
                          layouts: dict[str, InstrumentLayout], descriptors: dict[str, ArrayDescriptor],
                          budget: int, checkpoint: Callable[[], None] = lambda: None,
                          masters: dict[str, Any] | None = None, manifest: str | None = None) -> dict[str, Any]:
    """Every configured instrument of ``obs``; raises on bad input (the caller records it).

    Returns the observation's provenance: ``engine``, the compute engine of this
    process (:mod:`arielstream.calibration.engine`), and per instrument what
    :func:`calibrate_instrument` returns. With an input ``manifest``, every file the
    observation reads is first checked against it (:mod:`arielstream.io.manifest`).
    """
    if manifest is not None:
        check_observation_inputs(manifest, obs, info.root, config.instruments, config.master_calibration == "planet")
    provenance: dict[str, Any] = {"engine": str(engine.current())}
    for name in config.instruments:
        inst = INSTRUMENTS[name]
        prefix = f"{name}/"
        outputs = {key[len(prefix):]: d for key, d in descriptors.items() if key.startswith(prefix)}
        provenance[name] = calibrate_instrument(obs, inst, info, config, layouts[name], outputs, index, budget,
                                                checkpoint, masters)
    return provenance
