"""``scanstream simulate`` and ``scanstream simulate-dataset``: synthetic sheets with truth."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scanstream.cli._common import print_json
from scanstream.errors import InputError

CONDITION_FLAGS = {
    "density": "emulsion density, g/cm3 (sets alpha ranges)",
    "shrinkage": "thickness before / after development (scales z)",
    "fog": "fog grains per 1000 um3 of developed emulsion",
    "darkness": "development darkness (multiplies grain optical density)",
    "contrast": "image contrast about the mean brightness",
    "focus_error": "sigma (um) of the focal planes' error about the vertex",
    "mip_grains": "grains per 100 um on a minimum-ionising track",
    "brightness": "mean background grey level",
    "noise": "camera noise sigma (grey levels)",
}


def _add_condition_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sheet conditions (defaults drawn per sheet from the seed)")
    for name, help_ in CONDITION_FLAGS.items():
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"cond_{name}", type=float, metavar="X", help=help_)
    g.add_argument("--conditions", type=Path, metavar="FILE", help="TOML or JSON file of condition = value pairs")
    g.add_argument(
        "--condition", action="append", metavar="NAME=VALUE", help="set any condition by name (repeatable)"
    )


def _overrides(args: argparse.Namespace) -> dict[str, float]:
    from scanstream.simulate.conditions import parse_assignments, read_conditions_file

    out: dict[str, float] = {}
    if args.conditions is not None:
        out.update(read_conditions_file(args.conditions))
    out.update(parse_assignments(args.condition))
    out.update({k[5:]: v for k, v in vars(args).items() if k.startswith("cond_") and v is not None})
    return out


def _add_picker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--picker-errors", type=Path, metavar="FILE",
                   help="measure the features with the picker model calibrated to this measured error table "
                   "(benchmarks/picker_errors.py --table; docs/simulator.md, 'The picker's errors, measured')")
    p.add_argument("--picker-group", default="tuning", help="the table's seed group to calibrate to (default tuning)")


def _picker(args: argparse.Namespace):
    """The picker model of ``--picker-errors`` (the default one without it)."""
    from scanstream.simulate.pickercal import picker_model

    return picker_model(args.picker_errors, group=args.picker_group)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate one emulsion sheet into a crop store (with truth)",
        description="Simulate vertex-like objects of one emulsion sheet (alpha-decay stars of the "
        "thorium and uranium series and the backgrounds seen in practice), render them as a "
        "microscope would (channels R/G/B = focal planes 3 um above / at / 3 um below the vertex) "
        "and write a crop store whose object table holds the picker's features (multiplicity, "
        "track lengths) and the truth (truth_* columns). --features-only writes just the object "
        "table (Parquet), thousands of objects per second.",
    )
    p.add_argument("store", type=Path, help="NAME.zarr to write (or a .parquet file with --features-only)")
    p.add_argument("--objects", type=int, required=True, help="number of objects (crops)")
    p.add_argument("--alpha-fraction", type=float, required=True, help="fraction of alpha decays, in [0, 1]")
    p.add_argument("--sheet", required=True, help="sheet name (object ids SIM-<sheet>-000123)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (the store does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--features-only", action="store_true", help="write only the object table, no images")
    _add_picker_flags(p)
    _add_condition_flags(p)
    p.set_defaults(func=run_simulate)

    d = sub.add_parser(
        "simulate-dataset",
        help="TRAIN/VALID/TEST stores with the paper's Table 1 counts times a scale",
        description="Write DIR/train.zarr, DIR/valid.zarr and DIR/test.zarr with the paper's Table 1 "
        "counts (906/14,979, 214/3,814, 255/46,693 alpha/other) times --scale. TRAIN and VALID come "
        "from one pair of sheets, split 4:1 at random; TEST from another sheet with its own conditions.",
    )
    d.add_argument("out_dir", type=Path, help="output directory")
    d.add_argument("--scale", type=float, required=True, help="multiplies every Table 1 count (1 = full size)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--workers", type=int, default=1, help="rendering processes")
    d.add_argument("--overwrite", action="store_true", help="replace existing stores")
    _add_picker_flags(d)
    d.set_defaults(func=run_simulate_dataset)


def run_simulate(args: argparse.Namespace) -> int:
    from scanstream.candidates.ids import check_sheet_name
    from scanstream.simulate import simulate_store
    from scanstream.simulate.dataset import category_counts, check_counts, write_features
    from scanstream.simulate.pickercal import model_parameters

    check_counts(args.objects, args.alpha_fraction)
    check_sheet_name(args.sheet, source="--sheet")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    overrides = _overrides(args)
    t0 = time.perf_counter()
    picker = _picker(args)
    if args.features_only:
        table = write_features(
            args.store, objects=args.objects, alpha_fraction=args.alpha_fraction, sheet=args.sheet, seed=args.seed,
            conditions=overrides, workers=args.workers, overwrite=args.overwrite, picker=picker,
        )
        summary = {"path": str(args.store), "objects": table.num_rows, "categories": category_counts(table)}
    else:
        store = simulate_store(
            args.store, objects=args.objects, alpha_fraction=args.alpha_fraction, sheet=args.sheet,
            seed=args.seed, conditions=overrides, workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress,
            picker=picker,
        )
        summary = {"path": str(store.path), "objects": store.n, "categories": category_counts(store.table),
                   "content_hash": store.content_hash}
    if args.picker_errors is not None:
        summary["picker"] = model_parameters(picker)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print_json(summary)
    return 0


def run_simulate_dataset(args: argparse.Namespace) -> int:
    from scanstream.simulate import simulate_dataset
    from scanstream.store import open_store

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    t0 = time.perf_counter()
    paths = simulate_dataset(args.out_dir, scale=args.scale, seed=args.seed, workers=args.workers,
                             overwrite=args.overwrite, progress=not args.no_progress, picker=_picker(args))
    out = {}
    for split, p in paths.items():
        s = open_store(p)
        labels = s.labels
        out[split] = {"path": str(p), "alpha": int((labels == 1).sum()), "other": int((labels == 0).sum()),
                      "content_hash": s.content_hash}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print_json(out)
    return 0
