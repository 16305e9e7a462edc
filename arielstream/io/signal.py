"""Streaming reader of the wide signal Parquet files, in memory-bounded aligned chunks.

A signal file has one uint16 column per pixel and one row per frame. The reader
decodes it **column block by column block within each row group**: a block is a
set of needed pixels (whole spatial rows when the budget allows), and for each
block the row groups are read in order, carrying the frames that do not yet
complete a time bin over to the next row group. Every chunk handed out starts on
an even (start-of-exposure) frame and spans whole multiples of the frames of a
bin, so the calibration of a chunk never needs its neighbours, and each column
chunk of the file is decoded exactly once whatever the row-group layout.

How much is read at once is :func:`plan_chunks`, from the byte budget and the
shape of the file, never hard-coded; the choice is logged.

Why column blocks and not ``iter_batches``: on 11k-column tables small batches
pay a per-column cost on every batch and do not bound memory (``iter_batches``
peaked at ~4.7x the decoded row group), while projecting a row group onto a
block of columns decodes only those columns and bounds memory by the block (see
``BENCHMARKS.md`` for the measurements on this machine).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, MemoryBudgetError
from ..layout import Instrument
from ..units import format_bytes
from .storage import DataPath, RemotePath, data_path, open_input

log = logging.getLogger(__name__)

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
# in the background (:func:`prefetch` below).
READS_IN_FLIGHT = 2


# pyarrow >= 15 verifies the CRC of every Parquet page written with one (write_page_checksum) as it decodes it;
# pyarrow 14, the floor in setup.cfg, has no such option and decodes those pages unverified (README).
PAGE_CHECKSUM_VERIFICATION = "page_checksum_verification" in inspect.signature(pq.ParquetFile).parameters


def open_parquet(path: str | DataPath, **options) -> pq.ParquetFile:
    """``pq.ParquetFile(path, **options)``, verifying page checksums where this pyarrow can (>= 15).

    A file under a URL is read through its filesystem's input file (:func:`.storage.open_input`).
    """
    source = open_input(data_path(path))
    if PAGE_CHECKSUM_VERIFICATION:
        return pq.ParquetFile(source, page_checksum_verification=True, **options)
    _unverified_once()
    return pq.ParquetFile(source, **options)


@functools.cache
def _unverified_once() -> None:
    log.debug("pyarrow %s cannot verify Parquet page checksums (pyarrow >= 15 can): pages written with one "
              "are decoded unverified", pa.__version__)


def damaged(exc: BaseException) -> str:
    """``" (page checksum mismatch: the file is damaged)"`` when pyarrow's error is a failed page CRC, else ``""``."""
    return " (page checksum mismatch: the file is damaged)" if "checksum" in str(exc).lower() else ""


def columns_into(columns: Sequence[pa.ChunkedArray], out: np.ndarray) -> np.ndarray:
    """Copy columns of ``out``'s type (uint16, float64 or bool) into the rows of ``out``: ``out[i]`` = column i.

    Reads the chunks' buffers directly, without ``to_numpy``: pyarrow's conversion to numpy
    goes through its pandas layer, which imports pandas on first use (+45 MB of RSS in every
    worker, pyarrow 26; so do ``pa.scalar`` and ``fill_null``), and a chunked column's
    ``to_numpy`` copies once more before the copy into ``out``. The caller casts the columns
    first. Nulls become NaN in a float ``out`` and are refused otherwise.
    """
    arrow_type = pa.from_numpy_dtype(out.dtype)
    dtype, size, packed = out.dtype, out.dtype.itemsize, out.dtype == np.bool_
    if len(columns) != out.shape[0]:
        raise ValueError(f"columns_into: {len(columns)} columns for {out.shape[0]} rows of out")
    for row, column in zip(out, columns, strict=True):
        if column.type != arrow_type:
            raise TypeError(f"columns_into: a {column.type} column into a {dtype} array")
        chunks = column.chunks
        if len(chunks) == 1 and not packed and not column.null_count and len(chunks[0]) == row.shape[0] > 0:
            chunk = chunks[0]  # the common case: one chunk, no nulls (the loop below, shorter)
            row[:] = np.frombuffer(chunk.buffers()[1], dtype, row.shape[0], chunk.offset * size)
            continue
        start = 0
        for chunk in chunks:
            n, offset = len(chunk), chunk.offset
            if n == 0:  # (its buffers may be absent)
                continue
            validity, values = chunk.buffers()[:2]
            if packed:
                row[start:start + n] = _bits(values, offset, n)
            else:
                row[start:start + n] = np.frombuffer(values, dtype, n, offset * size)
            if chunk.null_count:
                if dtype.kind != "f":
                    raise ValueError(f"columns_into: {chunk.null_count} null value(s) in a {dtype} column")
                row[start:start + n][_bits(validity, offset, n) == 0] = np.nan
            start += n
        if start != row.shape[0]:
            raise ValueError(f"columns_into: {start} values for {row.shape[0]} rows")
    return out


