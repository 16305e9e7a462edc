"""One recipe, one config: the options of a calibration run, validated before any data flows.

The config is a frozen dataclass with its defaults in code. It can be overridden
from a TOML file and then from the command line (``load_config``); it is never
built with ``eval``. Two profiles exist:

``default``
    every step of the organisers' recipe, non-linearity included, bad pixels as
    NaN, wavelengths in the target order (``wl_2`` ... ``wl_283``, ascending).
``notebook``
    reproduces the organisers' notebook on good pixels: non-linearity off, bad
    pixels keep their computed values (the notebook loses its mask), AIRS
    columns 39:321 in detector order (long to short wavelength).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, flag
from ..layout import AIRS, INSTRUMENTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PROFILES = ("default", "notebook", "full")
WAVELENGTH_ORDERS = ("target", "detector")
BAD_PIXEL_MODES = ("nan", "keep")
CR_REPLACE_MODES = ("median", "mask")
CR_METHODS = ("bin", "series")
MASTER_MODES = ("off", "planet", "dataset")
MISSING_CALIBRATION_MODES = ("error", "skip")
HOT_RULES = ("physical", "sigma")
SATURATION_MAX = 65535  # the ceiling of the raw uint16 counts


@dataclass(frozen=True)
class CalibrationConfig:
    """Which steps run and how. Every step can be switched off."""

    profile: str = "default"
    # the recipe, in the notebook's order
    adc: bool = True
    mask: bool = True  # hot/dead pixel mask into the data-quality plane
    hot_sigma: float = 5.0
    hot_maxiters: int = 5
    hot_rule: str = "physical"  # "physical": dark charge of an exposure vs read noise (HOT kept, HOT_UNUSABLE when
    # its shot noise exceeds a CDS's read noise); "sigma": the notebook's clip (every hot pixel HOT_UNUSABLE)
    nonlinearity: bool = True
    dark: bool = True
    cds: bool = True
    time_binning: bool = True
    airs_bin: int = 30
    fgs1_bin: int = 360
    flat: bool = True
    saturation_level: int = 65535  # raw counts: a read at or above it is saturated (its bin NaN); 0: no check
    wavelength_cut: bool = True
    cut_start: int = 39
    cut_stop: int = 321
    # beyond the notebook: cosmic rays on by default (off in "notebook"), the rest on in the "full" profile
    cosmic_rays: bool = True  # temporal outliers of each pixel's CDS series (on by default: bin method, cheap)
    cr_method: str = "bin"  # "bin": each bin's largest sample, in the streaming pass; "series": whole series, iterated
    cr_bin_sigma: float = 5.0  # "bin": clip level (sigma of the bin's other samples)
    cr_sigmas: tuple[float, ...] = (8.0,)  # fixed iterations, one clip level each
    cr_until_clean: bool = True  # then iterate at cr_clean_sigma until nothing new is flagged
    cr_clean_sigma: float = 5.0
    cr_max_iters: int = 10
    cr_replace: str = "median"  # "median": the median of the sample's bin; "mask": left out, bin rescaled
    spatial_outliers: bool = False  # AIRS: residual from a median filter along the wavelength axis
    spatial_kernel: int = 5
    spatial_sigma: float = 10.0
    interpolate_bad_pixels: bool = False  # isolated NaN pixels from their spatial neighbours
    master_calibration: str = "off"  # "planet": dark and flat combined over the planet's visits; "dataset"
    background: bool = False
    airs_background_rows: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 26, 27, 28, 29, 30, 31)
    fgs1_background_width: int = 3  # FGS1: pixels this close to the frame's edge
    background_sigma: float = 3.0
    tracking: bool = False  # FGS1 centroid and AIRS trace row per time bin
    spatial_bin: int = 1  # sum spatial_bin x spatial_bin pixels of the output
    # output conventions
    wavelength_order: str = "target"
    bad_pixels: str = "nan"
    missing_calibration: str = "error"
    instruments: tuple[str, ...] = field(default=tuple(INSTRUMENTS))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first option whose value the pipeline cannot run with."""
        self._validate_choices()
        self._validate_numbers()
        self._validate_ranges()

    def _validate_choices(self) -> None:
        def choose(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")

        choose("profile", self.profile, PROFILES)
        choose("wavelength_order", self.wavelength_order, WAVELENGTH_ORDERS)
        choose("bad_pixels", self.bad_pixels, BAD_PIXEL_MODES)
        choose("missing_calibration", self.missing_calibration, MISSING_CALIBRATION_MODES)
        choose("cr_replace", self.cr_replace, CR_REPLACE_MODES)
        choose("cr_method", self.cr_method, CR_METHODS)
        choose("master_calibration", self.master_calibration, MASTER_MODES)
        choose("hot_rule", self.hot_rule, HOT_RULES)
        known = tuple(INSTRUMENTS)
        if not self.instruments or any(i not in known for i in self.instruments):
            raise ConfigError(f"instruments must be a non-empty subset of {known}; got {self.instruments!r}")
        if len(set(self.instruments)) != len(self.instruments):
            raise ConfigError(f"instruments repeated: {self.instruments!r}")
        if self.cosmic_rays and not self.cds:
            raise ConfigError("cosmic_rays works on the CDS series: it needs cds")

    def _validate_numbers(self) -> None:
        for name in ("cr_max_iters", "spatial_kernel", "fgs1_background_width", "spatial_bin"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if self.spatial_kernel % 2 == 0:
            raise ConfigError(f"spatial_kernel must be odd; got {self.spatial_kernel}")
        for name in ("cr_clean_sigma", "cr_bin_sigma", "spatial_sigma", "background_sigma"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive; got {getattr(self, name)!r}")
        for name in ("airs_bin", "fgs1_bin"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if not (self.hot_sigma > 0):
            raise ConfigError(f"hot_sigma must be positive; got {self.hot_sigma!r}")
        if not isinstance(self.hot_maxiters, int) or self.hot_maxiters < 1:
            raise ConfigError(f"hot_maxiters must be a positive integer; got {self.hot_maxiters!r}")
        level = self.saturation_level
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= SATURATION_MAX:
            raise ConfigError(f"saturation_level must be an integer in 0..{SATURATION_MAX} (raw counts; 0: off); "
                              f"got {level!r}")

    def _validate_ranges(self) -> None:
        if not self.cr_sigmas or any(not (x > 0) for x in self.cr_sigmas):
            raise ConfigError(f"cr_sigmas must be a non-empty list of positive numbers; got {self.cr_sigmas!r}")
        if any(not 0 <= r < AIRS.rows for r in self.airs_background_rows) or len(self.airs_background_rows) < 2:
            raise ConfigError(f"airs_background_rows must be at least two rows in 0..{AIRS.rows - 1}; got "
                              f"{self.airs_background_rows!r}")
        if not (0 <= self.cut_start < self.cut_stop <= AIRS.columns):
            raise ConfigError(f"wavelength cut must satisfy 0 <= start < stop <= {AIRS.columns}; "
                              f"got {self.cut_start}:{self.cut_stop}")
        rows = math.gcd(*(inst.rows for inst in INSTRUMENTS.values()))
        if rows % self.spatial_bin:  # a partial block of rows would be dropped (or none left at all)
            accepted = ", ".join(str(n) for n in range(1, rows + 1) if rows % n == 0)
            raise ConfigError(f"spatial_bin must divide the {rows} detector rows: one of {accepted}; "
                              f"got {self.spatial_bin}")

    def bin_width(self, instrument: str) -> int:
        """Samples summed per time bin (1 when binning is off)."""
        if not self.time_binning:
            return 1
        return self.airs_bin if instrument == AIRS.name else self.fgs1_bin

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON-able values (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["instruments"] = list(self.instruments)
        d["cr_sigmas"] = list(self.cr_sigmas)
        d["airs_background_rows"] = list(self.airs_background_rows)
        return d

    def to_json(self) -> str:
        """The options as canonical JSON (sorted keys): what the output records and compares."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> CalibrationConfig:
        """A copy with ``changes`` applied and validated."""
        return build_config(base=self, **changes)


_NOTEBOOK = {
    "profile": "notebook",
    "cosmic_rays": False,
    "nonlinearity": False,
    "hot_rule": "sigma",
    "bad_pixels": "keep",
    "wavelength_order": "detector",
}
_FULL = {
    "profile": "full",
    "cosmic_rays": True,
    "spatial_outliers": True,
    "interpolate_bad_pixels": True,
    "background": True,
    "tracking": True,
}


def option_names() -> list[str]:
    """The names of the calibration options, in declaration order."""
    return [f.name for f in fields(CalibrationConfig)]


def build_config(base: CalibrationConfig | None = None, **options: Any) -> CalibrationConfig:
    """Make a config from a profile name and overrides, rejecting unknown options.

    ``profile`` is applied first (its defaults), then every other option, so
    ``build_config(profile="notebook", nonlinearity=True)`` is the notebook
    recipe with the non-linearity switched back on.

    Parameters
    ----------
    base : CalibrationConfig, optional
        The config to start from (default: the ``profile``'s, ``"default"`` when none is given).
    **options
        ``profile`` (``"default"``, ``"notebook"`` or ``"full"``) and any field of
        :class:`CalibrationConfig` (``arielstream init-config`` lists them with their help).

    Returns
    -------
    CalibrationConfig
        The checked config, to pass to :func:`calibrate` as ``config=``.

    Raises
    ------
    ConfigError
        An unknown option or profile, or a value of the wrong type or out of range.
    """
    unknown = sorted(set(options) - set(option_names()))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)} (known: {', '.join(option_names())})")
    values = {} if base is None else base.to_dict()
    profile = options.get("profile", values.get("profile", "default"))
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    if "profile" in options or base is None:
        values = {"profile": profile}
        if profile == "notebook":
            values.update(_NOTEBOOK)
        elif profile == "full":
            values.update(_FULL)
    values.update({k: v for k, v in options.items() if k != "profile"})
    if values.get("cds") is False and "cosmic_rays" not in options:  # it works on the CDS series: off with it,
        values["cosmic_rays"] = False  # unless asked for (then the refusal below says why)
    if isinstance(values.get("instruments"), str):
        values["instruments"] = (values["instruments"],)
    for name in ("instruments", "cr_sigmas", "airs_background_rows"):
        if name in values and not isinstance(values[name], tuple):
            if not isinstance(values[name], (list, tuple)):
                raise ConfigError(f"{name} must be a list; got {values[name]!r}")
            values[name] = tuple(values[name])
    types = {f.name: f.type for f in fields(CalibrationConfig)}
    for name, value in values.items():
        values[name] = _typed(name, value, str(types[name]))
    return CalibrationConfig(**values)


_TYPE_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
_TYPE_PLURALS = {"bool": "true or false values", "int": "integers", "float": "numbers", "str": "strings"}


def _typed(name: str, value: Any, expected: str) -> Any:
    """``value`` if it has the ``expected`` type (a field annotation; ints pass as floats), else ConfigError."""
    def fits(item: Any, kind: str) -> bool:
        if kind == "bool" or isinstance(item, bool):
            return kind == "bool" and isinstance(item, bool)
        classes: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "str": str}
        return isinstance(item, classes.get(kind, object))

    if expected.startswith("tuple[") and isinstance(value, tuple):
        kind = expected[len("tuple["):].split(",")[0].strip()
        bad = [item for item in value if not fits(item, kind)]
        if bad:
            raise ConfigError(f"{name} must be a list of {_TYPE_PLURALS.get(kind, kind)}; got {value!r}")
        return value
    if expected in _TYPE_WORDS:
        if not fits(value, expected):
            raise ConfigError(f"{name} must be {_TYPE_WORDS[expected]}; got {value!r}")
        return float(value) if expected == "float" else value
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict, with errors that name the file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a TOML config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); a TOML config file is UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return data


BACKENDS = ("loky", "dask")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of type ``annotation``: str, int, float (ints too), bool, None, tuple[X, ...], unions."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return isinstance(value, tuple) and all(_fits(item, args[0]) for item in value)
    if annotation in (bool, int, float, str):
        if isinstance(value, bool):  # a bool is an int to Python, never to a config file
            return annotation is bool
        return isinstance(value, (int, float) if annotation is float else annotation)
    raise TypeError(f"no type check for the annotation {annotation!r}")  # a new kind of field: teach _fits


def _describe(annotation: Any) -> str:
    """``annotation`` in the words of an error message: ``tuple[int, ...] | None`` -> "a list of integers"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is tuple:
        return f"a list of {_TYPE_PLURALS[args[0].__name__]}"
    return _TYPE_WORDS[annotation.__name__]


def check_types(options: Any, must_be: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` naming the first field of the dataclass ``options`` not of its annotated type.

    The message says what the field must be: ``must_be[name]`` where given, else
    the annotation in words (``jobs must be an integer; got 'x'``).
    """
    hints = _type_hints(options.__class__)
    for f in fields(options):
        value = getattr(options, f.name)
        if not _fits(value, hints[f.name]):
            what = (must_be or {}).get(f.name) or _describe(hints[f.name])
            raise ConfigError(f"{f.name} must be {what}; got {value!r}")


# what a run option must be, in more helpful words than its annotation's ("a string")
_RUN_MUST_BE = {
    "split": "a folder name such as \"train\" or \"test\"",
    "planets": "a list of planet ids (integers)",
    "memory": "a size such as \"2GB\"",
    "jobs": "a positive integer or \"auto\"",
    "backend": f"one of {', '.join(BACKENDS)}",
    "scheduler": "an address such as \"tcp://host:8786\"",
    "task_timeout": "a positive number of seconds",
}


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed (the ``[run]`` table of a config file): not part of the science."""

    split: str = "train"
    planets: tuple[int, ...] | None = None
    memory: str | int = "2GB"  # RAM budget of the process tree on this machine (a task's, with dask)
    jobs: int | None = None  # None: "auto", from the budget and the cores
    backend: str = "loky"
    scheduler: str | None = None  # dask.distributed scheduler address
    task_timeout: float | None = None  # seconds; a task running longer counts as a dead worker
    force: bool = False  # recompute everything even if an output made differently exists
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    log_file: bool = True  # OUT.h5.log beside the output
    verify_inputs: str | None = None  # input manifest; None: DATA_DIR/arielstream-manifest.json when it exists
    frozen: bool = False  # refuse, instead of recomputing, observations whose input files changed
    drop_missing: bool = False  # leave out of the output observations no longer in the data folder
    parts: bool | None = None  # each observation written into a part file of its own; None: with dask only

    def __post_init__(self) -> None:
        check_types(self, _RUN_MUST_BE)  # from the annotations: split = 5 in a config file fails here
        must_be = _RUN_MUST_BE
        if not self.split:
            raise ConfigError(f"split must be {must_be['split']}; got {self.split!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be {must_be['backend']}; got {self.backend!r}")
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(f"jobs must be {must_be['jobs']}; got {self.jobs!r}")
        if self.task_timeout is not None and not 0 < self.task_timeout < float("inf"):
            raise ConfigError(f"task_timeout must be {must_be['task_timeout']}; got {self.task_timeout!r}")
        if self.backend == "dask" and not self.scheduler:
            raise ConfigError(f"the dask backend needs a scheduler address: {flag('scheduler', 'tcp://HOST:8786')}")

    @property
    def uses_parts(self) -> bool:
        """Parts mode (:mod:`arielstream.io.parts`): as set, or by default with the dask backend only."""
        return self.backend == "dask" if self.parts is None else self.parts


CONFIG_TABLES = ("calibration", "run")  # the tables of a config file
# run options of one invocation, not settings: init-config's template and a named run's config.toml leave
# them out, and a config file may not switch them on (force = true would recompute everything every night)
PER_CALL_OPTIONS = ("force",)


def _table(data: dict[str, Any], name: str, path: str | Path) -> dict[str, Any]:
    unknown = sorted(set(data) - set(CONFIG_TABLES))
    if unknown:  # a misspelt [calbration] would otherwise be ignored with everything in it
        raise ConfigError(f"{path}: unknown table(s) or top-level key(s) {', '.join(unknown)} "
                          f"(a config file holds {' and '.join(f'[{t}]' for t in CONFIG_TABLES)})")
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return dict(table)


def load_run_options(toml_path: str | Path | None = None, **overrides: Any) -> RunOptions:
    """Defaults < TOML file ``[run]`` table < explicit overrides (the CLI); ``None`` overrides nothing."""
    options = _table(read_toml(toml_path), "run", toml_path) if toml_path is not None else {}
    switched_on = [name for name in PER_CALL_OPTIONS if options.get(name) is True]
    if switched_on:  # false (what init-config used to write) is the default: accepted
        name = switched_on[0]
        raise ConfigError(f"{toml_path}: {name} = true in a config file would apply to every run that reads it "
                          f"(recomputing everything each time); remove it and pass --{name} (or {name}=True from "
                          "Python) to the one run that needs it")
    options.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{toml_path or 'run options'}: unknown option(s) in [run]: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    if options.get("jobs") == "auto":
        options["jobs"] = None
    if isinstance(options.get("planets"), list):
        options["planets"] = tuple(options["planets"])
    try:
        return RunOptions(**options)
    except ConfigError as exc:
        raise ConfigError(f"{toml_path}: {exc}" if toml_path is not None else str(exc)) from None


def load_config(toml_path: str | Path | None = None, **overrides: Any) -> CalibrationConfig:
    """A config from defaults < a TOML file's ``[calibration]`` table < explicit overrides (the CLI's).

    Parameters
    ----------
    toml_path : str or Path, optional
        A config file (``arielstream init-config`` writes one); none: the defaults.
    **overrides
        Options as :func:`build_config` takes them; ``None`` values are ignored (an option
        not given on the command line), and a ``profile`` replaces the file's.

    Returns
    -------
    CalibrationConfig
        The checked config.

    Raises
    ------
    ConfigError
        The file cannot be read or parsed, or holds an unknown table, option or a bad value
        (the message names the file).
    """
    options: dict[str, Any] = {}
    if toml_path is not None:
        options.update(_table(read_toml(toml_path), "calibration", toml_path))
    if "profile" in overrides and overrides["profile"] is not None and "profile" in options:
        # a profile named on the command line replaces the file's profile and its defaults
        options = {k: v for k, v in options.items() if k != "profile"}
    options.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return build_config(**options)
    except ConfigError as exc:
        where = f"{toml_path}: " if toml_path is not None else ""
        raise ConfigError(f"{where}{exc}") from None
