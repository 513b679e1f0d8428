"""Writing crop stores: :class:`StoreWriter` (crash-safe, resumable appends) and :func:`create_store`.

A complete store also opens without scanstream: the ``crops`` array has ``dimension_names`` and
its axes' units in its attributes, each axis has its coordinate array (object ids, plane depths
and x / y in um: :mod:`scanstream.store.coordinates`), the group attributes name the object
table and the digests, and the group's ``zarr.json`` carries zarr's consolidated metadata
(written with the completion marker in one atomic replace, :func:`seal_store`). zarr-python and
xarray read the members from it instead of listing the directory, so the Parquet and JSON files
beside ``crops/`` raise no "not recognized as a component of a Zarr hierarchy" warning;
scanstream itself never reads the consolidated copy (it always opens ``crops/zarr.json``), and a
writer drops it before changing anything. :func:`upgrade_store` gives a store written before all
this the same metadata. napari's built-in zarr reader takes every array of a group as a level
of one pyramid, so it opens ``NAME.zarr/crops``, the array itself, not the store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import ZstdCodec

from scanstream.atomic import atomic_dir, exchange_dirs, recover_exchange, write_json, write_parquet
from scanstream.errors import InputError, StoreError, StoreExistsError
from scanstream.store.coordinates import write_coordinates
from scanstream.store.crops import BlockVerifier, CropStore, is_store, iter_blocks, live_parts, open_store, read_table
from scanstream.store.schema import (
    CHANNELS,
    CHUNK_CROPS,
    CROP_DIMS,
    CROP_SIZE,
    DIGESTS_FILE,
    FAST_DIGEST,
    PARTS_DIR,
    PIXEL_SIZE_UM,
    PLANE_STEP_UM,
    SCHEMA_VERSION,
    SHARD_CROPS,
    TABLE_FILE,
    ZSTD_LEVEL,
    block_digest,
    content_hash,
    crops_attributes,
    fast_digest,
    group_attributes,
    rows_to_table,
    table_digest,
)

logger = logging.getLogger(__name__)

_EMPTY_BLOCK = np.empty((0, CROP_SIZE, CROP_SIZE, CHANNELS), np.uint8)


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
        Replace an existing crop store at ``path``: the new store is written beside it under
        a hidden temporary name and swapped in only when complete (:meth:`finalize`), so a
        kill at any point leaves the old store or the new one, never neither; the old one is
        deleted after the swap. Anything at ``path`` that is not a crop store (other than an
        empty directory) is refused. Without it, an existing complete store is opened for
        appending (ingest's idempotent rerun) and an incomplete one is resumed.
    plane_step_um : float
        The spacing of the crops' focal planes in um (attribute ``plane_step_um``, the ``plane``
        coordinate's step); a store keeps the value it was created with.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        source: Mapping[str, Any],
        overwrite: bool = False,
        exist_ok: bool = True,
        pixel_size_um: float = PIXEL_SIZE_UM,
        plane_step_um: float = PLANE_STEP_UM,
        chunk_crops: int = CHUNK_CROPS,
        shard_crops: int = SHARD_CROPS,
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if shard_crops % chunk_crops:
            raise InputError(f"shard_crops {shard_crops} is not a multiple of chunk_crops {chunk_crops}")
        self._final: Path | None = None  # with overwrite: where the finished store is swapped in
        _recover_swap(self.path)
        if overwrite and self.path.exists():
            self._final, self.path = self.path, _beside(self.path)
            _check_replaceable(self._final)
            if is_store(self.path):  # a replacement that a kill interrupted: start it again
                shutil.rmtree(self.path)
        self._pending_attrs: dict[str, Any] = {"source": dict(source), **dict(extra_attrs or {})}
        if self.path.exists():
            if not is_store(self.path):
                raise StoreExistsError(f"{self.path}: exists and is not a scanstream crop store; choose another path")
            if not exist_ok:
                raise StoreExistsError(f"{self.path}: store exists (use --overwrite to replace it)")
            self.created = False
            # Never the consolidated copy: the first attribute write then drops it, so an
            # incomplete store never carries a stale one (see the module docstring).
            self._group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
            try:
                self._crops = self._group["crops"]
            except KeyError:
                raise StoreError(f"{self.path}: store has no 'crops' array") from None
            self._shard = int(self._group.attrs.get("shard_crops", SHARD_CROPS))
        else:
            self.created = True
            self._create(pixel_size_um, plane_step_um, chunk_crops, shard_crops)
        # What the store looked like when this writer opened it, for rollback(); an existing
        # store is marked incomplete only when the first crop is written (a rerun that adds
        # nothing leaves a complete store untouched).
        self._start_attrs = dict(self._group.attrs)
        self._marked = self.created

        committed = read_table(self.path)
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
        self._digests, self._fast = self._load_digests()
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

    def _create(self, pixel_size_um: float, plane_step_um: float, chunk_crops: int, shard_crops: int) -> None:
        """Create an empty store under a temporary name, then rename it into place (:func:`atomic_dir`).

        A store directory therefore always has its group attributes and its ``crops`` array;
        a crash during creation leaves only a hidden temporary directory.
        """
        attrs = {
            "scanstream_schema": SCHEMA_VERSION,
            "pixel_size_um": pixel_size_um,
            "plane_step_um": plane_step_um,
            "crop_size": CROP_SIZE,
            "chunk_crops": chunk_crops,
            "shard_crops": shard_crops,
            "complete": False,
            "content_hash": None,
            **group_attributes(),
            **self._pending_attrs,
        }
        with atomic_dir(self.path) as tmp:
            group = zarr.open_group(str(tmp), mode="w", attributes=attrs)
            group.create_array(
                "crops",
                shape=(0, CROP_SIZE, CROP_SIZE, CHANNELS),
                chunks=(chunk_crops, CROP_SIZE, CROP_SIZE, CHANNELS),
                shards=(shard_crops, CROP_SIZE, CROP_SIZE, CHANNELS),
                dtype="uint8",
                compressors=ZstdCodec(level=ZSTD_LEVEL),
                fill_value=0,
                dimension_names=CROP_DIMS,
                attributes=crops_attributes(pixel_size_um),
            )
        self._group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        self._crops = self._group["crops"]
        self._shard = shard_crops

    def _mark_incomplete(self) -> None:
        """Before the first write into an existing store: clear its completion marker."""
        if not self._marked:
            self._group.attrs.update({**self._pending_attrs, "complete": False, "content_hash": None})
            self._marked = True

    # -- reading back what is committed ---------------------------------------------------
    def _load_digests(self) -> tuple[list[str], list[str] | None]:
        """The committed complete blocks' digests, and their fast digests (None where a store or
        part written before fast digests existed lacks some: the store then gets none)."""
        digests: list[str] = []
        fast: list[str] | None = []
        merged_rows = 0
        f = self.path / DIGESTS_FILE
        if f.exists():
            saved = json.loads(f.read_text())
            digests = list(saved["blocks"])
            fast = list(saved["fast_blocks"]) if saved.get("fast") == FAST_DIGEST else None
            merged_rows = int(saved.get("n_rows", len(digests) * self._shard))
        for part in live_parts(self.path, merged_rows):
            meta = pq.read_schema(part).metadata or {}
            new = json.loads(meta.get(b"scanstream_blocks", b"[]"))
            digests.extend(new)
            if fast is not None and (b"scanstream_fast_blocks" in meta or not new):
                fast.extend(json.loads(meta.get(b"scanstream_fast_blocks", b"[]")))
            else:
                fast = None
        whole = self._committed_rows // self._shard  # complete blocks only
        return digests[:whole], (fast[:whole] if fast is not None and len(fast) >= whole else None)

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
        new_digests = [block_digest(self._block)] if full else []
        new_fast = [fast_digest(self._block)] if full else []
        rows = pa.concat_tables(self._buf_rows, promote_options="permissive") if len(self._buf_rows) > 1 else self._buf_rows[0]
        part = rows.slice(0, k).replace_schema_metadata(
            {"scanstream_blocks": json.dumps(new_digests), "scanstream_fast_blocks": json.dumps(new_fast)})
        write_parquet(self.path / PARTS_DIR / f"part-{start:012d}.parquet", part)
        self._digests.extend(new_digests)
        if self._fast is not None:
            self._fast.extend(new_fast)
        self._committed_rows = upto
        self._buf_rows = [rows.slice(k)] if rows.num_rows > k else []
        if full:
            self._block_start += self._shard
            self._fill = 0

    def finalize(self) -> CropStore:
        """Write the rest, merge the table, set the content hash and the completion marker.

        The merged table and the digests are written before ``_parts/`` is removed and the
        marker set; readers skip parts already merged, so a crash at any point leaves a store
        that is either complete or resumable, never one with duplicated rows. The marker, the
        hash and the consolidated metadata land together, in one atomic replace of the group's
        ``zarr.json`` (:func:`seal_store`).
        """
        if self._finalized:
            return open_store(self.path)
        self._flush()
        if not self._marked and self._start_attrs.get("complete"):
            # An existing complete store to which nothing was added: leave it as it was.
            self._finalized = True
            return open_store(self.path)
        self._mark_incomplete()
        table = read_table(self.path)
        if table.num_rows != self._crops.shape[0]:
            raise StoreError(f"{self.path}: object table has {table.num_rows} rows but crops has {self._crops.shape[0]}")
        table = table.replace_schema_metadata(None)
        digests = list(self._digests)
        saved: dict[str, Any] = {"block_crops": self._shard, "blocks": self._digests, "n_rows": table.num_rows}
        if self._fast is not None:  # every block's, the last partial one's too
            saved.update(fast=FAST_DIGEST, fast_blocks=self._fast + ([fast_digest(self._block[: self._fill])] if self._fill else []))
        if self._fill:
            digests.append(block_digest(self._block[: self._fill]))
        self._block = _EMPTY_BLOCK  # release the buffer
        write_json(self.path / DIGESTS_FILE, saved)
        write_parquet(self.path / TABLE_FILE, table)
        # Hash the table as readers will see it (a Parquet round trip renames list fields).
        table = pq.read_table(self.path / TABLE_FILE).replace_schema_metadata(None)
        shutil.rmtree(self.path / PARTS_DIR, ignore_errors=True)
        seal_store(self.path, {
            **self._group.attrs, "n_objects": table.num_rows, "content_hash": content_hash(digests, table),
            "table_digest": table_digest(table), "complete": True,
        }, object_ids=table.column("object_id"))
        self._finalized = True
        if self._final is not None:
            self.path = _swap_in(self.path, self._final)
            self._final = None
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
        if self.created:  # with overwrite: the replacement beside; the old store stays
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if not self._marked:
            return
        for part in live_parts(self.path, self._start_rows):
            part.unlink()
        self._crops.resize((self._start_rows, CROP_SIZE, CROP_SIZE, CHANNELS))
        if self._start_attrs.get("complete"):
            shutil.rmtree(self.path / PARTS_DIR, ignore_errors=True)
            seal_store(self.path, self._start_attrs)  # complete again, with its consolidated metadata
        else:
            self._group.attrs.put(self._start_attrs)
        self._committed_rows = self._start_rows

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        elif not self._finalized and self._final is not None:
            # A failed replacement is not resumed (a rerun starts it again): drop it, keep the old store.
            self.rollback()
        elif not self._finalized:
            # Commit nothing more: what is buffered is lost, what is committed stays, and the
            # store remains marked incomplete so nothing downstream reads it.
            logger.warning("%s: write interrupted; %d crops committed, store left incomplete", self.path, self._committed_rows)


# -- metadata for readers without scanstream ------------------------------------------------
def _describe_crops(path: Path, pixel_size_um: float) -> dict[str, Any]:
    """``crops/zarr.json`` with its axis names and attributes (rewritten atomically if it lacked them)."""
    f = path / "crops" / "zarr.json"
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{f}: unreadable array metadata: {exc}") from None
    want = {**meta, "dimension_names": list(CROP_DIMS),
            "attributes": {**(meta.get("attributes") or {}), **crops_attributes(pixel_size_um)}}
    if want != meta:
        write_json(f, want)
    return want


def seal_store(path: str | os.PathLike, attrs: Mapping[str, Any], *, object_ids: pa.ChunkedArray | None = None) -> None:
    """Write a store's group metadata in one atomic replace: ``attrs`` and the consolidated metadata.

    ``attrs`` (usually with ``complete: true``, the completion marker) gain the
    :func:`~scanstream.store.schema.group_attributes`; ``crops/zarr.json`` gains its axis names
    and units first if it lacks them, and the coordinate arrays are written (or left, where they
    hold the same values) from ``object_ids`` (default: the table on disk). The consolidated
    metadata is zarr-python's inline form (``consolidated_metadata`` in the group's
    ``zarr.json``), a copy of every array's ``zarr.json``: with it zarr and xarray open the group
    without listing its directory. Call it only on a store no writer is changing (the copy must
    match the arrays).
    """
    path = Path(path)
    crops_meta = _describe_crops(path, float(attrs.get("pixel_size_um", PIXEL_SIZE_UM)))
    ids = read_table(path).column("object_id") if object_ids is None else object_ids
    coords = write_coordinates(path, ids, dict(attrs))
    f = path / "zarr.json"
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{f}: unreadable group metadata: {exc}") from None
    members = {"crops": crops_meta, **coords}
    want = {**meta, "attributes": {**attrs, **group_attributes()},
            "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": members}}
    if want != meta:
        write_json(f, want)


def upgrade_store(path: str | os.PathLike) -> CropStore:
    """Give a complete store written by an earlier scanstream the metadata other tools read.

    Adds the ``crops`` axis names and units, the coordinate arrays, the group attributes naming
    the object table and the digests, and the consolidated metadata (:func:`seal_store`); crops,
    table and content hash are unchanged. Running it again changes nothing.

    Raises
    ------
    StoreNotFoundError, IncompleteStoreError, StoreError
        As :func:`~scanstream.store.crops.open_store`: only a complete, valid store is upgraded.
    """
    store = open_store(path)
    add_fast_digests(store)
    seal_store(store.path, store.attrs, object_ids=store.table.column("object_id"))  # the table already read
    return open_store(store.path)


def add_fast_digests(store: CropStore) -> bool:
    """Record the fast digest of every block of a store that lacks them; False if it had them.

    Reads every crop once, checked against the blake2b digests and content hash as it goes
    (:class:`~scanstream.store.crops.BlockVerifier`), so a damaged store is refused, not
    re-digested. ``digests.json`` is replaced atomically; crops, table and hash are unchanged.
    """
    verifier = BlockVerifier(store)
    if verifier.fast is not None:
        return False
    fast = []
    for start, crops in iter_blocks(store, block=verifier.block):
        verifier.feed(start, crops)
        fast.append(fast_digest(crops))
    saved = json.loads((store.path / DIGESTS_FILE).read_text())
    write_json(store.path / DIGESTS_FILE, {**saved, "fast": FAST_DIGEST, "fast_blocks": fast})
    return True


# -- replacing a store (overwrite) ---------------------------------------------------------
def _beside(path: Path) -> Path:
    """The hidden name a replacement of ``path`` is written under."""
    return path.with_name(f".{path.name}.overwrite")


def _aside(path: Path) -> Path:
    """Where the old store waits during a swap by renames (filesystems without an exchange)."""
    return path.with_name(f".{path.name}.replaced")


def _check_replaceable(path: Path) -> None:
    """Refuse to replace anything but a crop store (or an empty directory) at ``path``."""
    if is_store(path):
        return
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        return
    raise StoreExistsError(
        f"{path}: exists and is not a scanstream crop store; --overwrite replaces only a crop store, choose another path"
    )


def _swap_in(new: Path, final: Path) -> Path:
    """Put the complete store ``new`` at ``final`` (:func:`~scanstream.atomic.exchange_dirs`); delete the one it replaces.

    With an exchange there is no moment without a store at ``final``; without one the old
    store waits at :func:`_aside`, and :func:`_recover_swap` mends a kill between the renames.
    Returns ``final``.
    """
    exchange_dirs(new, final, aside=_aside(final))
    shutil.rmtree(new, ignore_errors=True)  # now the old store
    return final


def _complete_store(path: Path) -> bool:
    return is_store(path) and bool(json.loads((path / "zarr.json").read_text())["attributes"].get("complete"))


def _recover_swap(path: Path) -> None:
    """After a kill inside :func:`_swap_in`'s renames: the new store at ``path`` if complete, else the old one."""
    if recover_exchange(_beside(path), path, aside=_aside(path), ready=_complete_store):
        shutil.rmtree(_beside(path), ignore_errors=True)  # the store replaced, or an unfinished replacement


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
