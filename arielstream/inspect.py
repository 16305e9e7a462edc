"""Reading an arielstream output back: a summary for ``arielstream info`` and scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import OutputError
from .store import STATUS_NAMES, is_output_file, text


def summarize(path: str | Path) -> dict[str, Any]:
    """Attributes, dataset shapes and the status of every observation of an output file."""
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = f" (an unfinished run left {partial.name})" if partial.exists() else ""
        raise OutputError(f"{path}: no such file{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise OutputError(f"{path}: not a readable HDF5 file: {exc}") from None
    with f:
        if not is_output_file(f):
            raise OutputError(f"{path}: not an arielstream output file")
        datasets: dict[str, dict[str, Any]] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                datasets[name] = {"shape": list(obj.shape), "dtype": str(obj.dtype)}

        f.visititems(visit)
        status = f["status"][()]
        errors = [text(e).rstrip("\x00") for e in f["error"][()]]
        observations = [
            {"planet_id": int(p), "visit": int(v), "status": STATUS_NAMES.get(int(s), f"unknown({int(s)})"),
             "error": e}
            for p, v, s, e in zip(f["planet_id"][()], f["visit"][()], status, errors, strict=True)
        ]
        counts = {name: int(np.sum(status == code)) for code, name in STATUS_NAMES.items()}
        attrs = {k: text(v) for k, v in f.attrs.items()}
    return {
        "path": str(path),
        "arielstream_version": attrs.get("arielstream_version", "?"),
        "profile": attrs.get("profile", "?"),
        "split": attrs.get("split", "?"),
        "config": json.loads(attrs.get("config", "{}")),
        "datasets": datasets,
        "observations": observations,
        "status_counts": counts,
    }
