"""The paper's figures as PNG files (matplotlib, Agg backend).

- figure 2: loss curves of training runs (:func:`plot_loss_curves`)
- figure 3: mean +- std VALID Average Precision over RandAugment's (N, M) (:func:`plot_search_heatmap`)
- figure 4: score distributions of alpha decays and other objects (:func:`plot_score_distributions`)
- figure 5: precision-recall curves of several models on one plot (:func:`plot_pr_curves`)

Every function takes plain arrays / records, writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from scanstream.atomic import write_png
from scanstream.errors import InputError

DPI = 110


def _save(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically and close it."""
    return write_png(path, fig, dpi=DPI, tight=True)


@dataclass(frozen=True)
class Curve:
    """One precision-recall curve.

    Attributes
    ----------
    name : str
        Legend label.
    precision, recall : array of float, shape (k,)
        As :func:`scanstream.metrics.precision_recall_curve` returns them.
    ap : float
        Its Average Precision (shown in the legend).
    """

    name: str
    precision: np.ndarray
    recall: np.ndarray
    ap: float


@dataclass(frozen=True)
class Point:
    """A marked operating point (recall, precision) on the PR plot, with optional error bars."""

    name: str
    recall: float
    precision: float
    recall_error: float = 0.0
    precision_error: float = 0.0
    marker: str = "o"


def bar_extent(value: float, error: float) -> tuple[float, float]:
    """Lengths (below, above) of a one-sigma error bar on a rate, kept inside [0, 1].

    A recall or precision is a fraction: ``value +- error`` past 0 or 1 would draw values it
    cannot take (a recall of 1 with a sqrt(N) error of 0.196 would reach 1.196), so each side is
    cut at the bound.

    >>> bar_extent(1.0, 0.196)
    (0.196, 0.0)
    >>> bar_extent(0.05, 0.1)
    (0.05, 0.1)
    """
    err = float(error) if math.isfinite(error) else 0.0
    return min(err, max(float(value), 0.0)), min(err, max(1.0 - float(value), 0.0))


def pr_figure(curves: Sequence[Curve], *, points: Sequence[Point] = (), title: str = "") -> Any:
    """The figure :func:`plot_pr_curves` saves (a matplotlib Figure; tests read what it draws)."""
    if not curves and not points:
        raise InputError("plot_pr_curves: nothing to plot")
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    for c in curves:
        ax.step(c.recall, c.precision, where="post", lw=1.4, label=f"{c.name} (AP {c.ap:.3f})")
    for p in points:
        (x_lo, x_hi), (y_lo, y_hi) = bar_extent(p.recall, p.recall_error), bar_extent(p.precision, p.precision_error)
        ax.errorbar(
            [p.recall], [p.precision], xerr=[[x_lo], [x_hi]], yerr=[[y_lo], [y_hi]],
            fmt=p.marker, ms=7, capsize=3, label=p.name,
        )
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02), title=title or "Precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.7)
    return fig


def plot_pr_curves(curves: Sequence[Curve], path: str | os.PathLike, *, points: Sequence[Point] = (), title: str = "") -> Path:
    """Figure 5: precision against recall for several models on one plot, plus operating points.

    Each point's one-sigma bars stop at 0 and 1 (:func:`bar_extent`).
    """
    return _save(pr_figure(curves, points=points, title=title), path)


