"""An opt-in Parquet page decoder for the signal files: column chunks straight into the pixel-major block.

pyarrow's generic reader pays a fixed ~20 µs per column chunk whatever it holds, about half
the decode time of an observation (issue 24). This module decodes the layouts the signal files
use itself, from the footer pyarrow has already parsed: it reads each needed column chunk's bytes
(adjacent chunks in one ``os.preadv``), walks its pages (a small bounds-checked parser of the
Thrift compact-protocol ``PageHeader``), verifies page CRCs where pages carry one, decompresses
(``pyarrow.Codec``: zstd and snappy, the codecs the install already brings) and decodes
dictionary pages (PLAIN INT32), data pages v1 and v2 with RLE_DICTIONARY / PLAIN_DICTIONARY
indices (the RLE/bit-packed hybrid) or PLAIN INT32 values into ``out[(pixel, frame)]``, uint16,
exactly what :meth:`arielstream.io.signal.SignalFile.read_block` returns.

It is used only when ``ARIELSTREAM_DECODER=pages`` (:func:`requested`, the one place that reads the
variable); pyarrow stays the default. Two outcomes besides the block:

- :class:`Unsupported`: a layout it does not decode (other encodings, physical types or codecs,
  an encrypted footer, nulls, repetition levels, pages larger than their values can need). The
  caller then reads that file with pyarrow, as without the opt-in.
- :class:`PageError`: bytes that cannot be a valid page (a header or run past the end of its
  chunk, a bad varint, sizes that disagree, a dictionary index beyond the dictionary, a bit
  width above 32, more or fewer values than the chunk's ``num_values``, a page CRC mismatch) or
  a value outside 0..65535 (:class:`OutOfRange`). The caller turns it into an ``InputError``.

Every offset and length is checked before it is used: a damaged file is an error, never a read
outside a buffer. The hot loops (header walk, run decoding, copies) are numba-compiled (``cache``,
``nogil``, in parallel over column chunks) when numba is importable; without it the same driver
runs in Python with numpy doing each run (slower than pyarrow: the opt-in is for numba installs).
"""

from __future__ import annotations

import functools
import logging
import os
import types
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

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
CHOICES = ("pyarrow", "pages")
CODECS = {"UNCOMPRESSED": None, "SNAPPY": "snappy", "ZSTD": "zstd"}
ARROW_TYPES = (pa.uint16(), pa.int32())  # the column types decoded here (INT32 physical, no logical narrowing)
MERGE_GAP = 1 << 16  # chunks closer than this are read in one preadv


def requested() -> bool:
    """True when ``ARIELSTREAM_DECODER=pages``: decode signal files with this module (default ``pyarrow``)."""
    wanted = os.environ.get(ENV, "pyarrow").strip().lower() or "pyarrow"
    if wanted not in CHOICES:
        _unknown_choice(wanted)
        return False
    return wanted == "pages"


@functools.cache
def _unknown_choice(wanted: str) -> None:
    log.warning("%s=%s is not one of %s; using pyarrow", ENV, wanted, ", ".join(CHOICES))


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

# the page table (one int64 row per page) written by _scan and completed in Python
P_CHUNK, P_TYPE, P_DATA, P_COMP, P_UNCOMP, P_HAS_CRC, P_CRC, P_NVAL, P_ENC, P_DEF_ENC, P_DEF_LEN, P_REP_LEN, \
    P_COMPRESSED, P_SRC, P_OFF, P_LEN = range(16)
N_FIELDS = 16
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
    kind = np.zeros(MAX_DEPTH, np.int64)  # 0 struct fields, 1 list elements, 2 map entries
    left = np.zeros(MAX_DEPTH, np.int64)
    first = np.zeros(MAX_DEPTH, np.int64)  # element type, or key type of a map
    second = np.zeros(MAX_DEPTH, np.int64)  # value type of a map
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


def _scan(raw, chunk_off, chunk_len, chunk_nval, max_def, status):  # noqa: C901  # pragma: no cover - compiled
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
            row[P_COMPRESSED] = h[H_COMPRESSED] if ptype == DATA_PAGE_V2 else 1
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
    """``n`` PLAIN INT32 values at ``pos`` into ``out[row, col:col+n]``: 0, or E_RANGE outside 0..65535."""
    for i in range(n):
        p = pos + 4 * i
        if buf[p + 2] | buf[p + 3]:
            return E_RANGE
        out[row, col + i] = int(buf[p]) | (int(buf[p + 1]) << 8)
    return 0


