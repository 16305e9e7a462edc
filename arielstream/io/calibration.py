"""Adapter: a visit's calibration folder → arrays. The maths never sees these files.

``<INST>_calibration_<v>/{dark,dead,flat,read,linear_corr}.parquet`` are small
tables of ``rows`` rows × ``columns`` columns (``linear_corr``: 6 × rows rows),
one column per detector column, addressed by position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..layout import NONLINEARITY_ORDER, Instrument, Observation
from .signal import columns_into, damaged, open_parquet
from .storage import DataPath

log = logging.getLogger(__name__)


@dataclass
class DetectorCalibration:
    """Calibration frames of one instrument for one visit, shaped ``(rows, columns)``."""

    instrument: Instrument
    dark: np.ndarray | None = None
    dead: np.ndarray | None = None
    flat: np.ndarray | None = None
    read: np.ndarray | None = None
    linear_corr: np.ndarray | None = None  # (6, rows, columns)
    sources: dict[str, str] = field(default_factory=dict)  # name -> file, or why it is absent


def read_frame_table(path: DataPath, rows: int, columns: int, kind: str) -> np.ndarray:
    """Read a calibration table into a ``(rows, columns)`` array, checking its shape and type.

    ``kind`` is ``"float"`` or ``"bool"``.
    """
    try:
        # ParquetFile.read, not read_table (the datasets layer): 8 against 13 ms a file of 356 columns
        table = open_parquet(path).read()
    except FileNotFoundError:
        raise InputError(path, "calibration file missing") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file{damaged(exc)}: {exc}") from None
    if table.num_columns != columns or table.num_rows != rows:
        raise InputError(path, f"shape {table.num_rows} x {table.num_columns}, expected {rows} x {columns}")
    out = np.empty((rows, columns), dtype=bool if kind == "bool" else np.float64)
    values, arrow_type = table.columns, pa.from_numpy_dtype(out.dtype)
    for j, column in enumerate(values):
        t = column.type
        if kind == "bool" and not (pa.types.is_boolean(t) or pa.types.is_integer(t)):
            raise InputError(path, f"column {j} has type {t}, expected bool")
        if kind == "float" and not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise InputError(path, f"column {j} has type {t}, expected a number")
        if column.null_count:
            raise InputError(path, f"column {j} has {column.null_count} null value(s)")
        try:
            if t != arrow_type:
                values[j] = column.cast(arrow_type)
        except pa.ArrowInvalid as exc:
            raise InputError(path, f"column {j} does not convert to {out.dtype}: {exc}") from None
    columns_into(values, out.T)
    return out


def load_calibration(
    obs: Observation, inst: Instrument, needed: dict[str, bool], missing: str = "error"
) -> DetectorCalibration:
    """Load the calibration frames named in ``needed`` (``name -> required by a step``).

    A file that a step requires and that is absent raises :class:`InputError`
    when ``missing == "error"``; with ``"skip"`` it is logged as a warning and
    recorded in ``sources`` so that the step is skipped and the skip is visible in
    the provenance. Optional files (``needed[name] is False``) are read when present.
    """
    cal = DetectorCalibration(inst)
    for name, required in needed.items():
        path = obs.calibration_path(inst, name)
        if not path.exists():
            if required and missing == "error":
                raise InputError(path, "calibration file missing")
            if required:
                log.warning("%s: missing; the step that needs it is skipped for %s %s", path, obs.label, inst.name)
            cal.sources[name] = "missing"
            continue
        if name == "linear_corr":
            table = read_frame_table(path, NONLINEARITY_ORDER * inst.rows, inst.columns, "float")
            value = table.reshape(NONLINEARITY_ORDER, inst.rows, inst.columns)
        else:
            value = read_frame_table(path, inst.rows, inst.columns, "bool" if name == "dead" else "float")
        setattr(cal, name, value)
        cal.sources[name] = str(path)
    return cal


COMBINED = ("dark", "flat")  # the frames a master replaces


def read_master_stacks(observations: list[Observation], inst: Instrument) -> dict[str, np.ndarray]:
    """The dark and flat frames of every calibration folder of ``observations``, stacked ``(n, rows, cols)``."""
    frames: dict[str, list[np.ndarray]] = {name: [] for name in COMBINED}
    for obs in observations:
        for name in COMBINED:
            path = obs.calibration_path(inst, name)
            if path.exists():
                frames[name].append(read_frame_table(path, inst.rows, inst.columns, "float"))
    missing = [name for name, found in frames.items() if not found]
    if missing:
        raise InputError(observations[0].folder, f"no {', '.join(missing)} frame to build a master from")
    return {name: np.stack(found) for name, found in frames.items()}
