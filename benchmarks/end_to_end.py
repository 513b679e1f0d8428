#!/usr/bin/env python
"""End to end from micrographs: simulated z-stacks -> ingest -> pick -> the model, against the cuts.

The held-out table of README rests on simulated crops and the simulated picker's features. A user
who starts from micrographs gets the features ``scanstream pick`` measures instead, its fake
vertices and its misses. This script follows that path on simulated volumes whose seeds no
stage of the recipe used:

1. ``simulate-volume`` writes fields of view with truth (one volume per ``--seed``);
2. ``ingest --format stack`` makes each a volume store; every field is picked
   (:func:`scanstream.picker.pick.pick_field`), the picked crops and their measured features
   go into one crop store;
3. a picked vertex is an alpha decay when a true alpha-decay vertex lies within ``--xy-um``
   (2 um) in x, y and one z-step (3 um) in depth; every other picked vertex (other objects,
   fakes) is background;
4. the former method's cuts run on the measured features of the same picked objects; their
   recall over the picked alpha decays fixes the operating point, and each model is set to the
   same recall on the same objects.

Volumes are drawn with alpha decays enriched (``--alpha-fraction``) and objects denser than a
real sheet's (``--objects-per-field``), so counts of selected objects compare with nothing real.
Two reweightings carry them over:

* **by class** (``at_cuts_recall``): the per-class pass rates r_a (picked alpha-decay vertices
  kept) and r_o (every other picked vertex kept). At the paper's prevalence pi = 1:183 a method
  selects N (pi r_a + (1 - pi) r_o) candidates of N objects; the load cut is the ratio of the
  cuts' figure to the model's, with binomial errors on both rates propagated (r_o's dominate).
  This treats the volume's background (its fakes and duplicates included) as a sheet's.
* **by source** (``by_source``): every other picked vertex is put down to what made it: a true
  non-alpha object of a category (within ``--fake-xy-um`` in x, y and two z-steps of its
  vertex), a second vertex of an alpha decay (within ``--duplicate-um`` of one in x, y), or a
  fake (nothing near). Kept vertices per true object of each category, per alpha decay and per
  field are scaled to a real sheet: the simulator's category mix (``BACKGROUND_MIX``), alpha
  decays at 1:183, and a field per ``REALISTIC_PER_MM2`` x field area objects. Poisson errors
  on each kept count.

Recall over all alpha decays (picking losses included) is reported beside them, and the
picker's measured errors on alpha decays (``picker_errors``: vertex offsets in x, y and depth,
measured minus true multiplicity, extra vertices per decay, fake vertices per field), which a
simulated picker calibrated to ``pick`` would have to reproduce.

Usage::

    python benchmarks/end_to_end.py --model NAME=CKPT [--model ...] --work DIR \\
        [--seeds 5101,5102] [--fields 12] [--objects-per-field 8] [--alpha-fraction 0.3] \\
        [--threshold NAME=RECORD ...] [--out FILE.json]

``--threshold NAME=RECORD`` also applies a model's shipped threshold record (checked to belong to
that checkpoint) to the picked objects (``at_shipped_threshold``): the recall over the picked alpha
decays and the false-positive rate it gives here, beside what the record promises.

Volumes and picked stores are kept in ``--work`` and reused when rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scanstream import atomic
from scanstream import metrics as mt
from scanstream.errors import ScanstreamError
from scanstream.inference.engine import checkpoint_identity
from scanstream.inference.scoring import score_store
from scanstream.ingest.stacks import ingest_stacks
from scanstream.picker import accuracy
from scanstream.picker.cuts import DEFAULT_CONFIG, select
from scanstream.picker.pick import pick_field
from scanstream.simulate.objects import BACKGROUND_MIX
from scanstream.simulate.volume import PIXEL_UM, REALISTIC_PER_MM2, VolumeSimConfig, simulate_volume
from scanstream.store import is_store, open_store, open_volume
from scanstream.store.writer import StoreWriter
from scanstream.threshold import check_models, load_threshold, project_precision, proportion_ci

PREVALENCE = 255 / 46948  # the paper's TEST sheet: 1:183


def picked_volume(work: Path, seed: int, args: argparse.Namespace) -> tuple[object, list[dict]]:
    """(crop store of the picked vertices, truth rows) of the volume ``seed`` (cached under ``work``)."""
    sim, vol, crops = work / f"sim{seed}", work / f"v{seed}.zarr", work / f"picked{seed}.zarr"
    if not (sim / "truth.parquet").exists():
        cfg = VolumeSimConfig(fields=args.fields, seed=seed, sheet=f"E2E{seed}", objects_per_field=args.objects_per_field,
                              alpha_fraction=args.alpha_fraction, field_px=args.field_px)
        simulate_volume(sim, cfg, overwrite=True)
    truth = pq.read_table(sim / "truth.parquet").to_pylist()
    if is_store(crops):
        store = open_store(crops, require_complete=False)
        if store.complete:
            return store, truth
    if not is_store(vol):
        ingest_stacks(sim, vol)
    with StoreWriter(crops, source={"stage": "benchmark end_to_end", "seed": seed}, overwrite=True) as w:
        for f in open_volume(vol):
            res = pick_field(f, f"E2E{seed}")
            if res.rows:
                w.append(res.crops, res.rows)
    return open_store(crops), truth


def positions(store) -> np.ndarray:
    """Picked vertices' stage positions (n, 3) mm."""
    t = store.table
    return np.column_stack([t.column(c).to_numpy(zero_copy_only=False) for c in ("x_mm", "y_mm", "z_mm")]).reshape(-1, 3)


