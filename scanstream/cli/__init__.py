"""The ``scanstream`` console script: one verb per subcommand.

Each module in this package that defines ``register(subparsers)`` contributes its verbs; a
verb's handler only parses, builds library objects and calls library functions. Any
:class:`~scanstream.errors.ScanstreamError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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


def _quiet_dask() -> None:
    """Keep Dask's scheduler and worker start-up INFO lines off stderr (-v brings them back).

    ``import distributed`` sets its loggers' levels from Dask's config (``logging.distributed``,
    INFO), so a level set here before the import would be undone: the config says WARNING
    instead (the environment for a Dask not yet imported, and for worker processes; the live
    config if it is), and a logger that exists already is set directly. The verbs print what
    matters (progress, the dashboard address) themselves.
    """
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if "dask" in sys.modules:
        import dask

        dask.config.set({"logging.distributed": "warning"})
    logging.getLogger("distributed").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verbose == 0:
        _quiet_dask()
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
