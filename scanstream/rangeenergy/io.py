"""Inputs and outputs: prong lengths of a sheet's alpha decays or candidates, the spectrum figure, the result file."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scanstream import __version__
from scanstream.atomic import write_png, write_text
from scanstream.candidates.table import read_candidates
from scanstream.errors import InputError
from scanstream.picker import cuts as bl
from scanstream.rangeenergy.fit import FitConfig, fit_sheet
from scanstream.rangeenergy.relation import (
    DENSITY_EXPONENT,
    LINES,
    POWER_A_UM,
    POWER_B,
    REFERENCE_DENSITY,
    RESULT_FILE,
    SPECTRUM_FILE,
    line_ranges_um,
)
from scanstream.rangeenergy.spectrum import (
    SpectrumModel,
    background_density,
    corrected_dips_deg,
    line_shapes,
    line_weights,
)
from scanstream.verdicts import read_verdicts

logger = logging.getLogger(__name__)


# -- inputs, outputs ------------------------------------------------------------------------
def alpha_object_ids(verdicts: str | os.PathLike) -> set[str]:
    """Object ids whose latest verdict in a verdicts table (directory or .jsonl file) is alpha."""
    latest: dict[str, str] = {}
    for record in read_verdicts(verdicts):  # in time order: the last one per object wins
        latest[str(record["object_id"])] = record["verdict"]
    ids = {k for k, v in latest.items() if v == "alpha"}
    if not ids:
        raise InputError(f"{verdicts}: no object is marked alpha ({len(latest)} verdict(s) read)")
    return ids


def _column(table: pa.Table, name: str, source: str | os.PathLike) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise InputError(f"{source}: object table has no {name!r} column")
    return table.column(name)


def _sheet_rows(table: pa.Table, sheet: str, source: str | os.PathLike) -> pa.Table:
    rows = table.filter(pc.equal(_column(table, "sheet", source).cast(pa.string()), sheet))
    if rows.num_rows == 0:
        known = sorted({str(s) for s in pc.unique(table.column("sheet")).to_pylist()})[:10]
        raise InputError(f"{source}: no objects of sheet {sheet!r} (sheets there: {', '.join(known) or 'none'})")
    return rows


@dataclass(frozen=True)
class SheetProngs:
    """What :func:`read_sheet_prongs` read of one sheet.

    Attributes
    ----------
    lengths : list of float arrays
        One per object: its prong lengths (um).
    dips : list of float arrays or None
        Parallel to ``lengths``: the prongs' dips (degrees), where the table has them for every object.
    shrinkage : float or None
        The emulsion's shrinkage from the scan's metadata (``EmulsionType.Sh``, the table's
        ``emulsion_shrinkage``), which the picker also converted depth with; None where unknown.
    inputs : dict
        Paths, the selection used, counts, and the simulation's truth where the table has it.
    """

    lengths: list[np.ndarray]
    dips: list[np.ndarray] | None
    shrinkage: float | None
    inputs: dict[str, Any]


def read_sheet_lengths(source: str | os.PathLike, *, sheet: str, store: str | os.PathLike | None = None,
                       verdicts: str | os.PathLike | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Prong lengths (um) of one sheet's alpha decays or candidates, and what was read (:func:`read_sheet_prongs`)."""
    prongs = read_sheet_prongs(source, sheet=sheet, store=store, verdicts=verdicts)
    return prongs.lengths, prongs.inputs


def _dips_and_shrinkage(rows: pa.Table, lengths: list[np.ndarray], sheet: str,
                        where: str) -> tuple[list[np.ndarray] | None, float | None]:
    """The rows' dips (None unless every object has one per prong) and their one metadata shrinkage."""
    dips = None
    if "track_dips_deg" in rows.column_names:
        raw = rows.column("track_dips_deg").to_pylist()
        if all(d is not None and len(d) == len(x) for d, x in zip(raw, lengths, strict=True)):
            dips = [np.asarray(d, np.float64) for d in raw]
        else:
            logger.warning("%s: some objects of sheet %s lack dips; fitting lengths only", where, sheet)
    shrinkage = None
    if "emulsion_shrinkage" in rows.column_names:
        values = {round(float(v), 4) for v in rows.column("emulsion_shrinkage").to_pylist() if v is not None}
        if len(values) > 1:
            raise InputError(f"{where}: sheet {sheet!r} has {len(values)} different EmulsionType.Sh values "
                             f"({', '.join(map(str, sorted(values)))}); give --shrinkage")
        shrinkage = values.pop() if values else None
    return dips, shrinkage


