"""``scanstream info``: summary of a crop store, a scanned-volume store or a candidate table."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.cli._common import print_json
from scanstream.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="summary of a crop store, volume store or candidate table",
        description="Print a JSON summary of a crop store (objects, labels, categories, sheets, "
        "chunk and shard shape, compressed size, completion state), of a scanned-volume store "
        "(fields of view, stage positions, pixel and step sizes) or of a candidate table.",
    )
    p.add_argument("path", type=Path, help="a NAME.zarr crop or volume store, or a candidate table directory")
    p.add_argument("--validate", "--deep", action="store_true",
                   help="also check the store against the format (reads every crop), or every part of a candidate "
                   "table against its manifest's content digests (reads every part)")
    p.set_defaults(func=run_info)

    u = sub.add_parser(
        "upgrade",
        help="give crop stores of an earlier release the metadata xarray and napari read, and fast block digests",
        description="Add to complete crop stores written by an earlier scanstream what this release writes for "
        "other tools: the crops' axis names and units, the group attributes naming the object table and the "
        "digests, and zarr's consolidated metadata (so xarray.open_zarr opens the store without a warning); and "
        "the fast (xxh3-128) digest of every block, which classify and training check reads against (one read "
        "of every crop, checked against the store's blake2b digests first). "
        "Crops, object table and content hash are unchanged; a store that has it all already is not touched.",
    )
    u.add_argument("stores", type=Path, nargs="+", metavar="STORE", help="complete crop stores (NAME.zarr)")
    u.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    from scanstream import store as st

    for path in args.stores:
        s = st.upgrade_store(path)
        print(f"{s.path}: {s.n} crops, content hash {s.content_hash} (unchanged)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from scanstream import store as st

    if st.is_store(args.path):
        s = st.open_store(args.path, require_complete=False)
        summary = st.summarize_store(s)
        if args.validate:
            summary["problems"] = st.validate_store(args.path, deep=True)
        print_json(summary)
        return 1 if args.validate and summary["problems"] else 0
    if (args.path / "zarr.json").is_file() and not st.is_volume(args.path):
        st.open_store(args.path, require_complete=False)  # names the unreadable zarr.json
    if st.is_volume(args.path):
        print_json(st.summarize_volume(st.open_volume(args.path, require_complete=False)))
        return 0
    try:
        from scanstream.candidates.table import summarize_candidates
    except ImportError:
        summarize_candidates = None
    if summarize_candidates is not None and args.path.is_dir():
        summary = summarize_candidates(args.path, deep=args.validate)
        print_json(summary)
        return 1 if summary.get("problems") else 0
    raise InputError(f"{args.path}: neither a crop store, a volume store nor a candidate table")