def sources(store, truth: list[dict], args: argparse.Namespace) -> np.ndarray:
    """What made each picked vertex: ``alpha``, ``dup`` (beside an alpha decay), a category, or ``fake``."""
    radii = accuracy.MatchRadii(xy_um=args.xy_um, duplicate_um=args.duplicate_um, fake_xy_um=args.fake_xy_um)
    return accuracy.vertex_sources(positions(store), truth, radii)


def by_source(src: np.ndarray, truth_counts: dict[str, int], n_alpha: int, fields: int, field_mm2: float,
              selections: dict[str, np.ndarray]) -> dict:
    """Kept vertices per 10,000 objects of a real sheet, by what made them (module docstring)."""
    mix = {k: v for k, v in BACKGROUND_MIX.items() if k in truth_counts}
    total = sum(mix.values())
    per_10k = {k: 1e4 * (1 - PREVALENCE) * v / total for k, v in mix.items()}  # objects of category k
    alphas_10k = 1e4 * PREVALENCE
    fields_10k = 1e4 / (REALISTIC_PER_MM2 * field_mm2)
    out = {"real_sheet_per_10k": {"objects_by_category": {k: round(v, 1) for k, v in per_10k.items()},
                                  "alpha_decays": round(alphas_10k, 1), "fields": round(fields_10k, 1)}}
    for name, sel in selections.items():
        parts, var = {}, 0.0
        for k, objects in per_10k.items():
            kept = int((sel & (src == k)).sum())
            scale = objects / truth_counts[k]
            parts[k] = (kept, kept * scale)
            var += kept * scale**2
        for k, denom, scale10k in (("dup", n_alpha, alphas_10k), ("fake", fields, fields_10k)):
            kept = int((sel & (src == k)).sum())
            parts[k] = (kept, kept * scale10k / denom)
            var += kept * (scale10k / denom) ** 2
        kept_alpha = int((sel & (src == "alpha")).sum())
        parts["alpha"] = (kept_alpha, kept_alpha * alphas_10k / n_alpha)
        var += kept_alpha * (alphas_10k / n_alpha) ** 2
        cand = sum(v for _, v in parts.values())
        out[name] = {"kept": {k: c for k, (c, _) in parts.items()},
                     "candidates_per_10k": {k: round(v, 1) for k, (_, v) in parts.items()},
                     "candidates_per_10k_total": round(cand, 1), "candidates_error": round(math.sqrt(var), 1)}
    a, ea = out["cuts"]["candidates_per_10k_total"], out["cuts"]["candidates_error"]
    for name in selections:
        if name != "cuts":
            b, eb = out[name]["candidates_per_10k_total"], out[name]["candidates_error"]
            out[name]["load_cut"] = round(a / b, 2) if b else None
            out[name]["load_cut_error"] = round(a / b * math.hypot(ea / a, eb / b), 2) if a and b else None
    return out


