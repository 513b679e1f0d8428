"""Oversampling: balanced batches, weights, pos_weight, determinism per (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from scanstream.errors import InputError
from scanstream.metrics import class_counts
from scanstream.training.sampling import BalancedSampler, oversampling_weights, pos_weight

# 1:17, as the paper's TRAIN split (906 alpha, 14,979 others), scaled down
LABELS = np.array([1] * 50 + [0] * 850 + [-1] * 30, dtype=np.int8)


def test_weights_balance_the_classes():
    w = oversampling_weights(LABELS)
    assert w[LABELS == 1].sum() == pytest.approx(w[LABELS == 0].sum())
    assert w[0] == pytest.approx(17.0) and w[100] == 1.0 and (w[LABELS == -1] == 0).all()


def test_batches_are_about_balanced():
    sampler = BalancedSampler(LABELS, num_samples=96 * 200, seed=0)
    idx = sampler.indices(0)
    assert idx.shape == (96 * 200,) and idx.dtype == np.int64
    per_batch = (LABELS[idx] == 1).reshape(200, 96).mean(axis=1)
    assert per_batch.mean() == pytest.approx(0.5, abs=0.02)
    assert 0.3 < per_batch.min() and per_batch.max() < 0.7
    assert (LABELS[idx] >= 0).all()  # unknown labels never drawn
    # every positive is drawn, about 17x as often as a negative
    counts = np.bincount(idx, minlength=len(LABELS))
    assert (counts[:50] > 0).all()
    assert counts[:50].mean() / counts[50:900].mean() == pytest.approx(17, rel=0.15)


def test_unbalanced_option_draws_uniformly():
    idx = BalancedSampler(LABELS, num_samples=20000, seed=0, balanced=False).indices(0)
    assert (LABELS[idx] == 1).mean() == pytest.approx(50 / 900, abs=0.01)


def test_deterministic_per_seed_and_epoch():
    a = BalancedSampler(LABELS, num_samples=500, seed=3)
    b = BalancedSampler(LABELS, num_samples=500, seed=3)
    assert np.array_equal(a.indices(2), b.indices(2))
    assert np.array_equal(a.indices(2), a.indices(2))
    assert not np.array_equal(a.indices(2), a.indices(3))
    assert not np.array_equal(a.indices(2), BalancedSampler(LABELS, num_samples=500, seed=4).indices(2))


def test_pos_weight_is_class_ratio():
    assert pos_weight(LABELS) == pytest.approx(17.0)
    assert class_counts(LABELS) == {"alpha": 50, "other": 850, "total": 930}


@pytest.mark.parametrize("labels", [np.zeros(10, np.int8), np.ones(10, np.int8), -np.ones(10, np.int8)])
def test_one_class_refused(labels):
    with pytest.raises(InputError, match="both classes"):
        oversampling_weights(labels)


def test_bad_num_samples():
    with pytest.raises(InputError):
        BalancedSampler(LABELS, num_samples=0)
