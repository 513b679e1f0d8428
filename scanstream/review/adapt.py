"""Adapting a sheet's threshold from a few review verdicts, with a recall estimate that holds.

A threshold calibrated on VALID promises a recall that a sheet developed or imaged differently
may not deliver. Verdicts on the sheet's own objects can recalibrate it, but only if they say
something about the whole sheet: verdicts on the top of the score order never see the alpha
decays the threshold misses. The *useful order* asks for verdicts from a stratified random
sample instead:

* the sheet's objects, ranked by score (highest first, ties by object id), are cut into score
  bands around the threshold ``t`` (``k`` objects reach it): the top and bottom halves of the
  selection, then ranks ``[k, 2k)``, ``[2k, 4k)``, ``[4k, 16k)`` and the rest of the sheet,
  where a missed alpha decay hides among thousands of others;
* each band is shuffled (a seeded permutation) and the bands are interleaved: round ``j`` asks
  for the next ``w_h`` objects of every band that has them, top band first. The allocation
  ``w = (2, 2, 2, 2, 1, 1)`` (:data:`ALLOCATION`) asks twice as often in the four bands around
  the threshold, where alpha decays are dense and verdicts say most about where to cut, and
  keeps one per round in the two deep bands so every part of the sheet is seen.

Stopped anywhere, the verdicts in band ``h`` are a simple random sample of ``n_h`` of its
``N_h`` objects, whatever the scores. A few dozen verdicts in a band of thousands rarely meet
its alpha decays, so a design-based estimate (each verdict standing for ``N_h / n_h`` objects,
Horvitz-Thompson) is usually blind to them, and a bootstrap of it gave intervals that held the
truth on 17-90 % of synthetic sheets, depending on how deep the alpha decays reached. The
estimate is therefore model-based (:mod:`scanstream.review.posterior`): a logistic
recalibration of the sheet's logits with one intercept per band, fitted to the verdicts,
predicts the labels not asked, and its posterior predictive draws give recall, precision, the
number of alpha decays and the cut itself with their intervals. The Horvitz-Thompson recall is
kept in the record as a check that uses no model. ``benchmarks/verdicts_adapt.py --binormal``
measures both on synthetic sheets (docs/recipe.md, "Fifty verdicts").

Verdicts of the same objects given in another order are used (the latest wins); verdicts on
objects the design did not ask for are not, since their inclusion probability is unknown.
"Unsure" verdicts are left out, as if the object had not been asked. Each verdict given in the
useful order records the design (its id, seed, threshold and allocation) and the object's
band, band size and draw, so the estimate can be rebuilt from the verdicts table and the
candidate table alone.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scanstream import __version__
from scanstream.candidates.query import CandidateFilter
from scanstream.candidates.table import read_candidates, read_metadata
from scanstream.errors import InputError, VerdictError
from scanstream.metrics import check_target
from scanstream.review.posterior import (
    BAND_SD,
    CalibrationPosterior,
    SheetSample,
    draws_at,
    fit_calibration,
    predictive_draws,
    recall_cut_rank,
)
from scanstream.threshold import DEFAULT_PREVALENCES, RECORD_VERSION, precision_projection
from scanstream.verdicts import latest, read_records

ORDERS = ("score", "useful")
#: Band edges below the selection, in multiples of its size ``k`` (module docstring).
BELOW_EDGES = (2, 4, 16)
#: Objects each band gives to a round of the useful order, top band first (module docstring);
#: bands past the tuple give 1.
ALLOCATION = (2, 2, 2, 2, 1, 1)
DEFAULT_REPLICATES = 2000


@dataclass(frozen=True)
class ReviewDesign:
    """The useful order of one sheet: score bands, their permutations, the interleaving.

    Attributes
    ----------
    sheet : str
    threshold : float
        The logit cut the bands are built around.
    seed : int
    object_ids : ndarray, str (n,)
        The sheet's objects in rank order (score descending, ties by object id).
    scores : ndarray, float64 (n,)
        Their scores (logits), same order.
    band : ndarray, int (n,)
        Band of each ranked object (0 = the top of the selection).
    draw : ndarray, int (n,)
        Position of each ranked object in its band's permutation.
    edges : tuple of int
        Rank edges of the bands (``len(edges) == bands + 1``).
    order : ndarray, int (n,)
        The review order: indices into the ranked arrays.
    source : ndarray, int (n,)
        Position of each ranked object in the arrays the design was built from.
    design_id : str
        Digest of the parameters and the ranked ids: a verdict names the design it was asked in.
    allocation : tuple of int
        Objects each band gives to a round of the order (one per band).
    """

    sheet: str
    threshold: float
    seed: int
    object_ids: np.ndarray
    scores: np.ndarray
    band: np.ndarray
    draw: np.ndarray
    edges: tuple[int, ...]
    order: np.ndarray
    source: np.ndarray
    design_id: str
    allocation: tuple[int, ...] = ()

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(np.asarray(self.edges))

    def describe(self) -> list[dict[str, Any]]:
        """The bands in words: rank range, score range, size."""
        out = []
        for h, (a, b) in enumerate(itertools.pairwise(self.edges)):
            out.append({"band": h, "ranks": [a + 1, b], "score_range": [float(self.scores[b - 1]), float(self.scores[a])],
                        "size": b - a})
        return out

    def verdict_fields(self, position: int) -> dict[str, Any]:
        """What a verdict on the ``position``-th object of the order records about the design."""
        r = int(self.order[position])
        h = int(self.band[r])
        return {"order": "useful", "design": self.design_id, "design_seed": self.seed,
                "design_threshold": self.threshold, "band": h, "band_size": int(self.sizes[h]),
                "band_draw": int(self.draw[r]), "order_position": int(position),
                "design_allocation": list(self.allocation)}


def band_edges(n: int, selected: int) -> tuple[int, ...]:
    """Rank edges of the bands for ``n`` objects of which ``selected`` reach the threshold.

    Examples
    --------
    >>> band_edges(1000, 20)
    (0, 10, 20, 40, 80, 320, 1000)
    >>> band_edges(5, 5)
    (0, 3, 5)
    """
    if n < 1:
        raise InputError("a useful order needs at least one object")
    k = min(max(int(selected), 1), n)
    cuts = [0, math.ceil(k / 2), k] + [m * k for m in BELOW_EDGES] + [n]
    return tuple(sorted({min(c, n) for c in cuts}))


def band_allocation(bands: int, allocation: Sequence[int] | None = None) -> tuple[int, ...]:
    """Objects per round of each of ``bands`` bands: ``allocation`` (default :data:`ALLOCATION`), 1 past its end.

    Examples
    --------
    >>> band_allocation(6)
    (2, 2, 2, 2, 1, 1)
    >>> band_allocation(3, [1])
    (1, 1, 1)
    """
    given = ALLOCATION if allocation is None else tuple(allocation)
    if any(int(a) != a or a < 1 for a in given):
        raise InputError(f"band allocation must be whole numbers >= 1, got {list(given)}")
    return tuple(int(given[h]) if h < len(given) else 1 for h in range(bands))


def build_design(object_ids: Sequence[str] | np.ndarray, scores: Any, *, threshold: float, sheet: str = "",
                 seed: int = 0, allocation: Sequence[int] | None = None) -> ReviewDesign:
    """The useful order of one sheet's objects (module docstring); pure and deterministic.

    Parameters
    ----------
    object_ids : sequence of str (n,)
        Unique ids of the sheet's objects.
    scores : array-like, float (n,)
        Their logits.
    threshold : float
        The logit cut the bands are built around (the sheet's current threshold).
    sheet : str
        Sheet name (part of the seed of the permutations and of the design id).
    seed : int
        Seed of the permutations.
    allocation : sequence of int, optional
        Objects per round of each band (:func:`band_allocation`; default :data:`ALLOCATION`).
    """
    ids = np.asarray(object_ids, dtype=str)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if ids.shape != s.shape:
        raise InputError(f"sheet {sheet!r}: {ids.size} object ids but {s.size} scores")
    if not np.isfinite(s).all():
        raise InputError(f"sheet {sheet!r}: scores must be finite")
    if not math.isfinite(float(threshold)):
        raise InputError(f"sheet {sheet!r}: threshold must be a finite logit, got {threshold!r}")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if len(set(ids.tolist())) != ids.size:
        raise InputError(f"sheet {sheet!r}: object ids are not unique")
    rank = np.lexsort((ids, -s))
    ids, s = ids[rank], s[rank]
    edges = band_edges(s.size, int((s >= float(threshold)).sum()))
    rng = np.random.default_rng([int(seed), zlib.crc32(sheet.encode())])
    band = np.empty(s.size, np.int64)
    draw = np.empty(s.size, np.int64)
    alloc = band_allocation(len(edges) - 1, allocation)
    for h, (a, b) in enumerate(itertools.pairwise(edges)):
        band[a:b] = h
        draw[a:b] = rng.permutation(b - a)
    # round j holds draws [j * w_h, (j + 1) * w_h) of band h, bands top first, each band's draws in order
    order = np.lexsort((draw, band, draw // np.asarray(alloc)[band]))
    params: dict[str, Any] = {"sheet": sheet, "threshold": float(threshold), "seed": int(seed), "edges": edges}
    if any(a != 1 for a in alloc):  # equal allocation keeps the digest verdicts recorded before allocation existed
        params["allocation"] = alloc
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(params).encode())
    h.update("\n".join(ids.tolist()).encode())
    return ReviewDesign(sheet=sheet, threshold=float(threshold), seed=int(seed), object_ids=ids, scores=s, band=band,
                        draw=draw, edges=edges, order=order, source=rank, design_id=h.hexdigest(), allocation=alloc)


# -- the candidate table's side ---------------------------------------------------------------
def check_useful(filters: CandidateFilter) -> str | None:
    """The sheet of a useful order; refuse the filters it cannot take (it samples whole sheets)."""
    extra = [name for name, on in (("--selected", filters.selected), ("--min-score", filters.min_score is not None),
                                   ("--region", filters.region is not None)) if on]
    if extra:
        raise InputError(f"the useful order samples whole sheets; {', '.join(extra)} cannot be combined with it "
                         "(use --sheet and --top)")
    return filters.sheet


def table_threshold(candidates: str | os.PathLike) -> float | None:
    """The logit cut the candidate table was classified with (None without a threshold record)."""
    record = read_metadata(candidates).get("threshold") or {}
    t = record.get("threshold")
    return None if t is None else float(t)


def sheet_designs(table: pa.Table, *, threshold: float, seed: int = 0, sheet: str | None = None,
                  allocation: Sequence[int] | None = None) -> list[tuple[ReviewDesign, np.ndarray]]:
    """One design per sheet of candidate rows (``object_id``, ``sheet``, ``score``), sheets by name.

    Each with the table rows of the design's ranked objects (int (n,)).
    """
    sheets = np.asarray(table.column("sheet").fill_null("").to_pylist(), dtype=object)
    names = sorted(set(sheets.tolist())) if sheet is None else [sheet]
    ids = np.asarray(table.column("object_id").to_pylist(), dtype=object)
    scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    out = []
    for name in names:
        keep = sheets == name
        if not keep.any():
            raise InputError(f"no candidates of sheet {name!r}")
        design = build_design(ids[keep].astype(str), scores[keep], threshold=threshold, sheet=name, seed=seed,
                              allocation=allocation)
        out.append((design, np.nonzero(keep)[0][design.source]))
    return out


def useful_rows(candidates: str | os.PathLike, *, sheet: str | None = None, top: int | None = None, seed: int = 0,
                threshold: float | None = None) -> tuple[pa.Table, list[dict[str, Any]], int]:
    """The first ``top`` candidates of the useful order, their design fields, and the rows it spans.

    Several sheets are interleaved (each sheet's order advances one step per round). The order
    covers every row of a sheet, so it needs a complete table.

    Returns
    -------
    rows : pyarrow.Table
        Candidate rows in review order.
    fields : list of dict
        Per row, what its verdict records about the design (:meth:`ReviewDesign.verdict_fields`).
    total : int
        Rows the order spans (every row of the sheets).
    """
    table = read_candidates(candidates)  # checks the table complete first
    t = table_threshold(candidates) if threshold is None else float(threshold)
    if t is None:
        raise InputError(f"{candidates}: the useful order needs a threshold and the table has none "
                         "(classify with --threshold, or give one)")
    designs = sheet_designs(table, threshold=t, seed=seed, sheet=sheet)
    # no sheet gives more than ``top`` rows to the first ``top`` of the interleaved order
    keys = sorted((p + k / len(designs), k, p) for k, (d, _) in enumerate(designs)
                  for p in range(min(d.order.size, top or d.order.size)))[:top]
    take = [int(designs[k][1][designs[k][0].order[p]]) for _, k, p in keys]
    rows = table.take(pa.array(take, pa.int64()))
    fields = [designs[k][0].verdict_fields(p) for _, k, p in keys]
    return rows, fields, sum(d.order.size for d, _ in designs)


# -- verdicts asked in a design -----------------------------------------------------------------
@dataclass(frozen=True)
class JudgedSample:
    """The alpha / not-alpha verdicts given to objects a design asked for.

    Attributes
    ----------
    design : ReviewDesign
    index : ndarray, int (m,)
        Ranked index (into the design's arrays) of each judged object.
    labels : ndarray, int8 (m,)
        1 alpha, 0 not alpha (the latest verdict of the object).
    unsure : int
        Objects asked whose latest verdict is "unsure" (left out).
    """

    design: ReviewDesign
    index: np.ndarray
    labels: np.ndarray
    unsure: int = 0

    @property
    def judged(self) -> np.ndarray:
        """Verdicts per band, int (bands,)."""
        return np.bincount(self.design.band[self.index], minlength=len(self.design.edges) - 1)

    def weights(self) -> np.ndarray:
        """``N_h / n_h`` of each judged object: how many of the sheet's objects it stands for.

        Raises
        ------
        VerdictError
            A band without a verdict: nothing is known about its objects.
        """
        n = self.judged
        for h in np.nonzero(n == 0)[0]:
            a, b = self.design.edges[h], self.design.edges[h + 1]
            raise VerdictError(f"sheet {self.design.sheet!r}: score band {h} (ranks {a + 1}-{b}) has no alpha / "
                               "not-alpha verdict yet; review further in the useful order")
        return (self.design.sizes / n)[self.design.band[self.index]]


def asked_until(design: ReviewDesign, labels_ranked: Any, alpha_verdicts: int) -> np.ndarray:
    """Ranked indices a reviewer judges, in the useful order, until ``alpha_verdicts`` alpha decays
    (all of the order when the sheet holds fewer); ``labels_ranked`` in the design's rank order."""
    seen = np.cumsum(np.asarray(labels_ranked)[design.order] == 1)
    stop = int(np.searchsorted(seen, alpha_verdicts)) + 1  # the position of the last alpha asked for
    return design.order[: min(stop, design.order.size)]


def judged_sample(design: ReviewDesign, records: Sequence[Mapping[str, Any]]) -> JudgedSample:
    """The verdicts (unmerged ``records`` of a verdicts table) on objects ``design`` asked for.

    An object counts when some verdict on it names the design; its label is its latest verdict
    in any order (a reviewer may correct one later).
    """
    asked = {str(r["object_id"]) for r in records if r.get("design") == design.design_id}
    if not asked:
        raise VerdictError(f"sheet {design.sheet!r}: no verdict was given in this useful order (design "
                           f"{design.design_id}); review with --order useful first")
    verdict = {str(r["object_id"]): r["verdict"] for r in latest(records) if str(r["object_id"]) in asked}
    index, labels, unsure = [], [], 0
    for i, oid in enumerate(design.object_ids.tolist()):
        v = verdict.get(oid)
        if v == "unsure":
            unsure += 1
        elif v is not None:
            index.append(i)
            labels.append(1 if v == "alpha" else 0)
    return JudgedSample(design, np.asarray(index, np.int64), np.asarray(labels, np.int8), unsure)


# -- Horvitz-Thompson estimates (pure) -------------------------------------------------------------
def weighted_recall(labels: Any, weights: Any, scores: Any, threshold: float) -> float:
    """Estimated recall of ``score >= threshold``: weighted alpha decays above it over all of them.

    Examples
    --------
    >>> weighted_recall([1, 1, 0, 1], [1.0, 3.0, 2.0, 4.0], [3.0, 2.0, 1.5, 0.0], 1.0)
    0.5
    """
    total, above, _ = _totals(np.asarray(labels) == 1, np.asarray(weights, np.float64), np.asarray(scores, np.float64),
                              threshold)
    if total <= 0:
        raise VerdictError("no alpha verdict: recall cannot be estimated")
    return above / total


def weighted_recall_cut(labels: Any, weights: Any, scores: Any, target: float) -> float:
    """The highest threshold whose estimated recall reaches ``target``: the score of an alpha verdict.

    Examples
    --------
    >>> weighted_recall_cut([1, 1, 0, 1], [1.0, 3.0, 2.0, 4.0], [3.0, 2.0, 1.5, 0.0], 0.5)
    2.0
    """
    target = check_target(target, "recall")
    y = np.asarray(labels) == 1
    w, s = np.asarray(weights, np.float64)[y], np.asarray(scores, np.float64)[y]
    if w.sum() <= 0:
        raise VerdictError("no alpha verdict: a threshold cannot be calibrated")
    order = np.argsort(-s, kind="stable")
    reached = np.cumsum(w[order]) >= target * w.sum() * (1 - 1e-12)
    return float(s[order][np.argmax(reached)])


def _totals(y: np.ndarray, w: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float, float]:
    """Weighted alpha decays in all, alpha decays above ``t``, others above ``t``."""
    above = s >= t
    return float(w[y].sum()), float(w[y & above].sum()), float(w[~y & above].sum())


def _interval(values: np.ndarray, level: float) -> list[float | None]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return [None, None]
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def sheet_sample(sample: JudgedSample, scores: np.ndarray) -> SheetSample:
    """The judged objects as a :class:`SheetSample` ranked by ``scores`` (float (n,), the design's rank order)."""
    order = np.argsort(-scores, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    at = position[sample.index]
    keep = np.argsort(at)
    return SheetSample(scores[order], sample.design.band[order], at[keep], np.asarray(sample.labels)[keep])


def posterior_draws(sample: JudgedSample, scores: np.ndarray, target: float, *, thresholds: Sequence[float] = (),
                    replicates: int = DEFAULT_REPLICATES, seed: int = 0, band_sd: float = BAND_SD,
                    assurance: float | None = None) -> tuple[float, dict[str, np.ndarray], CalibrationPosterior]:
    """The cut at ``target`` recall and the posterior draws (:mod:`scanstream.review.posterior`) at it.

    ``scores``: float (n,), the sheet's logits in the design's rank order. Returns the cut
    (logit), the draws of :func:`~scanstream.review.posterior.draws_at` at the cut followed by
    ``thresholds``, and the calibration posterior.
    """
    sheet = sheet_sample(sample, scores)
    post = fit_calibration(scores[sample.index], sample.labels, sample.design.band[sample.index],
                           bands=len(sample.design.edges) - 1, center=sample.design.threshold, band_sd=band_sd)
    rank = recall_cut_rank(sheet, predictive_draws(sheet, post, replicates=replicates, seed=seed), target,
                           assurance=assurance)
    t = float(sheet.scores[rank])
    draws = draws_at(sheet, predictive_draws(sheet, post, replicates=replicates, seed=seed), [t, *thresholds], target)
    return t, draws, post


def _weighting(sample: JudgedSample, post: CalibrationPosterior, band_sd: float) -> dict[str, Any]:
    """The record's account of the design, its bands and the fitted model."""
    judged, y, d = sample.judged, sample.labels, sample.design
    bands = [{**b, "judged": int(judged[b["band"]]), "alpha": int(y[d.band[sample.index] == b["band"]].sum()),
              "inclusion_probability": judged[b["band"]] / b["size"]} for b in d.describe()]
    return {"method": "model-based prediction: logistic recalibration with score-band intercepts",
            "design": "stratified random sample over score bands (scanstream.review.adapt)", "design_id": d.design_id,
            "design_seed": d.seed, "design_threshold": d.threshold, "allocation": list(d.allocation),
            "objects": int(d.scores.size), "bands": bands, "model": {**post.summary(), "band_sd": band_sd}}


def record_from_verdicts(sample: JudgedSample, *, target_recall: float, model_hashes: Sequence[str],
                         calibration: Mapping[str, Any], scores: Any = None,
                         prevalences: Sequence[str] = DEFAULT_PREVALENCES, level: float = 0.95,
                         replicates: int = DEFAULT_REPLICATES, seed: int = 0, band_sd: float = BAND_SD,
                         assurance: float | None = None, score_precision: str | None = None) -> dict[str, Any]:
    """A threshold record (:mod:`scanstream.threshold`'s format) calibrated on verdicts.

    Parameters
    ----------
    sample : JudgedSample
        The verdicts asked in the sheet's useful order (every band judged at least once).
    target_recall : float
        Recall to reach on the sheet, in (0, 1].
    model_hashes : sequence of str
        The models whose scores these are.
    calibration : mapping
        Where the verdicts come from (``calibration_store``).
    scores : array-like, float (n,), optional
        The sheet's scores in the design's rank order by the models of ``model_hashes``
        (default: the design's own scores). The model conditions on the bands, which alone
        decide what was asked, so another model's scores of the same objects are estimated too.
    level, replicates, seed, band_sd
        Interval level, posterior predictive draws, their seed, the band intercepts' prior sd.
    assurance
        None (default): the cut is the highest whose posterior mean recall reaches the target,
        as a VALID threshold is cut where its measured recall does, so the two records read
        alike. A probability, e.g. 0.9: the highest cut whose recall reaches the target with
        that posterior probability (more selected, the target met more often).

    The record's ``achieved`` figures are posterior means for the whole sheet (``estimated:
    true``; ``selected`` is counted exactly), with equal-tailed intervals; ``threshold_ci`` is
    the interval of the cut itself, ``previous`` the recall the design's own threshold delivers,
    and ``design_based`` the Horvitz-Thompson recall at the cut, a check that uses no model.
    """
    if not (0.0 < level < 1.0):
        raise InputError(f"confidence level must be in (0, 1), got {level!r}")
    if assurance is not None and not (0.0 < assurance < 1.0):
        raise InputError(f"assurance must be in (0, 1), got {assurance!r}")
    target = check_target(target_recall, "recall")
    s = sample.design.scores if scores is None else np.asarray(scores, np.float64).ravel()
    if s.shape != sample.design.scores.shape:
        raise InputError(f"sheet {sample.design.sheet!r}: {s.size} scores for {sample.design.scores.size} objects")
    y, w, sj = sample.labels, sample.weights(), s[sample.index]
    t_old = sample.design.threshold
    t, d, post = posterior_draws(sample, s, target, thresholds=[t_old], replicates=replicates, seed=seed,
                                 band_sd=band_sd, assurance=assurance)
    n, selected = s.size, int((s >= t).sum())
    alpha, tp = d["alpha"].astype(np.float64), d["above"][:, 0].astype(np.float64)
    fp = selected - tp
    recall, precision, fpr = tp / alpha, tp / selected if selected else np.full_like(tp, np.nan), fp / (n - alpha)
    r_ci, p_ci, f_ci = (_interval(v, level) for v in (recall, precision, fpr))
    projection = precision_projection(float(recall.mean()), float(fpr.mean()), r_ci, f_ci, prevalences)
    old = d["above"][:, 1] / alpha
    return {
        "scanstream_threshold": RECORD_VERSION,
        "threshold": t,
        "target": {"kind": "recall", "value": target},
        "achieved": {"recall": float(recall.mean()), "recall_ci": r_ci,
                     "precision": float(np.nanmean(precision)) if selected else None, "precision_ci": p_ci,
                     "false_positive_rate": float(fpr.mean()), "false_positive_rate_ci": f_ci, "selected": selected,
                     "true_positives": float(tp.mean()), "false_positives": float(fp.mean()),
                     "alpha": float(alpha.mean()), "alpha_ci": _interval(alpha, level), "estimated": True},
        "threshold_ci": _interval(d["cut"], level),
        "cut_rule": "posterior mean recall reaches the target" if assurance is None else
                    f"recall reaches the target with posterior probability {assurance}",
        "ci": {"method": "posterior predictive, equal-tailed (scanstream.review.posterior)", "level": level,
               "replicates": int(replicates), "seed": seed},
        "calibration_store": {**calibration, "alpha": int((y == 1).sum()), "other": int((y == 0).sum()),
                              "unsure": sample.unsure},
        "weighting": _weighting(sample, post, band_sd),
        "design_based": {"method": "horvitz-thompson", "recall": weighted_recall(y, w, sj, t)},
        "previous": {"threshold": t_old, "recall": float(old.mean()), "recall_ci": _interval(old, level),
                     "selected": int((s >= t_old).sum())},
        "model_hashes": sorted(model_hashes),
        "score_precision": score_precision,
        "prevalence_projection": projection,
        "version": __version__,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _design_of(records: Sequence[Mapping[str, Any]], sheet: str | None, design: str | None,
               source: str) -> tuple[str, str, int, float, tuple[int, ...]]:
    """(sheet, design id, seed, threshold, allocation) of the useful-order verdicts to calibrate on.

    Verdicts recorded before the allocation was (no ``design_allocation``) were asked with
    one object per band and round.
    """
    found: dict[str, tuple[str, int, float, int, tuple[int, ...]]] = {}
    for r in records:
        if r.get("order") == "useful" and r.get("design") and (sheet is None or str(r.get("sheet")) == sheet):
            d = found.get(r["design"])
            found[r["design"]] = (str(r.get("sheet")), int(r["design_seed"]), float(r["design_threshold"]),
                                  (d[3] if d else 0) + 1, tuple(r.get("design_allocation") or (1,)))
    if design is not None:
        found = {k: v for k, v in found.items() if k == design}
    where = f" of sheet {sheet!r}" if sheet is not None else ""
    if not found:
        raise VerdictError(f"{source}: no verdict{where} was given in the useful order"
                           + (f" of design {design}" if design else "") + " (scanstream review --order useful)")
    if len(found) > 1:
        listed = ", ".join(f"{k} (sheet {v[0]!r}, {v[3]} verdicts)" for k, v in sorted(found.items()))
        raise VerdictError(f"{source}: verdicts{where} from several useful orders: {listed}; choose one with "
                           + ("--design" if sheet is not None else "--sheet or --design"))
    (did, (sh, seed, t, _, alloc)), = found.items()
    return sh, did, seed, t, alloc


def threshold_from_verdicts(candidates: str | os.PathLike, verdicts: str | os.PathLike, *, target_recall: float,
                            sheet: str | None = None, design: str | None = None, **options: Any) -> dict[str, Any]:
    """The sheet's threshold record, recalibrated from the verdicts of its useful order.

    Rebuilds the design from the candidate table and the seed and threshold the verdicts
    record, checks that it is the one the verdicts were asked in (the table's scores are those
    the reviewer saw), and calls :func:`record_from_verdicts` (``options``: its keywords).

    Raises
    ------
    VerdictError
        No useful-order verdicts (of that sheet), several designs, a band without verdicts, or
        a table whose scores changed since the review.
    """
    table = read_candidates(candidates, columns=["object_id", "sheet", "score"])  # checks the table complete first
    records = read_records(verdicts)
    sh, did, seed, t, alloc = _design_of(records, sheet, design, str(verdicts))
    (built, _), = sheet_designs(table, threshold=t, seed=seed, sheet=sh, allocation=alloc)
    if built.design_id != did:
        raise VerdictError(f"{candidates}: sheet {sh!r} is not the table the verdicts of design {did} were given on "
                           f"(its scores or objects changed: design {built.design_id}); review it again")
    meta = read_metadata(candidates)
    calibration = {"kind": "verdicts", "path": str(Path(verdicts).resolve()),
                   "candidates": str(Path(candidates).resolve()), "run_id": meta.get("run_id"), "sheet": sh}
    score_precision = meta.get("score_precision") or (meta.get("threshold") or {}).get("score_precision")
    return record_from_verdicts(judged_sample(built, records), target_recall=target_recall,
                                model_hashes=meta.get("model_hashes") or [], calibration=calibration,
                                score_precision=score_precision, **options)
