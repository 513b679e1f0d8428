"""The simulated picker measured as the real picker is, and calibrated to the real picker's measured errors.

``benchmarks/picker_errors.py --table`` measures the detector of ``scanstream pick`` on simulated
volumes and writes its errors on alpha decays as a table (:func:`scanstream.physics.picker.error_table`).
:func:`simulated_errors` makes the same measures of the simulated picker
(:func:`scanstream.simulate.picker.pick_prong_directions`) on alpha-decay objects, with the same
matching (:func:`scanstream.picker.accuracy.match_prongs`, :func:`~scanstream.picker.accuracy.length_errors`),
so the two sit side by side; :func:`calibrate_picker` sets the
:class:`~scanstream.physics.picker.PickerModel` parameters the table informs so that the simulated
picker's measures come out as the table's (the rule: :func:`calibrate_picker`).

The reference objects (:func:`reference_alphas`) are thorium and uranium stars in the share the
simulator draws them (:data:`~scanstream.simulate.objects.TH_FRACTION`), over four sheets of
conditions drawn from the seed, each object with a picker stream of its own: a calibration is a
deterministic function of the table, the base model, the number of objects and the seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from os import PathLike
from typing import Any

import numpy as np

from scanstream.errors import InputError
from scanstream.physics.picker import DEFAULT_PICKER, GROUP_KEYS, PickerModel, read_error_table
from scanstream.picker import accuracy as acc
from scanstream.picker.cuts import DEFAULT_CONFIG, select
from scanstream.simulate.conditions import resolve_conditions
from scanstream.simulate.objects import TH_FRACTION, SimObject, make_object
from scanstream.simulate.picker import pick_prong_directions
from scanstream.simulate.volume import prongs_um

logger = logging.getLogger(__name__)

#: Alpha-decay objects a calibration measures the simulated picker on (about 2,500 true prongs).
REFERENCE_OBJECTS = 500
#: A true-length bin informs the length noise only with at least this many prongs, measured and simulated
#: (half its 16-84 % range is the spread: a bin of 20 long prongs, a few of them cut short, gave 8 um).
MIN_BIN_PRONGS = 50


def reference_alphas(n: int = REFERENCE_OBJECTS, *, seed: int = 0) -> list[tuple[SimObject, float]]:
    """``n`` alpha-decay objects and their sheet's shrinkage: the i-th of four sheets ``PCAL0``-``PCAL3``
    (conditions drawn from ``seed``) holds objects i, i + 4, ...; thorium with probability
    :data:`~scanstream.simulate.objects.TH_FRACTION`."""
    if n < 1:
        raise InputError(f"reference objects: need at least 1, got {n}")
    conds = [resolve_conditions(f"PCAL{j}", seed) for j in range(4)]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 27]))
    out = []
    for i in range(n):
        cond = conds[i % 4]
        category = "alpha_th" if rng.random() < TH_FRACTION else "alpha_u"
        out.append((make_object(category, rng, cond), float(cond.shrinkage)))
    return out


def _picker_stream(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1, i)))


def simulated_errors(model: PickerModel, objects: Sequence[tuple[SimObject, float]], *, seed: int = 0) -> dict:
    """The table's measures (:data:`~scanstream.physics.picker.GROUP_KEYS`) of the simulated picker on ``objects``.

    Every object's vertex is where the picker looks (the simulator has no vertex error), so the
    vertex offsets, fake vertices, efficiency and the cuts' kept fraction of the picked decays are
    null; the cuts' kept fraction of the found decays is over every object. True
    prongs are the object's stopping segments (:func:`scanstream.simulate.volume.prongs_um`, as
    the volumes' truth records them); measured ones are matched to them by direction as
    ``benchmarks/picker_errors.py`` matches the detector's.
    """
    tally, merr, mults, lengths_all = acc.ProngTally(), [], [], []
    for i, (obj, shrinkage) in enumerate(objects):
        mult, lengths, _, dirs = pick_prong_directions(obj, _picker_stream(seed, i), model)
        tl, az, dip = prongs_um(obj, shrinkage)
        up = dirs * np.array([1.0, 1.0, -1.0])  # picker x, y, depth -> stage x, y, up
        tally.add(up, lengths, acc.true_directions({"prong_azimuth_deg": az, "prong_dip_deg": dip}), tl)
        merr.append(mult - int(obj.truth["n_prongs"]))
        mults.append(mult)
        lengths_all.append(np.asarray(lengths, float))
    kept = select(np.array(mults, int), lengths_all, DEFAULT_CONFIG)[0] if mults else np.zeros(0, bool)
    out: dict[str, Any] = {k: None for k in GROUP_KEYS}
    out.update({
        "seeds": [int(seed)], "alpha_decays": len(objects),
        **tally.measures(),
        "multiplicity_measured_minus_true": {str(k): merr.count(k) for k in sorted(set(merr))},
        "cuts_kept_of_found_alpha": round(float(np.mean(kept)), 4) if len(kept) else None,
    })
    return out


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float, *, tol: float) -> float:
    """x in [lo, hi] where the increasing ``f`` crosses ``target`` (an end when it never does), to ``tol``."""
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return round(0.5 * (lo + hi), 4)


#: Extra prongs measured shorter than this (um) count as stubs; longer ones as prongs reported in a
#: wrong direction (an alpha prong is longer: the former method's length window starts here).
STUB_MAX_UM = 15.0
#: The range (low, high, tolerance) each count-setting parameter is searched in.
SPANS = {"merge_angle_deg": (0.0, 45.0, 0.2), "p_black": (0.05, 1.0, 0.004), "p_misdirect": (0.0, 0.5, 0.002),
         "p_split": (0.0, 0.5, 0.002), "stub_rate": (0.0, 1.0, 0.002)}


def extra_split(bins: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """Extra prongs per true prong (``extra_prongs_by_length``) shorter and longer than :data:`STUB_MAX_UM`.

    Examples
    --------
    >>> extra_split([{"length_um": [0.0, 15.0], "per_true_prong": 0.01}, {"length_um": [15.0, 40.0], "per_true_prong": 0.03}])
    (0.01, 0.03)
    """
    short = sum(b["per_true_prong"] for b in bins if b["length_um"][1] <= STUB_MAX_UM)
    return round(short, 5), round(sum(b["per_true_prong"] for b in bins) - short, 5)


def _count(errors: Mapping[str, Any], name: str) -> float:
    """The measure parameter ``name`` sets, signed to grow with it: merged, minus missed, split, long or short extra prongs."""
    p = errors["prongs"]
    if name == "merge_angle_deg":
        return p["merged_per_true_prong"]
    if name == "p_black":
        return -p["missed_per_true_prong"]
    if name == "p_split":
        return p["split_per_true_prong"]
    short, long = extra_split(errors["extra_prongs_by_length"])
    return long if name == "p_misdirect" else short


def _fit_count(model: PickerModel, name: str, target: Mapping[str, Any], objects: Sequence[tuple[SimObject, float]],
               seed: int) -> PickerModel:
    """``model`` with parameter ``name`` set (in :data:`SPANS`) so that the simulated picker's
    :func:`_count` of ``name`` is the measured errors ``target``'s."""
    lo, hi, tol = SPANS[name]
    x = _bisect(lambda v: _count(simulated_errors(replace(model, **{name: v}), objects, seed=seed), name),
                _count(target, name), lo, hi, tol=tol)
    return replace(model, **{name: x})


