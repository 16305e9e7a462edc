"""The products' option choices and defaults, in a module that imports nothing.

The command line builds its parser from these (``export --format``, ``extract --half-width``,
``spectrum --degree``, ...) without loading the product modules, which import h5py and numpy;
:mod:`.exports`, :mod:`.lightcurves` and :mod:`.spectrum` import them from here, and they stay
importable from those modules too.
"""

from __future__ import annotations

# exports
FORMATS = ("npy", "fits", "csv", "parquet")
WAVELENGTH_ORDERS = ("detector", "target", "file")  # "file" (or None): as stored
NPY_VISITS = ("all", "first", "mean")  # rows of an npy export: every observation, or one per planet

# lightcurves: the extraction apertures
DEFAULT_HALF_WIDTH = 6  # AIRS: rows within this many of the trace centre
DEFAULT_FGS1_RADIUS = 6.0  # FGS1: photometric aperture radius in pixels

# spectrum
DEFAULT_DEGREE = 1  # the out-of-transit baseline polynomial's degree in time
MISSING_POLICIES = ("error", "prior")  # a planet without a spectrum: an error, or the training labels' prior