def vertex_errors(store, truth: list[dict], args: argparse.Namespace) -> list[dict]:
    """For each true alpha decay: whether it was picked (a vertex within ``--xy-um`` in x, y and one
    z-step), the nearest picked vertex within ``--duplicate-um`` (x, y, z offsets in um, measured
    minus true multiplicity) and how many picked vertices lie that close (:func:`accuracy.decay_matches`)."""
    mult = np.array([-1 if m is None else int(m) for m in store.table.column("multiplicity").to_pylist()])
    return accuracy.decay_matches(positions(store), mult, truth, xy_um=args.xy_um, near_um=args.duplicate_um)


def picker_errors(errors: list[dict], fakes: int, fields: int) -> dict:
    """The picker's measured errors on alpha decays (what a calibrated simulated picker must reproduce)."""
    return {**accuracy.error_summary(errors, fakes=fakes, fields=fields),
            "note": "prong lengths, merged and missed prongs: benchmarks/picker_errors.py"}


def rates(y: np.ndarray, selected: np.ndarray) -> dict:
    """Per-class pass rates with binomial errors, and the candidates per 10,000 objects at 1:183."""
    na, no = int(y.sum()), int((~y).sum())
    ka, ko = int((selected & y).sum()), int((selected & ~y).sum())
    ra, ro = ka / na, ko / no
    ea, eo = math.sqrt(ra * (1 - ra) / na), math.sqrt(max(ro * (1 - ro), 1.0 / no) / no)  # one count's error at 0
    cand = PREVALENCE * ra + (1 - PREVALENCE) * ro
    err = math.hypot(PREVALENCE * ea, (1 - PREVALENCE) * eo)
    return {"alpha_kept": ka, "alpha": na, "background_kept": ko, "background": no, "r_alpha": round(ra, 4),
            "r_background": round(ro, 5), "r_background_error": round(eo, 5),
            "candidates_per_10k_at_1_183": round(1e4 * cand, 2), "candidates_error": round(1e4 * err, 2)}


def measure(y: np.ndarray, selections: dict[str, np.ndarray]) -> dict:
    out = {name: rates(y, sel) for name, sel in selections.items()}
    cuts = out["cuts"]
    for name, r in out.items():
        if name == "cuts":
            continue
        a, ea = cuts["candidates_per_10k_at_1_183"], cuts["candidates_error"]
        b, eb = r["candidates_per_10k_at_1_183"], r["candidates_error"]
        r["load_cut"] = round(a / b, 2) if b else None
        r["load_cut_error"] = round(a / b * math.hypot(ea / a, eb / b), 2) if a and b else None
    return out


