"""arielstream: streaming, memory-bounded calibration of Ariel Data Challenge 2025 detector data.

>>> import arielstream
>>> summary = arielstream.calibrate("data_samples", "out.h5")        # doctest: +SKIP
"""

from ._version import __version__
from .config import CalibrationConfig, build_config, load_config
from .runner import calibrate

__all__ = ["__version__", "CalibrationConfig", "build_config", "load_config", "calibrate"]
