"""arielstream: streaming, memory-bounded calibration of Ariel Data Challenge 2025 detector data.

>>> import arielstream
>>> summary = arielstream.calibrate("data_samples", "out.h5")        # doctest: +SKIP
>>> with arielstream.open("out.h5") as res:                          # doctest: +SKIP
...     cube = res.airs(0)
"""

import os as _os

# Arrow's default allocator (mimalloc) keeps what a process freed: ~50 MB more peak RSS per
# worker on a full-size observation than the system allocator, for no speed (BENCHMARKS.md).
# Arrow reads this once, at its import: it only takes effect if pyarrow is not imported yet.
_os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from ._version import __version__
from .config.options import CalibrationConfig, build_config, load_config
from .products.exports import export
from .products.lightcurves import extract
from .products.results import Results, open  # shadows the builtin inside this namespace only
from .run.runner import calibrate

# quicklook: ``from arielstream.products.quicklook import quicklook`` (the module's name, so not re-exported here)
__all__ = ["__version__", "CalibrationConfig", "build_config", "load_config", "calibrate", "open", "Results",
           "extract", "export"]