def _half_spread(b: Mapping[str, Any]) -> float:
    return 0.5 * (b["q16_q84_um"][1] - b["q16_q84_um"][0])


def fit_length_noise(measured: Sequence[Mapping[str, Any]], simulated: Sequence[Mapping[str, Any]],
                     current: PickerModel | None = None) -> dict | None:
    """``length_bias_um``, ``noise_abs_um`` and ``noise_rel`` from length-error bins (:func:`~scanstream.picker.accuracy.length_errors`).

    ``simulated`` are the simulated picker's bins with the model ``current`` (None: without noise
    or bias: its depth read off the focal planes, tracks cut at the tracking volume); bins with
    :data:`MIN_BIN_PRONGS` prongs or more in both count, weighted by their measured prongs. The
    bias is ``current``'s plus the mean excess of the measured median; the noise is the
    least-squares fit of ``s_meas^2 - s_sim^2 + s_current^2 = abs^2 + (rel * L)^2`` over the
    bins' centres L, with s half the 16-84 % range, s_current ``current``'s noise and both terms
    >= 0. None when no bin counts.

    Examples
    --------
    >>> def b(lo, med, s):
    ...     return {"true_um": [lo, lo + 10.0], "prongs": 100, "median_um": med, "q16_q84_um": [med - s, med + s]}
    >>> zero = [b(20.0, 0.0, 0.0), b(40.0, 0.0, 0.0)]
    >>> fit_length_noise([b(20.0, 0.5, (1 + 0.05**2 * 25**2) ** 0.5), b(40.0, 0.5, (1 + 0.05**2 * 45**2) ** 0.5)], zero)
    {'length_bias_um': 0.5, 'noise_abs_um': 1.0, 'noise_rel': 0.05}
    """
    bias0, abs0, rel0 = (0.0, 0.0, 0.0) if current is None else (current.length_bias_um, current.noise_abs_um, current.noise_rel)
    rows = []
    for m, r in zip(measured, simulated, strict=True):
        if m["prongs"] >= MIN_BIN_PRONGS and r["prongs"] >= MIN_BIN_PRONGS:
            lo, hi = m["true_um"]
            centre = 0.5 * (lo + hi)
            rows.append((centre, m["prongs"], m["median_um"] - r["median_um"],
                         _half_spread(m) ** 2 - _half_spread(r) ** 2 + abs0**2 + (rel0 * centre) ** 2))
    if not rows:
        return None
    length, w, dmed, y = (np.array(c, float) for c in zip(*rows, strict=True))
    bias = bias0 + float(np.average(dmed, weights=w))
    design = np.stack([np.ones_like(length), length**2], 1)
    sw = np.sqrt(w)[:, None]
    coef = np.linalg.lstsq(design * sw, y * sw[:, 0], rcond=None)[0] if len(rows) > 1 else np.array([y[0], 0.0])
    if coef[1] < 0.0 or coef[0] < 0.0:  # one term alone: the one that fits
        a_only = max(float(np.average(y, weights=w)), 0.0)
        r_only = max(float(np.sum(w * y * length**2) / np.sum(w * length**4)), 0.0)
        err_a = np.sum(w * (y - a_only) ** 2)
        err_r = np.sum(w * (y - r_only * length**2) ** 2)
        coef = np.array([a_only, 0.0]) if err_a <= err_r else np.array([0.0, r_only])
    return {"length_bias_um": round(bias, 3), "noise_abs_um": round(float(np.sqrt(coef[0])), 3),
            "noise_rel": round(float(np.sqrt(coef[1])), 4)}


