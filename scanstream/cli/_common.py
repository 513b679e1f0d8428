"""Small helpers shared by the CLI verbs: output formatting, progress bars and the shared grammar."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scanstream.errors import InputError
from scanstream.paths import check_output
from scanstream.progress import Bar, bars


def progress(total: int | None, desc: str, *, unit: str = "crop", disable: bool | None = None) -> Bar:
    """A progress bar on stderr (hidden when stderr is not a terminal unless forced)."""
    return bars(total, desc, unit, disable=disable)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- one grammar: inputs positional, lists "one or more", old spellings kept for one release ---
#: The release that drops the spellings :func:`deprecated_option` keeps.
REMOVED_IN = "0.3"
_OLD = "_old_"


def add_many(p: argparse.ArgumentParser, flag: str, **kw: Any) -> argparse.Action:
    """An option taking one or more values, given at once or repeated (``--model A B`` = ``--model A --model B``)."""
    return p.add_argument(flag, nargs="+", action="extend", **kw)


class _Deprecated(argparse.Action):
    """Accept an old spelling: say once on stderr what replaces it, keep the value for :func:`apply_deprecated`."""

    def __init__(self, option_strings: list[str], dest: str, *, instead: str, many: bool = False, **kw: Any) -> None:
        self.instead, self.many = instead, many
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated and goes in scanstream {REMOVED_IN}; {self.instead}",
              file=sys.stderr)
        if self.many:
            values = [*(getattr(namespace, self.dest, None) or []), *(values if isinstance(values, list) else [values])]
        setattr(namespace, self.dest, values)


def deprecated_option(p: argparse.ArgumentParser, flag: str, target: str, instead: str, *, many: bool = False,
                      **kw: Any) -> None:
    """Keep ``flag`` (hidden from help) as an old spelling of the argument whose dest is ``target``."""
    p.add_argument(flag, dest=_OLD + target, action=_Deprecated, instead=instead, many=many,
                   nargs="+" if many else None, default=None, help=argparse.SUPPRESS, **kw)


def apply_deprecated(args: argparse.Namespace) -> None:
    """Move old spellings' values to their arguments; refuse an input given both ways, or not at all.

    A verb lists its required inputs that may come either way with
    ``set_defaults(required_inputs={"dest": "NAME"})``.
    """
    for name, value in list(vars(args).items()):
        if not name.startswith(_OLD):
            continue
        delattr(args, name)
        target = name[len(_OLD):]
        if value is None:
            continue
        if getattr(args, target, None) not in (None, []):
            raise InputError(f"{target.replace('_', ' ')} given twice (positionally and by its old flag); give it once")
        setattr(args, target, value)
    for target, shown in (getattr(args, "required_inputs", None) or {}).items():
        if getattr(args, target, None) in (None, []):
            raise InputError(f"{shown} is required (scanstream {args.verb} {shown} ...; see --help)")


# -- outputs never at, inside or around an input ------------------------------------------------
#: The argument holding a verb's output where it is not ``out``.
OUTPUT_ARG = {"ingest": "store", "simulate": "store", "simulate-dataset": "out_dir", "simulate-volume": "out_dir",
              "review": "verdicts"}


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output at, inside or containing any path the verb was given.

    Every other path argument of the verb counts as an input (stores, tables, checkpoints,
    threshold records, configs, listings); see :func:`scanstream.paths.check_output`.
    """
    name = OUTPUT_ARG.get(getattr(args, "verb", ""), "out")
    out = getattr(args, name, None)
    if not isinstance(out, Path):
        return
    inputs = [v for key, value in vars(args).items() if key not in (name, "save_model")
              for v in (value if isinstance(value, list | tuple) else [value]) if isinstance(v, Path)]
    check_output(out, inputs, what={"out": "--out", "verdicts": "--verdicts"}.get(name, name.upper()))
