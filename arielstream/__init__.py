"""arielstream: streaming, memory-bounded calibration of Ariel Data Challenge 2025 detector data.

>>> import arielstream
>>> summary = arielstream.calibrate("data_samples", "out.h5")        # doctest: +SKIP
>>> with arielstream.open("out.h5") as res:                          # doctest: +SKIP
...     cube = res.airs(0)
"""

# Importing changes no process-wide setting: a run switches Arrow to the system allocator in the
# processes that calibrate (arielstream.run.runner), not here.
from ._version import __version__
from .config.options import CalibrationConfig, build_config, load_config
from .products.exports import export
from .products.lightcurves import extract
from .products.results import Results
from .products.results import open as open  # arielstream.open; not in __all__: `import *` keeps the builtin
from .products.spectrum import spectrum
from .run.runner import calibrate

# quicklook: ``from arielstream.products.quicklook import quicklook`` (the module's name, so not re-exported here)
__all__ = ["__version__", "CalibrationConfig", "build_config", "load_config", "calibrate", "Results",
           "extract", "export", "spectrum"]
