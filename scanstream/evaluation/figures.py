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


def plot_pr_curves(curves: Sequence[Curve], path: str | os.PathLike, *, points: Sequence[Point] = (), title: str = "") -> Path:
    """Figure 5: precision against recall for several models on one plot, plus operating points."""
    if not curves and not points:
        raise InputError("plot_pr_curves: nothing to plot")
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    for c in curves:
        ax.step(c.recall, c.precision, where="post", lw=1.4, label=f"{c.name} (AP {c.ap:.3f})")
    for p in points:
        ax.errorbar(
            [p.recall], [p.precision], xerr=[p.recall_error], yerr=[p.precision_error],
            fmt=p.marker, ms=7, capsize=3, label=p.name,
        )
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02), title=title or "Precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.7)
    return _save(fig, path)


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


def plot_run_loss_curve(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path:
    """One training run's loss per epoch (training, validation, smoothed validation), the kept epoch marked.

    Written as PNG to ``path`` whatever its name, atomically (:func:`scanstream.atomic.write_png`).
    """
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=DPI)
    ax.plot(epochs, [h["train_loss"] for h in history], label="training loss", color="tab:blue")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss", color="tab:orange", alpha=0.6)
    ax.plot(epochs, [h["smoothed_val_loss"] for h in history], label="smoothed validation loss", color="tab:red")
    best = [h["epoch"] for h in history if h.get("best")]
    if best:
        ax.axvline(best[-1], color="grey", ls="--", lw=1, label=f"kept model (epoch {best[-1]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross entropy")
    ax.legend(frameon=False)
    fig.tight_layout()
    return write_png(path, fig)
