"""``scanstream search``: the RandAugment (N, M) x seeds grid, one Dask task per training run."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.cli._common import deprecated_option
from scanstream.config import add_flags, given_flags
from scanstream.training.config import SearchConfig, TrainConfig, config_from_dict, default_grid, verb_fields

#: the trials' shared training options with a flag (TrainConfig fields, their help the field's)
TRAIN_FLAGS = verb_fields(TrainConfig, "search")
#: the grid's own (SearchConfig fields: --n, --m, --seeds, --threads)
GRID_FLAGS = verb_fields(SearchConfig, "search")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="RandAugment (N, M) x seeds grid search on Dask",
        description="Train one model per (N, M, seed) as Dask tasks (one per GPU worker; GPU=1 resource), "
        "gather VALID AP into results.csv/parquet and summary.csv, draw the mean ± std heatmap "
        "(heatmap.png), pick the setting with the best mean VALID AP and, with --test, measure its "
        "models on TEST one by one and as an ensemble (mean logit). Finished trials (a done.json in "
        "DIR/trials/nN_mM_sS/) are not rerun: rerun the same command to resume. Default grid: the "
        "paper's N 2,4,6,8 x M 6,12,18,24,30 x 4 seeds with a GPU; N 2,6 x M 12,24 x 2 seeds on CPU.",
    )
    p.add_argument("train", type=Path, nargs="?", metavar="TRAIN.zarr", help="labelled TRAIN crop store")
    p.add_argument("valid", type=Path, nargs="?", metavar="VALID.zarr", help="labelled VALID crop store (chooses the setting)")
    deprecated_option(p, "--train", "train", "give the stores first: scanstream search TRAIN.zarr VALID.zarr --out ...",
                      type=Path)
    deprecated_option(p, "--valid", "valid", "give the stores first: scanstream search TRAIN.zarr VALID.zarr --out ...",
                      type=Path)
    p.set_defaults(required_inputs={"train": "TRAIN.zarr", "valid": "VALID.zarr"})
    p.add_argument("--test", type=Path, metavar="STORE", help="labelled TEST store to measure the best setting on")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="search directory (trials, results, report)")
    add_flags(p, SearchConfig, GRID_FLAGS)
    add_flags(p, TrainConfig, TRAIN_FLAGS)
    p.add_argument("--scheduler", metavar="ADDRESS", help="existing Dask scheduler (default: a LocalCluster)")
    p.add_argument("--workers", type=int, help="LocalCluster workers (default: one per GPU, else 1)")
    p.set_defaults(func=run_search_cli)


def run_search_cli(args: argparse.Namespace) -> int:
    from scanstream.executor import gpu_count
    from scanstream.training.search import run_search

    shared = given_flags(args, TRAIN_FLAGS)
    # the paper's grid where GPUs do the work (local GPUs or a cluster), a small one on a CPU
    gpus = shared.get("device", "auto") != "cpu" and (args.scheduler is not None or gpu_count() > 0)
    ns, ms, seeds = default_grid(gpus)
    base = config_from_dict({**shared, "train_store": str(args.train), "valid_store": str(args.valid),
                             "out_dir": str(args.out)})
    grid = {"ns": ns, "ms": ms, "seeds": seeds, **given_flags(args, GRID_FLAGS)}
    config = SearchConfig(base=base, out_dir=str(args.out), test_store=str(args.test) if args.test else None, **grid)
    res = run_search(config, scheduler=args.scheduler, workers=args.workers)
    print(f"trials: {len(res.trained)} trained, {len(res.resumed)} already finished")
    for r in res.summary:
        std = "" if r["val_ap_std"] != r["val_ap_std"] else f" +- {r['val_ap_std']:.4f}"
        print(f"N={r['n']} M={r['m']}: VALID AP {r['val_ap_mean']:.4f}{std} ({r['trials']} seeds)")
    print(f"best: N={res.best[0]} M={res.best[1]}")
    if res.test:
        t = res.test
        print(f"TEST AP {t['ap']['value']:.4f} +- {t['ap']['error'] or float('nan'):.4f} over models; "
              f"ensemble {t['ap_ensemble']:.4f}")
    print(f"report: {res.report}")
    return 0
