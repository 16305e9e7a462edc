"""Chunked output == whole-array output, whatever the budget and the row-group layout."""

from __future__ import annotations

import json
import logging
import os
import re

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from arielstream import build_config, calibrate
from arielstream.calibration import compiled, engine
from arielstream.run import dispatch, worker

pytestmark = pytest.mark.slow  # chunked == whole over several datasets and chunk sizes: minutes in all

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
    with caplog.at_level(logging.DEBUG, logger="arielstream.run.observation"):
        calibrate(small_dataset, out, chunk_bytes=200_000, jobs=1, progress=False,
                  config=build_config(instruments=["FGS1"]))
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["FGS1/signal"][()], whole["FGS1/signal"])
    plans = re.findall(r"blocks of (\d+) pixels, reads of >= \d+ frames, chunks of (\d+) frames", caplog.text)
    assert plans and all(block == "1" and int(frames) % 720 == 0 for block, frames in plans)


def _engines(path):
    """The engine each observation's provenance records."""
    with h5py.File(path) as f:
        return [json.loads(p.decode().rstrip("\x00"))["engine"] for p in f["provenance"][()]]


@pytest.fixture
def fresh_engine(monkeypatch):
    """The process's engine is chosen afresh in the test and again after it (the choice is cached)."""
    monkeypatch.delenv(engine.ENV, raising=False)
    engine.current.cache_clear()
    yield monkeypatch
    engine.current.cache_clear()


@pytest.mark.skipif(compiled.numba is None, reason="one engine only: numba not installed")
def test_the_numexpr_and_numba_engines_agree_end_to_end(whole, small_dataset, tmp_path, fresh_engine):
    fresh_engine.setenv(engine.ENV, "numexpr")
    out = tmp_path / "numexpr.h5"
    calibrate(small_dataset, out, chunk_bytes=WHOLE, jobs=1, progress=False, log_file=False)
    assert all(e.startswith("numexpr ") for e in _engines(out))
    cubes = _cubes(out)
    for key, value in whole.items():
        np.testing.assert_allclose(cubes[key], value, rtol=1e-12, atol=1e-9, err_msg=key)


@pytest.mark.skipif(compiled.numba is None, reason="the coordinator needs numba to differ from its worker")
def test_each_observation_records_the_engine_of_the_process_that_computed_it(small_dataset, tmp_path,
                                                                            fresh_engine):
    assert engine.current().name == "numba"  # the coordinator's choice
    run_task = worker.run_task

    def run_task_on_numexpr(task):  # pickled by value into the worker process, where it runs
        os.environ[engine.ENV] = "numexpr"
        return run_task(task)

    fresh_engine.setattr(dispatch, "run_task", run_task_on_numexpr)  # where _execute looks it up
    out = tmp_path / "worker.h5"
    # one job with a task timeout: every observation runs in a worker process, not in this one
    summary = calibrate(small_dataset, out, chunk_bytes=WHOLE, jobs=1, task_timeout=600, progress=False,
                        log_file=False)
    assert summary.ok and all(r.pid != os.getpid() for r in summary.results)
    engines = _engines(out)
    assert len(engines) == 3 and all(e.startswith("numexpr ") for e in engines), engines
    assert engine.current().name == "numba"


def test_whole_series_rejection_is_the_same_in_small_chunks(small_dataset, tmp_path):
    """cr_method = "series" plans chunks of whole pixel series: any budget gives the same numbers."""
    config = build_config(cr_method="series")
    cubes = []
    for chunk_bytes in (WHOLE, 400_000):
        out = tmp_path / f"series{chunk_bytes}.h5"
        calibrate(small_dataset, out, chunk_bytes=chunk_bytes, jobs=1, progress=False, config=config)
        cubes.append(_cubes(out))
    for key, value in cubes[0].items():
        np.testing.assert_array_equal(cubes[1][key], value, err_msg=key)
