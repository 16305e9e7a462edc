"""The opt-in page decoder (arielstream.io.pages): value for value against pyarrow, and safe on damaged bytes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import arielstream
from arielstream.errors import InputError
from arielstream.io import pages
from arielstream.io.signal import PAGE_CHECKSUM_VERIFICATION, SignalFile
from arielstream.layout import AIRS, FGS1

from .conftest import DATA_SAMPLES

KERNELS = [False] + ([True] if pages.COMPILED_KERNELS is not None else [])
needs_checksums = pytest.mark.skipif(not PAGE_CHECKSUM_VERIFICATION, reason="pyarrow < 15 writes no page checksums")


def frames(n_rows: int, n_cols: int, seed: int = 0, distinct: int | None = None) -> np.ndarray:
    """uint16 (rows, columns): smooth columns with noise (dictionary-friendly), or ``distinct`` values per column."""
    rng = np.random.default_rng(seed)
    if distinct is not None:
        return rng.integers(0, 65536, (n_rows, n_cols)).astype(np.uint16) % np.uint16(distinct) * np.uint16(7)
    base = rng.integers(0, 60000, n_cols)
    data = base + rng.integers(0, 40, (n_rows, n_cols))
    data[rng.random((n_rows, n_cols)) < 0.01] = 65535  # saturated reads: the largest value
    data[rng.random((n_rows, n_cols)) < 0.01] = 0
    return data.astype(np.uint16)


def write(path: Path, data: np.ndarray, dtype: pa.DataType | None = None, nullable: bool = False,
          **options) -> Path:
    dtype = dtype or pa.uint16()
    arrays = [pa.array(np.ascontiguousarray(data[:, j])).cast(dtype) for j in range(data.shape[1])]
    schema = pa.schema([pa.field(f"column_{j}", dtype, nullable=nullable) for j in range(data.shape[1])])
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path, **options)
    return path


def expected(path: Path, row_groups: list[int], pixels: np.ndarray) -> np.ndarray:
    """What pyarrow reads: ``(len(pixels), rows)``."""
    table = pq.ParquetFile(path).read_row_groups(row_groups)
    return np.stack([table.column(int(p)).to_numpy() for p in pixels]).astype(np.uint16)


def decode(path: Path, row_groups: list[int], pixels: np.ndarray, compiled: bool) -> np.ndarray:
    reader = pages.open_reader(path, pq.ParquetFile(path), compiled)
    assert reader is not None
    return reader.read_block(row_groups, pixels)


LAYOUTS = {
    "zstd-dictionary-v1": dict(compression="zstd"),
    "snappy-dictionary-v2": dict(compression="snappy", data_page_version="2.0"),
    "none-plain-v1": dict(compression="none", use_dictionary=False),
    "none-dictionary-v2": dict(compression="none", data_page_version="2.0"),
    "zstd-plain-v2": dict(compression="zstd", use_dictionary=False, data_page_version="2.0"),
    "snappy-plain-v1": dict(compression="snappy", use_dictionary=False),
    # a dictionary that overflows mid-chunk: dictionary pages, then PLAIN pages in the same chunk
    "zstd-fallback-v1": dict(compression="zstd", dictionary_pagesize_limit=256),
    "snappy-fallback-v2": dict(compression="snappy", dictionary_pagesize_limit=256, data_page_version="2.0"),
}


@pytest.mark.parametrize("compiled", KERNELS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_decodes_as_pyarrow_does(tmp_path, layout, compiled):
    data = frames(700, 12, seed=len(layout), distinct=300 if "fallback" in layout else None)
    # many pages per chunk (data_page_size), several row groups, checksums on every page where pyarrow can
    options = dict(LAYOUTS[layout], data_page_size=300, write_batch_size=32, row_group_size=250)
    if PAGE_CHECKSUM_VERIFICATION:
        options["write_page_checksum"] = True
    path = write(tmp_path / "s.parquet", data, **options)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 3
    every = np.arange(12)
    np.testing.assert_array_equal(decode(path, [0, 1, 2], every, compiled), data.T)
    some = np.array([7, 2, 3, 11])  # a subset, out of order, of some row groups
    np.testing.assert_array_equal(decode(path, [1, 2], some, compiled), data[250:, some].T)
    np.testing.assert_array_equal(decode(path, [2], some, compiled), expected(path, [2], some))


def test_the_layouts_hold_many_pages_and_the_fallback_mixes_encodings(tmp_path):
    """The differential above covers what it claims: many pages per chunk, and PLAIN after a dictionary."""
    data = frames(700, 2, seed=1, distinct=300)
    path = write(tmp_path / "s.parquet", data, **LAYOUTS["zstd-fallback-v1"], data_page_size=300, write_batch_size=32,
                 row_group_size=250)
    reader = pages.open_reader(path, pq.ParquetFile(path))
    meta = pq.ParquetFile(path).metadata.row_group(0).column(0)
    first = meta.dictionary_page_offset
    raw, offset = reader._read(np.array([first]), np.array([meta.total_compressed_size]))
    status = np.zeros((1, 3), np.int64)
    table = reader._scan(raw, offset, np.array([meta.total_compressed_size]), np.array([250]),
                         np.array([pages.C_ZSTD]), np.zeros(1, np.int64), status)
    assert status[0, 0] == 0
    kinds = table[:, pages.P_TYPE].tolist()
    assert kinds[0] == pages.DICTIONARY_PAGE and kinds.count(pages.DATA_PAGE) >= 3
    assert set(table[1:, pages.P_ENC].tolist()) == {pages.PLAIN, pages.RLE_DICTIONARY}


@pytest.mark.parametrize("compiled", KERNELS)
def test_optional_columns_without_nulls_decode_and_with_nulls_fall_back(tmp_path, compiled, caplog):
    data = frames(400, 5, seed=3)
    for version in ("1.0", "2.0"):
        path = write(tmp_path / f"o{version}.parquet", data, nullable=True, data_page_version=version,
                     data_page_size=200, row_group_size=150)
        np.testing.assert_array_equal(decode(path, [0, 1, 2], np.arange(5), compiled), data.T)
    arrays = [pa.array(data[:, j], mask=(np.arange(400) == 17 * j) if j else None) for j in range(5)]
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_arrays(arrays, names=[f"c{j}" for j in range(5)]), path)
    reader = pages.open_reader(path, pq.ParquetFile(path), compiled)
    np.testing.assert_array_equal(reader.read_block([0], np.array([0])), data[:, :1].T)  # no null in column 0
    with pytest.raises(pages.Unsupported, match="null values"):
        reader.read_block([0], np.array([1, 2]))


def test_int32_columns_decode_and_values_beyond_uint16_are_refused(tmp_path):
    data = frames(300, 4, seed=4).astype(np.int64)
    path = write(tmp_path / "i.parquet", data, dtype=pa.int32())
    np.testing.assert_array_equal(decode(path, [0], np.arange(4), KERNELS[-1]), data.T)
    for bad, dictionary in ((70000, True), (-1, False), (65536, False)):
        wide = data.copy()
        wide[123, 2] = bad
        path = write(tmp_path / f"w{bad}.parquet", wide, dtype=pa.int32(), use_dictionary=dictionary)
        with pytest.raises(pages.OutOfRange, match="outside 0..65535") as exc:
            decode(path, [0], np.arange(4), KERNELS[-1])
        assert exc.value.column == 2
        np.testing.assert_array_equal(decode(path, [0], np.array([0, 1, 3]), KERNELS[-1]), data[:, [0, 1, 3]].T)


@pytest.mark.parametrize("what", ["int64 columns", "lz4", "gzip", "DELTA_BINARY_PACKED", "BYTE_STREAM_SPLIT"])
def test_other_layouts_are_left_to_pyarrow(tmp_path, what, caplog):
    data = frames(300, 3, seed=5)
    options: dict = {
        "int64 columns": dict(dtype=pa.int64()), "lz4": dict(compression="lz4"), "gzip": dict(compression="gzip"),
        "DELTA_BINARY_PACKED": dict(use_dictionary=False, column_encoding="DELTA_BINARY_PACKED"),
        "BYTE_STREAM_SPLIT": dict(use_dictionary=False, column_encoding="BYTE_STREAM_SPLIT"),
    }[what]
    try:
        path = write(tmp_path / "x.parquet", data, **options)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        pytest.skip(f"this pyarrow cannot write {what}: {exc}")
    pf = pq.ParquetFile(path)
    reader = pages.open_reader(path, pf)
    if reader is not None:  # refused only once a page or chunk says so
        with pytest.raises(pages.Unsupported):
            reader.read_block([0], np.arange(3))


def test_the_signal_reader_uses_the_decoder_by_default_with_numba_and_falls_back_once(tmp_path, monkeypatch,
                                                                                       caplog):
    data = frames(360, FGS1.pixels, seed=6)
    path = write(tmp_path / "FGS1_signal_0.parquet", data, row_group_size=120)
    pixels = np.arange(0, FGS1.pixels, 5)
    monkeypatch.delenv(pages.ENV, raising=False)
    assert (SignalFile(path, FGS1)._pages is not None) == (pages.numba is not None)  # the default: auto
    monkeypatch.setenv(pages.ENV, "pyarrow")
    assert SignalFile(path, FGS1)._pages is None  # forced
    monkeypatch.setenv(pages.ENV, "pages")
    signal = SignalFile(path, FGS1)
    assert signal._pages is not None
    np.testing.assert_array_equal(signal.read_block([1, 2], pixels), data[120:, pixels].T)
    lz4 = write(tmp_path / "lz4.parquet", data, compression="lz4", row_group_size=120)
    signal = SignalFile(lz4, FGS1)
    with caplog.at_level(logging.INFO, logger="arielstream.io.signal"):
        for _ in range(3):
            np.testing.assert_array_equal(signal.read_block([0], pixels), data[:120, pixels].T)
    assert sum("read with pyarrow, not the page decoder" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setenv(pages.ENV, "nonsense")
    assert pages.choice() == "auto" and pages.requested() == (pages.numba is not None)


def test_damaged_pages_are_input_errors_through_the_signal_reader(tmp_path, monkeypatch):
    data = frames(300, FGS1.pixels, seed=7)
    path = write(tmp_path / "FGS1_signal_0.parquet", data, compression="none", use_dictionary=False)
    meta = pq.ParquetFile(path).metadata.row_group(0).column(9)
    raw = bytearray(path.read_bytes())
    raw[meta.data_page_offset + meta.total_compressed_size - 2] = 0xFF  # the high half of column 9's last value
    path.write_bytes(bytes(raw))
    monkeypatch.setenv(pages.ENV, "pages")
    with pytest.raises(InputError, match="column 9 does not fit uint16"):
        SignalFile(path, FGS1).read_block([0], np.arange(20))
    raw[meta.data_page_offset + 1] ^= 0x40  # the page header's size fields
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="row group 0 could not be decoded"):
        SignalFile(path, FGS1).read_block([0], np.arange(20))


@needs_checksums
def test_a_page_crc_mismatch_is_named(tmp_path):
    data = frames(300, 4, seed=8)
    path = write(tmp_path / "c.parquet", data, compression="none", use_dictionary=False, write_page_checksum=True)
    meta = pq.ParquetFile(path).metadata.row_group(0).column(1)
    raw = bytearray(path.read_bytes())
    raw[meta.data_page_offset + meta.total_compressed_size - 8] ^= 0x01  # a value's low byte: in range, wrong
    path.write_bytes(bytes(raw))
    with pytest.raises(pages.PageError, match="column 1 of row group 0: page checksum mismatch"):
        decode(path, [0], np.arange(4), KERNELS[-1])
    np.testing.assert_array_equal(decode(path, [0], np.array([0, 2, 3]), KERNELS[-1]), data[:, [0, 2, 3]].T)


def test_the_footer_table_is_the_one_pyarrow_reads(tmp_path):
    """The compiled kernels parse the footer themselves: the same chunk table as pyarrow's accessors give."""
    if pages.COMPILED_KERNELS is None:
        pytest.skip("numba is not installed")
    files = {name: dict(options, row_group_size=250) for name, options in LAYOUTS.items()}
    files["optional, page index, statistics off"] = dict(row_group_size=100, write_page_index=True,
                                                          write_statistics=False)
    for name, options in files.items():
        path = write(tmp_path / f"{name}.parquet", frames(700, 12, seed=11), nullable="optional" in name,
                     **options)
        meta = pq.ParquetFile(path).metadata
        compiled = pages.PageReader(path, meta, compiled=True)._chunks()
        python = pages.PageReader(path, meta, compiled=False)._chunks()
        assert compiled.shape == (meta.num_row_groups, 12, 4) and np.all(compiled[..., pages.T_NVAL] > 0)
        np.testing.assert_array_equal(compiled, python, err_msg=name)


