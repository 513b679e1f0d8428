"""Progress reporting: library functions take a ``progress`` argument and never build bars themselves.

``progress`` is ``None`` / ``False`` (silent), ``True`` (tqdm bars on stderr, hidden when
stderr is not a terminal) or any callable ``progress(total, desc, unit) -> bar`` whose bar has
``update(n)`` and ``close()`` (a GUI, a log line per step, a test's recorder). The CLI passes
``True`` unless ``--no-progress``; :func:`as_progress` turns any of these into a factory.

The Dask dashboard link of a cluster the library starts or joins is logged at INFO on
:data:`DASHBOARD_LOGGER` (the CLI prints it whatever the log level).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


Progress = Callable[[int | None, str, str], Bar]

DASHBOARD_LOGGER = "scanstream.dashboard"


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def silent(total: int | None, desc: str, unit: str = "crop") -> Bar:
    """A bar that shows nothing."""
    return _Silent()


def bars(total: int | None, desc: str, unit: str = "crop", *, disable: bool | None = None) -> Bar:
    """A tqdm bar on stderr (hidden when stderr is not a terminal, unless ``disable=False``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


def as_progress(progress: bool | Progress | None) -> Progress:
    """The factory for a ``progress`` argument (see the module docstring)."""
    if progress is None or progress is False:
        return silent
    if progress is True:
        return bars
    if callable(progress):
        return progress
    raise TypeError(f"progress must be a bool or a callable, got {type(progress).__name__}")
