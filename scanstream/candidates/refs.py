"""Store references in a candidate table: the ``store`` column holds each crop store's path
relative to the table directory (POSIX), so a table moved together with its stores still finds
its crops; readers resolve it back to a path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["relative_stores", "resolve_store", "resolve_stores", "store_ref"]


def store_ref(store: str | os.PathLike, table: str | os.PathLike) -> str:
    """``store`` as recorded in the ``store`` column: its path relative to the table (POSIX)."""
    if not os.path.isabs(store):
        return Path(store).as_posix()
    return Path(os.path.relpath(os.path.abspath(store), os.path.abspath(table))).as_posix()


def resolve_store(ref: str | None, table: str | os.PathLike) -> str | None:
    """The path of a recorded store: a relative reference is taken from the table directory."""
    if not ref or os.path.isabs(ref):
        return ref
    return os.path.normpath(os.path.join(os.path.abspath(table), ref))


def _map_stores(rows: pa.Table, fn: Any) -> pa.Table:
    """``rows`` with ``fn`` applied to each distinct non-empty value of its ``store`` column (if any)."""
    if "store" not in rows.column_names:
        return rows
    i = rows.column_names.index("store")
    refs = {s: fn(s) for s in pc.unique(rows.column(i)).to_pylist() if s}
    values = [refs.get(s, s) for s in rows.column(i).to_pylist()]
    return rows.set_column(i, rows.schema.field(i), pa.array(values, rows.schema.field(i).type))


def resolve_stores(rows: pa.Table, table: str | os.PathLike) -> pa.Table:
    """``rows`` with its ``store`` column (if any) resolved against the table directory."""
    return _map_stores(rows, lambda ref: resolve_store(ref, table))


def relative_stores(rows: pa.Table, table: Path) -> pa.Table:
    """``rows`` with every ``store`` recorded relative to ``table`` (already relative ones kept)."""
    return _map_stores(rows, lambda path: store_ref(path, table))
