"""``scanstream benchmark``: classify's throughput on this hardware against the scanner's picker."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.atomic import write_json
from scanstream.cli._common import add_many, deprecated_option

#: --sample's default, shown in --help without importing the benchmark (torch) to read it; the
#: value is scanstream.inference.benchmark.DEFAULT_SAMPLE (tests/test_cli_startup.py checks it)
SAMPLE_HELP_DEFAULT = 2048


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "benchmark",
        help="classify's throughput on this hardware against the picker's rate and the former method",
        description="Measure, on this hardware and one store: crops/s of the whole classify pipeline (store "
        "to Parquet, into a temporary table; cold and warm workers), of the forward pass on crops in memory "
        "and of the model alone on normalised tensors, the former method's rate on the same objects, and "
        "where the time goes (read, decode, features, resize, forward, write). With the picker's rate "
        "(--picker-rate, or --picker-log: CSV lines 'timestamp,objects', ISO 8601 or epoch seconds, one per "
        "field of view the picker finished) it says how long a sheet of N objects takes and how many "
        "scanners one node keeps pace with. A table on the terminal; --out also writes JSON.",
    )
    b.add_argument("store", type=Path, nargs="?", metavar="STORE", help="a complete crop store (a few thousand crops)")
    add_many(b, "--model", type=Path, required=True, metavar="CKPT", help="checkpoint(s), as classify runs them")
    deprecated_option(b, "--store", "store", "give the store first: scanstream benchmark STORE --model ...", type=Path)
    b.set_defaults(required_inputs={"store": "STORE"})
    g = b.add_mutually_exclusive_group()
    g.add_argument("--picker-rate", type=float, metavar="OBJECTS_PER_S", help="the picker's rate in objects per second")
    g.add_argument("--picker-log", type=Path, metavar="FILE",
                   help="picker log: lines 'timestamp,objects' (docs/classify.md, 'Benchmark')")
    g.add_argument("--volume", type=Path, metavar="VOLUME",
                   help="measure the picker here: `scanstream pick` over this volume store (z-stacks ingested)")
    b.add_argument("--objects", type=int, metavar="N", help="objects in a sheet for the projection (default: the store's)")
    b.add_argument("--scheduler", metavar="ADDRESS", help="existing Dask scheduler (default: a LocalCluster)")
    b.add_argument("--workers", type=int, help="LocalCluster workers (default: one per GPU, else 1 using all cores)")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    b.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    b.add_argument("--sample", type=int, default=None,
                   help=f"crops for the in-process measurements (default {SAMPLE_HELP_DEFAULT})")
    b.add_argument("--out", type=Path, metavar="FILE.json", help="also write the report as JSON")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scanstream.inference.benchmark import (
        DEFAULT_SAMPLE,
        PickerRate,
        check_rate,
        format_report,
        measure_picker,
        read_picker_log,
        run_benchmark,
    )

    picker = None
    if args.picker_rate is not None:
        picker = PickerRate(check_rate(args.picker_rate), "--picker-rate")
    elif args.picker_log is not None:
        picker = read_picker_log(args.picker_log)
    elif args.volume is not None:
        picker = measure_picker(args.volume, scheduler=args.scheduler, workers=args.workers)
    report = run_benchmark(
        args.store, args.model, picker=picker, objects=args.objects, scheduler=args.scheduler, workers=args.workers,
        device=args.device, batch_size=args.batch_size,
        sample=DEFAULT_SAMPLE if args.sample is None else args.sample, progress=not args.no_progress,
    )
    print(format_report(report))
    if args.out is not None:
        write_json(args.out, report)
        print(f"\nJSON: {args.out}")
    return 0
