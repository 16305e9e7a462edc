"""What identifies an output: what changes its numbers, and nothing else.

An existing ``OUT.h5`` (or ``OUT.h5.partial``) is reported complete, or resumed,
only when this run would write the same numbers into it: the same numerical code,
calibration config and split (:func:`run_identity`, stored in the file's attributes).
How the run is executed (memory, jobs, backend, the kernel engine, which records
itself per observation) is not part of it, and neither is where the data folder is:
each observation records its input files by their path relative to the data folder
with their sizes and modification times, so a data folder that moved (``mv``, ``cp -a``,
another mount point) still matches, and a file that changed is recomputed. A data folder
given as a URL (:mod:`arielstream.io.storage`) is no different: the same URL again has
nothing to do, and a local folder uploaded to a bucket keeps the output's identity, but its
objects' modification times are the store's, so each observation is recomputed once
(``--frozen`` refuses instead), as after a local copy that does not keep the times.

The numerical code is the package version plus a digest of the modules on the
numerical path (:data:`NUMERICAL_MODULES`) and of the output schema's numerical
declarations (:func:`schema_json`: the datasets' names, dtypes, axes, fill values and
checksum coverage): editing the CLI, the products, the run coordinator or a description
in the schema (a long name, units) leaves a finished output finished and a ``.partial``
resumable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config.options import CalibrationConfig
from ..io import schema

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# The modules (glob patterns relative to the package) whose edits can change the numbers of an output.
# Every pattern must match at least one file: a module moved without updating this list is an error.
NUMERICAL_MODULES: tuple[str, ...] = (
    "io/signal.py",  # decodes the raw frames and cuts them into the chunks the maths sees
    "io/calibration.py",  # reads dark, dead, flat, read and linear_corr, and stacks the master frames
    "io/dataset.py",  # the ADC gain and offset and the wavelength and time axes
    "calibration/*.py",  # the maths: reference steps, numexpr and numba kernels, frame steps
    "run/observation.py",  # one observation through the recipe: which steps run, on which arrays, in what order
    "io/store.py",  # the output's layout and the checksums a resume trusts (its schema: schema_json)
    "layout.py",  # instrument geometry and the files that make an observation
    "dq.py",  # the data-quality bits written beside the cubes
    "config/options.py",  # the defaults and profiles a config is built from
    "config/recipe.py",  # the steps of the recipe and what each needs
)


def numerical_sources(root: Path = PACKAGE_ROOT) -> list[Path]:
    """The files of :data:`NUMERICAL_MODULES` under ``root``, in a stable order."""
    files: set[Path] = set()
    for pattern in NUMERICAL_MODULES:
        matched = sorted(root.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"{root}/{pattern}: listed in NUMERICAL_MODULES but no such module")
        files.update(matched)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def schema_json(declarations: Mapping[str, Any] | None = None) -> str:
    """The output schema's numerical declarations (:func:`arielstream.io.schema.numerical_declarations`), canonical."""
    declarations = schema.numerical_declarations() if declarations is None else declarations
    return json.dumps(declarations, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def source_digest(root: Path = PACKAGE_ROOT) -> str:
    """The package version plus a digest of the numerical modules under ``root`` and of the output schema.

    The schema's numerical declarations are those of this installation's :mod:`arielstream.io.schema`,
    read when called (its file is not one of :data:`NUMERICAL_MODULES`: its descriptions are not numbers).
    """
    digest = hashlib.blake2b(digest_size=6)
    for path in numerical_sources(root):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(b"io/schema.py:numerical_declarations")
    digest.update(schema_json().encode())
    return f"{__version__}+{digest.hexdigest()}"


@lru_cache(maxsize=1)
def code_version() -> str:
    """This installation's numerical code (see :func:`source_digest`), computed once per process."""
    return source_digest(PACKAGE_ROOT)


def run_identity(config: CalibrationConfig, split: str) -> dict[str, str]:
    """The attributes an output must share with a run to be resumed by it."""
    return {"arielstream_version": code_version(), "config": config.to_json(), "split": split}


def _config_changes(stored: str, current: str) -> str:
    try:
        a, b = json.loads(stored), json.loads(current)
    except (TypeError, ValueError):
        return "calibration config differs (the output's cannot be read)"
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return f"calibration config differs in {', '.join(changed)}"


def identity_differences(stored: Mapping[str, Any], identity: Mapping[str, str]) -> list[str]:
    """What differs between an output's attributes and this run's identity, one phrase per category."""
    values = {k: stored[k].decode() if isinstance(stored[k], bytes) else stored[k] for k in identity if k in stored}
    if not values:
        return ["not an arielstream output (its attributes hold no run identity)"]
    problems = []
    for key, current in identity.items():
        old = values.get(key)
        if old == current:
            continue
        if key == "arielstream_version":
            problems.append(f"numerical code differs (output made by arielstream {old}, this is {current})")
        elif key == "config":
            problems.append(_config_changes(str(old or "{}"), current))
        elif key == "split":
            problems.append(f"split differs (output holds {old!r}, this run {current!r})")
        else:
            problems.append(f"{key} differs (output {old!r}, this run {current!r})")
    return problems
