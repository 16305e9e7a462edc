"""The ADC2025 data layout: instrument geometry, file names and folder discovery.

Everything that knows how a competition folder is named, and the instruments'
geometry (names, frame shapes, default bins, the notebook's AIRS cut), lives here,
so that the reader, the simulator, the pipeline and the readers of the output agree
on one description. Nothing in this module reads pixel data.

A data folder holds ``adc_info.csv`` (gain and offset per instrument),
``axis_info.parquet`` (frame times, AIRS wavelengths and integration times, NaN
padded) and ``<split>/<planet_id>/`` with, per visit ``v`` and instrument,
``<INST>_signal_<v>.parquet`` (one row per frame, one uint16 column per pixel,
row-major ``rows x columns``) and ``<INST>_calibration_<v>/`` holding
``dark``, ``dead``, ``flat``, ``read`` and ``linear_corr`` ``.parquet``.
Frames alternate start and end of exposure: a CDS sample is the difference of
two consecutive frames.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import InputError

CALIBRATION_NAMES = ("dark", "dead", "flat", "read", "linear_corr")
NONLINEARITY_ORDER = 6  # coefficients c0..c5, lowest order first
FRAMES_PER_CDS = 2  # a CDS sample is the end-of-exposure frame minus the start-of-exposure frame


@dataclass(frozen=True)
class Instrument:
    """Geometry and conventions of one detector."""

    name: str
    rows: int  # spatial rows of a frame
    columns: int  # columns of a frame (wavelength for AIRS)
    default_bin: int  # CDS frames summed into one time bin
    full_frames: int  # raw frames in a full-size visit
    time_axis: str  # column of axis_info.parquet with the frame times (hours)

    @property
    def pixels(self) -> int:
        """Pixels of a frame (the columns of its signal file)."""
        return self.rows * self.columns

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of a frame."""
        return (self.rows, self.columns)

    def signal_name(self, visit: int) -> str:
        """File name of the signal of ``visit``: ``<INST>_signal_<visit>.parquet``."""
        return f"{self.name}_signal_{visit}.parquet"

    def calibration_dir(self, visit: int) -> str:
        """Folder name of the calibration files of ``visit``: ``<INST>_calibration_<visit>``."""
        return f"{self.name}_calibration_{visit}"


AIRS = Instrument("AIRS-CH0", 32, 356, 30, 11250, "AIRS-CH0-axis0-h")
FGS1 = Instrument("FGS1", 32, 32, 360, 135000, "FGS1-axis0-h")
INSTRUMENTS = {AIRS.name: AIRS, FGS1.name: FGS1}

# The competition's spectrum columns: wl_1 (FGS1), wl_2 ... wl_283 (AIRS, ascending wavelength), and in a
# submission the 1-sigma uncertainty of each as sigma_1 ... sigma_283.
TARGET_PREFIX, SIGMA_PREFIX = "wl_", "sigma_"

# axis_info.parquet columns (NaN padded to the longest one)
AIRS_WAVELENGTH_AXIS = "AIRS-CH0-axis2-um"
AIRS_INTEGRATION_TIME = "AIRS-CH0-integration_time"

# The notebook keeps AIRS columns 39:321; they map onto targets wl_283 .. wl_2.
AIRS_CUT = (39, 321)
FGS1_WAVELENGTH_UM = 0.7  # wl_1 of wavelengths.csv

# Parquet codecs the signal and calibration files may be written with (``arielstream simulate --compression``;
# here, not in the simulator, so that the command's parser does not load it)
COMPRESSIONS = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")
# ... and how they are laid out (``--parquet-layout``; what each means: arielstream.simulate.layouts)
PARQUET_LAYOUTS = ("pyarrow", "polars", "zstd-dictionary")
DEFAULT_LAYOUT = "pyarrow"

_SIGNAL_RE = re.compile(rf"^(?P<inst>{'|'.join(map(re.escape, INSTRUMENTS))})_signal_(?P<visit>\d+)\.parquet$")


class Binning(Protocol):
    """What :func:`frames_per_bin` reads of a config (:class:`arielstream.config.options.CalibrationConfig`).

    The data layout does not depend on the config: the config's module imports this one.
    """

    @property
    def cds(self) -> bool:
        """Whether a sample is the difference of two frames (CDS) or one frame."""

    def bin_width(self, instrument: str) -> int:
        """Samples summed into one time bin of ``instrument``."""


