"""Chunked output == whole-array output, whatever the budget and the row-group layout."""

from __future__ import annotations

import logging
import re

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from arielstream import build_config, calibrate, compiled

WHOLE = 10**9  # every file in one chunk per instrument


def _cubes(path):
    with h5py.File(path) as f:
        assert (f["status"][()] == 1).all()
        return {k: f[k][()] for k in ("AIRS-CH0/signal", "FGS1/signal", "AIRS-CH0/dq", "FGS1/dq")}


@pytest.fixture(scope="module")
def whole(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "whole.h5"
    calibrate(small_dataset, out, chunk_bytes=WHOLE, jobs=1, progress=False)
    return _cubes(out)


def test_the_two_datasets_differ_only_in_row_groups(small_dataset, multi_rowgroup_dataset):
    one = next(small_dataset.glob("train/*/AIRS-CH0_signal_0.parquet"))
    many = multi_rowgroup_dataset / one.relative_to(small_dataset)
    assert pq.ParquetFile(one).metadata.num_row_groups == 1
    assert pq.ParquetFile(many).metadata.num_row_groups > 2
    assert pq.read_table(one).equals(pq.read_table(many))


@pytest.mark.parametrize("layout", ["one_row_group", "many_row_groups"])
@pytest.mark.parametrize("chunk_bytes", [WHOLE, 3_000_000, 400_000])
def test_chunked_equals_whole(whole, small_dataset, multi_rowgroup_dataset, tmp_path, layout, chunk_bytes):
    root = small_dataset if layout == "one_row_group" else multi_rowgroup_dataset
    out = tmp_path / "chunked.h5"
    calibrate(root, out, chunk_bytes=chunk_bytes, jobs=1, progress=False)
    chunked = _cubes(out)
    for key, value in whole.items():
        np.testing.assert_array_equal(chunked[key], value, err_msg=f"{key} ({layout}, {chunk_bytes} bytes)")


def test_bin_sized_chunks_equal_whole_for_fgs1(whole, small_dataset, tmp_path, caplog):
    """A budget below one pixel of a whole row group: the reader hands out a few bins at a time."""
    out = tmp_path / "tiny.h5"
    with caplog.at_level(logging.DEBUG, logger="arielstream.pipeline"):
        calibrate(small_dataset, out, chunk_bytes=200_000, jobs=1, progress=False,
                  config=build_config(instruments=["FGS1"]))
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["FGS1/signal"][()], whole["FGS1/signal"])
    plans = re.findall(r"blocks of (\d+) pixels, reads of >= \d+ frames, chunks of (\d+) frames", caplog.text)
    assert plans and all(block == "1" and int(frames) % 720 == 0 for block, frames in plans)


@pytest.mark.skipif(compiled.numba is None, reason="one engine only: numba not installed")
def test_the_numexpr_and_numba_engines_agree_end_to_end(whole, small_dataset, tmp_path, monkeypatch):
    assert compiled.available()  # the reference run used numba
    monkeypatch.setenv("ARIELSTREAM_ENGINE", "numexpr")
    out = tmp_path / "numexpr.h5"
    calibrate(small_dataset, out, chunk_bytes=WHOLE, jobs=1, progress=False, log_file=False)
    with h5py.File(out) as f:
        assert f.attrs["engine"].startswith("numexpr")
    cubes = _cubes(out)
    for key, value in whole.items():
        np.testing.assert_allclose(cubes[key], value, rtol=1e-12, atol=1e-9, err_msg=key)
