"""``scanstream watch``: the overnight streaming mode over an inbox of crop stores."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.cli._common import add_many


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "watch",
        help="overnight mode: classify each complete store that lands in an inbox",
        description="Poll INBOX for crop stores. Each store with its completion marker is classified with the "
        "configured models and threshold into the candidate table CANDIDATES (which grows store by store), and "
        "the morning summary of its sheets is written to CANDIDATES.watch/morning/ (objects, selected, expected "
        "true alpha decays from the calibrated precision, time, crops/s). A store is never processed twice "
        "(state keyed by store content hash in CANDIDATES.watch/state.json); a restart resumes where a killed "
        "run stopped. Incomplete stores are waited for. --once processes what is there and exits.",
    )
    p.add_argument("inbox", type=Path, nargs="?", help="directory receiving NAME.zarr stores (default: the config's)")
    p.add_argument("--out", type=Path, metavar="CANDIDATES", help="candidate table directory (default: the config's)")
    p.add_argument("--config", type=Path, metavar="TOML", help="overnight.toml with a [watch] table (models, threshold, ...)")
    add_many(p, "--model", type=Path, metavar="CKPT", help="checkpoint(s) (replace the config's)")
    p.add_argument("--threshold", type=Path, metavar="JSON", help="threshold record (replaces the config's)")
    p.add_argument("--prevalence", metavar="A:B", help="alpha:other of the sheets for the expected count, e.g. 1:183")
    p.add_argument("--once", action="store_true", help="process the complete stores there now, then exit")
    p.add_argument("--poll-seconds", type=float, metavar="S", help="seconds between looks at the inbox")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, help="LocalCluster workers")
    p.add_argument("--scheduler", metavar="ADDRESS", help="existing Dask scheduler to use")
    p.add_argument("--retry-failed", action="store_true", help="try stores that failed before again")
    p.add_argument("--range-energy", action="store_true", default=None,
                   help="fit each sheet's density to its selected candidates' prong lengths into the morning summary")
    p.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    from scanstream.errors import ConfigError
    from scanstream.inference.watch import load_watch_config, watch

    if args.config is None and (args.inbox is None or args.out is None):
        raise ConfigError("give INBOX and --out CANDIDATES (or a --config whose [watch] table names inbox and out)")
    config = load_watch_config(
        args.config,
        models=tuple(str(m) for m in args.model) if args.model else None,
        threshold=str(args.threshold) if args.threshold else None,
        prevalence=args.prevalence,
        device=args.device,
        workers=args.workers,
        scheduler=args.scheduler,
        range_energy=args.range_energy,
    )
    inbox = args.inbox or (Path(config.inbox) if config.inbox else None)
    out = args.out or (Path(config.out) if config.out else None)
    if inbox is None or out is None:
        raise ConfigError("give INBOX and --out CANDIDATES (or inbox / out in the config's [watch] table)")

    def report(r: dict) -> None:
        if r["status"] == "done":
            rate = f"{r['crops_per_s']:.1f}" if r.get("crops_per_s") else "n/a"
            print(f"{r['name']}: {r['objects']} objects, {r['selected']} selected, {r['seconds']:.1f} s, {rate} crops/s",
                  flush=True)
        else:
            print(f"{r['name']}: FAILED: {r['error']}", flush=True)

    if not args.once:
        print(f"watching {inbox} every {args.poll_seconds or config.poll_seconds:g} s (Ctrl-C to stop)", flush=True)
    rep = watch(inbox, out, config, once=args.once, poll_seconds=args.poll_seconds, retry_failed=args.retry_failed,
                on_store=report)
    for w in rep.waiting:
        print(f"waiting for incomplete store {w}")
    print(f"{len(rep.processed)} processed, {len(rep.failed)} failed, {rep.skipped} already done; "
          f"morning summary: {rep.state_dir / 'morning' / 'index.md'}")
    return 1 if rep.failed else 0
