"""Ingest of the microscope's z-stacks (info.json or image.json) into a scanned-volume store napari opens.

A z-stack folder holds the images of one field of view at successive focal depths and a
metadata file describing them; its format and the rules it is checked against are
:mod:`scanstream.ingest.stackmeta`'s. A problem is one line naming the file and the key.

The store's layout (OME-Zarr / NGFF 0.5, one multiscale image per field of view, planes in
increasing stage z, a pyramid for fields over 1024 px a side, named arrays, the root a plain
NGFF collection) and its reader are :mod:`scanstream.store.volume`.

Ingest (:func:`ingest_stacks`) validates every info.json and image header first, then writes one
field of view at a time, 16 planes at a time (memory stays flat), each marked complete last;
a rerun skips fields of view already complete (identified by folder path relative to SRC) and
rewrites an interrupted one. Bad input stops the run and leaves the store as it was, or with
``skip_bad`` the stack is left out and listed in ``NAME.zarr.quarantine.csv``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image, UnidentifiedImageError
from zarr.codecs import ZstdCodec

from scanstream.atomic import atomic_dir
from scanstream.errors import StackError, StoreError
from scanstream.ingest.images import BadItem, quarantine_path, write_quarantine
from scanstream.ingest.stackmeta import (
    INFO_FILE,
    META_FILES,
    StackImage,
    StackInfo,
    mm_to_um,
    read_stack_info,
    stack_meta_file,
)
from scanstream.store.volume import (
    AXES,
    NGFF_VERSION,
    VOLUME_SCHEMA,
    consolidate_field,
    is_volume,
    level_path,
    level_transforms,
    open_volume,
    pyramid_shapes,
)

logger = logging.getLogger(__name__)

Z_BLOCK = 16  # planes per shard, and per write


def find_stacks(src: Path) -> list[Path]:
    """Folders holding an info.json or image.json: ``src`` itself, or every such folder below it (sorted)."""
    if stack_meta_file(src) is not None:
        return [src]
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(name in filenames for name in META_FILES):
            found.append(Path(dirpath))
    return found


def _plane_problem(path: Path, info: StackInfo) -> str | None:
    try:
        with Image.open(path) as im:
            size, mode, frames = im.size, im.mode, getattr(im, "n_frames", 1)
    except FileNotFoundError:
        return "image file not found"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return f"unreadable image ({exc.__class__.__name__}: {exc})"
    if size != (info.width, info.height):
        return f"image is {size[0]} x {size[1]} px, {info.path.name} ImageType says {info.width} x {info.height}"
    if mode not in ("L", "P", "RGB", "RGBA", "LA", "1") or frames != 1:
        return f"image mode {mode} ({frames} frames) is not one 8-bit plane"
    return None


def read_plane(path: str | os.PathLike) -> np.ndarray:
    """Decode one focal plane to uint8 (height, width); colour is converted to grayscale (luma)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im if im.mode == "L" else im.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise StackError(f"{path}: truncated or unreadable image ({exc.__class__.__name__}: {exc})") from None


def check_stack(folder: Path) -> StackInfo:
    """Validate a stack folder's info.json / image.json and every image header (no pixel decoding)."""
    info = read_stack_info(stack_meta_file(folder) or folder / INFO_FILE)
    for i, im in enumerate(info.images):
        problem = _plane_problem(folder / im.path, info)
        if problem:
            raise StackError(f"{folder / im.path}: {problem} (Images[{i}] of {info.path})")
    return info


# -- writing -----------------------------------------------------------------------------------
def _multiscales(info: StackInfo, planes: list[StackImage], name: str, levels: int) -> dict:
    """The field's NGFF image metadata: ``levels`` datasets (pyramid levels, :func:`level_path`)."""
    px_um, py_um = mm_to_um(info.pixel_mm[0]), mm_to_um(info.pixel_mm[1])
    x0 = round(mm_to_um(planes[0].x_mm) - (info.width - 1) / 2 * px_um, 9)
    y0 = round(mm_to_um(planes[0].y_mm) - (info.height - 1) / 2 * py_um, 9)
    level0 = [
        {"type": "scale", "scale": [mm_to_um(info.step_mm), py_um, px_um]},
        {"type": "translation", "translation": [mm_to_um(planes[0].z_mm), y0, x0]},
    ]
    datasets = [{"path": level_path(0), "coordinateTransformations": level0}]
    datasets += [{"path": level_path(k), "coordinateTransformations": level_transforms(level0, k)} for k in range(1, levels)]
    return {"version": NGFF_VERSION, "multiscales": [{"name": name, "axes": AXES, "datasets": datasets}]}


