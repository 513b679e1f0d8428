"""Atomic file writes: a temporary file in the destination's folder, fsync, then rename.

A reader (or a rerun after a kill) sees either the previous file or the complete new one,
never a half-written one; on failure the temporary file is removed and the destination is
left as it was. Every file scanstream writes goes through :func:`atomic_path` (directly, or
through the ``write_*`` helpers, which all take the destination first; :func:`write_png` for
figures and images). Directories are written whole beside their destination and swapped in by
:func:`exchange_dirs`, the one directory swap (:func:`atomic_dir` wraps it for writers that fill
a new directory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from scanstream.errors import InputError


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
    are fsynced); it is then swapped in with :func:`exchange_dirs` and the previous ``path``, if
    any, removed. On failure the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        exchange_dirs(tmp, path, aside=path.with_name(f".{path.name}.old-{os.getpid()}"))
    finally:
        _remove(tmp)  # the failed write, or the previous ``path`` after the swap


def _remove(p: Path) -> None:
    """Remove a directory tree, a file or a link at ``p``; nothing there is fine."""
    import shutil  # only directory writers need it

    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


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


def _default_aside(new: Path) -> Path:
    return new.with_name(new.name + ".old")


def exchange_dirs(new: str | os.PathLike, path: str | os.PathLike, *, aside: str | os.PathLike | None = None) -> None:
    """Put directory ``new`` in place of ``path`` in one step; the old ``path`` ends up at ``new``.

    This is scanstream's one directory swap (:func:`atomic_dir`, the crop store writer's
    ``--overwrite``, the candidate table's sheet switches). With :func:`try_exchange` a reader
    listing ``path`` sees the old directory or the new one, never neither. Where the filesystem
    cannot exchange, three renames do it: the old directory to ``aside`` (default ``new`` +
    ``.old``), ``new`` into place, ``aside`` to ``new``; between the first two there is a moment
    without ``path``, and a kill there is mended by :func:`recover_exchange`. A missing ``path``
    is a plain rename. All three names must be on the same filesystem.
    """
    new, path = Path(new), Path(path)
    if not path.exists():
        os.replace(new, path)
        return
    if try_exchange(new, path):
        return
    aside = Path(aside) if aside is not None else _default_aside(new)
    os.replace(path, aside)
    os.replace(new, path)
    os.replace(aside, new)


def recover_exchange(new: str | os.PathLike, path: str | os.PathLike, *, aside: str | os.PathLike | None = None,
                     ready: Callable[[Path], bool] | None = None) -> bool:
    """Finish an :func:`exchange_dirs` that a kill cut between its renames; True if it moved anything.

    With ``path`` missing and the old directory at ``aside``, the swap goes forward when ``new``
    is there and ``ready(new)`` (default: always) and is undone otherwise (``aside`` back to
    ``path``); with ``path`` in place and ``new`` missing, the old directory moves from ``aside``
    to ``new``. Either way the old directory, if it was not put back, ends up at ``new`` as after
    a whole swap. Without a directory at ``aside`` there is nothing to mend.
    """
    new, path = Path(new), Path(path)
    aside = Path(aside) if aside is not None else _default_aside(new)
    if not aside.is_dir():
        return False
    if not path.exists():
        if not (new.is_dir() and (ready is None or ready(new))):
            os.replace(aside, path)
            return True
        os.replace(new, path)
    if new.exists():
        return False
    os.replace(aside, new)
    return True


def write_png(path: str | os.PathLike, image: Any, *, dpi: float | None = None, tight: bool = False,
              compress_level: int = 6) -> Path:
    """Write ``image`` to ``path`` as a PNG atomically; return ``path``.

    ``image`` is a matplotlib figure (saved at ``dpi``, default the figure's own, cropped to its
    artists with ``tight``, and closed afterwards, also when the save fails), a PIL image, or a
    uint8 array (h, w) grey, (h, w, 3) RGB or (h, w, 4) RGBA (written with PIL at
    ``compress_level``, 0-9). The file is PNG whatever ``path``'s suffix.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_png(d / "a.png", np.zeros((4, 6, 3), np.uint8)).read_bytes()[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    path = Path(path)
    if hasattr(image, "savefig"):
        import matplotlib.pyplot as plt  # only figures need it; the caller has loaded it already

        try:
            with atomic_path(path) as tmp:
                image.savefig(tmp, format="png", bbox_inches="tight" if tight else None,
                              **({"dpi": dpi} if dpi is not None else {}))
        finally:
            plt.close(image)
        return path
    from PIL import Image  # only image writers need it

    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
            raise InputError(f"{path}: a PNG is written from uint8 (h, w), (h, w, 3) or (h, w, 4), "
                             f"got {arr.dtype} {arr.shape}")
        image = Image.fromarray(np.ascontiguousarray(arr))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=compress_level)
    return path
