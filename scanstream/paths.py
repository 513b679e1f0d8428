"""Where an output may go: never at, inside or around one of the inputs of the same command.

An output written over an input destroys it; one written inside an input changes it under its
readers (a threshold record inside a crop store, an ONNX file over its checkpoint, a query
result over a part of the candidate table it reads, or its manifest); and an output directory
that is replaced atomically takes every input inside it along. :func:`check_output` refuses
all three before any work, comparing resolved paths (symbolic links followed), so a link or
``..`` does not hide the overlap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from scanstream.errors import InputError


def resolved(path: str | os.PathLike) -> Path:
    """``path`` absolute with symbolic links resolved as far as it exists (the rest appended as given)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, what: str = "--out") -> None:
    """Refuse an output ``out`` that is, lies inside, or contains one of ``inputs``.

    Inputs that do not exist are skipped (a missing input is its reader's error to report).

    Raises
    ------
    InputError
        Naming the output and the input it would write into or over.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "s.zarr").mkdir()
    >>> check_output(d / "thr.json", [d / "s.zarr"])  # beside the store: fine
    >>> check_output(d / "s.zarr" / "thr.json", [d / "s.zarr"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scanstream.errors.InputError: ... is inside the input ...s.zarr; write it elsewhere
    """
    target = resolved(out)
    for item in inputs:
        if item is None or not os.path.lexists(item):
            continue
        source = resolved(item)
        if target == source:
            raise InputError(f"{what} {out} is the input {item} itself; write it elsewhere")
        if _within(target, source):
            raise InputError(f"{what} {out} is inside the input {item}; write it elsewhere")
        if _within(source, target):
            raise InputError(f"{what} {out} contains the input {item}, which writing it would replace; "
                             "write it elsewhere")