def test_a_footer_that_parses_otherwise_is_left_to_pyarrow(tmp_path, monkeypatch):
    if pages.COMPILED_KERNELS is None:
        pytest.skip("numba is not installed")
    path = write(tmp_path / "f.parquet", frames(100, 3, seed=12))
    reader = pages.PageReader(path, pq.ParquetFile(path).metadata, compiled=True)
    monkeypatch.setattr(pages, "_footer", lambda buf, groups, columns, table: table.__setitem__(..., 1) or 0)
    with pytest.raises(pages.Unsupported, match="footer"):
        reader.read_block([0], np.arange(3))


needs_numba = pytest.mark.skipif(pages.COMPILED_KERNELS is None, reason="numba is not installed")


def _payloads(rng: np.random.Generator) -> list[bytes]:
    """Bytes of every kind the codecs meet: empty, incompressible, runs, repeats at short and long distances."""
    runs = np.repeat(rng.integers(0, 4, 400), rng.integers(1, 300, 400)).astype(np.uint8)
    return [b"", b"x", rng.bytes(70_000), runs.tobytes(), (rng.bytes(3) * 5000), (rng.bytes(40_000) * 3)[:100_001],
            frames(3000, 1, seed=13).astype(np.int32).tobytes()]


@needs_numba
def test_the_snappy_kernel_decompresses_as_pyarrow_does_and_stays_in_its_buffers():
    rng = np.random.default_rng(14)
    codec = pa.Codec("snappy")
    for payload in _payloads(rng):
        stream = np.frombuffer(codec.compress(payload, asbytes=True), np.uint8)
        want = len(payload)
        for seed in range(60):
            damaged = stream.copy()
            if seed:  # (seed 0: the stream as written)
                at = int(np.random.default_rng(seed).integers(damaged.size))
                damaged[at] ^= np.uint8(1 << (seed % 8))
            # in junk, and a destination with a canary after the bytes it may write
            junk = np.concatenate([rng.integers(0, 256, 50, dtype=np.uint8), damaged,
                                   rng.integers(0, 256, 50, dtype=np.uint8)])
            dst = np.full(want + 64, 0xA5, np.uint8)
            code = pages._snappy(junk, 50, 50 + damaged.size, dst, want)
            assert np.all(dst[want:] == 0xA5), "a write beyond the page's bytes"
            alone = np.full(want + 64, 0xA5, np.uint8)
            assert pages._snappy(damaged.copy(), 0, damaged.size, alone, want) == code  # reads only its stream
            if seed == 0:
                assert code == 0 and dst[:want].tobytes() == payload
            if code == 0:  # what it accepts, pyarrow reads the same
                assert codec.decompress(damaged.tobytes(), want, asbytes=True) == dst[:want].tobytes()
            else:
                assert code == 23


