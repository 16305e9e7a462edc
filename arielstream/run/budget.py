"""Memory and cores: what this process holds, what the machine (or container) offers, and the parallel policy.

Host-wide figures lie inside containers: the memory limit is read from the cgroup
(v2 ``memory.max``, v1 ``memory.limit_in_bytes``) and the cores from the CPU
affinity and the cgroup CPU quota. :func:`plan_workers` is the one place that
turns a RAM budget into a worker count, a thread count per worker and a chunk
budget per worker; the choice is logged by the runner. How a chunk budget becomes
blocks and reads of a file is :func:`arielstream.io.signal.plan_chunks`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import MemoryBudgetError, OutOfMemoryError, flag
from ..units import format_bytes

log = logging.getLogger(__name__)

# A worker whose chunks get less than this is slower than one more worker is worth.
MIN_CHUNK_BYTES = 48 * 10**6
# Chunks bigger than this buy no speed (decoding the raw frames, :mod:`..io.signal`, takes as long
# from one spatial row per block upwards, see BENCHMARKS.md); a larger --memory is left unused, and
# one worker stays near 300 MB. (Here, not in io.signal: the command loads this module, not pyarrow.)
MAX_CHUNK_BYTES = 64 * 10**6
# Per-process allowance beyond the measured import footprint: the output slice of an
# observation being written (~8 MB AIRS), calibration frames, Parquet footers (~40 MB for a
# one-row-group AIRS file), allocator slack.
PROCESS_RESERVE_BYTES = 64 * 10**6
# What a fresh worker process holds before any data: the interpreter with numpy, pyarrow, h5py,
# numexpr and numba imported (~210 MB measured by `arielstream calibrate`, "per process before
# data"; BENCHMARKS.md: ~142 MB of imports, ~47 MB numba, ~40 MB Parquet libraries). Workers are
# new processes (loky, dask): they never inherit what the calling process holds, so a notebook
# kernel with gigabytes of its own data is counted once, as the coordinator, not once per worker.
WORKER_PROCESS_BYTES = 240 * 10**6
# Under an address-space limit (ulimit -v, RLIMIT_AS) a process reserves several times what it
# holds: thread stacks, malloc arenas, mapped libraries, allocator pools; the plan scales what the
# process holds. With the command's allocators (Arrow's system pool, one arena: MALLOC_ARENAS) a run on
# the samples peaks at 0.62-0.65 GB of address space for ~165 MB resident before data, and the plan asks
# for ~1 GB. Before them (mimalloc reserves 1 GiB, every thread's arena 64 MB) it reached ~2 GB, and a
# 1000 MB limit the plan accepted could abort in glibc ("cannot allocate memory for thread-local data").
# A process that calibrates in the caller's Python (jobs=1 from a notebook) keeps the caller's allocators.
ADDRESS_SPACE_PER_RESIDENT_BYTE = 4
THREAD_STACK_BYTES = 8 * 2**20
# What out-of-memory looks like when it does not arrive as MemoryError (Arrow, numpy, C++, glibc).
OUT_OF_MEMORY_MESSAGES = ("out of memory", "bad_alloc", "failed to launch worker thread", "unable to allocate",
                          "cannot allocate memory", "can't start new thread")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def _cgroup_paths() -> list[tuple[str, str]]:
    """``(controllers, path)`` of each cgroup line of this process ("" controllers: cgroup v2)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    return [(parts[1], parts[2]) for parts in (line.split(":", 2) for line in lines) if len(parts) == 3]


