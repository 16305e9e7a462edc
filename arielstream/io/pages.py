"""A Parquet page decoder for the signal files: column chunks straight into the pixel-major block.

pyarrow's generic reader pays a fixed ~20 µs per column chunk whatever it holds, about half
the decode time of an observation (issue 24). This module decodes the layouts the signal files
use itself: it reads the column chunk table from the footer (the compiled kernels parse the
footer pyarrow has already checked; without numba, pyarrow's accessors fill the same table),
reads the needed chunks' bytes (adjacent chunks in one ``os.preadv``, long reads split across
threads), walks their pages (a small bounds-checked parser of the Thrift compact-protocol
``PageHeader``), verifies page CRCs where pages carry one (``zlib``), decompresses and decodes
dictionary pages (PLAIN INT32), data pages v1 and v2 with RLE_DICTIONARY / PLAIN_DICTIONARY
indices (the RLE/bit-packed hybrid) or PLAIN INT32 values into ``out[(pixel, frame)]``, uint16,
exactly what :meth:`arielstream.io.signal.SignalFile.read_block` returns.

Decompression happens inside the compiled kernels, on the threads that decode: zstd by the
system's libzstd (``ctypes.util.find_library("zstd")``, called from the kernels through its
address, one decompression context per thread), snappy by a bounds-checked decompressor written
here (the raw format is a length and literal/copy tags). Where libzstd cannot be loaded, zstd
pages are decompressed with ``pyarrow.Codec`` before the kernels run (logged once; slower), as
are all compressed pages without numba.

It reads every local signal file when numba is importable (``ARIELSTREAM_DECODER`` unset or ``auto``);
``ARIELSTREAM_DECODER=pyarrow`` forces pyarrow's reader, ``=pages`` this one even without numba
(:func:`requested`, the one place that reads the variable). Two outcomes besides the block:

- :class:`Unsupported`: a layout it does not decode (other encodings, physical types or codecs,
  an encrypted footer or column, nulls, repetition levels, pages larger than their values can
  need, a footer its parser reads otherwise than pyarrow). The caller then reads that file with
  pyarrow.
- :class:`PageError`: bytes that cannot be a valid page (a header or run past the end of its
  chunk, a bad varint, sizes that disagree, compressed bytes that do not decompress to the page's
  size, a dictionary index beyond the dictionary, a bit width above 32, more or fewer values than
  the chunk's ``num_values``, a page CRC mismatch) or a value outside 0..65535
  (:class:`OutOfRange`). The caller turns it into an ``InputError``.

Every offset and length is checked before it is used: a damaged file is an error, never a read
outside a buffer. The kernels (footer and header walks, decompression, run decoding) are
numba-compiled (``cache``, ``nogil``) when numba is importable and run on ``numba.get_num_threads()``
threads of a pool, over runs of column chunks; without numba the same drivers run in Python with
numpy doing each run (slower than pyarrow: without numba, pyarrow is the default).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import itertools
import logging
import os
import threading
import types
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

numba: types.ModuleType | None  # None without numba
try:  # pragma: no cover - exercised where numba is installed
    import numba
except ImportError:  # pragma: no cover
    numba = None

ENV = "ARIELSTREAM_DECODER"
CHOICES = ("auto", "pyarrow", "pages")  # auto: pages where numba is importable, else pyarrow
C_NONE, C_SNAPPY, C_ZSTD = 0, 1, 2
CODECS = {"UNCOMPRESSED": C_NONE, "SNAPPY": C_SNAPPY, "ZSTD": C_ZSTD}  # the footer's names: the kernels' codes
CODEC_NAMES = {C_SNAPPY: "snappy", C_ZSTD: "zstd"}  # pyarrow.Codec's names
ARROW_TYPES = (pa.uint16(), pa.int32())  # the column types decoded here (INT32 physical, no logical narrowing)
MERGE_GAP = 1 << 16  # chunks closer than this are read in one preadv
READ_PIECE = 1 << 20  # longer reads are split, the pieces read in parallel


def choice() -> str:
    """``ARIELSTREAM_DECODER`` as one of :data:`CHOICES` (unset or empty: ``auto``; unknown: ``auto``, warned once)."""
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        _unknown_choice(wanted)
        return "auto"
    return wanted


def requested() -> bool:
    """True when signal files are decoded with this module: ``pages``, or ``auto`` (the default) with numba."""
    wanted = choice()
    return wanted == "pages" or (wanted == "auto" and numba is not None)


@functools.cache
def _unknown_choice(wanted: str) -> None:
    log.warning("%s=%s is not one of %s; using auto", ENV, wanted, ", ".join(CHOICES))


class PageError(Exception):
    """A column chunk's bytes cannot be valid Parquet pages (the file is damaged)."""


class OutOfRange(PageError):  # noqa: N818 - a PageError, named for what it says
    """A value of column ``column`` lies outside 0..65535."""

    def __init__(self, column: int, problem: str):
        self.column = column
        super().__init__(problem)


class Unsupported(Exception):  # noqa: N818 - not an error: the caller reads the file with pyarrow
    """A layout this decoder does not handle; the file is read with pyarrow instead."""


# ---------------------------------------------------------------------------------------------------------------
# status codes of the kernels: 0 fine, 1..99 damaged (PageError), 100.. not handled here (Unsupported)
OK = 0
_PAGE_ERRORS = {
    1: "a page header runs past the end of its column chunk",
    2: "a varint runs past its buffer or is too long",
    3: "a page header field has the wrong type",
    4: "a page header is nested too deeply",
    5: "a page header lacks a required field",
    6: "a negative page size or value count",
    7: "page data runs past the end of its column chunk",
    8: "the pages hold more values than their column chunk",
    9: "the pages hold fewer values than their column chunk",
    10: "a dictionary page that is not the chunk's first page",
    11: "dictionary indices without a dictionary page",
    12: "a dictionary index beyond the dictionary",
    13: "a bit width above 32",
    14: "an RLE run beyond the page's values",
    15: "encoded values run past the end of their page",
    16: "an uncompressed page whose two sizes disagree",
    17: "level lengths beyond their page",
    18: "a dictionary page too short for its values",
    19: "a value outside 0..65535",
    20: "a data page v2 whose row and value counts disagree",
    21: "repetition levels in a flat column",
    22: "an empty run in the RLE/bit-packed hybrid",
    23: "a page could not be decompressed",
    24: "a page decompressed to another size than its header says",
}
_UNSUPPORTED = {
    100: "a page type it does not decode",
    101: "a value encoding it does not decode",
    102: "a definition-level encoding it does not decode",
    103: "null values",
    104: "a dictionary page encoding it does not decode",
    105: "a page larger than its values can need",
}
E_RANGE = 19
HIGH_HALVES = -(1 << 48) | 0xFFFF0000  # the high 16 bits of both int32 in a 64-bit word (0xFFFF0000FFFF0000)

# the page table (one int64 row per page) written by _scan. A page's values (after any v2 levels) are P_LEN
# bytes at P_OFF: in the chunk bytes (P_SRC S_RAW), in the arena Python decompressed them into (S_ARENA), or
# still compressed there, P_ZLEN bytes of codec P_CODEC, for the kernel to decompress (S_PACKED)
P_CHUNK, P_TYPE, P_DATA, P_COMP, P_UNCOMP, P_HAS_CRC, P_CRC, P_NVAL, P_ENC, P_DEF_ENC, P_DEF_LEN, P_REP_LEN, \
    P_CODEC, P_SRC, P_OFF, P_LEN, P_ZLEN = range(17)
N_FIELDS = 17
S_RAW, S_ARENA, S_PACKED = 0, 1, 2
DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3
PLAIN, PLAIN_DICTIONARY, RLE, RLE_DICTIONARY = 0, 2, 3, 8

# parsed header slots (_header)
H_TYPE, H_UNCOMP, H_COMP, H_HAS_CRC, H_CRC, H_NVAL, H_ENC, H_DEF_ENC, H_NNULLS, H_NROWS, H_DEF_LEN, H_REP_LEN, \
    H_COMPRESSED, H_SEEN = range(14)
