#!/usr/bin/env python
"""Held-out sheets in range and shifted in development and optics: load cut, AP, threshold recall.

For each sheet of a fixed list (:data:`SHEETS`: five in-range sheets drawn as the simulator
draws, the paler / darker / foggier sheets of the trust issue, and sheets 30 % of each draw
range's width past its low and high edges in every optical condition at once, plus one shifted
further), at the paper's prevalence (1:183; the recipe's full-size held-out sheet HOLDOUT too), every object's picker features are simulated, the
cascade's prefilter is applied, and only the objects it keeps are rendered (about 12 % of a
sheet). The cascade scores every other object with its feature model's logit, exactly as
``classify`` does, so the sheet's scores are the ones a full store would get, at an eighth of the
rendering. A seeded uniform sample of 400 objects per sheet is rendered as well, for the image
statistics of the drift check (as ``scanstream info`` samples a sheet's crops).

Per sheet and model it reports: AP; the former method's cuts (their recall fixes the operating
point); the model's candidates at that recall and the inspection load cut against the cuts,
with sqrt(N) errors; and the recall delivered at a threshold calibrated (``--recall``, default
the paper's 0.788) on a VALID sheet drawn in range, with its Clopper-Pearson interval beside the
threshold record's. Only objects are compared that no training stage saw (sheet names ``SH-*``,
seeds 4100-4199; the recipe trains on RF/RT/RV sheets of seed 0).

Usage::

    python benchmarks/shifted_sheets.py --model NAME=CKPT [--model NAME=CKPT ...] --work DIR \\
        [--objects 20000] [--sheets in1,paler,...] [--out FILE.json] [--png FILE.png]

Stores and feature tables are cached in ``--work`` and reused on rerun; models sharing a
prefilter share the rendered crops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scanstream import atomic
from scanstream import metrics as mt
from scanstream.drift import crop_statistics
from scanstream.inference.scoring import score_store
from scanstream.network.checkpoint import checkpoint_hash, load_checkpoint
from scanstream.picker import cuts as bl
from scanstream.review.adapt import JudgedSample, asked_until, build_design, record_from_verdicts
from scanstream.simulate.conditions import DRAW_RANGES, SheetConditions, resolve_conditions
from scanstream.simulate.dataset import ObjectPlan, plan_sheet, simulate_table, write_plans
from scanstream.store import is_store, open_store
from scanstream.threshold import build_threshold_record, proportion_ci
from scanstream.trust import SheetInputs, build_trust_reference, sheet_trust

PREVALENCE = 255 / 46948  # the paper's TEST sheet: 1:183
IMAGE_SAMPLE = 400  # crops per sheet read for the image statistics of the drift check
ALPHA_VERDICTS = 50  # the reviewer stops after this many alpha-decay verdicts
OPTICAL = ("darkness", "contrast", "fog", "focus_error", "mip_grains", "brightness", "noise")


def past_edge(edge: str, fraction: float) -> dict[str, float]:
    """Every optical condition ``fraction`` of its draw range's width past its ``low`` or ``high`` edge."""
    out = {}
    for name in OPTICAL:
        lo, hi = DRAW_RANGES[name]
        out[name] = round(lo - fraction * (hi - lo), 4) if edge == "low" else round(hi + fraction * (hi - lo), 4)
    return out


@dataclass(frozen=True)
class Sheet:
    key: str
    name: str
    seed: int
    overrides: dict[str, float] = field(default_factory=dict)
    in_range: bool = False
    objects: int | None = None  # None: --objects


#: the held-out sheets: names and seeds that no training stage uses (HOLDOUT, seed 2026, is the
#: recipe's full-size held-out sheet: the paper's TEST size and prevalence)
SHEETS = [
    Sheet("holdout", "HOLDOUT", 2026, in_range=True, objects=46948),
    *(Sheet(f"in{i}", f"SH-IN{i}", 4100 + i, in_range=True) for i in range(1, 6)),
    Sheet("paler", "SH-PALER", 4111, {"darkness": 0.7, "contrast": 0.8}),
    Sheet("darker", "SH-DARKER", 4112, {"darkness": 1.35, "contrast": 1.2}),
    Sheet("foggier", "SH-FOGGIER", 4113, {"fog": 14.0, "noise": 6.0}),
    Sheet("low30", "SH-LOW30", 4114, past_edge("low", 0.3)),
    Sheet("high30", "SH-HIGH30", 4115, past_edge("high", 0.3)),
    Sheet("far", "SH-FAR", 4116, {"darkness": 0.6, "contrast": 0.7, "fog": 16.0, "noise": 7.0, "focus_error": 1.4}),
]
VALID = Sheet("valid", "SH-VALID", 4100, in_range=True)


