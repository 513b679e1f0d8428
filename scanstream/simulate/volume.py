"""Simulated scanned volumes: fields of view as the scanner writes them, with truth.

``simulate_volume(DIR, ...)`` writes, per field of view, a folder ``DIR/F0000/`` holding one
8-bit PNG per focal plane and an ``info.json`` in the scanner's format (docs/physics.md, "Scanner
z-stack metadata"; the keys :func:`scanstream.ingest.stacks.read_stack_info` reads), and
``DIR/truth.parquet`` with one row per object (object_id, field, category, label, x_mm, y_mm,
z_mm of the vertex in stage coordinates, depth_um, n_prongs; each stopping prong's undeveloped
length, azimuth and dip, :func:`prongs_um`; rn_displacement_um: how far an alpha decay's radon
moved before it decayed, and rn_dx_um, rn_dy_um, rn_dz_um: the vector, :func:`rn_vector`). ``ingest --format stack``, ``pick``
and ``classify`` then run on it exactly as on scanner output.

The scene of a field (developed um, x, y from the image centre, depth below the emulsion
surface):

* objects of :mod:`scanstream.simulate.objects` (alpha stars and the backgrounds, drawn with
  the sheet's ``BACKGROUND_MIX``) at uniform x, y (``MARGIN_UM`` from the edges) and at the
  depth their generator draws in the layer. ``blur`` is left out: it is a crop whose focal
  planes missed the object, and a z-stack images every depth;
* tracks crossing the field: ``BEAM_TRACKS`` minimum-ionising beam tracks nearly perpendicular
  to the plate and ``GREY_TRACKS`` grey tracks at random angles (Poisson means per field);
* fog over the whole imaged volume, at the sheet's fog density.

Everything is drawn by :mod:`scanstream.simulate.render`'s grain model and imaged with its
point-spread and defocus model at the scanner's pixel size (0.283 um/px), one focal plane every
3 um from the surface down through the layer (450 um / shrinkage: about 77 planes). Stage
coordinates: fields on a grid ``field_mm`` apart from (0, 0) mm; the emulsion surface at stage
z 0 and planes listed from the top (stage z decreasing with depth), as the E07 stage lists them.
A vertex at depth d (developed um) has stage z -d / 1000 mm.

Defaults are sized for a realistic sheet (``REALISTIC_PER_MM2`` objects per mm2 from the paper's
47,000 objects per 50 x 50 mm; 1:184 alpha decays); ``objects_per_field`` and
``alpha_fraction`` set them for efficiency studies. ``depth_um`` images a thinner slab (tests);
objects are then redrawn until their vertex lies inside it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from scanstream.atomic import atomic_dir, write_json, write_parquet
from scanstream.errors import InputError
from scanstream.physics.emulsion import ALPHA, GREY, HEAVY, MIP, PROTON, isotropic_directions
from scanstream.picker.overlap import Footprint, owned
from scanstream.progress import Progress, as_progress
from scanstream.simulate.conditions import SheetConditions, resolve_conditions
from scanstream.simulate.objects import (
    BACKGROUND_MIX,
    EMULSION_THICKNESS_UM,
    FAR_UM,
    TH_FRACTION,
    SimObject,
    beam_direction,
    make_object,
)
from scanstream.simulate.render import MAX_DEFOCUS_UM, fog_grains, render_planes, track_grains

PIXEL_UM = 0.283  # the E07 stage's pixel (docs/physics.md, "Emulsion and microscope")
Z_STEP_UM = 3.0
FIELD_PX = 1024
MARGIN_UM = 10.0
REALISTIC_PER_MM2 = 46_948 / 2500.0  # paper's TEST volume: objects per mm2
REALISTIC_ALPHA_FRACTION = 255 / 46_948
BEAM_TRACKS = 6.0
GREY_TRACKS = 1.0
VOLUME_CATEGORIES = {k: v for k, v in BACKGROUND_MIX.items() if k != "blur"}
TRUTH_SCHEMA = pa.schema([
    ("object_id", pa.string()), ("field", pa.string()), ("category", pa.string()), ("label", pa.int8()),
    ("x_mm", pa.float64()), ("y_mm", pa.float64()), ("z_mm", pa.float64()),
    ("depth_um", pa.float64()), ("n_prongs", pa.int16()), ("prong_lengths_um", pa.list_(pa.float64())),
    ("prong_azimuth_deg", pa.list_(pa.float64())), ("prong_dip_deg", pa.list_(pa.float64())),
    ("rn_displacement_um", pa.float64()),
    ("rn_dx_um", pa.float64()), ("rn_dy_um", pa.float64()), ("rn_dz_um", pa.float64()),
])
#: Segment kinds that are prongs ending in the emulsion (the black prongs a picker measures).
STOPPING = (PROTON, ALPHA, HEAVY)


def prongs_um(obj: SimObject, shrinkage: float) -> tuple[list[float], list[float], list[float]]:
    """Each stopping prong (:data:`STOPPING`) of ``obj`` as drawn (cut where it leaves the layer):
    undeveloped 3-D length (um; developed depth offsets times ``shrinkage``), azimuth in the
    stage's x, y (degrees from +x towards +y) and dip (degrees, positive towards the surface:
    higher stage z).

    Examples
    --------
    >>> from scanstream.simulate.objects import SimObject
    >>> ends = np.array([[3.0, 0.0, -2.0], [0.0, 0.0, 5.0]])
    >>> o = SimObject("t", 1, np.zeros((2, 3)), ends, np.array([ALPHA, MIP], np.int8),
    ...               np.zeros(2), np.zeros(2), np.zeros(2), np.zeros((0, 4)), 0.0, 10.0)
    >>> prongs_um(o, 2.0)
    ([5.0], [0.0], [53.13])
    """
    d = ((obj.ends - obj.starts) * np.array([1.0, 1.0, shrinkage]))[np.isin(obj.kinds, STOPPING)]
    length = np.linalg.norm(d, axis=1)
    azimuth = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    dip = np.degrees(np.arcsin(np.clip(-d[:, 2] / np.maximum(length, 1e-9), -1.0, 1.0)))
    return ([round(float(x), 3) for x in length], [round(float(x), 2) for x in azimuth],
            [round(float(x), 2) for x in dip])


@dataclass(frozen=True)
class VolumeSimConfig:
    """What :func:`simulate_volume` draws (lengths in um unless named _mm / _px)."""

    fields: int = 1
    seed: int = 0
    sheet: str = "SIMV"
    objects_per_field: int | None = None  # None: Poisson, REALISTIC_PER_MM2 x field area
    alpha_fraction: float | None = None  # None: REALISTIC_ALPHA_FRACTION
    field_px: int = FIELD_PX
    depth_um: float | None = None  # imaged depth from the surface; None: the whole layer
    beam_tracks: float = BEAM_TRACKS
    grey_tracks: float = GREY_TRACKS
    overlap_um: float | None = None  # None: each field its own scene; else the fields tile one sheet, overlapping

    def __post_init__(self) -> None:
        if self.fields < 1:
            raise InputError(f"--fields must be at least 1, got {self.fields}")
        if self.objects_per_field is not None and self.objects_per_field < 0:
            raise InputError(f"--objects-per-field must be >= 0, got {self.objects_per_field}")
        if self.alpha_fraction is not None and not 0.0 <= self.alpha_fraction <= 1.0:
            raise InputError(f"--alpha-fraction must be in [0, 1], got {self.alpha_fraction}")
        if self.field_px < 64 or self.field_px % 4:
            raise InputError(f"--field-px must be a multiple of 4, at least 64, got {self.field_px}")
        if self.depth_um is not None and not Z_STEP_UM * 2 <= self.depth_um:
            raise InputError(f"--depth-um must be at least {2 * Z_STEP_UM}, got {self.depth_um}")
        if self.overlap_um is not None and not 0.0 <= self.overlap_um < self.field_px * PIXEL_UM / 2:
            raise InputError(f"--overlap-um must be at least 0 and less than half the field "
                             f"({self.field_px * PIXEL_UM / 2:.1f} um), got {self.overlap_um}")

    @property
    def field_mm(self) -> float:
        return self.field_px * PIXEL_UM / 1000.0

    @property
    def pitch_mm(self) -> float:
        """The stage step between neighbouring fields: the field less the overlap."""
        return self.field_mm - (self.overlap_um or 0.0) / 1000.0


def _category(rng: np.random.Generator, alpha_fraction: float) -> str:
    if rng.random() < alpha_fraction:
        return "alpha_th" if rng.random() < TH_FRACTION else "alpha_u"
    names = list(VOLUME_CATEGORIES)
    w = np.array([VOLUME_CATEGORIES[n] for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _place_object(rng: np.random.Generator, cond: SheetConditions, category: str, depth_max: float) -> SimObject:
    """An object whose vertex lies in the imaged slab (redrawn when the slab is thinner than the layer)."""
    for _ in range(1000):
        obj = make_object(category, rng, cond)
        if Z_STEP_UM <= obj.depth <= depth_max - Z_STEP_UM or (category == "scratch" and obj.depth <= depth_max):
            return obj
    raise InputError(f"no {category} object with its vertex within {depth_max} um of the surface")


def crossing_tracks(rng: np.random.Generator, cond: SheetConditions, n_beam: int, n_grey: int,
                    half_um: float, thick: float) -> SimObject:
    """Unrelated tracks crossing the field (developed um, field frame, depth from the surface)."""
    starts, ends, kinds, ion = [], [], [], []
    for k in range(n_beam + n_grey):
        d = beam_direction(rng) if k < n_beam else isotropic_directions(rng, 1)[0]
        d_dev = np.array([d[0], d[1], d[2] / cond.shrinkage])
        p = np.array([rng.uniform(-half_um, half_um), rng.uniform(-half_um, half_um), rng.uniform(0.0, thick)])
        starts.append(p - d_dev * FAR_UM)
        ends.append(p + d_dev * FAR_UM)
        kinds.append(MIP if k < n_beam else GREY)
        ion.append(1.0 if k < n_beam else rng.uniform(1.5, 5.0))
    n = len(kinds)
    return SimObject(
        category="crossing", label=0, starts=np.array(starts).reshape(n, 3), ends=np.array(ends).reshape(n, 3),
        kinds=np.array(kinds, np.int8), residual_end=np.full(n, 1e4), ionisation=np.array(ion, float),
        widths=np.zeros(n), blobs=np.zeros((0, 4)), defocus=0.0, depth=0.0,
    )


def field_scene(config: VolumeSimConfig, cond: SheetConditions, rng: np.random.Generator, depths: np.ndarray):
    """Grains of one field and its objects: ((pos, sigma, opacity), [(object, x_um, y_um), ...])."""
    half = config.field_px * PIXEL_UM / 2
    thick = EMULSION_THICKNESS_UM / cond.shrinkage
    zlo, zhi = 0.0, min(thick, float(depths[-1]) + MAX_DEFOCUS_UM)
    af = REALISTIC_ALPHA_FRACTION if config.alpha_fraction is None else config.alpha_fraction
    n_obj = (int(rng.poisson(REALISTIC_PER_MM2 * (2 * half / 1000) ** 2)) if config.objects_per_field is None
             else config.objects_per_field)
    placed, parts = [], []
    for _ in range(n_obj):
        obj = _place_object(rng, cond, _category(rng, af), float(depths[-1]))
        x0, y0 = rng.uniform(-half + MARGIN_UM, half - MARGIN_UM, 2)
        pos, sig, opa = track_grains(obj, cond, rng, zlo - obj.depth, zhi - obj.depth,
                                     xy_lo=(-half - x0 - 4, -half - y0 - 4), xy_hi=(half - x0 + 4, half - y0 + 4))
        parts.append((pos + np.array([x0, y0, obj.depth]), sig, opa))
        placed.append((obj, float(x0), float(y0)))
    tracks = crossing_tracks(rng, cond, int(rng.poisson(config.beam_tracks)), int(rng.poisson(config.grey_tracks)),
                             half, thick)
    box = {"xy_lo": (-half - 4, -half - 4), "xy_hi": (half + 4, half + 4)}
    parts.append(track_grains(tracks, cond, rng, zlo, zhi, **box))
    parts.append(fog_grains(cond, rng, zlo, zhi, **box))
    pos = np.concatenate([p[0] for p in parts])
    sig = np.concatenate([p[1] for p in parts])
    opa = np.concatenate([p[2] for p in parts]) * cond.darkness
    return (pos, sig, opa), placed


def _info_json(config: VolumeSimConfig, cond: SheetConditions, x_mm: float, y_mm: float, n_planes: int) -> dict:
    return {
        "DocumentType": {"ver": "20170810", "unit": "mm"},
        "Stage": {"Location": "scanstream simulate-volume", "ID": 0, "Objective": 50},
        "EmulsionType": {"Experiment": "SIM", "Module": 0, "Plate": 0, "Sh": round(cond.shrinkage, 4)},
        "ImageType": {"Height": config.field_px, "Width": config.field_px, "Depth": 8},
        "Interval": [PIXEL_UM / 1000, PIXEL_UM / 1000, Z_STEP_UM / 1000],
        "Images": [{"Path": f"{k + 1:03d}.png", "x": x_mm, "y": y_mm, "z": round(-k * Z_STEP_UM / 1000, 6)}
                   for k in range(n_planes)],
    }


def plane_depths(config: VolumeSimConfig, cond: SheetConditions) -> np.ndarray:
    """Developed depth (um) of every focal plane, from the surface down through the imaged slab."""
    depth = EMULSION_THICKNESS_UM / cond.shrinkage if config.depth_um is None else config.depth_um
    return np.arange(math.floor(depth / Z_STEP_UM) + 1) * Z_STEP_UM


def _field_rng(config: VolumeSimConfig, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(objects, scene) generators of field ``index``: the objects' draw never depends on the rendering."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index, 0x501]))
    objects_rng, scene = rng.spawn(2)
    return objects_rng, scene


def _ncol(config: VolumeSimConfig) -> int:
    return max(1, math.ceil(math.sqrt(config.fields)))


def _field_origin_mm(config: VolumeSimConfig, index: int) -> tuple[float, float]:
    """Stage x, y (mm) of field ``index``'s centre: row by row, ``pitch_mm`` apart."""
    ncol = _ncol(config)
    return round((index % ncol) * config.pitch_mm, 6), round((index // ncol) * config.pitch_mm, 6)


def rn_vector(obj: SimObject) -> dict[str, float]:
    """Where an alpha decay's radon moved from the star's origin before it decayed (``rn_dx_um``,
    ``rn_dy_um``, ``rn_dz_um``: undeveloped um, stage x, y and z, z up towards the surface); zeros
    when it did not move, and for other objects. The truth vertex is the radon's point when it moved
    more than 1 um (:func:`scanstream.simulate.objects.make_alpha`), so the star's origin is then the
    vertex less this vector.

    Examples
    --------
    >>> from scanstream.simulate.objects import SimObject
    >>> o = SimObject("alpha_th", 1, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int8), np.zeros(0),
    ...               np.zeros(0), np.zeros(0), np.zeros((0, 4)), 0.0, 10.0, {"rn_vector_um": [1.5, -2.0, 0.5]})
    >>> rn_vector(o)
    {'rn_dx_um': 1.5, 'rn_dy_um': -2.0, 'rn_dz_um': -0.5}
    """
    dx, dy, dz = obj.truth.get("rn_vector_um", (0.0, 0.0, 0.0))
    return {"rn_dx_um": float(dx), "rn_dy_um": float(dy), "rn_dz_um": -float(dz) + 0.0}


def _truth_rows(config: VolumeSimConfig, cond: SheetConditions, index: int, placed: list) -> list[dict[str, Any]]:
    x_mm, y_mm = _field_origin_mm(config, index)
    name = f"F{index:04d}"
    rows = []
    for j, (obj, x0, y0) in enumerate(placed):
        rows.append({
            "object_id": f"{config.sheet}-{name}-{j:03d}", "field": name, "category": obj.category, "label": obj.label,
            "x_mm": x_mm + x0 / 1000, "y_mm": y_mm + y0 / 1000, "z_mm": -obj.depth / 1000,
            "depth_um": obj.depth, "n_prongs": int(obj.truth.get("n_prongs", 0)),
            **dict(zip(("prong_lengths_um", "prong_azimuth_deg", "prong_dip_deg"), prongs_um(obj, cond.shrinkage),
                       strict=True)),
            "rn_displacement_um": float(obj.truth.get("rn_displacement_um", 0.0)),
            **rn_vector(obj),
        })
    return rows


def _footprint(config: VolumeSimConfig, i: int) -> Footprint:
    px_mm = PIXEL_UM / 1000.0
    return Footprint(str(i), i, _field_origin_mm(config, i), (px_mm, 0.0, 0.0, px_mm), (config.field_px,) * 2)


def _neighbours(config: VolumeSimConfig, index: int) -> list[int]:
    """Field ``index`` and the fields around it (the 3 x 3 block of the grid), in index order."""
    ncol = _ncol(config)
    r, c = divmod(index, ncol)
    return [rr * ncol + cc for rr in (r - 1, r, r + 1) for cc in (c - 1, c, c + 1)
            if rr >= 0 and 0 <= cc < ncol and rr * ncol + cc < config.fields]


def _sheet_rng(config: VolumeSimConfig, index: int) -> tuple[np.random.Generator, ...]:
    """(objects, grains, scene) generators of the sheet's field ``index`` (``overlap_um`` set)."""
    return tuple(np.random.default_rng(np.random.SeedSequence([config.seed, index, 0x5EE7])).spawn(3))


def _owns(config: VolumeSimConfig, index: int, xy_um: np.ndarray) -> np.ndarray:
    """bool (n,): which points x, y (n, 2) um from field ``index``'s centre it owns (:mod:`scanstream.picker.overlap`)."""
    own = _footprint(config, index)
    near = [_footprint(config, i) for i in _neighbours(config, index)]  # the only fields that can overlap it
    return owned(np.asarray(xy_um, float).reshape(-1, 2) / 1000.0 + own.centre_mm, own, near)


def sheet_objects(config: VolumeSimConfig, cond: SheetConditions, index: int, depths: np.ndarray) -> list:
    """The objects field ``index`` owns when the fields tile one sheet: [(object, x_um, y_um), ...], x, y
    from its centre, anywhere in its owned region (at and across its image's edges where it overlaps
    none). ``objects_per_field`` of them, or the realistic density's Poisson number over the region."""
    rng = _sheet_rng(config, index)[0]
    half = config.field_px * PIXEL_UM / 2
    af = REALISTIC_ALPHA_FRACTION if config.alpha_fraction is None else config.alpha_fraction
    if config.objects_per_field is None:
        xy = rng.uniform(-half, half, (int(rng.poisson(REALISTIC_PER_MM2 * (2 * half / 1000) ** 2)), 2))
        xy = xy[_owns(config, index, xy)]
    else:
        xy = np.empty((0, 2))
        while len(xy) < config.objects_per_field:  # the owned region is at least a quarter of the image
            cand = rng.uniform(-half, half, (config.objects_per_field, 2))
            xy = np.concatenate([xy, cand[_owns(config, index, cand)]])[: config.objects_per_field]
    return [(_place_object(rng, cond, _category(rng, af), float(depths[-1])), float(x), float(y)) for x, y in xy]


def sheet_grains(config: VolumeSimConfig, cond: SheetConditions, index: int, depths: np.ndarray, placed: list):
    """Grains (pos, sigma, opacity) of what field ``index`` owns (its objects, the crossing tracks through
    its region and its fog), x, y um from its centre: every grain its neighbours' images can show."""
    rng = _sheet_rng(config, index)[1]
    half = config.field_px * PIXEL_UM / 2
    reach = config.pitch_mm * 1000 + half + 4  # the neighbours' images, and the 4 um a blurred grain spreads
    thick = EMULSION_THICKNESS_UM / cond.shrinkage
    zlo, zhi = 0.0, min(thick, float(depths[-1]) + MAX_DEFOCUS_UM)
    parts = []
    for obj, x0, y0 in placed:
        pos, sig, opa = track_grains(obj, cond, rng, zlo - obj.depth, zhi - obj.depth,
                                     xy_lo=(-reach - x0, -reach - y0), xy_hi=(reach - x0, reach - y0))
        parts.append((pos + np.array([x0, y0, obj.depth]), sig, opa))
    tracks = crossing_tracks(rng, cond, int(rng.poisson(config.beam_tracks)), int(rng.poisson(config.grey_tracks)),
                             half, thick)
    mine = _owns(config, index, (tracks.starts[:, :2] + tracks.ends[:, :2]) / 2)
    tracks = replace(tracks, **{k: getattr(tracks, k)[mine] for k in
                                ("starts", "ends", "kinds", "residual_end", "ionisation", "widths")})
    parts.append(track_grains(tracks, cond, rng, zlo, zhi, xy_lo=(-reach, -reach), xy_hi=(reach, reach)))
    fog = fog_grains(cond, rng, zlo, zhi, xy_lo=(-half, -half), xy_hi=(half, half))
    mine = _owns(config, index, fog[0][:, :2])
    parts.append(tuple(a[mine] for a in fog))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


class SheetCells:
    """Each field's objects and grains, drawn once (``overlap_um`` set): a field's image shows its
    neighbours' too. Cells no later field needs are dropped (:meth:`drop_before`)."""

    def __init__(self, config: VolumeSimConfig, cond: SheetConditions) -> None:
        self.config, self.cond = config, cond
        self.depths = plane_depths(config, cond)
        self._cells: dict[int, tuple[list, tuple]] = {}

    def __getitem__(self, index: int) -> tuple[list, tuple]:
        if index not in self._cells:
            placed = sheet_objects(self.config, self.cond, index, self.depths)
            self._cells[index] = placed, sheet_grains(self.config, self.cond, index, self.depths, placed)
        return self._cells[index]

    def drop_before(self, index: int) -> None:
        for k in [k for k in self._cells if k < index]:
            del self._cells[k]

    def field_grains(self, index: int):
        """Grains (pos, sigma, opacity x darkness) on field ``index``'s image, x, y um from its centre."""
        half = self.config.field_px * PIXEL_UM / 2
        cx, cy = _field_origin_mm(self.config, index)
        parts = []
        for j in _neighbours(self.config, index):
            pos, sig, opa = self[j][1]
            jx, jy = _field_origin_mm(self.config, j)
            pos = pos + np.array([(jx - cx) * 1000, (jy - cy) * 1000, 0.0])
            keep = (np.abs(pos[:, 0]) <= half + 4) & (np.abs(pos[:, 1]) <= half + 4)
            parts.append((pos[keep], sig[keep], opa[keep]))
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(2)) + (
            np.concatenate([p[2] for p in parts]) * self.cond.darkness,)


def write_field(folder: Path, index: int, config: VolumeSimConfig, cond: SheetConditions,
                cells: SheetCells | None = None) -> list[dict[str, Any]]:
    """Render field ``index`` into ``folder`` (PNG planes + info.json); its truth rows. With ``overlap_um``
    set, ``cells`` keeps the sheet's cells between fields (a new one when not given)."""
    depths = plane_depths(config, cond)
    if config.overlap_um is None:
        objects_rng, scene = _field_rng(config, index)
        grains, placed = field_scene(config, cond, objects_rng, depths)
    else:
        cells = SheetCells(config, cond) if cells is None else cells
        scene = _sheet_rng(config, index)[2]
        grains, placed = cells.field_grains(index), cells[index][0]
    planes = render_planes(*grains, depths, cond, scene, shape=(config.field_px, config.field_px), pixel_um=PIXEL_UM)
    info = _info_json(config, cond, *_field_origin_mm(config, index), len(depths))
    for k, im in enumerate(info["Images"]):
        Image.fromarray(planes[k]).save(folder / im["Path"], compress_level=1)
    write_json(folder / "info.json", info)
    return _truth_rows(config, cond, index, placed)


def redraw_truth(out_dir: str | os.PathLike) -> pa.Table:
    """The truth table of the simulated volume ``out_dir``, drawn again from the seed, configuration and
    conditions its truth.parquet records, without rendering: every column of :data:`TRUTH_SCHEMA`
    for a volume written before a column was added (the scene's draw does not depend on the images).

    Raises
    ------
    InputError
        ``out_dir`` is not a simulated volume, or the redrawn objects are not its recorded ones.
    """
    out_dir = Path(out_dir)
    if not _is_simulated_volume(out_dir):
        raise InputError(f"{out_dir}: not a simulated volume (no truth.parquet written by simulate-volume)")
    recorded = pq.read_table(out_dir / "truth.parquet")
    meta = json.loads(recorded.schema.metadata[b"scanstream"])
    config = VolumeSimConfig(**meta["config"])
    cond = SheetConditions(**meta["conditions"])
    rows = []
    depths = plane_depths(config, cond)
    for i in range(config.fields):
        placed = (field_scene(config, cond, _field_rng(config, i)[0], depths)[1] if config.overlap_um is None
                  else sheet_objects(config, cond, i, depths))
        rows += _truth_rows(config, cond, i, placed)
    table = pa.Table.from_pylist(rows, schema=TRUTH_SCHEMA)
    if table.column("object_id").to_pylist() != recorded.column("object_id").to_pylist() or not np.allclose(
            table.column("x_mm").to_numpy(), recorded.column("x_mm").to_numpy()):
        raise InputError(f"{out_dir}: the objects drawn again differ from the recorded truth (drawn by another version)")
    return table


def _is_simulated_volume(path: Path) -> bool:
    """Whether ``path`` holds what :func:`simulate_volume` writes (a truth table with its metadata)."""
    try:
        meta = pq.read_schema(path / "truth.parquet").metadata or {}
    except (OSError, pa.ArrowInvalid):
        return False
    return b"scanstream" in meta


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """An existing non-empty ``out_dir`` is replaced only when asked and only if it is a simulated volume."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not _is_simulated_volume(out_dir):
        raise InputError(f"{out_dir}: exists and is not a simulated volume; choose another folder")
    if not overwrite:
        raise InputError(f"{out_dir}: a simulated volume exists (use --overwrite to replace it)")


def simulate_volume(
    out_dir: str | os.PathLike,
    config: VolumeSimConfig,
    *,
    conditions: SheetConditions | Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool | Progress | None = None,
) -> pa.Table:
    """Write the simulated volume ``out_dir`` (module docstring); returns the truth table.

    Raises
    ------
    InputError
        ``out_dir`` exists (without ``overwrite``) or a bad configuration.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir, overwrite)
    cond = resolve_conditions(config.sheet, config.seed, conditions=conditions)
    bar = as_progress(progress)(config.fields, f"simulate-volume {out_dir.name}", "field")
    rows: list[dict[str, Any]] = []
    cells = SheetCells(config, cond) if config.overlap_um is not None else None
    try:
        with atomic_dir(out_dir) as tmp:
            for i in range(config.fields):
                folder = tmp / f"F{i:04d}"
                folder.mkdir()
                rows.extend(write_field(folder, i, config, cond, cells))
                if cells is not None:
                    cells.drop_before(i + 1 - _ncol(config) - 1)  # the next field's neighbours stay
                bar.update(1)
            table = pa.Table.from_pylist(rows, schema=TRUTH_SCHEMA)
            # overlap_um only where set: a volume drawn as before records what it recorded before
            meta = {"sheet": config.sheet, "seed": config.seed, "conditions": cond.as_dict(),
                    "config": {k: v for k, v in vars(config).items() if k != "overlap_um" or v is not None}}
            write_parquet(tmp / "truth.parquet", table.replace_schema_metadata({"scanstream": json.dumps(meta, sort_keys=True)}))
    finally:
        bar.close()
    return table

