"""``arielstream init-config``: a commented TOML file with every option and its default.

The names and defaults come from the dataclasses (:class:`~arielstream.config.CalibrationConfig`,
:class:`~arielstream.config.RunOptions`); only the one-line comments live here, in
:data:`COMMENTS`, and rendering fails if an option has none, so a new option
cannot reach the template undocumented. The rendered file parses back to the
defaults (``load_config`` / ``load_run_options``), which the tests check.

Two kinds of option are written commented out:

* options whose default is ``None`` (``jobs``, ``planets``, ``scheduler``,
  ``task_timeout``, ``progress``): TOML has no null, so the line shows an example
  and the comment says what leaving it out means;
* options whose default depends on the profile (e.g. ``nonlinearity``,
  ``bad_pixels``, ``wavelength_order``, ``cosmic_rays``): an explicit value would
  override the profile, so that switching ``profile = "notebook"`` would silently
  keep the default profile's value. Uncomment them to override the profile on
  purpose; each comment lists the value of every profile.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from typing import Any

from .config import PROFILES, CalibrationConfig, RunOptions, build_config

COMMENTS: dict[str, dict[str, str]] = {
    "calibration": {
        "profile": "default: the recipe, NaN bad pixels | notebook: the organisers' numbers | full: default + extras",
        "adc": "step adc: raw counts to electrons (gain and offset of adc_info.csv)",
        "mask": "step mask: flag dead and hot pixels in the data-quality plane (and NaN them)",
        "hot_sigma": "hot-pixel threshold: sigma-clipped dark outliers beyond this many sigma",
        "hot_maxiters": "iterations of the sigma clipping of the dark",
        "nonlinearity": "step nonlinearity: the per-pixel correction of linear_corr.parquet",
        "dark": "step dark: subtract dark current times the integration time",
        "cds": "step cds: correlated double sampling (end read minus start read)",
        "time_binning": "step time_binning: sum CDS frames into time bins",
        "airs_bin": "CDS frames per AIRS-CH0 time bin",
        "fgs1_bin": "CDS frames per FGS1 time bin",
        "flat": "step flat: divide by the flat field",
        "wavelength_cut": "step wavelength_cut: keep AIRS detector columns cut_start:cut_stop",
        "cut_start": "first AIRS detector column kept (the notebook's 39)",
        "cut_stop": "AIRS detector column after the last one kept (the notebook's 321)",
        "cosmic_rays": "flag and replace temporal outliers (cosmic rays) in each pixel's CDS series",
        "cr_sigmas": "cosmic rays: clip levels (sigma) of the fixed first iterations, one per iteration",
        "cr_until_clean": "cosmic rays: then iterate at cr_clean_sigma until nothing new is flagged",
        "cr_clean_sigma": "cosmic rays: clip level (sigma) of the iterations until clean",
        "cr_max_iters": "cosmic rays: most iterations until clean",
        "cr_replace": "cosmic rays: median (the median of the sample's bin) or mask (left out, bin rescaled)",
        "spatial_outliers": "AIRS: flag residuals from a median filter along the wavelength axis",
        "spatial_kernel": "spatial outliers: median-filter length in pixels (odd)",
        "spatial_sigma": "spatial outliers: threshold in sigma",
        "interpolate_bad_pixels": "fill isolated NaN pixels from their spatial neighbours",
        "master_calibration": "off | planet: dark and flat combined over the planet's visits | dataset: over the run",
        "background": "subtract the sky background (AIRS rows airs_background_rows, FGS1 frame edges)",
        "airs_background_rows": "AIRS rows that measure the background",
        "fgs1_background_width": "FGS1: background pixels are this close to the frame's edge",
        "background_sigma": "background: sigma clipping of the background pixels",
        "tracking": "record the FGS1 centroid and the AIRS trace row of each time bin",
        "spatial_bin": "sum spatial_bin x spatial_bin output pixels (1: no binning)",
        "wavelength_order": "AIRS x axis: target (ascending, wl_2..wl_283) or detector (columns 39..320)",
        "bad_pixels": "nan: bad pixels are NaN in the cube | keep: keep their computed values (DQ still flags them)",
        "missing_calibration": "a missing calibration file fails the observation (error) or skips its step (skip)",
        "instruments": "which instruments to calibrate",
    },
    "run": {
        "split": "sub-folder of planets: train or test",
        "planets": "only these planet ids; leave out for every planet of the split",
        "memory": "RAM budget of the whole run on this machine (of one task with dask)",
        "jobs": "parallel workers; leave out (or \"auto\") to derive them from memory and cores",
        "backend": "loky (this machine) or dask (a dask.distributed cluster)",
        "scheduler": "dask.distributed scheduler address; needed with backend = \"dask\" only",
        "task_timeout": "seconds; a task running longer counts as a dead worker; leave out for no limit",
        "force": "recompute everything even if an output made with another config or version exists",
        "progress": "true: a progress bar, false: log lines; leave out for a bar on a terminal only",
        "log_file": "write OUT.h5.log beside the output",
    },
}

# Examples shown for options whose default (None) has no TOML form.
EXAMPLES: dict[str, Any] = {
    "planets": [1010375142, 1024292144],
    "jobs": "auto",
    "scheduler": "tcp://10.0.0.5:8786",
    "task_timeout": 900,
    "progress": True,
}


def toml_value(value: Any) -> str:
    """A Python default as a TOML value (bool, int, float, str, list/tuple of those; numpy scalars too)."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, str)):  # numpy scalar -> Python
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the characters options use
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise TypeError(f"option {f.name} has no default")


