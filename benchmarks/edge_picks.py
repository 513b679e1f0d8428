#!/usr/bin/env python
"""Stars at a field's edge: the picker's efficiency near field edges, and its duplicates across fields.

For every seed and every overlap of ``--overlaps`` (um between neighbouring fields,
``simulate-volume --overlap-um``; ``none``: each field its own scene, objects 10 um inside its
edges, as ``simulate-volume`` draws without the flag), a volume is drawn and ingested (kept in
``--work`` as ``sim<seed>-<overlap>/`` and ``v<seed>-<overlap>.zarr`` and reused), every field's
vertices are detected as ``scanstream pick`` detects them, and each field keeps those it owns
(:mod:`scanstream.picker.overlap`). Per overlap:

* the true alpha decays in three classes: ``outer`` (within ``--edge-um`` of the scanned area's
  outline, where no neighbour can help), ``edge`` (within ``--edge-um`` of an edge of a field's
  image that shows it, inside the scanned area) and ``interior``; the efficiency of each (a
  vertex within 2 um in x, y and 3 um in depth: :func:`scanstream.picker.accuracy.decay_matches`),
  with the ownership rule and with every field's vertices kept (``without_rule``);
* vertices, fake vertices, and **cross-field duplicates**: vertices with a vertex of another
  field within 8 um in 3-D, with and without the rule.

Usage::

    python benchmarks/edge_picks.py --work DIR --seeds 210,211 --overlaps 0,30 [--fields 12]
        [--objects-per-field 8] [--alpha-fraction 0.5] [--edge-um 25] [--out FILE.json]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from scanstream import atomic
from scanstream.picker import accuracy as acc
from scanstream.picker.detect import DetectParams
from scanstream.picker.overlap import Footprint, footprints, neighbourhoods, owned
from scanstream.picker.pick import detect_field
from scanstream.simulate.pickpool import simulated_volume
from scanstream.simulate.volume import VolumeSimConfig

CLASSES = ("interior", "edge", "outer")


def draw(work: Path, seed: int, overlap: float | None, args: argparse.Namespace):
    """(volume store, truth rows) of ``seed`` at ``overlap``, drawn and ingested once under ``work``."""
    tag = "none" if overlap is None else f"{overlap:g}"
    cfg = VolumeSimConfig(fields=args.fields, seed=seed, objects_per_field=args.objects_per_field,
                          alpha_fraction=args.alpha_fraction, field_px=args.field_px, depth_um=args.depth_um,
                          overlap_um=overlap)
    return simulated_volume(work / f"sim{seed}-{tag}", work / f"v{seed}-{tag}.zarr", cfg)


def _box(fp: Footprint) -> tuple[float, float, float, float]:
    """x0, x1, y0, y1 (mm) of an axis-aligned footprint's image."""
    hx, hy = fp.half_extent_mm()
    return fp.centre_mm[0] - hx, fp.centre_mm[0] + hx, fp.centre_mm[1] - hy, fp.centre_mm[1] + hy


def edge_class(x_mm: float, y_mm: float, fps: tuple[Footprint, ...], edge_um: float) -> str:
    """``outer``, ``edge`` or ``interior`` (module docstring) for a point of the scanned area of ``fps``."""
    boxes = [_box(f) for f in fps]
    outline = (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))
    if min(x_mm - outline[0], outline[1] - x_mm, y_mm - outline[2], outline[3] - y_mm) * 1000 < edge_um:
        return "outer"
    # distances to the edges of the images that show the point, the outline's own edges left out
    inner = [d for b in boxes if b[0] <= x_mm <= b[1] and b[2] <= y_mm <= b[3]
             for d, e, o in ((x_mm - b[0], b[0], outline[0]), (b[1] - x_mm, b[1], outline[1]),
                             (y_mm - b[2], b[2], outline[2]), (b[3] - y_mm, b[3], outline[3]))
             if abs(e - o) > 1e-6]
    return "edge" if inner and min(inner) * 1000 < edge_um else "interior"


def cross_field(pos: np.ndarray, field: np.ndarray, within_um: float = 8.0) -> int:
    """How many vertices (n, 3) mm have a vertex of another field within ``within_um`` in 3-D."""
    if len(pos) < 2:
        return 0
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1) * 1000
    return int(((d < within_um) & (field[:, None] != field[None, :])).any(axis=1).sum())


