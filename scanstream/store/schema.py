"""The crop store's object-table schema, its constants, and the digests of its content.

``OBJECT_SCHEMA`` is the contract every store's ``objects.parquet`` keeps (docs/store.md, "The crop
store"); :func:`rows_to_table` conforms rows to it. The content hash of a store is the blake2b
of its aligned crop-block digests and of its table's Arrow IPC bytes. Each block also gets a
*fast* digest (xxh3-128, about 30x faster than blake2b here: 17 against 0.6 GB/s), which is what
readers check crops against; the blake2b digests define the store's identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from scanstream.errors import InputError

SCHEMA_VERSION = 1
CROP_SIZE = 224
CHANNELS = 3
PIXEL_SIZE_UM = 87.0 / 224.0  # about 0.39 um/px at the object (docs/physics.md)
#: The spacing of a crop's focal planes where a store records none (group attribute
#: ``plane_step_um``): the E07 stage's 3 um (docs/physics.md, "Emulsion and microscope"), which
#: the simulator renders too.
PLANE_STEP_UM = 3.0
CHUNK_CROPS = 32
SHARD_CROPS = 1024
ZSTD_LEVEL = 1
TABLE_FILE = "objects.parquet"
DIGESTS_FILE = "digests.json"
PARTS_DIR = "_parts"

LABEL_ALPHA, LABEL_OTHER, LABEL_UNKNOWN = 1, 0, -1

#: The ``crops`` array's axes (its zarr ``dimension_names``, xarray's dims): object i (row i of
#: the object table), image row, image column, focal plane. The planes are the channels of
#: every crop: one step shallower than the vertex (higher stage z), the vertex's own plane,
#: one step deeper (docs/physics.md; :mod:`scanstream.picker.pick`).
CROP_DIMS = ("object", "y", "x", "plane")
CROP_PLANES = ("shallower", "vertex", "deeper")
#: Units of the object table's dimensioned columns, named in the group attributes.
TABLE_UNITS = {"x_mm": "millimeter", "y_mm": "millimeter", "z_mm": "millimeter", "track_lengths_um": "micrometer",
               "track_dips_deg": "degree", "origin_x_mm": "millimeter", "origin_y_mm": "millimeter",
               "origin_z_mm": "millimeter"}
#: Optional object-table columns, typed when present: each prong's dip (degrees from the plate
#: plane, 0-90, parallel to ``track_lengths_um``) and the emulsion's shrinkage as the scan's
#: metadata gives it (``EmulsionType.Sh``; null where unknown), which the picker converted depth with;
#: a star's second vertex (a displaced radon's origin: stage mm, null where none) and the prongs
#: measured from it (0 where none; :mod:`scanstream.picker.pick`).
OPTIONAL_FIELDS = {"track_dips_deg": pa.list_(pa.float32()), "emulsion_shrinkage": pa.float32(),
                   "origin_x_mm": pa.float64(), "origin_y_mm": pa.float64(), "origin_z_mm": pa.float64(),
                   "origin_prongs": pa.int16()}

#: The object table columns every store has, in order (docs/store.md). Stores may carry more
#: (simulation truth columns, prefixed ``truth_``), appended after these.
OBJECT_SCHEMA = pa.schema(
    [
        pa.field("object_id", pa.string(), nullable=False),
        pa.field("experiment", pa.string()),
        pa.field("module", pa.int32()),
        pa.field("plate", pa.int32()),
        pa.field("sheet", pa.string()),
        pa.field("x_mm", pa.float64()),
        pa.field("y_mm", pa.float64()),
        pa.field("z_mm", pa.float64()),
        pa.field("label", pa.int8()),
        pa.field("category", pa.string()),
        pa.field("multiplicity", pa.int16()),
        pa.field("track_lengths_um", pa.list_(pa.float32())),
    ]
)
_DEFAULTS: dict[str, Any] = {
    "experiment": "",
    "module": 0,
    "plate": 0,
    "sheet": "",
    "x_mm": 0.0,
    "y_mm": 0.0,
    "z_mm": 0.0,
    "label": LABEL_UNKNOWN,
    "category": None,
    "multiplicity": None,
    "track_lengths_um": None,
}


def crops_attributes(pixel_size_um: float) -> dict[str, Any]:
    """The ``crops`` array's attributes: its axes with their units, for readers without scanstream.

    ``axes`` runs parallel to :data:`CROP_DIMS`: the object axis is an index (no unit), y and x
    are micrometres at the object, ``scale`` um per pixel, and the plane axis names its planes.
    """
    return {
        "long_name": "vertex crops, 8-bit grey level of three focal planes",
        "axes": [
            {"name": "object", "type": "index", "unit": None, "description": f"row i of {TABLE_FILE}"},
            {"name": "y", "type": "space", "unit": "micrometer", "scale": pixel_size_um},
            {"name": "x", "type": "space", "unit": "micrometer", "scale": pixel_size_um},
            {"name": "plane", "type": "channel", "unit": None, "labels": list(CROP_PLANES)},
        ],
        "pixel_size_um": pixel_size_um,
    }


def group_attributes() -> dict[str, Any]:
    """Group attributes that name the store's non-zarr members and give their units.

    ``object_table`` and ``block_digests`` are paths relative to the store directory;
    ``units`` gives the unit of every dimensioned attribute and table column.
    """
    return {
        "object_table": TABLE_FILE,
        "block_digests": DIGESTS_FILE,
        "units": {"pixel_size_um": "micrometer", "plane_step_um": "micrometer", "crop_size": "pixel", **TABLE_UNITS},
    }


def rows_to_table(rows: pa.Table | Sequence[Mapping[str, Any]]) -> pa.Table:
    """Conform object rows to :data:`OBJECT_SCHEMA` (plus any extra columns, kept as given).

    Parameters
    ----------
    rows : pyarrow.Table or sequence of mappings
        One row per crop. ``object_id`` is required; other standard columns default to
        empty / unknown (label -1).

    Returns
    -------
    pyarrow.Table
        The standard columns in schema order and types, then the extra columns.
    """
    if not isinstance(rows, pa.Table):
        rows = list(rows)
        names: list[str] = []
        for row in rows:
            for key in row:
                if key not in names:
                    names.append(key)
        rows = pa.table({name: [row.get(name) for row in rows] for name in names}) if rows else (
            pa.table({f.name: pa.array([], f.type) for f in OBJECT_SCHEMA})
        )
    n = rows.num_rows
    if "object_id" not in rows.column_names:
        raise InputError("object rows have no 'object_id' column")
    columns, fields = [], []
    for field in OBJECT_SCHEMA:
        if field.name in rows.column_names:
            col = rows.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(f"object table column {field.name!r} cannot be read as {field.type}: {exc}") from None
        else:
            col = pa.array([_DEFAULTS[field.name]] * n, field.type)
        columns.append(col)
        fields.append(field)
    if columns[0].null_count:
        raise InputError("object rows have a missing object_id")
    labels = np.asarray(columns[8].fill_null(LABEL_UNKNOWN).to_numpy(zero_copy_only=False))
    bad = set(np.unique(labels).tolist()) - {-1, 0, 1}
    if bad:
        raise InputError(f"object labels must be 1 (alpha), 0 (other) or -1 (unknown), got {sorted(bad)}")
    columns[8] = pa.array(labels.astype(np.int8), pa.int8())
    for name in rows.column_names:
        if name not in OBJECT_SCHEMA.names:
            col, typ = rows.column(name), OPTIONAL_FIELDS.get(name, rows.schema.field(name).type)
            try:
                columns.append(col.cast(typ))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(f"object table column {name!r} cannot be read as {typ}: {exc}") from None
            fields.append(pa.field(name, typ))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def table_digest(table: pa.Table) -> str:
    # Always exactly one record batch (also for an empty table), so the bytes depend on the
    # table's content and schema only, not on how it was chunked or where it was read from.
    arrays = [col.combine_chunks() for col in table.columns]
    batch = pa.RecordBatch.from_arrays(arrays, schema=table.schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_batch(batch)
    return hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=16).hexdigest()


def block_digest(crops: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(crops).data, digest_size=16).hexdigest()


#: The algorithm of the fast block digests (``digests.json``: ``fast``, ``fast_blocks``).
FAST_DIGEST = "xxh3_128"


def fast_hasher() -> Any:
    """An incremental hasher (``update``, ``hexdigest``) of the fast block digests."""
    return xxhash.xxh3_128()


def fast_digest(crops: np.ndarray) -> str:
    return xxhash.xxh3_128(np.ascontiguousarray(crops).data).hexdigest()


def content_hash(block_digests: Sequence[str], table: pa.Table) -> str:
    h = hashlib.blake2b(digest_size=16)
    for d in block_digests:
        h.update(bytes.fromhex(d))
    h.update(bytes.fromhex(table_digest(table)))
    return h.hexdigest()


def iter_rows(table: pa.Table) -> Iterable[dict[str, Any]]:
    """Rows of an Arrow table as dicts (small tables only)."""
    return table.to_pylist()