def read_sheet_prongs(source: str | os.PathLike, *, sheet: str, store: str | os.PathLike | None = None,
                      verdicts: str | os.PathLike | None = None) -> SheetProngs:
    """Prong lengths (um) and dips (degrees) of one sheet's alpha decays or candidates, and what was read.

    Parameters
    ----------
    source : path
        A candidate table directory (with ``store``), else a labelled crop store or
        features-only ``.parquet`` object table.
    sheet : str
    store : path, optional
        The crop store (or object table) holding the candidates' ``track_lengths_um``.
    verdicts : path, optional
        A verdicts table: keep only objects whose latest verdict is alpha (instead of the
        candidates' ``selected`` or the store's ``label == 1``).

    Returns
    -------
    SheetProngs
    """
    inputs: dict[str, Any] = {"sheet": sheet, "verdicts": None if verdicts is None else str(verdicts)}
    alpha_ids = alpha_object_ids(verdicts) if verdicts is not None else None
    if store is None:
        table = _sheet_rows(bl.read_object_table(source), sheet, source)
        inputs.update(mode="store", store=str(source))
        if alpha_ids is None:
            rows = table.filter(pc.equal(_column(table, "label", source), 1))
            inputs["selection"] = "label == 1"
        else:
            rows = table.filter(pc.is_in(_column(table, "object_id", source), pa.array(sorted(alpha_ids))))
            inputs["selection"] = "verdict alpha"
        wanted = rows.num_rows
    else:
        cands = _sheet_rows(read_candidates(source, columns=["object_id", "sheet", "selected"], partial=True), sheet, source)
        if alpha_ids is None:
            cands = cands.filter(pc.fill_null(cands.column("selected"), False))
            inputs["selection"] = "selected"
        else:
            cands = cands.filter(pc.is_in(cands.column("object_id"), pa.array(sorted(alpha_ids))))
            inputs["selection"] = "verdict alpha"
        ids = pa.array(sorted(set(cands.column("object_id").to_pylist())), pa.string())
        table = bl.read_object_table(store)
        rows = table.filter(pc.is_in(_column(table, "object_id", store).cast(pa.string()), ids))
        inputs.update(mode="candidates", candidates=str(source), store=str(store), missing_in_store=len(ids) - rows.num_rows)
        wanted = len(ids)
        if inputs["missing_in_store"]:
            logger.warning("%s: %d of %d candidate(s) are not in %s", source, inputs["missing_in_store"], wanted, store)
    if rows.num_rows == 0:
        raise InputError(f"{source}: no objects of sheet {sheet!r} left after the selection ({inputs['selection']})")
    inputs.update(objects_wanted=int(wanted), objects=rows.num_rows)
    lengths = [np.asarray(x if x is not None else [], np.float64)
               for x in _column(rows, "track_lengths_um", inputs["store"]).to_pylist()]
    if "truth_density" in rows.column_names:
        inputs["truth"] = {k: float(np.nanmean(np.asarray(rows.column(f"truth_{k}").to_pylist(), float)))
                           for k in ("density", "shrinkage") if f"truth_{k}" in rows.column_names}
    dips, shrinkage = _dips_and_shrinkage(rows, lengths, sheet, inputs["store"])
    inputs.update(dips=dips is not None, emulsion_shrinkage=shrinkage)
    return SheetProngs(lengths, dips, shrinkage, inputs)


def expected_spectrum(lengths_um: np.ndarray, fit: dict[str, Any], model: SpectrumModel | None = None) -> dict[str, np.ndarray]:
    """The fitted model's prong spectrum (1/um, over the window) as per-prong densities.

    Returns ``{"total", "background"}`` evaluated at ``lengths_um``: the lines in proportion
    to their weights at the fitted thorium share, plus the background share.
    """
    model = model or SpectrumModel()
    g, inside = line_shapes(lengths_um, fit["density"], fit["shrinkage"], model, fit.get("noise_rel"))
    w = line_weights(fit["th_fraction"])
    f_bg = fit.get("background_fraction") or 0.0
    bg = f_bg * background_density(lengths_um, fit.get("background_slope_per_um") or 0.0, model.window_um)
    return {"total": (1.0 - f_bg) * (g @ w) / (inside @ w) + bg, "background": bg}


def _plot_dips(ax: Any, lengths: np.ndarray, dips: np.ndarray, fit: dict[str, Any], model: SpectrumModel) -> None:
    """Cumulative distribution of sin|dip| of the in-window prongs, as read and corrected to the fitted shrinkage."""
    lo, hi = model.window_um
    inside = (lengths >= lo) & (lengths <= hi)
    grid = np.linspace(0.0, 1.0, 2)
    ax.plot(grid, grid, color="0.3", lw=1.0, ls="--", label="isotropic")
    for label, sh, color in ((f"as read (depth at {model.shrinkage_nominal:g})", model.shrinkage_nominal, "C0"),
                             (f"corrected (shrinkage {fit['shrinkage']:.3f})", fit["shrinkage"], "C3")):
        s = np.sort(np.sin(np.radians(corrected_dips_deg(dips[inside], sh, model))))
        ax.step(s, np.arange(1, len(s) + 1) / max(len(s), 1), where="post", color=color, lw=1.4, label=label)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("sin |dip| (= |cos θ| from the optical axis)")
    ax.set_ylabel("share of prongs in the fit window, cumulative")
    ax.set_title(f"prong directions ({int(inside.sum())} prongs)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")


