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

from ._version import __version__  # noqa: E402
from .config import CalibrationConfig, build_config, load_config  # noqa: E402
from .exports import export  # noqa: E402
from .lightcurves import extract  # noqa: E402
from .results import Results, open  # noqa: E402,A004
from .runner import calibrate  # noqa: E402

# quicklook: ``from arielstream.quicklook import quicklook`` (the module's name, so not re-exported here)
__all__ = ["__version__", "CalibrationConfig", "build_config", "load_config", "calibrate", "open", "Results",
           "extract", "export"]