def valid_sheets(n: int) -> list[Sheet]:
    """The in-range VALID sheets the threshold is calibrated on: SH-VALID, then SH-VALID2.. (seeds 4121..)."""
    return [VALID, *(Sheet("valid", f"SH-VALID{k}", 4119 + k, in_range=True) for k in range(2, n + 1))]


def pooled_valid(n: int, objects: int, models: list[Model], work: Path, workers: int):
    """(truth, {model: scores}, image statistics) of the ``n`` VALID sheets, pooled as one calibration store."""
    parts = [sheet_scores(v, objects, 0.1, models, work, workers) for v in valid_sheets(n)]
    table = pa.concat_tables([t for t, _, _, _ in parts], promote_options="default")
    scores = {m.name: np.concatenate([sc[m.name] for _, _, sc, _ in parts]) for m in models}
    offsets = np.cumsum([0] + [t.num_rows for t, _, _, _ in parts[:-1]])
    image = {k: np.concatenate([im[k] + (off if k == "rows" else 0) for (_, _, _, im), off in zip(parts, offsets, strict=True)])
             for k in parts[0][3]}
    return sheet_truth(table), scores, image


@dataclass
class Model:
    name: str
    path: str
    hash: str
    feature_model: object
    prefilter: float


def load_models(specs: list[str]) -> list[Model]:
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --model {spec!r}: expected NAME=CKPT")
        ck = load_checkpoint(path)
        if ck.feature_model is None or ck.prefilter_threshold is None:
            raise SystemExit(f"error: {path}: not a cascade (no feature model and prefilter); this benchmark renders what a prefilter keeps")
        out.append(Model(name, path, checkpoint_hash(path), ck.feature_model, float(ck.prefilter_threshold)))
    return out


def features(sheet: Sheet, objects: int, alpha_fraction: float, work: Path, workers: int) -> tuple[pa.Table, SheetConditions]:
    cond = resolve_conditions(sheet.name, sheet.seed, conditions=sheet.overrides or None)
    path = work / f"{sheet.name}-{objects}.features.parquet"
    if path.exists():
        return pq.read_table(path), cond
    table = simulate_table(objects=objects, alpha_fraction=alpha_fraction, sheet=sheet.name, seed=sheet.seed,
                           conditions=cond, workers=workers)
    atomic.write_parquet(path, table)
    return table, cond


def render_kept(sheet: Sheet, cond: SheetConditions, objects: int, alpha_fraction: float, keep: np.ndarray, work: Path,
                workers: int):
    """The crop store of the kept objects, in plan order (cached under ``work``)."""
    path = work / f"{sheet.name}-{objects}-kept{int(keep.sum())}.zarr"
    if is_store(path):
        store = open_store(path, require_complete=False)
        if store.complete:
            return store
    plans = [p for p, k in zip(plan_sheet(objects, alpha_fraction, sheet.name, sheet.seed), keep, strict=True) if k]
    plans = [ObjectPlan(j, p.sheet, p.serial, p.category, p.seed) for j, p in enumerate(plans)]
    source = {"stage": "benchmark-shifted-sheets", "sheet": sheet.name, "seed": sheet.seed, "objects": objects,
              "alpha_fraction": alpha_fraction, "kept": int(keep.sum()), "conditions": cond.as_dict()}
    return write_plans(path, plans, {sheet.name: cond}, source=source, workers=workers, progress=sys.stderr.isatty(),
                       desc=sheet.name)