def profile_dependent() -> dict[str, dict[str, Any]]:
    """Options whose default differs between profiles: name -> {profile: default}."""
    defaults = {p: build_config(profile=p).to_dict() for p in PROFILES}
    first = defaults[PROFILES[0]]
    return {name: {p: d[name] for p, d in defaults.items()} for name in first
            if name != "profile" and any(d[name] != first[name] for d in defaults.values())}


def _line(name: str, value: str, comment: str, commented: bool, width: int) -> str:
    text = f"{'# ' if commented else ''}{name} = {value}"
    return f"{text:<{width}}  # {comment}"


def render_config_template() -> str:
    """The commented TOML template (``arielstream init-config``)."""
    varying = profile_dependent()
    sections = (("calibration", CalibrationConfig,
                 "the science: names of arielstream.CalibrationConfig (--profile, --skip, ... override them)"),
                ("run", RunOptions, "the execution: names of arielstream.config.RunOptions (not part of the science)"))
    missing = [f"[{table}] {f.name}" for table, cls, _ in sections for f in fields(cls)
               if f.name not in COMMENTS[table]]
    if missing:
        raise KeyError(f"config template: no comment for {', '.join(missing)} (add it to COMMENTS)")
    out = [
        "# arielstream configuration: every option with its default.",
        "# Use it with: arielstream calibrate DATA_DIR -o OUT.h5 --config THIS.toml",
        "# The command line overrides this file; lines left commented out keep their default.",
        "",
    ]
    width = 44
    for table, cls, title in sections:
        out += [f"[{table}]  # {title}"]
        if table == "calibration":
            out += ["# The profile sets the defaults of the options marked 'profile'; writing one of them",
                    "# here overrides the profile, so they are commented out."]
        for f in fields(cls):
            comment = COMMENTS[table][f.name]
            default = _default(f)
            if table == "calibration" and f.name in varying:
                per = ", ".join(f"{p}: {toml_value(v)}" for p, v in varying[f.name].items())
                out.append(_line(f.name, toml_value(default), f"{comment} (profile {per})", True, width))
            elif default is None:
                out.append(_line(f.name, toml_value(EXAMPLES[f.name]), f"{comment} (default: unset)", True, width))
            else:
                out.append(_line(f.name, toml_value(default), comment, False, width))
        out.append("")
    return "\n".join(out)


def render_config(config: CalibrationConfig, run: RunOptions | None = None) -> str:
    """A TOML file holding ``config`` (and ``run``) in full: ``--config`` on it gives the same options back.

    Written as ``runs/NAME/config.toml`` by a named run. Every calibration option is
    written out (the profile's too), so the file does not depend on the profile
    defaults of a later version; run options whose value is ``None``, and ``force``, are left out.
    """
    out = [
        "# arielstream configuration of a run, every option as it was used.",
        "# Reproduce it with: arielstream calibrate DATA_DIR --config THIS.toml (-o OUT.h5 or --run NEW_NAME)",
        "",
        "[calibration]",
    ]
    width = 44
    for name, value in config.to_dict().items():
        out.append(_line(name, toml_value(value), COMMENTS["calibration"][name], False, width))
    if run is not None:
        out += ["", "[run]"]
        for f in fields(RunOptions):
            value = getattr(run, f.name)
            if value is None or f.name == "force":  # force is an action of one call, not a setting
                continue
            out.append(_line(f.name, toml_value(value), COMMENTS["run"][f.name], False, width))
    return "\n".join(out) + "\n"

