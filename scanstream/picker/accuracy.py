"""The picker's measured errors against simulated truth: which picked vertex is which true one.

Pure functions over stage positions (mm), the picker's measured prongs and the truth rows that
:func:`scanstream.simulate.volume.simulate_volume` writes (``truth.parquet``: x_mm, y_mm, z_mm,
label, n_prongs, and each stopping prong's undeveloped length, azimuth and dip). One home for
the matching that ``benchmarks/end_to_end.py`` (the picker's errors beside the models) and
``benchmarks/picker_errors.py`` (the error table of docs/pick.md) both use; the simulated
picker's calibration reads that table.

Conventions (lengths in um):

* a true alpha decay is **picked** when a picked vertex lies within ``xy_um`` (2 um) in x, y and
  ``z_um`` (3 um, one z-step) in depth of it; its **nearest** vertex is the closest in x, y
  within ``near_um`` (15 um), from which the offsets and the prongs are measured;
* a picked vertex is **fake** when no simulated object's vertex (any category) lies within
  ``xy_um`` (5 um) in x, y and ``z_um`` (6 um) in depth;
* a picked vertex is a **duplicate** when another picked vertex lies within ``within_um`` (8 um)
  in 3-D: a star counted twice (in x, y alone, at any depth, as well: that also counts distinct
  objects above one another);
* **sources** (:func:`vertex_sources`): what made each picked vertex, for labelling training data
  picked from simulated volumes and for putting the kept vertices down to their sources:
  ``alpha`` (a decay within ``xy_um`` and ``z_um``), ``dup_near`` (no such decay, but one within
  ``near_um`` in x, y: its own vertex measured 2-5 um off or a second one beside it, ambiguous;
  off by default), ``dup`` (a decay within ``duplicate_um``: a second vertex of the star), the
  nearest other object's category within ``fake_xy_um`` and ``fake_z_um``, else ``fake``;
* prongs (:func:`match_prongs`): a true prong is matched to the measured prong closest in 3-D
  direction within ``max_deg`` (20 degrees); a measured prong that is the closest of several
  true prongs is one prong for all of them: the closest in direction is matched, the others are
  **merged** into it; a true prong with no measured prong within ``max_deg`` is **missed**; a
  measured prong within ``max_deg`` of no true prong is **extra** (a stub, a crossing track's
  half, or a prong whose direction the picker got wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from scanstream.physics.picker import extra_by_length

#: Quantiles the offsets are reported at: the median, one and two Gaussian sigmas.
QUANTILES = (0.5, 0.68, 0.95)
#: True-length bins (um) of the length-error table.
LENGTH_BINS_UM = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 80.0)


def _xy_um(picked: np.ndarray, x_mm: float, y_mm: float) -> np.ndarray:
    return np.hypot(picked[:, 0] - x_mm, picked[:, 1] - y_mm) * 1000


def decay_matches(picked: np.ndarray, multiplicity: np.ndarray, truth: Sequence[dict], *, xy_um: float = 2.0,
                  z_um: float = 3.0, near_um: float = 15.0) -> list[dict]:
    """For each true alpha decay (``label`` 1) of ``truth``: whether it was picked, and its nearest vertex.

    Parameters
    ----------
    picked : ndarray (n, 3)
        Picked vertices' stage x, y, z (mm).
    multiplicity : ndarray (n,)
        Their reported multiplicity (-1 where unknown).
    truth : sequence of dict
        Truth rows (x_mm, y_mm, z_mm, label, n_prongs).

    Returns
    -------
    list of dict, one per alpha decay in ``truth``'s order: ``picked`` (bool), ``found`` (a vertex
    within ``near_um``), ``near`` (how many), ``index`` (the nearest's row in ``picked``, or -1),
    and for a found one ``dxy_um``, ``dz_um`` (picked minus true) and ``multiplicity_error``.

    Examples
    --------
    >>> truth = [{"x_mm": 0.0, "y_mm": 0.0, "z_mm": -0.05, "label": 1, "n_prongs": 5}]
    >>> m = decay_matches(np.array([[0.001, 0.0, -0.051]]), np.array([4]), truth)
    >>> m[0]["picked"], round(m[0]["dxy_um"], 3), round(m[0]["dz_um"], 3), m[0]["multiplicity_error"]
    (True, 1.0, -1.0, -1)
    """
    picked = np.asarray(picked, float).reshape(-1, 3)
    out = []
    for r in truth:
        if r["label"] != 1:
            continue
        dxy = _xy_um(picked, r["x_mm"], r["y_mm"])
        is_picked = bool(((dxy <= xy_um) & (np.abs(picked[:, 2] - r["z_mm"]) * 1000 <= z_um)).any())
        near = np.flatnonzero(dxy <= near_um)
        if not near.size:
            out.append({"found": False, "near": 0, "picked": is_picked, "index": -1})
            continue
        j = int(near[np.argmin(dxy[near])])
        out.append({"found": True, "near": int(near.size), "picked": is_picked, "index": j, "dxy_um": float(dxy[j]),
                    "dz_um": float((picked[j, 2] - r["z_mm"]) * 1000),
                    "multiplicity_error": int(multiplicity[j] - r["n_prongs"])})
    return out


def _quantiles(values: Sequence[float], q: Sequence[float] = QUANTILES) -> list[float] | None:
    return [round(float(x), 2) for x in np.quantile(values, q)] if len(values) else None


def error_summary(matches: Sequence[dict], *, fakes: int, fields: int) -> dict:
    """The picker's measured errors on alpha decays from :func:`decay_matches` (offset quantiles
    ``QUANTILES``, measured minus true multiplicity, extra vertices per decay, fakes per field).

    Examples
    --------
    >>> m = [{"found": True, "near": 2, "picked": True, "dxy_um": 1.0, "dz_um": -1.0, "multiplicity_error": 0},
    ...      {"found": False, "near": 0, "picked": False}]
    >>> s = error_summary(m, fakes=3, fields=2)
    >>> s["extra_vertices_per_alpha_decay"], s["fake_vertices_per_field"], s["multiplicity_measured_minus_true"]
    (0.5, 1.5, {'0': 1})
    """
    found = [e for e in matches if e["found"]]
    merr = [e["multiplicity_error"] for e in found]
    return {
        "alpha_decays": len(matches), "with_a_vertex_within_duplicate_um": len(found),
        "vertex_offset_xy_um_q50_68_95": _quantiles([e["dxy_um"] for e in found]),
        "vertex_offset_abs_z_um_q50_68_95": _quantiles([abs(e["dz_um"]) for e in found]),
        "multiplicity_measured_minus_true": {str(k): merr.count(k) for k in sorted(set(merr))},
        "extra_vertices_per_alpha_decay": round(sum(e["near"] - 1 for e in found) / len(matches), 3) if matches else None,
        "fake_vertices_per_field": round(fakes / fields, 3) if fields else None,
    }


def fake_vertices(picked: np.ndarray, truth: Sequence[dict], *, xy_um: float = 5.0, z_um: float = 6.0) -> np.ndarray:
    """bool (n,): picked vertices (n, 3) mm with no true object's vertex within ``xy_um`` in x, y and ``z_um`` in depth.

    Examples
    --------
    >>> fake_vertices(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), [{"x_mm": 0.0, "y_mm": 0.003, "z_mm": 0.0}]).tolist()
    [False, True]
    """
    picked = np.asarray(picked, float).reshape(-1, 3)
    tp = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in truth], float).reshape(-1, 3)
    if not len(tp):
        return np.ones(len(picked), bool)
    dxy = np.hypot(picked[:, None, 0] - tp[None, :, 0], picked[:, None, 1] - tp[None, :, 1]) * 1000
    dz = np.abs(picked[:, None, 2] - tp[None, :, 2]) * 1000
    return ~((dxy <= xy_um) & (dz <= z_um)).any(1)


def duplicates(picked: np.ndarray, *, within_um: float = 8.0, in_3d: bool = True) -> np.ndarray:
    """bool (n,): picked vertices (n, 3) mm with another within ``within_um``: in 3-D (stage
    depth as it is, developed), or with ``in_3d`` False in x, y at any depth (which also counts
    distinct objects above one another).

    Examples
    --------
    >>> p = np.array([[0.0, 0.0, 0.0], [0.007, 0.0, -0.1], [0.02, 0.0, 0.0], [0.02, 0.0, -0.005]])
    >>> duplicates(p).tolist(), duplicates(p, in_3d=False).tolist()
    ([False, False, True, True], [True, True, True, True])
    """
    picked = np.asarray(picked, float).reshape(-1, 3)
    cols = 3 if in_3d else 2
    d = np.sqrt(((picked[:, None, :cols] - picked[None, :, :cols]) ** 2).sum(-1)) * 1000
    np.fill_diagonal(d, np.inf)
    return (d <= within_um).any(1) if len(picked) else np.zeros(0, bool)


def true_directions(row: dict) -> np.ndarray:
    """Unit directions (m, 3) of a truth row's stopping prongs: stage x, y and up (higher stage z)."""
    az, dip = np.radians(row["prong_azimuth_deg"] or []), np.radians(row["prong_dip_deg"] or [])
    return np.stack([np.cos(dip) * np.cos(az), np.cos(dip) * np.sin(az), np.sin(dip)], 1).reshape(-1, 3)