@needs_numba
def test_the_zstd_kernel_checks_sizes_and_errors():
    if pages._zstd() is None:
        pytest.skip("libzstd cannot be loaded here")
    rng = np.random.default_rng(15)
    codec = pa.Codec("zstd")
    with pages._zstd_contexts(1) as zstd:
        for payload in _payloads(rng)[1:]:
            stream = np.frombuffer(codec.compress(payload, asbytes=True), np.uint8)
            n, want = stream.size, len(payload)
            dst = np.full(want + 64, 0xA5, np.uint8)
            assert pages._inflate(stream, 0, n, pages.C_ZSTD, dst, want, zstd, 0) == 0
            assert dst[:want].tobytes() == payload and np.all(dst[want:] == 0xA5)
            assert pages._inflate(stream, 0, n, pages.C_ZSTD, dst, want + 1, zstd, 0) == 24  # a size it does not hold
            assert pages._inflate(stream, 0, n, pages.C_ZSTD, dst, want - 1, zstd, 0) == 23  # more than the page
            assert pages._inflate(stream, 0, n - 1, pages.C_ZSTD, dst, want, zstd, 0) == 23  # cut short
            assert pages._inflate(stream, 0, n, pages.C_ZSTD, dst[:want - 1], want, zstd, 0) == 23  # too small
            garbage = rng.integers(0, 256, n, dtype=np.uint8)
            assert pages._inflate(garbage, 0, n, pages.C_ZSTD, dst, want, zstd, 0) == 23
            assert pages._inflate(stream, 0, n, pages.C_ZSTD, dst, want, zstd[:1], 0) == 23  # no context for it