def cgroup_memory_limit() -> int | None:
    """The container's memory limit in bytes, or None where there is none."""
    candidates = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    for controllers, path in _cgroup_paths():
        if controllers == "":
            candidates.insert(0, f"/sys/fs/cgroup{path}/memory.max")
        elif "memory" in controllers.split(","):
            candidates.insert(0, f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
    for candidate in candidates:
        value = _read_int(candidate)
        if value is not None and value < 2**60:  # v1 reports "no limit" as a huge number
            return value
    return None


def address_space_limit() -> int | None:
    """This process's address-space limit (``ulimit -v``, ``RLIMIT_AS``) in bytes, or None."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if limit == resource.RLIM_INFINITY else int(limit)


def address_headroom() -> int | None:
    """What an address-space limit lets one process hold (bytes): a third of the limit; None: no limit.

    Workers inherit the limit and hold about what the coordinator does (the same imports).
    """
    limit = address_space_limit()
    return None if limit is None else limit // ADDRESS_SPACE_PER_RESIDENT_BYTE


def effective_budget(budget: int) -> int:
    """``budget``, or the container's memory limit (cgroup ``memory.max``) when that is lower (logged)."""
    limit = cgroup_memory_limit()
    if limit is not None and limit < budget:
        log.warning("%s is above this container's memory limit %s (cgroup memory.max): planning for %s",
                    flag("memory", format_bytes(budget)), format_bytes(limit), format_bytes(limit))
        return limit
    return budget


def out_of_memory_cause(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain (itself, what it was raised from or during) saying memory ran out.

    ``MemoryError``, ``ENOMEM``, and the messages Arrow, numpy and C++ give when an
    allocation or a thread fails: a reader that wraps them in an input error must not
    get the input blamed. None: not a lack of memory.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or getattr(current, "errno", None) == errno.ENOMEM:
            return current
        text = str(current).lower()
        if any(marker in text for marker in OUT_OF_MEMORY_MESSAGES):
            return current
        if "failed to map segment" in text and address_space_limit() is not None:
            return current  # dlopen of a library (numba's LLVM) under ulimit -v; elsewhere e.g. a noexec mount
        current = current.__cause__ or current.__context__
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means memory ran out, not bad data (:func:`out_of_memory_cause`)."""
    return out_of_memory_cause(exc) is not None


def physical_memory() -> int:
    """The machine's RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_memory() -> int:
    """The RAM this process tree may use: the cgroup limit, else the machine's."""
    limit = cgroup_memory_limit()
    return min(limit, physical_memory()) if limit else physical_memory()


def available_cores() -> int:
    """Cores this process may run on: ``joblib.cpu_count()``.

    The least of the CPU count, the CPU affinity (``taskset``), the cgroup CPU quota
    (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``: docker, Kaggle; a fractional quota is
    rounded up) and ``LOKY_MAX_CPU_COUNT`` where set: the count the loky pool itself
    goes by.
    """
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def peak_rss() -> int:
    """Peak resident set size of this process so far (bytes).

    Read from ``VmHWM``, which starts afresh at ``exec``: ``getrusage``'s ``ru_maxrss``
    survives fork+exec on Linux and would report a big parent's size as ours.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pin_threads(threads: int) -> None:
    """Limit this process's compute threads (numexpr, Arrow, numba) to ``threads``.

    numba's compiled kernels get one thread fewer (at least one): they run while the
    prefetch thread decodes the next chunk with Arrow's pool, and numba's OpenMP threads
    spin between kernels. On 2 cores, one worker, a full-size observation took 1.28 s
    (2.0 CPU-seconds) with 2 kernel threads and 0.97 s (1.4) with 1; the full profile
    1.59 against 1.22 s. The whole-series cosmic-ray rejection, seconds of compute beside
    a short decode, keeps ``threads`` (+3.4 s with one thread, +1.7-2.1 s with two). numexpr
    keeps ``threads``: its evaluation, not the decode, is the longer stage there (1.65 s
    with 2 threads, 2.0 s with 1; BENCHMARKS.md).
    BLAS/OpenMP pools are fixed when numpy loads; loky workers get their limits from
    joblib (``inner_max_num_threads``) before they start. arielstream calls no BLAS.
    """
    import numexpr
    import pyarrow

    from ..calibration import compiled

    threads = max(1, int(threads))
    numexpr.set_num_threads(threads)
    pyarrow.set_cpu_count(threads)
    compiled.set_threads(max(1, threads - 1), series=threads)


@dataclass(frozen=True)
class WorkerPlan:
    """What :func:`plan_workers` decided for a run."""

    jobs: int
    threads: int  # compute threads per worker
    chunk_bytes: int  # chunk budget per worker
    budget: int
    process_bytes: int  # measured footprint of one process before any data

    def describe(self) -> str:
        """One line for the log."""
        return (f"{self.jobs} worker(s) x {self.threads} thread(s), {format_bytes(self.chunk_bytes)} of chunks each "
                f"(budget {format_bytes(self.budget)}, {format_bytes(self.process_bytes)} per process before data)")

    @property
    def promised_peak(self) -> int:
        """What the process tree may hold at most under this plan."""
        workers = self.jobs if self.jobs > 1 else 0
        per_process = self.process_bytes + PROCESS_RESERVE_BYTES
        return per_process + workers * per_process + self.jobs * self.chunk_bytes


def _address_space_plan(headroom: int, process_bytes: int, threads: int, chunk: int) -> tuple[int, int]:
    """Threads and chunk budget for a process that may hold ``headroom`` bytes under an address-space limit."""
    def fits(n: int) -> int:
        return headroom - process_bytes - PROCESS_RESERVE_BYTES - n * THREAD_STACK_BYTES

    while threads > 1 and fits(threads) < MIN_CHUNK_BYTES // 4:
        threads -= 1
    if fits(threads) < MIN_CHUNK_BYTES // 4:
        need = ADDRESS_SPACE_PER_RESIDENT_BYTE * (headroom - fits(1) + MIN_CHUNK_BYTES // 4)
        raise OutOfMemoryError(
            f"out of memory: the address-space limit (ulimit -v) of "
            f"{format_bytes(headroom * ADDRESS_SPACE_PER_RESIDENT_BYTE)} is too small for a process that holds "
            f"{format_bytes(process_bytes)} before any data; it needs at least {format_bytes(need)}: raise the limit")
    log.info("the address-space limit (ulimit -v) lets each process hold about %s: %d thread(s), chunks up to %s",
             format_bytes(headroom), threads, format_bytes(fits(threads)))
    return threads, min(chunk, fits(threads))


def plan_workers(budget: int, n_tasks: int, jobs: int | None, cores: int, process_bytes: int,
                 max_chunk: int = MAX_CHUNK_BYTES, address_headroom: int | None = None) -> WorkerPlan:
    """Worker count, threads and chunk budget for a RAM ``budget`` (bytes) shared by the tree.

    ``process_bytes`` is the measured resident size of the calling process before
    it reads any data. Workers import the same modules but start empty, so each is
    counted as the smaller of that and :data:`WORKER_PROCESS_BYTES`. With one job
    everything runs in the coordinator; with more, each worker is a process of its own.
    ``jobs=None`` means "auto": as many workers as cores and tasks allow while each
    still gets at least ``MIN_CHUNK_BYTES``. An explicit ``jobs`` is capped by the cores and
    the tasks too (``--jobs 24`` on two cores starts two workers; the runner logs the cap).
    ``address_headroom`` is what an address-space limit lets each process hold
    (:func:`address_headroom`): threads and chunks shrink to fit it, or the run is refused
    (:class:`OutOfMemoryError`) before anything is written.
    """
    per_process = process_bytes + PROCESS_RESERVE_BYTES  # the coordinator (and the only process with one job)
    per_worker = min(process_bytes, WORKER_PROCESS_BYTES) + PROCESS_RESERVE_BYTES

    def chunk_for(n: int) -> int:
        workers = n if n > 1 else 0
        return (budget - per_process - workers * per_worker) // n

    limit = max(1, min(cores, n_tasks))
    if jobs is None:
        jobs = 1
        for n in range(limit, 0, -1):
            if chunk_for(n) >= MIN_CHUNK_BYTES:
                jobs = n
                break
    jobs = min(max(1, int(jobs)), limit)  # more would only share the cores, or wait with nothing to do
    chunk = min(chunk_for(jobs), max_chunk)
    if chunk < MIN_CHUNK_BYTES // 4:
        workers = jobs if jobs > 1 else 0
        need = per_process + workers * per_worker + jobs * MIN_CHUNK_BYTES // 4
        holds = (f"this process holds ~{format_bytes(per_process)}" +
                 (f" and each worker ~{format_bytes(per_worker)}" if workers else "") + " before any data")
        raise MemoryBudgetError(
            f"memory budget {format_bytes(budget)} is too small for {jobs} worker(s): {holds}; "
            f"at least {format_bytes(need)} is needed")
    threads = max(1, cores // jobs)
    if address_headroom is not None:
        threads, chunk = _address_space_plan(address_headroom, process_bytes, threads, chunk)
    return WorkerPlan(jobs, threads, int(chunk), budget, process_bytes)


def current_rss() -> int:
    """Resident set size of this process now (bytes); 0 where /proc is absent."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_memory() -> None:
    """Give memory that this process freed back to the system, so that its RSS measures what it holds.

    glibc keeps freed heap pages (a test that read a 1 GB table left the process at
    1.8 GB of RSS, 0.3 GB after ``malloc_trim``); Arrow's pool keeps its own. The
    run measures its process's size to plan the budget, and trims after each
    observation so that a long-lived worker does not carry one observation's
    garbage into the next. A no-op where glibc is absent.
    """
    import gc

    gc.collect()
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


# glibc gives every new thread a malloc arena of its own, up to 8 per core, each reserving 64 MB of
# address space and keeping its own freed pages: one arena held a full-size observation's peak at
# 281-282 MB against 300-304 MB (2 cores, one worker, 3 runs each, no time cost; BENCHMARKS.md), and
# keeps the address space a run reserves from growing with its threads. Applied to the command's
# process (mallopt) and to the workers a run starts (the environment); a value the user set wins.
MALLOC_ARENAS = 1
ARENA_ENV = "MALLOC_ARENA_MAX"
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas() -> bool:
    """Cap this process's malloc arenas at :data:`MALLOC_ARENAS` (arenas made from now on); True when done.

    Nothing where the user set ``MALLOC_ARENA_MAX`` (glibc read it at start) or glibc is absent.
    Process-wide: called by the command line for its own process, never by a library call.
    """
    if ARENA_ENV in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    return mallopt is not None and mallopt(_M_ARENA_MAX, MALLOC_ARENAS) == 1


@functools.cache
def _libc_function(name: str):
    try:
        import ctypes

        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None