N_HEADER = 14
# H_SEEN bits: which required fields were present
S_TYPE, S_UNCOMP, S_COMP, S_DPH, S_DICT, S_V2, S_NVAL, S_ENC, S_NNULLS, S_NROWS, S_DEF_LEN, S_REP_LEN, S_DEF_ENC = \
    (1 << i for i in range(13))
MAX_DEPTH = 32
# the column chunk table of a file (PageReader._chunks): [row group, column] -> T_* fields
T_FIRST, T_SIZE, T_NVAL, T_FLAGS = range(4)  # first page's offset, compressed size, values, codec (C_*) | F_* flags
F_CODEC, F_NOT_INT32, F_FILE_PATH, F_NO_META = 4, 8, 16, 32  # another codec, type, a chunk in another file, no meta
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


# ---------------------------------------------------------------------------------------------------------------
# kernels, written once: numba compiles them when installed, else they run in Python (with numpy run helpers)

def _varint(buf, pos, end, most):  # pragma: no cover - compiled
    """Unsigned LEB128 varint of at most ``most`` bytes at ``pos``: (value, next position), position -1 if bad."""
    value = 0
    shift = 0
    for _ in range(most):
        if pos >= end:
            return 0, -1
        b = int(buf[pos])
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    return 0, -1


def _i32(buf, pos, end):  # pragma: no cover - compiled
    """A zigzag i32 of the compact protocol: (value, next position), position -1 if bad or out of range."""
    raw, pos = _varint(buf, pos, end, 5)
    if pos < 0:
        return 0, -1
    value = (raw >> 1) ^ -(raw & 1)
    if value < I32_MIN or value > I32_MAX:
        return 0, -1
    return value, pos


def _skip(buf, pos, end, ttype):  # noqa: C901  # pragma: no cover - compiled
    """Skip one value of compact type ``ttype`` (within a struct field): next position, or -error."""
    if ttype < 9:  # a value of its own (the loop below would do the same, after allocating its stack)
        if ttype == 1 or ttype == 2:
            return pos
        if ttype == 3:
            return pos + 1 if pos < end else -1
        if ttype == 7:
            return pos + 8 if pos + 8 <= end else -1
        if ttype == 8:
            n, pos = _varint(buf, pos, end, 5)
            if pos < 0:
                return -2
            return pos + n if n <= end - pos else -1
        if ttype >= 4:
            _, pos = _varint(buf, pos, end, 10)
            return pos if pos >= 0 else -2
        return -3
    stack = np.empty((4, MAX_DEPTH), np.int64)
    kind = stack[0]  # 0 struct fields, 1 list elements, 2 map entries
    left = stack[1]
    first = stack[2]  # element type, or key type of a map
    second = stack[3]  # value type of a map
    depth = 0
    t = ttype
    in_container = False  # a bool inside a list or map takes a byte; as a struct field none
    while True:
        if t == 1 or t == 2:
            if in_container:
                if pos + 1 > end:
                    return -1
                pos += 1
        elif t == 3:
            if pos + 1 > end:
                return -1
            pos += 1
        elif t == 4 or t == 5 or t == 6:
            _, pos = _varint(buf, pos, end, 10)
            if pos < 0:
                return -2
        elif t == 7:
            if pos + 8 > end:
                return -1
            pos += 8
        elif t == 8:
            n, pos = _varint(buf, pos, end, 5)
            if pos < 0:
                return -2
            if n > end - pos:
                return -1
            pos += n
        elif t == 9 or t == 10 or t == 12 or t == 11:
            if depth >= MAX_DEPTH:
                return -4
            if t == 12:
                kind[depth] = 0
            elif t == 11:
                n, pos = _varint(buf, pos, end, 5)
                if pos < 0:
                    return -2
                kind[depth] = 2
                left[depth] = 2 * n
                if n > 0:
                    if pos >= end:
                        return -1
                    kv = int(buf[pos])
                    pos += 1
                    first[depth] = kv >> 4
                    second[depth] = kv & 0x0F
            else:
                if pos >= end:
                    return -1
                b = int(buf[pos])
                pos += 1
                n = b >> 4
                if n == 15:
                    n, pos = _varint(buf, pos, end, 5)
                    if pos < 0:
                        return -2
                kind[depth] = 1
                left[depth] = n
                first[depth] = b & 0x0F
            depth += 1
        else:
            return -3
        # the next value to skip, from the innermost open container
        while True:
            if depth == 0:
                return pos
            d = depth - 1
            if kind[d] == 0:
                if pos >= end:
                    return -1
                b = int(buf[pos])
                pos += 1
                if b == 0:
                    depth -= 1
                    continue
                if b >> 4 == 0:  # long form: the field id follows as a zigzag i16
                    _, pos = _varint(buf, pos, end, 3)
                    if pos < 0:
                        return -2
                t = b & 0x0F
                in_container = False
                break
            if left[d] == 0:
                depth -= 1
                continue
            left[d] -= 1
            if kind[d] == 1:
                t = first[d]
            else:
                t = first[d] if left[d] % 2 == 1 else second[d]
            in_container = True
            break


def _field(buf, pos, end, last):  # pragma: no cover - compiled
    """A struct field header: (field id, compact type, next position); type 0 at the stop byte; position < 0 bad."""
    if pos >= end:
        return 0, 0, -1
    b = int(buf[pos])
    pos += 1
    if b == 0:
        return 0, 0, pos
    t = b & 0x0F
    delta = b >> 4
    if t == 0:
        return 0, 0, -3
    if delta == 0:
        raw, pos = _varint(buf, pos, end, 3)
        if pos < 0:
            return 0, 0, -2
        return (raw >> 1) ^ -(raw & 1), t, pos
    return last + delta, t, pos


def _struct(buf, pos, end, h, which):  # noqa: C901  # pragma: no cover - compiled
    """One of PageHeader's nested headers (5 data v1, 7 dictionary, 8 data v2) into ``h``: next position or -error."""
    last = 0
    while True:
        fid, t, pos = _field(buf, pos, end, last)
        if pos < 0:
            return pos
        if t == 0:
            return pos
        last = fid
        slot = -1
        seen = 0
        if fid == 1:
            slot, seen = H_NVAL, S_NVAL
        elif which == 5 and fid == 2 or which == 7 and fid == 2 or which == 8 and fid == 4:
            slot, seen = H_ENC, S_ENC
        elif which == 5 and fid == 3:
            slot, seen = H_DEF_ENC, S_DEF_ENC
        elif which == 8 and fid == 2:
            slot, seen = H_NNULLS, S_NNULLS
        elif which == 8 and fid == 3:
            slot, seen = H_NROWS, S_NROWS
        elif which == 8 and fid == 5:
            slot, seen = H_DEF_LEN, S_DEF_LEN
        elif which == 8 and fid == 6:
            slot, seen = H_REP_LEN, S_REP_LEN
        if slot >= 0:
            if t != 5:
                return -3
            value, pos = _i32(buf, pos, end)
            if pos < 0:
                return -2
            h[slot] = value
            h[H_SEEN] |= seen
        elif which == 8 and fid == 7:  # is_compressed (a bool field: the type is the value)
            if t != 1 and t != 2:
                return -3
            h[H_COMPRESSED] = 1 if t == 1 else 0
        else:
            pos = _skip(buf, pos, end, t)
            if pos < 0:
                return pos


