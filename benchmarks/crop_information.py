"""How much of the picker's information a crop carries: an idealised crop reader against the picker.

A crop holds three focal planes 3 um apart (R, G, B = -3, 0, +3 um of developed depth around the
vertex, ``scanstream.simulate.render``); the scanner's vertex picker reads prong lengths from the
whole z-stack (``scanstream.simulate.picker``). This script simulates objects *without rendering*
and computes, from each object's true 3-D geometry, what its focal planes show in principle
(an upper bound for a perfect reader of the crop), then trains scikit-learn's
HistGradientBoostingClassifier on

  (a)  the picker's features (``scanstream.picker.features.feature_array``: the learned former method),
       and the same 11 numbers from the true 3-D prong lengths in the picker's tracking volume
       (an ideal picker: no missed or merged prongs, no length error, no z-steps);
  (b)  the crop-observable features of the three planes (geometry + ionisation class), also
       with the proton / alpha / heavy class read right only 90 % or 75 % of the time per prong,
       with only thin / grey / black told apart, and with the picker's length error on the
       3-D lengths;
  (c)  (a) and (b) together;
  (d)  (b) without any per-kind ionisation information (geometry in three planes alone), also
       with the picker's length error;
  (e)  (b) and (d) with more focal planes (7 planes over +-9 um, 15 over +-21 um; 3 um apart);

and (a) again with a coarser or finer picker (noise x2, x0.5; depth read in 1.5 um z-steps),
every variant reading the same random numbers (the object's picker stream).
TRAIN is one sheet (``--objects``, ``--alpha-fraction``), TEST another sheet with its
own conditions at the paper's prevalence (255 / 46,948). For each feature set it prints TEST's
Average Precision (with a bootstrap standard deviation over TEST objects) and the candidates
needed at the recall of the former method's cuts (``scanstream.picker.cuts.select``) on TEST.

What "observable in principle" means here (lengths in um; 3-D lengths undeveloped, i.e. depth
times the sheet's true shrinkage; planes and depths developed):

* the crop's planes sit at ``offsets + focus - defocus`` in the object's frame, ``focus`` the
  crop's own focus error, drawn exactly as ``render_object`` draws it (microscope stream);
* a point is *in focus* when it lies within ``--dof`` of a plane (all plane sets here are 3 um
  apart, so with dof >= 1.5 um the in-focus region is one slab) and inside the crop's field
  (|x|, |y| <= 43.5 um); it is in the *haze* when within ``--haze`` of a plane (a blurred but
  visible black track);
* prongs are found as the picker finds them, but from the truth: a segment passing within
  2 um of the vertex gives one prong from its closest point to each end (>= 0.5 um);
* per prong (the 8 longest in focus, longest first): in-focus 3-D length, in-focus projected
  length, projected length in the haze, full 3-D length *only when the whole prong lies in the
  focus slab and the field* (else missing: a perfect reader measures a range only when it sees
  the whole track), |cos| of its dip (when >= 2.5 um is in focus), whether its end is in view,
  whether its track goes through the vertex; and (ionisation) its particle kind (mip, grey,
  proton, alpha, heavy, scratch, lobe: what grain density, width and darkness encode; unknown
  unless >= 2.5 um of the prong is in focus) and whether a stopping end (Bragg end) is in view;
* per object: prongs in the haze / in focus / whole in focus / leaving the field / through the
  vertex / ending in view, the vertex's distance to the nearest plane (defocus), a second vertex
  in focus (>= 2 segments not attached to the vertex sharing a start point: 2vtx objects,
  radon-split alpha stars), visible detached segments, visible dust blobs; and (ionisation)
  visible prongs and detached segments by kind.

The ionisation class is the simulator's truth: how well pixels show it is not modelled here
(the 90 % / 75 % / thin-grey-black variants bracket it).

Usage::

    .venv/bin/python benchmarks/crop_information.py [--objects 20000] [--test-objects 20000]
        [--seed 0] [--dof 2.0] [--haze 6.0] [--figure docs/analysis/crop_information_pr.png]

``--objects`` is TRAIN's size (one sheet, ``--alpha-fraction`` 0.1), ``--test-objects`` TEST's (another
sheet, the paper's prevalence). The defaults take about 2.5 CPU minutes on one core.

One process, one thread (``OMP_NUM_THREADS=1`` is set before scikit-learn loads).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import sys
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa

from scanstream.metrics import average_precision, operating_point_at_recall
from scanstream.physics.emulsion import ALPHA, GREY, HEAVY, KIND_NAMES, MIP, PROTON
from scanstream.physics.picker import DEFAULT_PICKER, PickerModel
from scanstream.picker.cuts import select
from scanstream.picker.features import feature_array
from scanstream.simulate.dataset import make_object, object_stream, plan_sheet, resolve_conditions
from scanstream.simulate.picker import pick_features
from scanstream.simulate.render import PLANE_OFFSETS
from scanstream.store import CROP_SIZE, PIXEL_SIZE_UM

HALF_FIELD_UM = CROP_SIZE * PIXEL_SIZE_UM / 2  # 43.5 um: the crop's half-width at the object
ATTACH_UM = 2.0  # as the picker: a segment this close to the vertex is one of its prongs
MIN_VISIBLE_UM = 2.5  # as the picker's shortest reported prong
N_PRONGS = 8
STOPPING = (PROTON, ALPHA, HEAVY)
_IS_STOPPING = np.isin(np.arange(len(KIND_NAMES)), STOPPING)
_IS_THIN = np.isin(np.arange(len(KIND_NAMES)), (MIP, GREY))
#: Plane sets (developed um relative to the vertex, before focus error and defocus).
PLANE_SETS = {
    "3": PLANE_OFFSETS.astype(float),  # the crop: R, G, B
    "7": np.arange(-9.0, 9.0 + 1e-9, 3.0),
    "15": np.arange(-21.0, 21.0 + 1e-9, 3.0),
}
TEST_ALPHA_FRACTION = 255 / 46948

PRONG_GEOM = ("len_focus", "proj_focus", "proj_haze", "len_full_if_contained", "cos_dip", "end_in_view", "through")
PRONG_KIND = ("kind", "stop_in_view")
OBJ_GEOM = ("n_in_haze", "n_visible", "n_contained", "n_leaving", "n_through", "n_end_in_view", "sum_len_focus",
            "vertex_plane_dist", "nearest_plane_offset", "second_vertex", "second_vertex_n", "second_vertex_dist_xy",
            "second_vertex_dz", "n_detached_visible", "n_blobs_visible", "max_blob_radius")
OBJ_KIND = tuple(f"n_visible_{k}" for k in KIND_NAMES) + ("n_detached_visible_stopping", "n_detached_visible_mip_grey")


def column_names() -> tuple[list[str], np.ndarray]:
    """Names of the crop-observable columns and a mask of the per-kind (ionisation) ones."""
    names, kind = [], []
    for n in OBJ_GEOM:
        names.append(n)
        kind.append(False)
    for n in OBJ_KIND:
        names.append(n)
        kind.append(True)
    for j in range(N_PRONGS):
        for n in PRONG_GEOM:
            names.append(f"p{j}_{n}")
            kind.append(False)
        for n in PRONG_KIND:
            names.append(f"p{j}_{n}")
            kind.append(True)
    return names, np.array(kind)


CROP_COLUMNS, KIND_MASK = column_names()


def _clip(p0: np.ndarray, p1: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parameter interval [t0, t1] of each segment p0->p1 inside the box lo..hi (t1 <= t0: outside).

    ``lo``/``hi`` have one entry per coordinate of ``p0`` (a coordinate with +-inf bounds is free).
    """
    d = p1 - p0
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)  # a flat coordinate: no bound if inside, empty if not
    ta = (lo - p0) / d
    tb = (hi - p0) / d
    t0 = np.maximum(np.minimum(ta, tb).max(1, initial=-np.inf), 0.0)
    t1 = np.minimum(np.maximum(ta, tb).min(1, initial=np.inf), 1.0)
    return t0, t1


