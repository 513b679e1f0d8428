"""What the figures draw, read back from the matplotlib artists (numbers, not pixels).

The PR plot's error bars stay inside [0, 1]; a run's loss curve marks the epoch whose model was
kept (the last one with ``keep="last"``); the range-energy spectrum's line names do not overlap.
"""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.container import ErrorbarContainer

from scanstream.evaluation import figures as fg
from scanstream.rangeenergy.io import label_tiers, spectrum_figure
from scanstream.rangeenergy.relation import line_ranges_um


def _bar_ends(fig) -> list[tuple[float, float, float, float]]:
    """(x_min, x_max, y_min, y_max) of every error bar drawn on the figure's axes."""
    ends = []
    for container in fig.axes[0].containers:
        if isinstance(container, ErrorbarContainer):
            _, _, (xbars, ybars) = container.lines
            xs = np.concatenate([seg[:, 0] for seg in xbars.get_segments()])
            ys = np.concatenate([seg[:, 1] for seg in ybars.get_segments()])
            ends.append((xs.min(), xs.max(), ys.min(), ys.max()))
    return ends


@pytest.mark.parametrize(
    ("recall", "recall_error", "precision", "precision_error"),
    [(1.0, 0.196, 0.5, 0.1), (0.95, 0.2, 0.02, 0.05), (0.5, 0.1, 0.5, 0.1), (0.0, 0.3, 1.0, 0.4)],
)
def test_pr_points_error_bars_stay_inside_zero_and_one(recall, recall_error, precision, precision_error):
    point = fg.Point("p", recall, precision, recall_error, precision_error)
    fig = fg.pr_figure([], points=[point])
    try:
        ((x0, x1, y0, y1),) = _bar_ends(fig)
    finally:
        plt.close(fig)
    assert (x0, x1) == pytest.approx((max(0.0, recall - recall_error), min(1.0, recall + recall_error)))
    assert (y0, y1) == pytest.approx((max(0.0, precision - precision_error), min(1.0, precision + precision_error)))


def test_a_recall_of_one_draws_no_bar_past_one():
    """The case a report drew: recall 1.000 +- 0.196 reached 1.196."""
    assert fg.bar_extent(1.0, 0.196) == (0.196, 0.0)
    assert fg.bar_extent(0.3, float("nan")) == (0.0, 0.0)  # no error known: no bar


def _history(epochs: int, best: set[int]) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 0.5 + 0.01 * e, "smoothed_val_loss": 0.5 + 0.01 * e,
             "best": e in best} for e in range(epochs)]


@pytest.mark.parametrize(("keep", "expected"), [("last", 11), ("best", 3)])
def test_the_loss_curve_marks_the_kept_epoch(keep, expected):
    """keep="last" saved epoch 11 of 12; the smoothed loss was lowest at epoch 3 (best flags 0 and 3)."""
    fig = fg.run_loss_figure(_history(12, {0, 3}), keep=keep)
    try:
        ax = fig.axes[0]
        (kept,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("kept model")]
        assert kept.get_xdata()[0] == expected
        assert kept.get_label().startswith(f"kept model (epoch {expected}:")
    finally:
        plt.close(fig)


def test_training_writes_the_curve_with_its_keep(tmp_path):
    """write_history passes the run's keep to the figure (history.csv's best flags alone cannot say)."""
    from scanstream.training.outputs import CURVE_FILE, write_history

    write_history(_history(4, {0}), tmp_path, keep="last")
    assert (tmp_path / CURVE_FILE).stat().st_size > 1000
    assert fg.kept_epoch(_history(4, {0}), "last") == 3 and fg.kept_epoch(_history(4, {0}), "best") == 0


@pytest.mark.parametrize("density", [3.45, 3.5638, 3.8])
def test_range_energy_line_names_do_not_overlap(density):
    """The names drawn on the spectrum, measured as the renderer lays them out: no two boxes meet."""
    rng = np.random.default_rng(0)
    lengths = [rng.uniform(15, 55, 4) for _ in range(200)]
    fit = {"density": density, "shrinkage": 2.0, "prongs_fitted": 800, "noise_rel": 0.04, "th_fraction": 0.5}
    fig = spectrum_figure(lengths, fit, dips=[rng.uniform(-80, 80, 4) for _ in range(200)])
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        texts = [t for t in ax.texts if t.get_rotation() == 90]
        assert len(texts) == len(line_ranges_um(density))
        boxes = [t.get_window_extent(renderer) for t in texts]
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (a, b)
        # and every name sits above the tallest bar of the histogram
        tallest = max(p.get_height() for p in ax.patches if hasattr(p, "get_height"))
        assert min(b.y0 for b in boxes) > ax.transData.transform((0.0, tallest))[1]
    finally:
        plt.close(fig)


def test_label_tiers_keep_each_tier_spaced():
    xs = list(line_ranges_um(3.57))
    tiers = label_tiers(xs, 1.2)
    for tier in set(tiers):
        row = sorted(x for x, t in zip(xs, tiers, strict=True) if t == tier)
        assert all(b - a >= 1.2 for a, b in itertools.pairwise(row))
    assert max(tiers) >= 1  # the Th-228 / Ra-224 / Rn-220 cluster needs a second tier