def _header(buf, pos, end, h):  # pragma: no cover - compiled
    """A PageHeader at ``pos`` into ``h``: the position of the page data, or -error."""
    h[:] = 0
    h[H_COMPRESSED] = 1
    last = 0
    while True:
        fid, t, pos = _field(buf, pos, end, last)
        if pos < 0:
            return pos
        if t == 0:
            break
        last = fid
        if 1 <= fid <= 4:
            if t != 5:
                return -3
            value, pos = _i32(buf, pos, end)
            if pos < 0:
                return -2
            if fid == 1:
                h[H_TYPE] = value
                h[H_SEEN] |= S_TYPE
            elif fid == 2:
                h[H_UNCOMP] = value
                h[H_SEEN] |= S_UNCOMP
            elif fid == 3:
                h[H_COMP] = value
                h[H_SEEN] |= S_COMP
            else:
                h[H_CRC] = value
                h[H_HAS_CRC] = 1
        elif fid == 5 or fid == 7 or fid == 8:
            if t != 12:
                return -3
            h[H_SEEN] |= S_DPH if fid == 5 else (S_DICT if fid == 7 else S_V2)
            pos = _struct(buf, pos, end, h, fid)
            if pos < 0:
                return pos
        else:
            pos = _skip(buf, pos, end, t)
            if pos < 0:
                return pos
    need = S_TYPE | S_UNCOMP | S_COMP
    if h[H_SEEN] & need != need:
        return -5
    return pos


def _list(buf, pos, end):  # pragma: no cover - compiled
    """A compact-protocol list header: (size, element type, next position), position < 0 if bad."""
    if pos >= end:
        return 0, 0, -1
    b = int(buf[pos])
    pos += 1
    n = b >> 4
    if n == 15:
        n, pos = _varint(buf, pos, end, 5)
    return n, b & 0x0F, pos


def _i64(buf, pos, end):  # pragma: no cover - compiled
    """A zigzag i64: (value, next position), position -1 if bad."""
    raw, pos = _varint(buf, pos, end, 10)
    if pos < 0:
        return 0, -1
    return (raw >> 1) ^ -(raw & 1), pos


def _column_meta(buf, pos, end, row):  # pragma: no cover - compiled
    """A ColumnMetaData into ``row`` (T_* fields): next position or -1."""
    last = 0
    dictionary = -1
    while True:
        fid, t, pos = _field(buf, pos, end, last)
        if pos < 0:
            return -1
        if t == 0:
            break
        last = fid
        if fid == 1 or fid == 4:
            if t != 5:
                return -1
            value, pos = _i32(buf, pos, end)
            if fid == 1 and value != 1:  # the physical type: 1 is INT32
                row[T_FLAGS] |= F_NOT_INT32
            elif fid == 4:  # the codec: UNCOMPRESSED 0, SNAPPY 1, ZSTD 6
                row[T_FLAGS] |= C_NONE if value == 0 else C_SNAPPY if value == 1 else C_ZSTD if value == 6 else \
                    F_CODEC
        elif fid == 5 or fid == 7 or fid == 9 or fid == 11:
            if t != 6:
                return -1
            value, pos = _i64(buf, pos, end)
            if fid == 5:
                row[T_NVAL] = value
            elif fid == 7:
                row[T_SIZE] = value
            elif fid == 9:
                row[T_FIRST] = value
            else:
                dictionary = value
        else:
            pos = _skip(buf, pos, end, t)
        if pos < 0:
            return -1
    if dictionary >= 0:  # (pyarrow's has_dictionary_page: the field is set)
        row[T_FIRST] = dictionary
    return pos


def _footer(buf, n_groups, n_columns, table):  # noqa: C901  # pragma: no cover - compiled
    """The column chunks of a FileMetaData (``buf``) into ``table[group, column]`` (T_* fields): 0, or 1.

    1: it does not parse, or holds other counts of row groups and columns than pyarrow read.
    """
    end = buf.shape[0]
    pos = 0
    last = 0
    groups = -1
    while True:
        fid, t, pos = _field(buf, pos, end, last)
        if pos < 0:
            return 1
        if t == 0:
            return 0 if groups == n_groups else 1
        last = fid
        if fid != 4:
            pos = _skip(buf, pos, end, t)
            if pos < 0:
                return 1
            continue
        groups, kind, pos = _list(buf, pos, end)
        if t != 9 or pos < 0 or kind != 12 or groups != n_groups:
            return 1
        for g in range(groups):  # RowGroup: field 1, the columns
            last_g = 0
            seen = False
            while True:
                fid, t, pos = _field(buf, pos, end, last_g)
                if pos < 0:
                    return 1
                if t == 0:
                    break
                last_g = fid
                if fid != 1:
                    pos = _skip(buf, pos, end, t)
                    if pos < 0:
                        return 1
                    continue
                n, kind, pos = _list(buf, pos, end)
                if t != 9 or pos < 0 or kind != 12 or n != n_columns:
                    return 1
                seen = True
                for j in range(n):  # ColumnChunk: field 1 file_path, field 3 meta_data
                    row = table[g, j]
                    row[T_FLAGS] = F_NO_META
                    last_c = 0
                    while True:
                        fid, t, pos = _field(buf, pos, end, last_c)
                        if pos < 0:
                            return 1
                        if t == 0:
                            break
                        last_c = fid
                        if fid == 3 and t == 12:
                            row[T_FLAGS] &= ~F_NO_META
                            pos = _column_meta(buf, pos, end, row)
                        else:
                            if fid == 1:
                                row[T_FLAGS] |= F_FILE_PATH
                            pos = _skip(buf, pos, end, t)
                        if pos < 0:
                            return 1
            if not seen:
                return 1


def _scan(raw, chunk_off, chunk_len, chunk_nval, chunk_codec, max_def, status):  # noqa: C901  # pragma: no cover - compiled
    """Walk the pages of every column chunk: the page table (rows of P_* fields); errors in ``status``."""
    n_chunks = chunk_off.shape[0]
    cap = 2 * n_chunks + 8
    pages = np.zeros((cap, N_FIELDS), np.int64)
    count = 0
    h = np.zeros(N_HEADER, np.int64)
    for c in range(n_chunks):
        pos = chunk_off[c]
        end = pos + chunk_len[c]
        total = 0
        first = count
        code = 0
        while pos < end:
            data = _header(raw, pos, end, h)
            if data < 0:
                code = -data
                break
            ptype, comp, uncomp, nval = h[H_TYPE], h[H_COMP], h[H_UNCOMP], h[H_NVAL]
            if comp < 0 or uncomp < 0:
                code = 6
                break
            if comp > end - data:
                code = 7
                break
            seen = h[H_SEEN]
            if ptype == DICTIONARY_PAGE:
                if seen & S_DICT == 0 or seen & S_NVAL == 0:
                    code = 5
                    break
                if count != first:
                    code = 10
                    break
                if h[H_ENC] != PLAIN and h[H_ENC] != PLAIN_DICTIONARY:
                    code = 104
                    break
            elif ptype == DATA_PAGE or ptype == DATA_PAGE_V2:
                if ptype == DATA_PAGE and (seen & S_DPH == 0 or seen & (S_NVAL | S_ENC) != S_NVAL | S_ENC):
                    code = 5
                    break
                if ptype == DATA_PAGE_V2:
                    needed = S_V2 | S_NVAL | S_ENC | S_NNULLS | S_NROWS | S_DEF_LEN | S_REP_LEN
                    if seen & needed != needed:
                        code = 5
                        break
                    if h[H_NNULLS] < 0 or h[H_DEF_LEN] < 0 or h[H_REP_LEN] < 0:
                        code = 6
                        break
                    if h[H_NNULLS] > 0:
                        code = 103
                        break
                    if h[H_NROWS] != nval:
                        code = 20
                        break
                    if h[H_REP_LEN] != 0:
                        code = 21
                        break
                    if h[H_DEF_LEN] > comp or h[H_DEF_LEN] > uncomp or max_def[c] == 0 and h[H_DEF_LEN] != 0:
                        code = 17
                        break
                elif max_def[c] > 0 and h[H_DEF_ENC] != RLE:
                    code = 102
                    break
                enc = h[H_ENC]
                if enc != PLAIN and enc != PLAIN_DICTIONARY and enc != RLE_DICTIONARY:
                    code = 101
                    break
                if nval < 0:
                    code = 6
                    break
                total += nval
                if total > chunk_nval[c]:
                    code = 8
                    break
            else:
                code = 100
                break
            if nval < 0:
                code = 6
                break
            # no page needs more than 4 bytes a value, its levels and a little framing
            if uncomp > 4 * nval + nval // 4 + 64:
                code = 105
                break
            levels = h[H_DEF_LEN] + h[H_REP_LEN] if ptype == DATA_PAGE_V2 else 0  # (v2: before the values, raw)
            codec = chunk_codec[c] if ptype != DATA_PAGE_V2 or h[H_COMPRESSED] == 1 else C_NONE
            if codec == C_NONE and comp != uncomp:
                code = 16
                break
            if count == cap:
                grown = np.zeros((2 * cap, N_FIELDS), np.int64)
                grown[:cap] = pages
                pages = grown
                cap *= 2
            row = pages[count]
            row[P_CHUNK] = c
            row[P_TYPE] = ptype
            row[P_DATA] = data
            row[P_COMP] = comp
            row[P_UNCOMP] = uncomp
            row[P_HAS_CRC] = h[H_HAS_CRC]
            row[P_CRC] = h[H_CRC]
            row[P_NVAL] = nval
            row[P_ENC] = h[H_ENC]
            row[P_DEF_ENC] = h[H_DEF_ENC]
            row[P_DEF_LEN] = h[H_DEF_LEN] if ptype == DATA_PAGE_V2 else 0
            row[P_REP_LEN] = h[H_REP_LEN] if ptype == DATA_PAGE_V2 else 0
            row[P_CODEC] = codec
            row[P_SRC] = S_RAW if codec == C_NONE else S_PACKED
            row[P_OFF] = data + levels
            row[P_LEN] = uncomp - levels
            row[P_ZLEN] = comp - levels
            count += 1
            pos = data + comp
        if code == 0 and total != chunk_nval[c]:
            code = 9
        status[c, 0] = code
        status[c, 1] = first
        status[c, 2] = count - first if code == 0 else 0
    return pages[:count]