def _ideal_picker(length: np.ndarray, start: np.ndarray, end: np.ndarray, scale: np.ndarray,
                  model: PickerModel = DEFAULT_PICKER) -> np.ndarray:
    """True 3-D prong lengths inside the picker's tracking volume (no misses, merging, noise or z-steps)."""
    if not len(length):
        return np.zeros(0)
    _, t1 = _clip(start[:, 2:3], end[:, 2:3], np.array([-model.z_window_um]), np.array([model.z_window_um]))
    dxy = np.hypot(*(end - start)[:, :2].T)
    s = np.minimum(np.clip(t1, 0.0, None), np.where(dxy > model.follow_um, model.follow_um / np.maximum(dxy, 1e-9), 1.0))
    out = length * s
    return np.sort(out[out >= model.min_length_um])[::-1]


class Geometry:
    """An object's prongs (segment halves from the vertex) and detached segments, once per object.

    Everything that does not depend on where the focal planes are is computed here; :meth:`features`
    only clips in depth.
    """

    def __init__(self, obj, cond) -> None:
        sh = cond.shrinkage
        self.scale = np.array([1.0, 1.0, sh])
        self.obj, self.cond = obj, cond
        a, b = obj.starts, obj.ends
        k = len(obj.kinds)
        if k:
            pa_, pb_ = a * self.scale, b * self.scale
            d = pb_ - pa_
            dd = np.maximum((d * d).sum(1), 1e-12)
            t = np.clip(-(pa_ * d).sum(1) / dd, 0.0, 1.0)
            dist = np.linalg.norm(pa_ + t[:, None] * d, axis=1)
        else:
            t = dist = np.zeros(0)
        att = np.flatnonzero(dist <= ATTACH_UM)
        c = a[att] + t[att, None] * (b[att] - a[att])
        # halves: from the closest point c to the segment's end (u = 1) and to its start (u = 0)
        seg = np.concatenate([att, att])
        start = np.concatenate([c, c])
        end = np.concatenate([b[att], a[att]])
        u1 = np.concatenate([np.ones(len(att)), np.zeros(len(att))])
        length = np.linalg.norm((end - start) * self.scale, axis=1)
        keep = length >= 0.5
        n_att = len(att)
        halves_of = np.concatenate([np.arange(n_att), np.arange(n_att)])[keep]
        self.through = (np.bincount(halves_of, minlength=n_att)[halves_of] == 2) if n_att else np.zeros(0, bool)
        self.seg, self.start, self.end = seg[keep], start[keep], end[keep]
        self.length = length[keep]
        self.n = len(self.seg)
        self.proj = np.hypot(*(self.end - self.start)[:, :2].T) if self.n else np.zeros(0)
        self.kind = obj.kinds[self.seg].astype(int)
        # a stopping particle ends at u = 1 when its residual range there is 0
        self.stops = _IS_STOPPING[self.kind] & (u1[keep] == 1.0) & (obj.residual_end[self.seg] <= 0.0)
        self.cos_dip = np.abs((self.end - self.start)[:, 2] * sh) / np.maximum(self.length, 1e-9)
        h = HALF_FIELD_UM
        box_lo, box_hi = np.array([-h, -h]), np.array([h, h])
        self.xy0, self.xy1 = _clip(self.start[:, :2], self.end[:, :2], box_lo, box_hi)
        self.leaving = self.xy1 < 1.0 - 1e-9
        self.end_in_box = np.all(np.abs(self.end[:, :2]) <= h, axis=1)
        self.ideal_picker = _ideal_picker(self.length, self.start, self.end, self.scale)
        # detached segments (not prongs of the picked vertex)
        det = np.flatnonzero(dist > ATTACH_UM)
        self.det_a, self.det_b = a[det], b[det]
        self.det_len = np.linalg.norm((b[det] - a[det]) * self.scale, axis=1)
        det_kind = obj.kinds[det].astype(int)
        self.det_stopping = _IS_STOPPING[det_kind]
        self.det_thin = _IS_THIN[det_kind]
        self.det_xy0, self.det_xy1 = _clip(self.det_a[:, :2], self.det_b[:, :2], box_lo, box_hi)
        # a second vertex: >= 2 detached segments sharing a start point
        self.sv = None
        if len(det) >= 2:
            sa = a[det]
            same = np.abs(sa[:, None, :] - sa[None, :, :]).max(2) < 0.01
            counts = same.sum(1)
            g = int(np.argmax(counts))
            if counts[g] >= 2:
                self.sv = (sa[g], int(counts[g]))
        vk = self.kind
        self._kind_onehot = (vk[:, None] == np.arange(len(KIND_NAMES))[None, :]).astype(float)

    def features(self, offsets: np.ndarray, focus: float, dof: float, haze: float) -> np.ndarray:
        """The crop-observable vector (:data:`CROP_COLUMNS`) for focal planes at ``offsets``."""
        planes = offsets + focus - self.obj.defocus
        pmin, pmax = float(planes.min()), float(planes.max())
        zlo, zhi = pmin - dof, pmax + dof
        h = HALF_FIELD_UM
        sz, ez = self.start[:, 2:3], self.end[:, 2:3]
        z0, z1 = _clip(sz, ez, np.array([zlo]), np.array([zhi]))
        t0, t1 = np.maximum(z0, self.xy0), np.minimum(z1, self.xy1)
        span = np.clip(t1 - t0, 0.0, None)
        len_focus = span * self.length
        proj_focus = span * self.proj
        hz0, hz1 = _clip(sz, ez, np.array([pmin - haze]), np.array([pmax + haze]))
        span_haze = np.clip(np.minimum(hz1, self.xy1) - np.maximum(hz0, self.xy0), 0.0, None)
        proj_haze = span_haze * self.proj
        in_haze = span_haze * self.length >= MIN_VISIBLE_UM
        contained = (t0 <= 1e-9) & (t1 >= 1.0 - 1e-9)
        len_full = np.where(contained, self.length, np.nan)
        visible = len_focus >= MIN_VISIBLE_UM
        cos_dip = np.where(visible, self.cos_dip, np.nan)
        end_in_view = self.end_in_box & (self.end[:, 2] >= zlo) & (self.end[:, 2] <= zhi)
        stop_in_view = end_in_view & self.stops
        # detached segments in view
        if len(self.det_a):
            d0, d1 = _clip(self.det_a[:, 2:3], self.det_b[:, 2:3], np.array([zlo]), np.array([zhi]))
            det_vis = np.clip(np.minimum(d1, self.det_xy1) - np.maximum(d0, self.det_xy0), 0.0, None) * self.det_len >= MIN_VISIBLE_UM
        else:
            det_vis = np.zeros(0, bool)
        sv = [0.0, 0.0, np.nan, np.nan]
        if self.sv is not None:  # seen only when its point is in focus in the field
            p, cnt = self.sv
            if abs(p[0]) <= h and abs(p[1]) <= h and zlo <= p[2] <= zhi:
                sv = [1.0, cnt, float(np.hypot(p[0], p[1])), float(p[2])]
        bl = self.obj.blobs
        if len(bl):
            rz = bl[:, 3] / self.cond.shrinkage
            bvis = (np.abs(bl[:, 0]) <= h) & (np.abs(bl[:, 1]) <= h) & (bl[:, 2] + rz >= zlo) & (bl[:, 2] - rz <= zhi)
            blobs = [float(bvis.sum()), float(bl[bvis, 3].max()) if bvis.any() else 0.0]
        else:
            blobs = [0.0, 0.0]
        vd = np.abs(planes)
        through = visible & self.through
        kind = np.where(visible, self.kind, -1)  # the kind of a prong not in focus is not seen
        obj_geom = [in_haze.sum(), visible.sum(), contained.sum(), (in_haze & self.leaving).sum(), through.sum(),
                    end_in_view.sum(), len_focus.sum(), vd.min(), planes[np.argmin(vd)], *sv, det_vis.sum(), *blobs]
        obj_kind = list(self._kind_onehot[visible].sum(0)) if self.n else [0.0] * len(KIND_NAMES)
        obj_kind += [float((det_vis & self.det_stopping).sum()), float((det_vis & self.det_thin).sum())]
        prong = np.zeros((N_PRONGS, len(PRONG_GEOM) + len(PRONG_KIND)))
        prong[:, PRONG_GEOM.index("len_full_if_contained")] = np.nan
        prong[:, PRONG_GEOM.index("cos_dip")] = np.nan
        prong[:, len(PRONG_GEOM) + PRONG_KIND.index("kind")] = -1
        if self.n:
            order = np.lexsort((-proj_haze, -len_focus))[:N_PRONGS]
            cols = (len_focus, proj_focus, proj_haze, len_full, cos_dip, end_in_view, through, kind, stop_in_view)
            prong[: len(order)] = np.stack([np.asarray(v, float)[order] for v in cols], axis=1)
        return np.concatenate([np.asarray(obj_geom, float), np.asarray(obj_kind, float), prong.ravel()])