def stub_lengths(measured: Sequence[Mapping[str, Any]], simulated: Sequence[Mapping[str, Any]],
                 min_length_um: float) -> tuple[float, float] | None:
    """The range of a uniform stub length whose 16 and 84 % points are those of the measured extra
    prongs in excess of the simulated ones (``extra_prongs_by_length`` bins, per true prong; the
    excess is linear within a bin); at least ``min_length_um``. None without an excess.

    Examples
    --------
    >>> bins = [[0.0, 5.0], [5.0, 10.0], [10.0, 40.0]]
    >>> m = [{"length_um": b, "per_true_prong": x} for b, x in zip(bins, (0.01, 0.03, 0.02))]
    >>> s = [{"length_um": b, "per_true_prong": x} for b, x in zip(bins, (0.0, 0.01, 0.02))]
    >>> stub_lengths(m, s, 2.5)
    (2.5, 10.31)
    """
    edges = [b["length_um"] for b in measured]
    excess = np.array([max(m["per_true_prong"] - s["per_true_prong"], 0.0) for m, s in zip(measured, simulated, strict=True)])
    if excess.sum() <= 0.0:
        return None
    cdf = np.concatenate([[0.0], np.cumsum(excess) / excess.sum()])
    x = np.array([edges[0][0]] + [hi for _, hi in edges])
    q16, q84 = np.interp([0.16, 0.84], cdf, x)
    width = max((q84 - q16) / 0.68, 0.5)
    lo = max(q16 - 0.16 * width, min_length_um)
    return round(float(lo), 2), round(float(max(q84 + 0.16 * width, lo + 0.5)), 2)


def picker_model(errors: str | PathLike | None, *, group: str = "tuning") -> PickerModel:
    """The simulated picker to measure features with: the default model without ``errors``, else
    the one calibrated to that measured error table's seed group (:func:`calibrate_picker`); what
    ``--picker-errors`` and ``--picker-group`` choose."""
    return DEFAULT_PICKER if errors is None else calibrate_picker(errors, group=group)


