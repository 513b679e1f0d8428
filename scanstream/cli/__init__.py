"""The ``scanstream`` console script: one verb per subcommand.

Each module in this package that defines ``register(subparsers)`` contributes its verbs; a
verb's handler only parses, builds library objects and calls library functions. Any
:class:`~scanstream.errors.ScanstreamError`, any ``OSError`` (permissions, a directory where a
file goes, a full disk) and a lost Dask worker or connection become one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Sequence

from scanstream import __version__
from scanstream.errors import InputError, ScanstreamError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanstream",
        description="Alpha-decay candidates from overall scanning of nuclear emulsion: "
        "crop stores, training, Dask classification, candidate tables and review.",
    )
    parser.add_argument("--version", action="version", version=f"scanstream {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    for verb in _verb_parsers(sub):
        _common_flags(verb)
        verb.set_defaults(_verb_parser=verb)  # the deepest verb parsed sets it last: its usage for unknown flags
        # a value such as "-1:5" or "-2,3" is a value to check, not an unknown option (argparse
        # takes only plain negative numbers as values)
        verb._negative_number_matcher = re.compile(r"^-\.?\d[\d.:,eE+-]*$")
    return parser


def _verb_parsers(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every verb's parser, nested commands (``verdicts to-store``) included."""
    out = []
    for p in dict.fromkeys(sub.choices.values()):
        out.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                out.extend(_verb_parsers(action))
    return out


def _common_flags(p: argparse.ArgumentParser) -> None:
    """``-v`` and ``--no-progress`` accepted after any verb, as before it (one grammar for every verb).

    The verb's own defaults are suppressed: argparse copies a verb's namespace over the one
    parsed before the verb, so a default there would undo ``scanstream --no-progress VERB``.
    """
    if "-v" not in p._option_string_actions:
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more log output (-vv for debug); also accepted before the verb")
    if "--no-progress" not in p._option_string_actions:
        p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    p._option_string_actions["--no-progress"].default = argparse.SUPPRESS


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


def _show_dashboard(args: argparse.Namespace) -> None:
    """Print the Dask dashboard link of every cluster a verb starts or joins (:mod:`scanstream.executor` logs it)."""
    from scanstream.progress import DASHBOARD_LOGGER

    log = logging.getLogger(DASHBOARD_LOGGER)
    log.handlers = [h for h in log.handlers if not getattr(h, "_scanstream_cli", False)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"scanstream {args.verb}: %(message)s"))
    shown: set[str] = set()  # once per cluster: a watch joins its cluster again for every store
    handler.addFilter(lambda record: not (record.getMessage() in shown or shown.add(record.getMessage())))
    handler._scanstream_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    verb_parser = vars(args).pop("_verb_parser", parser)
    if unknown:  # the verb's usage, not the top level's (exits with status 2)
        verb_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verbose == 0:
        _quiet_dask()
    _show_dashboard(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_verb(args)


def run_verb(args: argparse.Namespace) -> int:
    """Run ``args.func(args)``; every error a user can cause becomes one line on stderr and status 2.

    A verb that needs torch (train, search, export, benchmark) on an install without it (the
    light install, docs/install.md) says which extra to install.
    """
    from scanstream.cli._common import apply_deprecated, check_outputs

    try:
        apply_deprecated(args)
        check_counts(args)
        check_outputs(args)
        return int(args.func(args) or 0)
    except ScanstreamError as exc:
        return _error(args, exc)
    except KeyboardInterrupt:
        print(f"scanstream {args.verb}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("torch", "torchvision"):
            raise
        from scanstream.devices import TORCH_HINT  # the light install (no torch): say what to install

        return _error(args, f"this needs torch, which is not installed here: {TORCH_HINT}")
    except MemoryError:
        return _error(args, "not enough memory for what was asked (MemoryError); ask for less (fewer objects, a "
                            "smaller batch) or use a machine with more memory")
    except Exception as exc:
        if _is_dask_comm_error(exc):  # (distributed's CommClosedError is also an OSError)
            return _error(args, f"the Dask cluster lost a worker or its connection ({type(exc).__name__}: "
                                f"{_one_line(exc)}); rerun the same command to resume")
        if isinstance(exc, OSError):  # the safety net: permissions, a directory where a file goes, a full disk
            return _error(args, _os_error(exc))
        raise


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


def _error(args: argparse.Namespace, exc: BaseException | str) -> int:
    print(f"scanstream {args.verb}: error: {_one_line(exc)}", file=sys.stderr)
    return 2


def _os_error(exc: OSError) -> str:
    """``FILE: reason``, naming the destination rather than the temporary file written beside it."""
    if not exc.filename:
        return str(exc.strerror or exc)
    name = str(exc.filename)
    tmp = re.fullmatch(r"(.*/)?\.([^/]+)\.tmp-\d+", name)
    return f"{(tmp.group(1) or '') + tmp.group(2) if tmp else name}: {exc.strerror or exc}"


def _is_dask_comm_error(exc: BaseException) -> bool:
    """A connection or worker failure inside dask.distributed (a worker killed, a scheduler gone)."""
    comm = ("CommClosedError", "StreamClosedError", "KilledWorker", "FatalCommClosedError")
    return any(t.__module__.split(".")[0] in ("distributed", "tornado") and t.__name__ in comm
               for t in type(exc).__mro__)


def check_counts(args: argparse.Namespace) -> None:
    """Refuse a worker count below 1 and a negative seed, whichever verb takes them."""
    for name in ("workers", "threads", "torch_threads"):
        value = getattr(args, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    seeds = getattr(args, "seeds", None)
    for value in [getattr(args, "seed", None), *(seeds if isinstance(seeds, (list, tuple)) else [seeds])]:
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise InputError(f"--seed must be >= 0, got {value}")
