"""A gallery of simulated crops per category, for a person to judge realism.

:func:`make_gallery` draws a few crops of every category with the picker's features under each
(multiplicity, prong lengths) and whether the former method selects it, so image and features
can be compared by eye; ``python benchmarks/simulator_gallery.py docs/simulator/gallery.png``
writes the one in docs/simulator.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scanstream.atomic import write_png
from scanstream.picker.cuts import DEFAULT_CONFIG, select
from scanstream.simulate.conditions import draw_conditions
from scanstream.simulate.dataset import ObjectPlan, simulate_objects
from scanstream.simulate.objects import CATEGORIES


def gallery_crops(per_category: int = 4, *, seed: int = 0, sheet: str = "GALLERY"):
    """Crops (k, 224, 224, 3) and rows of ``per_category`` objects of every category."""
    cond = draw_conditions(sheet, seed)
    plans = [
        ObjectPlan(i, sheet, 1000 * c + j, cat, seed)
        for i, (c, cat, j) in enumerate((c, cat, j) for c, cat in enumerate(CATEGORIES) for j in range(per_category))
    ]
    crops, table = simulate_objects(plans, {sheet: cond}, render=True)
    return crops, table


def make_gallery(path: str | os.PathLike, *, per_category: int = 4, seed: int = 0, channels: bool = False, dpi: int = 60) -> Path:
    """Write the gallery PNG (rows = categories); ``channels`` adds one grey panel per focal plane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crops, table = gallery_crops(per_category, seed=seed)
    rows = table.to_pylist()
    mult = np.array([r["multiplicity"] for r in rows])
    lengths = [np.asarray(r["track_lengths_um"], float) for r in rows]
    sel, _ = select(mult, lengths, DEFAULT_CONFIG)
    ncols = per_category * (4 if channels else 1)
    fig, axes = plt.subplots(len(CATEGORIES), ncols, figsize=(2.3 * ncols, 2.6 * len(CATEGORIES)), squeeze=False)
    for i, r in enumerate(rows):
        row, col = divmod(i, per_category)
        panels = [crops[i]] + ([crops[i][..., c] for c in range(3)] if channels else [])
        for k, img in enumerate(panels):
            ax = axes[row, col * len(panels) + k]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ls = ",".join(f"{x:.0f}" for x in r["track_lengths_um"][:6])
                ax.set_title(f"{r['category']}{'  SEL' if sel[i] else ''}", fontsize=9)
                ax.set_xlabel(f"m={r['multiplicity']} [{ls}]", fontsize=7)
            else:
                ax.set_title("RGB"[k - 1] + " plane", fontsize=8)
    fig.suptitle(
        "Simulated crops (87 x 87 um, R/G/B = focal planes 3 um above / at / 3 um below the vertex); "
        "under each: picker multiplicity and prong lengths (um); SEL = the former method selects it",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return write_png(path, fig, dpi=dpi)
