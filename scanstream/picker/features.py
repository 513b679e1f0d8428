"""The picker's features as a fixed-width numeric array, for learned models.

The scanner's Vertex Picker reports, per object, a multiplicity (prongs it saw) and the measured
prong lengths (um, undeveloped, longest first). The former method cuts on them
(:mod:`scanstream.picker.cuts`); learned models (the feature model of
:mod:`scanstream.picker.learned` and the fused image + feature network of
:mod:`scanstream.network.model`) read them as :data:`N_FEATURES` numbers per object:

========== ===============================================================================
0          multiplicity (prongs reported, clipped to 0..:data:`MAX_MULTIPLICITY`)
1          prongs whose length lies in the alpha window 15-55 um (the former method's window)
2          prongs longer than 55 um (tracks that leave the field: minimum-ionising, grey)
3 .. 10    the eight longest prong lengths (um), longest first, 0 where there are fewer
========== ===============================================================================

A row with a null multiplicity has no picker output, and a table with one is refused (a model that
reads the features cannot score it); null prong lists count as no prongs. Lengths are
kept in um; models scale them themselves (:data:`FEATURE_SCALE`), so the array stays readable.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scanstream.errors import InputError

#: Columns of the object table the features are read from.
FEATURE_COLUMNS = ("multiplicity", "track_lengths_um")
N_LENGTHS = 8
N_FEATURES = 3 + N_LENGTHS
MAX_MULTIPLICITY = 12
ALPHA_WINDOW_UM = (15.0, 55.0)
FEATURE_NAMES = ("multiplicity", "n_alpha_window", "n_long") + tuple(f"length_{i}" for i in range(N_LENGTHS))
#: Divides each feature so that typical values are of order 1 (for the networks' inputs).
FEATURE_SCALE = np.array([5.0, 5.0, 3.0] + [50.0] * N_LENGTHS, np.float32)


def has_features(table: pa.Table | pa.Schema) -> bool:
    """Whether an object table carries the picker's feature columns."""
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    return all(c in names for c in FEATURE_COLUMNS)


def check_feature_rows(table: pa.Table, *, source: str = "object table") -> None:
    """Refuse rows a model reading the picker's features cannot score: features missing or inconsistent.

    A row with a negative multiplicity, or with prongs (multiplicity >= 1) but no prong lengths
    (a listing ingested without them), would read as "no prongs" and score as hopeless; the
    first such rows are named instead. :func:`feature_array`'s column checks come first.
    """
    feature_array(table, source=source)  # the columns, multiplicities given, finite lengths
    mult = np.asarray(table.column("multiplicity").to_numpy(zero_copy_only=False), np.float64)
    lengths = table.column("track_lengths_um").combine_chunks()
    counts = np.asarray(pc.fill_null(pc.list_value_length(lengths), 0).to_numpy(zero_copy_only=False))
    bad = np.flatnonzero((mult < 0) | ((mult >= 1) & (counts == 0)))
    if bad.size:
        ids = table.column("object_id").take(pa.array(bad[:3])).to_pylist() if "object_id" in table.column_names \
            else bad[:3].tolist()
        raise InputError(
            f"{source}: {bad.size} of {len(table)} objects have a negative multiplicity, or prongs but no prong "
            f"lengths (first: {', '.join(map(str, ids))}): this model reads the picker's features; ingest the "
            "picker's track_lengths_um with them")


def feature_array(table: pa.Table, *, source: str = "object table") -> np.ndarray:
    """The picker's features of every row: float32 (n, :data:`N_FEATURES`) (module docstring).

    Raises
    ------
    InputError
        The table lacks ``multiplicity`` or ``track_lengths_um`` (message names ``source``).
    """
    missing = [c for c in FEATURE_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(
            f"{source}: no {' or '.join(repr(c) for c in missing)} column: this model reads the picker's features "
            "(multiplicity, prong lengths), which this store does not carry"
        )
    nulls = table.column("multiplicity").null_count
    if nulls:
        raise InputError(
            f"{source}: {nulls} of {len(table)} objects have no picker multiplicity: this model reads the picker's "
            "features (multiplicity, prong lengths), which these objects do not carry"
        )
    mult = table.column("multiplicity").to_numpy(zero_copy_only=False)
    mult = np.nan_to_num(np.asarray(mult, np.float64), nan=0.0)
    lengths_col = table.column("track_lengths_um").combine_chunks()
    n = len(table)
    out = np.zeros((n, N_FEATURES), np.float32)
    out[:, 0] = np.clip(mult, 0, MAX_MULTIPLICITY)
    if n == 0:
        return out
    # list column -> flat values + offsets (nulls count as empty lists)
    offsets = lengths_col.offsets.to_numpy()
    values = lengths_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    valid = ~np.asarray(lengths_col.is_null().to_numpy(zero_copy_only=False), bool)
    counts = np.where(valid, np.diff(offsets), 0)
    starts = offsets[:-1]
    lo, hi = ALPHA_WINDOW_UM
    row = np.repeat(np.arange(n), counts)
    flat = np.concatenate([values[s : s + c] for s, c in zip(starts[counts > 0], counts[counts > 0], strict=True)]) if counts.any() else values[:0]
    if not np.all(np.isfinite(flat)):
        raise InputError(f"{source}: track_lengths_um holds a non-finite length")
    out[:, 1] = np.bincount(row, weights=(flat >= lo) & (flat <= hi), minlength=n)
    out[:, 2] = np.bincount(row, weights=flat > hi, minlength=n)
    # longest first, per row: sort by (row, -length), then take each row's first N_LENGTHS
    order = np.lexsort((-flat, row))
    flat, row = flat[order], row[order]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(flat)) - first[row]
    keep = rank < N_LENGTHS
    out[row[keep], 3 + rank[keep]] = flat[keep]
    return out
