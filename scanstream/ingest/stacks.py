"""Ingest of the microscope's z-stacks (info.json) into a scanned-volume store napari opens.

A z-stack folder holds the images of one field of view at successive focal depths and an
``info.json`` describing them (PHYSICS.md, "Scanner z-stack metadata")::

    {"DocumentType": {"ver": "20170810", "unit": "mm"},
     "EmulsionType": {"Experiment": "E07", "Module": 99, "Plate": 9, "Sh": 2.0},
     "ImageType": {"Height": 440, "Width": 512, "Depth": 8},
     "Interval": [0.000283, 0.000284, 0.003],
     "Images": [{"Path": "1.png", "x": 1.000, "y": -2.000, "z": -0.1060}, ...]}

``Interval`` is mm per pixel in x and y and mm per step in z; x, y, z are stage positions in mm.
:func:`read_stack_info` validates it: ``DocumentType.unit`` must be ``"mm"``, ``Interval`` three
positive numbers small enough to be mm (at most 0.01 mm per pixel and 0.1 mm per step, so
micrometres given as mm are caught), ``ImageType`` the image size and ``Depth`` 8, and every
``Images`` entry a ``Path`` and numeric ``x``, ``y``, ``z``. ``EmulsionType`` and ``Stage`` are
optional and kept. A problem is one line naming the file and the key.

The store's layout (OME-Zarr / NGFF 0.5, one multiscale image per field of view, planes in
increasing stage z) and its reader are :mod:`scanstream.store.volume`.

Ingest (:func:`ingest_stacks`) validates every info.json and image header first, then writes one
field of view at a time, 16 planes at a time (memory stays flat), each marked complete last;
a rerun skips fields of view already complete (identified by folder path relative to SRC) and
rewrites an interrupted one. Bad input stops the run and leaves the store as it was, or with
``skip_bad`` the stack is left out and listed in ``NAME.zarr.quarantine.csv``.
"""

from __future__ import annotations

import json
import logging
import math
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
from scanstream.store.volume import AXES, NGFF_VERSION, VOLUME_SCHEMA, is_volume, open_volume

logger = logging.getLogger(__name__)

INFO_FILE = "info.json"
Z_BLOCK = 16  # planes per shard, and per write
MAX_PIXEL_MM = 0.01  # 10 um per pixel: coarser is not an emulsion microscope (um given as mm?)
MAX_STEP_MM = 0.1


def _um(mm: float) -> float:
    """mm -> micrometres, rounded to 1e-9 um so 0.000284 mm reads 0.284, not 0.28400000000000003."""
    return round(mm * 1000.0, 9)


@dataclass(frozen=True)
class StackImage:
    """One focal plane: its file (relative to the stack folder) and stage position (mm)."""

    path: str
    x_mm: float
    y_mm: float
    z_mm: float


@dataclass(frozen=True)
class StackInfo:
    """A validated info.json.

    Attributes
    ----------
    path : Path
        The info.json file.
    height, width : int
        Image size (px).
    pixel_mm : tuple of float
        (x, y) mm per pixel.
    step_mm : float
        mm per z step.
    images : tuple of StackImage
        As listed (not yet sorted by z).
    raw : dict
        The whole info.json.
    """

    path: Path
    height: int
    width: int
    pixel_mm: tuple[float, float]
    step_mm: float
    images: tuple[StackImage, ...]
    raw: dict

    @property
    def folder(self) -> Path:
        return self.path.parent

    def emulsion(self, key: str) -> Any:
        """``EmulsionType[key]`` (Experiment, Module, Plate, Sh) or None."""
        return (self.raw.get("EmulsionType") or {}).get(key)


def _key(obj: Any, dotted: str, path: Path) -> Any:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise StackError(f"{path}: missing key {dotted}")
        cur = cur[part]
    return cur