def _bits(buffer: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """Bits ``offset:offset + n`` of an Arrow bitmap (least significant bit first) as 0/1 bytes."""
    return np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")[offset:offset + n]


@dataclass(frozen=True)
class ChunkPlan:
    """How a file is read within a budget: see :func:`plan_chunks`."""

    block_pixels: int  # pixels decoded together
    rows_per_read: int  # frames decoded per read of a block (whole row groups, at least this many)
    chunk_frames: int | None  # frames calibrated together (None: a whole read)
    estimated_bytes: int

    def describe(self) -> str:
        """One line for the log."""
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


@dataclass(frozen=True)
class Chunk:
    """Frames ``frame_start:frame_start+n`` of the block's pixels, pixel-major uint16."""

    block: int
    pixels: slice  # range within the list of needed pixels
    frame_start: int
    data: np.ndarray  # (n_pixels, n_frames)

    @property
    def frame_stop(self) -> int:
        """First frame after the chunk."""
        return self.frame_start + self.data.shape[1]


class SignalFile:
    """One ``<INST>_signal_<v>.parquet``, validated on open.

    The schema is checked before any pixel is decoded: the number of columns is
    the detector's pixel count, every column is an integer type (uint16 in the
    competition files; other integer types are cast with an overflow check), and
    the number of frames matches ``axis_info.parquet``.
    """

    def __init__(self, path: str | DataPath, inst: Instrument, expected_frames: int | None = None,
                 use_threads: bool = True):
        self.path = data_path(path)
        self.instrument = inst
        self.use_threads = use_threads
        if not self.path.exists():
            raise InputError(self.path, f"{inst.name} signal file missing")
        try:
            # pages written with a CRC (write_page_checksum) are checked as they are decoded; others are not.
            # pre_buffer: a read's column chunks are fetched in a few coalesced requests (remote files: few GETs)
            self._file = open_parquet(self.path, memory_map=False, pre_buffer=True)
        except FileNotFoundError:  # gone since exists() above
            raise InputError(self.path, f"{inst.name} signal file missing") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(self.path, f"not a readable Parquet file: {exc}") from None
        meta = self._file.metadata
        schema = self._file.schema_arrow
        if meta.num_columns != inst.pixels:
            raise InputError(self.path, f"{meta.num_columns} columns, expected {inst.pixels} "
                             f"(one per pixel of a {inst.rows} x {inst.columns} {inst.name} frame)")
        types = schema.types  # (checked per distinct type: a loop over 11,392 fields cost ~12 ms per open)
        distinct = set(types)
        refused = [types.index(t) for t in distinct if not pa.types.is_integer(t)]
        if refused:
            i = min(refused)  # the first column of a refused type
            raise InputError(self.path, f"column {i} ({schema.field(i).name!r}) has type {types[i]}, expected uint16")
        self.names = schema.names
        if len(set(self.names)) != len(self.names):
            raise InputError(self.path, "duplicate column names; columns are addressed by position and name")
        self._needs_cast = distinct != {pa.uint16()}
        self.n_frames = meta.num_rows
        if expected_frames is not None and self.n_frames != expected_frames:
            raise InputError(self.path, f"{self.n_frames} frames, but axis_info.parquet lists {expected_frames} "
                             f"{inst.name} frames")
        self.row_group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        # the page decoder (io/pages.py) where it handles the file; else pyarrow
        self._pages = _page_reader(self.path, self._file)

    def read_block(self, row_groups: list[int], pixels: np.ndarray) -> np.ndarray:
        """Decode ``pixels`` (flat pixel indices) of consecutive row groups as ``(n_pixels, rows)`` uint16."""
        columns = [self.names[int(p)] for p in pixels]
        where = f"row group {row_groups[0]}" if len(row_groups) == 1 else \
            f"row groups {row_groups[0]}-{row_groups[-1]}"
        if self._pages is not None:
            from . import pages

            try:
                return self._pages.read_block(row_groups, pixels)
            except pages.Unsupported as exc:
                log.info("%s: read with pyarrow, not the page decoder: %s", self.path, exc)
                self._pages = None
            except pages.OutOfRange as exc:
                raise InputError(self.path, f"column {exc.column} does not fit uint16: {exc}") from None
            except pages.PageError as exc:
                raise InputError(self.path, f"{where} could not be decoded: {exc}") from None
        try:
            table = self._file.read_row_groups(row_groups, columns=columns, use_threads=self.use_threads)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(self.path, f"{where} could not be decoded{damaged(exc)}: {exc}") from None
        out = np.empty((len(columns), table.num_rows), dtype=np.uint16)
        values = table.columns
        for i, column in enumerate(values):
            if column.null_count:
                raise InputError(self.path, f"column {int(pixels[i])} has {column.null_count} null value(s) "
                                 f"in {where}")
            if self._needs_cast:
                try:
                    values[i] = column.cast(pa.uint16())
                except pa.ArrowInvalid as exc:
                    raise InputError(self.path, f"column {int(pixels[i])} does not fit uint16: {exc}") from None
        return columns_into(values, out)

    def _reads(self, n_frames: int, rows_per_read: int) -> list[tuple[int, list[int]]]:
        """Consecutive row groups gathered into reads of at least ``rows_per_read`` frames."""
        reads: list[tuple[int, list[int]]] = []
        start = 0
        for rg, rows in enumerate(self.row_group_rows):
            if start >= n_frames:
                break
            if reads and sum(self.row_group_rows[g] for g in reads[-1][1]) < rows_per_read:
                reads[-1][1].append(rg)
            else:
                reads.append((start, [rg]))
            start += rows
        return reads

    def iter_chunks(self, pixels: np.ndarray, plan: ChunkPlan, n_frames: int,
                    frames_per_bin: int) -> Iterator[Chunk]:
        """Yield aligned chunks covering frames ``0:n_frames`` of every pixel in ``pixels``.

        ``n_frames`` must be a multiple of ``frames_per_bin``; frames after it are
        decoded only as far as their row group holds needed frames too. Each column
        chunk of the file is decoded once. Chunks hold at most ``plan.chunk_frames``
        frames (``None``: as many whole bins as a read gives).
        """
        if n_frames % frames_per_bin:
            raise ValueError(f"{n_frames} frames do not split into bins of {frames_per_bin}")
        if n_frames > self.n_frames:
            raise ValueError(f"{self.path}: asked for {n_frames} frames, the file has {self.n_frames}")
        step = None if plan.chunk_frames is None else \
            max(frames_per_bin, plan.chunk_frames // frames_per_bin * frames_per_bin)
        reads = self._reads(n_frames, plan.rows_per_read)
        try:
            for block, first in enumerate(range(0, len(pixels), plan.block_pixels)):
                sel = slice(first, min(first + plan.block_pixels, len(pixels)))
                carry: np.ndarray | None = None
                position = 0  # first frame not yet handed out
                for read_start, row_groups in reads:
                    data = self.read_block(row_groups, pixels[sel])
                    data = data[:, : n_frames - read_start]
                    if carry is not None:
                        data = np.concatenate([carry, data], axis=1)
                    usable = data.shape[1] // frames_per_bin * frames_per_bin
                    span = usable if step is None else step
                    for lo in range(0, usable, max(span, 1)):
                        hi = min(lo + span, usable)
                        yield Chunk(block, sel, position, data[:, lo:hi])
                        position += hi - lo
                    carry = data[:, usable:].copy() if usable < data.shape[1] else None
                    del data
                if position != n_frames:
                    raise InputError(self.path, f"only {position} of {n_frames} frames could be read")
        finally:
            pa.default_memory_pool().release_unused()


T = TypeVar("T")


PAGE_DECODER_ENV = "ARIELSTREAM_DECODER"  # arielstream.io.pages.ENV, read there (pages.choice)


def _page_reader(path: DataPath, file: pq.ParquetFile) -> Any:
    """The page decoder's reader of ``file`` (:mod:`arielstream.io.pages`), or None: pyarrow reads it.

    The decoder reads local files where numba is importable (``ARIELSTREAM_DECODER`` unset or
    ``auto``; ``pages`` even without numba); ``ARIELSTREAM_DECODER=pyarrow`` never loads it. It
    reads a local file descriptor: a file under a URL is read with pyarrow.
    """
    forced = os.environ.get(PAGE_DECODER_ENV, "").strip().lower()  # (pages.choice reads it in full)
    if forced == "pyarrow":
        return None
    if isinstance(path, RemotePath):
        if forced == "pages":
            _remote_with_pyarrow_once()
        return None
    from . import pages

    return pages.open_reader(path, file) if pages.requested() else None


@functools.cache
def _remote_with_pyarrow_once() -> None:
    log.info("%s=pages, but the page decoder reads local files only: files under a URL are read with pyarrow",
             PAGE_DECODER_ENV)


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def prefetch(items: Iterable[T], ahead: int = 1) -> Iterator[T]:
    """Produce the next ``ahead`` items in a background thread while the caller works on the current one.

    Decoding (pyarrow) and the per-column copy of the next chunk then overlap the
    calibration and writing of this one; both release the GIL for their heavy
    parts. At most ``ahead`` items wait beyond the one the caller holds: the chunk
    planner counts them. Exceptions are re-raised in the caller; closing the
    iterator stops the thread.
    """
    slots = threading.Semaphore(ahead)
    handoff: queue.Queue = queue.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            source = iter(items)
            while True:
                slots.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(source)
                except StopIteration:
                    handoff.put(_END)
                    return
                handoff.put(item)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            handoff.put(_Failed(exc))

    thread = threading.Thread(target=produce, name="arielstream-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            slots.release()
            yield item
    finally:
        stop.set()
        slots.release()
        thread.join()
