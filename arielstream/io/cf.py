"""Named dimensions and CF attributes for the HDF5 files arielstream writes (netCDF-4 / xarray / ncdump).

An HDF5 dataset's axes have no names; netCDF-4 readers name them from HDF5 *dimension
scales* attached to them and show ``phony_dim_N`` otherwise. The calibrated output
(:mod:`arielstream.io.store`) and the products (light curves, the per-visit fits) name
theirs through these helpers: :func:`scale` makes a coordinate variable that is a
dimension, :func:`attach` names a dataset's axes with scales, :func:`describe` writes its
``long_name``, ``units`` (UDUNITS-2 strings only) and the other CF attributes.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np


def scale(group: h5py.Group, name: str, data: Any, long_name: str = "", units: str = "",
          **attrs: Any) -> h5py.Dataset:
    """A dimension named ``name`` in ``group``, with ``data`` as its coordinate values (an existing dataset kept)."""
    ds = group[name] if name in group else group.create_dataset(name, data=np.asarray(data))
    ds.make_scale(name)
    describe(ds, long_name, units, **attrs)
    return ds


def attach(ds: h5py.Dataset, *scales: h5py.Dataset) -> h5py.Dataset:
    """Name ``ds``'s axes, in order, with the dimension ``scales`` (one per axis)."""
    if len(scales) != ds.ndim:
        raise ValueError(f"{ds.name}: {ds.ndim} axes, {len(scales)} dimension scales given")
    for i, s in enumerate(scales):
        ds.dims[i].attach_scale(s)
    return ds


def describe(ds: h5py.Dataset | h5py.Group, long_name: str = "", units: str = "", **attrs: Any) -> None:
    """``long_name``, ``units`` and other attributes (those given, not empty); a ``_FillValue`` in ``ds``'s dtype."""
    if long_name:
        ds.attrs["long_name"] = long_name
    if units:
        ds.attrs["units"] = units
    for key, value in attrs.items():
        if key == "_FillValue" and isinstance(ds, h5py.Dataset) and value is not None:
            value = np.array(value, dtype=ds.dtype)
        if value is None or (isinstance(value, str) and not value):
            continue
        ds.attrs[key] = value


__all__ = ["attach", "describe", "scale"]
