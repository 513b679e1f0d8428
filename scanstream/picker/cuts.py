"""The former method: alpha-decay candidates by cuts on vertex multiplicity and prong lengths.

Before the CNN, candidates were chosen from the picker's features alone: a radioactive alpha
star has 4 (uranium series, from Ra-226) or 5 (thorium series, from Th-228) prongs, every one a
black track that stops within the alpha ranges of the range-energy table (20.2 um for Ra-226 to
49.8 um for Po-212 at 3.60 g/cm3), and no minimum-ionising track (those leave the field and are
measured long). On the paper's TEST sheet those cuts selected 2,489 of 46,948 objects with 201 of
the 255 alpha decays: precision 0.081 +- 0.006, recall 0.788 +- 0.056 (errors sqrt(N)).

The cut values live in :class:`BaselineConfig`. They are chosen on TRAIN the way a physicist
would (:func:`choose_config`): look at the measured prongs of TRAIN's labelled alpha stars and
put the windows where nearly all of them are, never looking at TEST.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scanstream.atomic import write_parquet
from scanstream.errors import InputError
from scanstream.metrics import (
    OperatingPoint,
    average_precision,
    operating_point_at_recall,
    operating_point_from_selection,
)
from scanstream.store import CropStore, is_store, open_store


@dataclass(frozen=True)
class BaselineConfig:
    """Cuts of the former method (lengths in um as the picker reports them).

    The defaults are what :func:`choose_config` gives on a simulated TRAIN
    (``scanstream simulate-dataset --scale 1 --seed 0``; docs/simulator.md), rounded.
    """

    # Uranium-series stars have 4 alpha prongs, thorium-series stars 5. A star whose two prongs
    # overlap (or that lost one out of the emulsion) shows one fewer; any larger number means
    # something else is attached to the vertex. TRAIN's alpha stars: 4 and 5 dominate.
    min_multiplicity: int = 4
    max_multiplicity: int = 5
    # The shortest alpha line is Ra-226 at 20.2 um (3.60 g/cm3), but a steep prong is followed
    # over only a few focal planes and looks shorter: the cut sits at the low tail of TRAIN's
    # alpha prongs (2nd percentile). Shorter prongs are evaporation fragments or dust lobes.
    min_length_um: float = 15.0
    # The longest alpha line is Po-212 at 49.8 um (50.7 um at 3.50 g/cm3) plus ~1 um straggling
    # and the picker's error; minimum-ionising and grey tracks leave the field and are measured
    # far longer. Cut at TRAIN's 99.5th percentile of alpha prongs.
    max_length_um: float = 55.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_multiplicity <= self.max_multiplicity:
            raise InputError(f"multiplicity window [{self.min_multiplicity}, {self.max_multiplicity}] is empty or negative")
        if not 0 <= self.min_length_um < self.max_length_um:
            raise InputError(f"length window [{self.min_length_um}, {self.max_length_um}] um is empty or negative")

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_CONFIG = BaselineConfig()


def _features(table: pa.Table) -> tuple[np.ndarray, list[np.ndarray]]:
    for col in ("object_id", "multiplicity", "track_lengths_um"):
        if col not in table.column_names:
            raise InputError(f"object table has no {col!r} column: the former method needs the picker's features")
    mult = table.column("multiplicity").to_numpy(zero_copy_only=False)
    mult = np.where(np.isnan(mult.astype(float)), -1, mult).astype(np.int64) if mult.dtype.kind == "f" else mult.astype(np.int64)
    lengths = [np.asarray(x if x is not None else [], np.float64) for x in table.column("track_lengths_um").to_pylist()]
    return mult, lengths


def select(multiplicity: np.ndarray, lengths: list[np.ndarray], config: BaselineConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, np.ndarray]:
    """Apply the cuts; pure function over the picker's features.

    Parameters
    ----------
    multiplicity : int array (n,)
        Prongs the picker saw (-1 when unknown: never selected).
    lengths : list of n float arrays
        Measured prong lengths, um.
    config : BaselineConfig

    Returns
    -------
    selected : bool array (n,)
    score : float64 array (n,)
        The former method's ordering, higher = more alpha-like: selected objects first, then
        by the number of prongs inside the alpha length window, minus those outside it, then
        by the length of the longest prong inside the window (a long Po-212 / Po-214 prong).

    Examples
    --------
    >>> sel, score = select(np.array([5, 3]), [np.array([49., 33., 30., 26., 24.]), np.array([80., 20., 5.])])
    >>> sel.tolist()
    [True, False]
    """
    n = len(multiplicity)
    if len(lengths) != n:
        raise InputError(f"{n} multiplicities but {len(lengths)} length lists")
    m = np.asarray(multiplicity, np.int64)
    sizes = np.fromiter((len(x) for x in lengths), np.int64, count=n)
    flat = np.concatenate([np.asarray(x, np.float64) for x in lengths]) if sizes.sum() else np.zeros(0)
    owner = np.repeat(np.arange(n), sizes)
    lo, hi = config.min_length_um, config.max_length_um
    inside = (flat >= lo) & (flat <= hi)
    n_in = np.bincount(owner, inside, minlength=n).astype(np.int64)
    n_out = sizes - n_in
    longest_in = np.zeros(n)
    np.maximum.at(longest_in, owner[inside], flat[inside])
    selected = (m >= 0) & (m >= config.min_multiplicity) & (m <= config.max_multiplicity) & (n_out == 0)
    score = 100.0 * selected + 10.0 * (np.minimum(n_in, config.max_multiplicity) - n_out) + longest_in / (hi + 1.0)
    return selected, score


def run_baseline_table(table: pa.Table, *, config: BaselineConfig | None = None) -> pa.Table:
    """The former method on an object table: object_id, selected, baseline_score."""
    mult, lengths = _features(table)
    sel, score = select(mult, lengths, config or DEFAULT_CONFIG)
    return pa.table(
        {
            "object_id": table.column("object_id").cast(pa.string()),
            "selected": pa.array(sel, pa.bool_()),
            "baseline_score": pa.array(score, pa.float64()),
        }
    )


def run_baseline(store: CropStore, *, config: BaselineConfig | None = None) -> pa.Table:
    """The former method on a crop store (contract: object_id, selected, baseline_score)."""
    return run_baseline_table(store.table, config=config)


def summarize(table: pa.Table, result: pa.Table) -> dict:
    """Counts of a selection: selected, and with labels true positives, precision, recall (sqrt(N) errors).

    ``table`` is the object table (for labels and categories), ``result`` what
    :func:`run_baseline_table` returned for it.
    """
    sel = result.column("selected").to_numpy(zero_copy_only=False).astype(bool)
    out: dict = {"objects": int(table.num_rows), "selected": int(sel.sum())}
    if "label" not in table.column_names:
        return out
    labels = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    known = labels >= 0
    if not known.any() or not (labels[known] == 1).any():
        out["labelled"] = int(known.sum())
        return out
    op: OperatingPoint = operating_point_from_selection(labels[known], sel[known])
    out.update(
        labelled=int(known.sum()),
        alpha=op.positives,
        true_positives=op.true_positives,
        false_positives=op.false_positives,
        precision=op.precision.to_dict(),
        recall=op.recall.to_dict(),
    )
    if "category" in table.column_names:
        cats = np.asarray(table.column("category").to_pylist(), dtype=object)
        fp: dict[str, int] = {}
        for c in cats[sel & (labels == 0)]:
            fp[str(c)] = fp.get(str(c), 0) + 1
        out["false_positives_by_category"] = dict(sorted(fp.items(), key=lambda kv: -kv[1]))
    return out


def summarize_scores(table: pa.Table, scores: np.ndarray, *, at_recall: float | None = None) -> dict:
    """A score's ranking on a labelled object table: AP, and the selection needed at ``at_recall``.

    ``at_recall`` is typically the former method's recall on the same objects, so that the two
    are compared at equal recall (the paper's Table 2). Returns ``{"objects": n}`` alone when
    the table has no labelled alpha decay.
    """
    out: dict = {"objects": int(table.num_rows)}
    if "label" not in table.column_names:
        return out
    labels = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    known = labels >= 0
    y, s = labels[known], np.asarray(scores, np.float64)[known]
    if not (y == 1).any() or not (y == 0).any():
        return out
    out["ap"] = average_precision(y, s)
    if at_recall is not None and at_recall > 0:
        op = operating_point_at_recall(y, s, at_recall)
        out["at_recall"] = {"recall_target": at_recall, **op.to_dict()}
    return out


def _floor(x: float, step: float) -> float:
    return math.floor(x / step) * step


def _ceil(x: float, step: float) -> float:
    return math.ceil(x / step) * step


def choose_config(train: pa.Table, *, low_percentile: float = 2.0, high_percentile: float = 99.5, step: float = 5.0) -> BaselineConfig:
    """Choose the cuts on a labelled TRAIN table, as a physicist would.

    * multiplicity: the window spanned by the two most frequent multiplicities of TRAIN's alpha
      stars (4 and 5 when the picker works: U and Th);
    * prong lengths: from the ``low_percentile`` to the ``high_percentile`` of all measured
      prong lengths of TRAIN's alpha stars in that window, rounded outwards to round numbers
      (``step`` um: a physicist writes "between 15 and 55 um", and a round cut does not move
      with the statistical wobble of a tail percentile).

    Only labelled alpha decays are looked at (what a physicist measures on known stars); the
    backgrounds and TEST play no part.
    """
    mult, lengths = _features(train)
    labels = train.column("label").to_numpy(zero_copy_only=False).astype(np.int64) if "label" in train.column_names else None
    if labels is None or not (labels == 1).any():
        raise InputError("choosing the former method's cuts needs a TRAIN table with labelled alpha decays")
    alpha = np.flatnonzero(labels == 1)
    values, counts = np.unique(mult[alpha], return_counts=True)
    top = values[np.argsort(-counts, kind="stable")[:2]]
    lo_m, hi_m = int(top.min()), int(top.max())
    inside = [lengths[i] for i in alpha if lo_m <= mult[i] <= hi_m]
    prongs = np.concatenate(inside) if inside else np.zeros(0)
    if prongs.size < 10:
        raise InputError(f"too few alpha prongs on TRAIN ({prongs.size}) to choose length cuts")
    lo = _floor(float(np.percentile(prongs, low_percentile)), step)
    hi = max(_ceil(float(np.percentile(prongs, high_percentile)), step), lo + step)
    return BaselineConfig(min_multiplicity=lo_m, max_multiplicity=hi_m, min_length_um=lo, max_length_um=hi)


def read_object_table(path: str | os.PathLike) -> pa.Table:
    """The object table of a crop store or of a features-only Parquet file."""
    p = Path(path)
    if is_store(p):
        return open_store(p).table
    if p.is_file() and p.suffix == ".parquet":
        try:
            return pq.read_table(p)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{p}: not a readable Parquet object table: {exc}") from None
    raise InputError(f"{p}: neither a crop store nor a .parquet object table")


def write_result(result: pa.Table, path: str | os.PathLike, *, config: BaselineConfig) -> Path:
    """Write the former method's table atomically (its cuts in the schema metadata)."""
    p = Path(path)
    write_parquet(p, result.replace_schema_metadata({"scanstream_baseline": json.dumps(config.to_dict())}))
    return p
