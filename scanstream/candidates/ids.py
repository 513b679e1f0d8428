"""Object ids are unique across the stores of one run (one candidate table).

A candidate table, its verdicts and the range-energy fits key every object by its
``object_id`` alone, so two stores sharing an id (two copies of one sheet's listing, or two
picker runs that number objects from 0) would put one verdict on two objects. Rather than key
every row by (store hash, object id), a run refuses such stores before any work, naming the
first shared ids and both stores: re-number one store's objects, or classify it into a
separate table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from scanstream.errors import InputError


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