def _hybrid_scalar(buf, pos, end, width, count, dst):  # pragma: no cover - compiled
    """``count`` values of the RLE/bit-packed hybrid at ``pos`` (bit width ``width``) into ``dst``: next pos or -err."""
    vbytes = (width + 7) >> 3
    mask = (1 << width) - 1
    i = 0
    while i < count:
        header, pos = _varint(buf, pos, end, 5)
        if pos < 0:
            return -15
        if header < 2:  # an empty run: no writer makes one (pyarrow reads it as the end of the data)
            return -22
        if header & 1:
            groups = header >> 1
            nbytes = groups * width
            if nbytes > end - pos:
                return -15
            take = min(groups * 8, count - i)
            acc = 0  # bits not yet used, least significant first (fewer than width + 8 <= 40)
            held = 0
            p = pos
            for j in range(take):  # reads only the run's bytes: take * width <= 8 * nbytes bits
                while held < width:
                    acc |= int(buf[p]) << held
                    p += 1
                    held += 8
                dst[i + j] = acc & mask
                acc >>= width
                held -= width
            pos += nbytes
            i += take
        else:
            run = header >> 1
            if run > count - i:
                return -14
            if vbytes > end - pos:
                return -15
            v = 0
            for k in range(vbytes):
                v |= int(buf[pos + k]) << (8 * k)
            pos += vbytes
            for j in range(run):
                dst[i + j] = v
            i += run
    return pos


def _hybrid_numpy(buf, pos, end, width, count, dst):
    """:func:`_hybrid_scalar` with numpy doing each run (no numba)."""
    vbytes = (width + 7) >> 3
    weights = np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))
    i = 0
    while i < count:
        header, pos = _varint(buf, pos, end, 5)
        if pos < 0:
            return -15
        if header < 2:  # an empty run: no writer makes one (pyarrow reads it as the end of the data)
            return -22
        if header & 1:
            groups = header >> 1
            nbytes = groups * width
            if nbytes > end - pos:
                return -15
            take = min(groups * 8, count - i)
            if width:
                bits = np.unpackbits(buf[pos:pos + nbytes], bitorder="little")[:take * width]
                dst[i:i + take] = bits.reshape(take, width).astype(np.int64) @ weights
            else:
                dst[i:i + take] = 0
            pos += nbytes
            i += take
        else:
            run = header >> 1
            if run > count - i:
                return -14
            if vbytes > end - pos:
                return -15
            v = int.from_bytes(bytes(buf[pos:pos + vbytes]), "little") & ((1 << width) - 1)
            pos += vbytes
            dst[i:i + run] = v
            i += run
    return pos


def _plain_scalar(buf, pos, n, out, row, col):  # pragma: no cover - compiled
    """``n`` PLAIN INT32 values at ``pos`` into ``out[row, col:col+n]``: 0, or E_RANGE outside 0..65535.

    The caller has checked that the ``4 * n`` bytes lie in ``buf``; two values are read at a time.
    """
    dst = out[row]
    high = 0  # the high halves, or-ed: checked once at the end
    pairs = n // 2
    for i in range(pairs):
        v = _u64(buf, pos + 8 * i)
        high |= v & HIGH_HALVES
        dst[col + 2 * i] = v & 0xFFFF
        dst[col + 2 * i + 1] = (v >> 32) & 0xFFFF
    if n % 2:
        p = pos + 4 * (n - 1)
        high |= np.int64(buf[p + 2]) | np.int64(buf[p + 3])
        dst[col + n - 1] = np.int64(buf[p]) | np.int64(buf[p + 1]) << 8
    return E_RANGE if high else 0


def _plain_numpy(buf, pos, n, out, row, col):
    """:func:`_plain_scalar` in numpy."""
    halves = buf[pos:pos + 4 * n].view("<u2").reshape(n, 2)
    if halves[:, 1].any():
        return E_RANGE
    out[row, col:col + n] = halves[:, 0]
    return 0


def _lookup_numpy(values, idx, n, out, row, col):
    """:func:`_lookup_scalar` in numpy."""
    k = idx[:n]
    if n and (k.min() < 0 or k.max() >= values.shape[0]):
        return 12
    picked = values[k]
    if n and picked.min() < 0:
        return E_RANGE
    out[row, col:col + n] = picked
    return 0


def _load64(buf, p):  # pragma: no cover - compiled
    """The 8 bytes at ``buf[p:p+8]`` as a little-endian int64; fewer (zeros above) where the buffer ends first."""
    if p + 8 <= buf.shape[0]:
        return _u64(buf, p)
    word = 0
    for q in range(buf.shape[0] - p):
        word |= np.int64(buf[p + q]) << (8 * q)
    return word


def _packed(buf, pos, width, take, values, size, dst):  # pragma: no cover - compiled
    """``take`` bit-packed indices at ``pos`` looked up in ``values[:size]`` into ``dst``: 0, 12 or E_RANGE.

    ``values`` holds -1 from ``size`` on (:func:`_dictionary`): where it has an entry for every index of this
    width, the values are looked up without a test (groups of eight, -1s or-ed and checked once), else, or to
    name an error, one at a time.
    """
    mask = (1 << width) - 1
    inside = pos + (take * width >> 3) + 8 <= buf.shape[0]  # every 8-byte load in the buffer
    if inside and mask < values.shape[0]:
        bad = 0
        whole = take >> 3
        for g in range(whole):
            base = pos + g * width
            for j in range(8):
                bit = j * width
                v = values[(_u64(buf, base + (bit >> 3)) >> (bit & 7)) & mask]
                bad |= v
                dst[8 * g + j] = v
        for j in range(8 * whole, take):
            bit = j * width
            v = values[(_u64(buf, pos + (bit >> 3)) >> (bit & 7)) & mask]
            bad |= v
            dst[j] = v
        if bad >= 0:
            return 0
    for j in range(take):
        bit = j * width
        word = _u64(buf, pos + (bit >> 3)) if inside else _load64(buf, pos + (bit >> 3))
        k = (word >> (bit & 7)) & mask
        if k >= size:
            return 12
        v = values[k]
        if v < 0:
            return E_RANGE
        dst[j] = v
    return 0


