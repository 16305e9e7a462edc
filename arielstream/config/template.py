"""``arielstream init-config``: a commented TOML file with every option and its default.

The names and defaults come from the dataclasses (:class:`~arielstream.config.options.CalibrationConfig`,
:class:`~arielstream.config.options.RunOptions`) and the one-line comments from
:data:`~arielstream.config.descriptions.DESCRIPTIONS`, the table the command line's
``--help`` reads too (:func:`option_help`); rendering fails if an option has no
description, so a new option cannot reach the template undocumented. The rendered
file parses back to the defaults (``load_config`` / ``load_run_options``), which the
tests check.

Two kinds of option are written commented out:

* options whose default is ``None`` (``jobs``, ``planets``, ``scheduler``,
  ``task_timeout``, ``progress``): TOML has no null, so the line shows an example
  and the comment says what leaving it out means;
* options whose default depends on the profile (e.g. ``nonlinearity``,
  ``bad_pixels``, ``wavelength_order``, ``cosmic_rays``): an explicit value would
  override the profile, so that switching ``profile = "notebook"`` would silently
  keep the default profile's value. Uncomment them to override the profile on
  purpose; each comment lists the value of every profile.

Options of one invocation (:data:`~arielstream.config.options.PER_CALL_OPTIONS`:
``force``) are not written at all, only a note naming the flag: a config file is read
by every run (a nightly job's too), and ``force = true`` there is refused.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from typing import Any

from .descriptions import DESCRIPTIONS
from .options import PER_CALL_OPTIONS, PROFILES, CalibrationConfig, RunOptions, build_config

# Examples shown for options whose default (None) has no TOML form.
EXAMPLES: dict[str, Any] = {
    "planets": [1010375142, 1024292144],
    "jobs": "auto",
    "scheduler": "tcp://10.0.0.5:8786",
    "task_timeout": 900,
    "progress": True,
    "verify_inputs": "/kaggle/working/arielstream-manifest.json",
    "parts": True,
}


def toml_value(value: Any) -> str:
    """A Python default as a TOML value (bool, int, float, str, list/tuple of those; numpy scalars too)."""
    # Not tomli-w: it writes whole tables, not the single values of a commented template (commented-out
    # options, a value per profile in a comment), and it would be a new dependency, absent from the offline
    # Kaggle install (numpy, pyarrow, astropy, numexpr, joblib, h5py, tqdm). tomllib/tomli reads it back.
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
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TypeError(f"option {f.name} has no default")


def profile_dependent() -> dict[str, dict[str, Any]]:
    """Options whose default differs between profiles: name -> {profile: default}."""
    defaults = {p: build_config(profile=p).to_dict() for p in PROFILES}
    first = defaults[PROFILES[0]]
    return {name: {p: d[name] for p, d in defaults.items()} for name in first
            if name != "profile" and any(d[name] != first[name] for d in defaults.values())}


def _per_profile(values: dict[str, Any]) -> str:
    return "profile " + ", ".join(f"{p}: {toml_value(v)}" for p, v in values.items())


def option_help(table: str, name: str, *, default: bool = True) -> str:
    """The ``--help`` text of the command-line option that sets ``[table] name``: its description, and its default.

    ``default=False`` leaves the default out (a flag that only switches an option on or off).
    """
    text = DESCRIPTIONS[table][name]
    if not default:
        return text
    if table == "calibration" and name in profile_dependent():
        return f"{text} (default by {_per_profile(profile_dependent()[name])})"
    cls = CalibrationConfig if table == "calibration" else RunOptions
    value = _default(next(f for f in fields(cls) if f.name == name))
    if value is None:
        return text
    return f"{text} (default {', '.join(map(str, value)) if isinstance(value, tuple) else value})"


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
               if f.name not in DESCRIPTIONS[table]]
    if missing:
        raise KeyError(f"config template: no description for {', '.join(missing)} "
                       "(add it to arielstream.config.descriptions.DESCRIPTIONS)")
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
            comment = DESCRIPTIONS[table][f.name]
            default = _default(f)
            if table == "run" and f.name in PER_CALL_OPTIONS:
                continue
            if table == "calibration" and f.name in varying:
                out.append(_line(f.name, toml_value(default), f"{comment} ({_per_profile(varying[f.name])})", True,
                                 width))
            elif default is None:
                out.append(_line(f.name, toml_value(EXAMPLES[f.name]), f"{comment} (default: unset)", True, width))
            else:
                out.append(_line(f.name, toml_value(default), comment, False, width))
        if table == "run":
            out.append("# not set here, for one run only: " + ", ".join(
                f"--{name.replace('_', '-')} ({DESCRIPTIONS[table][name]})" for name in PER_CALL_OPTIONS))
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
        out.append(_line(name, toml_value(value), DESCRIPTIONS["calibration"][name], False, width))
    if run is not None:
        out += ["", "[run]"]
        for f in fields(RunOptions):
            value = getattr(run, f.name)
            if value is None or f.name in PER_CALL_OPTIONS:  # force is an action of one call, not a setting
                continue
            out.append(_line(f.name, toml_value(value), DESCRIPTIONS["run"][f.name], False, width))
    return "\n".join(out) + "\n"

