"""``scanstream threshold`` and ``scanstream classify``: calibrate a cut, then score stores overnight."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanstream.cli._common import add_many, deprecated_option, print_json


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "threshold",
        help="calibrate a logit threshold at a target recall or precision",
        description="Score a labelled store (VALID) with the model(s) (ensemble: mean logit), pick the "
        "threshold that reaches --target-recall (the highest such cut) or --target-precision (the lowest "
        "such cut, i.e. the most recall), and write the threshold record: the cut, achieved recall and "
        "precision with confidence intervals, the store's hash and class counts, the model hashes, and the "
        "precision to expect at other prevalences (alpha:other, e.g. 1:183), projected from recall and "
        "false-positive rate. classify refuses a record made for other models. "
        "With --verdicts, recalibrate a sheet instead: the input is a candidate table and the verdicts given in "
        "its useful order (scanstream review --order useful); a logistic recalibration of the sheet's logits with "
        "one intercept per score band, fitted to the verdicts, predicts the labels not asked; the cut is the "
        "highest whose posterior mean recall on the whole sheet reaches --target-recall, and the intervals "
        "(recall, precision, the cut itself) come from its posterior predictive draws. The record says which verdicts, sheet and weighting it rests on.",
    )
    t.add_argument("store", type=Path, nargs="?", metavar="VALID.zarr",
                   help="labelled calibration store (with --verdicts: the candidate table directory)")
    add_many(t, "--model", type=Path, default=[], metavar="CKPT",
             help="checkpoint(s) (*.safetensors) or ONNX exports (*.onnx; calibrate on the file classify will run); "
             "required without --verdicts")
    t.add_argument("--verdicts", type=Path, metavar="DIR",
                   help="verdicts table of the useful order: recalibrate the candidate table's sheet from them")
    t.add_argument("--sheet", help="with --verdicts: the sheet to recalibrate (needed when verdicts cover several)")
    t.add_argument("--design", metavar="ID", help="with --verdicts: the useful order (design id) to use when the "
                   "verdicts hold several")
    t.add_argument("--replicates", type=int, default=2000,
                   help="with --verdicts: posterior predictive draws for the intervals (default 2000)")
    deprecated_option(t, "--store", "store", "give the store first: scanstream threshold VALID.zarr --model ...",
                      type=Path)
    t.set_defaults(required_inputs={"store": "VALID.zarr"})
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-recall", "--recall", type=float, metavar="R", help="recall to reach, in (0, 1]")
    g.add_argument("--target-precision", type=float, metavar="P", help="precision to reach, in (0, 1]")
    t.add_argument(
        "--prevalence", default="1:17,1:183", metavar="LIST",
        help="comma-separated alpha:other ratios (or fractions) to project precision to (default 1:17,1:183)",
    )
    t.add_argument("--ci", choices=["clopper-pearson", "wilson"], default="clopper-pearson", help="interval method")
    t.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="score precision; use the one classify will use (default auto: bf16 on CUDA)")
    t.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    t.add_argument("--out", type=Path, required=True, metavar="THRESHOLD.json", help="the threshold record to write")
    t.set_defaults(func=run_threshold)

    c = sub.add_parser(
        "classify",
        help="score crop stores on Dask into a Parquet candidate table",
        description="Score every crop of the stores with the model(s) (mean logit) on Dask and write the "
        "candidate table: OUT/sheet-<sheet>/part-<store>-<start>.parquet, one file per task, with the "
        "threshold record, model and store hashes in the schema metadata and OUT/_manifest.parquet once every "
        "crop has its row. Rerun the same command after a crash, a kill or a failed task to finish only "
        "what is missing. Exit status 1 lists failed tasks (store and crop range).",
    )
    c.add_argument("stores", type=Path, nargs="+", metavar="STORE", help="complete crop stores (NAME.zarr)")
    add_many(c, "--model", type=Path, required=True, metavar="CKPT",
             help="checkpoint(s) (*.safetensors) or ONNX exports (*.onnx from scanstream export; CPU only)")
    c.add_argument("--threshold", type=Path, metavar="THRESHOLD.json",
                   help="threshold record for these models (without it, 'selected' is null)")
    c.add_argument("--out", type=Path, required=True, metavar="CANDIDATES", help="candidate table directory")
    c.add_argument("--scheduler", metavar="ADDRESS", help="existing Dask scheduler (default: a LocalCluster)")
    c.add_argument("--workers", type=int, help="LocalCluster workers (default: one per GPU, else 1 using all cores)")
    c.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    c.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="score precision (default auto: bf16 on CUDA and on CPUs with native bf16)")
    c.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    c.add_argument("--crops-per-task", type=int, metavar="K",
                   help="crops per Dask task, rounded up to whole shards (default one shard, 1024)")
    c.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip checking crops against the store's block digests (missing shards are still caught)")
    c.set_defaults(func=run_classify)


def run_threshold(args: argparse.Namespace) -> int:
    from scanstream.errors import InputError
    from scanstream.inference.scoring import calibrate_threshold
    from scanstream.threshold import write_threshold

    prevalences = [p.strip() for p in args.prevalence.split(",") if p.strip()]
    if args.verdicts is not None:
        return _threshold_from_verdicts(args, prevalences)
    if not args.model:
        raise InputError("--model is required (or recalibrate a candidate table from review verdicts with --verdicts)")
    record = calibrate_threshold(
        args.store, args.model,
        target_recall=args.target_recall, target_precision=args.target_precision,
        prevalences=prevalences, level=args.level, ci_method=args.ci,
        device=args.device, precision=args.precision, batch_size=args.batch_size, progress=not args.no_progress,
    )
    write_threshold(record, args.out)
    a = record["achieved"]
    print(f"threshold {record['threshold']:.4f} (logit) for {record['target']['kind']} {record['target']['value']}")
    print(f"  recall {a['recall']:.4f} [{a['recall_ci'][0]:.4f}, {a['recall_ci'][1]:.4f}]  "
          f"precision {_f(a['precision'])} [{a['precision_ci'][0]:.4f}, {a['precision_ci'][1]:.4f}]  "
          f"selected {a['selected']} ({a['true_positives']} alpha)")
    for p in record["prevalence_projection"]:
        lo, hi = p["precision_ci"]
        print(f"  at prevalence {p['prevalence']}: precision {_f(p['precision'])} [{_f(lo)}, {_f(hi)}]")
    print(f"wrote {args.out}")
    return 0


def _threshold_from_verdicts(args: argparse.Namespace, prevalences: list[str]) -> int:
    from scanstream.errors import InputError
    from scanstream.review.adapt import threshold_from_verdicts
    from scanstream.threshold import write_threshold

    if args.target_recall is None:
        raise InputError("from verdicts, give --target-recall (a precision target is not estimated from verdicts)")
    if args.model:
        raise InputError("--model and --verdicts: the verdicts recalibrate the candidate table's own models; drop --model")
    record = threshold_from_verdicts(args.store, args.verdicts, target_recall=args.target_recall, sheet=args.sheet,
                                     design=args.design, prevalences=prevalences, level=args.level,
                                     replicates=args.replicates)
    write_threshold(record, args.out)
    a, prev, w = record["achieved"], record["previous"], record["weighting"]
    ci = record["threshold_ci"]
    print(f"sheet {record['calibration_store']['sheet']}: threshold {record['threshold']:.4f} (logit) "
          f"[{_f(ci[0])}, {_f(ci[1])}] for recall {record['target']['value']}, from "
          f"{record['calibration_store']['alpha']} alpha and {record['calibration_store']['other']} other verdicts "
          f"in {len(w['bands'])} score bands")
    print(f"  estimated recall {a['recall']:.4f} [{_f(a['recall_ci'][0])}, {_f(a['recall_ci'][1])}]  "
          f"precision {_f(a['precision'])}  selected {a['selected']}  alpha decays on the sheet {a['alpha']:.1f}")
    print(f"  the previous threshold {prev['threshold']:.4f}: estimated recall {prev['recall']:.4f} "
          f"[{_f(prev['recall_ci'][0])}, {_f(prev['recall_ci'][1])}], selected {prev['selected']}")
    print(f"wrote {args.out}")
    return 0


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def run_classify(args: argparse.Namespace) -> int:
    from scanstream.inference.classify import classify

    res = classify(
        args.stores, args.model, args.out,
        threshold=args.threshold, scheduler=args.scheduler, workers=args.workers, device=args.device,
        batch_size=args.batch_size, crops_per_task=args.crops_per_task, precision=args.precision,
        verify=args.verify, progress=not args.no_progress,
    )
    print_json({
        "out": str(res.out), "complete": res.complete, "rows": res.rows, "selected": res.selected,
        "scored_now": res.processed, "tasks_now": res.tasks, "seconds": round(res.seconds, 1),
        "crops_per_s": round(res.crops_per_s, 1), "run_id": res.run_id, "failed": res.failed,
    })
    if res.failed:
        print(f"scanstream classify: {len(res.failed)} task(s) failed; the table is incomplete:", file=sys.stderr)
        for line in res.failed:
            print(f"  {line}", file=sys.stderr)
        print("repair the stores and rerun the same command to finish", file=sys.stderr)
        return 1
    return 0