@needs_numba
@pytest.mark.parametrize("libzstd", [True, False])
def test_zstd_pages_are_decompressed_in_the_kernels_or_by_pyarrow_without_libzstd(tmp_path, monkeypatch, libzstd,
                                                                                  caplog):
    data = frames(700, 6, seed=16)
    path = write(tmp_path / "z.parquet", data, compression="zstd", use_dictionary=False, row_group_size=300,
                 data_page_size=500)
    used = []
    monkeypatch.setattr(pages, "_codec", lambda name: used.append(name) or pa.Codec(name))
    if libzstd:
        if pages._zstd() is None:
            pytest.skip("libzstd cannot be loaded here")
    else:
        monkeypatch.setattr(pages, "_zstd", lambda: None)
    np.testing.assert_array_equal(decode(path, [0, 1, 2], np.arange(6), compiled=True), data.T)
    assert bool(used) != libzstd  # pyarrow.Codec only where libzstd is missing
    snappy = write(tmp_path / "s.parquet", data, compression="snappy")
    used.clear()
    np.testing.assert_array_equal(decode(snappy, [0], np.arange(6), compiled=True), data.T)
    assert not used  # snappy: always in the kernels


def test_blocks_are_decoded_on_several_threads_with_a_context_each(tmp_path, monkeypatch):
    """Each run of chunks goes to one thread at a time, and a zstd context serves one thread at a time."""
    data = frames(300, 40, seed=17)
    path = write(tmp_path / "t.parquet", data, compression="zstd")
    reader = pages.open_reader(path, pq.ParquetFile(path), KERNELS[-1])
    calls = []
    decode_runs = reader._decode
    reader._decode = lambda *a: calls.append(a[-3:]) or decode_runs(*a)
    if numba := pages.numba:
        monkeypatch.setattr(numba, "get_num_threads", lambda: 3)
    np.testing.assert_array_equal(reader.read_block([0], np.arange(40)), data.T)
    runs = sorted((lo, hi) for _, lo, hi in calls)
    assert runs[0][0] == 0 and runs[-1][1] == 40 and all(a[1] == b[0] for a, b in zip(runs, runs[1:], strict=False))
    if pages.numba is not None:
        assert len(runs) == 12 and {slot for slot, _, _ in calls} <= {0, 1, 2}


