"""The ``scanstream`` console script: one verb per subcommand.

Each module in this package that defines ``register(subparsers)`` contributes its verbs; a
verb's handler only parses, builds library objects and calls library functions. Any
:class:`~scanstream.errors.ScanstreamError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from scanstream import __version__
from scanstream.errors import ScanstreamError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanstream",
        description="Alpha-decay candidates from overall scanning of nuclear emulsion: "
        "crop stores, training, Dask classification, candidate tables and review.",
    )
    parser.add_argument("--version", action="version", version=f"scanstream {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verbose == 0:
        # Dask logs its scheduler's and workers' start-up at INFO on its own handler; the verbs
        # print what matters (progress, the dashboard address) themselves. -v brings it back.
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ScanstreamError as exc:
        print(f"scanstream {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scanstream {args.verb}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
