"""Optional compiled fast paths (numba), used when numba is installed.

numexpr evaluates an expression one operation at a time over cache-sized blocks,
so the 19 operations of a non-linear CDS pair cost ~1 s per full-size
observation on two cores, twice the Parquet decode itself (see BENCHMARKS.md).
These kernels make one pass over the raw uint16 block instead: for each pixel
and time bin they convert both reads of every pair, evaluate the polynomial by
Horner's method and accumulate the bin, with no intermediate arrays, in
parallel over pixels. They compute what :func:`arielstream.kernels.calibrate_block`
computes (tested against the same numpy twin); only the order of the float64
additions inside a bin differs.

Install with ``pip install 'arielstream[fast]'``; set ``ARIELSTREAM_ENGINE=numexpr``
to disable. Without numba everything runs on numexpr, unchanged.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

try:  # pragma: no cover - exercised where numba is installed
    import numba
except ImportError:  # pragma: no cover
    numba = None


def available() -> bool:
    """True when the compiled kernels can be used (numba importable and not disabled)."""
    return numba is not None and os.environ.get("ARIELSTREAM_ENGINE", "auto") != "numexpr"


def engine() -> str:
    """Which kernels a run uses, recorded in the output (results of different engines never mix)."""
    if available():
        return f"numba {numba.__version__}"
    import numexpr

    return f"numexpr {numexpr.__version__}"


def set_threads(threads: int) -> None:
    if numba is not None:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


if numba is not None:
    # fastmath: "contract" lets LLVM fuse multiply-adds, "reassoc" lets it vectorise the sum of a bin;
    # results are deterministic for a given machine and numba, and differ from numexpr's by ~1e-16.
    _FLAGS = {"contract", "reassoc"}

    @numba.njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _cds_quintic_bins(raw, q, width):  # pragma: no cover - compiled
        n_pix = raw.shape[0]
        n_bins = raw.shape[1] // (2 * width)
        out = np.empty((n_pix, n_bins))
        for p in numba.prange(n_pix):
            q1, q2, q3, q4, q5 = q[1, p], q[2, p], q[3, p], q[4, p], q[5, p]
            for b in range(n_bins):
                acc = 0.0
                base = 2 * width * b
                for i in range(width):
                    s = np.float64(raw[p, base + 2 * i])
                    e = np.float64(raw[p, base + 2 * i + 1])
                    acc += ((((q5 * e + q4) * e + q3) * e + q2) * e + q1) * e \
                        - ((((q5 * s + q4) * s + q3) * s + q2) * s + q1) * s
                out[p, b] = acc
        return out

    @numba.njit(parallel=True, nogil=True, cache=True)
    def _cds_count_bins(raw, width):  # pragma: no cover - compiled
        n_pix = raw.shape[0]
        n_bins = raw.shape[1] // (2 * width)
        out = np.empty((n_pix, n_bins), dtype=np.int64)
        for p in numba.prange(n_pix):
            for b in range(n_bins):
                acc = 0
                base = 2 * width * b
                for i in range(width):
                    acc += np.int64(raw[p, base + 2 * i + 1]) - np.int64(raw[p, base + 2 * i])
                out[p, b] = acc
        return out


def supports_polynomial(order: int) -> bool:
    """The compiled non-linear kernel is written out for the competition's quintic (6 coefficients)."""
    return available() and order == 5


def cds_polynomial_bins(raw: np.ndarray, q: np.ndarray, width: int) -> np.ndarray:
    """``sum over each bin of Q(end) - Q(start)`` for raw ``(P, frames)`` uint16; ``q`` is ``(6, P)``.

    ``q`` holds the coefficients in raw counts (:func:`arielstream.kernels.fold_adc`);
    the constant ``q0`` cancels and is not used. Frames must span whole bins.
    """
    return _cds_quintic_bins(raw, np.ascontiguousarray(q, dtype=np.float64), int(width))


def cds_count_bins(raw: np.ndarray, width: int) -> np.ndarray:
    """``sum over each bin of end - start`` in raw counts (int64, exact)."""
    return _cds_count_bins(raw, int(width))