def _decode_in_child(path: Path, expect: np.ndarray) -> None:
    assert pages._POOL is None  # not the parent's pool, whose threads the child lacks
    np.testing.assert_array_equal(decode(path, [0], np.arange(expect.shape[0]), KERNELS[-1]), expect)


def test_a_forked_child_decodes_with_threads_of_its_own(tmp_path):
    import multiprocessing

    data = frames(300, 40, seed=18)
    path = write(tmp_path / "f.parquet", data, compression="zstd")
    np.testing.assert_array_equal(decode(path, [0], np.arange(40), KERNELS[-1]), data.T)
    pages._pool()  # (made here if this decode needed no helper thread)
    child = multiprocessing.get_context("fork").Process(target=_decode_in_child, args=(path, data.T))
    child.start()
    child.join(120)
    assert child.exitcode == 0


# -------------------------------------------------------------------------------------------------------------
# the simulator's layouts, through SignalFile, against the default path

SIMULATED = {"zstd, one row group": dict(compression="zstd"),
             "snappy, row groups of 100, checksums": dict(compression="snappy", row_group_frames=100,
                                                          page_checksums=PAGE_CHECKSUM_VERIFICATION),
             "none, row groups of 77": dict(compression="none", row_group_frames=77)}


@pytest.mark.parametrize("layout", sorted(SIMULATED))
def test_every_simulator_layout_decodes_as_pyarrow_does(tmp_path, layout, monkeypatch):
    from arielstream.simulate.dataset import simulate_dataset

    simulate_dataset(tmp_path, n_planets=1, scale=0.02, seed=2, **SIMULATED[layout])
    files = sorted(tmp_path.glob("train/*/*_signal_*.parquet"))
    assert len(files) == 2
    for path in files:
        inst = AIRS if path.name.startswith("AIRS") else FGS1
        pixels = np.arange(inst.pixels) if inst is FGS1 else \
            (np.arange(39, 321)[None, :] + inst.columns * np.arange(inst.rows)[:, None]).ravel()
        monkeypatch.setenv(pages.ENV, "pyarrow")
        default = SignalFile(path, inst)
        monkeypatch.setenv(pages.ENV, "pages")
        fast = SignalFile(path, inst)
        assert fast._pages is not None
        groups = list(range(len(default.row_group_rows)))
        np.testing.assert_array_equal(fast.read_block(groups, pixels), default.read_block(groups, pixels))
        np.testing.assert_array_equal(fast.read_block(groups[-1:], pixels[5:40]),
                                      default.read_block(groups[-1:], pixels[5:40]))
        assert fast._pages is not None  # nothing fell back