def sheet_scores(sheet: Sheet, objects: int, alpha_fraction: float, models: list[Model], work: Path, workers: int):
    """(features table, conditions, {model name: cascade scores of every object}, image statistics).

    The image statistics (:func:`scanstream.drift.crop_statistics`) are of a seeded uniform
    sample of the sheet's objects (:func:`image_sample`), ``rows`` indexing them.
    """
    table, cond = features(sheet, objects, alpha_fraction, work, workers)
    logits = {m.name: np.asarray(m.feature_model.score_table(table), np.float64) for m in models}
    keeps = {m.name: logits[m.name] >= m.prefilter for m in models}
    union = np.logical_or.reduce(list(keeps.values()))
    store = render_kept(sheet, cond, objects, alpha_fraction, union, work, workers)
    ids = np.array(table.column("object_id").to_pylist())
    if store.table.column("object_id").to_pylist() != ids[union].tolist():
        raise SystemExit(f"error: {store.path}: its objects are not the kept objects of {sheet.name}")
    scores = {}
    cache = work / f"{sheet.name}-{objects}.scores.parquet"
    cached = pq.read_table(cache).to_pydict() if cache.exists() else {}
    for m in models:
        if m.hash not in cached:
            net = score_store(store, [m.path], device="cpu", precision="fp32")
            full = logits[m.name].copy()
            full[union] = net  # kept rows: the network (a row another model's prefilter added gets the feature logit)
            full[union & ~keeps[m.name]] = logits[m.name][union & ~keeps[m.name]]
            cached[m.hash] = full.tolist()
            atomic.write_parquet(cache, pa.table({k: pa.array(v, pa.float64()) for k, v in cached.items()}))
        scores[m.name] = np.asarray(cached[m.hash])
    return table, cond, scores, image_sample(sheet, cond, objects, alpha_fraction, work, workers)


def image_sample(sheet: Sheet, cond: SheetConditions, objects: int, alpha_fraction: float, work: Path, workers: int) -> dict:
    """Image statistics of a seeded uniform sample of the sheet's objects (rendered on their own), as ``info`` reads them."""
    rows = np.sort(np.random.default_rng(0).choice(objects, size=min(IMAGE_SAMPLE, objects), replace=False))
    path = work / f"{sheet.name}-{objects}-sample{rows.size}.zarr"
    if is_store(path) and open_store(path, require_complete=False).complete:
        store = open_store(path)
    else:
        plans = plan_sheet(objects, alpha_fraction, sheet.name, sheet.seed)
        plans = [ObjectPlan(j, plans[i].sheet, plans[i].serial, plans[i].category, plans[i].seed) for j, i in enumerate(rows)]
        source = {"stage": "benchmark-shifted-sheets-sample", "sheet": sheet.name, "seed": sheet.seed, "objects": objects,
                  "alpha_fraction": alpha_fraction, "sample": int(rows.size), "conditions": cond.as_dict()}
        store = write_plans(path, plans, {sheet.name: cond}, source=source, workers=workers, desc=f"{sheet.name} sample")
    return {"rows": rows, **crop_statistics(store.read_rows(np.arange(store.n)))}


@dataclass(frozen=True)
class Truth:
    """What every model's measures of one sheet share: labels, the cuts' selection, the picker's features."""

    name: str
    ids: np.ndarray
    y: np.ndarray
    cuts: np.ndarray
    multiplicity: np.ndarray
    lengths: list


def sheet_truth(table: pa.Table) -> Truth:
    mult = np.array([-1 if v is None else v for v in table.column("multiplicity").to_pylist()], np.float64)
    return Truth(name=str(table.column("sheet")[0].as_py()), ids=np.asarray(table.column("object_id").to_pylist(), dtype=str),
                 y=table.column("label").to_numpy().astype(np.int64),
                 cuts=bl.run_baseline_table(table).column("selected").to_numpy(zero_copy_only=False).astype(bool),
                 multiplicity=mult, lengths=table.column("track_lengths_um").to_pylist())


def reference_record(threshold: dict, truth: Truth, scores: np.ndarray, image: dict) -> dict:
    """The threshold record with the trust block ``scanstream threshold`` writes (calibration map, references)."""
    return {**threshold, "trust": build_trust_reference(truth.y, scores, multiplicity=truth.multiplicity,
                                                         lengths=truth.lengths, image=image)}