def _plain_numpy(buf, pos, n, out, row, col):
    """:func:`_plain_scalar` in numpy."""
    halves = buf[pos:pos + 4 * n].view("<u2").reshape(n, 2)
    if halves[:, 1].any():
        return E_RANGE
    out[row, col:col + n] = halves[:, 0]
    return 0


def _lookup_scalar(values, idx, n, out, row, col):  # pragma: no cover - compiled
    """``out[row, col+i] = values[idx[i]]``: 0, 12 for an index beyond ``values``, E_RANGE for a value < 0."""
    size = values.shape[0]
    for i in range(n):
        k = idx[i]
        if k < 0 or k >= size:
            return 12
        v = values[k]
        if v < 0:
            return E_RANGE
        out[row, col + i] = v
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


def _all_ones_scalar(levels, n):  # pragma: no cover - compiled
    for i in range(n):
        if levels[i] != 1:
            return False
    return True


def _all_ones_numpy(levels, n):
    return bool(np.all(levels[:n] == 1))


def _dictionary(src, off, n, length):  # pragma: no cover - compiled
    """The PLAIN INT32 dictionary at ``src[off:]`` as int64, -1 for entries outside 0..65535; None if too short."""
    values = np.empty(max(n, 0), np.int64)
    if n < 0 or 4 * n > length:
        return values, 18
    for i in range(n):
        p = off + 4 * i
        if src[p + 2] | src[p + 3]:
            values[i] = -1
        else:
            values[i] = int(src[p]) | (int(src[p + 1]) << 8)
    return values, 0


def _decode_chunk(raw, arena, pages, first, n_pages, nval, max_def, out, row, col):  # noqa: C901  # pragma: no cover - compiled
    """Decode one column chunk's pages into ``out[row, col:col+nval]``: a status code."""
    values = np.empty(0, np.int64)
    have_dict = False
    most = 0
    for k in range(first, first + n_pages):
        most = max(most, pages[k, P_NVAL])
    scratch = np.empty(most, np.int64)
    written = 0
    for k in range(first, first + n_pages):
        page = pages[k]
        src = raw if page[P_SRC] == 0 else arena
        off = page[P_OFF]
        length = page[P_LEN]
        end = off + length
        n = page[P_NVAL]
        if page[P_TYPE] == DICTIONARY_PAGE:
            values, code = _dictionary(src, off, n, length)
            if code:
                return code
            have_dict = True
            continue
        if written + n > nval:
            return 8
        if max_def > 0:
            if page[P_TYPE] == DATA_PAGE:  # levels inside the page, after a 4-byte length
                if length < 4:
                    return 17
                size = int(src[off]) | int(src[off + 1]) << 8 | int(src[off + 2]) << 16 | int(src[off + 3]) << 24
                if size > length - 4:
                    return 17
                got = _hybrid(src, off + 4, off + 4 + size, 1, n, scratch)
                off += 4 + size
            else:  # v2: levels uncompressed before the values, in the raw page
                start = page[P_DATA] + page[P_REP_LEN]
                got = _hybrid(raw, start, start + page[P_DEF_LEN], 1, n, scratch)
            if got < 0:
                return -got
            if not _all_ones(scratch, n):
                return 103
        enc = page[P_ENC]
        if enc == PLAIN:
            if 4 * n > end - off:
                return 15
            code = _plain(src, off, n, out, row, col + written)
        else:
            if not have_dict:
                return 11
            if n > 0:
                if off >= end:
                    return 15
                width = int(src[off])
                if width > 32:
                    return 13
                got = _hybrid(src, off + 1, end, width, n, scratch)
                if got < 0:
                    return -got
            code = _lookup(values, scratch, n, out, row, col + written)
        if code:
            return code
        written += n
    if written != nval:
        return 9
    return 0


def _decode(raw, arena, pages, status, chunk_nval, max_def, out, chunk_row, chunk_col):  # pragma: no cover
    """Decode every column chunk whose scan succeeded (``status[c, 0] == 0``), in parallel over chunks."""
    for c in prange(chunk_row.shape[0]):
        if status[c, 0] == 0:
            status[c, 0] = _decode_chunk(raw, arena, pages, status[c, 1], status[c, 2], chunk_nval[c], max_def[c],
                                         out, chunk_row[c], chunk_col[c])