def plot_score_distributions(
    scores: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    *,
    threshold: float | None = None,
    threshold_label: str = "threshold",
    title: str = "",
    bins: int = 60,
) -> Path:
    """Figure 4: histograms of the logit for alpha decays (label 1) and other objects (label 0).

    Counts on a log scale, as the classes differ by two orders of magnitude on a TEST sheet.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape or s.size == 0:
        raise InputError(f"plot_score_distributions: {s.size} scores for {y.size} labels")
    lo, hi = float(np.min(s)), float(np.max(s))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    ax.hist(s[y == 0], bins=edges, histtype="stepfilled", alpha=0.45, color="tab:gray", label=f"others ({int((y == 0).sum())})")
    ax.hist(s[y == 1], bins=edges, histtype="step", lw=1.8, color="tab:red", label=f"alpha decays ({int((y == 1).sum())})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"{threshold_label} {threshold:.2f}")
    ax.set_yscale("log")
    ax.set(xlabel="CNN output (logit)", ylabel="objects per bin", title=title or "Output distributions")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_search_heatmap(
    ns: Sequence[int],
    ms: Sequence[int],
    mean: np.ndarray,
    std: np.ndarray,
    path: str | os.PathLike,
    *,
    best: tuple[int, int] | None = None,
    title: str = "",
) -> Path:
    """Figure 3: mean +- std VALID AP for every (N, M); NaN cells (not run) are left blank.

    Parameters
    ----------
    ns, ms : sequence of int
        Row (N) and column (M) values.
    mean, std : array of float, shape (len(ns), len(ms))
    best : (N, M), optional
        Cell to outline.
    """
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if mean.shape != (len(ns), len(ms)) or std.shape != mean.shape:
        raise InputError(f"heatmap: mean {mean.shape} / std {std.shape} do not match N {len(ns)} x M {len(ms)}")
    fig, ax = plt.subplots(figsize=(1.3 * len(ms) + 2.0, 0.9 * len(ns) + 1.6))
    finite = mean[np.isfinite(mean)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-3:
        vmin, vmax = vmin - 0.005, vmax + 0.005
    im = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    for i in range(len(ns)):
        for j in range(len(ms)):
            if math.isfinite(mean[i, j]):
                txt = f"{mean[i, j]:.3f}" + (f"\n± {std[i, j]:.3f}" if math.isfinite(std[i, j]) else "")
                bright = (mean[i, j] - vmin) / (vmax - vmin) > 0.6
                ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="k" if bright else "w")
    if best is not None and best[0] in ns and best[1] in ms:
        i, j = list(ns).index(best[0]), list(ms).index(best[1])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    ax.set_xticks(range(len(ms)), [str(m) for m in ms])
    ax.set_yticks(range(len(ns)), [str(n) for n in ns])
    ax.set(xlabel="M (RandAugment magnitude)", ylabel="N (RandAugment operations)", title=title or "VALID Average Precision")
    fig.colorbar(im, ax=ax, label="mean VALID AP")
    return _save(fig, path)


def plot_loss_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike, *, title: str = "") -> Path:
    """Figure 2: training loss, validation loss and smoothed validation loss per epoch.

    ``histories`` maps a run name to its per-epoch records (TrainResult.history: epoch,
    train_loss, val_loss, smoothed_val_loss); each run gets one colour, the three losses
    three line styles.
    """
    if not histories:
        raise InputError("plot_loss_curves: no training histories")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, hist) in enumerate(histories.items()):
        if not hist:
            continue
        c = colours[k % len(colours)]
        ep = [h["epoch"] for h in hist]
        for key, style, lab in (("train_loss", ":", "train"), ("val_loss", "-", "valid"), ("smoothed_val_loss", "--", "valid smoothed")):
            vals = [h.get(key) for h in hist]
            if any(v is not None for v in vals):
                ax.plot(ep, [np.nan if v is None else v for v in vals], ls=style, color=c, lw=1.2, label=f"{name} {lab}")
    ax.set(xlabel="epoch", ylabel="binary cross entropy", title=title or "Loss curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def kept_epoch(history: Sequence[Mapping[str, Any]], keep: str = "best") -> int | None:
    """The epoch whose model a run kept: the last one with ``keep="last"``, else the last marked best.

    >>> h = [{"epoch": 0, "best": True}, {"epoch": 1, "best": False}, {"epoch": 2, "best": False}]
    >>> kept_epoch(h, "best"), kept_epoch(h, "last"), kept_epoch([], "last")
    (0, 2, None)
    """
    if keep == "last":
        return int(history[-1]["epoch"]) if history else None
    best = [int(h["epoch"]) for h in history if h.get("best")]
    return best[-1] if best else None


def run_loss_figure(history: Sequence[Mapping[str, Any]], *, keep: str = "best") -> Any:
    """The figure :func:`plot_run_loss_curve` saves (a matplotlib Figure; tests read what it draws)."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=DPI)
    ax.plot(epochs, [h["train_loss"] for h in history], label="training loss", color="tab:blue")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss", color="tab:orange", alpha=0.6)
    ax.plot(epochs, [h["smoothed_val_loss"] for h in history], label="smoothed validation loss", color="tab:red")
    kept = kept_epoch(history, keep)
    if kept is not None:
        why = "the last epoch" if keep == "last" else "lowest smoothed validation loss"
        ax.axvline(kept, color="grey", ls="--", lw=1, label=f"kept model (epoch {kept}: {why})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross entropy")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_run_loss_curve(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, keep: str = "best") -> Path:
    """One training run's loss per epoch (training, validation, smoothed validation), the kept epoch marked.

    ``keep`` is the run's ``TrainConfig.keep``: with "last" the kept model is the final epoch's,
    with "best" the epoch of the lowest smoothed validation loss (:func:`kept_epoch`). Written as
    PNG to ``path`` whatever its name, atomically (:func:`scanstream.atomic.write_png`).
    """
    return write_png(path, run_loss_figure(history, keep=keep))
