"""Named runs: ``--run NAME`` keeps calibrations side by side, as HUSTLE-tools' ``output_run``.

A run is a folder ``RUNS_DIR/NAME/`` (``runs/`` by default) holding

``config.toml``   every option the run used (``--config runs/NAME/config.toml`` reproduces it)
``<split>.h5``    the calibrated file of each split (``train.h5``, ``test.h5``) and its ``.log``

A second calibration under the same name adds a split or resumes one; it never
replaces a run made with other calibration options: that is refused (a
:class:`~arielstream.errors.ConfigError`) unless ``force`` is given. Run options
(memory, jobs, ...) may differ between calls: they do not change the numbers.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..config.options import CalibrationConfig, RunOptions, load_config
from ..errors import ConfigError, OutputError, flag
from ..io.atomic import atomic_write

log = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = "runs"
CONFIG_FILE = "config.toml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def run_folder(name: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """``runs_dir/name``; the name is one path component of letters, digits, ``.``, ``_`` and ``-``."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"run name must be letters, digits, '.', '_' or '-' (at most 100, no '/'); got {name!r}")
    return Path(runs_dir) / name


def run_output(name: str, split: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The calibrated file of ``split`` in run ``name``: ``runs_dir/name/<split>.h5``."""
    return run_folder(name, runs_dir) / f"{split}.h5"


def prepare_run(name: str, config: CalibrationConfig, run: RunOptions,
                runs_dir: str | Path = DEFAULT_RUNS_DIR, force: bool = False) -> Path:
    """Create (or reuse) the run folder, record its config, and return the output path of ``run.split``.

    An existing run whose ``config.toml`` holds other calibration options is
    refused unless ``force``; its config file is then rewritten, and the run's
    files of other splits, made with the old options, are named in a warning.
    Called under the output's run lock, so the file always describes the run.
    """
    from ..config.template import render_config

    folder = run_folder(name, runs_dir)
    config_path = folder / CONFIG_FILE
    previous: CalibrationConfig | None = None
    if config_path.exists():
        try:
            previous = load_config(config_path)
        except (ConfigError, OSError) as exc:
            if not force:
                raise ConfigError(f"{config_path}: run {name!r} exists but its config cannot be read ({exc}); "
                                  f"pick another run name ({flag('run', ...)}) or use {flag('force')}") from None
    if previous is not None and previous != config:
        changed = sorted(k for k, v in config.to_dict().items() if previous.to_dict().get(k) != v)
        if not force:
            raise ConfigError(f"run {name!r} ({folder}) was made with other calibration options "
                              f"({', '.join(changed)}); pick another run name ({flag('run', ...)}) or use "
                              f"{flag('force')} to replace it")
        for other in sorted(folder.glob("*.h5")):
            if other.name != f"{run.split}.h5":
                log.warning("%s was made with the run's previous options (%s); recalibrate it with %s and %s or it no "
                            "longer matches %s", other, ", ".join(changed), flag("force"), flag("split", other.stem),
                            config_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if force or not config_path.exists():
            with atomic_write(config_path, "write the run's config") as partial:
                partial.write_text(render_config(config, run))
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the run folder: {exc}") from None
    return run_output(name, run.split, runs_dir)