def crop_focus(plan, cond) -> float:
    """The crop's focus error, drawn exactly as ``render_object`` draws it."""
    _, scene = object_stream(plan, 2).spawn(2)
    return float(scene.normal(0.0, cond.focus_error))


def simulate(n: int, alpha_fraction: float, sheet: str, seed: int, *, dof: float, haze: float,
             pickers: dict[str, PickerModel]) -> dict:
    """Objects of one sheet: picker features per picker variant, crop features per plane set, truth."""
    cond = resolve_conditions(sheet, seed)
    plans = plan_sheet(n, alpha_fraction, sheet, seed)
    labels = np.zeros(n, np.int64)
    cats = []
    crop = {k: np.zeros((n, len(CROP_COLUMNS))) for k in PLANE_SETS}
    names = list(pickers) + ["ideal"]
    mult = {k: np.zeros(n, np.int64) for k in names}
    lengths = {k: [] for k in names}
    n_prongs = np.zeros(n, np.int64)  # prongs (segment halves >= 0.5 um from the vertex), for the summary only
    for i, plan in enumerate(plans):
        obj = make_object(plan.category, object_stream(plan, 0), cond)
        labels[i] = obj.label
        cats.append(obj.category)
        for name, model in pickers.items():  # every variant reads the same picker stream
            m, ln = pick_features(obj, object_stream(plan, 1), model)
            mult[name][i] = m
            lengths[name].append(np.asarray(ln, np.float64))
        geo = Geometry(obj, cond)
        n_prongs[i] = geo.n
        mult["ideal"][i] = len(geo.ideal_picker)
        lengths["ideal"].append(geo.ideal_picker)
        focus = crop_focus(plan, cond)
        for k, offsets in PLANE_SETS.items():
            crop[k][i] = geo.features(offsets, focus, dof, haze)
    picker_x = {}
    for name in names:
        table = pa.table({"multiplicity": pa.array(mult[name], pa.int64()),
                          "track_lengths_um": pa.array([x.tolist() for x in lengths[name]], pa.list_(pa.float32()))})
        picker_x[name] = feature_array(table)
    return {"sheet": sheet, "conditions": cond.as_dict(), "labels": labels, "categories": np.array(cats, object),
            "mult": mult, "lengths": lengths, "picker": picker_x, "crop": crop, "n_prongs": n_prongs}