def at_threshold(y: np.ndarray, s: np.ndarray, record: dict) -> dict:
    """A model's shipped threshold record on the picked objects: recall over the picked alpha
    decays and the false-positive rate over the other picked vertices (95 % Clopper-Pearson), what
    the record promises, and the precision both project at the paper's 1:183."""
    sel = s >= float(record["threshold"])
    k, n = int((sel & y).sum()), int(y.sum())
    f, m = int((sel & ~y).sum()), int((~y).sum())
    recall, fpr = k / n, (f / m if m else 0.0)
    promised = record.get("achieved", {})
    return {
        "threshold": float(record["threshold"]), "target": record.get("target"),
        "recall": round(recall, 4), "recall_ci": [round(x, 4) for x in proportion_ci(k, n)],
        "false_positive_rate": round(fpr, 4), "false_positive_rate_ci": [round(x, 4) for x in proportion_ci(f, m)] if m else None,
        "selected": int(sel.sum()),
        "promised_recall": promised.get("recall"), "promised_recall_ci": promised.get("recall_ci"),
        "promised_false_positive_rate": promised.get("false_positive_rate"),
        "precision_at_1_183": _round(project_precision(recall, fpr, 1 / 184)),
        "promised_precision_at_1_183": _round(project_precision(promised["recall"], promised["false_positive_rate"], 1 / 184))
        if "recall" in promised and "false_positive_rate" in promised else None,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _thresholds(p: argparse.ArgumentParser, specs: list[str], models: dict[str, str]) -> dict[str, dict]:
    """``--threshold NAME=RECORD`` of the models named, each checked to belong to its checkpoint."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in models:
            p.error(f"--threshold {spec!r}: expected NAME=RECORD with NAME one of the --model names {sorted(models)}")
        try:
            record = load_threshold(path)
            check_models(record, [checkpoint_identity(models[name])], source=path)
        except ScanstreamError as e:
            p.error(str(e))
        out[name] = record
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=CKPT", help="a checkpoint (repeat to compare)")
    p.add_argument("--work", type=Path, required=True, help="keeps the volumes and picked stores (reused)")
    p.add_argument("--seeds", default="5101,5102", help="volume seeds, comma-separated (never used by training)")
    p.add_argument("--fields", type=int, default=12, help="fields per volume")
    p.add_argument("--objects-per-field", type=int, default=8)
    p.add_argument("--alpha-fraction", type=float, default=0.3)
    p.add_argument("--field-px", type=int, default=1024)
    p.add_argument("--xy-um", type=float, default=2.0, help="x, y distance for a picked vertex to be an alpha decay")
    p.add_argument("--fake-xy-um", type=float, default=5.0, help="x, y distance beyond which a vertex is no object's")
    p.add_argument("--duplicate-um", type=float, default=15.0, help="x, y distance of a second vertex of an alpha decay")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=RECORD",
                   help="a model's threshold record: its recall and false-positive rate on the picked objects")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    args = p.parse_args(argv)
    models = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or name == "cuts":
            p.error(f"--model {spec!r}: expected NAME=CKPT (NAME not 'cuts')")
        models[name] = path
    records = _thresholds(p, args.threshold, models)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected integers separated by commas")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ys, scores, cut_sel, n_alpha, n_found, srcs, counts = [], {n: [] for n in models}, [], 0, 0, [], {}
    errors: list[dict] = []
    for seed in seeds:
        store, truth = picked_volume(args.work, seed, args)
        n_alpha += sum(r["label"] == 1 for r in truth)
        for r in truth:
            if r["label"] != 1:
                counts[r["category"]] = counts.get(r["category"], 0) + 1
        if store.n == 0:
            errors += [{"found": False, "near": 0, "picked": False} for r in truth if r["label"] == 1]
            continue
        decays = vertex_errors(store, truth, args)
        errors += decays
        n_found += sum(e["picked"] for e in decays)
        srcs.append(sources(store, truth, args))
        ys.append(srcs[-1] == "alpha")  # a picked vertex is an alpha decay when one lies within --xy-um and a z-step
        t = store.table
        mult = np.array([-1 if m is None else int(m) for m in t.column("multiplicity").to_pylist()])
        lengths = [np.asarray(v or [], np.float64) for v in t.column("track_lengths_um").to_pylist()]
        cut_sel.append(select(mult, lengths, DEFAULT_CONFIG)[0])
        for name, path in models.items():
            scores[name].append(score_store(store, [path], device="cpu", precision="fp32"))
    if not ys or not np.concatenate(ys).any():
        print(f"error: no picked alpha decay in {len(seeds)} volume(s); use more fields", file=sys.stderr)
        return 2
    y, cuts = np.concatenate(ys), np.concatenate(cut_sel)
    cuts_recall = int((cuts & y).sum()) / int(y.sum())
    selections = {"cuts": cuts}
    aps, shipped = {}, {}
    for name in models:
        s = np.concatenate(scores[name])
        op = mt.operating_point_at_recall(y.astype(np.int64), s, cuts_recall)
        selections[name] = s >= op.threshold
        aps[name] = round(mt.average_precision(y.astype(np.int64), s), 4)
        if name in records:
            shipped[name] = at_threshold(y, s, records[name])
    doc = {
        "seeds": seeds, "fields": args.fields * len(seeds), "objects_per_field": args.objects_per_field,
        "alpha_fraction": args.alpha_fraction, "alpha_decays": n_alpha, "alpha_picked": n_found,
        "picked_vertices": len(y), "picked_alpha_vertices": int(y.sum()),
        "cuts_recall_of_picked": round(cuts_recall, 4),
        "cuts_recall_of_all": round(int((cuts & y).sum()) / n_alpha, 4) if n_alpha else None,
        "ap_on_picked": aps, "at_cuts_recall": measure(y, selections), "at_shipped_threshold": shipped,
        "by_source": by_source(np.concatenate(srcs), counts, n_alpha, args.fields * len(seeds),
                               (args.field_px * PIXEL_UM / 1000) ** 2, selections),
        "picker_errors": picker_errors(errors, int((np.concatenate(srcs) == "fake").sum()), args.fields * len(seeds)),
        "models": {n: Path(pth).name for n, pth in models.items()}, "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(doc, indent=1)
    if args.out:
        atomic.write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
