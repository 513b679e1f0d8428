"""``scanstream search``: the RandAugment (N, M) x seeds grid, one Dask task per training run."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    p.add_argument("--train", type=Path, required=True, metavar="STORE", help="labelled TRAIN crop store")
    p.add_argument("--valid", type=Path, required=True, metavar="STORE", help="labelled VALID crop store (chooses the setting)")
    p.add_argument("--test", type=Path, metavar="STORE", help="labelled TEST store to measure the best setting on")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="search directory (trials, results, report)")
    p.add_argument("--n", metavar="LIST", help="RandAugment operation counts, e.g. 2,4,6,8")
    p.add_argument("--m", metavar="LIST", help="RandAugment magnitudes in 0..30, e.g. 6,12,18,24,30")
    p.add_argument("--seeds", type=int, help="training runs per setting")
    p.add_argument("--backbone", default="resnet50", help="resnet50 | resnet18 | mobilenet_v3_small (default resnet50)")
    p.add_argument("--input-size", type=int, default=224, help="network input side in px (224 native, 112 for CPUs)")
    p.add_argument("--pretrained", default="none", help="none | imagenet (local torchvision cache) | weights file")
    p.add_argument("--max-epochs", type=int, default=100, help="epoch limit of each run (early stopping may end it sooner)")
    p.add_argument("--batch-size", type=int, default=96, help="mini-batch size (paper: 96)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (paper: 3e-4)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant (paper) or cosine: decay per step to 0 at --max-epochs")
    p.add_argument("--warmup-epochs", type=int, default=5, help="epochs before early stopping may act (default 5)")
    p.add_argument("--epoch-size", type=int, help="samples per epoch (default: the TRAIN store's size)")
    p.add_argument("--darkness-jitter", type=float, default=0.0, metavar="J",
                   help="per-image darkness augmentation, factors in [1-J, 1+J] (default 0: off, the paper)")
    p.add_argument("--pos-weight", action="store_true", help="weight the alpha class in the loss by the class ratio")
    p.add_argument("--unfreeze", action="store_true",
                   help="the authors' schedule: pretrained backbone frozen first, unfrozen in stages")
    p.add_argument("--device", default="auto", help="device of each trial: auto | cpu | cuda (default auto)")
    p.add_argument("--threads", type=int, help="torch threads per trial (default: cores / workers)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="existing Dask scheduler (default: a LocalCluster)")
    p.add_argument("--workers", type=int, help="LocalCluster workers (default: one per GPU, else 1)")
    p.set_defaults(func=run_search_cli)


def run_search_cli(args: argparse.Namespace) -> int:
    from scanstream.executor import gpu_count
    from scanstream.training.search import SearchConfig, default_grid, parse_int_list, run_search

    # the paper's grid where GPUs do the work (local GPUs or a cluster), a small one on a CPU
    gpus = args.device != "cpu" and (args.scheduler is not None or gpu_count() > 0)
    ns, ms, seeds = default_grid(gpus)
    config = SearchConfig(
        train_store=str(args.train), valid_store=str(args.valid), out_dir=str(args.out),
        ns=parse_int_list(args.n, "--n") if args.n else ns,
        ms=parse_int_list(args.m, "--m") if args.m else ms,
        seeds=args.seeds if args.seeds is not None else seeds,
        test_store=str(args.test) if args.test else None,
        backbone=args.backbone, input_size=args.input_size, pretrained=args.pretrained,
        max_epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs, epoch_size=args.epoch_size, darkness_jitter=args.darkness_jitter,
        pos_weight=args.pos_weight, unfreeze=args.unfreeze, device=args.device, threads=args.threads,
    )
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
