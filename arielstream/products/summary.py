"""Reading an arielstream output back: a summary for ``arielstream info`` and scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..io import schema, store
from ..io.reader import open_output
from ..io.schema import STATUS_NAMES
from ..io.store import text

# the products arielstream writes from a calibrated file: format attribute -> what ``info`` calls them
PRODUCTS = {"arielstream-lightcurves": "light curves (arielstream extract)",
            "arielstream-spectrum-fits": "per-visit fits (arielstream spectrum)"}


def _product_format(path: Path) -> str:
    """The ``format`` of a product file ``path`` (:data:`PRODUCTS`), or "" (then read as a calibrated output)."""
    try:
        with h5py.File(path, "r") as f:
            name = text(f.attrs.get(schema.ATTR_FORMAT, ""))
    except (OSError, ValueError):
        return ""  # open_output says why, as for every other reader
    return name if name in PRODUCTS else ""


def _datasets(f: h5py.File) -> dict[str, dict[str, Any]]:
    """Every dataset: shape, dtype, and its named dimensions, long name and units where it has them."""
    datasets: dict[str, dict[str, Any]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            d: dict[str, Any] = {"shape": list(obj.shape), "dtype": str(obj.dtype)}
            dims = [text(dim[0].name).rpartition("/")[2] if len(dim) else "" for dim in obj.dims]
            if any(dims):
                d["dims"] = dims
            for key in ("long_name", "units"):
                if key in obj.attrs:
                    d[key] = text(obj.attrs[key])
            datasets[name] = d

    f.visititems(visit)
    return datasets


def summarize_product(path: str | Path) -> dict[str, Any]:
    """What a product file (light curves, per-visit fits) is: its kind, attributes, datasets and observations."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        attrs = {k: text(v) if isinstance(v, (str, bytes)) else v.item() if hasattr(v, "item") else v
                 for k, v in f.attrs.items()}
        observations = [{"planet_id": int(p), "visit": int(v)}
                        for p, v in zip(f["planet_id"][()], f["visit"][()], strict=True)]
        datasets = _datasets(f)
    kind = PRODUCTS[text(attrs[schema.ATTR_FORMAT])]
    return {"path": str(path), "kind": kind, "format": attrs.get(schema.ATTR_FORMAT),
            "format_version": attrs.get(schema.ATTR_FORMAT_VERSION), "source": attrs.get("source", "?"),
            "arielstream_version": attrs.get("extracted_with", attrs.get("fitted_with", "?")),
            "attributes": attrs, "datasets": datasets, "observations": observations}


def summarize(path: str | Path) -> dict[str, Any]:
    """Attributes, dataset shapes and the status of every observation of an output file.

    A product file (light curves, per-visit fits) is described by :func:`summarize_product`
    (``kind`` says which). A missing, unreadable or foreign file is an
    :class:`~arielstream.errors.InputError` (:func:`arielstream.io.reader.open_output`), as for
    every other reader.
    """
    path = Path(path)
    if _product_format(path):
        return summarize_product(path)
    with open_output(path) as f:
        datasets: dict[str, dict[str, Any]] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                datasets[name] = {"shape": list(obj.shape), "dtype": str(obj.dtype)}

        f.visititems(visit)
        status = f[schema.STATUS][()]
        errors = [text(e).rstrip("\x00") for e in f[schema.ERROR][()]]
        observations = [
            {"planet_id": int(p), "visit": int(v), "status": STATUS_NAMES.get(int(s), f"unknown({int(s)})"),
             "error": e}
            for p, v, s, e in zip(f[schema.PLANET_ID][()], f[schema.VISIT][()], status, errors, strict=True)
        ]
        counts = {name: int(np.sum(status == code)) for code, name in STATUS_NAMES.items()}
        attrs = {k: text(v) for k, v in f.attrs.items()}
        parts = store.index_parts(f)
    return {
        "path": str(path),
        "kind": "calibrated output (arielstream calibrate)",
        "arielstream_version": attrs.get("arielstream_version", "?"),
        "profile": attrs.get("profile", "?"),
        "split": attrs.get("split", "?"),
        "config": json.loads(attrs.get("config", "{}")),
        "datasets": datasets,
        "observations": observations,
        "status_counts": counts,
        "parts": parts,  # an output extended by later runs: its part files, relative to it (else empty)
    }
