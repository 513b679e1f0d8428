"""``scanstream ingest``: scanner output (crop files, class folders, z-stacks) into a store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanstream.cli._common import print_json, progress
from scanstream.errors import InputError

FORMAT_HELP = """\
formats:
  images       SRC holds PNG/JPEG/TIFF crops and a listing (CSV or Parquet; --listing, else the only
               .csv/.parquet in SRC) with one row per crop: file (relative to SRC), object_id,
               x_mm, y_mm, z_mm (stage position, mm); optional label (1/alpha, 0/other,
               -1/unknown), sheet, plate, module, experiment, category, multiplicity.
               Accepted column names: see docs/store.md.
  imagefolder  SRC/<class>/<file>: files in the positive class folder (--positive, default
               1_positive) get label 1, every other class folder label 0; category = folder
               name; object id = path relative to SRC (prefixed by --id-prefix).
  stack        SRC is a z-stack folder with info.json (or the later image.json: AffineP2S,
               string-typed Stage / EmulsionType, per-image stagez / extrastage), or a folder of
               them; STORE becomes an OME-Zarr (NGFF 0.5) scanned-volume store, one multiscale
               image per field of view. Image paths must lie inside the stack folder; a stack
               with missing planes, planes of another size or missing images is refused
               (--skip-bad: left out and listed). Then: scanstream pick STORE --out CROPS.zarr.

Crops must be 224 x 224 px unless --resize; grayscale becomes three equal channels. A rerun adds
nothing twice (ids already in STORE are skipped) and resumes an interrupted store. Bad input
stops the run with one line naming the file and problem, and leaves STORE as it was; with
--skip-bad the rest is ingested and the bad items are listed in STORE.quarantine.csv.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="scanner output (crop files, class folders, z-stacks) into a crop or volume store",
        description="Ingest scanner output into a crop store (images, imagefolder) or a scanned-volume "
        "store (stack). Prints a JSON summary.",
        epilog=FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", type=Path, help="source folder")
    p.add_argument("store", type=Path, help="the NAME.zarr store to create or add to")
    p.add_argument("--format", required=True, choices=("images", "imagefolder", "stack"), help="source layout")
    p.add_argument("--listing", type=Path, default=None, help="images: the CSV/Parquet listing")
    p.add_argument("--positive", default="1_positive", metavar="NAME",
                   help="imagefolder: the class folder whose files are alpha decays (default 1_positive)")
    p.add_argument("--resize", action="store_true", help="resize crops of another size to 224 x 224 instead of refusing")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave bad items out and list them in STORE.quarantine.csv instead of stopping")
    p.add_argument("--sheet", default=None, help="sheet id for objects whose source names none")
    p.add_argument("--experiment", default=None, help="experiment for objects whose source names none")
    p.add_argument("--module", type=int, default=None, help="module for objects whose source names none")
    p.add_argument("--plate", type=int, default=None, help="plate for objects whose source names none")
    p.add_argument("--id-prefix", default="", help="imagefolder: prefix for every object id")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    p.add_argument("--batch-size", type=int, default=256, help="images decoded per batch (default 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    bar = progress(None, f"ingest {args.src.name}", unit="file", disable=True if args.no_progress else None)
    try:
        if args.format == "stack":
            from scanstream.ingest.stacks import ingest_stacks

            given = [flag for flag, value in (("--resize", args.resize), ("--listing", args.listing),
                                              ("--id-prefix", args.id_prefix), ("--sheet", args.sheet),
                                              ("--experiment", args.experiment), ("--module", args.module),
                                              ("--plate", args.plate)) if value]
            if given:
                raise InputError(f"{', '.join(given)}: not for --format stack (info.json gives the emulsion and stage)")
            result = ingest_stacks(args.src, args.store, skip_bad=args.skip_bad, progress=bar.update,
                                   total=_set_total(bar))
        else:
            from scanstream.ingest.images import IngestConfig, ingest

            config = IngestConfig(
                format=args.format, listing=args.listing, positive=args.positive, resize=args.resize,
                skip_bad=args.skip_bad, sheet=args.sheet, experiment=args.experiment, module=args.module,
                plate=args.plate, id_prefix=args.id_prefix, batch_size=args.batch_size, workers=args.workers,
            )
            result = ingest(args.src, args.store, config, progress=bar.update, total=_set_total(bar))
    finally:
        bar.close()
    print_json(result.summary())
    if result.bad:
        print(f"scanstream ingest: {len(result.bad)} bad items left out; see {result.quarantine}", file=sys.stderr)
    return 0


def _set_total(bar):
    def set_total(n: int) -> None:
        bar.total = n
        bar.refresh()

    return set_total