def test_the_opt_in_gives_the_same_calibrated_bytes(tmp_path, monkeypatch):
    outputs, calls = {}, []
    decoded = pages.PageReader.read_block
    monkeypatch.setattr(pages.PageReader, "read_block", lambda self, *a: calls.append(1) or decoded(self, *a))
    for decoder in ("pyarrow", "pages"):
        monkeypatch.setenv(pages.ENV, decoder)
        outputs[decoder] = tmp_path / f"{decoder}.h5"
        before = len(calls)
        assert arielstream.calibrate(DATA_SAMPLES, outputs[decoder], jobs=1, progress=False, log_file=False).ok
        assert (len(calls) > before) == (decoder == "pages")  # (jobs=1: in this process)
    with h5py.File(outputs["pyarrow"]) as a, h5py.File(outputs["pages"]) as b:
        for name in ("AIRS-CH0/signal", "FGS1/signal"):
            assert a[name][()].tobytes() == b[name][()].tobytes()


# -------------------------------------------------------------------------------------------------------------
# fuzz: damaged bytes never crash, never read outside a buffer, and never give numbers pyarrow would refuse

def _outcome(fn):
    try:
        return fn()
    except (pages.PageError, pages.Unsupported, InputError) as exc:
        return exc


def _pyarrow(path: Path) -> np.ndarray | Exception:
    try:
        options = {"page_checksum_verification": True} if PAGE_CHECKSUM_VERIFICATION else {}
        table = pq.ParquetFile(path, **options).read()
        if any(c.null_count for c in table.columns):
            return ValueError("nulls")
        return np.stack([c.to_numpy() for c in table.columns]).astype(np.int64)
    except (pa.ArrowException, OSError, ValueError) as exc:
        return exc


