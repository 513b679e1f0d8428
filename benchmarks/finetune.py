"""Fine-tuning the shipped model on a small labelled store, as a user with few alpha decays would.

A user has a few dozen labelled alpha decays of their own sheets (the paper had 906). This
script simulates such a labelled store (``--objects`` with ``--alpha`` alpha decays, sheet
``USER-A``) and a VALID store of another sheet (``USER-V``), neither of which any shipped model
saw, then measures on VALID: the shipped checkpoint as it is, the learned former method fitted on
the small store, and the shipped checkpoint fine-tuned on the small store (``scanstream train
--pretrained CKPT``: recipe ``finetune``), with the training time. Prints one JSON document.

Usage::

    python benchmarks/finetune.py --model models/scanstream-cpu-cascade.safetensors --work DIR \\
        [--objects 800] [--alpha 50] [--valid-objects 2000] [--valid-alpha-fraction 0.1] [--epochs 12]

Stores and the fine-tuned run are kept in ``--work`` and reused when rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from scanstream import metrics as mt
from scanstream.inference.scoring import score_store
from scanstream.picker.learned import fit_feature_model
from scanstream.simulate.dataset import simulate_store
from scanstream.store import is_store, open_store
from scanstream.training.config import TrainConfig
from scanstream.training.loop import train
from scanstream.training.recipes import RECIPES, pretrained_options


def _store(path: Path, **kw):
    if is_store(path) and open_store(path, require_complete=False).complete:
        return open_store(path)
    return simulate_store(path, workers=1, **kw)


def _ap(store, scores) -> float:
    y = store.labels
    keep = y >= 0
    return mt.average_precision(y[keep], scores[keep])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the shipped checkpoint")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--objects", type=int, default=800)
    ap.add_argument("--alpha", type=int, default=50)
    ap.add_argument("--valid-objects", type=int, default=2000)
    ap.add_argument("--valid-alpha-fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=RECIPES["finetune"]["max_epochs"])
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    small = _store(args.work / "user_train.zarr", objects=args.objects, alpha_fraction=args.alpha / args.objects,
                   sheet="USER-A", seed=77)
    valid = _store(args.work / "user_valid.zarr", objects=args.valid_objects, alpha_fraction=args.valid_alpha_fraction,
                   sheet="USER-V", seed=78)
    doc: dict = {"small_store": {"objects": small.n, "alpha": int((small.labels == 1).sum()), "sheet": "USER-A"},
                 "valid": {"objects": valid.n, "alpha": int((valid.labels == 1).sum()), "sheet": "USER-V"}}
    doc["shipped_ap"] = _ap(valid, score_store(valid, [args.model], device="cpu", precision="fp32"))
    doc["learned_on_small_store_ap"] = _ap(valid, fit_feature_model(small.table).score_table(valid.table))
    cfg = TrainConfig(**{
        **RECIPES["finetune"], **pretrained_options(str(args.model)), "train_store": str(small.path),
        "valid_store": str(valid.path), "out_dir": str(args.work / "finetuned"), "pretrained": str(args.model),
        "max_epochs": args.epochs, "recipe": "finetune", "device": "cpu",
    })
    t0 = time.perf_counter()
    result = train(cfg, progress=False)
    doc["finetune"] = {"seconds": round(time.perf_counter() - t0, 1), "epochs": args.epochs,
                       "best_epoch": result.best_epoch, "history_val_ap": [h["val_ap"] for h in result.history]}
    doc["finetuned_ap"] = _ap(valid, score_store(valid, [result.checkpoint], device="cpu", precision="fp32"))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
