"""Memory policy in one place: byte budgets, chunk sizes, process memory readings.

The chunk size is derived from the byte budget and from the shape of the file
(frames held at once for a block), never hard-coded; the choice is logged.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from dataclasses import dataclass

from .config import ConfigError
from .errors import MemoryBudgetError

log = logging.getLogger(__name__)

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

# Bytes in flight per decoded raw value (pixel x frame) while a read of a block is resident:
# pyarrow's pool (~2.8, measured) and the pixel-major uint16 copy (2) gave 5.2-6.9 bytes of peak
# RSS per value in measurements on full-size files; plus the concatenated copy (2) when frames are
# carried across unaligned row groups. See BENCHMARKS.md.
RESIDENT_BYTES_PER_VALUE = 8
# Bytes per raw value of the computation of a chunk: float32 copies of both reads (4),
# the float64 non-linear CDS (4), numexpr and binning temporaries (~2).
COMPUTE_BYTES_PER_VALUE = 10
# Fixed cost of decoding one column in a read, whatever its length: pyarrow's column reader,
# page and decompression buffers (measured 18-27 kB per column on 11k-column files, BENCHMARKS.md).
# It dominates for short files: reading all 9,024 AIRS columns of a 270-frame file costs ~150 MB.
COLUMN_OVERHEAD_BYTES = 24_000
# Reads decoded at once for one block: the one being calibrated and the next, prefetched
# in the background (arielstream.reader.prefetch).
READS_IN_FLIGHT = 2
# Chunks bigger than this buy no speed (decode time is flat from one spatial row per block
# upwards, see BENCHMARKS.md); a larger --memory is left unused, and one worker stays near 300 MB.
MAX_CHUNK_BYTES = 64 * 10**6


def parse_bytes(text: str | int) -> int:
    """``"2GB"`` → 2_000_000_000; ``"512MiB"``, ``"300M"`` and plain integers too."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).upper() not in _UNITS:
            raise ConfigError(f"not a memory size: {text!r} (use e.g. 2GB, 512MB, 1.5GiB)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ConfigError(f"memory size must be positive: {text!r}")
    return value


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


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
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


@dataclass(frozen=True)
class ChunkPlan:
    block_pixels: int  # pixels decoded together
    rows_per_read: int  # frames decoded per read of a block (whole row groups, at least this many)
    chunk_frames: int | None  # frames calibrated together (None: a whole read)
    estimated_bytes: int

    def describe(self) -> str:
        frames = "whole reads" if self.chunk_frames is None else f"{self.chunk_frames} frames"
        return (f"blocks of {self.block_pixels} pixels, reads of >= {self.rows_per_read} frames, chunks of "
                f"{frames} (~{format_bytes(self.estimated_bytes)} in flight)")


def plan_chunks(n_pixels: int, pixels_per_row: int, row_group_rows: list[int], n_frames: int,
                frames_per_bin: int, budget: int, whole_series: bool = False) -> ChunkPlan:
    """Largest blocks and reads whose decode and calibration fit in ``budget`` bytes.

    A read decodes the block's columns of consecutive whole row groups, at least
    ``rows_per_read`` frames (fewer, larger reads are much faster on files with many
    small row groups: each column chunk costs a fixed setup). Frames held at once
    are bounded by a read, an overshoot of less than one row group and the carry
    of less than one bin. Blocks are whole spatial rows when at least one row fits:
    reads are shortened first (down to one row group) to keep whole rows; if even
    one pixel of a read does not fit, the calibration works through it in short
    chunks of whole bins. With ``whole_series`` (the temporal steps) reads and chunks
    always span all frames and only the blocks shrink.
    """
    starts = [0]
    for rows in row_group_rows[:-1]:
        starts.append(starts[-1] + rows)
    used = [rows for start, rows in zip(starts, row_group_rows, strict=True) if start < n_frames]
    largest = max(used, default=0)
    available = sum(used)

    def in_flight(target: int) -> int:
        return min(target + largest - 1, available) + frames_per_bin

    resident = READS_IN_FLIGHT * RESIDENT_BYTES_PER_VALUE
    fixed = READS_IN_FLIGHT * COLUMN_OVERHEAD_BYTES  # per pixel (one column each)
    target = n_frames
    while True:
        per_pixel = in_flight(target) * (resident + COMPUTE_BYTES_PER_VALUE) + fixed
        block = budget // per_pixel
        if block >= min(pixels_per_row, n_pixels) or target <= largest or whole_series:
            break
        target = max(largest, target // 2)
    rows = in_flight(target)
    chunk_frames = None
    if block < 1 and whole_series:
        raise MemoryBudgetError(
            f"a memory budget of {format_bytes(budget)} for chunks cannot hold one pixel's whole series "
            f"({rows} frames, needs {format_bytes(per_pixel)}), which the temporal steps need")
    if block < 1:
        per_pixel = rows * resident + frames_per_bin * COMPUTE_BYTES_PER_VALUE + fixed
        block = budget // per_pixel
        chunk_frames = frames_per_bin
        if block < 1:
            raise MemoryBudgetError(
                f"a memory budget of {format_bytes(budget)} for chunks cannot hold one pixel of a "
                f"{rows}-frame read (needs {format_bytes(per_pixel)})")
    block = min(block, n_pixels)
    if block >= pixels_per_row:
        block = block // pixels_per_row * pixels_per_row
    if chunk_frames is not None:
        # spend what the resident data leaves on longer chunks
        spare = budget - block * (rows * resident + fixed)
        chunk_frames = max(frames_per_bin,
                           spare // (block * COMPUTE_BYTES_PER_VALUE) // frames_per_bin * frames_per_bin)
        estimated = block * (rows * resident + chunk_frames * COMPUTE_BYTES_PER_VALUE + fixed)
    else:
        estimated = block * per_pixel
    return ChunkPlan(int(block), int(target), chunk_frames, int(estimated))
