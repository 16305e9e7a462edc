"""The dataset-level files of an ADC2025 folder: ADC constants and axes.

``adc_info.csv`` and ``axis_info.parquet`` are shared by every planet; they are
read once by the coordinating process and handed to the workers as arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..errors import InputError
from ..layout import AIRS, AIRS_INTEGRATION_TIME, AIRS_WAVELENGTH_AXIS, FGS1, Instrument
from .signal import columns_into, open_parquet
from .storage import DataPath, RemotePath, data_path, open_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdcConstants:
    """An instrument's ADC conversion: electrons = raw / gain + offset."""

    gain: float
    offset: float


@dataclass(frozen=True)
class DatasetInfo:
    """What every observation of a data folder shares."""

    root: DataPath  # a local folder, or a RemotePath under a URL (io/storage.py)
    adc: dict[str, AdcConstants]
    frame_times: dict[str, np.ndarray]  # hours, one per raw frame
    airs_wavelength: np.ndarray  # µm per AIRS detector column
    airs_integration_time: np.ndarray  # s per AIRS frame

    def n_frames(self, inst: Instrument) -> int:
        """Raw frames of ``inst`` in every signal file of the folder."""
        return int(self.frame_times[inst.name].shape[0])


def read_adc_info(path: DataPath) -> dict[str, AdcConstants]:
    """Gain and offset of each instrument from ``adc_info.csv`` (its first row), checked usable."""
    try:
        table = pacsv.read_csv(open_input(path, stream=True))
    except FileNotFoundError:
        raise InputError(path, "missing: the ADC gain/offset file is needed for the ADC step") from None
    except pa.ArrowInvalid as exc:
        raise InputError(path, f"not a readable CSV: {exc}") from None
    out = {}
    for inst in (AIRS, FGS1):
        names = (f"{inst.name}_adc_gain", f"{inst.name}_adc_offset")
        missing = [n for n in names if n not in table.column_names]
        if missing:
            raise InputError(path, f"column(s) {', '.join(missing)} missing")
        if table.num_rows < 1:
            raise InputError(path, "no rows")
        gain = float(table[names[0]][0].as_py())
        offset = float(table[names[1]][0].as_py())
        if not np.isfinite(gain) or gain == 0 or not np.isfinite(offset):
            raise InputError(path, f"{inst.name} gain {gain} / offset {offset} are not usable")
        out[inst.name] = AdcConstants(gain, offset)
    return out


def _axis(table: pa.Table, name: str, path: DataPath) -> np.ndarray:
    if name not in table.column_names:
        raise InputError(path, f"column {name!r} missing")
    try:
        column = table[name].cast(pa.float64())  # (nulls become NaN below, like the padding)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(path, f"column {name!r} is not a number column: {exc}") from None
    values = columns_into([column], np.empty((1, len(column))))[0]
    values = values[~np.isnan(values)]  # NaN pads the shorter axes
    infinite = int(np.count_nonzero(np.isinf(values)))
    if infinite:
        raise InputError(path, f"column {name!r} has {infinite} infinite value(s): the axis must be finite")
    return values


def read_axis_info(path: DataPath) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Frame times per instrument (hours), AIRS wavelength per column and AIRS integration time per frame.

    Each axis is a column of ``axis_info.parquet`` padded with NaN to the longest one.
    """
    try:
        # ParquetFile, not pq.read_table: read_table goes through pyarrow.dataset, which imports
        # pandas (+56 MB RSS in every worker that reads the axes)
        table = open_parquet(path).read()
    except FileNotFoundError:
        raise InputError(path, "missing: the frame-time axes are needed to validate and bin the signal") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file: {exc}") from None
    times = {inst.name: _axis(table, inst.time_axis, path) for inst in (AIRS, FGS1)}
    wavelength = _axis(table, AIRS_WAVELENGTH_AXIS, path)
    integration = _axis(table, AIRS_INTEGRATION_TIME, path)
    if wavelength.shape[0] != AIRS.columns:
        raise InputError(path, f"{AIRS_WAVELENGTH_AXIS} has {wavelength.shape[0]} values, expected {AIRS.columns}")
    if integration.shape[0] != times[AIRS.name].shape[0]:
        raise InputError(path, f"{AIRS_INTEGRATION_TIME} has {integration.shape[0]} values but "
                         f"{AIRS.time_axis} has {times[AIRS.name].shape[0]}")
    return times, wavelength, integration


def read_dataset_info(root: str | Path | RemotePath) -> DatasetInfo:
    """Read and check ``adc_info.csv`` and ``axis_info.parquet`` of a data folder (a local path or a URL)."""
    root = data_path(root)
    if not root.is_dir():
        raise InputError(root, "no such data folder")
    adc = read_adc_info(root / "adc_info.csv")
    times, wavelength, integration = read_axis_info(root / "axis_info.parquet")
    log.debug("dataset %s: %d AIRS frames, %d FGS1 frames", root, times[AIRS.name].size, times[FGS1.name].size)
    return DatasetInfo(root, adc, times, wavelength, integration)


def target_labels(columns: np.ndarray) -> list[str]:
    """``wl_k`` labels of AIRS detector columns (column 320 is ``wl_2``, 39 is ``wl_283``)."""
    return [f"wl_{322 - int(c)}" if 39 <= c <= 320 else "" for c in columns]