def _page_spans(path: Path) -> list[tuple[int, int, int, bool]]:
    """(header start, data start, data end, has CRC) of every page of every column chunk."""
    pf = pq.ParquetFile(path)
    reader = pages.open_reader(path, pf)
    spans = []
    for g in range(pf.metadata.num_row_groups):
        for j in range(pf.metadata.num_columns):
            meta = pf.metadata.row_group(g).column(j)
            first = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
            raw, offset = reader._read(np.array([first]), np.array([meta.total_compressed_size]))
            status = np.zeros((1, 3), np.int64)
            table = reader._scan(raw, offset, np.array([meta.total_compressed_size]),
                                 np.array([meta.num_values]), np.array([pages.CODECS[meta.compression]]),
                                 np.zeros(1, np.int64), status)
            assert status[0, 0] == 0
            start = first
            for row in table:
                data = first + int(row[pages.P_DATA] - offset[0])
                spans.append((start, data, data + int(row[pages.P_COMP]), bool(row[pages.P_HAS_CRC])))
                start = data + int(row[pages.P_COMP])
    return spans


FUZZ_FILES = {"zstd-dictionary-v1": dict(compression="zstd"),
              "zstd-plain-v1": dict(compression="zstd", use_dictionary=False),  # no CRC: damage reaches libzstd
              "none-dictionary-v2": dict(compression="none", data_page_version="2.0"),
              "none-plain-v1": dict(compression="none", use_dictionary=False),
              "snappy-dictionary-v2": dict(compression="snappy", data_page_version="2.0"),
              "snappy-fallback-v1": dict(compression="snappy", dictionary_pagesize_limit=128)}


