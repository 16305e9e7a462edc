"""arielstream: streaming, memory-bounded calibration of Ariel Data Challenge 2025 detector data.

>>> import arielstream
>>> summary = arielstream.calibrate("data_samples", "out.h5")        # doctest: +SKIP
>>> with arielstream.open("out.h5") as res:                          # doctest: +SKIP
...     cube = res.airs(0)
"""

# Importing changes no process-wide setting: a run switches Arrow to the system allocator in the
# processes that calibrate (arielstream.run.runner), not here.
# The names below load on first use (PEP 562): ``import arielstream`` loads no numpy or pyarrow, so
# the command line (arielstream.cli) can choose Arrow's allocator before pyarrow starts.
from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; at run time __getattr__ loads them
    from .config.options import CalibrationConfig, build_config, load_config
    from .products.exports import export
    from .products.lightcurves import extract
    from .products.results import Results
    from .products.results import open as open  # arielstream.open; not in __all__: `import *` keeps the builtin
    from .products.spectrum import spectrum
    from .run.runner import calibrate

_LAZY = {
    "CalibrationConfig": ".config.options", "build_config": ".config.options", "load_config": ".config.options",
    "export": ".products.exports", "extract": ".products.lightcurves", "Results": ".products.results",
    "open": ".products.results", "spectrum": ".products.spectrum", "calibrate": ".run.runner",
}

# quicklook: ``from arielstream.products.quicklook import quicklook`` (the module's name, so not re-exported here)
__all__ = ["__version__", "CalibrationConfig", "build_config", "load_config", "calibrate", "Results",
           "extract", "export", "spectrum"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
