"""Where a group of candidates' vertex is (criterion 6 of :mod:`scanstream.picker.detect`).

Candidates within ``merge_um`` of a better one are one vertex (criterion 6). Their refined
positions scatter around the star's point: some land on it, others 2-4 um off along a steep
prong or towards a crossing track, all fitted from the same few voxels near the point. The
median of the members is the vertex where nothing better is known; on issue 27's tuning fields
it was 2-3.3 um off in x, y (or a plane in depth) for 8 of the 23 missed alpha decays, where a
member's own position was within 2 um (docs/pick.md, "Efficiency").

What tells which member is on the point is where the star's tracks cross, seen without any
vertex: the prongs, followed from the median (criterion 7), are fitted again from 6 um out
(:func:`scanstream.picker.prongs.free_lines`) and crossed
(:func:`scanstream.picker.stars.crossing`, as criterion 8 crosses a star's vertices' lines).
The member nearest that crossing (in x, y and depth, :data:`scanstream.picker.stars.DEPTH_WEIGHT`)
is the vertex where it lies within ``group_cross_um`` of the crossing and
:data:`GAIN_UM` nearer it than the median, in groups with a steep prong (:data:`STEEP_RATIO`);
otherwise the median stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanstream.picker.prongs import prong_lines
from scanstream.picker.stars import DEPTH_WEIGHT, crossing, same_tracks_once

#: A member replaces the median only where it is this much nearer the crossing (um, x, y and
#: depth weighted as :data:`scanstream.picker.stars.DEPTH_WEIGHT`): members a few tenths nearer
#: also moved vertices of non-decays (dust beside a track, a two-vertex event) off their object;
#: on the tuning seeds, without the steep-prong condition, no margin gave 6 decays and 5 fake
#: vertices more, 0.5 um 6 and 3 (docs/pick.md, "Efficiency").
GAIN_UM = 0.5
#: Only a group with a steep prong is looked at: one whose shell voxels lie on average more than
#: this many times deeper or shallower (developed um) than they are far in the plate plane from
#: the median (about 54 degrees undeveloped at a shrinkage of 1.95). Its members scatter along
#: the steep prong; elsewhere the median is kept (a displaced radon's lines cross at two points,
#: the free lines' crossing may be its origin, and the vertex is the radon's point). On the
#: tuning seeds 1.0 found 196 decays, 0.7 and 0.5 198, no condition 199 (docs/pick.md).
STEEP_RATIO = 0.7


def _steep(arms, at: np.ndarray) -> bool:
    """Whether a prong of ``arms`` (criterion 4's tuples, voxels last, field um) is steep seen from ``at``."""
    for *_, pts in arms:
        off = pts.mean(0) - at
        if abs(off[2]) > STEEP_RATIO * float(np.hypot(off[0], off[1])):
            return True
    return False


def _distance(points: np.ndarray, x: np.ndarray) -> np.ndarray:
    d = points - x
    return np.hypot(np.hypot(d[:, 0], d[:, 1]), d[:, 2] * DEPTH_WEIGHT)


def group_point(members: Sequence[np.ndarray], near: np.ndarray, arms, params, shrinkage: float) -> tuple[np.ndarray, tuple]:
    """The vertex (um: x, y, developed depth) of a group whose members' refined positions are
    ``members`` (the best candidate's first), and :func:`scanstream.picker.prongs.prong_lines` of
    its prongs ``arms`` from there (lengths, directions, line misses, free lines).

    ``near``: the segment's sharp voxels (n, 3) um; ``params``: a
    :class:`scanstream.picker.detect.DetectParams` (``group_cross_um``: 0 keeps the median).

    Examples
    --------
    >>> from scanstream.picker.detect import DetectParams
    >>> at, (lengths, *_ ) = group_point([np.array([1.0, 2.0, 3.0])], np.zeros((0, 3)), [], DetectParams(), 2.0)
    >>> at.tolist(), lengths
    ([1.0, 2.0, 3.0], ())
    """
    pts = np.array([np.asarray(m, float) for m in members]).reshape(-1, 3)
    at = np.median(pts, axis=0)
    fits = prong_lines(near, at, arms, params, shrinkage)
    distinct = np.unique(pts, axis=0)
    if params.group_cross_um <= 0 or len(distinct) < 2 or not _steep(arms, at):
        return at, fits
    x = crossing(same_tracks_once(fits[3]), distinct[:, :2], within_um=params.r_inner)
    if x is None:
        return at, fits
    d = _distance(distinct, x)
    k = int(np.argmin(d))
    if d[k] > params.group_cross_um or _distance(at[None], x)[0] - d[k] < GAIN_UM:
        return at, fits
    return distinct[k], prong_lines(near, distinct[k], arms, params, shrinkage)
