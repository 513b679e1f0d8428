"""Atomic file writes: a temporary file in the destination's folder, fsync, then rename.

A reader (or a rerun after a kill) sees either the previous file or the complete new one,
never a half-written one; on failure the temporary file is removed and the destination is
left as it was. Every file scanstream writes goes through :func:`atomic_path` (directly, or
through the ``write_*`` helpers, which all take the destination first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def umask_mode() -> int:
    """0o666 less the process umask: the mode a newly created file would get."""
    try:  # Linux: read it without setting it (os.umask(0) would race files other threads create)
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    The writer writes the whole file to the yielded path; the file is then fsynced, given the
    mode a new file would get (some writers create 0600 files) and renamed over ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('done', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = True) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; return ``path``."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def write_parquet(path: str | os.PathLike, table: Any, *, compression: str = "zstd") -> Path:
    """Write an Arrow table to ``path`` as Parquet atomically; return ``path``."""
    import pyarrow.parquet as pq  # only writers of tables need pyarrow

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on a clean exit it replaces ``path``.

    The writer fills the directory (its files through :func:`atomic_path` / ``write_*``, so they
    are fsynced); it is then renamed to ``path``. An existing ``path`` is moved aside first and
    removed once the new one is in place. On failure the temporary directory is removed and
    ``path`` is left as it was.
    """
    import shutil  # only directory writers need it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def try_exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two directory entries in one step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the call is missing or the filesystem cannot exchange (EINVAL, ENOSYS,
    EOPNOTSUPP), so the caller falls back to renames; any other failure is an OSError.
    """
    import ctypes  # only directory switches need it

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):
        return False
    raise OSError(err, os.strerror(err), str(b))


def exchange_dirs(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put directory ``new`` in place of ``path`` in one step; the old ``path`` ends up at ``new``.

    With :func:`try_exchange` a reader listing ``path`` sees the old directory or the new one,
    never neither. Where the filesystem cannot exchange, the old directory is renamed to
    ``new`` + ``.old`` and ``new`` into place (a moment without ``path``), and the old one is then
    moved to ``new``. A missing ``path`` is a plain rename. ``new`` must be on the same filesystem.
    """
    new, path = Path(new), Path(path)
    if not path.exists():
        os.replace(new, path)
        return
    if try_exchange(new, path):
        return
    aside = new.with_name(new.name + ".old")
    os.replace(path, aside)
    os.replace(new, path)
    os.replace(aside, new)
