"""Picking against classifying, side by side in one run, and the picker's quality on simulated volumes.

One run: ``simulate-volume`` writes fields of view with truth, ``ingest --format stack`` makes
the volume store, then in this process, one after the other on the same machine:

* **reading** every field's planes alone (zarr, zstd): the floor under any picker that looks
  at every plane of every field, and the ratio picking would reach if detecting were free;
* **picking** (:func:`scanstream.picker.pick.pick_field` on every field: read the planes,
  detect, crop): fields/s and objects (vertices) / s;
* **classifying** the same picked objects with the shipped model
  (:func:`scanstream.inference.scoring.score_store`, ``models/scanstream-cpu-cascade.safetensors``):
  crops/s (loading the model included: with about 130 crops, 0.4-0.7 s, so this rate and the
  ratio vary by half from run to run); the ratio of the two rates is the point of the benchmark
  (is the picker or the classifier the bottleneck?). Torch gets ``--threads`` threads; the picker is single-threaded
  numpy / scipy, so the default (1) compares one core with one core.

Quality against the truth (``truth.parquet``):

* alpha-decay efficiency: alpha decays with a picked vertex within ``--xy-um`` (2 um) in x, y and
  one z-step (3 um) in z, with its binomial error;
* vertex-like objects per alpha decay: picked vertices / alpha decays in the volume;
* fake vertices per field: picked vertices farther than ``--fake-xy-um`` (5 um) in x, y or two
  z-steps from every simulated object's vertex (crossings of the field's beam tracks, pieces of
  a star counted twice, fog), per field;
* the fraction of each category that was picked (same matching);
* the former method's cuts on the picked objects with the picker's measured multiplicity and
  prong lengths: its recall over all alpha decays and over the picked ones, beside the band the
  simulator was calibrated to with the simulator's own features (``former_method``).

Usage::

    python benchmarks/pick_vs_classify.py --fields 6 --objects-per-field 6 --alpha-fraction 0.5 --workdir /tmp/pvc

Prints one JSON document (and writes it to WORKDIR/pick_vs_classify.json). Timings depend on
the machine and its load: compare the ratio, not the absolute rates, across machines. With
``--misses-png FILE``, also draws the missed alpha decays (up to 12): for each, the darkest
value over the planes within 4 of its depth, 60 um across, the true vertex (cyan +) and the
picked vertices within 4 planes (red x, with their distance in x, y and multiplicity).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scanstream.atomic import write_text
from scanstream.inference.scoring import score_store
from scanstream.ingest.stacks import ingest_stacks
from scanstream.picker.cuts import DEFAULT_CONFIG, select
from scanstream.picker.pick import pick_field
from scanstream.simulate.volume import VolumeSimConfig, simulate_volume
from scanstream.store import open_store, open_volume
from scanstream.store.writer import StoreWriter

MODEL = Path(__file__).resolve().parents[1] / "models" / "scanstream-cpu-cascade.safetensors"


def near(picked: np.ndarray, r: dict, *, xy_um: float, z_um: float) -> np.ndarray:
    """Which picked vertices (n, 3) mm lie within xy_um in x, y and z_um in z of the truth row ``r``."""
    dxy = np.hypot(picked[:, 0] - r["x_mm"], picked[:, 1] - r["y_mm"]) * 1000
    return (dxy <= xy_um) & (np.abs(picked[:, 2] - r["z_mm"]) * 1000 <= z_um)


def match(picked: np.ndarray, truth: list[dict], *, xy_um: float, z_um: float) -> np.ndarray:
    """For each truth row, whether a picked vertex (n, 3) mm lies within xy_um in x, y and z_um in z."""
    return np.array([bool(near(picked, r, xy_um=xy_um, z_um=z_um).any()) for r in truth], bool)


def quality(rows: list[dict], truth: list[dict], n_fields: int, args: argparse.Namespace) -> dict:
    """The picker's quality measures (module docstring)."""
    picked = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in rows]).reshape(-1, 3)
    found = match(picked, truth, xy_um=args.xy_um, z_um=3.0)
    alpha = np.array([r["label"] == 1 for r in truth])
    n_alpha, k = int(alpha.sum()), int(found[alpha].sum())
    eff = k / n_alpha if n_alpha else float("nan")
    tpos = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in truth]).reshape(-1, 3)
    fake = 0
    for p in picked:
        if not len(tpos):
            fake += 1
            continue
        dxy = np.hypot(tpos[:, 0] - p[0], tpos[:, 1] - p[1]) * 1000
        dz = np.abs(tpos[:, 2] - p[2]) * 1000
        fake += int(not ((dxy <= args.fake_xy_um) & (dz <= 6.0)).any())
    cats: dict[str, list[int]] = {}
    for r, f in zip(truth, found, strict=True):
        cats.setdefault(r["category"], [0, 0])
        cats[r["category"]][0] += 1
        cats[r["category"]][1] += int(f)
    missed = [{"object_id": r["object_id"], "category": r["category"], "depth_um": round(r["depth_um"], 1)}
              for r, f, a in zip(truth, found, alpha, strict=True) if a and not f]
    return {
        "alpha_decays": n_alpha, "alpha_picked": k, "alpha_efficiency": round(eff, 4) if n_alpha else None,
        "alpha_efficiency_error": round(float(np.sqrt(eff * (1 - eff) / n_alpha)), 4) if n_alpha else None,
        "vertices": len(rows), "vertices_per_alpha_decay": round(len(rows) / n_alpha, 3) if n_alpha else None,
        "fake_vertices": fake, "fake_vertices_per_field": round(fake / n_fields, 3),
        "picked_fraction_by_category": {c: {"objects": n, "picked": m} for c, (n, m) in sorted(cats.items())},
        "alpha_missed": missed,
    }


