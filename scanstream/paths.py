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


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer of ``path`` left beside it; return them.

    :func:`scanstream.atomic.atomic_path` writes ``.<name>.tmp-<pid>`` beside ``path``; a
    writer killed with SIGKILL cannot remove its own. One whose process is gone is removed (a
    live writer's is left alone), so a rerun leaves nothing of the killed run behind.
    """
    p = Path(path)
    removed = []
    for tmp in p.parent.glob(f".{p.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