def _number(value: Any, where: str, path: Path, *, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StackError(f"{path}: {where} is {value!r}, expected a number ({unit})")
    return float(value)


def read_stack_info(path: str | os.PathLike) -> StackInfo:
    """Read and validate an info.json (see the module docstring for the rules).

    Raises
    ------
    StackError
        Unreadable JSON, a missing key, a wrong unit or an implausible value; the message names
        the file and the key.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise StackError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise StackError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise StackError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    unit = _key(raw, "DocumentType.unit", path)
    if unit != "mm":
        raise StackError(f"{path}: DocumentType.unit is {unit!r}, expected 'mm'")
    interval = _key(raw, "Interval", path)
    if not isinstance(interval, list) or len(interval) != 3:
        raise StackError(f"{path}: Interval is {interval!r}, expected 3 numbers in mm (x, y per pixel, z per step)")
    iv = [_number(v, f"Interval[{i}]", path, unit="mm") for i, v in enumerate(interval)]
    for i, (v, limit, what) in enumerate(zip(iv, (MAX_PIXEL_MM, MAX_PIXEL_MM, MAX_STEP_MM),
                                             ("per pixel", "per pixel", "per step"), strict=True)):
        if not 0 < v <= limit:
            raise StackError(f"{path}: Interval[{i}] = {v} mm {what} is outside (0, {limit}] mm; micrometres given as mm?")
    dims = {}
    for key in ("Height", "Width", "Depth"):
        v = _key(raw, f"ImageType.{key}", path)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise StackError(f"{path}: ImageType.{key} is {v!r}, expected a positive integer")
        dims[key] = v
    if dims["Depth"] != 8:
        raise StackError(f"{path}: ImageType.Depth is {dims['Depth']}, only 8-bit images are supported")
    entries = _key(raw, "Images", path)
    if not isinstance(entries, list) or not entries:
        raise StackError(f"{path}: Images is {entries!r}, expected a non-empty list")
    images, seen = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise StackError(f"{path}: Images[{i}] is {e!r}, expected an object")
        for key in ("Path", "x", "y", "z"):
            if key not in e:
                raise StackError(f"{path}: missing key Images[{i}].{key}")
        if not isinstance(e["Path"], str) or not e["Path"]:
            raise StackError(f"{path}: Images[{i}].Path is {e['Path']!r}, expected a file name")
        if e["Path"] in seen:
            raise StackError(f"{path}: Images[{i}].Path {e['Path']!r} is listed twice")
        seen.add(e["Path"])
        xyz = [_number(e[k], f"Images[{i}].{k}", path, unit="mm") for k in ("x", "y", "z")]
        images.append(StackImage(e["Path"], *xyz))
    sh = (raw.get("EmulsionType") or {}).get("Sh")
    if sh is not None and (_number(sh, "EmulsionType.Sh", path, unit="shrinkage factor") <= 0):
        raise StackError(f"{path}: EmulsionType.Sh is {sh!r}, expected a positive number")
    return StackInfo(path, dims["Height"], dims["Width"], (iv[0], iv[1]), iv[2], tuple(images), raw)


def find_stacks(src: Path) -> list[Path]:
    """Folders holding an info.json: ``src`` itself, or every such folder below it (sorted)."""
    if (src / INFO_FILE).is_file():
        return [src]
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if INFO_FILE in filenames:
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
        return f"image is {size[0]} x {size[1]} px, info.json ImageType says {info.width} x {info.height}"
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
    """Validate a stack folder's info.json and every image header (no pixel decoding)."""
    info = read_stack_info(folder / INFO_FILE)
    for i, im in enumerate(info.images):
        problem = _plane_problem(folder / im.path, info)
        if problem:
            raise StackError(f"{folder / im.path}: {problem} (Images[{i}] of {info.path})")
    return info


# -- writing -----------------------------------------------------------------------------------
def _multiscales(info: StackInfo, planes: list[StackImage], name: str) -> dict:
    px_um, py_um = _um(info.pixel_mm[0]), _um(info.pixel_mm[1])
    x0 = round(_um(planes[0].x_mm) - (info.width - 1) / 2 * px_um, 9)
    y0 = round(_um(planes[0].y_mm) - (info.height - 1) / 2 * py_um, 9)
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": AXES,
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [_um(info.step_mm), py_um, px_um]},
                {"type": "translation", "translation": [_um(planes[0].z_mm), y0, x0]},
            ]}],
        }],
    }


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
            attrs = {"ome": {"version": NGFF_VERSION, "bioformats2raw.layout": 3},
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
            "pixel_size_um": [_um(info.pixel_mm[0]), _um(info.pixel_mm[1])],
            "step_um": _um(info.step_mm),
            "image_paths": [p.path for p in planes],
            "stage_x_mm": [p.x_mm for p in planes], "stage_y_mm": [p.y_mm for p in planes],
            "stage_z_mm": [p.z_mm for p in planes],
        }
        g = self.group.create_group(name, attributes={"ome": _multiscales(info, planes, key), "scanstream_fov": fov_attrs})
        nz = len(planes)
        arr = g.create_array(
            "0", shape=(nz, info.height, info.width), chunks=(1, info.height, info.width),
            shards=(min(self.z_block, nz), info.height, info.width), dtype="uint8",
            compressors=ZstdCodec(level=3), fill_value=0, dimension_names=["z", "y", "x"],
        )
        self.added.append(name)
        for start in range(0, nz, self.z_block):
            block = planes[start : start + self.z_block]
            arr[start : start + len(block)] = np.stack([read_plane(info.folder / p.path) for p in block])
            if progress is not None:
                progress(len(block))
        g.attrs["scanstream_fov"] = {**fov_attrs, "complete": True}
        self.fields.append(name)
        self.sources.add(key)
        self._set(fields=self.fields)
        ome = self.group["OME"]
        ome.attrs["ome"] = {"version": NGFF_VERSION, "series": list(self.fields)}
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
        if self.added or not self.start.get("complete"):
            self._set(complete=True, fields=self.fields)

    def rollback(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in self.added:
            if name in self.group:
                del self.group[name]
        self.group["OME"].attrs["ome"] = {"version": NGFF_VERSION, "series": list(self.start.get("fields", []))}
        self.group.attrs["scanstream_volume"] = self.start


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
        raise StackError(f"{src}: no z-stack folders (a folder with {INFO_FILE})")
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
