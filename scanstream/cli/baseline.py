"""``scanstream baseline``: the former method (multiplicity and track-length cuts) on a store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scanstream.cli._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline",
        help="the former method: alpha candidates by multiplicity and track-length cuts",
        description="Select alpha-decay candidates the way it was done before the CNN: cuts on the "
        "picker's vertex multiplicity and prong lengths (scanstream.baseline.BaselineConfig). "
        "Writes object_id, selected, baseline_score (--out) and prints the selection; with labels, "
        "true positives, precision and recall with sqrt(N) errors. --cuts-from TRAIN chooses the "
        "cuts on a labelled TRAIN store first (never choose them on TEST).",
    )
    p.add_argument("store", type=Path, help="a crop store (or a features-only .parquet object table)")
    p.add_argument("--out", type=Path, help="write the selection here (Parquet)")
    p.add_argument("--cuts-from", type=Path, metavar="TRAIN", help="choose the cuts on this labelled TRAIN store")
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON file of BaselineConfig fields")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scanstream import baseline as bl
    from scanstream.errors import InputError

    table = bl.read_object_table(args.store)
    if args.cuts_from is not None and args.config is not None:
        raise InputError("give either --cuts-from or --config, not both")
    if args.cuts_from is not None:
        config = bl.choose_config(bl.read_object_table(args.cuts_from))
    elif args.config is not None:
        try:
            fields = json.loads(args.config.read_text())
            config = bl.BaselineConfig(**fields)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{args.config}: not a BaselineConfig JSON file: {exc}") from None
    else:
        config = bl.DEFAULT_CONFIG
    result = bl.run_baseline_table(table, config=config)
    summary = bl.summarize(table, result)
    summary["cuts"] = config.to_dict()
    if args.out is not None:
        summary["out"] = str(bl.write_result(result, args.out, config=config))
    print_json(summary)
    return 0