def _indices_scalar(buf, pos, end, width, count, idx, values, size, out, row, col):  # pragma: no cover - compiled
    """Dictionary indices looked up into ``out[row, col:col+count]``: 0 or a status code.

    ``count`` indices of the RLE/bit-packed hybrid at ``pos`` (bit width ``width``), entries of ``values[:size]``:
    :func:`_hybrid_scalar` and the lookup in one pass.
    """
    vbytes = (width + 7) >> 3
    i = 0
    while i < count:
        header, pos = _varint(buf, pos, end, 5)
        if pos < 0:
            return 15
        if header < 2:  # an empty run
            return 22
        if header & 1:
            groups = header >> 1
            nbytes = groups * width
            if nbytes > end - pos:
                return 15
            take = min(groups * 8, count - i)  # (their bits lie in the run's bytes: take * width <= 8 * nbytes)
            code = _packed(buf, pos, width, take, values, size, out[row, col + i:col + i + take])
            if code:
                return code
            pos += nbytes
            i += take
        else:
            run = header >> 1
            if run > count - i:
                return 14
            if vbytes > end - pos:
                return 15
            k = 0
            for q in range(vbytes):
                k |= np.int64(buf[pos + q]) << (8 * q)
            pos += vbytes
            if k >= size:
                return 12
            v = values[k]
            if v < 0:
                return E_RANGE
            for j in range(run):
                out[row, col + i + j] = v
            i += run
    return 0


def _indices_numpy(buf, pos, end, width, count, idx, values, size, out, row, col):
    """:func:`_indices_scalar` with numpy: the indices into ``idx``, then looked up."""
    got = _hybrid(buf, pos, end, width, count, idx)
    if got < 0:
        return -got
    return _lookup_numpy(values[:size], idx, count, out, row, col)


def _all_ones_scalar(levels, n):  # pragma: no cover - compiled
    for i in range(n):
        if levels[i] != 1:
            return False
    return True


def _all_ones_numpy(levels, n):
    return bool(np.all(levels[:n] == 1))


def _dictionary(src, off, n, length, values):  # pragma: no cover - compiled
    """The PLAIN INT32 dictionary at ``src[off:]`` into ``values``: 0, or 18 if too short.

    -1 for entries outside 0..65535, and in ``values[n:]`` (no entry).
    """
    if n < 0 or 4 * n > length or n > values.shape[0]:
        return 18
    for i in range(n):
        p = off + 4 * i
        if src[p + 2] | src[p + 3]:
            values[i] = -1
        else:
            values[i] = int(src[p]) | (int(src[p + 1]) << 8)
    values[n:] = -1
    return 0


def _snappy(src, pos, end, dst, want):  # noqa: C901  # pragma: no cover - compiled
    """Raw snappy ``src[pos:end]`` into ``dst[:want]``: 0, or 23 unless it is a valid stream of exactly ``want`` bytes.

    Every tag, length and back-reference is checked against both buffers before it is followed.
    """
    stated, pos = _varint(src, pos, end, 5)
    if pos < 0 or stated != want or want > dst.shape[0]:
        return 23
    o = 0
    while pos < end:
        tag = np.int64(src[pos])
        pos += 1
        kind = tag & 3
        if kind == 0:  # a literal: its length - 1 in the tag, or in the 1-4 bytes after it
            length = (tag >> 2) + 1
            if length > 60:
                extra = length - 60
                if extra > end - pos:
                    return 23
                length = 0
                for k in range(extra):
                    length |= np.int64(src[pos + k]) << (8 * k)
                length += 1
                pos += extra
            if length > end - pos or length > want - o:
                return 23
            _copy(dst, o, src, pos, length)
            o += length
            pos += length
            continue
        if kind == 1:  # a copy of 4-11 bytes, an 11-bit offset
            if pos >= end:
                return 23
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | np.int64(src[pos])
            pos += 1
        elif kind == 2:  # a copy of 1-64 bytes, a 16-bit offset
            if 2 > end - pos:
                return 23
            length = (tag >> 2) + 1
            offset = np.int64(src[pos]) | np.int64(src[pos + 1]) << 8
            pos += 2
        else:  # a copy of 1-64 bytes, a 32-bit offset
            if 4 > end - pos:
                return 23
            length = (tag >> 2) + 1
            offset = (np.int64(src[pos]) | np.int64(src[pos + 1]) << 8 | np.int64(src[pos + 2]) << 16
                      | np.int64(src[pos + 3]) << 24)
            pos += 4
        if offset == 0 or offset > o or length > want - o:
            return 23
        if offset >= length:  # apart
            _copy(dst, o, dst, o - offset, length)
        else:
            for k in range(length):  # forward, byte by byte: an offset below the length repeats the bytes
                dst[o + k] = dst[o - offset + k]
        o += length
    return 0 if o == want else 23


def _inflate(src, pos, n, codec, dst, want, zstd, slot):  # pragma: no cover - compiled
    """Decompress ``src[pos:pos+n]`` (codec ``codec``) into ``dst[:want]``: 0, 23 if invalid, 24 if fewer bytes.

    zstd calls libzstd: ``zstd`` holds ZSTD_decompressDCtx's address, then a context for each ``slot``. Given room
    for ``want`` bytes it returns their count, or an error code (a size_t above any count: negative here).
    """
    if want > dst.shape[0]:
        return 23
    if codec == C_SNAPPY:
        return _snappy(src, pos, pos + n, dst, want)
    if codec != C_ZSTD or zstd.shape[0] <= 1 + slot:
        return 23
    got = _call5(zstd[0], zstd[1 + slot], dst.ctypes.data, want, src.ctypes.data + pos, n)
    return 0 if got == want else 24 if 0 <= got < want else 23


def _decode_chunk(raw, arena, pages, first, n_pages, nval, max_def, out, row, col,  # noqa: C901
                  zstd, slot, buf, idx, values):  # pragma: no cover - compiled
    """Decode one column chunk's pages into ``out[row, col:col+nval]``: a status code.

    ``buf``, ``idx`` and ``values`` are the thread's scratch: decompressed bytes, indices or levels, the dictionary;
    ``slot`` its zstd context.
    """
    have_dict = False
    size = 0  # entries in the dictionary
    written = 0
    for k in range(first, first + n_pages):
        page = pages[k]
        off = page[P_OFF]
        length = page[P_LEN]
        if page[P_SRC] == S_PACKED and length > 0:  # (no values: nothing to decompress, as pyarrow does)
            code = _inflate(raw, off, page[P_ZLEN], page[P_CODEC], buf, length, zstd, slot)
            if code:
                return code
            src = buf
            off = 0
        elif page[P_SRC] == S_ARENA:
            src = arena
        else:
            src = raw
        end = off + length
        n = page[P_NVAL]
        if page[P_TYPE] == DICTIONARY_PAGE:
            code = _dictionary(src, off, n, length, values)
            if code:
                return code
            size = n
            have_dict = True
            continue
        if written + n > nval:
            return 8
        if max_def > 0:
            if page[P_TYPE] == DATA_PAGE:  # levels inside the page, after a 4-byte length
                if length < 4:
                    return 17
                levels = int(src[off]) | int(src[off + 1]) << 8 | int(src[off + 2]) << 16 | int(src[off + 3]) << 24
                if levels > length - 4:
                    return 17
                got = _hybrid(src, off + 4, off + 4 + levels, 1, n, idx)
                off += 4 + levels
            else:  # v2: levels uncompressed before the values, in the raw page
                start = page[P_DATA] + page[P_REP_LEN]
                got = _hybrid(raw, start, start + page[P_DEF_LEN], 1, n, idx)
            if got < 0:
                return -got
            if not _all_ones(idx, n):
                return 103
        enc = page[P_ENC]
        if enc == PLAIN:
            if 4 * n > end - off:
                return 15
            code = _plain(src, off, n, out, row, col + written)
        else:
            if not have_dict:
                return 11
            code = 0
            if n > 0:
                if off >= end:
                    return 15
                width = int(src[off])
                if width > 32:
                    return 13
                code = _indices(src, off + 1, end, width, n, idx, values, size, out, row, col + written)
        if code:
            return code
        written += n
    if written != nval:
        return 9
    return 0


