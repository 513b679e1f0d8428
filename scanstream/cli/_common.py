"""Small helpers shared by the CLI verbs: output formatting and progress bars."""

from __future__ import annotations

import json
import sys
from typing import Any

from tqdm.auto import tqdm


def progress(total: int | None, desc: str, *, unit: str = "crop", disable: bool | None = None) -> tqdm:
    """A progress bar on stderr (hidden when stderr is not a terminal unless forced)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
