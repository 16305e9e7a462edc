"""The output file's schema: declared once in ``arielstream.io.schema``, written as declared, read back by name."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from arielstream import dq
from arielstream.errors import InputError
from arielstream.io import reader, schema, store
from arielstream.io.ledger import Ledger
from arielstream.layout import AIRS, FGS1, Observation


def _layout(name: str, n_x: int, extras=()) -> store.InstrumentLayout:
    return store.InstrumentLayout(name, time=np.array([0.1, 0.2, 0.3]), columns=np.arange(n_x), rows=2,
                                  wavelength=np.linspace(1.0, 2.0, n_x), labels=[f"wl_{k}" for k in range(n_x)],
                                  extras=tuple(extras))


@pytest.fixture()
def output(tmp_path):
    path = tmp_path / "o.h5"
    observations = [Observation(11, 0, tmp_path), Observation(12, 1, tmp_path)]
    layouts = [_layout(AIRS.name, 4, [schema.OPTIONAL[schema.DQ_TIME]]), _layout(FGS1.name, 2)]
    descriptors = store.create_output(path, observations, layouts, {"profile": "default"})
    return path, descriptors


def test_the_file_holds_the_declared_datasets_with_their_dtypes(output):
    path, descriptors = output
    with h5py.File(path) as f:
        for name in schema.PER_OBSERVATION:
            assert f[name].shape == (2,) and f[name].dtype == np.dtype(schema.ROOT[name].dtype), name
        for inst, n_x in ((AIRS.name, 4), (FGS1.name, 2)):
            for name, spec in schema.PLANES.items():
                ds = f[schema.dataset(inst, name)]
                assert ds.dtype == np.dtype(spec.dtype) and ds.attrs["axes"] == schema.axes_text(spec.axes)
                assert ds.shape == ((2, 3, n_x, 2) if name == schema.SIGNAL else (2, n_x, 2))
            assert f[schema.dataset(inst, schema.SIGNAL)].attrs["axes"] == "obs,time,x,y"
            assert f[schema.dataset(inst, schema.TIME)].shape == (3,)
        assert f[schema.dataset(AIRS.name, schema.DQ_TIME)].shape == (2, 3, 4, 2)
        assert schema.dataset(FGS1.name, schema.DQ_TIME) not in f
        assert f[schema.PLANET_ID][()].tolist() == [11, 12] and f[schema.VISIT][()].tolist() == [0, 1]
        assert store.instruments_in(f) == [AIRS.name, FGS1.name]
    assert set(descriptors) == set(store.read_descriptors(path))
    assert store.cube_keys(descriptors) == sorted(k for k in descriptors if "/" in k)


def test_both_data_quality_planes_name_their_bits_in_the_attributes(output):
    path, _ = output
    with h5py.File(path) as f:
        assert json.loads(f.attrs[schema.ATTR_DQ_BITS]) == dq.BITS
        assert json.loads(f.attrs[schema.ATTR_DQ_TIME_BITS]) == dq.TIME_BITS
        assert store.is_output_file(f)
    assert dq.describe(dq.TIME_COSMIC_RAY | dq.TIME_INTERPOLATED, dq.TIME_BITS) == ["COSMIC_RAY", "INTERPOLATED"]
    assert dq.describe(dq.DEAD | dq.HOT) == ["DEAD", "HOT"]


def test_readers_open_one_way_and_name_the_file(output, tmp_path):
    path, _ = output
    with reader.open_output(path) as f:
        assert f.mode == "r"
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(InputError, match=rf"^{missing}: cannot read: no such file$"):
        reader.open_output(missing)
    (tmp_path / "nowhere.h5.partial").write_bytes(b"")
    with pytest.raises(InputError, match="an unfinished run left nowhere.h5.partial"):
        reader.open_output(missing)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match=rf"^{foreign}: not an arielstream output file"):
        reader.open_output(foreign)
    text_file = Path(tmp_path / "notes.h5")
    text_file.write_text("not HDF5")
    with pytest.raises(InputError, match=rf"^{text_file}: cannot read: not a readable HDF5 file"):
        reader.open_readable(text_file)


def test_the_owner_token_is_read_as_another_process_left_it_through_its_map(tmp_path):
    """``owner`` reads the bytes (no map of its own): it must see a write made through a map, unflushed."""
    path = tmp_path / "fields.bin"
    path.write_bytes(b"\0" * 64 + np.zeros(5, "<i8").tobytes())
    descriptors = {schema.OWNER: store.ArrayDescriptor(str(path), 64, (5,), "<i8")}
    assert [Ledger(descriptors).owner(i) for i in range(5)] == [0] * 5
    writer = descriptors[schema.OWNER].open(3)
    writer[()] = 2**62 + 5  # as a worker's ledger writes it, through a shared map
    assert Ledger(descriptors).owner(3) == 2**62 + 5 and Ledger(descriptors).owner(2) == 0
    del writer
    with pytest.raises(IndexError):
        Ledger(descriptors).owner(5)