def match_prongs(measured: np.ndarray, true: np.ndarray, *, max_deg: float = 20.0) -> dict:
    """Match measured prong directions (k, 3) to true ones (m, 3), both unit (module docstring).

    Returns ``pairs`` [(true index, measured index)], ``merged``, ``missed`` (true prongs) and
    ``extra`` (measured prongs) counts, and ``extra_indices`` (the extra measured prongs' rows).

    Examples
    --------
    >>> true = np.array([[1.0, 0, 0], [0.98, 0.2, 0], [0, 1.0, 0], [-1.0, 0, 0]])
    >>> measured = np.array([[1.0, 0.05, 0], [0, -1.0, 0], [-0.99, 0.1, 0]])
    >>> m = match_prongs(measured / np.linalg.norm(measured, axis=1, keepdims=True), true / np.linalg.norm(true, axis=1, keepdims=True))
    >>> m["pairs"], m["merged"], m["missed"], m["extra"], m["extra_indices"]
    ([(0, 0), (3, 2)], 1, 1, 1, [1])
    """
    measured, true = np.asarray(measured, float).reshape(-1, 3), np.asarray(true, float).reshape(-1, 3)
    angle = np.degrees(np.arccos(np.clip(true @ measured.T, -1.0, 1.0))).reshape(len(true), len(measured))
    ok = angle <= max_deg
    best = {}  # measured index -> [(angle, true index)]
    missed = 0
    for i in range(len(true)):
        if not ok[i].any():
            missed += 1
            continue
        j = int(np.argmin(np.where(ok[i], angle[i], np.inf)))
        best.setdefault(j, []).append((float(angle[i, j]), i))
    pairs = sorted((min(c)[1], j) for j, c in best.items())
    merged = sum(len(c) - 1 for c in best.values())
    extra_indices = np.flatnonzero(~ok.any(0)).tolist() if len(true) else list(range(len(measured)))
    return {"pairs": pairs, "merged": merged, "missed": missed, "extra": len(extra_indices), "extra_indices": extra_indices}


