"""What 50 verdicts buy on a shifted sheet: the threshold recalibrated from the useful review order.

A threshold calibrated on VALID (``--recall``, the cuts' recall by default 0.788) is applied to
a sheet unlike VALID (``--sheet``, a labelled store: its labels play the reviewer). The script
builds the sheet's useful review order (:mod:`scanstream.review.adapt`: a stratified random
sample over score bands around the threshold), answers from the truth in that order until
``--alpha-verdicts`` alpha decays have been judged (the others seen on the way are judged
too), recalibrates the threshold from those verdicts (a logistic recalibration per score band
predicting the labels not asked, :mod:`scanstream.review.posterior`) and prints one JSON
document:

* ``before``: the VALID threshold, its VALID recall CI, the sheet's true recall and selection
  at it, and the recall the verdicts estimate there;
* ``after``: the recalibrated threshold with its CI, the sheet's true recall and selection at
  it, the estimated recall with its CI, and whether the truth and the target lie inside;
* ``load_cut``: candidates the cuts select over candidates the model needs at the cuts' recall
  (the ranking, which the threshold does not change), with sqrt(N) errors;
* with ``--finetune``: the verdicts become a labelled store (``scanstream verdicts to-store``),
  the model is fine-tuned on it (``scanstream train --recipe finetune --pretrained``, VALID for
  validation), the sheet rescored, and the same verdicts recalibrate the fine-tuned model's
  threshold; its recall and load cut after. The fine-tuned model has seen the judged objects,
  so its estimate on them is optimistic.

To run on the shipped (or retrained) model, with a VALID drawn like training and a paler sheet::

    scanstream simulate W/valid.zarr --objects 3000 --alpha-fraction 0.0556 --sheet VALID --seed 501
    scanstream simulate W/pale.zarr --objects 20000 --alpha-fraction 0.00543 --sheet PALE --seed 502 \\
        --darkness 0.7 --contrast 0.8
    python benchmarks/verdicts_adapt.py --model models/scanstream-cpu-cascade.safetensors \\
        --valid W/valid.zarr --sheet W/pale.zarr [--finetune --work W/ft]

(``scanstream simulate --help`` lists the condition flags; 0.00543 is the paper's 1:183.) The
estimators alone, the previous (Horvitz-Thompson, stratified bootstrap, equal allocation) beside
the current one, on binormal synthetic logits over a grid of settings (minutes, no model)::

    python benchmarks/verdicts_adapt.py --binormal 40 --replicates 400 [--settings 1.8:-1:50:0,...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

from scanstream import metrics as mt
from scanstream.inference.scoring import score_store
from scanstream.network.checkpoint import checkpoint_hash
from scanstream.picker import cuts as bl
from scanstream.review.adapt import JudgedSample, asked_until, build_design, record_from_verdicts, weighted_recall_cut
from scanstream.store import open_store
from scanstream.threshold import build_threshold_record
from scanstream.verdicts import VerdictLog, verdicts_to_store


def true_recall(y: np.ndarray, scores: np.ndarray, t: float) -> float:
    return mt.operating_point_at_threshold(y, scores, t).recall.value


def load_cut(y: np.ndarray, scores: np.ndarray, former: np.ndarray) -> dict:
    """Candidates of the cuts over the model's at the cuts' recall (the cuts with no alpha: null)."""
    former_op = mt.operating_point_from_selection(y, former)
    if former_op.true_positives == 0:
        return {"cuts_recall": 0.0, "factor": None}
    op = mt.operating_point_at_recall(y, scores, former_op.recall.value)
    return {"cuts_recall": former_op.recall.value, "cuts_candidates": former_op.candidates.value,
            "model_candidates": op.candidates.value,
            "factor": mt.ratio_with_error(former_op.candidates, op.candidates).to_dict()}


def after(record: dict, y_ranked: np.ndarray, scores_ranked: np.ndarray, target: float) -> dict:
    a, t = record["achieved"], record["threshold"]
    truth = true_recall(y_ranked, scores_ranked, t)
    lo, hi = a["recall_ci"]
    return {"threshold": t, "threshold_ci": record["threshold_ci"], "true_recall": truth,
            "estimated_recall": a["recall"], "recall_ci": [lo, hi], "selected": a["selected"],
            "truth_inside_ci": lo <= truth <= hi, "target_inside_true_ci": bool(lo <= target <= hi),
            "estimated_alpha": a["alpha"], "alpha_ci": a["alpha_ci"]}


#: Synthetic settings of ``--binormal``: (alpha logit sd, logit shift, alpha verdicts, fraction of alpha decays
#: scored like the background). Shallow (sd 0.9) to deep (2.5) alpha populations, shifted sheets, 20-100 verdicts,
#: and a population the binormal model does not describe (15 % of alpha decays scored N(-3, 1.5)).
SETTINGS = ((0.9, 0.0, 50, 0.0), (1.8, 0.0, 50, 0.0), (2.5, 0.0, 50, 0.0), (1.8, -1.0, 50, 0.0), (2.5, -1.0, 50, 0.0),
            (1.8, 0.0, 20, 0.0), (1.8, 0.0, 100, 0.0), (1.2, 0.0, 50, 0.15))


def previous_estimator(design, asked: np.ndarray, y: np.ndarray, target: float, replicates: int,
                       seed: int) -> tuple[float, float, float]:
    """The estimator the posterior replaced, kept as this benchmark's baseline: (cut, CI low, CI high).

    The cut where the Horvitz-Thompson recall (each verdict weighted ``N_h / n_h``) reaches
    ``target``, and the 95 % percentile interval of the recall there from a Rao-Wu rescaled
    stratified bootstrap (each band resampled ``n_h - 1`` times with replacement, weights
    rescaled by ``sqrt(1 - n_h / N_h)``).
    """
    sample = JudgedSample(design, asked, y)
    w, s, alpha = sample.weights(), design.scores[asked], y == 1
    t = weighted_recall_cut(y, w, s, target)
    rng = np.random.default_rng(seed)
    rw = np.repeat(w[None, :], replicates, axis=0)
    bands = design.band[asked]
    for h, size in enumerate(design.sizes):
        members = np.nonzero(bands == h)[0]
        n = members.size
        if n >= 2:
            lam = math.sqrt(max(0.0, 1.0 - n / size))
            counts = rng.multinomial(n - 1, np.full(n, 1.0 / n), size=replicates)
            rw[:, members] = w[members] * (1.0 - lam + lam * counts * n / (n - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (rw @ (alpha & (s >= t))) / (rw @ alpha)
    lo, hi = np.quantile(recall[np.isfinite(recall)], [0.025, 0.975])
    return t, float(lo), float(hi)


def synthetic_sheet(sd: float, shift: float, mix: float, args: argparse.Namespace, rng) -> tuple[np.ndarray, np.ndarray]:
    """Labels int8 (n,) and logits (n,): others N(-4 + shift, 1.5), alpha decays N(1.5 + shift, sd)
    (a fraction ``mix`` of them N(-3 + shift, 1.5) instead)."""
    y = (np.arange(args.objects) < args.alpha).astype(np.int8)
    alpha = rng.normal(1.5 + shift, sd, y.size)
    alpha = np.where(rng.random(y.size) < mix, rng.normal(-3 + shift, 1.5, y.size), alpha)
    return y, np.where(y == 1, alpha, rng.normal(-4 + shift, 1.5, y.size))


def binormal_setting(setting: tuple[float, float, int, float], args: argparse.Namespace) -> dict:
    """One setting of ``--binormal``: the previous and the current estimator on the same synthetic sheets."""
    sd, shift, verdicts, mix = setting
    t0 = 1.5 + sd * float(norm.ppf(1 - args.recall))  # where the unshifted binormal sheet has the target recall
    ids = np.array([f"o{i:06d}" for i in range(args.objects)])
    rows: dict[str, list] = {"previous": [], "current": []}
    for r in range(args.binormal):
        y, s = synthetic_sheet(sd, shift, mix, args, np.random.default_rng(1000 + r))
        for method, alloc in (("previous", (1,)), ("current", None)):
            d = build_design(ids, s, threshold=t0, sheet="B", seed=r, allocation=alloc)
            y_r = y[d.source]
            asked = np.sort(asked_until(d, y_r, verdicts))
            if method == "previous":
                t, lo, hi = previous_estimator(d, asked, y_r[asked], args.recall, args.replicates, r)
            else:
                rec = record_from_verdicts(JudgedSample(d, asked, y_r[asked]), target_recall=args.recall,
                                           model_hashes=["-"], calibration={}, replicates=args.replicates, seed=r)
                t, (lo, hi) = rec["threshold"], rec["achieved"]["recall_ci"]
            truth = true_recall(y_r, d.scores, t)
            rows[method].append((asked.size, truth, lo <= truth <= hi, hi - lo))

    def q(v: np.ndarray) -> list[float]:
        return [round(float(x), 3) for x in np.quantile(v, [0.1, 0.5, 0.9])]

    out = {"alpha_sd": sd, "shift": shift, "alpha_verdicts": verdicts, "mix": mix, "old_threshold": round(t0, 4)}
    for method, v in rows.items():
        a = np.array(v, np.float64)
        out[method] = {"ci_holds_truth": round(float(a[:, 2].mean()), 3),
                       "ci_width_median": round(float(np.median(a[:, 3])), 3),
                       "degenerate_ci": round(float((a[:, 3] <= 0).mean()), 3),
                       "verdicts_asked_q10_50_90": q(a[:, 0]), "true_recall_after_q10_50_90": q(a[:, 1]),
                       "true_recall_after_mean": round(float(a[:, 1].mean()), 3),
                       "after_at_least_0.70": round(float((a[:, 1] >= 0.70).mean()), 3)}
    return out


def binormal(args: argparse.Namespace) -> dict:
    """The estimators alone on synthetic sheets: binormal logits, no model, no images.

    For each setting (``--settings``, default :data:`SETTINGS`), ``--binormal`` sheets of
    ``--objects`` objects with ``--alpha`` alpha decays; the old threshold is where the
    unshifted sheet has recall ``--recall``. A simulated reviewer answers in the useful order
    until the setting's alpha verdicts, once with the previous design and estimator (equal
    allocation, Horvitz-Thompson with a stratified bootstrap) and once with the current ones.
    Reports how often the 95 % interval holds the true recall at the new cut, its width,
    the verdicts asked and the true recall the new cut delivers, side by side.
    """
    settings = SETTINGS if args.settings is None else tuple(
        (float(a), float(b), int(c), float(d)) for a, b, c, d in (x.split(":") for x in args.settings.split(",")))
    return {"binormal": {"sheets": args.binormal, "objects": args.objects, "alpha": args.alpha,
                         "target_recall": args.recall, "replicates": args.replicates},
            "settings": [binormal_setting(s, args) for s in settings]}


def finetune(args: argparse.Namespace, sheet, verdict_rows: list[dict], labels: list[int]) -> Path:
    """The verdicts -> a labelled store -> ``train --recipe finetune``; the new checkpoint."""
    from scanstream.training.config import TrainConfig
    from scanstream.training.loop import train
    from scanstream.training.recipes import RECIPES, pretrained_options

    log = VerdictLog(args.work / "verdicts")
    for row, lab in zip(verdict_rows, labels):
        log.append(row, "alpha" if lab == 1 else "not_alpha")
    store = verdicts_to_store(args.work / "verdicts", [sheet.path], args.work / "verdicts.zarr", overwrite=True)
    cfg = TrainConfig(**{
        **RECIPES["finetune"], **pretrained_options(str(args.model[0])), "train_store": str(store.out),
        "valid_store": str(args.valid), "out_dir": str(args.work / "finetuned"), "pretrained": str(args.model[0]),
        "max_epochs": args.epochs, "recipe": "finetune", "device": "cpu", "batch_size": args.batch_size,
        "loader": "local",
    })
    return Path(train(cfg, progress=False).checkpoint)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, action="append", help="checkpoint (repeat: an ensemble)")
    ap.add_argument("--valid", type=Path, help="labelled VALID store the threshold is calibrated on")
    ap.add_argument("--sheet", type=Path, help="labelled store of the shifted sheet (truth = reviewer)")
    ap.add_argument("--recall", type=float, default=0.788, help="target recall (default 0.788, the cuts' recall)")
    ap.add_argument("--alpha-verdicts", type=int, default=50, help="stop after this many alpha verdicts (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the useful order")
    ap.add_argument("--replicates", type=int, default=2000, help="posterior draws (default 2000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--finetune", action="store_true", help="also fine-tune on the verdicts (needs --work)")
    ap.add_argument("--work", type=Path, help="directory for the verdicts, their store and the fine-tuned run")
    ap.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs (default: the finetune recipe's 12)")
    syn = ap.add_argument_group("the estimator alone on binormal synthetic sheets (no model, no stores)")
    syn.add_argument("--binormal", type=int, metavar="SHEETS", help="run this many synthetic sheets instead")
    syn.add_argument("--objects", type=int, default=20000, help="objects per synthetic sheet (default 20000)")
    syn.add_argument("--alpha", type=int, default=109, help="alpha decays per synthetic sheet (default 109)")
    syn.add_argument("--settings", metavar="SD:SHIFT:VERDICTS:MIX,...",
                     help="synthetic settings (default: the grid of SETTINGS in this script)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.binormal:
        doc = binormal(args)
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(doc, indent=2))
        return 0
    if not (args.model and args.valid and args.sheet):
        ap.error("--model, --valid and --sheet are required (or --binormal)")
    if args.finetune and args.work is None:
        ap.error("--finetune needs --work")
    valid, sheet = open_store(args.valid), open_store(args.sheet)
    models = [str(m) for m in args.model]
    hashes = [checkpoint_hash(m) for m in models]
    s_valid = score_store(valid, models, device="cpu", batch_size=args.batch_size, precision="fp32")
    known = valid.labels >= 0
    vrec = build_threshold_record(valid.labels[known], s_valid[known], target_kind="recall", target_value=args.recall,
                                  model_hashes=hashes, calibration_store={"path": str(args.valid)})
    y = sheet.labels.astype(np.int64)
    if (y < 0).any():
        raise SystemExit(f"{args.sheet}: {int((y < 0).sum())} objects without a label; the sheet needs its truth")
    scores = score_store(sheet, models, device="cpu", batch_size=args.batch_size, precision="fp32")
    ids = np.asarray(sheet.table.column("object_id").to_pylist(), dtype=str)
    name = str(sheet.table.column("sheet")[0].as_py())
    design = build_design(ids, scores, threshold=vrec["threshold"], sheet=name, seed=args.seed)
    y_r, s_r = y[design.source], design.scores
    asked = np.sort(asked_until(design, y_r, args.alpha_verdicts))
    sample = JudgedSample(design, asked, y_r[asked].astype(np.int8))
    rec = record_from_verdicts(sample, target_recall=args.recall, model_hashes=hashes, replicates=args.replicates,
                               calibration={"kind": "simulated reviewer", "sheet": name, "path": str(args.sheet)})
    former = bl.run_baseline_table(sheet.table).column("selected").to_numpy(zero_copy_only=False).astype(bool)
    doc = {
        "models": models, "valid": str(args.valid), "sheet": str(args.sheet), "objects": int(y.size),
        "alpha": int((y == 1).sum()), "target_recall": args.recall, "ap": mt.average_precision(y, scores),
        "verdicts": {"asked": int(asked.size), "alpha": int(sample.labels.sum()),
                     "bands": rec["weighting"]["bands"]},
        "before": {"threshold": vrec["threshold"], "valid_recall_ci": vrec["achieved"]["recall_ci"],
                   "true_recall": true_recall(y_r, s_r, vrec["threshold"]),
                   "estimated_recall": rec["previous"]["recall"], "recall_ci": rec["previous"]["recall_ci"],
                   "selected": rec["previous"]["selected"]},
        "after": after(rec, y_r, s_r, args.recall),
        "load_cut": load_cut(y, scores, former),
    }
    if args.finetune:
        rows = sheet.table.take(design.source[asked]).to_pylist()
        rows = [{**r, "store": str(sheet.path), "store_index": int(i)} for r, i in zip(rows, design.source[asked])]
        ckpt = finetune(args, sheet, rows, list(sample.labels))
        s_ft = score_store(sheet, [str(ckpt)], device="cpu", batch_size=args.batch_size, precision="fp32")
        rec_ft = record_from_verdicts(sample, target_recall=args.recall, model_hashes=[checkpoint_hash(ckpt)],
                                      scores=s_ft[design.source], replicates=args.replicates,
                                      calibration={"kind": "simulated reviewer", "sheet": name})
        doc["finetuned"] = {"checkpoint": str(ckpt), "ap": mt.average_precision(y, s_ft),
                            "after": after(rec_ft, y_r, s_ft[design.source], args.recall),
                            "load_cut": load_cut(y, s_ft, former),
                            "note": "the fine-tuned model was trained on the judged objects: its estimate is optimistic"}
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(doc, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
