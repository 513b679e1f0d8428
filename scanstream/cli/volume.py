"""``scanstream simulate-volume``: simulated fields of view as the scanner writes them, with truth."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scanstream.cli._common import print_json
from scanstream.cli.simulate import _add_condition_flags, _overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate-volume",
        help="simulated z-stacks (info.json + PNG planes) with truth, for ingest / pick / classify",
        description="Simulate fields of view of one emulsion sheet as the scanner writes them: per field "
        "DIR/F0000/ with info.json and one 8-bit PNG per focal plane (0.283 um/px, 3 um steps through the "
        "emulsion layer), holding the simulator's objects (alpha stars and backgrounds) at known positions, "
        "tracks crossing the field and fog; DIR/truth.parquet lists every object (object_id, field, "
        "category, label, x_mm, y_mm, z_mm of the vertex in stage coordinates). Then: scanstream ingest "
        "DIR V.zarr --format stack; scanstream pick V.zarr --out CROPS.zarr.",
    )
    p.add_argument("out_dir", type=Path, help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--fields", type=int, required=True, help="fields of view")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--sheet", default="SIMV", help="sheet name (object ids SHEET-F0000-000; default SIMV)")
    p.add_argument("--objects-per-field", type=int, default=None,
                   help="objects per field (default: Poisson, the paper's 18.8 per mm2: about 1.6 a field)")
    p.add_argument("--alpha-fraction", type=float, default=None,
                   help="fraction of alpha decays among the objects (default 1:184, the paper's TEST sheet)")
    p.add_argument("--field-px", type=int, default=1024, help="field width and height in pixels (default 1024)")
    p.add_argument("--depth-um", type=float, default=None,
                   help="image only this depth from the surface (developed um; default the whole layer)")
    p.add_argument("--overlap-um", type=float, default=None,
                   help="draw the fields as one sheet, neighbouring fields overlapping by this much (um; 0: edge to "
                   "edge); objects then lie anywhere, at and across field edges, and each is listed once, under "
                   "the field nearest it (default: each field its own scene, objects 10 um inside its edges)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_condition_flags(p)
    p.set_defaults(func=run_simulate_volume)


def run_simulate_volume(args: argparse.Namespace) -> int:
    from scanstream.simulate.volume import VolumeSimConfig, simulate_volume

    config = VolumeSimConfig(fields=args.fields, seed=args.seed, sheet=args.sheet,
                             objects_per_field=args.objects_per_field, alpha_fraction=args.alpha_fraction,
                             field_px=args.field_px, depth_um=args.depth_um, overlap_um=args.overlap_um)
    t0 = time.perf_counter()
    table = simulate_volume(args.out_dir, config, conditions=_overrides(args), overwrite=args.overwrite,
                            progress=not args.no_progress)
    cats: dict[str, int] = {}
    for c in table.column("category").to_pylist():
        cats[c] = cats.get(c, 0) + 1
    print_json({"path": str(args.out_dir), "fields": args.fields, "objects": table.num_rows,
                "alpha": sum(table.column("label").to_pylist()), "categories": cats,
                "seconds": round(time.perf_counter() - t0, 1)})
    return 0
