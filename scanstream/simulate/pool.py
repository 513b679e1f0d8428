"""Pools of fresh simulated crops drawn across many sheets, optionally only what a prefilter keeps.

A real labelled store comes from one or two sheets; the simulator can draw every object from a
sheet of its own conditions (density, shrinkage, development darkness, fog, focus, light), so a
network trained on a pool sees the spread of sheets it will classify instead of one sheet's
look. :func:`simulate_pool` plans ``sheets`` sheets of ``objects_per_sheet`` objects each
(sheet ``<prefix><i>``, conditions drawn from the seed and the name), computes every object's
picker features first (thousands per second, no image), keeps the rows a ``keep`` rule accepts
(a cascade's prefilter: the network is trained on what it will be shown) and renders only those,
shuffled across sheets, into one crop store. The store is deterministic in its arguments and
resumes like any simulated store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scanstream.errors import InputError
from scanstream.simulate.conditions import SheetConditions, resolve_conditions
from scanstream.simulate.dataset import ObjectPlan, check_counts, iter_simulated, plan_sheet, write_plans
from scanstream.store import CropStore, is_store, open_store

Keep = Callable[[pa.Table], np.ndarray]


def pool_sheets(prefix: str, sheets: int, seed: int, *, draw: str = "nominal") -> dict[str, SheetConditions]:
    """The pool's sheet names and their drawn conditions (``draw``: ``nominal`` or ``wide``), in order."""
    if isinstance(sheets, bool) or not isinstance(sheets, int) or sheets < 1:
        raise InputError(f"a pool needs at least one sheet, got {sheets!r}")
    return {f"{prefix}{i:02d}": resolve_conditions(f"{prefix}{i:02d}", seed, draw=draw) for i in range(sheets)}


def pool_plans(
    *, prefix: str, sheets: int, objects_per_sheet: int, alpha_fraction: float, seed: int, keep: Keep | None = None,
    workers: int = 1, draw: str = "nominal",
) -> tuple[list[ObjectPlan], dict[str, SheetConditions], dict[str, int]]:
    """Plans of the objects a pool renders (kept ones, shuffled across sheets) and counts.

    Returns
    -------
    plans : list of ObjectPlan
        ``index`` = row in the pool's store.
    conditions : dict sheet -> SheetConditions
    counts : dict
        ``planned``, ``kept``, ``planned_alpha``, ``kept_alpha``.
    """
    check_counts(objects_per_sheet, alpha_fraction)
    conds = pool_sheets(prefix, sheets, seed, draw=draw)
    kept: list[ObjectPlan] = []
    counts = {"planned": 0, "kept": 0, "planned_alpha": 0, "kept_alpha": 0}
    for name, cond in conds.items():
        plans = plan_sheet(objects_per_sheet, alpha_fraction, name, seed)
        parts = [t for _, t in iter_simulated(plans, {name: cond}, workers=workers, render=False, batch=2048)]
        table = pa.concat_tables(parts)
        mask = np.ones(len(plans), bool) if keep is None else np.asarray(keep(table), bool)
        if mask.shape != (len(plans),):
            raise InputError(f"keep rule returned shape {mask.shape} for {len(plans)} objects")
        labels = table.column("label").to_numpy()
        counts["planned"] += len(plans)
        counts["planned_alpha"] += int((labels == 1).sum())
        counts["kept"] += int(mask.sum())
        counts["kept_alpha"] += int((labels[mask] == 1).sum())
        kept += [p for p, m in zip(plans, mask, strict=True) if m]
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9001])).permutation(len(kept))
    plans = [ObjectPlan(j, kept[i].sheet, kept[i].serial, kept[i].category, kept[i].seed) for j, i in enumerate(order)]
    return plans, conds, counts


def simulate_pool(
    path: str | os.PathLike,
    *,
    prefix: str,
    sheets: int,
    objects_per_sheet: int,
    alpha_fraction: float,
    seed: int,
    keep: Keep | None = None,
    keep_identity: Mapping[str, Any] | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    draw: str = "nominal",
) -> tuple[CropStore, dict[str, int]]:
    """Render a pool (module docstring) into the crop store ``path``.

    ``keep_identity`` (JSON) names the keep rule in the store's source record, so that a rerun
    with another rule is refused instead of resumed into a mixed store. ``draw`` names the
    ranges the sheets' conditions are drawn from (``wide``: domain randomisation).
    """
    existing = _finished_pool(Path(path), prefix=prefix, sheets=sheets, objects_per_sheet=objects_per_sheet,
                              alpha_fraction=alpha_fraction, seed=seed, keep_identity=keep_identity, draw=draw)
    if existing is not None and not overwrite:
        return existing  # a rerun of a finished pool: nothing to do
    plans, conds, counts = pool_plans(prefix=prefix, sheets=sheets, objects_per_sheet=objects_per_sheet,
                                      alpha_fraction=alpha_fraction, seed=seed, keep=keep, workers=workers, draw=draw)
    if not plans:
        raise InputError(f"{path}: the keep rule kept none of {counts['planned']} objects")
    source = {
        "stage": "simulate-pool", "prefix": prefix, "sheets": int(sheets), "objects_per_sheet": int(objects_per_sheet),
        "alpha_fraction": float(alpha_fraction), "seed": int(seed), "keep": dict(keep_identity or {}), "draw": draw,
        "conditions": {k: c.as_dict() for k, c in conds.items()}, "counts": counts,
    }
    store = write_plans(Path(path), plans, conds, source=source, workers=workers, overwrite=overwrite, progress=progress,
                        desc=f"pool {prefix}")
    return store, counts


def _finished_pool(path: Path, *, keep_identity: Mapping[str, Any] | None, **args: Any) -> tuple[CropStore, dict[str, int]] | None:
    """A complete store at ``path`` written by :func:`simulate_pool` with these arguments, or None."""
    if not is_store(path):
        return None
    store = open_store(path, require_complete=False)
    src = {"draw": "nominal", **(store.attrs.get("source") or {})}  # pools written before draws were named
    same = src.get("stage") == "simulate-pool" and src.get("keep") == dict(keep_identity or {}) and all(
        src.get(k) == (float(v) if k == "alpha_fraction" else v) for k, v in args.items()
    )
    return (store, dict(src.get("counts", {}))) if store.complete and same else None
