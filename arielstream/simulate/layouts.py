"""How the simulator's Parquet files are laid out (``arielstream simulate --parquet-layout``).

The names live in :mod:`arielstream.layout` (the command line lists them without loading the
simulator); what each means and the writer's options for it, here.

- ``pyarrow``: pyarrow's writer with its defaults and the chosen codec (``--compression``): dictionary
  encoding, pages of at most 1 MB (and, in recent pyarrow, 20,000 rows), no page index, signal columns
  REQUIRED. The default, unchanged, so folders simulated before stay byte-identical.
- ``polars``: the competition's files, written by an older Polars (what the real calibration tables in
  ``data_samples/reference`` hold): ZSTD, PLAIN values (no dictionary), data pages v1, one page per
  column chunk, a page index (column and offset index), no page checksums, OPTIONAL columns
  (definition levels, no nulls). Signal columns stay INT32 with the UINT_16 logical type.
- ``zstd-dictionary``: the ``polars`` layout with dictionary encoding (a dictionary page, then one data
  page of RLE/bit-packed indices per column chunk): whether the real signal files are dictionary-encoded
  is not known.

The named layouts fix the codec (zstd). ``axis_info.parquet`` keeps pyarrow's layout in every layout: the
real one was written by pyarrow (snappy, dictionary), not by Polars.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..layout import DEFAULT_LAYOUT, PARQUET_LAYOUTS

# A page limit no column chunk reaches (a signal column holds at most 4 bytes a frame): one page per chunk.
ONE_PAGE_BYTES = 1 << 30
ONE_PAGE_ROWS = 1 << 30


def check_layout(layout: object, compression: str) -> None:
    """Refuse an unknown layout, or a codec other than zstd with a named one (``ConfigError``, a ValueError)."""
    from ..errors import ConfigError, flag

    if layout not in PARQUET_LAYOUTS:
        raise ConfigError(f"{flag('parquet_layout', layout)}: not one of {', '.join(PARQUET_LAYOUTS)}")
    if layout != DEFAULT_LAYOUT and compression != "zstd":
        raise ConfigError(f"{flag('compression', compression)} applies to the {DEFAULT_LAYOUT} layout only: "
                          f"{flag('parquet_layout', layout)} is zstd-compressed")


def nullable(layout: str) -> bool:
    """Whether the signal columns are OPTIONAL (Polars writes every column so) rather than REQUIRED."""
    return layout != DEFAULT_LAYOUT


def writer_options(layout: str, compression: str, page_checksums: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``pq.ParquetWriter`` / ``pq.write_table`` for a file of ``layout``.

    ``compression`` is the codec of the ``pyarrow`` layout (the named layouts are zstd). Page checksums
    need pyarrow >= 15 (``MissingDependencyError`` otherwise).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..errors import MissingDependencyError

    check_layout(layout, compression)
    parameters = inspect.signature(pq.write_table).parameters  # pyarrow >= 15 has the option (and its writer)
    options: dict[str, Any] = {"compression": compression}
    if page_checksums:
        if "write_page_checksum" not in parameters:
            raise MissingDependencyError(f"Parquet page checksums need pyarrow >= 15 (this is pyarrow "
                                         f"{pa.__version__}): pip install 'pyarrow>=15'")
        options["write_page_checksum"] = True
    if layout == DEFAULT_LAYOUT:
        return options
    options.update(compression="zstd", use_dictionary=layout == "zstd-dictionary", data_page_version="1.0",
                   data_page_size=ONE_PAGE_BYTES, write_page_index=True)
    if "max_rows_per_page" in parameters:  # recent pyarrow also closes a page at 20,000 rows by default
        options["max_rows_per_page"] = ONE_PAGE_ROWS
    return options
