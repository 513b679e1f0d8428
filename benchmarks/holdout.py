"""The held-out comparison: former method, learned former method and networks on one full sheet.

Every method ranks the same objects of a labelled store that no training stage saw (by
default the recipe's held-out sheet: the paper's TEST size, 46,948 objects with 255 alpha
decays, simulated with a sheet name and seed of its own). The former method's cuts fix the
recall; each other method is measured at that recall (the paper's Table 2): candidates a person
must inspect, precision with sqrt(N) errors, the inspection-load factor against the cuts, and
the object-by-object McNemar test (:func:`scanstream.metrics.paired_false_positives`) against
the cuts and against the learned former method. A cascade also reports what its prefilter did
(objects passed to the network, alpha decays it rejected: the recall the cascade gives up).

Usage::

    python benchmarks/holdout.py --store HOLDOUT.zarr --feature-model FM.safetensors \\
        --model NAME=CKPT[,CKPT...] [--model NAME=CKPT ...] [--out DIR]

Prints one JSON document; with ``--out``, also writes it (``holdout.json``), the scores
(``scores.parquet``, reused by a rerun for models already scored) and the PR curves
(``pr_holdout.png``). Every input is named by its content (the store's content hash, each
file's ``checkpoint_hash``) and by a path that holds on another machine: relative to ``--out``
where the file lies beside it (the recipe's OUT/run/...), else its file name alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scanstream import atomic
from scanstream import metrics as mt
from scanstream.inference.scoring import score_store
from scanstream.network.checkpoint import checkpoint_hash, load_checkpoint
from scanstream.picker import cuts as bl
from scanstream.picker.learned import load_feature_model, prefilter_accounting
from scanstream.store import open_store


def at_recall(y: np.ndarray, scores: np.ndarray, recall: float, former: np.ndarray, learned: np.ndarray | None) -> dict:
    """AP, the operating point at ``recall``, load factor and McNemar against cuts / learned."""
    op = mt.operating_point_at_recall(y, scores, recall)
    sel = scores >= op.threshold
    out = {"ap": mt.average_precision(y, scores), **op.to_dict()}
    former_op = mt.operating_point_from_selection(y, former)
    out["load_factor_vs_cuts"] = mt.ratio_with_error(former_op.candidates, op.candidates).to_dict()
    out["mcnemar_vs_cuts"] = mt.paired_false_positives(y, former, sel)
    if learned is not None:
        out["mcnemar_vs_learned"] = mt.paired_false_positives(y, learned, sel)
    return out


def cascade_record(table: pa.Table, checkpoints: list[str]) -> dict | None:
    """What a cascade's prefilter passed on to the network (None for other models)."""
    ck = load_checkpoint(checkpoints[0])
    if ck.prefilter_threshold is None:
        return None
    return {"prefilter_threshold": ck.prefilter_threshold,
            **prefilter_accounting(ck.feature_model, table, ck.prefilter_threshold)}


def shown(path: str | Path, out: Path | None) -> str:
    """``path`` as holdout.json records it: relative to ``out`` when both lie under ``out``'s
    parent (the recipe's OUT), else the file name alone (never a machine's absolute path)."""
    path = Path(path).resolve()
    base = (out if out is not None else Path.cwd()).resolve()
    if path.is_relative_to(base.parent):
        return Path(os.path.relpath(path, base)).as_posix()
    return path.name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True, help="the labelled held-out crop store")
    ap.add_argument("--feature-model", type=Path, help="the learned former method (feature model file)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=CKPT[,CKPT]", help="a model or ensemble to compare")
    ap.add_argument("--out", type=Path, help="write holdout.json, scores.parquet and pr_holdout.png here")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    store = open_store(args.store)
    table = store.table
    y = table.column("label").to_numpy().astype(np.int64)
    cuts = bl.run_baseline_table(table)
    former = cuts.column("selected").to_numpy(zero_copy_only=False).astype(bool)
    former_op = mt.operating_point_from_selection(y, former)
    recall = former_op.recall.value
    doc: dict = {"store": shown(args.store, args.out), "content_hash": store.content_hash, "objects": len(y),
                 "alpha": int(y.sum()), "cuts": former_op.to_dict(), "recall": recall, "models": {}}
    curves = []
    learned = None
    if args.feature_model is not None:
        fm = load_feature_model(args.feature_model)
        s = fm.score_table(table)
        doc["learned"] = at_recall(y, s, recall, former, None)
        doc["learned"].update(path=shown(args.feature_model, args.out), file_hash=checkpoint_hash(args.feature_model))
        learned = s >= doc["learned"]["threshold"]
        curves.append(("learned former method (features only)", s))
    cache_path = args.out / "scores.parquet" if args.out else None
    cache = pq.read_table(cache_path).to_pydict() if cache_path and cache_path.exists() else {}
    for spec in args.model:
        name, _, paths = spec.partition("=")
        ckpts = [p for p in paths.split(",") if p]
        if not name or not ckpts:
            print(f"error: --model {spec!r}: expected NAME=CKPT[,CKPT]", file=sys.stderr)
            return 2
        hashes = [checkpoint_hash(c) for c in ckpts]
        key = name + ":" + ",".join(hashes)
        t0 = time.perf_counter()
        if key not in cache:
            cache[key] = score_store(store, ckpts, device="cpu", batch_size=args.batch_size, precision="fp32").tolist()
        s = np.asarray(cache[key], np.float64)
        rec = at_recall(y, s, recall, former, learned)
        rec.update(checkpoints=[{"path": shown(c, args.out), "hash": h} for c, h in zip(ckpts, hashes)],
                   seconds=round(time.perf_counter() - t0, 1), cascade=cascade_record(table, ckpts))
        doc["models"][name] = rec
        curves.append((name, s))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        if cache:
            atomic.write_parquet(cache_path, pa.table({k: pa.array(v, pa.float32()) for k, v in cache.items()}))
        _figure(y, curves, former_op, args.out / "pr_holdout.png")
        atomic.write_text(args.out / "holdout.json", json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    return 0


def _figure(y: np.ndarray, curves: list[tuple[str, np.ndarray]], former: mt.OperatingPoint, path: Path) -> None:
    from scanstream.evaluation import figures as fg

    drawn = [fg.Curve(name, *mt.precision_recall_curve(y, s)[:2], mt.average_precision(y, s)) for name, s in curves]
    point = fg.Point("former method (cuts)", former.recall.value, former.precision.value, former.recall.error,
                     former.precision.error, marker="s")
    fg.plot_pr_curves(drawn, path, points=[point], title=f"Held-out sheet: {len(y):,} objects, {int(y.sum())} alpha decays")


if __name__ == "__main__":
    sys.exit(main())
