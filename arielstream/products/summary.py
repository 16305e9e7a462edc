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


def summarize(path: str | Path) -> dict[str, Any]:
    """Attributes, dataset shapes and the status of every observation of an output file.

    A missing, unreadable or foreign file is an :class:`~arielstream.errors.InputError`
    (:func:`arielstream.io.reader.open_output`), as for every other reader.
    """
    path = Path(path)
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
        "arielstream_version": attrs.get("arielstream_version", "?"),
        "profile": attrs.get("profile", "?"),
        "split": attrs.get("split", "?"),
        "config": json.loads(attrs.get("config", "{}")),
        "datasets": datasets,
        "observations": observations,
        "status_counts": counts,
        "parts": parts,  # an output extended by later runs: its part files, relative to it (else empty)
    }