def detect_all(volume, params: DetectParams):
    """Every field's vertices: stage positions (n, 3) mm, multiplicities, field index, and whether its field owns it."""
    fps = footprints(volume)
    near = neighbourhoods(fps)
    pos, mult, field, keep = [], [], [], []
    for i, f in enumerate(volume):
        found, _ = detect_field(f, f.read(), params)
        xy = np.array([f.pixel_to_stage(v.z, v.y, v.x) for v in found], float).reshape(-1, 3)
        pos.append(xy)
        mult += [v.multiplicity for v in found]
        field += [i] * len(found)
        keep.append(owned(xy[:, :2], near[f.name][0], near[f.name]))
    return np.concatenate(pos), np.array(mult, int), np.array(field, int), np.concatenate(keep), fps


def overlap_summary(work: Path, seeds: list[int], overlap: float | None, args: argparse.Namespace) -> dict:
    counts = {rule: {c: [0, 0] for c in CLASSES} for rule in ("with_rule", "without_rule")}
    out = {"vertices": 0, "vertices_without_rule": 0, "cross_field_duplicates": 0,
           "cross_field_duplicates_without_rule": 0, "fake_vertices": 0, "fields": 0}
    for seed in seeds:
        volume, truth = draw(work, seed, overlap, args)
        pos, mult, field, keep, fps = detect_all(volume, DetectParams())
        decays = [r for r in truth if r["label"] == 1]
        cls = [edge_class(r["x_mm"], r["y_mm"], fps, args.edge_um) for r in decays]
        for rule, sel in (("with_rule", keep), ("without_rule", np.ones(len(pos), bool))):
            for c, m in zip(cls, acc.decay_matches(pos[sel], mult[sel], truth), strict=True):
                counts[rule][c][0] += 1
                counts[rule][c][1] += int(m["picked"])
        out["fields"] += len(volume)
        out["vertices"] += int(keep.sum())
        out["vertices_without_rule"] += len(pos)
        out["cross_field_duplicates"] += cross_field(pos[keep], field[keep])
        out["cross_field_duplicates_without_rule"] += cross_field(pos, field)
        out["fake_vertices"] += int(acc.fake_vertices(pos[keep], truth).sum())
    for rule, by_class in counts.items():
        out[rule] = {}
        for c, (n, k) in by_class.items():
            eff = k / n if n else None
            out[rule][c] = {"alpha_decays": n, "picked": k, "efficiency": None if eff is None else round(eff, 4),
                            "error": None if eff is None else round(math.sqrt(eff * (1 - eff) / n), 4)}
    return out


def _overlap(p: argparse.ArgumentParser, text: str) -> float | None:
    if text.strip() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        p.error(f"--overlaps {text!r}: expected numbers (um) or 'none', separated by commas")
        raise  # p.error exits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="keeps the simulated volumes and their stores (reused)")
    p.add_argument("--seeds", default="210,211", help="seeds, separated by commas")
    p.add_argument("--overlaps", default="0,30", help="overlaps (um) or 'none', separated by commas")
    p.add_argument("--fields", type=int, default=12, help="fields per volume")
    p.add_argument("--objects-per-field", type=int, default=8)
    p.add_argument("--alpha-fraction", type=float, default=0.5)
    p.add_argument("--field-px", type=int, default=1024)
    p.add_argument("--depth-um", type=float, default=None, help="image a thinner slab (tests)")
    p.add_argument("--edge-um", type=float, default=25.0, help="'near an edge': within this distance (um)")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected integers separated by commas")
    overlaps = [_overlap(p, t) for t in args.overlaps.split(",") if t.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    doc = {"seeds": seeds, "edge_um": args.edge_um,
           "volumes": {"fields": args.fields, "objects_per_field": args.objects_per_field,
                       "alpha_fraction": args.alpha_fraction, "field_px": args.field_px},
           "overlaps": {("none" if o is None else f"{o:g}"): overlap_summary(args.work, seeds, o, args) for o in overlaps}}
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(doc, indent=1)
    if args.out:
        atomic.write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
