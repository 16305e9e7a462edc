"""The output's schema as data (``arielstream.io.schema``): what a file holds is what it declares, no more.

Issue 21 item 1. Every dataset and file attribute of an output is declared once; the store lays
files out from the declarations, the checksum takes what it covers from them, and the run's
identity hashes their numerical part only: a long name can be reworded without marking every
existing output as made by other numerical code, a dtype cannot.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from arielstream.io import schema, store
from arielstream.layout import AIRS, FGS1
from arielstream.run import identity

from .test_verify_all import single_and_index


def _changed(name: str, **changes) -> tuple[schema.Field, ...]:
    assert name in schema.LONG_NAMES
    return tuple(dataclasses.replace(f, **changes) if f.name == name else f for f in schema.FIELDS)


@pytest.mark.parametrize("changes", [
    {"long_name": "the calibrated signal, reworded"},
    {"units": "e- per bin"},
    {"notes": (("comment", "a note"),)},
    {"standard_name": "toa_outgoing_radiance"},
], ids=lambda c: next(iter(c)))
def test_a_description_is_not_part_of_the_identity(monkeypatch, changes):
    before = identity.source_digest()
    monkeypatch.setattr(schema, "FIELDS", _changed(schema.SIGNAL, **changes))
    assert identity.source_digest() == before
    flags = dataclasses.replace(schema.INSTRUMENT[schema.DQ].flags, meanings=tuple("ABCDEFG"))
    monkeypatch.setattr(schema, "FIELDS", _changed(schema.DQ, flags=flags))
    assert identity.source_digest() == before
    described = tuple(dataclasses.replace(a, description="reworded") for a in schema.ATTRIBUTES)
    monkeypatch.setattr(schema, "ATTRIBUTES", described)
    assert identity.source_digest() == before


@pytest.mark.parametrize(("name", "changes"), [
    (schema.SIGNAL, {"dtype": "<f8"}),
    (schema.ERROR, {"dtype": "|S256"}),
    (schema.BACKGROUND, {"axes_by_instrument": ()}),
    (schema.READ_NOISE, {"fill": None}),
    (schema.DQ, {"fill": math.nan}),
    (schema.ROW, {"checksum": schema.Coverage.NONE}),
    (schema.PROVENANCE, {"checksum": schema.Coverage.BOOKKEEPING}),
    (schema.COLUMN, {"binned_dtype": "<f8"}),
], ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_a_dtype_an_axis_a_fill_value_or_the_checksum_s_scope_is(monkeypatch, name, changes):
    before = identity.source_digest()
    monkeypatch.setattr(schema, "FIELDS", _changed(name, **changes))
    assert identity.source_digest() != before


def test_the_attributes_the_checksum_covers_and_their_order_are_part_of_the_identity(monkeypatch):
    before = identity.source_digest()
    uncovered = tuple(dataclasses.replace(a, checksum=schema.Coverage.NONE) if a.name == "split" else a
                      for a in schema.ATTRIBUTES)
    monkeypatch.setattr(schema, "ATTRIBUTES", uncovered)
    assert identity.source_digest() != before
    monkeypatch.setattr(schema, "ATTRIBUTES", tuple(reversed(schema.ATTRIBUTES)))
    assert identity.source_digest() != before


def test_the_schema_s_file_is_not_a_numerical_module():
    assert not any(Path(p).name == "schema.py" for p in identity.NUMERICAL_MODULES)
    assert "long_name" not in identity.schema_json() and "calibrated signal" not in identity.schema_json()


def test_the_checksum_s_scope_comes_from_the_declarations_in_its_order():
    """What the checksum covers, pinned: a change here changes every stored checksum."""
    assert store.CHECKSUM_ATTRS == ("config", "wavelength_order", "split", "dq_bits", "dq_time_bits")
    assert store.CHECKSUM_AXES == ("time", "column", "wavelength", "wavelength_label", "row", "xy")
    assert schema.CHECKSUM_FIELDS == ("provenance", "inputs")
    assert set(schema.CHECKSUM_PLANES) == set(schema.PER_PIXEL)
    bookkeeping = {f.name for f in schema.FIELDS if f.checksum is schema.Coverage.BOOKKEEPING}
    assert bookkeeping == {"status", "attempts", "owner", "checksum", "error"}
    assert {f.name for f in schema.FIELDS if f.checksum is schema.Coverage.KEY} == {"obs", "planet_id", "visit"}


def test_optional_planes_are_shaped_by_the_schema_per_instrument():
    dims = {schema.TIME_AXIS: 5, schema.X_AXIS: 7, schema.Y_AXIS: 3, schema.XY_AXIS: 2}
    background = schema.OPTIONAL[schema.BACKGROUND]
    assert background.shape_for(AIRS.name, dims) == (5, 7) and background.shape_for(FGS1.name, dims) == (5,)
    assert schema.OPTIONAL[schema.CENTROID].shape_for(FGS1.name, dims) == (5, 2)
    assert schema.axes_text(schema.OPTIONAL[schema.CENTROID].axes) == "obs,time,(x,y)"
    assert schema.ADDED_BY_STEP["tracking"] == (schema.TRACE_ROW, schema.CENTROID)
    assert not schema.OPTIONAL[schema.TRACE_ROW].in_instrument(FGS1.name)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """The samples with every optional plane: a single file, and an index over it and a new part."""
    return single_and_index(tmp_path_factory.mktemp("schema"), "--profile", "full")


def _walk(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...], dict]], set[str]]:
    """Every dataset of a file (key -> a description), and its file attributes."""
    found: dict[str, tuple[str, tuple[int, ...], dict]] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                attrs = {k: obj.attrs[k] for k in obj.attrs if k not in ("DIMENSION_LIST", "REFERENCE_LIST")}
                found[name] = (obj.dtype.str, obj.shape, attrs)
        f.visititems(visit)
        return found, set(f.attrs)


def test_every_dataset_and_attribute_of_an_output_is_declared_and_every_declaration_is_in_one(outputs):
    seen_fields: set[str] = set()
    seen_attrs: set[str] = set()
    for path in outputs.values():
        datasets, attrs = _walk(path)
        undeclared = sorted(k for k in datasets if k.rpartition("/")[2] not in
                            (schema.INSTRUMENT if "/" in k else schema.ROOT))
        assert not undeclared, f"{path}: datasets the schema does not declare: {undeclared}"
        for key, (dtype, shape, ds_attrs) in datasets.items():
            spec = schema.field(key)
            instrument = key.rpartition("/")[0]
            assert spec.in_instrument(instrument) if instrument else spec.group is schema.Group.ROOT, key
            assert dtype == spec.dtype, key  # not spatially binned: the column's unbinned dtype
            axes = spec.axes_for(instrument)
            assert len(shape) == len(axes), key
            assert ds_attrs["long_name"] == spec.long_name, key
            if spec.written is schema.Written.MEMMAP and instrument:
                assert ds_attrs["axes"] == schema.axes_text(axes), key
            for name, value in (("units", spec.units), ("standard_name", spec.standard_name), *spec.notes):
                assert ds_attrs.get(name, "") == value, (key, name)
            if spec.flags is not None:
                assert ds_attrs[spec.flags.attribute].tolist() == list(spec.flags.values), key
                assert ds_attrs[spec.flags.attribute].dtype == np.dtype(spec.dtype), key
            seen_fields.add(spec.name)
        assert attrs <= {a.name for a in schema.ATTRIBUTES}, f"{path}: undeclared attributes"
        seen_attrs |= attrs
    assert seen_fields == {f.name for f in schema.FIELDS}, "declared but in no output"
    assert seen_attrs == {a.name for a in schema.ATTRIBUTES}, "declared but in no output"


def test_an_output_s_planes_are_memmapped_as_declared(outputs):
    descriptors = store.read_descriptors(outputs["single"])
    memmapped = {key.rpartition("/")[2] for key in descriptors}
    assert memmapped == {f.name for f in schema.FIELDS if f.written is schema.Written.MEMMAP}
    with h5py.File(outputs["single"], "r") as f:
        for key, d in descriptors.items():
            assert f[key].dtype == np.dtype(schema.field(key).dtype), key
            assert d.shape == f[key].shape, key
