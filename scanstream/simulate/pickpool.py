"""Labelled crop stores whose objects and features come from ``scanstream pick`` on simulated volumes.

The pools of :mod:`scanstream.simulate.pool` hold a crop centred on every true object's exact
vertex, with the features of the simulated picker. A user who starts from micrographs meets
something else: ``pick``'s vertices are measured a micrometre or two off, stars lose or gain a
prong, a star is reported twice, and fog, crossing tracks and blur make vertices where there is no
object at all (docs/recipe.md, "End to end from micrographs"). A model trained only on the first
kind passes many of those. This module makes training data of the second kind:

1. one simulated volume per seed (``simulate-volume``'s fields of view, the sheet ``PP<seed>``,
   its development and optics drawn from ``draw``'s ranges, objects denser than a real sheet's
   and alpha decays enriched);
2. ingested (``ingest --format stack``) and picked field by field
   (:func:`scanstream.picker.pick.pick_field`: its crops and its measured features);
3. every picked vertex labelled against the volume's truth (:func:`scanstream.picker.accuracy.vertex_sources`):
   1 when a true alpha-decay vertex lies within 2 um in x, y and 3 um in depth, 0 for the other
   objects, the fakes and the second vertices of a star; its source in ``category``.

One store per seed is kept under the work folder (a rerun keeps the finished ones); the volume
itself is deleted once picked. :func:`merge_stores` then joins per-seed stores (and, for
fine-tuning, a sample of a simulated pool) into one training store, leaving out the ambiguous
vertices 2-5 um from a decay (``dup_near``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scanstream.errors import InputError
from scanstream.ingest.stacks import ingest_stacks
from scanstream.picker.accuracy import MatchRadii, vertex_sources
from scanstream.picker.overlap import footprints, neighbourhoods
from scanstream.picker.pick import pick_field
from scanstream.simulate.conditions import draw_conditions
from scanstream.simulate.dataset import map_processes
from scanstream.simulate.volume import TRUTH_SCHEMA, VolumeSimConfig, redraw_truth, simulate_volume
from scanstream.store import CropStore, is_store, is_volume, open_store, open_volume
from scanstream.store.volume import Volume
from scanstream.store.writer import StoreWriter

#: what training leaves out: vertices 2-5 um from an alpha decay (its own vertex measured off, or a
#: second one beside it), neither clearly the star nor clearly not
AMBIGUOUS = ("dup_near",)
TRAINING_RADII = MatchRadii(near_um=5.0)


def simulated_volume(sim: str | os.PathLike, vol: str | os.PathLike, cfg: VolumeSimConfig) -> tuple[Volume, list[dict[str, Any]]]:
    """The volume store ``vol`` of the simulated fields ``sim``, and their truth rows, each made once
    and kept: drawn with ``cfg`` only where ``sim`` holds no truth, ingested only where ``vol`` is no
    volume store. Truth written before a column of :data:`~scanstream.simulate.volume.TRUTH_SCHEMA`
    was recorded is drawn again without rendering (:func:`~scanstream.simulate.volume.redraw_truth`)."""
    sim, vol = Path(sim), Path(vol)
    if not (sim / "truth.parquet").exists():
        simulate_volume(sim, cfg, overwrite=True)
    if not is_volume(vol):
        ingest_stacks(sim, vol)
    truth = pq.read_table(sim / "truth.parquet")
    if not set(TRUTH_SCHEMA.names) <= set(truth.column_names):
        truth = redraw_truth(sim)
    return open_volume(vol), truth.to_pylist()


def picked_volume_store(seed: int, *, work: str | os.PathLike, fields: int, objects_per_field: int,
                        alpha_fraction: float, draw: str = "wide") -> dict[str, Any]:
    """Simulate, ingest and pick the volume of ``seed`` into ``work``/pp<seed>.zarr, labelled.

    Returns the store's counts by source (``{"seed": .., "store": .., <source>: n, ...}``); a
    finished store is kept and only counted.
    """
    work = Path(work)
    sheet, out = f"PP{seed}", work / f"pp{seed}.zarr"
    if not (is_store(out) and open_store(out, require_complete=False).complete):
        sim, vol = work / f"sim{seed}", work / f"v{seed}.zarr"
        cfg = VolumeSimConfig(fields=fields, seed=seed, sheet=sheet, objects_per_field=objects_per_field,
                              alpha_fraction=alpha_fraction)
        truth = simulate_volume(sim, cfg, conditions=draw_conditions(sheet, seed, draw=draw), overwrite=True).to_pylist()
        shutil.rmtree(vol, ignore_errors=True)
        ingest_stacks(sim, vol)
        source = {"stage": "pick pool", "seed": seed, "sheet": sheet, "draw": draw, "fields": fields,
                  "objects_per_field": objects_per_field, "alpha_fraction": alpha_fraction}
        with StoreWriter(out, source=source, overwrite=True) as w:
            volume = open_volume(vol)
            near = neighbourhoods(footprints(volume))  # as scanstream pick keeps vertices where fields overlap
            for fov in volume:
                res = pick_field(fov, sheet, fields=near.get(fov.name, ()))
                if res.rows:
                    w.append(res.crops, label_rows(res.rows, truth))
        shutil.rmtree(sim)
        shutil.rmtree(vol)
    cats = open_store(out).table.column("category").to_pylist()
    return {"seed": seed, "store": str(out), **{c: cats.count(c) for c in sorted(set(cats))}}


def label_rows(rows: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``pick``'s object rows with ``label`` (1: an alpha decay) and ``category`` (the source) set."""
    picked = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in rows], dtype=float).reshape(-1, 3)
    src = vertex_sources(picked, truth, TRAINING_RADII)
    return [{**r, "label": int(s == "alpha"), "category": str(s)} for r, s in zip(rows, src, strict=True)]


