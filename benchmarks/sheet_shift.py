"""Sheet-to-sheet robustness: how a model's selection moves when one sheet condition changes.

A model trained on one sheet meets others whose development darkness, focus, noise and
illumination differ. This script simulates VALID's sheet (``--sheet``, ``--seed``) as drawn, and
again with one condition at a time set to the training sheet's value (``--from-sheet``,
``--from-seed``), same objects otherwise; it scores each store with the model(s) (several: their
ensemble, mean logit) and prints one JSON document: per variant, the condition values, the
model's AP, and at ``--recall`` how many objects it must select and which false positives
they hold. A model whose numbers do not move with a condition has learned to ignore it.

Usage::

    python benchmarks/sheet_shift.py --model RUN/model.safetensors --sheet VA --seed 22 \\
        --from-sheet TR --from-seed 21 [--objects 1500] [--alpha-fraction 0.1] [--recall 0.843] \\
        [--conditions darkness,focus_error,noise] [--work DIR]

Stores are kept in ``--work`` (default: a temporary directory) and reused when rerun.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from scanstream import metrics as mt
from scanstream.inference.scoring import score_store
from scanstream.simulate.conditions import CONDITION_NAMES, draw_conditions
from scanstream.simulate.dataset import simulate_store
from scanstream.store import is_store, open_store

PHOTOMETRIC = ("darkness", "contrast", "brightness", "noise")


def simulate(path: Path, args: argparse.Namespace, overrides: dict[str, float]):
    """VALID's sheet with ``overrides``; a store already at ``path`` (an earlier run) is reused."""
    if is_store(path):
        return open_store(path)
    return simulate_store(path, objects=args.objects, alpha_fraction=args.alpha_fraction, sheet=args.sheet,
                          seed=args.seed, conditions=overrides, workers=args.workers)


def measure(store, models: list[str], recall: float) -> dict:
    scores = score_store(store, models, device="cpu")
    labels = store.labels
    op = mt.operating_point_at_recall(labels, scores, recall)
    categories = store.table.column("category").to_pylist()
    return {"ap": round(mt.average_precision(labels, scores), 4), "selected": op.selected,
            "alpha_decays_selected": op.true_positives,
            "false_positives": mt.false_positives_by_category(labels, categories, scores >= op.threshold)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="checkpoint (repeat for an ensemble)")
    p.add_argument("--sheet", default="VA")
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--from-sheet", default="TR", help="the training sheet whose conditions are swapped in")
    p.add_argument("--from-seed", type=int, default=21)
    p.add_argument("--objects", type=int, default=1500)
    p.add_argument("--alpha-fraction", type=float, default=0.1)
    p.add_argument("--recall", type=float, default=0.843)
    p.add_argument("--conditions", default="darkness,focus_error,noise",
                   help=f"conditions to swap one at a time (of {', '.join(CONDITION_NAMES)}); all "
                   f"photometric ones ({', '.join(PHOTOMETRIC)}) together are always added")
    p.add_argument("--workers", type=int, default=2, help="simulation processes")
    p.add_argument("--work", type=Path, help="directory for the stores (default: temporary)")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONDITION_NAMES]
    if unknown:
        p.error(f"unknown condition(s) {unknown}")
    source = draw_conditions(args.from_sheet, args.from_seed).as_dict()
    target = draw_conditions(args.sheet, args.seed).as_dict()
    variants = {"as drawn": {}} | {name: {name: source[name]} for name in names}
    variants["photometric"] = {name: source[name] for name in PHOTOMETRIC}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for label, overrides in variants.items():
            path = work / f"{args.sheet}_{args.seed}_{label.replace(' ', '_')}.zarr"
            store = simulate(path, args, overrides)
            changed = {k: {"from": round(target[k], 4), "to": round(v, 4)} for k, v in overrides.items()}
            rows.append({"variant": label, "changed": changed, **measure(store, args.model, args.recall)})
    print(json.dumps({"models": args.model, "sheet": args.sheet, "seed": args.seed, "from_sheet": args.from_sheet,
                      "from_seed": args.from_seed, "objects": args.objects, "recall": args.recall,
                      "variants": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