def label_tiers(positions: Sequence[float], min_gap: float) -> list[int]:
    """A tier (0 = top) for each label at ``positions``, so labels within a tier are ``min_gap`` apart.

    Greedy from the left: each label takes the highest tier whose last label is far enough.

    >>> label_tiers([24.4, 25.1, 20.0, 25.3, 30.0], 1.0)
    [0, 1, 0, 2, 0]
    """
    order = np.argsort(np.asarray(positions, float), kind="stable")
    last: list[float] = []  # rightmost position used in each tier
    tiers = [0] * len(order)
    for i in order:
        x = float(positions[i])
        tier = next((t for t, end in enumerate(last) if x - end >= min_gap), len(last))
        if tier == len(last):
            last.append(x)
        last[tier] = x
        tiers[i] = tier
    return tiers


def _line_labels(ax: Any, fig: Any, density: float, ymax: float) -> list[Any]:
    """The decay lines at ``density``, each named; crowded names are stacked in tiers above the data.

    The names' sizes come from the renderer, so the tiers and the headroom above the histogram
    (``ymax``: the data's top) fit what is drawn.
    """
    ranges = line_ranges_um(density)
    renderer = fig.canvas.get_renderer()
    texts = []
    for ln, r in zip(LINES, ranges, strict=True):
        color = "C2" if ln.chain == "Th" else "C1"
        ax.axvline(r, color=color, lw=0.8, ls=":")
        texts.append(ax.text(r, 0.99, ln.nuclide, rotation=90, va="top", ha="center", fontsize=7, color=color,
                             transform=ax.get_xaxis_transform()))
    box = ax.get_window_extent(renderer)
    extents = [t.get_window_extent(renderer) for t in texts]
    x0, x1 = ax.get_xlim()
    min_gap = 1.15 * max(e.width for e in extents) * (x1 - x0) / box.width  # a name's width in um, with room
    step = 1.1 * max(e.height for e in extents) / box.height  # a tier's height, as a share of the panel's
    tiers = label_tiers(ranges, min_gap)
    for t, tier in zip(texts, tiers, strict=True):
        t.set_y(0.99 - step * tier)
    ax.set_ylim(0.0, ymax / max(0.2, 0.98 - step * (max(tiers) + 1)))  # the data stays below the lowest tier
    return texts