def frames_per_bin(config: Binning, instrument: str | Instrument) -> int:
    """Raw frames (reads) summed into one output time bin of ``instrument`` under ``config``.

    ``config.bin_width`` samples per bin (1 without time binning), each sample
    :data:`FRAMES_PER_CDS` frames with CDS and one frame without. The same number is
    the reads per bin of the noise model: each frame is one read.
    """
    name = instrument if isinstance(instrument, str) else instrument.name
    return config.bin_width(name) * (FRAMES_PER_CDS if config.cds else 1)


class Folder(Protocol):
    """A data folder or a folder in it: a :class:`pathlib.Path`, or a folder under a URL.

    The geometry imports no I/O: this names what it uses of ``arielstream.io.storage.RemotePath``
    (a folder in an object store), which also offers ``subfolders(keep)``, every planet folder's
    entries from one listing (:func:`discover_observations` uses it where it is there).
    """

    @property
    def name(self) -> str:
        """The last component."""

    def __truediv__(self, name: str) -> Any:
        """The file or folder ``name`` in it, of its own kind."""

    def is_dir(self) -> bool:
        """True for an existing folder."""

    def iterdir(self) -> Iterable[Any]:
        """What is directly in it."""

    def glob(self, pattern: str) -> Iterable[Any]:
        """What is directly in it and matches ``pattern`` (no ``/``)."""


@dataclass(frozen=True)
class Observation:
    """One visit of one planet: the unit of work and of output."""

    planet_id: int
    visit: int
    folder: Folder  # <root>/<split>/<planet_id>: a Path, or a RemotePath under a URL (io/storage.py)

    def signal_path(self, inst: Instrument) -> Any:
        """The signal file of ``inst`` for this visit (a path of the folder's kind)."""
        return self.folder / inst.signal_name(self.visit)

    def calibration_path(self, inst: Instrument, name: str) -> Any:
        """The calibration file ``name`` (one of :data:`CALIBRATION_NAMES`) of ``inst`` for this visit."""
        return self.folder / inst.calibration_dir(self.visit) / f"{name}.parquet"

    @property
    def label(self) -> str:
        """``"<planet_id>/visit <visit>"``, how logs and errors name the observation."""
        return f"{self.planet_id}/visit {self.visit}"


def discover_observations(root: str | os.PathLike[str] | Folder, split: str,
                          planets: Iterable[int] | None = None) -> list[Observation]:
    """List every (planet, visit) under ``root/split``, sorted by planet then visit.

    A visit is any index for which either instrument has a signal file or a
    calibration folder; what is missing for it is reported when it is processed,
    so one incomplete planet never hides the others. ``root`` is a local folder, or
    a folder under a URL as ``arielstream.io.storage.data_path`` makes it (listed in one go).
    """
    if isinstance(root, str) and "://" in root:
        raise ValueError(f"discover_observations: give a URL as arielstream.io.storage.data_path({root!r})")
    split_dir = (Path(root) if isinstance(root, (str, os.PathLike)) else root) / split
    if not split_dir.is_dir():
        raise InputError(split_dir, f"no such folder (expected <data>/{split}/<planet_id>/...)")
    wanted = None if planets is None else {int(p) for p in planets}
    found: list[Observation] = []

    def keep(name: str) -> bool:
        return name.isdigit() and (wanted is None or int(name) in wanted)

    listed = getattr(split_dir, "subfolders", None)  # a folder under a URL: every planet's entries in one listing
    for name, entries in (listed(keep) if listed is not None else _subfolders(split_dir, keep)).items():
        pid = int(name)
        visits: set[int] = set()
        for entry, is_dir in entries.items():
            m = _SIGNAL_RE.match(entry)
            if m:
                visits.add(int(m.group("visit")))
                continue
            for inst in INSTRUMENTS.values():
                prefix = f"{inst.name}_calibration_"
                if is_dir and entry.startswith(prefix) and entry[len(prefix):].isdigit():
                    visits.add(int(entry[len(prefix):]))
        found.extend(Observation(pid, v, split_dir / name) for v in visits)
    if wanted is not None:
        missing = wanted - {o.planet_id for o in found}
        if missing:
            raise InputError(split_dir, f"no data for planet(s) {', '.join(str(p) for p in sorted(missing))}")
    return sorted(found, key=lambda o: (o.planet_id, o.visit))


def _subfolders(folder: Path, keep: Callable[[str], bool]) -> dict[str, dict[str, bool]]:
    """The folders in ``folder`` whose names ``keep`` accepts, each with its entries (``name -> is a folder``)."""
    return {sub.name: {entry.name: entry.is_dir() for entry in sub.iterdir()}
            for sub in folder.iterdir() if keep(sub.name) and sub.is_dir()}