def length_errors(true_um: Sequence[float], measured_um: Sequence[float], bins: Sequence[float] = LENGTH_BINS_UM) -> list[dict]:
    """Measured minus true prong length (um) by true length: count, median and 16-84 % range per bin.

    Examples
    --------
    >>> length_errors([15.0, 16.0, 35.0], [14.0, 17.0, 30.0], bins=(10.0, 20.0, 40.0))
    [{'true_um': [10.0, 20.0], 'prongs': 2, 'median_um': 0.0, 'q16_q84_um': [-0.68, 0.68]}, {'true_um': [20.0, 40.0], 'prongs': 1, 'median_um': -5.0, 'q16_q84_um': [-5.0, -5.0]}]
    """
    t, e = np.asarray(true_um, float), np.asarray(measured_um, float) - np.asarray(true_um, float)
    out = []
    for lo, hi in pairwise(bins):
        sel = (t >= lo) & (t < hi)
        q = _quantiles(e[sel], (0.5, 0.16, 0.84))
        out.append({"true_um": [float(lo), float(hi)], "prongs": int(sel.sum()),
                    "median_um": q[0] if q else None, "q16_q84_um": q[1:] if q else None})
    return out


#: The prong counts of :class:`ProngTally`.
PRONG_COUNTS = ("true", "reported", "matched", "merged", "missed", "extra", "split")


