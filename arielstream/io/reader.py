"""Opening an arielstream file to read it: the one door every reader goes through.

:func:`open_readable` and :func:`open_output` give every command the same clean errors (exit
66) for a missing, foreign or unreadable file, and for an index whose parts are missing, cut
short or unreadable; they follow a symlink to the real file, and read an index renamed with its
parts folder through an in-memory copy that names its parts as they are now. Nothing here
writes, and nothing here changes the numbers of an output: this module is not part of an
output's identity (:mod:`arielstream.run.identity`), so a reader's fix never invalidates a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError, OutputError
from .atomic import partial_path
from .schema import ATTR_PARTS
from .sidefiles import OutputFiles
from .store import _json_attr, _single_descriptors, index_parts, is_output_file


def check_output(f: h5py.File, path: str | Path) -> None:
    """:class:`InputError` naming ``path`` unless ``f`` is an arielstream output file."""
    if not is_output_file(f):
        raise InputError(path, "not an arielstream output file")



def open_readable(path: str | Path) -> h5py.File:
    """An HDF5 file opened read-only; :class:`InputError` naming it when missing or unreadable.

    Every reader of arielstream files opens them here, so a missing input is the
    same error (and the same exit code, 66) for every command. The file is opened by its
    real path (a symlink is followed), so an index finds its parts beside the real file.
    An index whose part files are missing or damaged (``OUT.h5`` copied without
    ``OUT.h5.parts``, a part deleted or cut short) is refused too: HDF5 would read their
    observations as fill values. An index renamed with its parts folder (its parts then
    named by the old name) is read through an in-memory copy that names them as they are.
    """
    path = Path(path)
    if not path.exists():
        partial = partial_path(path)
        hint = f" (an unfinished run left {partial.name}: run the calibration again)" if partial.exists() else ""
        raise InputError(path, f"cannot read: no such file{hint}")
    real = path.resolve()
    try:
        f = h5py.File(real, "r")
    except OSError as exc:
        raise InputError(path, f"cannot read: not a readable HDF5 file: {exc}") from None
    names = index_parts(f)
    if not names:
        return f
    files = OutputFiles.of(real)
    damaged = [f"{name} ({problem})" for name in names if (problem := _part_problem(files.part(name)))]
    if damaged:  # HDF5 would read their observations as fill values
        f.close()
        raise InputError(path, f"an index over part files, but {len(damaged)} of them are missing or damaged "
                         f"({', '.join(damaged[:3])}): keep {files.parts.name} beside it, or run the calibration "
                         "again to recompute them")
    if any(name != files.part_name(files.part(name)) for name in names):
        try:
            return _relinked(f, files)
        finally:
            f.close()
    return f



def _part_problem(part: Path) -> str:
    """Why a part file cannot be read (empty when it can): missing, not HDF5, or cut short."""
    if not part.is_file():
        return "missing"
    try:
        with h5py.File(part, "r") as pf:
            descriptors = _single_descriptors(part, pf)
    except (OSError, OutputError) as exc:
        return "cut short" if "truncated file" in str(exc) else f"not readable: {exc}"
    size = part.stat().st_size
    end = max((d.offset + d.item_bytes * d.shape[0] for d in descriptors.values()), default=0)
    return f"cut short: {size} of {end} bytes" if size < end else ""



def _relinked(f: h5py.File, files: OutputFiles) -> h5py.File:
    """An in-memory copy of the index ``f`` whose virtual datasets name its parts where they are now."""
    mem = h5py.File(f"{files.path}.relinked-{os.getpid()}-{id(f)}", "w", driver="core", backing_store=False)
    references = ("DIMENSION_LIST", "REFERENCE_LIST")  # object references into the original: left out

    def copy_attrs(src: Any, dst: Any) -> None:
        for key, value in src.attrs.items():
            if key not in references:
                dst.attrs[key] = value

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group):
            copy_attrs(obj, mem.require_group(name))
            return
        if not obj.is_virtual:
            copy_attrs(obj, mem.create_dataset(name, data=obj[()]))
            return
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        if obj.fillvalue is not None:
            dcpl.set_fill_value(np.array(obj.fillvalue, dtype=obj.dtype))
        for source in obj.virtual_sources():
            dcpl.set_virtual(source.vspace, str(files.part(source.file_name)).encode(), source.dset_name.encode(),
                             source.src_space)
        parent = mem.require_group(name.rpartition("/")[0] or "/")
        h5py.h5d.create(parent.id, name.rpartition("/")[2].encode(), h5py.h5t.py_create(obj.dtype),
                        h5py.h5s.create_simple(obj.shape), dcpl=dcpl)
        copy_attrs(obj, mem[name])

    copy_attrs(f, mem)
    mem.attrs[ATTR_PARTS] = _json_attr([files.part_name(files.part(name)) for name in index_parts(f)])
    f.visititems(visit)
    return mem



def open_output(path: str | Path) -> h5py.File:
    """An arielstream output file opened read-only (:class:`InputError` if missing, unreadable or foreign)."""
    f = open_readable(path)
    try:
        check_output(f, path)
    except InputError:
        f.close()
        raise
    return f
