"""The recipe: the order of the steps and what each needs, declared once.

It reads like the organisers' notebook: ADC → hot/dead mask → non-linearity →
dark → CDS → time binning → flat → wavelength cut. The pipeline runs these steps
(fused for speed in :mod:`arielstream.calibration.kernels`); this table is what the
provenance records, per observation and instrument, as "ran", "off" or
"skipped" with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..layout import AIRS
from .options import CalibrationConfig

if TYPE_CHECKING:  # only for an annotation: the config does not depend on the readers (pyarrow)
    from ..io.calibration import DetectorCalibration


@dataclass(frozen=True)
class Step:
    """One step of the recipe: its name (and config switch), the calibration files it reads, what it does."""

    name: str  # also the config switch
    needs: tuple[str, ...]  # calibration files it reads
    what: str


RECIPE: tuple[Step, ...] = (
    Step("adc", (), "x = raw / gain + offset (gain, offset from adc_info.csv)"),
    Step("mask", ("dark", "dead"), "hot (dark charge against read noise; the notebook: sigma-clipped dark) and dead "
         "pixels into the data-quality plane"),
    Step("nonlinearity", ("linear_corr",), "x = c0 + c1 x + ... + c5 x^5 per pixel (Horner)"),
    Step("dark", ("dark",), "x -= dark * dt per frame (AIRS: integration time, +0.1 s on end reads; "
                            "FGS1: 0.1 s / 0.2 s)"),
    Step("cds", (), "end-of-exposure read minus start read"),
    Step("cosmic_rays", (), "temporal outliers of each pixel's CDS series: a bin's largest sample off the "
                            "bin's others (bin), or off the bin median by the series' robust sigma (series)"),
    Step("time_binning", (), "sum of consecutive samples (airs_bin, fgs1_bin)"),
    Step("flat", ("flat",), "x /= flat"),
    Step("wavelength_cut", (), "AIRS-CH0 columns cut_start:cut_stop"),
    Step("spatial_outliers", (), "AIRS: pixels of a binned frame off a median filter along wavelength"),
    Step("interpolate_bad_pixels", (), "isolated bad pixels from their two spatial neighbours"),
    Step("background", (), "AIRS: clipped mean of rows off the trace per bin, pooled over 15 columns; FGS1: of the "
         "edge"),
    Step("tracking", (), "FGS1 centroid and AIRS trace row per bin"),
    Step("spatial_bin", (), "sum spatial_bin x spatial_bin pixels"),
)


def _enabled(config: CalibrationConfig, step: str) -> bool:
    value = getattr(config, step)
    return value > 1 if step == "spatial_bin" else bool(value)


def describe_recipe() -> list[dict[str, str]]:
    """The recipe as a table: one ``{"step", "needs", "what"}`` row per step, in order."""
    return [{"step": s.name, "needs": ",".join(s.needs), "what": s.what} for s in RECIPE]


def needed_calibration(config: CalibrationConfig) -> dict[str, bool]:
    """Calibration files to read: those of the enabled steps (required), and the read noise (optional).

    The read noise is no step of the recipe: it is carried into the output so that
    light curves can be given uncertainties.
    """
    needed: dict[str, bool] = {"read": False}
    for step in RECIPE:
        if _enabled(config, step.name):
            for name in step.needs:
                needed[name] = True
    return needed


def step_status(config: CalibrationConfig, instrument: str, cal: DetectorCalibration) -> dict[str, str]:
    """``step -> "ran" | "off" | "skipped: <why>" | "n/a"`` for one instrument of one visit."""
    out: dict[str, str] = {}
    for step in RECIPE:
        if step.name in ("wavelength_cut", "spatial_outliers") and instrument != AIRS.name:
            out[step.name] = "n/a"
        elif not _enabled(config, step.name):
            out[step.name] = "off"
        else:
            absent = [n for n in step.needs if cal.sources.get(n) == "missing"]
            out[step.name] = f"skipped: {', '.join(absent)} missing" if absent else "ran"
    return out


def runs(status: dict[str, str], step: str) -> bool:
    """True when ``step`` ran according to a :func:`step_status` table."""
    return status.get(step) == "ran"
