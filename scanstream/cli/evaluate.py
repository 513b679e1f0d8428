"""``scanstream evaluate``: AP, PR curves, Table 2 against the former method, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.cli._common import add_many, deprecated_option
from scanstream.evaluation.report import pm


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="AP, precision-recall curves, Table 2 against the former method, report",
        description="Evaluate candidate tables against the labels of crop stores: Average Precision, "
        "precision-recall curves (several tables on one plot), output distributions of alpha decays "
        "and others; with --baseline, the paper's Table 2 at the former method's recall (candidates, "
        "precision and recall with sqrt(N) errors, precision ratio, inspection-load factor) and false "
        "positives by category; the same at the calibrated threshold. Writes report.md, metrics.json "
        "and PNG figures to --out. Objects labelled unknown (-1) are left out. With --feature-model, the "
        "learned former method (boosted trees on the picker's features) is reported beside the cuts.",
    )
    p.add_argument("candidates", type=Path, nargs="*", metavar="CANDIDATES",
                   help="candidate table directories (several to compare models; the first is the primary one)")
    deprecated_option(p, "--candidates", "candidates", "give the tables first: scanstream evaluate CANDIDATES ... "
                      "--store STORE", many=True, type=Path)
    p.set_defaults(required_inputs={"candidates": "CANDIDATES"})
    add_many(p, "--name", metavar="NAME",
             help="name of each table in figures and tables, in the same order (default: directory names)")
    add_many(p, "--store", type=Path, required=True, metavar="STORE",
             help="labelled crop store(s) the tables scored")
    p.add_argument("--baseline", type=Path, metavar="FILE",
                   help="the former method's table (`scanstream baseline STORE --out FILE.parquet`)")
    p.add_argument("--feature-model", type=Path, metavar="FILE",
                   help="the learned former method, a feature model (`scanstream baseline --learned TRAIN "
                   "--save-model FILE.safetensors`): its AP, Table 2 column and paired comparison beside the cuts")
    p.add_argument("--threshold", type=Path, metavar="FILE",
                   help="threshold record for the first table (default: the one recorded in the table, if any)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="report directory")
    p.add_argument("--title", default="scanstream evaluation", help="report title")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from scanstream.evaluation.evaluate import evaluate  # matplotlib, sklearn: only when the verb runs

    res = evaluate(
        args.candidates, args.store, args.out,
        baseline=args.baseline, threshold=args.threshold, names=args.name, title=args.title,
        feature_model=args.feature_model,
    )
    m = res.metrics
    for name, v in m["models"].items():
        print(f"{name}: AP {v['ap']:.3f}")
    if "at_former_recall" in m:
        t2 = m["at_former_recall"]["table2"]
        print(
            f"at the former method's recall {m['at_former_recall']['target_recall']:.3f}: "
            f"former {t2['former']['candidates']['value']:.0f} candidates (precision {pm(t2['former']['precision'])}), "
            f"CNN {t2['cnn']['candidates']['value']:.0f} (precision {pm(t2['cnn']['precision'])}); "
            f"precision ratio {pm(t2['precision_ratio'], 1)}, inspection load / {pm(t2['load_factor'], 1)}"
        )
    if "learned" in m:
        print(_learned_summary(m))
    print(f"report: {res.report}")
    return 0


def _learned_summary(m: dict) -> str:
    """One line: the learned former method's AP and its candidates at the comparison recall."""
    lm = m["learned"]
    line = f"{lm['name']}: AP {lm['ap']:.3f}"
    if "at_former_recall" in lm:
        op = lm["at_former_recall"]["operating_point"]
        return line + (f"; {op['selected']} candidates at the former method's recall "
                       f"{lm['at_former_recall']['target_recall']:.3f} (precision {pm(op['precision'])})")
    primary = next(iter(m["models"]))
    e = (lm.get("at_threshold_recall") or {}).get(primary)
    if e is not None:
        line += (f"; {e['operating_point']['selected']} candidates at {primary}'s calibrated-threshold recall "
                 f"{e['target_recall']:.3f}")
    return line
