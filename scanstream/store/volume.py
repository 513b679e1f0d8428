"""Scanned-volume stores: the microscope's z-stacks as OME-Zarr, read-only access.

Layout of ``NAME.zarr`` (zarr v3, OME-Zarr / NGFF 0.5, the ``bioformats2raw.layout`` collection)::

    zarr.json        attributes "ome": {"version": "0.5", "bioformats2raw.layout": 3} and
                     "scanstream_volume": {schema, complete, source, fields: ["0", "1", ...]}
    OME/zarr.json    "ome": {"version": "0.5", "series": ["0", "1", ...]}
    0/               field of view 0: an NGFF image ("ome": {"multiscales": [...]}, axes z, y, x
                     in micrometer) plus "scanstream_fov" (the info.json / image.json as read,
                     the stage x, y, z of every plane in mm, pixel and step sizes, source
                     folder; from an image.json also "affine_p2s_mm", the AffineP2S matrix as
                     (a, b, c, d, e, f), and the images' "stagez" / "extrastage" in plane order);
                     its zarr.json also carries zarr's consolidated metadata of the field
    0/planes/        uint8 (z, y, x), one chunk per plane, shards of 16 planes, zstd
    0/level1/planes/ the pyramid of a large field (:func:`pyramid_shapes`, :func:`level_path`):
    0/level2/planes/ each level halves y and x (2 x 2 means), z untouched; absent for fields
                     up to 1024 px a side
    1/ ...

The root is a plain NGFF collection: ``OME/``'s ``series`` lists the fields (the convention of
bioformats2raw's layout; ome-zarr-models validates it as a v0.5 ``BioFormats2Raw``). ome-zarr-py 0.18's ``Reader`` (and so
napari-ome-zarr) does not follow a collection from its root: it reads one field at a time
(``NAME.zarr/0``). Each field's arrays are named (``planes``, every pyramid level in a group of
its own), so ``xarray.open_zarr("NAME.zarr/0")`` gives the variable ``planes`` (z, y, x), and the
field's consolidated metadata spares xarray the listing it would warn about.

Volumes written before these names keep their levels at "0", "1", ... (and may list their
fields under the root's "labels"); :func:`open_volume` reads the levels from each field's
``multiscales``, so both layouts open, and a rerun of the ingest drops the "labels" list.

Pyramid level k of a field (``datasets[k]``, path :func:`level_path`) has scale (step, 2^k pixel y,
2^k pixel x) and its translation moves to the centre of its first pixel: level 0's plus
(2^k - 1) / 2 level-0 pixels in y and x. scanstream reads level 0 only (:attr:`FieldOfView.data`).

Planes are stored in increasing stage z. The NGFF transform maps voxel (k, i, j) to stage
micrometres: scale (step, pixel y, pixel x) and translation (z of plane 0, and the top-left
pixel centre). Two conventions the metadata does not state are assumed and used in one place,
:meth:`FieldOfView.pixel_to_stage`: the stage x, y of an image is the centre of the image,
and image columns / rows run along +x / +y of the stage. Stage z is as measured (developed
emulsion; multiply depths by the shrinkage factor ``Sh`` for pre-development depths).

Volume stores are written by :func:`scanstream.ingest.stacks.ingest_stacks`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.errors import ZarrUserWarning

from scanstream.errors import StoreError, StoreNotFoundError
from scanstream.store.shards import read_all_planes

VOLUME_SCHEMA = 1
NGFF_VERSION = "0.5"
#: A field whose larger side exceeds this (px) gets a pyramid ...
PYRAMID_FROM_PX = 1024
#: ... with levels down to the first whose larger side is at most this.
PYRAMID_TO_PX = 512
#: The name of every pyramid level's array (xarray's variable name).
LEVEL_ARRAY = "planes"
#: The NGFF axes of every field of view's image.
AXES = [
    {"name": "z", "type": "space", "unit": "micrometer"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(y, x) of every pyramid level of a ``height`` x ``width`` field, level 0 first.

    Each level halves the one before, rounding up (an odd last row or column is averaged with
    itself). Fields up to :data:`PYRAMID_FROM_PX` a side have level 0 only.

    Examples
    --------
    >>> pyramid_shapes(440, 512)
    [(440, 512)]
    >>> pyramid_shapes(2048, 1500)
    [(2048, 1500), (1024, 750), (512, 375)]
    """
    shapes = [(int(height), int(width))]
    if max(shapes[0]) > PYRAMID_FROM_PX:
        while max(shapes[-1]) > PYRAMID_TO_PX:
            h, w = shapes[-1]
            shapes.append((-(-h // 2), -(-w // 2)))
    return shapes


def level_path(level: int) -> str:
    """The path of pyramid ``level``'s array in its field's group (its NGFF ``datasets`` path).

    Level 0 is the field's own ``planes``; every other level is ``planes`` in a group of its
    own, so each group holds one array and xarray opens every level without a clash of sizes.

    Examples
    --------
    >>> [level_path(k) for k in range(3)]
    ['planes', 'level1/planes', 'level2/planes']
    """
    return LEVEL_ARRAY if level == 0 else f"level{level}/{LEVEL_ARRAY}"


def level_transforms(level0: list[dict], level: int) -> list[dict]:
    """NGFF ``coordinateTransformations`` of pyramid ``level`` from level 0's (scale, translation).

    y and x scale by 2^level; the translation moves from the centre of level 0's first pixel
    to the centre of the level's first pixel, which covers 2^level level-0 pixels.
    """
    scale = next(t["scale"] for t in level0 if t["type"] == "scale")
    trans = next(t["translation"] for t in level0 if t["type"] == "translation")
    f = 2**level
    return [
        {"type": "scale", "scale": [scale[0], scale[1] * f, scale[2] * f]},
        {"type": "translation", "translation": [trans[0], round(trans[1] + (f - 1) / 2 * scale[1], 9),
                                                round(trans[2] + (f - 1) / 2 * scale[2], 9)]},
    ]


@dataclass(frozen=True)
class FieldOfView:
    """One z-stack in a volume store.

    Attributes
    ----------
    name : str
        Its group in the store ("0", "1", ...).
    source : str
        The stack folder, relative to the ingest source.
    data : zarr.Array
        uint8 (z, y, x), planes in increasing stage z.
    pixel_size_um : tuple of float
        (x, y) micrometres per pixel.
    step_um : float
        Micrometres per z step (from Interval).
    stage_x_mm, stage_y_mm, stage_z_mm : numpy.ndarray
        float64 (z,): stage position of every plane (mm), as in info.json.
    attrs : dict
        The field of view's ``scanstream_fov`` attributes (including the raw info.json).
    levels : tuple of zarr.Array
        Every pyramid level, ``data`` first (only ``data`` for fields without a pyramid).
    """

    name: str
    source: str
    data: zarr.Array
    pixel_size_um: tuple[float, float]
    step_um: float
    stage_x_mm: np.ndarray
    stage_y_mm: np.ndarray
    stage_z_mm: np.ndarray
    attrs: dict
    levels: tuple[zarr.Array, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def info(self) -> dict:
        return self.attrs["info"]

    @property
    def shrinkage(self) -> float | None:
        """``EmulsionType.Sh`` as a number (image.json may give it as a string, or empty: None)."""
        sh = (self.info.get("EmulsionType") or {}).get("Sh")
        if isinstance(sh, str):
            try:
                sh = float(sh)
            except ValueError:
                return None
        return float(sh) if isinstance(sh, int | float) and not isinstance(sh, bool) and sh > 0 else None

    @property
    def affine_mm(self) -> tuple[float, float, float, float] | None:
        """The linear part (a, b, c, d) of an image.json's ``AffineP2S`` (mm per pixel), or None."""
        aff = self.attrs.get("affine_p2s_mm")
        return tuple(float(v) for v in aff[:4]) if aff else None

    def read(self, z: int | slice = slice(None)) -> np.ndarray:
        """Planes ``z`` as uint8 ((k,) y, x); every plane straight from the shard files where
        their layout allows (:func:`scanstream.store.shards.read_all_planes`: the same array)."""
        if isinstance(z, slice) and z == slice(None):
            planes = read_all_planes(self.data)
            if planes is not None:
                return planes
        return np.asarray(self.data[z])

    def pixel_to_stage(self, z: float, y: float, x: float) -> tuple[float, float, float]:
        """Stage position (x_mm, y_mm, z_mm) of voxel (plane z, row y, column x).

        Uses the plane's own stage x, y, z (interpolated for a fractional plane), the image
        centre as the stage position, and columns / rows along +x / +y, or, for a field
        ingested from an image.json, its ``AffineP2S`` matrix about the image centre.
        """
        k = np.arange(len(self.stage_z_mm))
        sx, sy, sz = (float(np.interp(z, k, a)) for a in (self.stage_x_mm, self.stage_y_mm, self.stage_z_mm))
        ny, nx = self.data.shape[1:]
        dx, dy = x - (nx - 1) / 2, y - (ny - 1) / 2
        aff = self.affine_mm
        if aff is not None:  # image.json: x_stage = a col + b row, y_stage = c col + d row
            return sx + aff[0] * dx + aff[1] * dy, sy + aff[2] * dx + aff[3] * dy, sz
        return (sx + dx * self.pixel_size_um[0] / 1000.0,
                sy + dy * self.pixel_size_um[1] / 1000.0,
                sz)


@dataclass(frozen=True)
class Volume:
    """A scanned-volume store: its fields of view, in ingest order."""

    path: Path
    fields: tuple[FieldOfView, ...]
    attrs: dict

    def __len__(self) -> int:
        return len(self.fields)

    def __iter__(self) -> Iterator[FieldOfView]:
        return iter(self.fields)

    def __getitem__(self, key: int | str) -> FieldOfView:
        if isinstance(key, int):
            return self.fields[key]
        for f in self.fields:
            if key in (f.name, f.source):
                return f
        raise KeyError(f"{self.path}: no field of view {key!r}")

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))


def consolidate_field(path: str | os.PathLike, name: str) -> None:
    """Write zarr's consolidated metadata into field ``name``'s ``zarr.json`` and each level group's.

    Called once a field is complete and before it is listed: xarray then opens the field (or a
    pyramid level's group) from it instead of listing the directory, which it warns about. zarr
    warns that consolidated metadata is not part of the zarr v3 specification; readers that
    ignore it list the field.
    """
    levels = [f"{name}/{key}" for key, _ in zarr.open_group(str(path), mode="r", path=name).groups()]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=ZarrUserWarning)
        for group in [*levels, name]:  # the field last: its copy then includes the levels' own
            zarr.consolidate_metadata(str(path), path=group)


def is_volume(path: str | os.PathLike) -> bool:
    """True when ``path`` is a scanned-volume store (complete or not)."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("node_type") == "group" and "scanstream_volume" in meta.get("attributes", {})


def open_volume(path: str | os.PathLike, *, require_complete: bool = True) -> Volume:
    """Open a scanned-volume store read-only.

    Raises
    ------
    StoreNotFoundError
        ``path`` is not a volume store.
    StoreError
        It is incomplete (and ``require_complete``), or a field of view is malformed.
    """
    p = Path(path)
    if not is_volume(p):
        raise StoreNotFoundError(f"{p}: not a scanstream volume store")
    group = zarr.open_group(str(p), mode="r")
    attrs = dict(group.attrs["scanstream_volume"])
    if require_complete and not attrs.get("complete"):
        raise StoreError(f"{p}: volume store is incomplete (interrupted ingest?); rerun the ingest")
    return Volume(p, tuple(_field(group[name], p, name) for name in attrs.get("fields", [])), attrs)


def open_field(path: str | os.PathLike, name: str) -> FieldOfView:
    """Field of view ``name`` of the volume store ``path`` alone: what a worker of ``pick`` opens
    for its task (:func:`open_volume` opens every field, about 6 ms each).

    Raises
    ------
    StoreNotFoundError
        ``path`` is not a volume store, or has no field ``name``.
    """
    p = Path(path)
    if not is_volume(p):
        raise StoreNotFoundError(f"{p}: not a scanstream volume store")
    try:
        group = zarr.open_group(str(p / name), mode="r")
    except FileNotFoundError:
        raise StoreNotFoundError(f"{p}: no field of view {name!r}") from None
    return _field(group, p, name)


def _field(g: zarr.Group, p: Path, name: str) -> FieldOfView:
    """The field of view ``name`` of the volume store ``p``, from its group ``g``."""
    fa = dict(g.attrs["scanstream_fov"])
    try:
        paths = [str(d["path"]) for d in g.attrs["ome"]["multiscales"][0]["datasets"]] or ["0"]
    except (KeyError, IndexError, TypeError):
        paths = ["0"]  # no multiscales: a volume from before level names, level 0 at "0"
    try:
        levels = tuple(g[path] for path in paths)
    except KeyError as exc:
        raise StoreError(f"{p / name}: field of view lacks its pyramid level {exc}") from None
    return FieldOfView(
        name=name, source=fa["source"], data=levels[0], pixel_size_um=tuple(fa["pixel_size_um"]),
        step_um=float(fa["step_um"]), stage_x_mm=np.asarray(fa["stage_x_mm"], np.float64),
        stage_y_mm=np.asarray(fa["stage_y_mm"], np.float64), stage_z_mm=np.asarray(fa["stage_z_mm"], np.float64),
        attrs=fa, levels=levels,
    )


def summarize_volume(volume: Volume) -> dict[str, Any]:
    """A JSON-ready summary (``scanstream info``)."""
    size = sum(f.stat().st_size for f in volume.path.rglob("*") if f.is_file())
    return {
        "path": str(volume.path),
        "kind": "volume",
        "ngff": NGFF_VERSION,
        "complete": volume.complete,
        "fields_of_view": len(volume),
        "planes": sum(f.shape[0] for f in volume),
        "fields": [
            {"name": f.name, "source": f.source, "shape_zyx": list(f.shape),
             "pyramid_yx": [list(a.shape[1:]) for a in f.levels[1:]],
             "stage_x_mm": float(f.stage_x_mm[0]), "stage_y_mm": float(f.stage_y_mm[0]),
             "z_mm": [float(f.stage_z_mm[0]), float(f.stage_z_mm[-1])],
             "pixel_size_um": list(f.pixel_size_um), "step_um": f.step_um}
            for f in volume
        ],
        "bytes": size,
        "source": volume.attrs.get("source"),
    }
