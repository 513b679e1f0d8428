"""Small helpers shared by the CLI verbs: output formatting and progress bars."""

from __future__ import annotations

import json
from typing import Any

from scanstream.progress import Bar, bars


def progress(total: int | None, desc: str, *, unit: str = "crop", disable: bool | None = None) -> Bar:
    """A progress bar on stderr (hidden when stderr is not a terminal unless forced)."""
    return bars(total, desc, unit, disable=disable)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
