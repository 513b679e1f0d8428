"""``scanstream pick``: vertex-like objects from a scanned-volume store's z-stacks into a crop store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanstream.cli._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pick",
        help="vertex-like objects from z-stacks (a volume store) to crops with picker features",
        description="Classical vertex picking over every field of view of a scanned-volume store "
        "(ingest --format stack, or simulate-volume then ingest): track segments per plane and across "
        "planes, vertices where three or more meet (criteria: docs/pick.md). Each vertex becomes a "
        "224 x 224 crop at the crop stores' 0.388 um/px (R/G/B = the planes one step above / at / one "
        "step below it) with its multiplicity, prong lengths and stage position in the object table. "
        "Dask over fields; a rerun resumes. Prints a JSON summary.",
    )
    p.add_argument("volume", type=Path, help="the scanned-volume store (NAME.zarr)")
    p.add_argument("--out", type=Path, required=True, help="the crop store to write (CROPS.zarr; resumed if present)")
    p.add_argument("--sheet", default=None, help="sheet id of the objects (default: the volume's name)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, default=None, help="local Dask workers (default: one per core)")
    p.add_argument("--skip-bad", action="store_true", help="leave out fields that cannot be picked and list them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pick)


def run_pick(args: argparse.Namespace) -> int:
    from scanstream.errors import InputError
    from scanstream.picker.pick import pick_volume

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    result = pick_volume(args.volume, args.out, sheet=args.sheet, scheduler=args.scheduler, workers=args.workers,
                         skip_bad=args.skip_bad, progress=not args.no_progress)
    print_json(result.summary())
    if result.bad:
        names = ", ".join(f for f, _ in result.bad)
        print(f"scanstream pick: {len(result.bad)} bad fields left out: {names}", file=sys.stderr)
    return 0