def pick_pool(work: str | os.PathLike, seeds: Sequence[int], *, fields: int, objects_per_field: int,
              alpha_fraction: float, draw: str = "wide", workers: int = 1) -> list[dict[str, Any]]:
    """:func:`picked_volume_store` for every seed, ``workers`` volumes at a time; counts per seed."""
    if not seeds:
        raise InputError("a pick pool needs at least one volume seed")
    Path(work).mkdir(parents=True, exist_ok=True)
    kw = {"fields": fields, "objects_per_field": objects_per_field, "alpha_fraction": alpha_fraction, "draw": draw}
    return map_processes(picked_volume_store, list(seeds), workers=workers, work=work, **kw)


def merge_stores(out: str | os.PathLike, parts: Sequence[tuple[CropStore, np.ndarray | None]], *,
                 drop: Sequence[str] = AMBIGUOUS, source: Mapping[str, Any] | None = None) -> CropStore:
    """One crop store of the rows of ``parts`` ((store, row indices or None for all), in order).

    The columns are the first store's (the others are cast to them, a nullable column they lack
    filled with nulls: a simulated pool has no ``pick_field``); rows whose ``category`` is in
    ``drop`` are left out. Written whole or not at all (:class:`StoreWriter`).
    """
    if not parts:
        raise InputError(f"{out}: nothing to merge")
    schema = parts[0][0].table.schema
    with StoreWriter(out, source=dict(source or {"stage": "merge"}), overwrite=True) as w:
        for store, rows in parts:
            table = _conform(store, schema, parts[0][0].path)
            idx = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
            cats = np.array(table.column("category").to_pylist(), dtype=object)[idx]
            idx = idx[~np.isin(cats, list(drop))]
            for a in range(0, len(idx), 512):
                block = idx[a:a + 512]
                w.append(store.read_rows(block), table.take(pa.array(block)))
    return open_store(out)


def _conform(store: CropStore, schema: pa.Schema, first: Any) -> pa.Table:
    """``store``'s object table with ``schema``'s columns, in order and of its types."""
    t, cols = store.table, []
    for f in schema:
        if f.name in t.schema.names:
            cols.append(t.column(f.name).cast(f.type))
        elif f.nullable:
            cols.append(pa.nulls(len(t), f.type))
        else:
            raise InputError(f"{store.path}: lacks the column {f.name!r} of {first}")
    return pa.Table.from_arrays(cols, schema=schema)
