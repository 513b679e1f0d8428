#!/usr/bin/env python
"""From micrographs to candidates in one command: z-stacks -> volume store -> picked crops -> candidate table.

Usage::

    python pipelines/micrographs.py STACKS --out OUT [--model CKPT ...] [--threshold T.json] [--scheduler ADDR]
    python pipelines/micrographs.py --simulate-fields 4 --out OUT          # simulated stacks with truth

Stages (each resumes: the stores are resumable and a finished candidate table is kept):

1. (``--simulate-fields N``) ``simulate-volume``: OUT/stacks/ with truth.parquet;
2. ``ingest --format stack``: STACKS (info.json or image.json z-stacks) -> OUT/volume.zarr;
3. ``pick``: OUT/volume.zarr -> OUT/picked.zarr (crops + multiplicity, prong lengths, stage positions);
4. ``classify``: OUT/picked.zarr -> OUT/candidates (by default the shipped cascade fine-tuned on
   ``pick``'s vertices, models/scanstream-cpu-cascade-pick.safetensors).

Prints a JSON summary; with simulated stacks, also how many of the simulation's alpha decays
were picked (within 2 um in x, y and one z-step) and how many of them rank in the top
candidates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scanstream.candidates.table import read_candidates
from scanstream.errors import ScanstreamError
from scanstream.inference.classify import classify
from scanstream.ingest.stacks import ingest_stacks
from scanstream.picker.pick import pick_volume
from scanstream.simulate.volume import VolumeSimConfig, simulate_volume

#: the shipped cascade fine-tuned on what ``pick`` measures (models/README.md); the scanner-path
#: cascade (scanstream-cpu-cascade.safetensors) passes more of pick's fake vertices (docs/recipe.md)
MODEL = Path(__file__).resolve().parents[1] / "models" / "scanstream-cpu-cascade-pick.safetensors"


def truth_summary(truth_path: Path, picked: Path, candidates: Path) -> dict:
    """Alpha decays of the simulation: picked, and their ranks among the candidates."""
    truth = [r for r in pq.read_table(truth_path).to_pylist() if r["label"] == 1]
    rows = pq.read_table(picked / "objects.parquet", columns=["object_id", "x_mm", "y_mm", "z_mm"]).to_pylist()
    cand = {r["object_id"]: r["rank"] for r in read_candidates(candidates, columns=["object_id", "rank"]).to_pylist()}
    pos = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in rows]).reshape(-1, 3)
    ranks = []
    for t in truth:
        if not len(pos):
            continue
        d = np.hypot(pos[:, 0] - t["x_mm"], pos[:, 1] - t["y_mm"]) * 1000
        ok = (d <= 2.0) & (np.abs(pos[:, 2] - t["z_mm"]) * 1000 <= 3.0)
        if ok.any():
            ranks.append(min(cand.get(rows[i]["object_id"], 10**9) for i in np.flatnonzero(ok)))
    return {"alpha_decays": len(truth), "alpha_picked": len(ranks), "objects_picked": len(rows),
            "alpha_ranks": sorted(ranks)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stacks", type=Path, nargs="?", help="z-stack folder(s) (omit with --simulate-fields)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--simulate-fields", type=int, default=None, metavar="N", help="simulate N fields instead")
    p.add_argument("--objects-per-field", type=int, default=6, help="with --simulate-fields (default 6)")
    p.add_argument("--alpha-fraction", type=float, default=0.5, help="with --simulate-fields (default 0.5)")
    p.add_argument("--field-px", type=int, default=1024, help="with --simulate-fields (default 1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, nargs="+", default=[MODEL])
    p.add_argument("--threshold", type=Path, default=None, help="a threshold record (default: none, ranks only)")
    p.add_argument("--scheduler", default=None, help="an existing Dask scheduler")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        stacks = args.stacks
        if args.simulate_fields:
            stacks = args.out / "stacks"
            if not (stacks / "truth.parquet").exists():
                simulate_volume(stacks, VolumeSimConfig(fields=args.simulate_fields, seed=args.seed,
                                                        objects_per_field=args.objects_per_field,
                                                        alpha_fraction=args.alpha_fraction,
                                                        field_px=args.field_px), progress=True)
        if stacks is None:
            p.error("give STACKS or --simulate-fields N")
        ingest_stacks(stacks, args.out / "volume.zarr")
        picked = pick_volume(args.out / "volume.zarr", args.out / "picked.zarr", scheduler=args.scheduler,
                             workers=args.workers, progress=True)
        result = classify([args.out / "picked.zarr"], list(args.model), args.out / "candidates",
                          threshold=args.threshold, scheduler=args.scheduler, workers=args.workers, device="cpu")
    except ScanstreamError as exc:
        print(f"micrographs: error: {exc}", file=sys.stderr)
        return 2
    out = {"picked": picked.summary(), "candidates": str(args.out / "candidates"),
           "classified": result.rows, "seconds": round(time.perf_counter() - t0, 1)}
    if (stacks / "truth.parquet").exists():
        out["truth"] = truth_summary(stacks / "truth.parquet", args.out / "picked.zarr", args.out / "candidates")
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