def trust_fields(truth: Truth, scores: np.ndarray, record: dict, image: dict) -> dict:
    """``scanstream info``'s trust fields of the sheet, and the truth beside them."""
    inputs = SheetInputs(scores, scores >= record["threshold"], multiplicity=truth.multiplicity, lengths=truth.lengths,
                         image={k: v for k, v in image.items() if k != "rows"})
    t = sheet_trust(inputs, record)
    lo, hi = t["expected_alpha_interval"]
    n = int(truth.y.sum())
    drift = t["drift"]
    return {"expected_alpha": t["expected_alpha"], "expected_alpha_interval": [lo, hi], "true_alpha": n,
            "expected_alpha_error": round(t["expected_alpha"] / n - 1, 3) if n else None,
            "interval_holds_truth": bool(lo <= n <= hi), "expected_recall": t["expected_recall"],
            "drift_flag": drift.get("flag"), "drift": drift}


def adapt(truth: Truth, scores: np.ndarray, threshold: dict, model_hash: str, target: float, seed: int) -> dict:
    """A reviewer answers from the truth in the useful order until 50 alpha verdicts; the recalibrated threshold."""
    design = build_design(truth.ids, scores, threshold=threshold["threshold"], sheet=truth.name, seed=seed)
    y_r = truth.y[design.source]
    asked = np.sort(asked_until(design, y_r, ALPHA_VERDICTS))
    sample = JudgedSample(design, asked, y_r[asked].astype(np.int8))
    rec = record_from_verdicts(sample, target_recall=target, model_hashes=[model_hash], seed=seed,
                               calibration={"kind": "simulated reviewer", "sheet": truth.name})
    t = rec["threshold"]
    recall = float((y_r[design.scores >= t] == 1).sum() / (y_r == 1).sum())
    lo, hi = rec["achieved"]["recall_ci"]
    return {"verdicts": int(asked.size), "alpha_verdicts": int(sample.labels.sum()), "threshold": round(t, 4),
            "selected": int((design.scores >= t).sum()), "true_recall": round(recall, 4),
            "estimated_recall": round(rec["achieved"]["recall"], 4), "recall_ci": [round(lo, 4), round(hi, 4)],
            "target_inside_ci": bool(lo <= target <= hi), "truth_inside_ci": bool(lo <= recall <= hi)}