def _decode(raw, arena, pages, status, chunk_nval, max_def, out, chunk_row, chunk_col,
            zstd, slot, lo, hi):  # pragma: no cover - compiled
    """Decode column chunks ``lo:hi`` whose scan succeeded (``status[c, 0] == 0``), with zstd context ``slot``."""
    most_bytes = most_values = most_entries = 1  # the scratch: the largest page of each kind
    for c in range(lo, hi):
        if status[c, 0] == 0:
            for k in range(status[c, 1], status[c, 1] + status[c, 2]):
                if pages[k, P_SRC] == S_PACKED:
                    most_bytes = max(most_bytes, pages[k, P_LEN])
                if pages[k, P_TYPE] == DICTIONARY_PAGE:
                    most_entries = max(most_entries, pages[k, P_NVAL])
                else:
                    most_values = max(most_values, pages[k, P_NVAL])
    buf = np.empty(most_bytes, np.uint8)
    idx = np.empty(most_values, np.int64)
    entries = 1
    while entries < most_entries:  # an entry for every index of the bit width a writer uses
        entries *= 2
    values = np.empty(entries, np.int64)
    for c in range(lo, hi):
        if status[c, 0] == 0:
            status[c, 0] = _decode_chunk(raw, arena, pages, status[c, 1], status[c, 2], chunk_nval[c], max_def[c],
                                         out, chunk_row[c], chunk_col[c], zstd, slot, buf, idx, values)


def _rebind(fn: Callable, namespace: dict) -> Callable:
    return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)


# the Python kernels: the same drivers, each helper rebound to its Python (numpy) version
_PYTHON_NAMESPACE = dict(globals())
for _name, _fn in (("_varint", _varint), ("_i32", _i32), ("_skip", _skip), ("_field", _field), ("_struct", _struct),
                   ("_header", _header), ("_hybrid", _hybrid_numpy), ("_plain", _plain_numpy),
                   ("_lookup", _lookup_numpy), ("_indices", _indices_numpy), ("_all_ones", _all_ones_numpy),
                   ("_dictionary", _dictionary), ("_snappy", _snappy), ("_inflate", _inflate),
                   ("_decode_chunk", _decode_chunk), ("_scan", _scan), ("_decode", _decode)):
    _PYTHON_NAMESPACE[_name] = _rebind(_fn, _PYTHON_NAMESPACE)
PYTHON_KERNELS = (_PYTHON_NAMESPACE["_scan"], _PYTHON_NAMESPACE["_decode"])
_python_varint = _PYTHON_NAMESPACE["_varint"]

