"""``pick``: vertex-like objects from a scanned-volume store's z-stacks to a crop store.

For every field of view (a Dask task per field, :func:`scanstream.executor.run_tasks`) the
detector of :mod:`scanstream.picker.detect` finds the vertices; each becomes a 224 x 224 crop at
the crop stores' pixel size (:data:`scanstream.store.PIXEL_SIZE_UM`, 0.388 um/px: the field's
0.283 um/px planes are smoothed by ``ANTIALIAS_PX`` and resampled bilinearly), centred on the
vertex, with the same channel encoding as every crop store: R the focal plane one step
shallower than the vertex, G the vertex's plane, B one step deeper (the edge plane repeated at
the top or bottom of a stack). Shallower is higher stage z: the planes are listed from the top,
as the E07 stage lists them (docs/physics.md), and the simulated volumes follow it. Pixels beyond
the field take the plane's median grey level.

The object table gets the stage position of the vertex (x_mm, y_mm, z_mm, through
:meth:`FieldOfView.pixel_to_stage`), the sheet (``--sheet``, default the volume's name), the
experiment, module and plate from the field's metadata, the picker's features (multiplicity,
track_lengths_um: undeveloped prong lengths; track_dips_deg: each prong's dip from the plate
plane), label -1 (unknown), ``pick_field`` (the field's source folder) and
``emulsion_shrinkage`` (the metadata's ``EmulsionType.Sh``, which depths were converted with;
null where it gives none and 2.0 was used), and the star's second vertex where its radon atom moved
before it decayed (``origin_x_mm``, ``origin_y_mm``, ``origin_z_mm``: stage, null where none;
``origin_prongs``: the prongs measured from it, 0 where none). Object ids are ``<sheet>-F<field>-V<k>``, stable across reruns.

Resumable: the crop store is written by :class:`scanstream.store.StoreWriter`, and
``CROPS.zarr/pick_fields.json`` records how many vertices each field gave (rewritten every
``FIELDS_EVERY_S`` seconds and at the end); a rerun skips fields whose vertices are all in the
store and appends only the missing ones of a field cut short or not yet recorded.
A field that cannot be picked (fewer than three planes, planes without stage positions) is an
error naming it, found before anything is written, or with ``skip_bad`` is left out and listed.

Where the fields overlap, a field keeps only the vertices it owns (:mod:`scanstream.picker.overlap`:
those nearer its centre than the centre of any other field whose image holds them), so a star in
the shared strip is picked once, and a star cut at one field's edge from the field it lies well
inside. The rule reads only the volume's field positions: reruns give each field the same vertices.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from scanstream.atomic import write_json
from scanstream.errors import StackError
from scanstream.executor import dask_client, run_tasks
from scanstream.picker.detect import DetectParams, Vertex, detect_vertices
from scanstream.picker.overlap import Footprint, footprints, keep_owned, neighbourhoods
from scanstream.progress import Progress, as_progress
from scanstream.store.schema import CROP_SIZE, PIXEL_SIZE_UM, PLANE_STEP_UM
from scanstream.store.volume import FieldOfView, open_field, open_volume
from scanstream.store.writer import StoreWriter

logger = logging.getLogger(__name__)

FIELDS_FILE = "pick_fields.json"
#: seconds between rewrites of FIELDS_FILE during a run (and once at its end): one entry a field,
#: fsynced, so a rewrite after every field grows with the sheet; a field picked but not yet
#: recorded is picked again on a rerun, and only its missing crops are appended
FIELDS_EVERY_S = 2.0
ANTIALIAS_PX = 0.45  # Gaussian sigma (source px) before the 0.283 -> 0.388 um/px resampling
DEFAULT_SHRINKAGE = 2.0


@dataclass(frozen=True)
class FieldPicks:
    """What one field gave: its name, crops (k, 224, 224, 3) uint8 and k object rows."""

    name: str
    crops: np.ndarray
    rows: list[dict[str, Any]]
    seconds: float


@dataclass(frozen=True)
class PickResult:
    """What a pick run did."""

    store: Path
    fields: int
    fields_picked: int
    fields_skipped: int
    objects_added: int
    objects: int
    bad: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    seconds: float = 0.0
    #: of ``seconds``: starting (or joining) the Dask cluster, its workers' import of the picker
    #: included, and from then to the last field's crops appended (the rest: checking the fields,
    #: closing the cluster and the store)
    start_seconds: float = 0.0
    work_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "store": str(self.store), "fields": self.fields, "fields_picked": self.fields_picked,
            "fields_already_done": self.fields_skipped, "objects_added": self.objects_added,
            "objects_in_store": self.objects, "bad_fields": [{"field": f, "reason": r} for f, r in self.bad],
            "seconds": round(self.seconds, 2), "start_seconds": round(self.start_seconds, 2),
            "work_seconds": round(self.work_seconds, 2),
        }


def crop_planes(planes: np.ndarray, row: float, col: float, pixel_um: tuple[float, float]) -> np.ndarray:
    """A (224, 224, 3) uint8 crop centred on (row, col) from three planes (3, y, x) (R, G, B).

    The crop is :data:`CROP_SIZE` pixels of :data:`PIXEL_SIZE_UM`; source pixels ``pixel_um``
    (x, y) are smoothed (``ANTIALIAS_PX``) and sampled bilinearly; outside the field, the plane's
    median grey level. The samples lie on a grid, so the interpolation is done along rows, then
    columns: ``ndi.map_coordinates(order=1)`` gives the same values (a grey level apart in 3 of
    a million pixels, rounding) and made the whole crop take twice as long.
    """
    sx, sy = PIXEL_SIZE_UM / pixel_um[0], PIXEL_SIZE_UM / pixel_um[1]
    half = (CROP_SIZE - 1) / 2
    ry = int(np.ceil(half * sy)) + 3
    rx = int(np.ceil(half * sx)) + 3
    r0, c0 = int(np.floor(row)) - ry, int(np.floor(col)) - rx
    grid = np.arange(CROP_SIZE) - half
    fy, fx = row - r0 + grid * sy, col - c0 + grid * sx  # 3 px or more inside the region
    iy, ix = np.floor(fy).astype(int), np.floor(fx).astype(int)
    ty, tx = (fy - iy)[:, None], fx - ix
    out = np.empty((CROP_SIZE, CROP_SIZE, 3), np.uint8)
    h, w = planes.shape[1:]
    for ch in range(3):
        fill = float(np.median(planes[ch, :: max(1, h // 64), :: max(1, w // 64)]))
        region = np.full((2 * ry + 2, 2 * rx + 2), fill, np.float32)
        y0, y1, x0, x1 = max(r0, 0), min(r0 + region.shape[0], h), max(c0, 0), min(c0 + region.shape[1], w)
        if y1 > y0 and x1 > x0:
            region[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = planes[ch, y0:y1, x0:x1]
        region = ndi.gaussian_filter(region, ANTIALIAS_PX, mode="nearest")
        rows = region[iy] * (1 - ty) + region[iy + 1] * ty
        vals = rows[:, ix] * (1 - tx) + rows[:, ix + 1] * tx
        out[..., ch] = np.clip(vals + 0.5, 0, 255).astype(np.uint8)
    return out


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def field_rows(fov: FieldOfView, vertices: list[Vertex], sheet: str) -> list[dict[str, Any]]:
    """Object rows for ``vertices`` of ``fov`` (module docstring)."""
    emu = fov.info.get("EmulsionType") or {}
    rows = []
    for k, v in enumerate(vertices):
        x_mm, y_mm, z_mm = fov.pixel_to_stage(v.z, v.y, v.x)
        rows.append({
            "object_id": f"{sheet}-F{int(fov.name):04d}-V{k:03d}", "experiment": str(emu.get("Experiment") or ""),
            "module": _int(emu.get("Module")), "plate": _int(emu.get("Plate")), "sheet": sheet,
            "x_mm": x_mm, "y_mm": y_mm, "z_mm": z_mm, "label": -1, "category": None,
            "multiplicity": v.multiplicity, "track_lengths_um": list(v.track_lengths_um), "pick_field": fov.source,
            "track_dips_deg": [float(np.degrees(np.arcsin(min(abs(d[2]), 1.0)))) for d in v.directions],
            "emulsion_shrinkage": fov.shrinkage,
            **origin_columns(fov, v),
        })
    return rows


def origin_columns(fov: FieldOfView, v: Vertex) -> dict[str, Any]:
    """The second vertex of ``v`` (a displaced radon's origin, :class:`scanstream.picker.detect.Vertex`)
    as object-table columns: origin_x_mm, origin_y_mm, origin_z_mm (stage; null where none) and
    origin_prongs (the prongs that start there; 0 where none)."""
    x_mm, y_mm, z_mm = fov.pixel_to_stage(*v.origin) if v.origin is not None else (None, None, None)
    return {"origin_x_mm": x_mm, "origin_y_mm": y_mm, "origin_z_mm": z_mm, "origin_prongs": v.origin_prongs}


def field_problem(fov: FieldOfView) -> str | None:
    """Why ``fov`` cannot be picked (one line naming it), or None."""
    nz = fov.shape[0]
    if nz < 3:
        return f"field {fov.source!r}: {nz} planes, the picker needs at least 3"
    if not (np.all(np.isfinite(fov.stage_x_mm)) and np.all(np.isfinite(fov.stage_y_mm))
            and np.all(np.isfinite(fov.stage_z_mm))):
        return f"field {fov.source!r}: planes without stage positions"
    return None


def pick_field(fov: FieldOfView, sheet: str, params: DetectParams | None = None, *,
               fields: tuple[Footprint, ...] = ()) -> FieldPicks:
    """Detect, crop and describe the vertices of one field of view (those it owns among the
    footprints ``fields`` of its own and its volume's overlapping fields, :func:`scanstream.picker.overlap.keep_owned`)."""
    t0 = time.perf_counter()
    problem = field_problem(fov)
    if problem:
        raise StackError(problem)
    planes = fov.read()
    verts, up = detect_field(fov, planes, params)
    verts = keep_owned(fov, verts, fields)
    crops = field_crops(fov, planes, verts, up)
    return FieldPicks(fov.name, crops, field_rows(fov, verts, sheet), time.perf_counter() - t0)


def field_crops(fov: FieldOfView, planes: np.ndarray, verts: list[Vertex], up: int) -> np.ndarray:
    """The crops (n, CROP_SIZE, CROP_SIZE, 3) uint8 of ``verts`` in ``fov``'s ``planes``: the planes
    one shallower (R), at (G) and one deeper (B) than each vertex, ``up`` the plane direction
    towards higher stage z (:func:`detect_field`)."""
    nz = planes.shape[0]
    crops = np.empty((len(verts), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, v in enumerate(verts):
        kz = round(v.z)
        ks = [min(max(kz + up * d, 0), nz - 1) for d in (1, 0, -1)]  # R shallower, G, B deeper
        crops[i] = crop_planes(planes[ks], v.y, v.x, fov.pixel_size_um)
    return crops


def detect_field(fov: FieldOfView, planes: np.ndarray, params: DetectParams | None = None) -> tuple[list[Vertex], int]:
    """The vertices of one field's ``planes`` (read from ``fov``), and the direction (+1 or -1) of
    plane index towards higher stage z; the field's own z step and shrinkage, or the defaults."""
    step = abs(float(fov.step_um)) or PLANE_STEP_UM
    shrink = fov.shrinkage if isinstance(fov.shrinkage, int | float) and fov.shrinkage > 0 else DEFAULT_SHRINKAGE
    verts = detect_vertices(planes, pixel_um=float(np.mean(fov.pixel_size_um)), step_um=step, shrinkage=float(shrink),
                            params=params)
    return verts, (1 if fov.stage_z_mm[-1] >= fov.stage_z_mm[0] else -1)


def _pick_task(item: tuple[str, str, str, DetectParams, tuple[Footprint, ...]]) -> FieldPicks:
    path, name, sheet, params, fields = item
    return pick_field(open_field(path, name), sheet, params, fields=fields)


def _read_fields_file(out: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads((out / FIELDS_FILE).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def pick_volume(
    volume: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sheet: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = True,
    skip_bad: bool = False,
    params: DetectParams | None = None,
    progress: bool | Progress | None = None,
) -> PickResult:
    """Pick every field of ``volume`` into the crop store ``out`` (module docstring).

    Raises
    ------
    StoreError
        ``volume`` is not a complete volume store, or ``out`` is not a crop store.
    StackError
        Without ``skip_bad``: a field that cannot be picked (found before anything is written).
    """
    t0 = time.perf_counter()
    params = params or DetectParams()
    vol = open_volume(volume)
    volume, out = Path(volume), Path(out)
    sheet = sheet or volume.name.removesuffix(".zarr")
    source = {"stage": "pick", "volume": str(volume), "sheet": sheet, "params": vars(params)}
    bad: list[tuple[str, str]] = []
    for f in vol:  # bad input is found before anything is written
        problem = field_problem(f)
        if problem and not skip_bad:
            raise StackError(problem)
        if problem:
            bad.append((f.source, problem))
    skip = {f.name for f in vol if field_problem(f)}
    bar = as_progress(progress)(len(vol), f"pick {volume.name}", "field")
    added = picked = 0
    try:
        # the crops' plane spacing, for the store's ``plane`` coordinate: the scan's z step (fields share it)
        step = next((abs(float(f.step_um)) for f in vol if f.step_um), PLANE_STEP_UM)
        with StoreWriter(out, source=source, plane_step_um=step) as writer:
            done = _read_fields_file(out)
            present: dict[str, int] = {}
            for oid in writer.object_ids:
                key = oid.rsplit("-V", 1)[0]
                present[key] = present.get(key, 0) + 1
            todo = [f.name for f in vol if f.name not in skip
                    and done.get(f.name, -1) != present.get(f"{sheet}-F{int(f.name):04d}", 0)]
            bar.update(len(vol) - len(todo))
            with contextlib.ExitStack() as stack:
                t1 = written = time.perf_counter()
                client = stack.enter_context(dask_client(scheduler, workers=workers, processes=processes)) if todo else None
                if client is not None:  # each worker imports the picker now, as part of its start (about 0.5 s)
                    client.run(importlib.import_module, __name__)
                t2 = time.perf_counter()
                near = neighbourhoods(footprints(vol))  # which field owns a vertex where fields overlap
                items = [(str(volume), name, sheet, params, near.get(name, ())) for name in todo]
                for item, res, err in run_tasks(client, _pick_task, items, keys=[f"pick-{n}" for n in todo]):
                    if err is not None:
                        raise err  # not bad input (checked above): the run stops, resumable
                    keep = [i for i, r in enumerate(res.rows) if r["object_id"] not in writer]
                    if keep:
                        writer.append(res.crops[keep], [res.rows[i] for i in keep])
                    added += len(keep)
                    picked += 1
                    done[res.name] = len(res.rows)
                    if time.perf_counter() - written >= FIELDS_EVERY_S:
                        write_json(out / FIELDS_FILE, done)
                        written = time.perf_counter()
                    bar.update(1)
                write_json(out / FIELDS_FILE, done)
                t3 = time.perf_counter()
            n_objects = writer.n
    finally:
        bar.close()
    return PickResult(out, len(vol), picked, len(vol) - len(todo) - len(skip), added, n_objects, tuple(bad),
                      time.perf_counter() - t0, t2 - t1, t3 - t2)
