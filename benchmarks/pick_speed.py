#!/usr/bin/env python
"""Picking against reading the planes alone, with 1, 2, ... Dask worker processes, side by side.

Runs :func:`scanstream.picker.speed.pick_speed` on an ingested volume store (``scanstream
ingest DIR V.zarr --format stack``, e.g. of ``scanstream simulate-volume``) and prints one JSON
document: reading every field's planes in this process, then ``scanstream pick`` with each worker
count (whole run, cluster start, and the work after it), the load average before and after (the
machine may be shared), and the ratios picking / reading.

``--stages N`` instead measures what a field costs, stage by stage, in CPU seconds of this one
process (``time.process_time``, which another process's load moves far less than wall time):
reading, each of the detector's stage functions (:data:`STAGES`, as
:mod:`scanstream.picker.detect` calls them; nested ones are inside their caller's figure too),
the whole detection, and the crops and rows, over the first N fields, the least of ``--passes``
passes over the same fields.

Usage::

    python benchmarks/pick_speed.py --volume V.zarr [--workers 1,2] [--scheduler ADDRESS] [--out FILE.json]
    python benchmarks/pick_speed.py --volume V.zarr --stages 4 [--passes 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scanstream.atomic import write_text
from scanstream.picker import detect
from scanstream.picker.pick import detect_field, field_crops, field_rows
from scanstream.picker.speed import pick_speed
from scanstream.store.volume import open_volume

#: The detector's stage functions timed by ``--stages`` (criterion 1; 2-3; 4-6 per candidate,
#: with its prongs (4) and fits (6) inside; 7, as prong_lines or, before it, prong_fits; 8; the
#: displaced radon), where the detector has them.
STAGES = ("dark_masks", "_candidates", "_candidate", "_prongs", "refine", "prong_lines", "prong_fits", "one_per_star",
          "_with_origin")


@contextlib.contextmanager
def timed_stages(spent: dict[str, float]) -> Iterator[None]:
    """While inside, each of :data:`STAGES` in :mod:`scanstream.picker.detect` adds its CPU seconds to ``spent``."""
    saved = {name: getattr(detect, name) for name in STAGES if hasattr(detect, name)}

    def timed(name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - t
        return call

    try:
        for name, fn in saved.items():
            setattr(detect, name, timed(name, fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(detect, name, fn)


def stage_costs(volume: Path, fields: int, passes: int) -> dict[str, Any]:
    """CPU seconds a field of each stage over the first ``fields`` fields, the least of ``passes`` passes."""
    fovs = list(open_volume(volume))[:fields]
    best: dict[str, float] = {}
    for _ in range(passes):
        spent: dict[str, float] = defaultdict(float)
        with timed_stages(spent):
            for fov in fovs:
                t = time.process_time()
                planes = fov.read()
                spent["read"] += time.process_time() - t
                t = time.process_time()
                verts, up = detect_field(fov, planes)
                spent["detect"] += time.process_time() - t
                t = time.process_time()
                field_crops(fov, planes, verts, up)
                field_rows(fov, verts, "stages")
                spent["crops_and_rows"] += time.process_time() - t
        for name, s in spent.items():
            best[name] = min(best.get(name, float("inf")), s / max(len(fovs), 1))
    return {"volume": str(volume), "fields": len(fovs), "passes": passes,
            "cpu_seconds_a_field": {k: round(v, 4) for k, v in best.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volume", type=Path, required=True, help="an ingested volume store")
    p.add_argument("--workers", default="1,2", help="comma-separated worker process counts (default 1,2)")
    p.add_argument("--scheduler", help="an existing Dask scheduler instead of a LocalCluster per run")
    p.add_argument("--stages", type=int, metavar="N", help="CPU seconds a field, stage by stage, over the first N fields instead")
    p.add_argument("--passes", type=int, default=3, help="with --stages: passes over the fields, the least kept (default 3)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.stages is not None:
        if args.stages < 1 or args.passes < 1:
            p.error(f"--stages and --passes must be >= 1, got {args.stages} and {args.passes}")
        doc = stage_costs(args.volume, args.stages, args.passes)
    else:
        try:
            workers = [int(w) for w in args.workers.split(",") if w.strip()]
        except ValueError:
            p.error(f"--workers: comma-separated integers, got {args.workers!r}")
        doc = pick_speed(args.volume, workers=workers, scheduler=args.scheduler)
    text = json.dumps(doc, indent=1)
    if args.out is not None:
        write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