def downsample_xy(planes: np.ndarray) -> np.ndarray:
    """Halve planes in y and x by 2 x 2 means: uint8 (k, h, w) to (k, ceil(h / 2), ceil(w / 2)).

    An odd last row or column is averaged with itself (edge replicated); means round half up.

    Examples
    --------
    >>> downsample_xy(np.array([[[0, 2, 9], [4, 6, 9]]], np.uint8)).tolist()
    [[[3, 9]]]
    """
    h, w = planes.shape[1:]
    a = planes.astype(np.uint16)
    if h % 2 or w % 2:
        a = np.pad(a, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    total = a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


@dataclass(frozen=True)
class VolumeIngestResult:
    """What a stack ingest did."""

    store: Path
    added: int
    already_present: int
    planes: int
    bad: tuple[BadItem, ...]
    quarantine: Path | None
    fields: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "store": str(self.store),
            "format": "stack",
            "added": self.added,
            "already_present": self.already_present,
            "planes_written": self.planes,
            "quarantined": len(self.bad),
            "quarantine_report": str(self.quarantine) if self.quarantine else None,
            "fields_of_view_in_store": self.fields,
            "seconds": round(self.seconds, 2),
        }


class _VolumeWriter:
    """Adds fields of view to a volume store; :meth:`rollback` undoes this run's additions.

    ``z_block`` planes are written at a time and make one shard.
    """

    def __init__(self, path: Path, source: dict, *, z_block: int = Z_BLOCK) -> None:
        self.path = path
        self.z_block = z_block
        self.created = not path.exists()
        if self.created:
            attrs = {"ome": _root_ome(),
                     "scanstream_volume": {"schema": VOLUME_SCHEMA, "complete": False, "source": source, "fields": []}}
            with atomic_dir(path) as tmp:  # a store directory always has its group attributes
                g = zarr.open_group(str(tmp), mode="w", attributes=attrs)
                g.create_group("OME", attributes={"ome": {"version": NGFF_VERSION, "series": []}})
        elif not is_volume(path):
            raise StackError(f"{path}: exists and is not a scanstream volume store")
        self.group = zarr.open_group(str(path), mode="r+")
        self.start = dict(self.group.attrs["scanstream_volume"])
        if self.start.get("schema", 0) > VOLUME_SCHEMA:
            raise StoreError(f"{path}: volume schema {self.start['schema']} is newer than this scanstream")
        self.fields = list(self.start.get("fields", []))
        self.sources = {self.group[n].attrs["scanstream_fov"]["source"] for n in self.fields}
        self.source = source
        self.added: list[str] = []

    def _set(self, **kw: Any) -> None:
        self.group.attrs["scanstream_volume"] = {**dict(self.group.attrs["scanstream_volume"]), **kw}

    def _publish(self, fields: list[str]) -> None:
        """List ``fields`` (complete fields of view) for NGFF readers in ``OME/``'s series; the root stays plain."""
        self.group.attrs["ome"] = _root_ome()
        self.group["OME"].attrs["ome"] = {"version": NGFF_VERSION, "series": list(fields)}

    def add(self, key: str, info: StackInfo, progress: Callable[[int], None] | None) -> int:
        """Write one stack as the next field of view; returns planes written."""
        if not self.added:
            self._set(complete=False, source=self.source)
        name = str(max((int(n) for n in self.fields), default=-1) + 1)
        if name in self.group:  # left by an interrupted run
            del self.group[name]
        planes = sorted(info.images, key=lambda im: im.z_mm)
        fov_attrs = {
            "source": key, "info": info.raw, "complete": False,
            "pixel_size_um": [mm_to_um(info.pixel_mm[0]), mm_to_um(info.pixel_mm[1])],
            "step_um": mm_to_um(info.step_mm),
            "image_paths": [p.path for p in planes],
            "stage_x_mm": [p.x_mm for p in planes], "stage_y_mm": [p.y_mm for p in planes],
            "stage_z_mm": [p.z_mm for p in planes],
            "metadata_file": info.path.name,
        }
        if info.affine_mm is not None:
            fov_attrs["affine_p2s_mm"] = list(info.affine_mm)
        by_path = {e.get("Path"): e for e in info.raw["Images"] if isinstance(e, dict)}
        for extra in ("stagez", "extrastage"):
            if any(extra in e for e in by_path.values()):
                fov_attrs[extra] = [by_path[p.path].get(extra) for p in planes]
        shapes = pyramid_shapes(info.height, info.width)
        g = self.group.create_group(
            name, attributes={"ome": _multiscales(info, planes, key, len(shapes)), "scanstream_fov": fov_attrs}
        )
        nz = len(planes)
        arrays = [
            g.create_array(
                level_path(k), shape=(nz, h, w), chunks=(1, h, w), shards=(min(self.z_block, nz), h, w), dtype="uint8",
                compressors=ZstdCodec(level=3), fill_value=0, dimension_names=["z", "y", "x"],
            )
            for k, (h, w) in enumerate(shapes)
        ]
        self.added.append(name)
        for start in range(0, nz, self.z_block):
            block = planes[start : start + self.z_block]
            data = np.stack([read_plane(info.folder / p.path) for p in block])
            for k, arr in enumerate(arrays):
                if k:
                    data = downsample_xy(data)
                arr[start : start + len(block)] = data
            if progress is not None:
                progress(len(block))
        g.attrs["scanstream_fov"] = {**fov_attrs, "complete": True}
        consolidate_field(self.path, name)
        self.fields.append(name)
        self.sources.add(key)
        self._set(fields=self.fields)
        self._publish(self.fields)
        return nz

    def drop_last(self) -> None:
        """Remove the field of view being written (its stack turned out bad)."""
        name = self.added.pop()
        if name in self.group:
            del self.group[name]
        if name in self.fields:
            self.fields.remove(name)
            self._set(fields=self.fields)

    def finish(self) -> None:
        if self.group.attrs.get("ome") != _root_ome():  # a volume that listed its fields as "labels"
            self._publish(self.fields)
        if self.added or not self.start.get("complete"):
            self._set(complete=True, fields=self.fields)

    def rollback(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in self.added:
            if name in self.group:
                del self.group[name]
        self._publish(list(self.start.get("fields", [])))
        self.group.attrs["scanstream_volume"] = self.start


def _root_ome() -> dict:
    """The root's "ome" attributes: a plain bioformats2raw collection (``OME/`` lists the fields).

    Volumes written before listed the fields under "labels" too, which made ome-zarr-models
    read the root as a labels group; :meth:`_VolumeWriter.finish` drops that list on a rerun.
    """
    return {"version": NGFF_VERSION, "bioformats2raw.layout": 3}


def _stack_key(src: Path, folder: Path) -> str:
    rel = folder.relative_to(src)
    return src.resolve().name if rel == Path(".") else rel.as_posix()


def _check_stacks(
    src: Path, folders: list[Path], present: set[str], *, skip_bad: bool
) -> tuple[list[tuple[str, StackInfo]], list[BadItem], int]:
    """The first pass: (key, info) of every stack to add, the bad ones, and how many are present."""
    todo: list[tuple[str, StackInfo]] = []
    bad: list[BadItem] = []
    already = 0
    for folder in folders:
        key = _stack_key(src, folder)
        if key in present:
            already += 1
            continue
        try:
            todo.append((key, check_stack(folder)))
        except StackError as exc:
            if not skip_bad:
                raise
            bad.append(BadItem(str(folder), str(exc), key))
    return todo, bad, already


def ingest_stacks(
    src: str | os.PathLike,
    store: str | os.PathLike,
    *,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    z_block: int = Z_BLOCK,
) -> VolumeIngestResult:
    """Ingest z-stack folders under ``src`` into the volume store ``store`` (module docstring).

    Parameters
    ----------
    src : path-like
        A stack folder (with info.json) or a folder of them (searched recursively).
    store : path-like
        The ``NAME.zarr`` volume store, created if missing, added to if present.
    skip_bad : bool
        Leave bad stacks out and list them in ``NAME.zarr.quarantine.csv`` instead of failing.
    progress, total : callable, optional
        Called with planes written / once with the planes to write.
    z_block : int
        Planes per shard of a new field of view, and per write (memory holds one block).

    Raises
    ------
    StackError
        Without ``skip_bad``: the first bad stack (file and key or problem); the store is left
        as it was before the run.
    """
    src, store = Path(src), Path(store)
    t0 = time.perf_counter()
    if z_block < 1:
        raise StackError(f"z_block must be a positive number of planes, got {z_block}")
    if not src.is_dir():
        raise StackError(f"{src}: no such source folder")
    folders = find_stacks(src)
    if not folders:
        raise StackError(f"{src}: no z-stack folders (a folder with {' or '.join(META_FILES)})")
    if store.exists() and not is_volume(store):
        raise StackError(f"{store}: exists and is not a scanstream volume store")
    present = {f.source for f in open_volume(store, require_complete=False)} if store.exists() else set()
    todo, bad, already = _check_stacks(src, folders, present, skip_bad=skip_bad)
    if total is not None:
        total(sum(len(info.images) for _, info in todo))

    writer = _VolumeWriter(store, {"stage": "ingest", "format": "stack", "src": str(src)}, z_block=z_block)
    planes = 0
    try:
        for key, info in todo:
            try:
                planes += writer.add(key, info, progress)
            except StackError as exc:
                if not skip_bad:
                    raise
                writer.drop_last()
                bad.append(BadItem(str(info.folder), str(exc), key))
        writer.finish()
    except StackError:
        writer.rollback()
        raise
    quarantine = None
    if skip_bad:
        quarantine = quarantine_path(store)
        write_quarantine(quarantine, bad)
    n_fields = len(open_volume(store).fields)
    return VolumeIngestResult(store, len(writer.added), already, planes, tuple(bad), quarantine, n_fields,
                              time.perf_counter() - t0)