def calibrate_picker(table: str | PathLike | Mapping[str, Any], *, group: str = "tuning", base: PickerModel = DEFAULT_PICKER,
                     objects: Sequence[tuple[SimObject, float]] | None = None, seed: int = 0, rounds: int = 2) -> PickerModel:
    """``base`` with the parameters a measured error table informs set from its ``group``.

    The rule, each step on the reference objects (:func:`reference_alphas` unless ``objects``):

    1. ``merge_angle_deg`` (in 0-45 degrees) so that the simulated merged prongs per true prong
       are the table's, ``p_misdirect`` (0-0.5) so that the extra prongs of :data:`STUB_MAX_UM`
       or longer are (a prong reported in a wrong direction counts as missed and as extra),
       ``p_split`` (0-0.5) so that the split ones are, with ``split_length_um`` from the split
       prongs' lengths in excess of the simulated picker's (:func:`stub_lengths`), then
       ``p_black`` (0.05-1) so that the missed ones are; ``rounds`` times, since fewer prongs
       seen also merge, misdirect and split less;
    2. ``length_bias_um``, ``noise_abs_um`` and ``noise_rel`` from the length error by true
       length (:func:`fit_length_noise`, against the simulated picker without noise);
       then refitted twice against the simulated picker with that noise (the noise moves the
       median and widens the depth quantisation's spread);
    3. ``stub_rate`` (in 0-1) so that the extra prongs shorter than :data:`STUB_MAX_UM` per true
       prong are the table's, with ``stub_length_um`` from those measured in excess of the
       simulated picker's (:func:`stub_lengths`).

    A target the model cannot reach gives the end of the range nearest to it. ``p_black`` is the
    detection of alphas and slow protons alike: the table measures alpha prongs only. Left at
    ``base``'s values, because the table does not inform them: the detection of thin, grey,
    heavy and surface tracks, ``min_length_um`` (no alpha prong is short enough), the tracking
    volume (``attach_um``, ``z_window_um``, ``follow_um``, ``z_step_um``, ``shrinkage_nominal``)
    and the defocus factors. The table's vertex offsets and fake vertices have no counterpart in
    the model (the simulator's objects sit at their vertex).

    Raises
    ------
    InputError
        A bad table (:func:`~scanstream.physics.picker.read_error_table`), an unknown ``group``,
        or a group that measured no prongs.
    """
    doc = read_error_table(table)
    source = table if isinstance(table, (str, PathLike)) else "picker error table"
    if group not in doc["groups"]:
        raise InputError(f"{source}: no seed group {group!r} (it has {', '.join(doc['groups'])})")
    g = doc["groups"][group]
    prongs = g["prongs"]
    if not prongs["true"] or not g["extra_prongs_by_length"] or not g["split_prongs_by_length"]:
        raise InputError(f"{source}: groups.{group} measured no prongs (prongs.true is {prongs['true']})")
    objects = reference_alphas(seed=seed) if objects is None else objects
    model = replace(base, p_misdirect=0.0, p_split=0.0, stub_rate=0.0, length_bias_um=0.0)
    for _ in range(max(rounds, 1)):
        for name in ("merge_angle_deg", "p_misdirect", "p_split", "p_black"):
            if name == "p_split":
                seen = simulated_errors(replace(model, p_split=0.0), objects, seed=seed)["split_prongs_by_length"]
                span = stub_lengths(g["split_prongs_by_length"], seen, model.min_length_um)
                model = model if span is None else replace(model, split_length_um=span)
            model = _fit_count(model, name, g, objects, seed)
    quiet = replace(model, noise_rel=0.0, noise_abs_um=0.0)
    noise = fit_length_noise(g["length_error_by_true_length"],
                             simulated_errors(quiet, objects, seed=seed)["length_error_by_true_length"])
    if noise is None:
        logger.warning("%s: no length-error bin with %d prongs; the length noise stays the base model's", source, MIN_BIN_PRONGS)
    for _ in range(2 if noise is not None else 0):  # the noise moves the median and spreads the quantisation: refit
        model = replace(model, **noise)
        now = simulated_errors(model, objects, seed=seed)
        noise = fit_length_noise(g["length_error_by_true_length"], now["length_error_by_true_length"], model)
    if noise is not None:
        model = replace(model, **noise)
    seen = simulated_errors(model, objects, seed=seed)["extra_prongs_by_length"]
    short = [i for i, b in enumerate(seen) if b["length_um"][1] <= STUB_MAX_UM]
    span = stub_lengths([g["extra_prongs_by_length"][i] for i in short], [seen[i] for i in short], model.min_length_um)
    model = model if span is None else replace(model, stub_length_um=span)
    return _fit_count(model, "stub_rate", g, objects, seed)


def model_parameters(model: PickerModel) -> dict:
    """The parameters :func:`calibrate_picker` sets, as a JSON-ready dict."""
    keys = ("merge_angle_deg", "p_black", "p_misdirect", "p_split", "split_length_um", "length_bias_um", "noise_abs_um",
            "noise_rel", "stub_rate", "stub_length_um")
    return {k: list(getattr(model, k)) if isinstance(getattr(model, k), tuple) else getattr(model, k) for k in keys}