_call5: Any  # numba intrinsics (where numba is installed), called by the kernels
_u64: Any
_copy: Any
if numba is not None:
    from llvmlite import ir  # type: ignore[import-untyped]
    from numba.core import cgutils
    from numba.core import types as nbtypes
    from numba.extending import intrinsic

    def _c_call(context, builder, signature, args):  # pragma: no cover - compiled
        """Lowering of ``_call5``: the C function at address ``args[0]``, 64-bit integers in and out."""
        i64 = ir.IntType(64)
        values = [context.cast(builder, v, t, nbtypes.uint64) for v, t in zip(args, signature.args, strict=True)]
        function = builder.inttoptr(values[0], ir.FunctionType(i64, [i64] * (len(values) - 1)).as_pointer())
        return builder.call(function, values[1:])

    # libzstd is called through an address passed in (not a ctypes object, whose address numba would bake into the
    # code): the kernels stay cacheable
    def _call5_typing(typingctx, address, a, b, c, d, e):  # pragma: no cover - compiled
        """``address(a, b, c, d, e)``: a C function of five 64-bit integers or pointers, returning one (a size_t)."""
        args = (address, a, b, c, d, e)
        if not all(isinstance(x, nbtypes.Integer) for x in args):
            return None
        return nbtypes.int64(*args), _c_call

    def _u64_typing(typingctx, buf, p):  # pragma: no cover - compiled
        """``buf[p:p+8]`` as a little-endian int64, one unaligned load, unchecked: the caller checks ``p + 8 <= len``.

        numba's own indexing (a negative-index test on every byte) made the decode loops 5-15 x slower.
        """
        if not (isinstance(buf, nbtypes.Array) and buf.dtype == nbtypes.uint8 and isinstance(p, nbtypes.Integer)):
            return None

        def load(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            at = builder.gep(data, [context.cast(builder, args[1], signature.args[1], nbtypes.intp)])
            return builder.load(builder.bitcast(at, ir.IntType(64).as_pointer()), align=1)

        return nbtypes.int64(buf, p), load

    def _copy_typing(typingctx, dst, at, src, start, n):  # pragma: no cover - compiled
        """``dst[at:at+n] = src[start:start+n]`` as one memcpy, unchecked: the caller checks both ranges.

        The buffers must not overlap (distinct arrays, or ranges apart).
        """
        if not (isinstance(dst, nbtypes.Array) and isinstance(src, nbtypes.Array) and dst.dtype == nbtypes.uint8
                and src.dtype == nbtypes.uint8 and all(isinstance(a, nbtypes.Integer) for a in (at, start, n))):
            return None

        def copy(context, builder, signature, args):
            def pointer(array, index):
                data = context.make_array(signature.args[array])(context, builder, args[array]).data
                return builder.gep(data, [context.cast(builder, args[index], signature.args[index], nbtypes.intp)])

            count = context.cast(builder, args[4], signature.args[4], nbtypes.intp)
            cgutils.raw_memcpy(builder, pointer(0, 1), pointer(2, 3), count, 1)
            return context.get_dummy_value()

        return nbtypes.none(dst, at, src, start, n), copy

    _call5, _u64, _copy = intrinsic(_call5_typing), intrinsic(_u64_typing), intrinsic(_copy_typing)
    _jit = numba.njit(nogil=True, cache=True)
    _varint = _jit(_varint)
    _i32 = _jit(_i32)
    _skip = _jit(_skip)
    _field = _jit(_field)
    _struct = _jit(_struct)
    _header = _jit(_header)
    _hybrid = _jit(_hybrid_scalar)
    _plain = _jit(_plain_scalar)
    _load64 = _jit(_load64)
    _packed = _jit(_packed)
    _indices = _jit(_indices_scalar)
    _all_ones = _jit(_all_ones_scalar)
    _dictionary = _jit(_dictionary)
    _snappy = _jit(_snappy)
    _inflate = _jit(_inflate)
    _decode_chunk = _jit(_decode_chunk)
    _list = _jit(_list)
    _i64 = _jit(_i64)
    _column_meta = _jit(_column_meta)
    _footer = _jit(_footer)
    COMPILED_KERNELS: tuple[Callable, Callable] | None = (_jit(_scan), _jit(_decode))
else:  # pragma: no cover
    COMPILED_KERNELS = None


# ---------------------------------------------------------------------------------------------------------------

class PageReader:
    """Decodes blocks of a signal file's columns with this module; see :func:`open_reader`."""

    def __init__(self, path: Path, metadata: pq.FileMetaData, compiled: bool | None = None):
        self.path = Path(path)
        self.metadata = metadata
        if compiled is None:
            compiled = COMPILED_KERNELS is not None
        if compiled and COMPILED_KERNELS is None:
            raise Unsupported("numba is not installed")
        kernels: tuple[Callable, Callable] = COMPILED_KERNELS if compiled else PYTHON_KERNELS  # type: ignore[assignment]
        self._compiled = compiled
        self._scan, self._decode = kernels
        self._max_def = np.full(metadata.num_columns, -1, np.int64)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 12:
                raise PageError("shorter than a Parquet file")
            tail = os.pread(f.fileno(), 8, size - 8)
        if tail[4:] != b"PAR1":
            raise Unsupported("an encrypted footer" if tail[4:] == b"PARE" else "no Parquet footer magic")
        self.size = size
        self.data_end = size - 8 - int.from_bytes(tail[:4], "little")
        if self.data_end < 4:
            raise PageError("a footer longer than the file")
        self._rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        self._table: np.ndarray | None = None  # the column chunk table, read on the first block

    def _chunks(self) -> np.ndarray:
        """The column chunk table ``[row group, column, T_*]``, read once.

        The compiled kernels parse the footer themselves (pyarrow's accessors cost ~2 µs a chunk); else
        pyarrow's accessors fill the same table. Either way pyarrow has parsed the footer first.
        """
        if self._table is not None:
            return self._table
        meta = self.metadata
        table = np.zeros((meta.num_row_groups, meta.num_columns, 4), np.int64)
        if self._compiled:
            with open(self.path, "rb") as f:
                footer = np.frombuffer(os.pread(f.fileno(), self.size - 8 - self.data_end, self.data_end), np.uint8)
            if _footer(footer, meta.num_row_groups, meta.num_columns, table) or not \
                    np.array_equal(table[0, [0, -1]], _pyarrow_chunks(meta, 0, [0, meta.num_columns - 1])):
                raise Unsupported("a footer that reads otherwise than pyarrow reads it")
        else:
            for g in range(meta.num_row_groups):
                table[g] = _pyarrow_chunks(meta, g, range(meta.num_columns))
        self._table = table
        return table

    def _definition_levels(self, columns: np.ndarray) -> np.ndarray:
        levels = self._max_def[columns]
        for i in np.flatnonzero(levels < 0):
            column = self.metadata.schema.column(int(columns[i]))
            if column.max_repetition_level != 0 or column.max_definition_level > 1:
                raise Unsupported(f"nested column {column.path}")
            self._max_def[columns[i]] = levels[i] = column.max_definition_level
        return levels

    def read_block(self, row_groups: Sequence[int], pixels: np.ndarray) -> np.ndarray:
        """Decode ``pixels`` (column indices) of the consecutive ``row_groups`` as ``(n_pixels, rows)`` uint16.

        Raises :class:`Unsupported` for a layout not decoded here, :class:`PageError` for damaged bytes.
        """
        pixels = np.asarray(pixels, dtype=np.int64)
        n_pix = pixels.size
        rows = [self._rows[g] for g in row_groups]
        out = np.empty((n_pix, sum(rows)), dtype=np.uint16)
        n_chunks = n_pix * len(rows)
        if n_chunks == 0 or out.size == 0:
            return out
        start, length, nval, flags = self._chunks()[np.ix_(np.asarray(row_groups), pixels)].reshape(n_chunks, 4).T
        self._check(start, length, nval, flags, np.repeat(rows, n_pix), pixels, row_groups)
        codec = flags & 3
        chunk_row = np.tile(np.arange(n_pix, dtype=np.int64), len(rows))
        chunk_col = np.repeat(np.cumsum([0] + rows[:-1]).astype(np.int64), n_pix)
        max_def = np.tile(self._definition_levels(pixels), len(rows))
        threads = min(n_chunks, numba.get_num_threads()) if self._compiled and numba is not None else 1
        raw, offset = self._read(start, length, threads)
        status = np.zeros((n_chunks, 3), np.int64)
        page_table = self._scan(raw, offset, length, nval, codec, max_def, status)
        self._raise(status, pixels, row_groups)
        self._verify(raw, page_table, pixels, row_groups)
        arena = self._decompress(raw, page_table, pixels, row_groups)
        with _zstd_contexts(threads if self._compiled and _zstd() is not None else 0) as zstd:
            _in_parallel(functools.partial(self._decode, raw, arena, page_table, status, nval, max_def, out, chunk_row,
                                           chunk_col, zstd), n_chunks, threads)
        self._raise(status, pixels, row_groups)
        return out

    def _check(self, start: np.ndarray, length: np.ndarray, nval: np.ndarray, flags: np.ndarray, rows: np.ndarray,
               pixels: np.ndarray, row_groups: Sequence[int]) -> None:
        """Refuse chunks of a layout not decoded here: :class:`Unsupported`; outside the file: :class:`PageError`."""
        for flag, what in ((F_NO_META, "a column chunk without metadata (encrypted)"),
                           (F_NOT_INT32, "a physical type other than INT32"), (F_CODEC, "a codec it does not decode"),
                           (F_FILE_PATH, "a column chunk in another file")):
            bad = np.flatnonzero(flags & flag)
            if bad.size:
                raise Unsupported(f"{what} ({self._where(int(bad[0]), pixels, row_groups)})")
        bad = np.flatnonzero((start < 4) | (length < 0) | (start > self.data_end - length))
        if bad.size:
            raise PageError(f"{self._where(int(bad[0]), pixels, row_groups)} lies outside the file's data")
        bad = np.flatnonzero(nval != rows)
        if bad.size:
            c = int(bad[0])
            raise PageError(f"{self._where(c, pixels, row_groups)} holds {nval[c]} values for {rows[c]} rows")

    def _read(self, start: np.ndarray, length: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The chunks' bytes, adjacent ones read together: (buffer, each chunk's offset in it).

        Reads of more than READ_PIECE bytes are split, the pieces read on ``threads`` threads (the copies out of
        the page cache took about a fifth of a block's time, measured on one thread).
        """
        order = np.argsort(start, kind="stable")
        a, b = start[order], start[order] + length[order]
        reach = np.maximum.accumulate(b)  # the end of the read so far
        opens = np.ones(a.size, bool)  # a chunk that starts a read: beyond the gap after those before it
        opens[1:] = a[1:] > reach[:-1] + MERGE_GAP
        heads = np.flatnonzero(opens)
        first, last = a[heads], np.maximum.reduceat(b, heads)
        position = np.cumsum(last - first) - (last - first)
        total = int(last[-1] - first[-1] + position[-1])
        span_of = np.empty_like(start)
        span_of[order] = np.cumsum(opens) - 1
        offset = position[span_of] + start - first[span_of]
        pieces = [(at + p - lo, p, min(p + READ_PIECE, hi))  # (buffer position, file start, file end)
                  for lo, hi, at in zip(first.tolist(), last.tolist(), position.tolist(), strict=True)
                  for p in range(lo, hi, READ_PIECE)]
        raw = np.empty(total, np.uint8)
        view = memoryview(raw)  # type: ignore[arg-type]  # (numpy arrays export the buffer protocol)
        try:
            with open(self.path, "rb") as f:
                def read(slot: int, i: int, j: int) -> None:
                    for at, lo, hi in pieces[i:j]:
                        got = 0
                        while got < hi - lo:
                            n = os.preadv(f.fileno(), [view[at + got:at + hi - lo]], lo + got)
                            if n <= 0:
                                raise PageError("the file is shorter than its footer says")
                            got += n

                _in_parallel(read, len(pieces), threads)
        except OSError as exc:
            raise PageError(f"its pages could not be read ({exc})") from None
        return raw, offset

    def _verify(self, raw: np.ndarray, pages: np.ndarray, pixels: np.ndarray, row_groups: Sequence[int]) -> None:
        """Check the CRC of every page that carries one (over its bytes as stored)."""
        view = memoryview(raw)  # type: ignore[arg-type]  # (numpy arrays export the buffer protocol)
        for k in np.flatnonzero(pages[:, P_HAS_CRC]):
            a, n = int(pages[k, P_DATA]), int(pages[k, P_COMP])
            if zlib.crc32(view[a:a + n]) != int(pages[k, P_CRC]) & 0xFFFFFFFF:
                raise PageError(f"{self._where(int(pages[k, P_CHUNK]), pixels, row_groups)}: page checksum "
                                "mismatch: the file is damaged")

    def _decompress(self, raw: np.ndarray, pages: np.ndarray, pixels: np.ndarray,
                    row_groups: Sequence[int]) -> np.ndarray:
        """Decompress the pages the kernels do not into one arena (``pyarrow.Codec``); those pages then point there.

        That is every compressed page with the Python kernels, and zstd pages where libzstd cannot be loaded.
        """
        if self._compiled and _zstd() is not None:  # the kernels decompress every codec decoded here
            return np.empty(0, np.uint8)
        todo = (pages[:, P_SRC] == S_PACKED) & ((pages[:, P_CODEC] == C_ZSTD) | (not self._compiled))
        if not todo.any():
            return np.empty(0, np.uint8)
        view = memoryview(raw)  # type: ignore[arg-type]  # (numpy arrays export the buffer protocol)
        sizes = np.where(todo, pages[:, P_LEN], 0)
        arena_off = np.cumsum(sizes) - sizes
        arena = np.empty(int(sizes.sum()), np.uint8)
        for k in np.flatnonzero(todo):
            a, n, want, o = int(pages[k, P_OFF]), int(pages[k, P_ZLEN]), int(sizes[k]), int(arena_off[k])
            pages[k, P_SRC], pages[k, P_OFF] = S_ARENA, o
            if want == 0:
                continue
            name = CODEC_NAMES[int(pages[k, P_CODEC])]
            try:
                if name == "snappy":  # its preamble states the length; pyarrow pads a larger buffer silently
                    stated, _ = _python_varint(raw, a, a + n, 5)
                    if stated != want:
                        raise PageError(f"{stated} bytes where the page header says {want}")
                result = _codec(name).decompress(view[a:a + n], want)
            except (pa.ArrowException, OSError, ValueError, PageError) as exc:
                raise PageError(f"{self._where(int(pages[k, P_CHUNK]), pixels, row_groups)}: a page could not "
                                f"be decompressed ({exc})") from None
            if result.size != want:
                raise PageError(f"{self._where(int(pages[k, P_CHUNK]), pixels, row_groups)}: a page decompressed "
                                f"to {result.size} bytes, its header says {want}")
            arena[o:o + want] = np.frombuffer(result, np.uint8)
        return arena

    def _where(self, chunk: int, pixels: np.ndarray, row_groups: Sequence[int]) -> str:
        return f"column {int(pixels[chunk % pixels.size])} of row group {row_groups[chunk // pixels.size]}"

    def _raise(self, status: np.ndarray, pixels: np.ndarray, row_groups: Sequence[int]) -> None:
        bad = np.flatnonzero(status[:, 0])
        if bad.size == 0:
            return
        chunk = int(bad[0])
        code = int(status[chunk, 0])
        where = self._where(chunk, pixels, row_groups)
        if code in _UNSUPPORTED:
            raise Unsupported(f"{_UNSUPPORTED[code]} ({where})")
        if code == E_RANGE:
            raise OutOfRange(int(pixels[chunk % pixels.size]), f"a value outside 0..65535 in {where}")
        raise PageError(f"{where}: {_PAGE_ERRORS.get(code, f'error {code}')}")


def _pyarrow_chunks(meta: pq.FileMetaData, g: int, columns: Iterable[int]) -> np.ndarray:
    """Rows of the column chunk table (``PageReader._chunks``) of ``columns`` of row group ``g``, from pyarrow."""
    group = meta.row_group(g)
    rows = []
    for j in columns:
        chunk = group.column(j)
        flags = CODECS.get(chunk.compression, F_CODEC) | (F_NOT_INT32 if chunk.physical_type != "INT32" else 0) | \
            (F_FILE_PATH if chunk.file_path else 0)
        first = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        rows.append((first, chunk.total_compressed_size, chunk.num_values, flags))
    return np.array(rows, np.int64).reshape(-1, 4)


@functools.cache
def _codec(name: str) -> pa.Codec:
    return pa.Codec(name)


PARTS_PER_THREAD = 4  # runs of chunks per thread, taken in turn by whichever thread is free
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _in_parallel(work: Callable[[int, int, int], None], n_items: int, threads: int) -> None:
    """``work(slot, lo, hi)`` over runs of ``n_items`` items, on ``threads`` threads (this one and a pool's).

    The compiled kernels and the reads release the GIL. Threads of a pool, not numba's ``prange``: on a loaded
    machine OpenMP's spinning workers and its fixed split of the chunks made a block's decode 2-3 x slower
    (median), and here a thread that is free takes the next run. ``slot`` (0..threads-1) names the thread (its
    zstd context).
    """
    parts = min(n_items, threads * PARTS_PER_THREAD)
    bounds = [part * n_items // parts for part in range(parts + 1)]
    turns = itertools.count()  # (next() on a count is atomic under the GIL)

    def take_turns(slot: int) -> None:
        while (part := next(turns)) < parts:
            work(slot, bounds[part], bounds[part + 1])

    helpers = [_pool().submit(take_turns, slot) for slot in range(1, min(threads, parts))]
    try:
        take_turns(0)
    finally:
        for helper in helpers:
            if not helper.cancel():  # (one still queued behind other work has no run left to take)
                helper.result()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="arielstream-pages")
        return _POOL


class _Zstd(NamedTuple):
    library: ctypes.CDLL
    decompress: int  # ZSTD_decompressDCtx's address


@functools.cache
def _zstd() -> _Zstd | None:
    """The system's libzstd, which the compiled kernels call; None (logged once) where it cannot be loaded."""
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    try:
        library = ctypes.CDLL(name)
        library.ZSTD_createDCtx.restype = ctypes.c_void_p
        library.ZSTD_createDCtx.argtypes = []
        address = ctypes.cast(library.ZSTD_decompressDCtx, ctypes.c_void_p).value
    except (OSError, AttributeError) as exc:
        log.info("libzstd cannot be loaded (%s): zstd pages are decompressed with pyarrow, outside the parallel "
                 "decode (slower)", exc)
        return None
    return _Zstd(library, int(address or 0))


_CONTEXTS_LOCK = threading.Lock()
_FREE_CONTEXTS: list[int] = []  # zstd decompression contexts, kept for the process's life (~100 kB each)


@contextlib.contextmanager
def _zstd_contexts(n: int) -> Iterator[np.ndarray]:
    """The kernels' ``zstd`` argument: ZSTD_decompressDCtx's address, then ``n`` contexts no other call uses meanwhile.

    ``n == 0`` (or no libzstd) gives just a zero.
    """
    zstd = _zstd() if n else None
    if zstd is None:
        yield np.zeros(1, np.uint64)
        return
    with _CONTEXTS_LOCK:
        taken = [_FREE_CONTEXTS.pop() for _ in range(min(n, len(_FREE_CONTEXTS)))]
    try:
        while len(taken) < n:
            context = zstd.library.ZSTD_createDCtx()
            if not context:
                raise MemoryError("ZSTD_createDCtx failed")
            taken.append(context)
        yield np.array([zstd.decompress, *taken], np.uint64)
    finally:
        with _CONTEXTS_LOCK:
            _FREE_CONTEXTS.extend(taken)


def _forked() -> None:
    """In a forked child: none of the parent's pool threads, and fresh locks (one of its threads may have held one)."""
    global _POOL, _POOL_LOCK, _CONTEXTS_LOCK
    _POOL, _POOL_LOCK, _CONTEXTS_LOCK = None, threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_forked)


def open_reader(path: str | Path, parquet: pq.ParquetFile, compiled: bool | None = None) -> PageReader | None:
    """A :class:`PageReader` of ``path`` when its schema is one decoded here, else None (logged once, INFO)."""
    types_ = set(parquet.schema_arrow.types)
    try:
        if not types_ <= set(ARROW_TYPES):
            raise Unsupported(f"column types {sorted(map(str, types_ - set(ARROW_TYPES)))}")
        return PageReader(Path(path), parquet.metadata, compiled)
    except (Unsupported, PageError, OSError) as exc:
        log.info("%s: read with pyarrow, not the page decoder: %s", path, exc)
        return None
