"""The crop store: a zarr v3 group of vertex crops plus a Parquet object table.

Layout of ``NAME.zarr/`` (docs/store.md, "The crop store")::

    zarr.json            group attributes: schema version, pixel size, crop size, source,
                         content hash, completion marker, the names of the two files below
                         ("object_table", "block_digests") and units; once complete, also
                         zarr's consolidated metadata (a copy of crops/zarr.json)
    crops/               uint8 (n, 224, 224, 3), chunked along n only, zstd, sharded;
                         dimension_names ("object", "y", "x", "plane"), axis units in its
                         attributes
    objects.parquet      the object table, row i describes crop i
    digests.json         blake2b digest of every aligned block of crops (for the content hash),
                         and the fast (xxh3-128) digest of every block, which reads are checked against
    _parts/              object-table parts of an unfinished write (absent once complete)

``xarray.open_zarr(path)`` gives a Dataset with the ``crops`` variable on those dims; zarr and
xarray read the members from the consolidated metadata, so the two files beside ``crops/``
raise no warning (:mod:`scanstream.store.writer`). scanstream reads ``crops/zarr.json`` itself,
never the consolidated copy, and opens stores written before these attributes existed.

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
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zarr

from scanstream.errors import IncompleteStoreError, StoreError, StoreNotFoundError
from scanstream.store.schema import (
    CHANNELS,
    CROP_SIZE,
    DIGESTS_FILE,
    FAST_DIGEST,
    OBJECT_SCHEMA,
    PARTS_DIR,
    SCHEMA_VERSION,
    SHARD_CROPS,
    TABLE_FILE,
    block_digest,
    content_hash,
    fast_digest,
    fast_hasher,
    rows_to_table,
    table_digest,
)


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


def open_store(path: str | os.PathLike, *, require_complete: bool = True, validate: bool = True) -> CropStore:
    """Open a crop store read-only.

    A complete store's object table is checked on open (:func:`check_object_table`: columns
    and types, unique ids, labels, the digest recorded at completion); no crop is read.
    ``validate=False`` skips that (:func:`validate_store` lists every problem itself).

    Raises
    ------
    StoreNotFoundError
        ``path`` is not a crop store.
    IncompleteStoreError
        The store lacks its completion marker and ``require_complete`` is true.
    StoreError
        The object table breaks the format contract or was edited after completion.
    """
    p = Path(path)
    if not p.exists():
        raise StoreNotFoundError(f"{p}: no such crop store")
    if not is_store(p):
        if (p / "zarr.json").is_file():
            raise StoreNotFoundError(f"{p / 'zarr.json'}: unreadable or not a scanstream crop store's metadata")
        raise StoreNotFoundError(f"{p}: not a scanstream crop store (no zarr.json with scanstream attributes)")
    group = zarr.open_group(str(p), mode="r", use_consolidated=False)  # crops/zarr.json is the truth
    attrs = dict(group.attrs)
    if attrs.get("scanstream_schema", 0) > SCHEMA_VERSION:
        raise StoreError(f"{p}: store schema {attrs['scanstream_schema']} is newer than this scanstream ({SCHEMA_VERSION})")
    if require_complete and not attrs.get("complete"):
        raise IncompleteStoreError(f"{p}: store is incomplete (interrupted write?); rerun the command that writes it")
    try:
        crops = group["crops"]
    except KeyError:
        raise StoreError(f"{p}: store has no 'crops' array") from None
    except (ValueError, UnicodeDecodeError) as exc:  # a garbage crops/zarr.json
        raise StoreError(f"{p / 'crops' / 'zarr.json'}: unreadable crops metadata ({type(exc).__name__})") from None
    if not isinstance(crops, zarr.Array) or crops.dtype != np.uint8 or crops.ndim != 4:
        what = f"{crops.dtype} {crops.shape}" if isinstance(crops, zarr.Array) else "a group"
        raise StoreError(f"{p / 'crops'}: crops are {what}, expected uint8 (n, {CROP_SIZE}, {CROP_SIZE}, {CHANNELS})")
    table = read_table(p)
    if attrs.get("complete") and crops.shape[0] and not table.num_rows and not (p / TABLE_FILE).exists():
        raise StoreError(f"{p / TABLE_FILE}: the object table of this complete store is missing")
    if require_complete and table.num_rows != crops.shape[0]:
        raise StoreError(f"{p}: object table has {table.num_rows} rows but crops has {crops.shape[0]}")
    if validate and attrs.get("complete"):
        problems = check_object_table(table, table_digest_attr=attrs.get("table_digest"))
        if problems:
            raise StoreError(f"{p / TABLE_FILE}: invalid object table: {'; '.join(problems)}")
    return CropStore(path=p, crops=crops, table=table, attrs=attrs)


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal types, list types compared by their items (a Parquet round trip renames the item field)."""
    if pa.types.is_list(a) and pa.types.is_list(b):
        return a.value_type == b.value_type
    return a == b


#: Columns every stage downstream reads (identity, position, label); the picker's features and
#: the category may be absent (stores written before they existed), but are typed when present.
REQUIRED_COLUMNS = ("object_id", "experiment", "module", "plate", "sheet", "x_mm", "y_mm", "z_mm", "label")