def measure(truth: Truth, scores: np.ndarray, threshold: dict) -> dict:
    y = truth.y
    former = mt.operating_point_from_selection(y, truth.cuts)
    op = mt.operating_point_at_recall(y, scores, former.recall.value)
    at_t = mt.operating_point_at_threshold(y, scores, threshold["threshold"])
    tp, n = at_t.true_positives, at_t.positives
    load = mt.ratio_with_error(former.candidates, op.candidates)
    return {
        "objects": len(y), "alpha": int(y.sum()), "ap": round(mt.average_precision(y, scores), 4),
        "cuts": {"selected": former.selected, "alpha_selected": former.true_positives, "recall": round(former.recall.value, 4)},
        "at_cuts_recall": {"selected": op.selected, "alpha_selected": op.true_positives},
        "load_cut": round(load.value, 2), "load_cut_error": round(load.error, 2),
        "at_threshold": {"threshold": threshold["threshold"], "selected": at_t.selected, "alpha_selected": tp,
                         "recall": round(tp / n, 4), "recall_ci": [round(v, 4) for v in proportion_ci(tp, n)],
                         "promised_recall_ci": [round(v, 4) for v in threshold["achieved"]["recall_ci"]]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=CKPT", help="a cascade checkpoint (repeat to compare)")
    p.add_argument("--work", type=Path, required=True, help="cache of feature tables, kept-crop stores and scores")
    p.add_argument("--objects", type=int, default=20000, help="objects per sheet (alpha decays at 1:183)")
    p.add_argument("--valid-objects", type=int, default=3000, help="objects of the in-range VALID sheet (10 %% alpha)")
    p.add_argument("--valid-sheets", type=int, default=1,
                   help="in-range VALID sheets pooled for the threshold and its calibration map (SH-VALID, SH-VALID2, ...)")
    p.add_argument("--recall", type=float, default=0.788, help="the threshold's target recall on VALID")
    p.add_argument("--sheets", default=",".join(s.key for s in SHEETS), help=f"of {', '.join(s.key for s in SHEETS)}")
    p.add_argument("--workers", type=int, default=2, help="simulation processes")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    p.add_argument("--png", type=Path, help="draw load cut and threshold recall per sheet")
    args = p.parse_args(argv)
    by_key = {s.key: s for s in SHEETS}
    chosen = [k.strip() for k in args.sheets.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in by_key]
    if unknown:
        p.error(f"unknown sheet(s) {unknown}")
    args.work.mkdir(parents=True, exist_ok=True)
    models = load_models(args.model)
    t0 = time.perf_counter()
    vtruth, vscores, vimage = pooled_valid(args.valid_sheets, args.valid_objects, models, args.work, args.workers)
    vnames = "+".join(v.name for v in valid_sheets(args.valid_sheets))
    thresholds = {m.name: reference_record(
        build_threshold_record(vtruth.y, vscores[m.name], target_kind="recall", target_value=args.recall,
                               model_hashes=[m.hash], calibration_store={"path": vnames, "hash": ""}),
        vtruth, vscores[m.name], vimage) for m in models}
    doc = {"prevalence": "1:183", "objects_per_sheet": args.objects, "target_recall": args.recall, "valid": vnames,
           "models": {m.name: {"checkpoint": Path(m.path).name, "hash": m.hash, "threshold": thresholds[m.name]["threshold"],
                               "valid_recall_ci": thresholds[m.name]["achieved"]["recall_ci"]} for m in models},
           "sheets": {}}
    for key in chosen:
        sheet = by_key[key]
        table, cond, scores, image = sheet_scores(sheet, sheet.objects or args.objects, PREVALENCE, models, args.work,
                                                  args.workers)
        doc["sheets"][key] = {"sheet": sheet.name, "seed": sheet.seed, "in_range": sheet.in_range,
                              "overrides": sheet.overrides, "conditions": cond.as_dict(), "models": {}}
        truth = sheet_truth(table)
        for m in models:
            r = measure(truth, scores[m.name], thresholds[m.name])
            r["trust"] = trust_fields(truth, scores[m.name], thresholds[m.name], image)
            r["after_50_verdicts"] = adapt(truth, scores[m.name], thresholds[m.name], m.hash, args.recall, sheet.seed)
            doc["sheets"][key]["models"][m.name] = r
        print(json.dumps({key: {n: (r["load_cut"], r["ap"], r["at_threshold"]["recall"], r["trust"]["expected_alpha"],
                                    r["trust"]["true_alpha"], r["trust"]["drift_flag"], r["after_50_verdicts"]["true_recall"])
                                for n, r in doc["sheets"][key]["models"].items()}}), file=sys.stderr)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(doc, indent=1)
    if args.out:
        atomic.write_text(args.out, text + "\n")
    if args.png:
        draw(doc, args.png)
    print(text)
    return 0


def draw(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(doc["sheets"])
    names = list(doc["models"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(keys))
    for i, name in enumerate(names):
        rows = [doc["sheets"][k]["models"][name] for k in keys]
        axes[0].bar(x + i * width, [r["load_cut"] for r in rows], width, yerr=[r["load_cut_error"] for r in rows], label=name)
        rec = np.array([r["at_threshold"]["recall"] for r in rows])
        ci = np.array([r["at_threshold"]["recall_ci"] for r in rows])
        axes[1].errorbar(x + i * width, rec, yerr=[rec - ci[:, 0], ci[:, 1] - rec], fmt="o", label=name, capsize=3)
        lo, hi = doc["models"][name]["valid_recall_ci"]
        axes[1].axhspan(lo, hi, alpha=0.12, color=f"C{i}")
    axes[0].axhline(5, color="k", ls=":", lw=1)
    axes[0].set_ylabel("inspection load cut vs the cuts (x)")
    axes[1].axhline(0.70, color="k", ls=":", lw=1)
    axes[1].set_ylabel("recall at the VALID threshold (band: VALID's 95 % CI)")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xticks(x + width * (len(names) - 1) / 2, keys, rotation=30)
        ax.legend(fontsize=8)
    fig.suptitle(f"Held-out sheets at 1:183, {doc['objects_per_sheet']:,} objects each (HOLDOUT: 46,948)")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