#: The former method's recall on simulated crop stores with the simulator's own features, six
#: full-size sheets (benchmarks/simulator_calibration.py; README, docs/simulator.md).
CALIBRATED_RECALL = (0.757, 0.835)


def _to_pixel(f, x_mm: float, y_mm: float, z_mm: float) -> tuple[float, float, float]:
    """Inverse of ``FieldOfView.pixel_to_stage`` (plane, row, column) at the field's first plane's x, y."""
    ny, nx = f.data.shape[1:]
    dx_mm, dy_mm = x_mm - float(f.stage_x_mm[0]), y_mm - float(f.stage_y_mm[0])
    aff = f.affine_mm
    if aff is not None:
        col, row = np.linalg.solve(np.array([[aff[0], aff[1]], [aff[2], aff[3]]]), [dx_mm, dy_mm])
    else:
        col, row = dx_mm * 1000 / f.pixel_size_um[0], dy_mm * 1000 / f.pixel_size_um[1]
    zs = np.asarray(f.stage_z_mm, float)
    order = np.argsort(zs)
    plane = float(np.interp(z_mm, zs[order], np.arange(len(zs))[order]))
    return plane, row + (ny - 1) / 2, col + (nx - 1) / 2


def draw_misses(volume, truth: list[dict], rows: list[dict], missed: list[dict], path: Path, *, most: int = 12) -> int:
    """The missed alpha decays as a PNG grid (module docstring); returns the panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_id = {r["object_id"]: r for r in truth}
    fields = {f.source: f for f in volume}
    todo = [by_id[m["object_id"]] for m in missed[:most]]
    if not todo:
        return 0
    cols = min(4, len(todo))
    fig, axes = plt.subplots(-(-len(todo) // cols), cols, figsize=(3.2 * cols, 3.4 * -(-len(todo) // cols)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), todo, strict=False):
        f = fields[r["field"]]
        kz, cy, cx = _to_pixel(f, r["x_mm"], r["y_mm"], r["z_mm"])
        half = round(30 / f.pixel_size_um[0])
        k0, k1 = max(round(kz) - 4, 0), min(round(kz) + 5, f.data.shape[0])
        y0, x0 = max(int(cy) - half, 0), max(int(cx) - half, 0)
        img = f.read(slice(k0, k1))[:, y0 : int(cy) + half, x0 : int(cx) + half].min(0)
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, extent=(x0, x0 + img.shape[1], y0 + img.shape[0], y0))
        ax.plot(cx, cy, "c+", ms=14, mew=2)
        for v in rows:
            if v.get("pick_field") != r["field"]:
                continue
            vz, vy, vx = _to_pixel(f, v["x_mm"], v["y_mm"], v["z_mm"])
            if abs(vz - kz) <= 4 and abs(vx - cx) < half and abs(vy - cy) < half:
                d = np.hypot(v["x_mm"] - r["x_mm"], v["y_mm"] - r["y_mm"]) * 1000
                ax.plot(vx, vy, "rx", ms=10, mew=2)
                ax.text(vx + 4, vy - 4, f"{d:.1f} um m{v.get('multiplicity')}", color="yellow", fontsize=8)
        ax.set_title(f"{r['object_id']}\n{r['category']}, depth {r['depth_um']:.0f} um", fontsize=8)
    fig.suptitle("missed alpha decays: min over +-4 planes; + truth, x picked", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return len(todo)


def former_method(rows: list[dict], truth: list[dict], args: argparse.Namespace) -> dict:
    """The former method's cuts on the picked objects with the picker's measured features.

    A picked vertex is an alpha decay when it lies within the efficiency tolerance of one. The
    recall over all alpha decays of the volume (picking losses included) and over the picked
    ones is set beside the band the simulator was calibrated to; the precision is at this
    volume's mix of objects, so it compares with nothing but itself.
    """
    if not rows:
        return {"vertices": 0}
    mult = np.array([-1 if r["multiplicity"] is None else int(r["multiplicity"]) for r in rows])
    lengths = [np.asarray(r["track_lengths_um"] or [], np.float64) for r in rows]
    selected, _ = select(mult, lengths, DEFAULT_CONFIG)
    alphas = [r for r in truth if r["label"] == 1]
    picked = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in rows])
    found = sel_found = 0
    is_alpha = np.zeros(len(rows), bool)
    for a in alphas:
        close = near(picked, a, xy_um=args.xy_um, z_um=3.0)
        is_alpha |= close
        found += int(close.any())
        sel_found += int((close & selected).any())
    n_sel = int(selected.sum())
    return {
        "config": {"multiplicity": [DEFAULT_CONFIG.min_multiplicity, DEFAULT_CONFIG.max_multiplicity],
                   "length_um": [DEFAULT_CONFIG.min_length_um, DEFAULT_CONFIG.max_length_um]},
        "selected": n_sel,
        "recall_all_alpha_decays": round(sel_found / len(alphas), 4) if alphas else None,
        "recall_picked_alpha_decays": round(sel_found / found, 4) if found else None,
        "calibrated_recall_band": list(CALIBRATED_RECALL),
        "precision_at_this_mix": round(int((selected & is_alpha).sum()) / n_sel, 4) if n_sel else None,
        "selected_non_alpha_vertices": int((selected & ~is_alpha).sum()),
    }


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir)
    sim, vol_path, crops = work / "sim", work / "v.zarr", work / "picked.zarr"
    t0 = time.perf_counter()
    if not (sim / "truth.parquet").exists():
        realistic = args.realistic
        config = VolumeSimConfig(fields=args.fields, seed=args.seed, field_px=args.field_px,
                                 objects_per_field=None if realistic else args.objects_per_field,
                                 alpha_fraction=None if realistic else args.alpha_fraction)
        simulate_volume(sim, config, overwrite=True)
    t_sim = time.perf_counter() - t0
    if vol_path.exists():
        shutil.rmtree(vol_path)
    t0 = time.perf_counter()
    ingest_stacks(sim, vol_path)
    t_ingest = time.perf_counter() - t0
    volume = open_volume(vol_path)
    truth = pq.read_table(sim / "truth.parquet").to_pylist()

    import torch  # only the classification half needs it

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    for f in volume:
        f.read()
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = [pick_field(f, "bench") for f in volume]
    t_pick = time.perf_counter() - t0
    rows = [r for res in results for r in res.rows]
    if crops.exists():
        shutil.rmtree(crops)
    with StoreWriter(crops, source={"stage": "benchmark pick_vs_classify"}) as w:
        for res in results:
            if res.rows:
                w.append(res.crops, res.rows)
    t0 = time.perf_counter()
    if rows:
        score_store(open_store(crops), [args.model], device="cpu", batch_size=64)
    t_classify = time.perf_counter() - t0
    n = len(rows)
    pick_rate = n / t_pick
    classify_rate = n / t_classify if n and t_classify else float("nan")
    planes = sum(f.shape[0] for f in volume)
    qual = quality(rows, truth, len(volume), args)
    if args.misses_png is not None:
        qual["misses_png"] = str(args.misses_png)
        qual["misses_drawn"] = draw_misses(volume, truth, rows, qual["alpha_missed"], args.misses_png)
    return {
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "torch_threads": args.threads},
        "volume": {"fields": len(volume), "field_px": list(volume[0].shape[1:]), "planes": planes,
                   "pixel_size_um": list(volume[0].pixel_size_um), "step_um": volume[0].step_um,
                   "simulate_seconds": round(t_sim, 1), "ingest_seconds": round(t_ingest, 1)},
        "reading": {"seconds": round(t_read, 2), "fields_per_s": round(len(volume) / t_read, 3),
                    "pick_over_classify_rate_if_detecting_were_free": round(n / t_read / classify_rate, 4) if n else None},
        "picking": {"seconds": round(t_pick, 2), "fields_per_s": round(len(volume) / t_pick, 4),
                    "planes_per_s": round(planes / t_pick, 2), "objects_per_s": round(pick_rate, 3), "objects": n},
        "classifying": {"model": str(args.model), "seconds": round(t_classify, 2), "crops_per_s": round(classify_rate, 3)},
        "pick_over_classify_rate": round(pick_rate / classify_rate, 4) if n else None,
        "quality": qual,
        "former_method": former_method(rows, truth, args),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fields", type=int, default=6)
    p.add_argument("--objects-per-field", type=int, default=6)
    p.add_argument("--alpha-fraction", type=float, default=0.5)
    p.add_argument("--field-px", type=int, default=1024)
    p.add_argument("--realistic", action="store_true",
                   help="the simulator's realistic sheet (about 1.6 objects a field, 1:184 alpha decays) instead")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch threads for classifying (default 1)")
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--xy-um", type=float, default=2.0, help="x, y distance for an alpha decay to count as picked")
    p.add_argument("--fake-xy-um", type=float, default=5.0, help="x, y distance beyond which a vertex is fake")
    p.add_argument("--workdir", type=Path, required=True, help="keeps the simulated volume (reused) and stores")
    p.add_argument("--misses-png", type=Path, help="draw the missed alpha decays (up to 12) into this PNG")
    args = p.parse_args(argv)
    out = run(args)
    text = json.dumps(out, indent=1)
    write_text(args.workdir / "pick_vs_classify.json", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