class ProngTally:
    """Decays' measured prongs matched to their true ones (:func:`match_prongs`), summed over decays:
    the prong measures of the picker's error table, which ``benchmarks/picker_errors.py`` takes of
    the detector and :mod:`scanstream.simulate.pickercal` of the simulated picker the same way.

    A measured prong within 20 degrees of a true prong but not its closest is *split* (the true
    prong reported twice); extra and split prongs are kept by measured length.

    Examples
    --------
    >>> t = ProngTally()
    >>> t.add(np.array([[1.0, 0, 0], [0.99, 0.1, 0], [0, 0, 1.0]]), [20.0, 8.0, 5.0], np.array([[1.0, 0, 0], [0, 1.0, 0]]), [21.0, 30.0])
    >>> t.counts
    {'true': 2, 'reported': 3, 'matched': 1, 'merged': 0, 'missed': 1, 'extra': 1, 'split': 1}
    """

    def __init__(self) -> None:
        self.counts = dict.fromkeys(PRONG_COUNTS, 0)
        self.true_len: list[float] = []
        self.meas_len: list[float] = []
        self.extra_len: list[float] = []
        self.split_len: list[float] = []

    def add(self, measured: np.ndarray, lengths: Sequence[float], true: np.ndarray, true_lengths: Sequence[float]) -> None:
        """One decay: measured prong directions (k, 3) and lengths, true directions (m, 3) and lengths."""
        p = match_prongs(measured, true)
        n = len(measured)
        self.counts["true"] += len(true_lengths)
        self.counts["reported"] += n
        self.counts["matched"] += len(p["pairs"])
        for key in ("merged", "missed", "extra"):
            self.counts[key] += p[key]
        self.true_len += [float(true_lengths[t]) for t, _ in p["pairs"]]
        self.meas_len += [float(lengths[j]) for _, j in p["pairs"]]
        self.extra_len += [float(lengths[j]) for j in p["extra_indices"]]
        split = sorted(set(range(n)) - {j for _, j in p["pairs"]} - set(p["extra_indices"]))
        self.split_len += [float(lengths[j]) for j in split]
        self.counts["split"] += len(split)

    def measures(self) -> dict:
        """``prongs`` (the counts and each per true prong), ``extra_prongs_by_length``,
        ``split_prongs_by_length`` and ``length_error_by_true_length``: keys of the error table."""
        tp = max(self.counts["true"], 1)
        return {
            "prongs": {**self.counts, **{f"{k}_per_true_prong": round(self.counts[k] / tp, 4) for k in PRONG_COUNTS[2:]}},
            "extra_prongs_by_length": extra_by_length(self.extra_len, self.counts["true"]),
            "split_prongs_by_length": extra_by_length(self.split_len, self.counts["true"]),
            "length_error_by_true_length": length_errors(self.true_len, self.meas_len),
        }


@dataclass(frozen=True)
class MatchRadii:
    """Distances (um) of :func:`vertex_sources` (module docstring: sources)."""

    xy_um: float = 2.0
    z_um: float = 3.0
    near_um: float = 0.0
    duplicate_um: float = 15.0
    fake_xy_um: float = 5.0
    fake_z_um: float = 6.0


def truth_arrays(truth: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions (n, 3) mm, is-alpha (n,), categories (n,)) of a volume's truth rows."""
    pos = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in truth], dtype=float).reshape(-1, 3)
    alpha = np.array([r["label"] == 1 for r in truth], dtype=bool)
    cats = np.array([str(r["category"]) for r in truth], dtype=object)
    return pos, alpha, cats


def vertex_sources(picked_mm: np.ndarray, truth: Sequence[Mapping[str, Any]], radii: MatchRadii = MatchRadii()) -> np.ndarray:
    """What made each picked vertex (positions (k, 3) mm): an array of k source names."""
    tp, lab, cats = truth_arrays(truth)
    out = np.empty(len(picked_mm), dtype=object)
    for i, v in enumerate(np.asarray(picked_mm, dtype=float).reshape(-1, 3)):
        dxy = np.hypot(tp[:, 0] - v[0], tp[:, 1] - v[1]) * 1000.0
        dz = np.abs(tp[:, 2] - v[2]) * 1000.0
        other = (dxy <= radii.fake_xy_um) & (dz <= radii.fake_z_um) & ~lab
        if ((dxy <= radii.xy_um) & (dz <= radii.z_um) & lab).any():
            out[i] = "alpha"
        elif ((dxy <= radii.near_um) & lab).any():
            out[i] = "dup_near"
        elif ((dxy <= radii.duplicate_um) & lab).any():
            out[i] = "dup"
        elif other.any():
            near = np.nonzero(other)[0]
            out[i] = str(cats[near[np.argmin(dxy[near])]])
        else:
            out[i] = "fake"
    return out


