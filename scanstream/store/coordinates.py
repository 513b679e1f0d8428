"""The crop store as xarray sees it: coordinate arrays beside ``crops``, and :func:`open_dataset`.

A complete store holds, next to ``crops`` (object, y, x, plane), one zarr array per axis, so
``xarray.open_zarr(store)`` gives every axis its coordinate:

    object   string (n,): the object ids, row i of the object table
    plane    float64 (3,): depth of each focal plane below the vertex's, um (developed emulsion;
             shallower, vertex, deeper: -step, 0, +step with the store's ``plane_step_um``)
    y, x     float64 (224,): the pixel centres' offsets from the vertex (the crop centre), um

They are copies (of the table's ids, of the pixel size and plane step in the attributes),
written when the store is sealed (:func:`scanstream.store.writer.seal_store`) and listed in its
consolidated metadata. scanstream itself never reads them. :func:`open_dataset` gives the same
coordinates, computed, with the object table's scalar columns as variables on ``object``, for
stores of every release.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zarr
from zarr.codecs import ZstdCodec

from scanstream.atomic import atomic_dir
from scanstream.errors import StoreError
from scanstream.store.crops import open_store
from scanstream.store.schema import (
    CROP_DIMS,
    CROP_PLANES,
    CROP_SIZE,
    PIXEL_SIZE_UM,
    PLANE_STEP_UM,
    TABLE_FILE,
    TABLE_UNITS,
    ZSTD_LEVEL,
)

#: The coordinate arrays, in the order they are written; ``object`` holds the ids.
COORDINATES = ("object", "plane", "y", "x")
#: Object ids per chunk of the ``object`` array (picker-like ids: about 1.6 MB a chunk before zstd).
IDS_PER_CHUNK = 65536


def axis_coordinates(pixel_size_um: float, plane_step_um: float) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """The ``plane``, ``y`` and ``x`` coordinates: name -> (float64 values, attributes).

    ``plane`` is the depth of each focal plane below the vertex's plane in um (positive deeper,
    as stage z decreases); ``y`` and ``x`` are the pixel centres' offsets from the crop centre,
    where the vertex lies, in um (``pixel_size_um`` per pixel).

    Examples
    --------
    >>> c = axis_coordinates(0.5, 3.0)
    >>> c["plane"][0].tolist(), c["x"][0][[0, 111, 112, 223]].tolist()
    ([-3.0, 0.0, 3.0], [-55.75, -0.25, 0.25, 55.75])
    """
    centres = (np.arange(CROP_SIZE, dtype=np.float64) - (CROP_SIZE - 1) / 2) * pixel_size_um
    offsets = {
        "y": "row offset of the pixel centre from the vertex",
        "x": "column offset of the pixel centre from the vertex",
    }
    return {
        "plane": (np.array([-plane_step_um, 0.0, plane_step_um]),
                  {"units": "micrometer", "long_name": "depth of the focal plane below the vertex's (developed emulsion)",
                   "labels": list(CROP_PLANES)}),
        **{axis: (centres.copy(), {"units": "micrometer", "long_name": text}) for axis, text in offsets.items()},
    }


def _ids_attributes() -> dict[str, Any]:
    return {"long_name": f"object id (row i of {TABLE_FILE})"}


def _unchanged(path: Path, values: np.ndarray, attrs: dict[str, Any]) -> bool:
    """Whether ``path`` already holds an array of these values and attributes."""
    try:
        arr = zarr.open_array(str(path), mode="r")
    except (OSError, ValueError, KeyError):  # missing, or not an array (zarr's errors are ValueErrors)
        return False
    if arr.shape != values.shape or dict(arr.attrs) != attrs:
        return False
    return bool(np.array_equal(np.asarray(arr[:]).astype(values.dtype), values))


def _write_array(path: Path, name: str, values: np.ndarray, attrs: dict[str, Any]) -> None:
    """Write one coordinate array beside ``crops``: whole, under a temporary name, then swapped in."""
    strings = values.dtype.kind in "OUT"
    with atomic_dir(path / name) as tmp, warnings.catch_warnings():
        # zarr 3.0 warns that variable-length strings have no v3 specification yet (3.1 writes them quietly)
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        arr = zarr.create_array(
            str(tmp), shape=values.shape, chunks=(min(max(len(values), 1), IDS_PER_CHUNK),),
            dtype=str if strings else values.dtype, fill_value="" if strings else np.nan,
            compressors=ZstdCodec(level=ZSTD_LEVEL), dimension_names=(name,), attributes=attrs,
        )
        if len(values):
            arr[:] = values


def write_coordinates(path: str | os.PathLike, object_ids: pa.Array | pa.ChunkedArray, attrs: dict[str, Any]) -> dict[str, Any]:
    """Write the coordinate arrays of the store at ``path``; return each one's ``zarr.json`` by name.

    ``object_ids`` is the object table's ``object_id`` column; ``attrs`` the group attributes
    (``pixel_size_um``, ``plane_step_um``; a store that lacks them gets the defaults). An array
    already holding the same values is left as it is, so sealing a store twice rewrites nothing.
    """
    path = Path(path)
    ids = np.asarray(object_ids.to_pylist(), dtype=object) if len(object_ids) else np.array([], dtype=object)
    axes = axis_coordinates(float(attrs.get("pixel_size_um", PIXEL_SIZE_UM)), float(attrs.get("plane_step_um", PLANE_STEP_UM)))
    wanted = {"object": (ids, _ids_attributes()), **axes}
    meta = {}
    for name in COORDINATES:
        values, arr_attrs = wanted[name]
        if not _unchanged(path / name, values, arr_attrs):
            _write_array(path, name, values, arr_attrs)
        meta[name] = json.loads((path / name / "zarr.json").read_text())
    return meta


def _lazy_imports() -> tuple[Any, Any]:
    """xarray (optional) and dask.array, imported only here: ``import scanstream.store`` stays light."""
    try:
        import xarray
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("open_dataset needs xarray: pip install xarray") from None
    import dask.array

    return xarray, dask.array


def _column_values(column: pa.ChunkedArray) -> np.ndarray:
    """A scalar column as numpy: integers with nulls become float64 with NaN, strings objects (a null: NaN in xarray)."""
    return np.asarray(column.to_numpy(zero_copy_only=False))


def open_dataset(path: str | os.PathLike) -> Any:
    """Open a complete crop store as one lazy ``xarray.Dataset``, joined with its object table.

    ``crops`` (object, y, x, plane; a dask array over the zarr chunks) with the coordinates of
    :mod:`scanstream.store.coordinates`, and every scalar column of the object table (not the
    per-prong list columns) as a variable on ``object``, with its unit in ``attrs["units"]``
    where the table has one (a missing value is NaN; integer columns with one become float64);
    the group attributes are the Dataset's. The coordinates are
    computed from the table and the attributes, not read from their arrays, so stores of every
    release open alike. The table is read whole; no crop is read.

    Raises
    ------
    StoreNotFoundError, IncompleteStoreError, StoreError
        As :func:`~scanstream.store.crops.open_store`; StoreError also when a column's name is
        already a variable's.
    ImportError
        xarray is not installed.
    """
    store = open_store(path)
    xr, dask_array = _lazy_imports()
    axes = axis_coordinates(float(store.attrs.get("pixel_size_um", PIXEL_SIZE_UM)),
                            float(store.attrs.get("plane_step_um", PLANE_STEP_UM)))
    coords = {"object": (_column_values(store.table.column("object_id")), _ids_attributes()), **axes}
    crops = xr.Variable(CROP_DIMS, dask_array.from_zarr(store.crops), dict(store.crops.attrs))
    ds = xr.Dataset({"crops": crops}, coords={name: xr.Variable((name,), v, a) for name, (v, a) in coords.items()},
                    attrs=dict(store.attrs))
    for field in store.table.schema:
        if field.name == "object_id" or pa.types.is_nested(field.type):
            continue
        if field.name in ds.variables:
            raise StoreError(f"{store.path / TABLE_FILE}: column {field.name!r} has the name of a variable of the store")
        attrs = {"units": TABLE_UNITS[field.name]} if field.name in TABLE_UNITS else {}
        ds[field.name] = xr.Variable(("object",), _column_values(store.table.column(field.name)), attrs)
    return ds
