"""Names in a candidate table: object ids unique across the stores of one run, sheet names that fit.

A candidate table, its verdicts and the range-energy fits key every object by its
``object_id`` alone, so two stores sharing an id (two copies of one sheet's listing, or two
picker runs that number objects from 0) would put one verdict on two objects. Rather than key
every row by (store hash, object id), a run refuses such stores before any work, naming the
first shared ids and both stores: re-number one store's objects, or classify it into a
separate table.

A sheet becomes a folder of the table (``sheet-<urlquoted sheet>``), so its name is checked
where it is first given (simulate, ingest) against what a file name can hold
(:func:`check_sheet_name`), not found too long by classify hours later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from scanstream.candidates.table import sheet_dir
from scanstream.errors import InputError

#: The longest file name (bytes) common file systems hold (ext4, XFS, APFS, NTFS in UTF-16 units).
NAME_MAX = 255


def check_sheet_name(sheet: str, *, source: str = "sheet") -> None:
    """Refuse a sheet name whose candidate-table folder (``sheet-<urlquoted>``) is longer than a file name can be.

    Raises
    ------
    InputError
        Naming ``source``, the name's length and the folder's.
    """
    folder = len(sheet_dir("", sheet).name.encode())
    if folder > NAME_MAX:
        raise InputError(f"{source}: sheet name of {len(sheet)} characters ({sheet[:24]!r}...) is too long: its "
                         f"candidate-table folder would be {folder} bytes, over the {NAME_MAX} a file name can hold")


def refuse_duplicate_ids(ids: Mapping[str, Iterable[str]], *, show: int = 3) -> None:
    """Refuse object ids found in more than one of the stores ``ids`` maps (store name -> its object ids).

    Raises
    ------
    InputError
        Naming up to ``show`` shared ids, the two stores and how many ids they share.

    Examples
    --------
    >>> refuse_duplicate_ids({"a.zarr": ["o1", "o2"], "b.zarr": ["o3"]})
    >>> refuse_duplicate_ids({"a.zarr": ["o1", "o2"], "b.zarr": ["o2"]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scanstream.errors.InputError: object id(s) 'o2' in both a.zarr and b.zarr (1 shared); ...
    """
    seen: dict[str, np.ndarray] = {}
    for name, values in ids.items():
        mine = np.unique(np.asarray(list(values), dtype=object).astype(str))
        for other, theirs in seen.items():
            shared = np.intersect1d(mine, theirs)
            if shared.size:
                listed = ", ".join(repr(s) for s in shared[:show].tolist())
                raise InputError(
                    f"object id(s) {listed} in both {other} and {name} ({shared.size} shared); object ids must be "
                    "unique across the stores of one candidate table (rows and verdicts are keyed by object id): "
                    "re-number one store's objects or classify it into a separate table")
        seen[name] = mine