def displaced_radon(picked: np.ndarray, origins: Sequence, prongs: Sequence[tuple], truth: Sequence[dict], *,
                    moved_um: float = 2.0, xy_um: float = 2.0, z_um: float = 3.0) -> dict:
    """The second vertex of displaced radon decays (docs/pick.md, "Displaced radon") on one volume.

    Parameters
    ----------
    picked : ndarray (n, 3)
        Picked vertices' stage x, y, z (mm).
    origins : sequence of n (x, y, z) mm or None
        Each vertex's second point (``Vertex.origin`` in stage coordinates), None where none.
    prongs : sequence of n (directions (k, 3) unit, stage x, y, up; lengths (k,) um)
        Each vertex's reported prongs.
    truth : sequence of dict
        Truth rows (x_mm, y_mm, z_mm, label, category, rn_dx_um, rn_dy_um, rn_dz_um and the prongs).

    Returns
    -------
    dict of counts: ``displaced`` (alpha decays whose radon moved ``moved_um`` or more, 3-D
    undeveloped), ``displaced_picked`` (of them, a vertex within ``xy_um`` in x, y and ``z_um`` in
    depth), ``origin_within`` / ``origin_elsewhere`` (of those, the vertex reports its origin within
    ``xy_um`` in x, y of the true origin, the truth vertex less the radon's vector / farther),
    ``unmoved_picked`` and ``unmoved_with_origin`` (picked decays whose radon did not move),
    ``other_vertices`` and ``other_with_origin`` (vertices that are no picked decay's), and
    ``first_alpha_errors_um`` (measured minus true length of the first alphas' prongs of the picked
    displaced decays, Th-228 and Ra-224 or Ra-226, matched by direction, :func:`match_prongs`).

    Examples
    --------
    >>> row = {"x_mm": 0.0, "y_mm": 0.0, "z_mm": -0.05, "label": 1, "category": "alpha_th", "rn_dx_um": 3.0,
    ...        "rn_dy_um": 0.0, "rn_dz_um": 0.0, "prong_lengths_um": [20.0], "prong_azimuth_deg": [0.0], "prong_dip_deg": [0.0]}
    >>> out = displaced_radon(np.array([[0.0, 0.0, -0.05]]), [(-0.0025, 0.0, -0.05)], [(np.array([[1.0, 0, 0]]), [21.0])], [row])
    >>> out["displaced_picked"], out["origin_within"], out["other_with_origin"], out["first_alpha_errors_um"]
    (1, 1, 0, [1.0])
    """
    picked = np.asarray(picked, float).reshape(-1, 3)
    out = dict.fromkeys(("displaced", "displaced_picked", "origin_within", "origin_elsewhere", "unmoved_picked",
                         "unmoved_with_origin", "other_vertices", "other_with_origin"), 0)
    errors: list[float] = []
    decay_vertices = set()
    for r in truth:
        if r["label"] != 1:
            continue
        vec = np.array([r.get("rn_dx_um", 0.0), r.get("rn_dy_um", 0.0), r.get("rn_dz_um", 0.0)], float)
        moved = float(np.linalg.norm(vec)) >= moved_um
        out["displaced"] += moved
        dxy = _xy_um(picked, r["x_mm"], r["y_mm"])
        ok = np.flatnonzero((dxy <= xy_um) & (np.abs(picked[:, 2] - r["z_mm"]) * 1000 <= z_um))
        if not ok.size:
            continue
        j = int(ok[np.argmin(dxy[ok])])
        decay_vertices.add(j)
        o = origins[j]
        if not moved:
            out["unmoved_picked"] += not vec.any()
            out["unmoved_with_origin"] += not vec.any() and o is not None
            continue
        out["displaced_picked"] += 1
        if o is not None:
            near = float(np.hypot(o[0] - r["x_mm"] + vec[0] / 1000, o[1] - r["y_mm"] + vec[1] / 1000)) * 1000 <= xy_um
            out["origin_within" if near else "origin_elsewhere"] += 1
        first = 2 if r["category"] == "alpha_th" else 1
        d, lengths = prongs[j]
        p = match_prongs(np.asarray(d, float).reshape(-1, 3), true_directions(r))
        errors += [float(lengths[m]) - r["prong_lengths_um"][i] for i, m in p["pairs"] if i < first]
    others = [j for j in range(len(picked)) if j not in decay_vertices]
    out["other_vertices"] = len(others)
    out["other_with_origin"] = sum(origins[j] is not None for j in others)
    return {**out, "first_alpha_errors_um": [round(e, 2) for e in errors]}
