"""Oversampling of the rare class, so that mini-batches are about balanced.

The paper draws alpha decays about 17 times more often than other objects (docs/physics.md, "Training protocol"): with
a class ratio of 1:17 that balances the mini-batches. Here each labelled crop gets the weight
``n_negative / n_positive`` if positive and 1 if negative, and an epoch's samples are drawn with
replacement in proportion to those weights. Draws depend only on ``(seed, epoch)``, so a rerun
with the same seed sees the same samples in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanstream.errors import InputError
from scanstream.metrics import class_counts


def _pos_neg(labels: np.ndarray) -> tuple[int, int]:
    c = class_counts(labels)
    return c["alpha"], c["other"]


def oversampling_weights(labels: np.ndarray) -> np.ndarray:
    """Per-crop sampling weights: ``n_neg / n_pos`` for positives, 1 for negatives, 0 unknown.

    Parameters
    ----------
    labels : numpy.ndarray
        int (n,): 1 alpha decay, 0 other, -1 unknown.

    Returns
    -------
    numpy.ndarray
        float64 (n,). The total weight of each class is ``n_neg``: balanced in expectation.
    """
    labels = np.asarray(labels)
    pos, neg = _pos_neg(labels)
    if pos == 0 or neg == 0:
        raise InputError(f"oversampling needs both classes; got {pos} positives and {neg} negatives")
    w = np.zeros(labels.shape[0], dtype=np.float64)
    w[labels == 1] = neg / pos
    w[labels == 0] = 1.0
    return w


def pos_weight(labels: np.ndarray) -> float:
    """The BCE ``pos_weight`` from the class ratio, ``n_neg / n_pos`` (the authors' code)."""
    pos, neg = _pos_neg(labels)
    if pos == 0:
        raise InputError("pos_weight needs at least one positive")
    return neg / pos


@dataclass(frozen=True)
class BalancedSampler:
    """Draws an epoch's crop indices with replacement, weighted by :func:`oversampling_weights`.

    Attributes
    ----------
    labels : numpy.ndarray
        int (n,) labels of the training store (-1 rows are never drawn).
    num_samples : int
        Samples per epoch.
    seed : int
    balanced : bool
        False: uniform draws over the labelled crops (no oversampling), for comparison.
    """

    labels: np.ndarray
    num_samples: int
    seed: int = 0
    balanced: bool = True

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise InputError(f"samples per epoch must be >= 1, got {self.num_samples}")

    def weights(self) -> np.ndarray:
        if self.balanced:
            return oversampling_weights(self.labels)
        return (np.asarray(self.labels) >= 0).astype(np.float64)

    def indices(self, epoch: int) -> np.ndarray:
        """int64 (num_samples,): this epoch's draws, a function of (seed, epoch) only."""
        w = self.weights()
        rng = np.random.default_rng([self.seed, epoch, 0x5A3])
        return rng.choice(len(w), size=self.num_samples, replace=True, p=w / w.sum()).astype(np.int64)