def coarse_ionisation(x: np.ndarray) -> np.ndarray:
    """Crop features whose ionisation classes are only thin / grey / black: proton, alpha, heavy merged."""
    x = x.copy()
    for j in range(N_PRONGS):
        c = CROP_COLUMNS.index(f"p{j}_kind")
        x[np.isin(x[:, c], (PROTON, HEAVY)), c] = ALPHA
    cp, ca, ch = (CROP_COLUMNS.index(f"n_visible_{k}") for k in ("proton", "alpha", "heavy"))
    x[:, ca] = x[:, cp] + x[:, ca] + x[:, ch]
    x[:, cp] = 0.0
    x[:, ch] = 0.0
    return x


def confused_kinds(x: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Crop features read by an imperfect ionisation reader: each visible stopping prong's kind
    (proton, alpha, heavy) is right with probability ``accuracy``, else one of the other two.

    The per-kind counts of visible prongs are recounted from the (eight) per-prong kinds.
    """
    x = x.copy()
    kinds = np.array(STOPPING)
    cols = [CROP_COLUMNS.index(f"p{j}_kind") for j in range(N_PRONGS)]
    k = x[:, cols]
    stop = np.isin(k, kinds)
    wrong = stop & (rng.random(k.shape) >= accuracy)
    shift = rng.integers(1, len(kinds), k.shape)  # to one of the other two kinds
    idx = np.searchsorted(kinds, np.where(stop, k, kinds[0]).astype(int))
    k = np.where(wrong, kinds[(idx + shift) % len(kinds)], k)
    x[:, cols] = k
    for kd in STOPPING:
        x[:, CROP_COLUMNS.index(f"n_visible_{KIND_NAMES[kd]}")] = (k == kd).sum(1)
    return x


def noisy_lengths(x: np.ndarray, rng: np.random.Generator, rel: float = 0.04, abs_um: float = 0.8) -> np.ndarray:
    """Crop features with the picker's length error on the 3-D lengths (in focus, full)."""
    x = x.copy()
    for j in range(N_PRONGS):
        for name in ("len_focus", "len_full_if_contained"):
            c = CROP_COLUMNS.index(f"p{j}_{name}")
            v = x[:, c]
            has = np.isfinite(v) & (v > 0)
            v[has] = np.maximum(v[has] * (1 + rng.normal(0, rel, has.sum())) + rng.normal(0, abs_um, has.sum()), 0.0)
    return x


def fit_score(x_tr, y_tr, x_te, seed: int, max_iter: int = 300) -> tuple[np.ndarray, float]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    t = time.process_time()
    est = HistGradientBoostingClassifier(max_iter=max_iter, random_state=seed)  # as scanstream.picker.learned
    est.fit(x_tr, y_tr)
    return est.decision_function(x_te), time.process_time() - t


def bootstrap_ap(y: np.ndarray, scores: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """AP of every score on the same ``n`` bootstrap resamples of TEST (paired)."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    out = {k: np.zeros(n) for k in scores}
    for b in range(n):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].sum() == 0:
            idx = np.arange(len(y))
        for k, s in scores.items():
            out[k][b] = average_precision_score(y[idx], s[idx])
    return out


def evaluate(y, s, cats, recall) -> dict:
    ap = average_precision(y, s)
    out = {"ap": round(ap, 4)}
    if recall is not None:
        op = operating_point_at_recall(y, s, recall)
        sel = s >= op.threshold
        fp: dict[str, int] = {}
        for c in cats[sel & (y == 0)]:
            fp[str(c)] = fp.get(str(c), 0) + 1
        out.update(candidates=op.selected, true_positives=op.true_positives,
                   precision=round(op.true_positives / op.selected, 4),
                   false_positives_by_category=dict(sorted(fp.items(), key=lambda kv: -kv[1])))
    return out


FEATURE_SETS = {
    "a_picker": "picker features (multiplicity, prongs in 15-55 um, 8 longest lengths)",
    "a_ideal_picker": "picker features from true 3-D prong lengths in the picker's volume (no misses, merging, noise, z-steps)",
    "b_crop3": "crop-observable, 3 planes (geometry + ionisation class)",
    "b_crop3_kind90": "crop-observable, 3 planes, proton / alpha / heavy read right 90 % of the time per prong",
    "b_crop3_kind75": "crop-observable, 3 planes, proton / alpha / heavy read right 75 % of the time per prong",
    "b_crop3_black": "crop-observable, 3 planes, ionisation classes thin / grey / black only (proton = alpha = heavy)",
    "b_crop3_noisy": "crop-observable, 3 planes, 3-D lengths with the picker's 4 % + 0.8 um error",
    "c_picker_crop3": "picker features + crop-observable 3 planes",
    "d_crop3_geometry": "crop-observable, 3 planes, geometry only (no per-kind ionisation)",
    "e_crop7": "crop-observable, 7 planes over +-9 um",
    "e_crop15": "crop-observable, 15 planes over +-21 um",
    "e_crop7_geometry": "crop-observable, 7 planes, geometry only",
    "e_crop15_geometry": "crop-observable, 15 planes, geometry only",
    "d_crop3_geometry_noisy": "crop-observable, 3 planes, geometry only, 3-D lengths with the picker's 4 % + 0.8 um error",
}
PICKER_VARIANTS = {
    "default": DEFAULT_PICKER,
    "noise_x2": replace(DEFAULT_PICKER, noise_rel=2 * DEFAULT_PICKER.noise_rel, noise_abs_um=2 * DEFAULT_PICKER.noise_abs_um),
    "noise_x0.5": replace(DEFAULT_PICKER, noise_rel=0.5 * DEFAULT_PICKER.noise_rel, noise_abs_um=0.5 * DEFAULT_PICKER.noise_abs_um),
    "z_step_1.5": replace(DEFAULT_PICKER, z_step_um=1.5),
}


def run(*, train_objects: int = 20000, train_alpha_fraction: float = 0.1, test_objects: int = 20000,
        test_alpha_fraction: float = TEST_ALPHA_FRACTION, seed: int = 0, dof: float = 2.0, haze: float = 6.0,
        bootstrap: int = 100, pickers: bool = True, curves: bool = False, max_iter: int = 300) -> dict:
    """The whole measurement; returns the JSON-able result (plus PR curves when ``curves``)."""
    t_start = time.process_time()
    variants = PICKER_VARIANTS if pickers else {"default": DEFAULT_PICKER}
    tr = simulate(train_objects, train_alpha_fraction, f"CI{seed}TR", seed, dof=dof, haze=haze, pickers=variants)
    te = simulate(test_objects, test_alpha_fraction, f"CI{seed}TE", seed + 1000, dof=dof, haze=haze, pickers=variants)
    t_sim = time.process_time() - t_start
    y_tr, y_te, cats = tr["labels"], te["labels"], te["categories"]
    geom = ~KIND_MASK
    rng = np.random.default_rng(seed + 7)
    xs = {
        "a_picker": (tr["picker"]["default"], te["picker"]["default"]),
        "a_ideal_picker": (tr["picker"]["ideal"], te["picker"]["ideal"]),
        "b_crop3": (tr["crop"]["3"], te["crop"]["3"]),
        "b_crop3_kind90": (confused_kinds(tr["crop"]["3"], 0.9, rng), confused_kinds(te["crop"]["3"], 0.9, rng)),
        "b_crop3_kind75": (confused_kinds(tr["crop"]["3"], 0.75, rng), confused_kinds(te["crop"]["3"], 0.75, rng)),
        "b_crop3_black": (coarse_ionisation(tr["crop"]["3"]), coarse_ionisation(te["crop"]["3"])),
        "b_crop3_noisy": (noisy_lengths(tr["crop"]["3"], rng), noisy_lengths(te["crop"]["3"], rng)),
        "c_picker_crop3": (np.hstack([tr["picker"]["default"], tr["crop"]["3"]]), np.hstack([te["picker"]["default"], te["crop"]["3"]])),
        "d_crop3_geometry": (tr["crop"]["3"][:, geom], te["crop"]["3"][:, geom]),
        "e_crop7": (tr["crop"]["7"], te["crop"]["7"]),
        "e_crop15": (tr["crop"]["15"], te["crop"]["15"]),
        "e_crop7_geometry": (tr["crop"]["7"][:, geom], te["crop"]["7"][:, geom]),
        "e_crop15_geometry": (tr["crop"]["15"][:, geom], te["crop"]["15"][:, geom]),
        "d_crop3_geometry_noisy": (noisy_lengths(tr["crop"]["3"], rng)[:, geom], noisy_lengths(te["crop"]["3"], rng)[:, geom]),
    }
    # the former method's cuts on TEST fix the recall every feature set is compared at
    sel, _ = select(te["mult"]["default"], te["lengths"]["default"])
    tp = int((sel & (y_te == 1)).sum())
    positives = int(y_te.sum())
    recall = tp / positives if positives and tp else None
    fp_cuts: dict[str, int] = {}
    for c in cats[sel & (y_te == 0)]:
        fp_cuts[str(c)] = fp_cuts.get(str(c), 0) + 1
    scores, results = {}, {}
    for name, (x_tr, x_te) in xs.items():
        s, cpu = fit_score(x_tr, y_tr, x_te, seed, max_iter)
        scores[name] = s
        results[name] = {"description": FEATURE_SETS[name], "n_features": int(x_tr.shape[1]),
                         **evaluate(y_te, s, cats, recall), "fit_cpu_s": round(cpu, 1)}
    picker_results = {}
    for name, model in variants.items():
        if name == "default":
            s = scores["a_picker"]
        else:
            s, _ = fit_score(tr["picker"][name], y_tr, te["picker"][name], seed, max_iter)
            scores[f"a_picker_{name}"] = s
        sel_v, _ = select(te["mult"][name], te["lengths"][name])
        tp_v = int((sel_v & (y_te == 1)).sum())
        picker_results[name] = {"noise_rel": model.noise_rel, "noise_abs_um": model.noise_abs_um, "z_step_um": model.z_step_um,
                                **evaluate(y_te, s, cats, recall),
                                "cuts": {"selected": int(sel_v.sum()), "true_positives": tp_v}}
    boot = {}
    if bootstrap:
        b = bootstrap_ap(y_te, scores, bootstrap, seed + 11)
        for name, res in results.items():
            res["ap_bootstrap_sd"] = round(float(b[name].std(ddof=1)), 4)
        diffs = {"b_crop3 - a_picker": ("b_crop3", "a_picker"), "c_picker_crop3 - a_picker": ("c_picker_crop3", "a_picker"),
                 "d_crop3_geometry - a_picker": ("d_crop3_geometry", "a_picker"),
                 "d_crop3_geometry_noisy - a_picker": ("d_crop3_geometry_noisy", "a_picker"),
                 "e_crop7_geometry - d_crop3_geometry": ("e_crop7_geometry", "d_crop3_geometry"),
                 "a_ideal_picker - a_picker": ("a_ideal_picker", "a_picker"),
                 "b_crop3 - d_crop3_geometry": ("b_crop3", "d_crop3_geometry"),
                 "e_crop15 - b_crop3": ("e_crop15", "b_crop3"),
                 "e_crop15_geometry - d_crop3_geometry": ("e_crop15_geometry", "d_crop3_geometry")}
        for name in picker_results:
            if name != "default":
                diffs[f"a_picker_{name} - a_picker"] = (f"a_picker_{name}", "a_picker")
        for label, (p, q) in diffs.items():
            d = b[p] - b[q]
            boot[label] = {"mean": round(float(d.mean()), 4), "sd": round(float(d.std(ddof=1)), 4)}
        for name, res in picker_results.items():
            key = "a_picker" if name == "default" else f"a_picker_{name}"
            res["ap_bootstrap_sd"] = round(float(b[key].std(ddof=1)), 4)
    # how many of the TEST alpha stars' prongs a perfect reader sees whole (its range measurable)
    contained = {}
    alpha = y_te == 1
    n_true = te["n_prongs"][alpha]
    for k in PLANE_SETS:
        x = te["crop"][k][alpha]
        n_cont = x[:, CROP_COLUMNS.index("n_contained")]
        contained[k] = {"prongs_whole_in_focus": round(float(n_cont.sum() / max(n_true.sum(), 1)), 3),
                        "stars_with_every_prong_whole_in_focus": round(float((n_cont >= n_true).mean()), 3) if alpha.any() else None,
                        "mean_prongs_in_focus": round(float(x[:, CROP_COLUMNS.index("n_visible")].mean()), 2) if alpha.any() else None,
                        "mean_prongs": round(float(n_true.mean()), 2) if alpha.any() else None}
    out = {
        "config": {"train_objects": train_objects, "train_alpha_fraction": train_alpha_fraction, "test_objects": test_objects,
                   "test_alpha_fraction": test_alpha_fraction, "seed": seed, "dof_um": dof, "haze_um": haze,
                   "half_field_um": round(HALF_FIELD_UM, 2), "plane_sets_um": {k: v.tolist() for k, v in PLANE_SETS.items()},
                   "classifier": f"sklearn HistGradientBoostingClassifier(max_iter={max_iter}), one thread", "bootstrap": bootstrap},
        "sheets": {"train": {"sheet": tr["sheet"], "objects": len(y_tr), "alpha": int(y_tr.sum()), "conditions": tr["conditions"]},
                   "test": {"sheet": te["sheet"], "objects": len(y_te), "alpha": positives, "conditions": te["conditions"]}},
        "former_cuts_on_test": {"selected": int(sel.sum()), "true_positives": tp, "positives": positives,
                                "recall": round(recall, 4) if recall else None,
                                "precision": round(tp / max(int(sel.sum()), 1), 4), "false_positives_by_category": fp_cuts},
        "feature_sets": results,
        "picker_variants": picker_results,
        "ap_differences_bootstrap": boot,
        "test_alpha_prongs_seen_whole": contained,
        "cpu_s": {"simulate_and_features": round(t_sim, 1), "total": round(time.process_time() - t_start, 1)},
    }
    if curves:
        out["_curves"] = (y_te, scores)
    return out


def plot(y: np.ndarray, scores: dict[str, np.ndarray], result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(7, 5))
    shown = [("a_picker", "(a) picker features", "k", "-"), ("b_crop3", "(b) crop, 3 planes", "tab:blue", "-"),
             ("c_picker_crop3", "(c) picker + crop 3 planes", "tab:purple", "--"),
             ("a_ideal_picker", "(a) ideal picker (true 3-D lengths)", "grey", "--"),
             ("d_crop3_geometry", "(d) crop, 3 planes, geometry only", "tab:orange", "-"),
             ("e_crop15", "(e) crop, 15 planes", "tab:green", ":"),
             ("e_crop15_geometry", "(e) crop, 15 planes, geometry only", "tab:red", ":")]
    for key, label, color, ls in shown:
        p, r, _ = precision_recall_curve(y, scores[key])
        ax.plot(r, p, color=color, ls=ls, label=f"{label}: AP {result['feature_sets'][key]['ap']:.3f}")
    cuts = result["former_cuts_on_test"]
    if cuts["recall"]:
        ax.plot([cuts["recall"]], [cuts["precision"]], "ks", label=f"former cuts ({cuts['selected']} selected)")
    cfg = result["config"]
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"TEST sheet {result['sheets']['test']['sheet']}: {cfg['test_objects']:,} objects, "
                 f"{result['sheets']['test']['alpha']} alpha decays (idealised readers)", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=20000, help="TRAIN objects (one sheet)")
    p.add_argument("--alpha-fraction", type=float, default=0.1, help="TRAIN alpha fraction")
    p.add_argument("--test-objects", type=int, default=20000, help="TEST objects (another sheet)")
    p.add_argument("--test-alpha-fraction", type=float, default=TEST_ALPHA_FRACTION, help="default 255/46948, the paper's TEST")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dof", type=float, default=2.0, help="half-width (um, developed) of a plane's depth of field")
    p.add_argument("--haze", type=float, default=6.0, help="distance (um) within which a black track is seen blurred")
    p.add_argument("--bootstrap", type=int, default=100, help="TEST resamples for AP standard deviations (0: none)")
    p.add_argument("--no-picker-variants", action="store_true", help="skip the noise / z-step variants of (a)")
    p.add_argument("--figure", help="write PR curves of the feature sets to this PNG")
    a = p.parse_args(argv)
    if a.dof < 1.5:
        p.error("--dof must be >= 1.5 um: the planes are 3 um apart and the in-focus region is treated as one slab")
    res = run(train_objects=a.objects, train_alpha_fraction=a.alpha_fraction, test_objects=a.test_objects,
              test_alpha_fraction=a.test_alpha_fraction, seed=a.seed, dof=a.dof, haze=a.haze, bootstrap=a.bootstrap,
              pickers=not a.no_picker_variants, curves=bool(a.figure))
    curves = res.pop("_curves", None)
    if a.figure and curves is not None:
        plot(*curves, res, a.figure)
        res["figure"] = a.figure
    json.dump(res, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
