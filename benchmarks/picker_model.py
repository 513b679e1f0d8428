#!/usr/bin/env python
"""The simulated picker beside the picker's measured errors: the table, the default model, the calibrated model.

Reads a measured error table (``benchmarks/picker_errors.py --table``), calibrates the simulated
picker to its ``--group`` (:func:`scanstream.simulate.pickercal.calibrate_picker`, on the
reference alpha decays of ``--calibration-seed``) and measures both the default and the
calibrated model on *other* alpha decays (``--objects`` of ``--seed``), as the table measures the
detector (:func:`scanstream.simulate.pickercal.simulated_errors`): prongs matched / merged /
missed / extra per true prong, extra prongs shorter and longer than 15 um, length error by
true length, measured minus true multiplicity, and the former method's cuts' kept fraction.

Usage::

    python benchmarks/picker_model.py --table docs/pick/picker_errors.json [--group tuning] \\
        [--objects 2000] [--seed 1] [--calibration-seed 0] [--markdown FILE.md]

Prints one JSON document (the three columns and the calibrated parameters); ``--markdown``
also writes them as a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from scanstream import atomic
from scanstream.physics.picker import DEFAULT_PICKER, read_error_table
from scanstream.simulate.pickercal import (
    REFERENCE_OBJECTS,
    calibrate_picker,
    extra_split,
    model_parameters,
    reference_alphas,
    simulated_errors,
)


def _multiplicity(g: dict) -> dict:
    counts = {int(k): v for k, v in g["multiplicity_measured_minus_true"].items()}
    n = max(sum(counts.values()), 1)
    return {key: round(sum(v for k, v in counts.items() if test(k)) / n, 3)
            for key, test in (("<=-2", lambda k: k <= -2), ("-1", lambda k: k == -1), ("0", lambda k: k == 0),
                              ("+1", lambda k: k == 1), (">=+2", lambda k: k >= 2))}


def column(g: dict) -> dict:
    """The side-by-side measures of one group of measures (a table's or the simulated picker's)."""
    short, long = extra_split(g["extra_prongs_by_length"])
    return {
        "prongs_true": g["prongs"]["true"],
        **{f"{k}_per_true_prong": g["prongs"][f"{k}_per_true_prong"] for k in ("matched", "merged", "missed", "extra", "split")},
        "extra_shorter_than_15um_per_true_prong": short, "extra_15um_or_longer_per_true_prong": long,
        "length_error_by_true_length": g["length_error_by_true_length"],
        "multiplicity_measured_minus_true_fraction": _multiplicity(g),
        "cuts_kept_of_found_alpha": g["cuts_kept_of_found_alpha"],
        "cuts_kept_of_picked_alpha": g["cuts_kept_of_picked_alpha"],
    }


def markdown(doc: dict) -> str:
    """The three columns as a Markdown table."""
    names = ("measured", "default", "calibrated")
    cols = [doc[n] for n in names]
    rows = ["| measure | measured (table) | simulated, default model | simulated, calibrated model |", "|---|---|---|---|"]

    def row(label: str, fn) -> None:
        rows.append(f"| {label} | " + " | ".join(fn(c) for c in cols) + " |")

    row("true prongs", lambda c: f"{c['prongs_true']}")
    for k in ("matched", "merged", "missed", "extra", "split"):
        row(f"{k} per true prong", lambda c, k=k: f"{c[k + '_per_true_prong']:.3f}")
    row("extra, shorter than 15 um / 15 um or longer", lambda c: f"{c['extra_shorter_than_15um_per_true_prong']:.3f} / "
        f"{c['extra_15um_or_longer_per_true_prong']:.3f}")
    for i, b in enumerate(cols[0]["length_error_by_true_length"]):
        lo, hi = b["true_um"]

        def cell(c, i=i):
            e = c["length_error_by_true_length"][i]
            return "-" if not e["prongs"] else f"{e['median_um']:+.2f} ({e['q16_q84_um'][0]:g} / {e['q16_q84_um'][1]:g}), {e['prongs']}"

        row(f"length error, true {lo:g}-{hi:g} um: median (q16 / q84), prongs", cell)
    row("multiplicity measured - true: <=-2 / -1 / 0 / +1 / >=+2 (fraction of decays)",
        lambda c: " / ".join(f"{v:.3f}" for v in c["multiplicity_measured_minus_true_fraction"].values()))
    row("former method's cuts: kept of the alpha decays with a vertex within 15 um (every simulated one)",
        lambda c: f"{c['cuts_kept_of_found_alpha']}")
    row("former method's cuts: kept of the picked alpha decays (within 2 um)",
        lambda c: "-" if c["cuts_kept_of_picked_alpha"] is None else f"{c['cuts_kept_of_picked_alpha']}")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", type=Path, required=True, help="the measured error table (benchmarks/picker_errors.py --table)")
    p.add_argument("--group", default="tuning", help="its seed group (default tuning)")
    p.add_argument("--objects", type=int, default=2000, help="alpha decays the two models are measured on")
    p.add_argument("--seed", type=int, default=1, help="draws those decays (not the calibration's)")
    p.add_argument("--calibration-objects", type=int, default=REFERENCE_OBJECTS)
    p.add_argument("--calibration-seed", type=int, default=0)
    p.add_argument("--markdown", type=Path, help="write the table here")
    args = p.parse_args(argv)
    if args.seed == args.calibration_seed:
        p.error("--seed must differ from --calibration-seed (the models are measured on other decays)")
    table = read_error_table(args.table)
    if args.group not in table["groups"]:
        p.error(f"{args.table}: no group {args.group!r} (it has {', '.join(table['groups'])})")
    t0 = time.perf_counter()
    reference = reference_alphas(args.calibration_objects, seed=args.calibration_seed)
    model = calibrate_picker(table, group=args.group, objects=reference, seed=args.calibration_seed)
    seconds = time.perf_counter() - t0
    objects = reference_alphas(args.objects, seed=args.seed)
    doc = {"table": str(args.table), "group": args.group, "measured_on": table["measured"],
           "objects": args.objects, "seed": args.seed, "calibration_objects": args.calibration_objects,
           "calibration_seed": args.calibration_seed, "calibration_seconds": round(seconds, 1),
           "default_parameters": model_parameters(DEFAULT_PICKER), "calibrated_parameters": model_parameters(model),
           "measured": column(table["groups"][args.group]),
           "default": column(simulated_errors(DEFAULT_PICKER, objects, seed=args.seed)),
           "calibrated": column(simulated_errors(model, objects, seed=args.seed))}
    text = json.dumps(doc, indent=1)
    if args.markdown:
        atomic.write_text(args.markdown, markdown(doc))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
