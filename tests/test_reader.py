"""The streaming reader: aligned chunks, exact coverage, schema checks with named errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from arielstream.errors import InputError
from arielstream.io.calibration import read_frame_table
from arielstream.io.dataset import read_dataset_info
from arielstream.io.signal import ChunkPlan, SignalFile, columns_into
from arielstream.layout import AIRS, FGS1, Instrument

from .conftest import REFERENCE, REFERENCE_PLANET, write_signal

TINY = Instrument("FGS1", 4, 6, 2, 100, "FGS1-axis0-h")  # a 4 x 6 detector for fast tests
WHOLE = ChunkPlan(24, 10**6, None, 0)


def _frames(n_frames, n_pixels, seed=0):
    return np.random.default_rng(seed).integers(0, 65535, size=(n_frames, n_pixels), dtype=np.uint16)


@pytest.mark.parametrize("row_group_frames", [None, 1, 7, 12, 50])
@pytest.mark.parametrize("block_pixels", [1, 5, 6, 24])
@pytest.mark.parametrize("max_chunk_frames", [None, 4, 13])
@pytest.mark.parametrize("rows_per_read", [1, 20, 1000])
def test_chunks_tile_the_needed_frames_exactly(tmp_path, row_group_frames, block_pixels, max_chunk_frames,
                                               rows_per_read):
    data = _frames(50, TINY.pixels)
    path = tmp_path / "s.parquet"
    write_signal(path, data, row_group_frames)
    reader = SignalFile(path, TINY, expected_frames=50)
    pixels = np.array([1, 2, 3, 7, 8, 9, 13, 14, 15, 19, 20, 21])  # columns 1..3 of every row
    rebuilt = np.full((len(pixels), 48), -1, dtype=np.int64)
    frames_per_bin = 4
    plan = ChunkPlan(block_pixels, rows_per_read, max_chunk_frames, 0)
    for chunk in reader.iter_chunks(pixels, plan, 48, frames_per_bin):
        assert chunk.frame_start % frames_per_bin == 0 and chunk.data.shape[1] % frames_per_bin == 0
        if max_chunk_frames is not None:
            assert chunk.data.shape[1] <= max(max_chunk_frames // frames_per_bin * frames_per_bin, frames_per_bin)
        assert chunk.data.dtype == np.uint16 and chunk.data.shape[0] <= block_pixels
        assert (rebuilt[chunk.pixels, chunk.frame_start:chunk.frame_stop] == -1).all(), "a frame came twice"
        rebuilt[chunk.pixels, chunk.frame_start:chunk.frame_stop] = chunk.data
    np.testing.assert_array_equal(rebuilt, data[:48, pixels].T)


def test_only_the_needed_columns_are_decoded(tmp_path, monkeypatch):
    path = tmp_path / "s.parquet"
    write_signal(path, _frames(8, TINY.pixels), 3)
    monkeypatch.setenv("ARIELSTREAM_DECODER", "pyarrow")  # pyarrow's reads are what is counted here
    reader = SignalFile(path, TINY)
    asked = []
    original = reader._file.read_row_groups

    def spy(groups, columns=None, **kw):
        asked.extend(columns)
        return original(groups, columns=columns, **kw)

    monkeypatch.setattr(reader._file, "read_row_groups", spy)
    list(reader.iter_chunks(np.array([2, 3, 8]), ChunkPlan(3, 3, None, 0), 8, 2))
    assert sorted(set(asked)) == ["column_2", "column_3", "column_8"]


def test_wrong_column_count_is_named(tmp_path):
    path = tmp_path / "AIRS-CH0_signal_0.parquet"
    write_signal(path, _frames(4, 10))
    with pytest.raises(InputError, match=r"AIRS-CH0_signal_0.parquet: 10 columns, expected 11392"):
        SignalFile(path, AIRS)


def test_wrong_frame_count_is_named(tmp_path):
    path = tmp_path / "s.parquet"
    write_signal(path, _frames(10, TINY.pixels))
    with pytest.raises(InputError, match="10 frames, but axis_info.parquet lists 12"):
        SignalFile(path, TINY, expected_frames=12)


def test_float_columns_are_refused(tmp_path):
    path = tmp_path / "s.parquet"
    write_signal(path, _frames(4, TINY.pixels), dtype=pa.float32())
    with pytest.raises(InputError, match="column 0 .* has type float, expected uint16"):
        SignalFile(path, TINY)


def test_wider_integer_columns_are_cast_with_an_overflow_check(tmp_path):
    data = _frames(6, TINY.pixels)
    path = tmp_path / "s.parquet"
    write_signal(path, data, dtype=pa.int32())
    chunks = list(SignalFile(path, TINY).iter_chunks(np.arange(TINY.pixels), WHOLE, 6, 2))
    np.testing.assert_array_equal(chunks[0].data, data.T)
    bad = data.astype(np.int64)
    bad[0, 0] = 70000
    write_signal(path, bad, dtype=pa.int64())
    with pytest.raises(InputError, match="does not fit uint16"):
        list(SignalFile(path, TINY).iter_chunks(np.arange(TINY.pixels), WHOLE, 6, 2))


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(InputError, match="nope.parquet: FGS1 signal file missing"):
        SignalFile(tmp_path / "nope.parquet", FGS1)
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="bad.parquet: not a readable Parquet file"):
        SignalFile(path, TINY)


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "s.parquet"
    write_signal(path, _frames(40, TINY.pixels), 10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="s.parquet"):
        SignalFile(path, TINY)


def test_corrupted_middle_fails_while_reading_and_names_the_file(tmp_path):
    path = tmp_path / "s.parquet"
    write_signal(path, _frames(400, TINY.pixels), 100)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle - 2000: middle + 2000] = bytes(4000)
    path.write_bytes(bytes(data))
    reader = SignalFile(path, TINY)  # the footer is intact: the damage shows only when decoding
    with pytest.raises(InputError, match=r"s.parquet: row groups 0-3 could not be decoded"):
        list(reader.iter_chunks(np.arange(TINY.pixels), WHOLE, 400, 2))


def test_real_calibration_files_are_read_with_their_shapes():
    dark = read_frame_table(REFERENCE_PLANET / "AIRS-CH0_calibration_0" / "dark.parquet", 32, 356, "float")
    dead = read_frame_table(REFERENCE_PLANET / "FGS1_calibration_0" / "dead.parquet", 32, 32, "bool")
    lin = read_frame_table(REFERENCE_PLANET / "AIRS-CH0_calibration_0" / "linear_corr.parquet", 192, 356, "float")
    assert dark.shape == (32, 356) and 0.005 < np.median(dark) < 0.008
    assert dead.dtype == bool and dead.sum() == 3
    c = lin.reshape(6, 32, 356)
    assert abs(np.mean(c[1]) - 0.99988) < 1e-4  # c1 ≈ 1: rows are in increasing power order


def test_calibration_shape_mismatch_is_named():
    with pytest.raises(InputError, match=r"dark.parquet: shape 32 x 356, expected 32 x 32"):
        read_frame_table(REFERENCE_PLANET / "AIRS-CH0_calibration_0" / "dark.parquet", 32, 32, "float")


def test_real_axis_info_and_adc_info():
    info = read_dataset_info(REFERENCE)
    assert info.n_frames(AIRS) == 11250 and info.n_frames(FGS1) == 135000
    assert info.adc["AIRS-CH0"].gain == 0.4369 and info.adc["FGS1"].offset == -1000.0
    assert info.airs_wavelength[0] > info.airs_wavelength[-1]  # decreasing along columns
    np.testing.assert_allclose(info.airs_integration_time[:4], [0.1, 4.5, 0.1, 4.5])


def test_many_row_groups_are_gathered_into_few_reads(tmp_path, monkeypatch):
    path = tmp_path / "s.parquet"
    write_signal(path, _frames(100, TINY.pixels), 7)  # 15 row groups, none aligned with the bins
    monkeypatch.setenv("ARIELSTREAM_DECODER", "pyarrow")  # pyarrow's reads are what is counted here
    reader = SignalFile(path, TINY)
    calls = []
    original = reader._file.read_row_groups
    monkeypatch.setattr(reader._file, "read_row_groups",
                        lambda groups, **kw: calls.append(list(groups)) or original(groups, **kw))
    list(reader.iter_chunks(np.arange(TINY.pixels), ChunkPlan(24, 30, None, 0), 96, 4))
    assert [len(c) for c in calls] == [5, 5, 4]  # >= 30 frames per read; row group 14 holds no needed frame
    assert sorted(g for c in calls for g in c) == list(range(14))


def _chunked(values: list, arrow_type: pa.DataType, cuts: list[int]) -> pa.ChunkedArray:
    """``values`` in chunks cut at ``cuts``, each a slice of a longer array (so with an offset)."""
    edges = [0, *cuts, len(values)]
    chunks = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        padded = pa.array([None] * 5 + values[lo:hi] + [None] * 3, type=arrow_type)
        chunks.append(padded.slice(5, hi - lo))  # offset 5: not a whole byte of a bitmap
    return pa.chunked_array(chunks, type=arrow_type)


@pytest.mark.parametrize("arrow_type, dtype", [(pa.uint16(), np.uint16), (pa.float64(), np.float64),
                                               (pa.bool_(), np.bool_)])
@pytest.mark.parametrize("cuts", [[], [7], [1, 2, 19]])
def test_columns_into_copies_every_chunk_at_its_offset(arrow_type, dtype, cuts):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 60000, size=(3, 23))
    columns = [_chunked([dtype(v) if dtype is not np.bool_ else bool(v % 2) for v in row.tolist()],
                        arrow_type, cuts) for row in raw]
    out = np.zeros((3, 23), dtype=dtype)
    columns_into(columns, out)
    for row, column in zip(out, columns, strict=True):
        np.testing.assert_array_equal(row, np.array(column.to_pylist(), dtype=dtype))
    transposed = np.zeros((23, 3), dtype=dtype)  # a calibration table: column j into out[:, j]
    columns_into(columns, transposed.T)
    np.testing.assert_array_equal(transposed.T, out)


def test_columns_into_turns_float_nulls_into_nan_and_refuses_others():
    floats = _chunked([1.0, None, 3.0, 4.0, None], pa.float64(), [2])
    out = columns_into([floats], np.zeros((1, 5)))
    np.testing.assert_array_equal(out[0], [1.0, np.nan, 3.0, 4.0, np.nan])
    with pytest.raises(ValueError, match="1 null value"):
        columns_into([_chunked([1, None, 3], pa.uint16(), [])], np.zeros((1, 3), np.uint16))
    with pytest.raises(TypeError, match="a uint32 column into a uint16 array"):
        columns_into([pa.chunked_array([pa.array([1, 2], pa.uint32())])], np.zeros((1, 2), np.uint16))
    with pytest.raises(ValueError, match="2 values for 3 rows"):
        columns_into([pa.chunked_array([pa.array([1, 2], pa.uint16())])], np.zeros((1, 3), np.uint16))
    with pytest.raises(ValueError, match="1 columns for 2 rows"):
        columns_into([pa.chunked_array([pa.array([1, 2], pa.uint16())])], np.zeros((2, 2), np.uint16))


def test_a_calibration_never_imports_pandas(small_dataset, tmp_path):
    """pyarrow's to_numpy, pa.scalar and read_table import pandas (+45-56 MB in every worker): the run avoids them.

    A fresh interpreter (this one may have pandas already), one worker, the default profile.
    """
    import subprocess
    import sys

    from .conftest import REPO

    code = f"""
import sys
from arielstream import calibrate
calibrate({str(small_dataset)!r}, {str(tmp_path / "out.h5")!r}, planets=None, jobs=1, progress=False,
          log_file=False)
print(sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
