"""Crop stores: zarr v3 arrays of vertex crops with a Parquet object table (docs/store.md, "The crop store").

``schema`` (the object table's columns, constants, content digests), ``crops`` (reading:
:class:`CropStore`, :func:`open_store`, validation, summaries) and ``writer`` (crash-safe,
resumable writes: :class:`StoreWriter`, :func:`create_store`; :func:`upgrade_store` gives an
older store the metadata xarray and napari read), ``coordinates`` (the axes' coordinate arrays
xarray reads, and :func:`open_dataset`: crops and object table as one xarray Dataset); ``volume`` reads scanned-volume
stores (the microscope's z-stacks as OME-Zarr: :class:`Volume`, :func:`open_volume`). The names
below are the stores' public API; ``from scanstream import store as st; st.open_store(path)`` is
the usual spelling.
"""

from __future__ import annotations

from scanstream.errors import IncompleteStoreError, StoreError, StoreExistsError, StoreNotFoundError
from scanstream.store.coordinates import axis_coordinates, open_dataset
from scanstream.store.crops import (
    BlockVerifier,
    CropStore,
    compute_content_hash,
    is_store,
    iter_blocks,
    open_store,
    read_table,
    summarize_store,
    validate_store,
)
from scanstream.store.schema import (
    CHANNELS,
    CHUNK_CROPS,
    CROP_DIMS,
    CROP_PLANES,
    CROP_SIZE,
    DIGESTS_FILE,
    FAST_DIGEST,
    LABEL_ALPHA,
    LABEL_OTHER,
    LABEL_UNKNOWN,
    OBJECT_SCHEMA,
    PARTS_DIR,
    PIXEL_SIZE_UM,
    PLANE_STEP_UM,
    SCHEMA_VERSION,
    SHARD_CROPS,
    TABLE_FILE,
    ZSTD_LEVEL,
    fast_digest,
    fast_hasher,
    iter_rows,
    rows_to_table,
    table_digest,
)
from scanstream.store.volume import (
    NGFF_VERSION,
    VOLUME_SCHEMA,
    FieldOfView,
    Volume,
    is_volume,
    level_path,
    open_volume,
    summarize_volume,
)
from scanstream.store.writer import StoreWriter, create_store, seal_store, upgrade_store

__all__ = [
    "CHANNELS",
    "CHUNK_CROPS",
    "CROP_DIMS",
    "CROP_PLANES",
    "CROP_SIZE",
    "DIGESTS_FILE",
    "FAST_DIGEST",
    "LABEL_ALPHA",
    "LABEL_OTHER",
    "LABEL_UNKNOWN",
    "NGFF_VERSION",
    "OBJECT_SCHEMA",
    "PARTS_DIR",
    "PIXEL_SIZE_UM",
    "PLANE_STEP_UM",
    "SCHEMA_VERSION",
    "SHARD_CROPS",
    "TABLE_FILE",
    "VOLUME_SCHEMA",
    "ZSTD_LEVEL",
    "BlockVerifier",
    "CropStore",
    "FieldOfView",
    "IncompleteStoreError",
    "StoreError",
    "StoreExistsError",
    "StoreNotFoundError",
    "StoreWriter",
    "Volume",
    "axis_coordinates",
    "compute_content_hash",
    "create_store",
    "fast_digest",
    "fast_hasher",
    "is_store",
    "is_volume",
    "iter_blocks",
    "iter_rows",
    "level_path",
    "open_dataset",
    "open_store",
    "open_volume",
    "read_table",
    "rows_to_table",
    "seal_store",
    "summarize_store",
    "summarize_volume",
    "table_digest",
    "upgrade_store",
    "validate_store",
]
