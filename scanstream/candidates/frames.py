"""A candidate table handed to the caller as Arrow, pandas or polars, with its provenance.

Every part of a candidate table carries the run's record under the schema metadata key
``scanstream`` (JSON: the threshold record, model and store hashes, version, run id;
:func:`scanstream.candidates.table.with_metadata`). Reading the parts through a dataset drops
that metadata, so :func:`scanstream.candidates.table.read_candidates` puts it back on the table
it returns, and :func:`to_format` carries it over where the dataframe library has a place for
it:

- Arrow: ``table.schema.metadata[b"scanstream"]``, the same bytes ``query --out`` writes;
- pandas: ``df.attrs["scanstream"]``, the decoded dict (pandas keeps ``attrs`` through most
  operations);
- polars: a polars DataFrame has no table metadata, so the dict is read with
  :func:`scanstream.candidates.table.read_metadata` (``scanstream.read_candidates_metadata``).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from scanstream.errors import InputError

__all__ = ["FORMATS", "METADATA_KEY", "provenance", "to_format"]

FORMATS = ("arrow", "pandas", "polars")
METADATA_KEY = b"scanstream"


def provenance(table: pa.Table) -> dict[str, Any] | None:
    """The decoded ``scanstream`` schema metadata of ``table``, or None when it has none.

    >>> t = pa.table({"score": [0.5]}).replace_schema_metadata({METADATA_KEY: b'{"run_id": "r1"}'})
    >>> provenance(t)
    {'run_id': 'r1'}
    >>> provenance(pa.table({"score": [0.5]})) is None
    True
    """
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return None if raw is None else json.loads(raw)


def to_format(table: pa.Table, to: str) -> Any:
    """``table`` as ``to`` ("arrow", "pandas" or "polars"), the provenance kept where it fits.

    pandas and polars are not dependencies of scanstream: asking for one that is not installed
    is an InputError naming the package to install.

    >>> t = pa.table({"score": [0.5]}).replace_schema_metadata({METADATA_KEY: b'{"run_id": "r1"}'})
    >>> to_format(t, "arrow") is t
    True
    """
    if to not in FORMATS:
        raise InputError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    if to == "arrow":
        return table
    try:
        if to == "pandas":
            frame = table.to_pandas()
            meta = provenance(table)
            if meta is not None:
                frame.attrs[METADATA_KEY.decode()] = meta
            return frame
        import polars

        return polars.from_arrow(table)
    except ModuleNotFoundError as exc:
        raise InputError(f"to={to!r} needs {exc.name}, which is not installed (pip install {exc.name})") from None
