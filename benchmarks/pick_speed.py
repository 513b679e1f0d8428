#!/usr/bin/env python
"""Picking against reading the planes alone, with 1, 2, ... Dask worker processes, side by side.

Runs :func:`scanstream.picker.speed.pick_speed` on an ingested volume store (``scanstream
ingest DIR V.zarr --format stack``, e.g. of ``scanstream simulate-volume``) and prints one JSON
document: reading every field's planes in this process, then ``scanstream pick`` with each
worker count (whole run, cluster start, and the work after it), the load average before and
after (the machine may be shared), and the ratios picking / reading.

Usage::

    python benchmarks/pick_speed.py --volume V.zarr [--workers 1,2] [--scheduler ADDRESS] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scanstream.atomic import write_text
from scanstream.picker.speed import pick_speed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volume", type=Path, required=True, help="an ingested volume store")
    p.add_argument("--workers", default="1,2", help="comma-separated worker process counts (default 1,2)")
    p.add_argument("--scheduler", help="an existing Dask scheduler instead of a LocalCluster per run")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error(f"--workers: comma-separated integers, got {args.workers!r}")
    text = json.dumps(pick_speed(args.volume, workers=workers, scheduler=args.scheduler), indent=1)
    if args.out is not None:
        write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
