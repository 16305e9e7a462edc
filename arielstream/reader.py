"""Streaming reader of the wide signal Parquet files, in memory-bounded aligned chunks.

A signal file has one uint16 column per pixel and one row per frame. The reader
decodes it **column block by column block within each row group**: a block is a
set of needed pixels (whole spatial rows when the budget allows), and for each
block the row groups are read in order, carrying the frames that do not yet
complete a time bin over to the next row group. Every chunk handed out starts on
an even (start-of-exposure) frame and spans whole multiples of the frames of a
bin, so the calibration of a chunk never needs its neighbours, and each column
chunk of the file is decoded exactly once whatever the row-group layout.

Why column blocks and not ``iter_batches``: on 11k-column tables small batches
pay a per-column cost on every batch and do not bound memory (``iter_batches``
peaked at ~4.7x the decoded row group), while projecting a row group onto a
block of columns decodes only those columns and bounds memory by the block (see
``BENCHMARKS.md`` for the measurements on this machine).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .layout import Instrument
from .memory import ChunkPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """Frames ``frame_start:frame_start+n`` of the block's pixels, pixel-major uint16."""

    block: int
    pixels: slice  # range within the list of needed pixels
    frame_start: int
    data: np.ndarray  # (n_pixels, n_frames)

    @property
    def frame_stop(self) -> int:
        return self.frame_start + self.data.shape[1]


class SignalFile:
    """One ``<INST>_signal_<v>.parquet``, validated on open.

    The schema is checked before any pixel is decoded: the number of columns is
    the detector's pixel count, every column is an integer type (uint16 in the
    competition files; other integer types are cast with an overflow check), and
    the number of frames matches ``axis_info.parquet``.
    """

    def __init__(self, path: str | Path, inst: Instrument, expected_frames: int | None = None,
                 use_threads: bool = True):
        self.path = Path(path)
        self.instrument = inst
        self.use_threads = use_threads
        if not self.path.exists():
            raise InputError(self.path, f"{inst.name} signal file missing")
        try:
            self._file = pq.ParquetFile(self.path, memory_map=False, pre_buffer=True)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(self.path, f"not a readable Parquet file: {exc}") from None
        meta = self._file.metadata
        schema = self._file.schema_arrow
        if meta.num_columns != inst.pixels:
            raise InputError(self.path, f"{meta.num_columns} columns, expected {inst.pixels} "
                             f"(one per pixel of a {inst.rows} x {inst.columns} {inst.name} frame)")
        for i, fld in enumerate(schema):
            if not pa.types.is_integer(fld.type):
                raise InputError(self.path, f"column {i} ({fld.name!r}) has type {fld.type}, expected uint16")
        self.names = schema.names
        if len(set(self.names)) != len(self.names):
            raise InputError(self.path, "duplicate column names; columns are addressed by position and name")
        self._needs_cast = any(fld.type != pa.uint16() for fld in schema)
        self.n_frames = meta.num_rows
        if expected_frames is not None and self.n_frames != expected_frames:
            raise InputError(self.path, f"{self.n_frames} frames, but axis_info.parquet lists {expected_frames} "
                             f"{inst.name} frames")
        self.row_group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def read_block(self, row_groups: list[int], pixels: np.ndarray) -> np.ndarray:
        """Decode ``pixels`` (flat pixel indices) of consecutive row groups as ``(n_pixels, rows)`` uint16."""
        columns = [self.names[int(p)] for p in pixels]
        where = f"row group {row_groups[0]}" if len(row_groups) == 1 else \
            f"row groups {row_groups[0]}-{row_groups[-1]}"
        try:
            table = self._file.read_row_groups(row_groups, columns=columns, use_threads=self.use_threads)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(self.path, f"{where} could not be decoded: {exc}") from None
        out = np.empty((len(columns), table.num_rows), dtype=np.uint16)
        for i, column in enumerate(table.columns):
            if column.null_count:
                raise InputError(self.path, f"column {int(pixels[i])} has {column.null_count} null value(s) "
                                 f"in {where}")
            if self._needs_cast:
                try:
                    column = column.cast(pa.uint16())
                except pa.ArrowInvalid as exc:
                    raise InputError(self.path, f"column {int(pixels[i])} does not fit uint16: {exc}") from None
            out[i] = column.to_numpy()
        return out

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
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
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