def _rebind(fn: Callable, namespace: dict) -> Callable:
    return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)


# the Python kernels: the same drivers, each helper rebound to its Python (numpy) version
_PYTHON_NAMESPACE = dict(globals())
_PYTHON_NAMESPACE.update(prange=range)
for _name, _fn in (("_varint", _varint), ("_i32", _i32), ("_skip", _skip), ("_field", _field), ("_struct", _struct),
                   ("_header", _header), ("_hybrid", _hybrid_numpy), ("_plain", _plain_numpy),
                   ("_lookup", _lookup_numpy), ("_all_ones", _all_ones_numpy), ("_dictionary", _dictionary),
                   ("_decode_chunk", _decode_chunk), ("_scan", _scan), ("_decode", _decode)):
    _PYTHON_NAMESPACE[_name] = _rebind(_fn, _PYTHON_NAMESPACE)
PYTHON_KERNELS = (_PYTHON_NAMESPACE["_scan"], _PYTHON_NAMESPACE["_decode"])
_python_varint = _PYTHON_NAMESPACE["_varint"]

if numba is not None:
    prange = numba.prange
    _jit = numba.njit(nogil=True, cache=True)
    _varint = _jit(_varint)
    _i32 = _jit(_i32)
    _skip = _jit(_skip)
    _field = _jit(_field)
    _struct = _jit(_struct)
    _header = _jit(_header)
    _hybrid = _jit(_hybrid_scalar)
    _plain = _jit(_plain_scalar)
    _lookup = _jit(_lookup_scalar)
    _all_ones = _jit(_all_ones_scalar)
    _dictionary = _jit(_dictionary)
    _decode_chunk = _jit(_decode_chunk)
    COMPILED_KERNELS: tuple[Callable, Callable] | None = (
        _jit(_scan), numba.njit(nogil=True, cache=True, parallel=True)(_decode))
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
        self._scan, self._decode = kernels
        self._max_def = np.full(metadata.num_columns, -1, np.int64)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 12:
                raise PageError("shorter than a Parquet file")
            tail = os.pread(f.fileno(), 8, size - 8)
        if tail[4:] != b"PAR1":
            raise Unsupported("an encrypted footer" if tail[4:] == b"PARE" else "no Parquet footer magic")
        self.data_end = size - 8 - int.from_bytes(tail[:4], "little")
        if self.data_end < 4:
            raise PageError("a footer longer than the file")

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
        groups = [self.metadata.row_group(int(g)) for g in row_groups]
        rows = [g.num_rows for g in groups]
        out = np.empty((n_pix, sum(rows)), dtype=np.uint16)
        n_chunks = n_pix * len(groups)
        if n_chunks == 0 or out.size == 0:
            return out
        start = np.empty(n_chunks, np.int64)
        length = np.empty(n_chunks, np.int64)
        nval = np.empty(n_chunks, np.int64)
        codec = []
        chunk_row = np.tile(np.arange(n_pix, dtype=np.int64), len(groups))
        chunk_col = np.repeat(np.cumsum([0] + rows[:-1]).astype(np.int64), n_pix)
        max_def = np.tile(self._definition_levels(pixels), len(groups))
        c = 0
        for g, group in zip(row_groups, groups, strict=True):
            for p in pixels:
                meta = group.column(int(p))
                if meta.physical_type != "INT32":
                    raise Unsupported(f"physical type {meta.physical_type}")
                if meta.compression not in CODECS:
                    raise Unsupported(f"codec {meta.compression}")
                if meta.file_path:
                    raise Unsupported("a column chunk in another file")
                first = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
                if first is None or first < 4 or meta.total_compressed_size < 0 or \
                        first + meta.total_compressed_size > self.data_end:
                    raise PageError(f"column {int(p)} of row group {g} lies outside the file's data")
                if meta.num_values != group.num_rows:
                    raise PageError(f"column {int(p)} of row group {g} holds {meta.num_values} values for "
                                    f"{group.num_rows} rows")
                start[c], length[c], nval[c] = first, meta.total_compressed_size, meta.num_values
                codec.append(CODECS[meta.compression])
                c += 1
        raw, offset = self._read(start, length)
        status = np.zeros((n_chunks, 3), np.int64)
        page_table = self._scan(raw, offset, length, nval, max_def, status)
        self._raise(status, pixels, row_groups)
        arena = self._decompress(raw, page_table, codec, status, pixels, row_groups)
        self._decode(raw, arena, page_table, status, nval, max_def, out, chunk_row, chunk_col)
        self._raise(status, pixels, row_groups)
        return out

    def _read(self, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The chunks' bytes, adjacent ones read together: (buffer, each chunk's offset in it)."""
        order = np.argsort(start, kind="stable")
        span_of = np.empty_like(start)
        spans: list[list[int]] = []  # [file start, file end, position in the buffer] of each read
        for c in order:
            a, b = int(start[c]), int(start[c] + length[c])
            if spans and a <= spans[-1][1] + MERGE_GAP:  # (sorted: a >= the span's start)
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b, 0])
            span_of[c] = len(spans) - 1
        total = 0
        for span in spans:
            span[2] = total
            total += span[1] - span[0]
        first = np.array([span[0] for span in spans], np.int64)
        position = np.array([span[2] for span in spans], np.int64)
        offset = position[span_of] + start - first[span_of]
        raw = np.empty(total, np.uint8)
        view = memoryview(raw)  # type: ignore[arg-type]  # (numpy arrays export the buffer protocol)
        try:
            with open(self.path, "rb") as f:
                for a, b, at in spans:
                    got = 0
                    while got < b - a:
                        n = os.preadv(f.fileno(), [view[at + got:at + b - a]], a + got)
                        if n <= 0:
                            raise PageError("the file is shorter than its footer says")
                        got += n
        except OSError as exc:
            raise PageError(f"its pages could not be read ({exc})") from None
        return raw, offset

    def _decompress(self, raw: np.ndarray, pages: np.ndarray, codec: list[str | None], status: np.ndarray,
                    pixels: np.ndarray, row_groups: Sequence[int]) -> np.ndarray:
        """Verify page CRCs and decompress compressed pages into one arena; set each page's value bytes."""
        view = memoryview(raw)  # type: ignore[arg-type]  # (numpy arrays export the buffer protocol)
        data, comp, uncomp = pages[:, P_DATA], pages[:, P_COMP], pages[:, P_UNCOMP]
        levels = pages[:, P_DEF_LEN] + pages[:, P_REP_LEN]  # v2 only: uncompressed, before the values
        codes = [codec[c] for c in pages[:, P_CHUNK]]
        packed = np.array([name is not None for name in codes], dtype=bool) & (pages[:, P_COMPRESSED] == 1)
        pages[:, P_SRC] = packed
        pages[:, P_LEN] = uncomp - levels
        pages[:, P_OFF] = data + levels
        if np.any(~packed & (comp != uncomp)):
            self._fail(int(np.flatnonzero(~packed & (comp != uncomp))[0]), pages, 16, pixels, row_groups)
        for k in np.flatnonzero(pages[:, P_HAS_CRC]):
            a, n = int(data[k]), int(comp[k])
            if zlib.crc32(view[a:a + n]) != int(pages[k, P_CRC]) & 0xFFFFFFFF:
                raise PageError(f"{self._where(int(pages[k, P_CHUNK]), pixels, row_groups)}: page checksum "
                                "mismatch: the file is damaged")
        sizes = np.where(packed, uncomp - levels, 0)
        arena_off = np.cumsum(sizes) - sizes
        arena = np.empty(int(sizes.sum()), np.uint8)
        pages[packed, P_OFF] = arena_off[packed]
        for k in np.flatnonzero(packed):
            a, n, want, o = int(data[k] + levels[k]), int(comp[k] - levels[k]), int(sizes[k]), int(arena_off[k])
            if want == 0:
                continue
            name = codes[k]
            source = view[a:a + n]
            try:
                if name == "snappy":  # its preamble states the length; pyarrow pads a larger buffer silently
                    stated, _ = _python_varint(raw, a, a + n, 5)
                    if stated != want:
                        raise PageError(f"{stated} bytes where the page header says {want}")
                result = _codec(name).decompress(source, want)
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

    def _fail(self, page: int, pages: np.ndarray, code: int, pixels: np.ndarray, row_groups: Sequence[int]) -> None:
        status = np.zeros((int(pages[page, P_CHUNK]) + 1, 3), np.int64)
        status[-1, 0] = code
        self._raise(status, pixels, row_groups)

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


@functools.cache
def _codec(name: str) -> pa.Codec:
    return pa.Codec(name)


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
