"""Scoring one crop store in this process: the ensemble's mean logit of every crop.

Threshold calibration (:func:`calibrate_threshold`: score a labelled store, then build the
record with :mod:`scanstream.threshold`), the training search and the benchmarks
score a store here; classify runs the same engine on Dask workers
(:mod:`scanstream.inference.engine`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from scanstream.devices import resolve_precision
from scanstream.errors import InputError, ThresholdError
from scanstream.inference.engine import Ensemble, check_crops, check_features, checkpoint_identity, score_range
from scanstream.progress import as_progress
from scanstream.store import CropStore, open_store
from scanstream.threshold import DEFAULT_PREVALENCES, build_threshold_record, parse_prevalence
from scanstream.trust import build_trust_reference, store_image_statistics


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size that is not a positive integer (InputError)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")


def score_store(
    store: CropStore,
    checkpoints: Sequence[str | os.PathLike],
    *,
    device: str = "auto",
    batch_size: int = 64,
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Ensemble mean logit of every crop of ``store``, in this process.

    Parameters
    ----------
    store : CropStore
    checkpoints : sequence of path-like
        One or more scanstream checkpoints; the score is their mean logit.
    device : {"auto", "cpu", "cuda", "cuda:N"}
    batch_size : int
        Crops per forward pass.
    precision : {"auto", "fp32", "bf16"}
        See :func:`scanstream.devices.resolve_precision`.

    Returns
    -------
    ndarray, float32 (n,)
        Row i is crop i's mean logit.
    """
    check_batch_size(batch_size)
    check_crops(store)
    check_features(checkpoints, [store])
    ensemble = Ensemble(list(checkpoints), device=device, precision=precision)
    bar = as_progress(progress)(store.n, f"score {store.path.name}", "crop")
    try:
        return score_range(ensemble, store, 0, store.n, batch_size=batch_size, on_batch=bar.update)
    finally:
        bar.close()


def calibrate_threshold(
    store_path: str | os.PathLike,
    checkpoints: Sequence[str | os.PathLike],
    *,
    target_recall: float | None = None,
    target_precision: float | None = None,
    prevalences: Sequence[str] = DEFAULT_PREVALENCES,
    level: float = 0.95,
    ci_method: str = "clopper-pearson",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a labelled store with the ensemble and build its threshold record.

    Exactly one of ``target_recall`` / ``target_precision`` is given. Crops labelled unknown
    (-1) are scored but not used.
    """
    if (target_recall is None) == (target_precision is None):
        raise InputError("give exactly one of a target recall or a target precision")
    for text in prevalences:
        parse_prevalence(text)  # fail before the slow scoring
    store = open_store(store_path)
    labels = store.labels
    known = labels >= 0
    if not (labels == 1).any():
        raise ThresholdError(f"{store.path}: no crops labelled alpha (1); a threshold needs a labelled store")
    hashes = [checkpoint_identity(c) for c in checkpoints]
    scores = score_store(store, list(checkpoints), device=device, batch_size=batch_size, precision=precision, progress=progress)
    kind, value = ("recall", target_recall) if target_recall is not None else ("precision", target_precision)
    record = build_threshold_record(
        labels[known],
        scores[known],
        target_kind=kind,
        target_value=float(value),
        model_hashes=hashes,
        calibration_store={"path": str(store.path), "hash": store.content_hash, "unknown": int((~known).sum())},
        prevalences=prevalences,
        level=level,
        ci_method=ci_method,
        score_precision=resolve_precision(precision, device),
    )
    # label-free trust per sheet (scanstream.trust); records without it still work
    record["trust"] = calibration_trust(store, labels, scores)
    return record


def calibration_trust(store: CropStore, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The record's ``trust`` block: the calibration map and the references of the labelled crops.

    The picker's features come from the store's object table; the image statistics from a
    seeded sample of up to 2,000 of its crops (:func:`scanstream.trust.store_image_statistics`).
    Crops labelled unknown (-1) are left out of both.
    """
    known = labels >= 0
    image = store_image_statistics(store)  # the store already open: not opened (and validated) again
    keep = known[image["rows"]]
    position = np.cumsum(known) - 1  # store row -> index among the known rows
    image = {"rows": position[image["rows"][keep]], **{k: v[keep] for k, v in image.items() if k != "rows"}}
    table = store.table
    lengths = table.column("track_lengths_um").to_pylist()
    return build_trust_reference(
        labels[known],
        scores[known],
        multiplicity=table.column("multiplicity").to_numpy(zero_copy_only=False)[known],
        lengths=[v for v, k in zip(lengths, known, strict=True) if k],
        image=image,
    )