def spectrum_figure(lengths: Sequence[np.ndarray], fit: dict[str, Any], *, model: SpectrumModel | None = None,
                    title: str = "", dips: Sequence[np.ndarray] | None = None) -> Any:
    """The figure :func:`plot_spectrum` saves (a matplotlib Figure; tests read what it draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # imported here: fit_sheet's callers (watch) need no plotting

    model = model or SpectrumModel()
    flat = np.concatenate([np.asarray(a, float) for a in lengths]) if len(lengths) else np.zeros(0)
    lo, hi = model.window_um
    top = max(hi + 15.0, float(np.percentile(flat, 99)) + 5.0 if len(flat) else 0.0)
    if dips is None:
        fig, ax = plt.subplots(figsize=(9, 4.8))
    else:
        fig, (ax, ax_dip) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [9, 5]})
        flat_dips = np.concatenate([np.asarray(a, float) for a in dips]) if len(dips) else np.zeros(0)
        _plot_dips(ax_dip, flat, flat_dips, fit, model)
    ax.hist(flat, bins=np.arange(0.0, top + 1.0, 1.0), color="0.55", label=f"measured prongs ({len(flat)})")
    x = np.linspace(lo, hi, 600)
    curves = expected_spectrum(x, fit, model)
    n_fit = fit.get("prongs_fitted", len(flat))
    ax.plot(x, n_fit * curves["total"], color="C3", lw=1.8, label="fitted expectation")
    if np.any(curves["background"] > 0):
        ax.plot(x, n_fit * curves["background"], color="C0", lw=1.2, ls="--", label="background")
    ax.axvspan(0.0, lo, color="0.9", zorder=-1)
    ax.axvspan(hi, top, color="0.9", zorder=-1, label="outside the fit window")
    ax.set_xlim(0.0, top)
    _line_labels(ax, fig, fit["density"], ax.get_ylim()[1])
    ax.set_xlabel("measured prong length (um, picker: nominal shrinkage 2.0)")
    ax.set_ylabel("prongs per 1 um")
    err = fit.get("density_err")
    s_err = fit.get("shrinkage_err")
    head = (f"density {fit['density']:.3f}" + (f" ± {err:.3f}" if err else "") + " g/cm³, shrinkage "
            f"{fit['shrinkage']:.3f}" + (f" ± {s_err:.3f}" if s_err else " (fixed)" if fit.get("shrinkage_fixed") else ""))
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.8))
    return fig


def plot_spectrum(lengths: Sequence[np.ndarray], fit: dict[str, Any], path: str | os.PathLike, *,
                  model: SpectrumModel | None = None, title: str = "",
                  dips: Sequence[np.ndarray] | None = None) -> Path:
    """PNG: the measured prong-length spectrum, the fitted expectation and the lines at the fit.

    With ``dips`` (one array per object, degrees) a second panel shows the prongs' dip
    distribution as read (depth converted with the picker's nominal shrinkage) and corrected
    to the fitted shrinkage, against isotropic decays' (sin |dip| uniform). The lines' names
    are stacked in tiers where they would overlap (:func:`label_tiers`).
    """
    fig = spectrum_figure(lengths, fit, model=model, title=title, dips=dips)
    return write_png(path, fig, dpi=110, tight=True)


def _shrinkage_settings(prongs: SheetProngs, model: SpectrumModel, config: FitConfig,
                        use_metadata: bool) -> tuple[SpectrumModel, FitConfig, str]:
    """The model and fit settings for the sheet's shrinkage, and a line saying where it came from.

    A shrinkage in the scan's metadata is what the picker converted depth with (the model's
    nominal shrinkage) and, unless ``config`` fixes one or ``use_metadata`` is off, the sheet's.
    """
    if prongs.shrinkage is not None:
        model = replace(model, shrinkage_nominal=prongs.shrinkage)
    if config.shrinkage is not None:
        return model, config, f"given: {config.shrinkage:g} (fixed)"
    if prongs.shrinkage is not None and use_metadata:
        return model, replace(config, shrinkage=prongs.shrinkage), \
            f"scan metadata EmulsionType.Sh: {prongs.shrinkage:g} (fixed)"
    how = "lengths and dips" if prongs.dips is not None else "lengths alone"
    prior = config.prior(dips=prongs.dips is not None)
    return model, config, f"fitted from {how}" + (f", prior {prior[0]:g} ± {prior[1]:g}" if prior else "")


def run_range_energy(source: str | os.PathLike, *, sheet: str, out: str | os.PathLike,
                     store: str | os.PathLike | None = None, verdicts: str | os.PathLike | None = None,
                     model: SpectrumModel | None = None, config: FitConfig | None = None,
                     use_metadata_shrinkage: bool = True) -> dict[str, Any]:
    """Read a sheet's alpha decays or candidates, fit, write ``OUT/rangeenergy.json`` and ``OUT/spectrum.png``.

    See :func:`read_sheet_prongs` for ``source``, ``store`` and ``verdicts``. The shrinkage is,
    in order: ``config.shrinkage`` if set; the scan metadata's (``EmulsionType.Sh``, the
    table's ``emulsion_shrinkage``) unless ``use_metadata_shrinkage`` is off; else fitted, from
    the dips where the table has them. ``fit["shrinkage_source"]`` says which. Returns the
    JSON document written (fitted values with errors, inputs, counts, model and fit settings).
    """
    model = model or SpectrumModel()
    config = config or FitConfig()
    prongs = read_sheet_prongs(source, sheet=sheet, store=store, verdicts=verdicts)
    model, config, shrinkage_source = _shrinkage_settings(prongs, model, config, use_metadata_shrinkage)
    fit = fit_sheet(prongs.lengths, dips=prongs.dips, model=model, config=config)
    fit["shrinkage_source"] = shrinkage_source
    logger.info("sheet %s: shrinkage %s", sheet, shrinkage_source)
    out_dir = Path(out)
    png = plot_spectrum(prongs.lengths, fit, out_dir / SPECTRUM_FILE, model=model, title=f"sheet {sheet}",
                        dips=prongs.dips)
    inputs = prongs.inputs
    doc = {
        "stage": "range-energy",
        "version": __version__,
        "sheet": sheet,
        "shrinkage_source": shrinkage_source,
        "fit": fit,
        "inputs": inputs,
        "model": asdict(model),
        "config": asdict(config),
        "relation": {"reference_density": REFERENCE_DENSITY, "density_exponent": DENSITY_EXPONENT,
                     "power_law_a_um": POWER_A_UM, "power_law_b": POWER_B},
        "spectrum": str(png),
    }
    doc["json"] = str(write_text(out_dir / RESULT_FILE, json.dumps(doc, indent=2, default=str) + "\n"))
    return doc