def check_object_table(table: pa.Table, *, table_digest_attr: str | None = None, strict: bool = False) -> list[str]:
    """Problems of an object table against the contract (empty: none); reads no crops.

    The one set of rules for object tables, used on every open (:func:`open_store`) and by
    :func:`validate_store`: the :data:`REQUIRED_COLUMNS` (with ``strict``, every
    :data:`OBJECT_SCHEMA` column) present, every :data:`OBJECT_SCHEMA` column present with its
    type, object ids present and unique, labels in {-1, 0, 1}, and, when the store recorded one
    at completion, the table's digest (a table edited afterwards, e.g. a row moved to another
    sheet, no longer matches). Ids, labels and digest are checked only once the columns are right.
    """
    problems = []
    for field in OBJECT_SCHEMA:
        if field.name not in table.column_names:
            if strict or field.name in REQUIRED_COLUMNS:
                problems.append(f"no {field.name!r} column")
        elif not _same_type(table.schema.field(field.name).type, field.type):
            problems.append(f"column {field.name!r} is {table.schema.field(field.name).type}, expected {field.type}")
    if problems:
        return problems
    ids = table.column("object_id")
    if ids.null_count:
        problems.append(f"{ids.null_count} rows without an object_id")
    distinct = pc.count_distinct(ids).as_py()
    if distinct != table.num_rows - ids.null_count:
        counts = pc.value_counts(ids)
        first = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        problems.append(f"{table.num_rows - ids.null_count - distinct} duplicate object id(s), e.g. {first!r}")
    bad = sorted(set(pc.unique(table.column("label").drop_null()).to_pylist()) - {-1, 0, 1})
    if bad:
        problems.append(f"labels outside -1/0/1: {bad}")
    if table_digest_attr and not problems and table_digest(table.replace_schema_metadata(None)) != table_digest_attr:
        problems.append("the table does not match the digest recorded when the store was completed (edited since?)")
    return problems


