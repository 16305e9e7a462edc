"""Shared fixtures: paths to the committed samples and small writers of synthetic files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_SAMPLES = REPO / "data_samples"
REFERENCE = DATA_SAMPLES / "reference"
REFERENCE_PLANET = REFERENCE / "train" / "342072318"


def write_signal(path: Path, data: np.ndarray, row_group_frames: int | None = None,
                 dtype: pa.DataType | None = None) -> None:
    """Write ``data`` (frames, pixels) as a signal file: one column per pixel (uint16 by default)."""
    dtype = dtype or pa.uint16()
    columns = [pa.array(np.ascontiguousarray(data[:, j])).cast(dtype) for j in range(data.shape[1])]
    table = pa.Table.from_arrays(columns, names=[f"column_{j}" for j in range(data.shape[1])])
    pq.write_table(table, path, row_group_size=row_group_frames or max(data.shape[0], 1))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small simulated dataset (2 planets, one with two visits), made once per test session."""
    from arielstream.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("sim")
    simulate_dataset(root, n_planets=2, scale=0.05, seed=11)
    return root


@pytest.fixture(scope="session")
def multi_rowgroup_dataset(tmp_path_factory) -> Path:
    """The same planets as ``small_dataset``, written with row groups that do not align with bins."""
    from arielstream.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("sim_rg")
    simulate_dataset(root, n_planets=2, scale=0.05, seed=11, row_group_frames=250)
    return root