def fuzz(tmp_path: Path, layout: str, seeds: range, compiled: bool) -> dict[str, int]:
    data = frames(240, 3, seed=9, distinct=200 if "fallback" in layout else None)
    options = dict(FUZZ_FILES[layout], data_page_size=200, write_batch_size=32, row_group_size=120)
    if PAGE_CHECKSUM_VERIFICATION and "v2" in layout:
        options["write_page_checksum"] = True  # half the files with CRCs, half without
    clean = write(tmp_path / "clean.parquet", data, **options).read_bytes()
    spans = _page_spans(tmp_path / "clean.parquet")
    truth = data.T.astype(np.int64)
    counts = dict(raised=0, raised_where_pyarrow_reads=0, same=0, differs_from_pyarrow=0, header_damage_unnoticed=0)
    path = tmp_path / "damaged.parquet"
    for seed in seeds:
        rng = np.random.default_rng(seed)
        head, data_start, data_end, crc = spans[rng.integers(len(spans))]
        in_header = bool(rng.random() < 0.4) or data_end == data_start
        lo, hi = (head, data_start) if in_header else (data_start, data_end)
        at = int(rng.integers(lo, hi))
        raw = bytearray(clean)
        how = rng.integers(4)
        if how == 0:  # flip one bit
            raw[at] ^= 1 << int(rng.integers(8))
        elif how == 1:  # zero a run
            stop = min(at + int(rng.integers(1, 9)), hi)
            raw[at:stop] = bytes(stop - at)
        elif how == 2:  # a random byte
            raw[at] = int(rng.integers(256))
        else:  # cut bytes out of the page, the chunk's end padded: a truncated page, offsets kept
            n = min(int(rng.integers(1, 9)), hi - at)
            del raw[at:at + n]
            raw[hi - n:hi - n] = bytes(n)
        path.write_bytes(bytes(raw))
        ours = _outcome(lambda: decode_all(path, compiled))
        theirs = _pyarrow(path)
        if isinstance(ours, Exception):
            counts["raised"] += 1
            counts["raised_where_pyarrow_reads"] += not isinstance(theirs, Exception)
            continue
        assert ours.dtype == np.uint16 and ours.shape == truth.shape
        if isinstance(theirs, Exception) or not np.array_equal(ours, truth):
            # a number pyarrow would refuse, or a wrong one: never from a page with a CRC over the damage
            assert not (crc and not in_header), f"seed {seed}: damage under a CRC decoded without an error"
        if isinstance(theirs, Exception):
            assert np.array_equal(ours, truth), f"seed {seed}: values where pyarrow fails ({theirs})"
            counts["same"] += 1
        elif np.array_equal(ours, theirs):
            counts["same"] += 1
        else:  # CRC-less damage that pyarrow and this decoder read differently (the spec leaves it open)
            counts["differs_from_pyarrow"] += 1
            counts["header_damage_unnoticed"] += in_header
    return counts


def decode_all(path: Path, compiled: bool) -> np.ndarray:
    pf = pq.ParquetFile(path)
    reader = pages.open_reader(path, pf, compiled)
    if reader is None:
        raise pages.Unsupported("refused on open")
    return reader.read_block(list(range(pf.metadata.num_row_groups)), np.arange(pf.metadata.num_columns))


@pytest.mark.parametrize("layout", sorted(FUZZ_FILES))
def test_fuzzed_pages_raise_or_decode_as_pyarrow(tmp_path, layout):
    counts = fuzz(tmp_path, layout, range(150), KERNELS[-1])
    assert counts["raised"] > 0 and counts["same"] > 0, counts  # both outcomes are exercised
    logging.getLogger(__name__).info("%s: %s", layout, counts)


def test_fuzzed_pages_python_kernels(tmp_path):
    counts = fuzz(tmp_path, "none-dictionary-v2", range(1000, 1060), False)
    assert counts["raised"] > 0 and counts["same"] > 0, counts


def test_the_samples_copy_keeps_its_layout(tmp_path):
    """The committed samples take the page decoder (a regression guard on what the opt-in covers)."""
    src = next(DATA_SAMPLES.glob("train/*/AIRS-CH0_signal_0.parquet"))
    path = Path(shutil.copy(src, tmp_path / src.name))
    pf = pq.ParquetFile(path)
    reader = pages.open_reader(path, pf)
    assert reader is not None
    pixels = np.arange(0, AIRS.pixels, 7)
    np.testing.assert_array_equal(reader.read_block([0], pixels), expected(path, [0], pixels))


def test_forcing_pyarrow_never_imports_the_decoder(tmp_path):
    import subprocess
    import sys

    from arielstream.io import signal

    assert signal.PAGE_DECODER_ENV == pages.ENV  # the one variable, named in both places
    path = write(tmp_path / "FGS1_signal_0.parquet", frames(20, FGS1.pixels, seed=1))
    env = {**__import__("os").environ, pages.ENV: "pyarrow"}
    probe = ("import sys; from arielstream.io.signal import SignalFile; from arielstream.layout import FGS1; "
             f"f = SignalFile({str(path)!r}, FGS1); f.read_block([0], list(range(9))); "
             "print(f._pages is None, 'arielstream.io.pages' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "False"]