class BlockVerifier:
    """Checks crops read in order against the store's block digests (``digests.json``).

    Every block is compared with its recorded fast digest (xxh3-128) where the store has them
    for all its blocks (stores written since fast digests exist, or upgraded with
    ``scanstream upgrade``). Otherwise, full blocks are compared with their blake2b digest, and
    the last, partial block, which has none, by recomputing the store's content hash from every
    block digest and the object table.
    """

    def __init__(self, store: CropStore) -> None:
        try:
            saved = json.loads((store.path / DIGESTS_FILE).read_text())
            self.block, self.digests = int(saved["block_crops"]), list(saved["blocks"])
            fast = list(saved["fast_blocks"]) if saved.get("fast") == FAST_DIGEST else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{store.path / DIGESTS_FILE}: unreadable block digests: {exc}") from None
        #: the fast digests of every block, or None (checks by blake2b and the content hash)
        self.fast = fast if fast is not None and len(fast) == -(-store.n // self.block) else None
        self.store = store
        self._h: Any = None
        self._at = -1
        self._next: int | None = None
        self._table: pa.Table | None = None

    def aligned(self, start: int, stop: int) -> bool:
        return start % self.block == 0 and (stop % self.block == 0 or stop == self.store.n)

    def feed(self, start: int, crops: np.ndarray) -> None:
        """Hash crops ``start : start + len(crops)`` (fed in order from a block boundary).

        Raises
        ------
        StoreError
            A block that ends here does not match its digest.
        """
        if start != (self._next if self._next is not None else start - start % self.block):
            raise RuntimeError(f"BlockVerifier fed crops from {start}, expected {self._next}")
        pos, i = start, 0
        while i < len(crops):
            if pos % self.block == 0:
                self._h, self._at = (hashlib.blake2b(digest_size=16) if self.fast is None else fast_hasher()), pos
            take = min(len(crops) - i, self.block - pos % self.block)
            self._h.update(np.ascontiguousarray(crops[i : i + take]).data)
            pos, i = pos + take, i + take
            if pos % self.block == 0 or pos == self.store.n:
                self._check(self._at, pos, self._h.hexdigest())
        self._next = pos

    def _check(self, a: int, b: int, digest: str) -> None:
        b_index = a // self.block
        if self.fast is not None:
            ok = digest == self.fast[b_index]
        elif b - a == self.block and b_index < len(self.digests):
            ok = digest == self.digests[b_index]
        else:
            if self._table is None:
                self._table = self.store.table.replace_schema_metadata(None)
            ok = content_hash([*self.digests, digest], self._table) == self.store.content_hash
        if not ok:
            raise StoreError(f"{self.store.path}: crops [{a}, {b}) do not match the store's digests "
                             "(a shard file deleted or damaged?); rewrite the store")


def verify_crops(store: CropStore, *, progress: Any = None) -> None:
    """Read every crop and check it against the store's block digests (``digests.json``).

    The same digests classify checks as it reads: full blocks against their recorded digest,
    the last partial block through the content hash. A deleted or damaged shard file reads
    back as zeros or garbage and fails here. ``progress`` (optional) is called with the crops
    checked after each block.

    Raises
    ------
    StoreError
        Unreadable digests, or crops that do not match them (naming the range).
    """
    verifier = BlockVerifier(store)
    for start, crops in iter_blocks(store, block=verifier.block):
        verifier.feed(start, crops)
        if progress is not None:
            progress(len(crops))


def _part_start(part: Path) -> int:
    """First row of a part file ``part-<start:012d>.parquet``."""
    return int(part.stem.split("-", 1)[1])


def live_parts(p: Path, merged_rows: int) -> list[Path]:
    """Part files not yet merged into the object table, in row order.

    A part whose first row lies below ``merged_rows`` was merged by a :meth:`StoreWriter.finalize`
    that was interrupted before it removed ``_parts/``; reading it again would duplicate rows.
    """
    d = p / PARTS_DIR
    if not d.exists():
        return []
    return sorted((f for f in d.glob("part-*.parquet") if _part_start(f) >= merged_rows), key=_part_start)

def read_table(p: Path) -> pa.Table:
    parts: list[pa.Table] = []
    merged_rows = 0
    if (p / TABLE_FILE).exists():
        try:
            parts.append(pq.read_table(p / TABLE_FILE))
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{p / TABLE_FILE}: unreadable object table: {exc}") from None
        merged_rows = parts[0].num_rows
    for part in live_parts(p, merged_rows):
        try:
            parts.append(pq.read_table(part))
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{part}: unreadable object table part: {exc}") from None
    if not parts:
        return rows_to_table([])
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


def iter_blocks(store: CropStore, *, block: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, crops)`` over the store in chunk-aligned blocks."""
    for start, stop in store.chunk_ranges(block):
        yield start, store.read(start, stop)


def compute_content_hash(store: CropStore, *, fast_digests: list[str] | None = None) -> str:
    """Recompute the content hash by reading every crop (slow; :func:`validate_store` deep).

    ``fast_digests``, when given, receives every block's fast digest from the same read.
    """
    block = int(store.attrs.get("shard_crops", SHARD_CROPS))
    digests = []
    for _, crops in iter_blocks(store, block=block):
        digests.append(block_digest(crops))
        if fast_digests is not None:
            fast_digests.append(fast_digest(crops))
    return content_hash(digests, store.table.replace_schema_metadata(None))


def validate_store(path: str | os.PathLike, *, deep: bool = False) -> list[str]:
    """Check a store against the format contract; return the problems found (empty: valid).

    The object table is checked by :func:`check_object_table` with ``strict`` (every
    :data:`~scanstream.store.schema.OBJECT_SCHEMA` column present; opening a store asks only for
    the :data:`REQUIRED_COLUMNS`), against the table digest recorded at completion. ``deep``
    also reads every crop and recomputes the content hash.
    """
    p = Path(path)
    problems: list[str] = []
    try:
        store = open_store(p, require_complete=False, validate=False)
    except StoreError as exc:
        return [str(exc)]
    if not store.complete:
        problems.append(f"{p}: incomplete (no completion marker)")
    if store.crops.dtype != np.uint8 or store.crops.shape[1:] != (CROP_SIZE, CROP_SIZE, CHANNELS):
        problems.append(f"{p}: crops are {store.crops.dtype} {store.crops.shape}, expected uint8 (n, 224, 224, 3)")
    if store.table.num_rows != store.crops.shape[0]:
        problems.append(f"{p}: object table has {store.table.num_rows} rows but crops has {store.crops.shape[0]}")
    digest = store.attrs.get("table_digest") if store.complete else None  # a resumed store's is stale
    problems += [f"{p}: {q}" for q in check_object_table(store.table, table_digest_attr=digest, strict=True)]
    if deep and not problems and store.complete:
        fast: list[str] = []
        if compute_content_hash(store, fast_digests=fast) != store.content_hash:
            problems.append(f"{p}: content hash does not match the crops and table (corrupted or edited)")
        else:
            try:
                saved = BlockVerifier(store).fast
            except StoreError as exc:
                return [*problems, str(exc)]
            bad = [i for i, (a, b) in enumerate(zip(saved or [], fast, strict=False)) if a != b]
            if bad:
                problems.append(f"{p}: {len(bad)} fast block digest(s) in {DIGESTS_FILE} do not match the crops "
                                f"(first: block {bad[0]}); the crops match the content hash: remove 'fast' and 'fast_blocks' "
                                f"from {DIGESTS_FILE} and run scanstream upgrade")
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
        # objects carrying each of the picker's features (models reading them refuse objects without)
        "picker_features": {c: t.num_rows - t.column(c).null_count for c in
                            ("multiplicity", "track_lengths_um", "track_dips_deg") if c in t.column_names},
        "crop_shape": list(store.crops.shape[1:]),
        "chunk_shape": list(store.crops.chunks),
        "shard_shape": list(store.crops.shards) if store.crops.shards else None,
        "compressed_bytes": size,
        "bytes_per_crop": round(size / store.n, 1) if store.n else None,
        "pixel_size_um": store.attrs.get("pixel_size_um"),
        "source": store.attrs.get("source"),
        "content_hash": store.content_hash,
    }
