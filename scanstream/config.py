"""Configuration: TOML files, dicts and command-line flags into frozen dataclasses, one way everywhere.

Every configurable stage describes its options as a frozen dataclass whose fields carry their
help text (``field(default=..., metadata={"help": ...})``). :func:`read_toml` reads a file (one
table of it, or the whole document) with errors that name the file; :func:`from_dict` builds
the dataclass and refuses unknown keys, naming where they came from; :func:`add_flags` makes
the argparse flags of the fields a verb exposes, and :func:`given_flags` collects the ones the
user set (unset flags are ``None``, so a TOML file or the dataclass default applies).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scanstream.errors import ConfigError


def read_toml(path: str | os.PathLike, *, section: str | None = None, optional: bool = False) -> dict[str, Any]:
    """The TOML document at ``path``, or its ``[section]`` table when given.

    A missing section is an empty dict when ``optional`` (else an error); a document without
    any table named ``section`` whose keys are all top-level is read as that section.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not a readable TOML file: {exc}") from None
    if section is None:
        return doc
    if section in doc:
        table = doc[section]
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: [{section}] is not a table")
        return dict(table)
    if doc and not any(isinstance(v, dict) for v in doc.values()):
        return dict(doc)
    if optional:
        return {}
    raise ConfigError(f"{p}: no [{section}] table")


def check_keys(d: Mapping[str, Any], known: Iterable[str], where: str, *, what: str = "key") -> None:
    """Refuse keys of ``d`` outside ``known``; the message names ``where`` and the known keys."""
    known = set(known)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown {what}(s) {unknown} (known: {', '.join(sorted(known))})")


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of dataclass ``cls`` that has one (tuples as lists, as in JSON)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> Any:
    """``X | None`` -> ``X``; anything else as it is."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_type(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against a field's type (bool, int, float, str, tuples of them); returns it.

    An int is accepted for a float (and converted), a list for a tuple (converted); None and
    other field types pass unchecked (None is each field's own business: TOML has no null).

    Examples
    --------
    >>> check_type(1, float, "x")
    1.0
    >>> check_type("3", int, "max_epochs")
    Traceback (most recent call last):
    ...
    scanstream.errors.ConfigError: max_epochs: expected an integer, got '3' (str)
    """
    if value is None:
        return value
    base = _base_type(tp)
    if base in _TYPE_WORDS:
        ok = isinstance(value, base) and (base is bool or not isinstance(value, bool))
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise ConfigError(f"{where}: expected {_TYPE_WORDS[base]}, got {value!r} ({type(value).__name__})")
        return value
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r} ({type(value).__name__})")
        args = typing.get_args(base)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            raise ConfigError(f"{where}: expected a list of {len(items)} values, got {list(value)!r}")
        return tuple(check_type(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, items, strict=True)))
    return value


def from_dict(cls: type, d: Mapping[str, Any], *, where: str = "configuration") -> Any:
    """An instance of dataclass ``cls`` from a TOML / JSON dict; unknown keys are an error.

    Lists become tuples for tuple-typed fields and dicts become nested dataclasses for
    dataclass-typed fields; values are checked against the field types (:func:`check_type`).
    Missing required fields are a :class:`ConfigError` naming them.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a table of options, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    check_keys(d, names, where)
    hints = _hints(cls)
    kw: dict[str, Any] = {}
    for name, value in d.items():
        tp = _base_type(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            value = from_dict(tp, value, where=f"{where} [{name}]")
        else:
            value = check_type(value, tp, f"{where}: {name}")
        kw[name] = value
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in kw and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING and f.init)
    if missing:
        raise ConfigError(f"{where}: missing required option(s) {missing}")
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def flag_name(name: str) -> str:
    """``max_epochs`` -> ``--max-epochs``."""
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type, names: Iterable[str]) -> None:
    """Add a flag for each field in ``names`` of dataclass ``cls``, typed and helped from the field.

    Every flag defaults to ``None`` (unset). Field metadata may give ``help``, ``choices``,
    ``metavar`` and ``flag`` (another spelling); booleans are switches that set ``True``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for name in names:
        f = fields[name]
        meta = dict(f.metadata)
        tp = _base_type(hints[name])
        kw: dict[str, Any] = {"dest": name, "default": None, "help": meta.get("help")}
        if tp is bool:
            kw["action"] = "store_true"
        else:
            if typing.get_origin(tp) is tuple:
                item = typing.get_args(tp)[0]
                kw["type"] = _tuple_parser(item, name)
            elif tp in (int, float, str):
                kw["type"] = tp
            if "choices" in meta:
                kw["choices"] = meta["choices"]
            if "metavar" in meta:
                kw["metavar"] = meta["metavar"]
        parser.add_argument(meta.get("flag", flag_name(name)), **kw)


def _tuple_parser(item: type, name: str):
    def parse(text: str) -> tuple:
        try:
            return tuple(item(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag_name(name)}: expected comma-separated {item.__name__} values, got {text!r}") from None

    parse.__name__ = f"list of {item.__name__}"
    return parse


def given_flags(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` the user set on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
