"""The crop store: a zarr v3 group of vertex crops plus a Parquet object table.

Layout of ``NAME.zarr/`` (DESIGN.md, "Crop store")::

    zarr.json            group attributes: schema version, pixel size, crop size, source,
                         content hash, completion marker
    crops/               uint8 (n, 224, 224, 3), chunked along n only, zstd, sharded
    objects.parquet      the object table, row i describes crop i
    digests.json         blake2b digest of every aligned block of crops (for the content hash)
    _parts/              object-table parts of an unfinished write (absent once complete)

Writes are crash-safe. Crops are written first, then the rows that describe them are committed
as a Parquet part file (temporary name, then rename); a reopened writer trusts only committed
rows and truncates any crops beyond them. The completion marker (``complete: true`` with the
content hash) is set last, so an interrupted write never leaves a store that looks complete,
and a rerun resumes where the last commit ended.

Chunk, shard and zstd level, chosen by measurement (``python benchmarks/store_io.py --n 2048
--repeat 3``: 2,048 crops from ``scanstream.simulate.simulate_store``, 150,528 raw bytes each;
2-core development machine shared with other jobs, load average about 12 during the run, so
absolute rates are low and noisy; every figure is the best of 3 repeats taken round-robin over
the configurations)::

    chunk shard zstd  write/s  read/s (shard ranges)  read/s (chunk ranges)  random 1-crop/s  bytes/crop
      16  1024    1      234          489                    774                   110          104,484
      32  1024    1      315          886                  1,520                    81          104,637
      64  1024    1      305          630                  1,400                    37          104,581
      32   256    1      324          630                  2,056                    61          104,637
      32  1024    3       97          524                    665                    52          103,673
    np.copy of the same array in memory: 5,772 crops/s

Chosen: chunks of 32 crops (4.8 MB raw) in shards of 1024, zstd level 1. Level 1 writes about
3x faster than level 3 (2.1-2.8x in two earlier runs) for 0.9 % more bytes (simulated crops
are grain noise that compresses only 1.44x). Chunks of 32 read sequentially at least as fast as
64 and give 2.2x the random single-crop reads (galleries, review) because a one-crop read
decodes a whole chunk; 16 reads single crops faster still but sequential ranges slower. Shards
of 1024 keep a 3-million-crop sheet to about 3,000 files (256: 12,000) and cost one shard of
memory in the writer: ``scanstream ingest`` of 1,000 and of 4,000 PNG files peaked at the same
1,109 MiB resident (flat in the number of files). Store writes ran at 2-6 % of the speed of a
memory copy of the same array, reads at 8-36 %.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import ZstdCodec

from scanstream.errors import (
    IncompleteStoreError,
    InputError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CROP_SIZE = 224
CHANNELS = 3
PIXEL_SIZE_UM = 87.0 / 224.0  # about 0.39 um/px at the object (PHYSICS.md)
CHUNK_CROPS = 32
SHARD_CROPS = 1024
ZSTD_LEVEL = 1
TABLE_FILE = "objects.parquet"
DIGESTS_FILE = "digests.json"
PARTS_DIR = "_parts"

LABEL_ALPHA, LABEL_OTHER, LABEL_UNKNOWN = 1, 0, -1
_EMPTY_BLOCK = np.empty((0, CROP_SIZE, CROP_SIZE, CHANNELS), np.uint8)

#: The object table columns every store has, in order (DESIGN.md). Stores may carry more
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
            columns.append(rows.column(name))
            fields.append(pa.field(name, rows.schema.field(name).type))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _table_digest(table: pa.Table) -> str:
    # Always exactly one record batch (also for an empty table), so the bytes depend on the
    # table's content and schema only, not on how it was chunked or where it was read from.
    arrays = [col.combine_chunks() for col in table.columns]
    batch = pa.RecordBatch.from_arrays(arrays, schema=table.schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_batch(batch)
    return hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=16).hexdigest()


def _block_digest(crops: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(crops).data, digest_size=16).hexdigest()


def _content_hash(block_digests: Sequence[str], table: pa.Table) -> str:
    h = hashlib.blake2b(digest_size=16)
    for d in block_digests:
        h.update(bytes.fromhex(d))
    h.update(bytes.fromhex(_table_digest(table)))
    return h.hexdigest()


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` (zstd) through a temporary file and a rename: never half-written."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


@dataclass(frozen=True)
class CropStore:
    """A complete (or, with ``require_complete=False``, possibly incomplete) crop store.

    Attributes
    ----------
    path : Path
        The ``NAME.zarr`` directory.
    crops : zarr.Array
        uint8 (n, 224, 224, 3), opened read-only.
    table : pyarrow.Table
        The object table, row i describing crop i.
    attrs : dict
        The group attributes.
    """

    path: Path
    crops: zarr.Array
    table: pa.Table
    attrs: dict

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def n(self) -> int:
        return self.table.num_rows

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def content_hash(self) -> str | None:
        return self.attrs.get("content_hash")

    @property
    def chunk_crops(self) -> int:
        return int(self.attrs.get("chunk_crops", self.crops.chunks[0]))

    @property
    def labels(self) -> np.ndarray:
        """int8 (n,): 1 alpha decay, 0 other, -1 unknown."""
        return self.table.column("label").to_numpy(zero_copy_only=False).astype(np.int8)

    @property
    def object_ids(self) -> list[str]:
        return self.table.column("object_id").to_pylist()

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Crops ``start:stop`` as a uint8 array (k, 224, 224, 3)."""
        stop = self.n if stop is None else min(stop, self.n)
        return np.asarray(self.crops[start:stop])

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Crops at rows ``rows`` (any order, repeats allowed), each chunk read once.

        Whole-chunk slices, then a gather: measured about 9x faster than zarr's orthogonal
        selection for 100 scattered rows of a 3,000-crop store (1.2 s against 10.9 s).

        Returns
        -------
        ndarray, uint8 (len(rows), 224, 224, 3)
        """
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), CROP_SIZE, CROP_SIZE, CHANNELS), np.uint8)
        c = self.chunk_crops
        chunk_of = rows // c
        for ch in np.unique(chunk_of):
            sel = np.flatnonzero(chunk_of == ch)
            out[sel] = self.read(int(ch) * c, (int(ch) + 1) * c)[rows[sel] - int(ch) * c]
        return out

    def chunk_ranges(self, crops_per_task: int | None = None) -> list[tuple[int, int]]:
        """Chunk-aligned ``(start, stop)`` ranges covering the store.

        ``crops_per_task`` is rounded up to a whole number of chunks (default: one shard).
        """
        step = crops_per_task or int(self.attrs.get("shard_crops", SHARD_CROPS))
        chunk = self.chunk_crops
        step = max(chunk, -(-step // chunk) * chunk)
        return [(s, min(s + step, self.n)) for s in range(0, self.n, step)]


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a crop store directory (complete or not)."""
    p = Path(path)
    try:
        meta = json.loads((p / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("node_type") == "group" and "scanstream_schema" in meta.get("attributes", {})


def open_store(path: str | os.PathLike, *, require_complete: bool = True) -> CropStore:
    """Open a crop store read-only.

    Raises
    ------
    StoreNotFoundError
        ``path`` is not a crop store.
    IncompleteStoreError
        The store lacks its completion marker and ``require_complete`` is true.
    """
    p = Path(path)
    if not p.exists():
        raise StoreNotFoundError(f"{p}: no such crop store")
    if not is_store(p):
        raise StoreNotFoundError(f"{p}: not a scanstream crop store (no zarr.json with scanstream attributes)")
    group = zarr.open_group(str(p), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("scanstream_schema", 0) > SCHEMA_VERSION:
        raise StoreError(f"{p}: store schema {attrs['scanstream_schema']} is newer than this scanstream ({SCHEMA_VERSION})")
    if require_complete and not attrs.get("complete"):
        raise IncompleteStoreError(f"{p}: store is incomplete (interrupted write?); rerun the command that writes it")
    try:
        crops = group["crops"]
    except KeyError:
        raise StoreError(f"{p}: store has no 'crops' array") from None
    table = _read_table(p)
    if require_complete and table.num_rows != crops.shape[0]:
        raise StoreError(f"{p}: object table has {table.num_rows} rows but crops has {crops.shape[0]}")
    return CropStore(path=p, crops=crops, table=table, attrs=attrs)


def _part_start(part: Path) -> int:
    """First row of a part file ``part-<start:012d>.parquet``."""
    return int(part.stem.split("-", 1)[1])


def _live_parts(p: Path, merged_rows: int) -> list[Path]:
    """Part files not yet merged into the object table, in row order.

    A part whose first row lies below ``merged_rows`` was merged by a :meth:`StoreWriter.finalize`
    that was interrupted before it removed ``_parts/``; reading it again would duplicate rows.
    """
    d = p / PARTS_DIR
    if not d.exists():
        return []
    return sorted((f for f in d.glob("part-*.parquet") if _part_start(f) >= merged_rows), key=_part_start)


def _read_table(p: Path) -> pa.Table:
    parts: list[pa.Table] = []
    merged_rows = 0
    if (p / TABLE_FILE).exists():
        try:
            parts.append(pq.read_table(p / TABLE_FILE))
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{p / TABLE_FILE}: unreadable object table: {exc}") from None
        merged_rows = parts[0].num_rows
    for part in _live_parts(p, merged_rows):
        try:
            parts.append(pq.read_table(part))
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{part}: unreadable object table part: {exc}") from None
    if not parts:
        return rows_to_table([])
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


class StoreWriter:
    """Create, append to, or resume a crop store; use as a context manager.

    Crops arrive in any batch size through :meth:`append`; they are buffered and written a
    shard at a time, each write followed by the commit of the rows describing it.
    :meth:`finalize` (called on a clean ``with`` exit) writes the rest, merges the table,
    computes the content hash and sets the completion marker. On an exception the store is
    left incomplete but consistent up to its last commit, so the next writer resumes;
    :meth:`rollback` instead undoes everything this writer added. The writer holds one
    shard of crops in memory (``shard_crops`` x 150,528 bytes), whatever the batch sizes.
    ``created`` says whether this writer created the store.

    Parameters
    ----------
    path : path-like
        The ``NAME.zarr`` directory.
    source : dict
        How the store was made (stage name and its arguments); recorded in the attributes.
    overwrite : bool
        Remove an existing store at ``path`` first. Without it, an existing complete store
        is opened for appending (ingest's idempotent rerun) and an incomplete one is resumed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        source: Mapping[str, Any],
        overwrite: bool = False,
        exist_ok: bool = True,
        pixel_size_um: float = PIXEL_SIZE_UM,
        chunk_crops: int = CHUNK_CROPS,
        shard_crops: int = SHARD_CROPS,
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if shard_crops % chunk_crops:
            raise InputError(f"shard_crops {shard_crops} is not a multiple of chunk_crops {chunk_crops}")
        if self.path.exists() and overwrite:
            shutil.rmtree(self.path)
        self._pending_attrs: dict[str, Any] = {"source": dict(source), **dict(extra_attrs or {})}
        if self.path.exists():
            if not is_store(self.path):
                raise StoreExistsError(f"{self.path}: exists and is not a crop store")
            if not exist_ok:
                raise StoreExistsError(f"{self.path}: store exists (use --overwrite to replace it)")
            self.created = False
            self._group = zarr.open_group(str(self.path), mode="r+")
            try:
                self._crops = self._group["crops"]
            except KeyError:
                raise StoreError(f"{self.path}: store has no 'crops' array") from None
            self._shard = int(self._group.attrs.get("shard_crops", SHARD_CROPS))
        else:
            self.created = True
            self._create(pixel_size_um, chunk_crops, shard_crops)
        # What the store looked like when this writer opened it, for rollback(); an existing
        # store is marked incomplete only when the first crop is written (a rerun that adds
        # nothing leaves a complete store untouched).
        self._start_attrs = dict(self._group.attrs)
        self._marked = self.created

        committed = _read_table(self.path)
        self._committed_rows = committed.num_rows
        self._start_rows = committed.num_rows
        self._ids: set[str] = set(committed.column("object_id").to_pylist())
        if len(self._ids) != self._committed_rows:
            raise StoreError(f"{self.path}: object table has duplicate object ids")
        if self._crops.shape[0] < self._committed_rows:
            raise StoreError(
                f"{self.path}: object table has {self._committed_rows} rows but only {self._crops.shape[0]} crops"
            )
        if self._crops.shape[0] > self._committed_rows:
            logger.info("%s: dropping %d uncommitted crops", self.path, self._crops.shape[0] - self._committed_rows)
            self._crops.resize((self._committed_rows, CROP_SIZE, CROP_SIZE, CHANNELS))
        self._digests = self._load_digests()
        # One shard-sized buffer: the current aligned block of rows, committed (read back on
        # resume, for its digest) and buffered. Crops are copied into it once; nothing else
        # holds crops, so a writer's memory is about one shard whatever the batch sizes.
        self._block_start = (self._committed_rows // self._shard) * self._shard
        self._block = np.empty((self._shard, CROP_SIZE, CROP_SIZE, CHANNELS), np.uint8)
        self._fill = self._committed_rows - self._block_start
        if self._fill:
            self._block[: self._fill] = self._crops[self._block_start : self._committed_rows]
        self._buf_rows: list[pa.Table] = []
        self._finalized = False

    def _create(self, pixel_size_um: float, chunk_crops: int, shard_crops: int) -> None:
        """Create an empty store under a temporary name, then rename it into place.

        A store directory therefore always has its group attributes and its ``crops`` array;
        a crash during creation leaves only a hidden temporary directory.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        attrs = {
            "scanstream_schema": SCHEMA_VERSION,
            "pixel_size_um": pixel_size_um,
            "crop_size": CROP_SIZE,
            "chunk_crops": chunk_crops,
            "shard_crops": shard_crops,
            "complete": False,
            "content_hash": None,
            **self._pending_attrs,
        }
        group = zarr.open_group(str(tmp), mode="w", attributes=attrs)
        group.create_array(
            "crops",
            shape=(0, CROP_SIZE, CROP_SIZE, CHANNELS),
            chunks=(chunk_crops, CROP_SIZE, CROP_SIZE, CHANNELS),
            shards=(shard_crops, CROP_SIZE, CROP_SIZE, CHANNELS),
            dtype="uint8",
            compressors=ZstdCodec(level=ZSTD_LEVEL),
            fill_value=0,
        )
        os.replace(tmp, self.path)
        self._group = zarr.open_group(str(self.path), mode="r+")
        self._crops = self._group["crops"]
        self._shard = shard_crops

    def _mark_incomplete(self) -> None:
        """Before the first write into an existing store: clear its completion marker."""
        if not self._marked:
            self._group.attrs.update({**self._pending_attrs, "complete": False, "content_hash": None})
            self._marked = True

    # -- reading back what is committed ---------------------------------------------------
    def _load_digests(self) -> list[str]:
        digests: list[str] = []
        merged_rows = 0
        f = self.path / DIGESTS_FILE
        if f.exists():
            saved = json.loads(f.read_text())
            digests = list(saved["blocks"])
            merged_rows = int(saved.get("n_rows", len(digests) * self._shard))
        for part in _live_parts(self.path, merged_rows):
            meta = pq.read_schema(part).metadata or {}
            digests.extend(json.loads(meta.get(b"scanstream_blocks", b"[]")))
        return digests[: self._committed_rows // self._shard]  # complete blocks only

    @property
    def n(self) -> int:
        """Crops accepted so far (committed plus buffered)."""
        return self._block_start + self._fill

    def __contains__(self, object_id: str) -> bool:
        return object_id in self._ids

    @property
    def object_ids(self) -> set[str]:
        return self._ids

    # -- writing --------------------------------------------------------------------------
    def append(self, crops: np.ndarray, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Add crops (k, 224, 224, 3) uint8 and their k object rows.

        Raises
        ------
        InputError
            Wrong dtype or shape, a row count that differs from the crop count, or an
            object id that is already in the store.
        """
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.dtype != np.uint8 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, CHANNELS):
            raise InputError(
                f"{self.path}: crops must be uint8 (k, {CROP_SIZE}, {CROP_SIZE}, {CHANNELS}), got {crops.dtype} {crops.shape}"
            )
        table = rows_to_table(rows)
        if table.num_rows != crops.shape[0]:
            raise InputError(f"{self.path}: {crops.shape[0]} crops but {table.num_rows} object rows")
        ids = table.column("object_id").to_pylist()
        seen = set()
        for oid in ids:
            if oid in self._ids or oid in seen:
                raise InputError(f"{self.path}: duplicate object id {oid!r}")
            seen.add(oid)
        self._ids.update(ids)
        self._buf_rows.append(table)
        pos = 0
        while pos < len(crops):
            take = min(self._shard - self._fill, len(crops) - pos)
            self._block[self._fill : self._fill + take] = crops[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self._shard:
                self._flush()  # a whole shard: written without reading anything back

    def _flush(self) -> None:
        """Write the buffered crops of the current block and commit the rows describing them."""
        upto = self._block_start + self._fill
        k = upto - self._committed_rows
        if k <= 0:
            return
        self._mark_incomplete()
        (self.path / PARTS_DIR).mkdir(exist_ok=True)
        start = self._committed_rows
        self._crops.resize((upto, CROP_SIZE, CROP_SIZE, CHANNELS))
        self._crops[start:upto] = self._block[start - self._block_start : self._fill]
        full = self._fill == self._shard
        new_digests = [_block_digest(self._block)] if full else []
        rows = pa.concat_tables(self._buf_rows, promote_options="permissive") if len(self._buf_rows) > 1 else self._buf_rows[0]
        part = rows.slice(0, k).replace_schema_metadata({"scanstream_blocks": json.dumps(new_digests)})
        write_parquet_atomic(part, self.path / PARTS_DIR / f"part-{start:012d}.parquet")
        self._digests.extend(new_digests)
        self._committed_rows = upto
        self._buf_rows = [rows.slice(k)] if rows.num_rows > k else []
        if full:
            self._block_start += self._shard
            self._fill = 0

    def finalize(self) -> CropStore:
        """Write the rest, merge the table, set the content hash and the completion marker.

        The merged table and the digests are written before ``_parts/`` is removed and the
        marker set; readers skip parts already merged, so a crash at any point leaves a store
        that is either complete or resumable, never one with duplicated rows.
        """
        if self._finalized:
            return open_store(self.path)
        self._flush()
        if not self._marked and self._start_attrs.get("complete"):
            # An existing complete store to which nothing was added: leave it as it was.
            self._finalized = True
            return open_store(self.path)
        self._mark_incomplete()
        table = _read_table(self.path)
        if table.num_rows != self._crops.shape[0]:
            raise StoreError(f"{self.path}: object table has {table.num_rows} rows but crops has {self._crops.shape[0]}")
        table = table.replace_schema_metadata(None)
        digests = list(self._digests)
        if self._fill:
            digests.append(_block_digest(self._block[: self._fill]))
        self._block = _EMPTY_BLOCK  # release the buffer
        _write_json_atomic(
            {"block_crops": self._shard, "blocks": self._digests, "n_rows": table.num_rows}, self.path / DIGESTS_FILE
        )
        write_parquet_atomic(table, self.path / TABLE_FILE)
        # Hash the table as readers will see it (a Parquet round trip renames list fields).
        table = pq.read_table(self.path / TABLE_FILE).replace_schema_metadata(None)
        shutil.rmtree(self.path / PARTS_DIR, ignore_errors=True)
        self._group.attrs.update(
            {"n_objects": table.num_rows, "content_hash": _content_hash(digests, table), "complete": True}
        )
        self._finalized = True
        return open_store(self.path)

    def rollback(self) -> None:
        """Undo everything this writer did: the store returns to its state when opened.

        A store this writer created is removed. For an existing store, the rows and crops
        added since opening are dropped and its attributes (completion marker, content hash,
        source) restored; the table and digests of a complete store are only rewritten by
        :meth:`finalize`, so they are untouched. Interrupted itself, a rollback leaves the
        store incomplete and resumable, never complete with foreign rows.
        """
        self._buf_rows, self._block = [], _EMPTY_BLOCK
        self._finalized = True
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if not self._marked:
            return
        for part in _live_parts(self.path, self._start_rows):
            part.unlink()
        self._crops.resize((self._start_rows, CROP_SIZE, CROP_SIZE, CHANNELS))
        if self._start_attrs.get("complete"):
            shutil.rmtree(self.path / PARTS_DIR, ignore_errors=True)
        self._group.attrs.put(self._start_attrs)
        self._committed_rows = self._start_rows

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        elif not self._finalized:
            # Commit nothing more: what is buffered is lost, what is committed stays, and the
            # store remains marked incomplete so nothing downstream reads it.
            logger.warning("%s: write interrupted; %d crops committed, store left incomplete", self.path, self._committed_rows)


def create_store(
    path: str | os.PathLike,
    crops: np.ndarray,
    rows: pa.Table | Sequence[Mapping[str, Any]],
    *,
    source: Mapping[str, Any],
    overwrite: bool = False,
    extra_attrs: Mapping[str, Any] | None = None,
) -> CropStore:
    """Write a whole store from arrays in memory (small stores, tests)."""
    with StoreWriter(path, source=source, overwrite=overwrite, exist_ok=False, extra_attrs=extra_attrs) as w:
        w.append(crops, rows)
    return open_store(path)


def iter_blocks(store: CropStore, *, block: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, crops)`` over the store in chunk-aligned blocks."""
    for start, stop in store.chunk_ranges(block):
        yield start, store.read(start, stop)


def compute_content_hash(store: CropStore) -> str:
    """Recompute the content hash by reading every crop (slow; :func:`validate_store` deep)."""
    block = int(store.attrs.get("shard_crops", SHARD_CROPS))
    digests = [_block_digest(crops) for _, crops in iter_blocks(store, block=block)]
    return _content_hash(digests, store.table.replace_schema_metadata(None))


def validate_store(path: str | os.PathLike, *, deep: bool = False) -> list[str]:
    """Check a store against the format contract; return the problems found (empty: valid).

    ``deep`` also reads every crop and recomputes the content hash.
    """
    p = Path(path)
    problems: list[str] = []
    try:
        store = open_store(p, require_complete=False)
    except StoreError as exc:
        return [str(exc)]
    if not store.complete:
        problems.append(f"{p}: incomplete (no completion marker)")
    if store.crops.dtype != np.uint8 or store.crops.shape[1:] != (CROP_SIZE, CROP_SIZE, CHANNELS):
        problems.append(f"{p}: crops are {store.crops.dtype} {store.crops.shape}, expected uint8 (n, 224, 224, 3)")
    if store.table.num_rows != store.crops.shape[0]:
        problems.append(f"{p}: object table has {store.table.num_rows} rows but crops has {store.crops.shape[0]}")
    for field in OBJECT_SCHEMA:
        if field.name not in store.table.column_names:
            problems.append(f"{p}: object table lacks column {field.name!r}")
        elif store.table.schema.field(field.name).type != field.type:
            problems.append(f"{p}: column {field.name!r} is {store.table.schema.field(field.name).type}, expected {field.type}")
    ids = store.table.column("object_id").to_pylist()
    if len(set(ids)) != len(ids):
        problems.append(f"{p}: duplicate object ids")
    bad = set(np.unique(store.labels).tolist()) - {-1, 0, 1}
    if bad:
        problems.append(f"{p}: labels outside -1/0/1: {sorted(bad)}")
    if deep and not problems and store.complete and compute_content_hash(store) != store.content_hash:
        problems.append(f"{p}: content hash does not match the crops and table (corrupted or edited)")
    return problems


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def summarize_store(store: CropStore) -> dict[str, Any]:
    """A JSON-ready summary of a store (``scanstream info``)."""
    t = store.table
    labels = store.labels

    def counts(col: str) -> dict[str, int]:
        if col not in t.column_names:
            return {}
        vals = t.column(col).to_pylist()
        out: dict[str, int] = {}
        for v in vals:
            out[str(v)] = out.get(str(v), 0) + 1
        return dict(sorted(out.items()))

    size = _dir_bytes(store.path / "crops") if (store.path / "crops").exists() else 0
    return {
        "path": str(store.path),
        "complete": store.complete,
        "objects": store.n,
        "labels": {"alpha": int((labels == 1).sum()), "other": int((labels == 0).sum()), "unknown": int((labels == -1).sum())},
        "categories": counts("category"),
        "sheets": counts("sheet"),
        "crop_shape": list(store.crops.shape[1:]),
        "chunk_shape": list(store.crops.chunks),
        "shard_shape": list(store.crops.shards) if store.crops.shards else None,
        "compressed_bytes": size,
        "bytes_per_crop": round(size / store.n, 1) if store.n else None,
        "pixel_size_um": store.attrs.get("pixel_size_um"),
        "source": store.attrs.get("source"),
        "content_hash": store.content_hash,
    }


def iter_rows(table: pa.Table) -> Iterable[dict[str, Any]]:
    """Rows of an Arrow table as dicts (small tables only)."""
    return table.to_pylist()
