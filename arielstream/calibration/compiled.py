"""Optional compiled fast paths (numba), used when numba is installed.

numexpr evaluates an expression one operation at a time over cache-sized blocks,
so the 19 operations of a non-linear CDS pair cost ~1 s per full-size
observation on two cores, twice the Parquet decode itself (see BENCHMARKS.md).
These kernels make one pass over the raw uint16 block instead: for each pixel
and time bin they convert both reads of every pair, evaluate the polynomial by
Horner's method and accumulate the bin, with no intermediate arrays, in
parallel over pixels. They compute what :func:`arielstream.calibration.kernels.calibrate_block`
computes (tested against the same numpy twin); only the order of the float64
additions inside a bin differs.

Install with ``pip install numba`` (the ``fast`` extra). Whether they are used is decided
once per process by :mod:`arielstream.calibration.engine` (``ARIELSTREAM_ENGINE=numexpr``
disables them); without numba everything runs on numexpr, unchanged.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

numba: ModuleType | None  # None without numba; its attributes (numba.config's are set at run time) are Any
try:  # pragma: no cover - exercised where numba is installed
    import numba
except ImportError:  # pragma: no cover
    numba = None

POLYNOMIAL_ORDER = 5  # the non-linear kernels are written out for the competition's quintic (6 coefficients)


_series_threads = 0  # threads of the whole-series rejection (0: those of the other kernels)


def _bounded(threads: int) -> int:
    return max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)) if numba is not None else 1


def set_threads(threads: int, series: int | None = None) -> None:
    """Let the compiled kernels use ``threads`` threads (1 to numba's maximum); nothing without numba.

    ``series``: the threads of :func:`reject_temporal_outliers` instead (default:
    ``threads``), a kernel that runs for seconds on whole series, far longer than the
    decode beside it.
    """
    global _series_threads
    if numba is not None:
        numba.set_num_threads(_bounded(threads))
        _series_threads = 0 if series is None else _bounded(series)


if numba is not None:
    # fastmath: "contract" lets LLVM fuse multiply-adds, "reassoc" lets it vectorise the sum of a bin;
    # results are deterministic for a given machine and numba, and differ from numexpr's by ~1e-16.
    _FLAGS = {"contract", "reassoc"}
    prange = numba.prange  # bound here, where numba is known to be installed (the kernels below use it)

    @numba.njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _cds_quintic_bins(raw, q, width):  # pragma: no cover - compiled
        n_pix = raw.shape[0]
        n_bins = raw.shape[1] // (2 * width)
        out = np.empty((n_pix, n_bins))
        for p in prange(n_pix):
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

    @numba.njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _cds_quintic_samples(raw, q):  # pragma: no cover - compiled
        n_pix = raw.shape[0]
        n_pairs = raw.shape[1] // 2
        out = np.empty((n_pix, n_pairs))
        for p in prange(n_pix):
            q1, q2, q3, q4, q5 = q[1, p], q[2, p], q[3, p], q[4, p], q[5, p]
            for i in range(n_pairs):
                s = np.float64(raw[p, 2 * i])
                e = np.float64(raw[p, 2 * i + 1])
                out[p, i] = ((((q5 * e + q4) * e + q3) * e + q2) * e + q1) * e \
                    - ((((q5 * s + q4) * s + q3) * s + q2) * s + q1) * s
        return out

    @numba.njit(nogil=True, inline="always")
    def _clip_largest(acc, acc2, largest, width, sigma, floor):  # pragma: no cover - compiled
        """The bin sum with its largest sample replaced by the others' mean when it stands out; and whether."""
        k = width - 1
        mean = (acc - largest) / k
        variance = (acc2 - largest * largest - k * mean * mean) / (k - 1)
        expected = floor + max(mean, 0.0)  # read noise and photon noise of one sample (electrons)
        if variance < expected:
            variance = expected
        if variance < 0.0:
            variance = 0.0
        if largest - mean > sigma * np.sqrt(variance):
            return mean * width, True
        return acc, False

    @numba.njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _cds_quintic_bins_clipped(raw, q, width, sigma, floor):  # pragma: no cover - compiled
        n_pix = raw.shape[0]
        n_bins = raw.shape[1] // (2 * width)
        out = np.empty((n_pix, n_bins))
        flags = np.zeros((n_pix, n_bins), dtype=np.bool_)
        for p in prange(n_pix):
            q1, q2, q3, q4, q5 = q[1, p], q[2, p], q[3, p], q[4, p], q[5, p]
            samples = np.empty(width)
            for b in range(n_bins):
                acc = 0.0
                acc2 = 0.0
                base = 2 * width * b
                for i in range(width):  # vectorised: no max in this loop (it would keep LLVM from it)
                    s = np.float64(raw[p, base + 2 * i])
                    e = np.float64(raw[p, base + 2 * i + 1])
                    v = ((((q5 * e + q4) * e + q3) * e + q2) * e + q1) * e \
                        - ((((q5 * s + q4) * s + q3) * s + q2) * s + q1) * s
                    samples[i] = v
                    acc += v
                    acc2 += v * v
                largest = samples[0]
                for i in range(1, width):
                    largest = max(largest, samples[i])
                if width >= 3:
                    out[p, b], flags[p, b] = _clip_largest(acc, acc2, largest, width, sigma, floor[p])
                else:
                    out[p, b] = acc
        return out, flags

    @numba.njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _clip_bins(x, width, sigma, floor):  # pragma: no cover - compiled
        n_pix = x.shape[0]
        n_bins = x.shape[1] // width
        out = np.empty((n_pix, n_bins))
        flags = np.zeros((n_pix, n_bins), dtype=np.bool_)
        for p in prange(n_pix):
            for b in range(n_bins):
                acc = 0.0
                acc2 = 0.0
                largest = -np.inf
                for i in range(width * b, width * (b + 1)):
                    v = x[p, i]
                    acc += v
                    acc2 += v * v
                    largest = max(largest, v)
                if width >= 3:
                    out[p, b], flags[p, b] = _clip_largest(acc, acc2, largest, width, sigma, floor[p])
                else:
                    out[p, b] = acc
        return out, flags

    @numba.njit(parallel=True, nogil=True, cache=True)
    def _cds_count_bins(raw, width):  # pragma: no cover - compiled
        n_pix = raw.shape[0]
        n_bins = raw.shape[1] // (2 * width)
        out = np.empty((n_pix, n_bins), dtype=np.int64)
        for p in prange(n_pix):
            for b in range(n_bins):
                acc = 0
                base = 2 * width * b
                for i in range(width):
                    acc += np.int64(raw[p, base + 2 * i + 1]) - np.int64(raw[p, base + 2 * i])
                out[p, b] = acc
        return out


if numba is not None:

    @numba.njit(parallel=True, nogil=True, cache=True)
    def _saturated_bins(raw, level, frames_per_bin):  # pragma: no cover - compiled
        n_pix = raw.shape[0]
        n_bins = raw.shape[1] // frames_per_bin
        out = np.zeros((n_pix, n_bins), dtype=np.int64)
        for p in prange(n_pix):
            for b in range(n_bins):
                n = 0
                base = frames_per_bin * b
                for i in range(frames_per_bin):
                    if raw[p, base + i] >= level:
                        n += 1
                out[p, b] = n
        return out


def saturated_bins(raw: np.ndarray, level: int, frames_per_bin: int) -> np.ndarray:
    """Reads ``>= level`` per pixel and bin of raw ``(P, frames)`` uint16, ``(P, bins)`` int64, in one pass.

    Compiled twin of :func:`arielstream.calibration.steps.saturated_reads`; frames must span whole bins.
    """
    return _saturated_bins(raw, int(level), int(frames_per_bin))


def cds_polynomial_bins(raw: np.ndarray, q: np.ndarray, width: int) -> np.ndarray:
    """``sum over each bin of Q(end) - Q(start)`` for raw ``(P, frames)`` uint16; ``q`` is ``(6, P)``.

    ``q`` holds the coefficients in raw counts (:func:`arielstream.calibration.kernels.fold_adc`);
    the constant ``q0`` cancels and is not used. Frames must span whole bins.
    """
    return _cds_quintic_bins(raw, np.ascontiguousarray(q, dtype=np.float64), int(width))


def cds_polynomial_samples(raw: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``Q(end) - Q(start)`` of every CDS pair of raw ``(P, frames)`` uint16: the ``(P, pairs)`` series, float64.

    What cosmic-ray rejection needs (every sample, not only the bin sums); ``q`` as
    in :func:`cds_polynomial_bins`.
    """
    return _cds_quintic_samples(raw, np.ascontiguousarray(q, dtype=np.float64))


def cds_polynomial_bins_clipped(raw: np.ndarray, q: np.ndarray, width: int, sigma: float,
                                floor_variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cds_polynomial_bins` with each bin's largest sample rejected when it stands out (one pass).

    Compiled twin of :func:`arielstream.calibration.steps.reject_bin_maxima` applied to the
    CDS series, fused into the pass that makes the bin sums: ``(binned, flagged)``.
    """
    return _cds_quintic_bins_clipped(raw, np.ascontiguousarray(q, dtype=np.float64), int(width), float(sigma),
                                     np.ascontiguousarray(floor_variance, dtype=np.float64))


def reject_bin_maxima(samples: np.ndarray, width: int, sigma: float = 5.0,
                      floor_variance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Compiled twin of :func:`arielstream.calibration.steps.reject_bin_maxima` (same arguments and results)."""
    x = np.ascontiguousarray(samples, dtype=np.float64)
    if x.shape[1] % width:
        raise ValueError(f"{x.shape[1]} samples do not split into bins of {width}")
    floor = np.full(x.shape[0], -np.inf) if floor_variance is None else \
        np.ascontiguousarray(floor_variance, dtype=np.float64)
    return _clip_bins(x, int(width), float(sigma), floor)


def cds_count_bins(raw: np.ndarray, width: int) -> np.ndarray:
    """``sum over each bin of end - start`` in raw counts (int64, exact)."""
    return _cds_count_bins(raw, int(width))


if numba is not None:

    @numba.njit(nogil=True, cache=True)
    def _median_sorting(a, k):  # pragma: no cover - compiled
        """Median of ``a[:k]``, reordering it in place: insertion sort when short, quickselect otherwise.

        Much cheaper than ``np.median``, which copies, on the millions of short bins.
        """
        if k == 0:
            return np.nan
        if k <= 64:  # insertion sort: no call overhead on the short bins
            for i in range(1, k):
                v = a[i]
                j = i - 1
                while j >= 0 and a[j] > v:
                    a[j + 1] = a[j]
                    j -= 1
                a[j + 1] = v
            half = k // 2
            return a[half] if k % 2 else 0.5 * (a[half - 1] + a[half])
        half = k // 2
        upper = _select(a, k, half)
        if k % 2:
            return upper
        lower = a[0]  # after the selection a[:half] holds the smaller half: its maximum
        for i in range(1, half):
            if a[i] > lower:
                lower = a[i]
        return 0.5 * (lower + upper)

    @numba.njit(nogil=True, cache=True)
    def _select(a, k, n):  # pragma: no cover - compiled
        """Quickselect: reorder ``a[:k]`` so that ``a[n]`` is its n-th smallest and return it."""
        lo, hi = 0, k - 1
        while lo < hi:
            pivot = a[(lo + hi) // 2]
            i, j = lo, hi
            while i <= j:
                while a[i] < pivot:
                    i += 1
                while a[j] > pivot:
                    j -= 1
                if i <= j:
                    a[i], a[j] = a[j], a[i]
                    i += 1
                    j -= 1
            if n <= j:
                hi = j
            elif n >= i:
                lo = i
            else:
                break
        return a[n]

    @numba.njit(nogil=True, cache=True)
    def _refresh_statistics(xp, flags, width, ref, dirty, tmp, absr):  # pragma: no cover - compiled
        """One pixel's statistics: the medians ``ref`` of its ``dirty`` bins, then its robust spread (returned).

        ``xp`` and ``flags`` are the pixel's series and flags; flagged samples are left
        out. ``tmp`` (``width``) and ``absr`` (the series' length) are scratch.
        """
        for b in range(ref.shape[0]):
            if not dirty[b]:
                continue
            k = 0
            for i in range(width):
                if not flags[b * width + i]:
                    tmp[k] = xp[b * width + i]
                    k += 1
            ref[b] = _median_sorting(tmp, k)
            dirty[b] = False
        k = 0
        for t in range(xp.shape[0]):
            if not flags[t]:
                absr[k] = abs(xp[t] - ref[t // width])
                k += 1
        return 1.4826 * _median_sorting(absr, k)

    @numba.njit(nogil=True, cache=True)
    def _bin_unflagged(xp, flags, width, replace_median, tmp, out):  # pragma: no cover - compiled
        """One pixel's bin sums into ``out``, without its flagged samples.

        A flagged sample is replaced by the median of the rest of its bin
        (``replace_median``), or left out with the bin's sum rescaled to ``width``
        samples. ``tmp`` (``width``) is scratch.
        """
        for b in range(out.shape[0]):
            k = 0
            for i in range(width):
                if not flags[b * width + i]:
                    tmp[k] = xp[b * width + i]
                    k += 1
            median = _median_sorting(tmp, k) if replace_median and k < width else np.nan
            acc = 0.0
            for i in range(width):
                t = b * width + i
                if not flags[t]:
                    acc += xp[t]
                elif replace_median:
                    acc += median
            out[b] = acc if replace_median else (acc * width / k if k > 0 else np.nan)

    @numba.njit(parallel=True, nogil=True, cache=True)
    def _reject_outliers(x, width, levels, n_fixed, replace_median):  # pragma: no cover - compiled
        n_pix, n = x.shape
        n_bins = n // width
        flags = np.zeros((n_pix, n), dtype=np.bool_)
        binned = np.empty((n_pix, n_bins))
        for p in prange(n_pix):
            xp, fp = x[p], flags[p]
            ref = np.empty(n_bins)
            tmp = np.empty(width)
            absr = np.empty(n)
            dirty = np.ones(n_bins, dtype=np.bool_)  # bins whose median must be (re)computed
            spread = np.nan
            changed = True
            for it in range(levels.shape[0]):
                if changed:  # statistics only move when flags did
                    spread = _refresh_statistics(xp, fp, width, ref, dirty, tmp, absr)
                new = 0
                for t in range(n):
                    if not fp[t] and abs(xp[t] - ref[t // width]) > levels[it] * spread:
                        fp[t] = True
                        dirty[t // width] = True
                        new += 1
                changed = new > 0
                if it >= n_fixed and new == 0:
                    break
            _bin_unflagged(xp, fp, width, replace_median, tmp, binned[p])
        return binned, flags


def reject_temporal_outliers(samples: np.ndarray, width: int, sigmas: tuple[float, ...] = (8.0,),
                             until_clean: bool = True, clean_sigma: float = 5.0, max_iters: int = 10,
                             replace: str = "median") -> tuple[np.ndarray, np.ndarray]:
    """Compiled twin of :func:`arielstream.calibration.steps.reject_temporal_outliers` (same arguments and results)."""
    levels = np.array(list(sigmas) + ([clean_sigma] * max_iters if until_clean else []), dtype=np.float64)
    assert numba is not None, "the compiled kernels need numba"
    before = numba.get_num_threads()
    numba.set_num_threads(_series_threads or before)
    try:
        return _reject_outliers(np.ascontiguousarray(samples, dtype=np.float64), int(width), levels, len(sigmas),
                                replace == "median")
    finally:
        numba.set_num_threads(before)
