"""Each star once (criterion 8 of :mod:`scanstream.picker.detect`): duplicate vertices of one star merged.

Candidates more than ``merge_um`` apart (criterion 6) can still be one star: a point 4-8 um out
on a prong sees the same prongs, and the star's own point two or three planes off (steep
prongs, a crossing track) is a second vertex. Before this rule 0.16-0.23 of the picked vertices
had another within 8 um (docs/pick.md, "Each star once").

Which of a star's vertices is on its point is not told by what each vertex measures of itself:
a prong's followed line is anchored at the vertex it starts from (criterion 7), so it passes
close to a vertex 4-7 um off the point as well. What does tell it is where the star's tracks
cross, seen without any vertex: every prong of every vertex of the group is fitted again from
its voxels 6 um and farther out (:func:`scanstream.picker.prongs.free_lines`), the same track
seen from two vertices counted once (:func:`same_tracks_once`), and the point most of these
lines pass through is found (:func:`crossing`). The vertex nearest that point is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanstream.picker.prongs import free_lines
from scanstream.picker.vertexfit import cross2, line_depth, line_miss, lsq

#: Two free lines are one track when their directions are within this angle (degrees) and
#: each passes within :data:`SAME_TRACK_UM` of the other's point: a prong seen from two vertices.
SAME_TRACK_DEG = 15.0
#: See :data:`SAME_TRACK_DEG` (um, plate plane): about two fine voxels.
SAME_TRACK_UM = 1.5
#: A free line passes through a crossing when it is within about this distance (um, plate
#: plane): a line fitted to a black track 15-40 um long is good to a few tenths of a um, a
#: vertex to about a voxel (1.1 um).
CROSSING_UM = 1.0
#: Two lines closer than this in angle (degrees) give no crossing point of their own: a small
#: error in either direction moves their crossing by micrometres.
MIN_CROSSING_DEG = 20.0
#: A free line passes through a crossing in depth when within about this distance (developed
#: um): a plane step. Lines that cross in the plate plane 10 um apart in depth are a track
#: passing above or below a star's prong, not the star.
CROSSING_DZ_UM = 3.0
#: A free line fitted to fewer voxels votes for a crossing in proportion (:func:`crossing`): a few
#: um of track (a stub, a prong's piece left between two others) give a line good to only a
#: degree or two, while a black track 15-40 um long gives 200-500 fine voxels beyond 6 um.
FULL_VOTE_VOXELS = 100
#: Weight of depth against x, y in choosing the vertex nearest a crossing: a plane step (3 um)
#: counts as :data:`CROSSING_UM`, as in :func:`crossing`'s score.
DEPTH_WEIGHT = CROSSING_UM / CROSSING_DZ_UM


def measured(v) -> tuple:
    """Sort key of a :class:`scanstream.picker.detect.Vertex`, best measured first: three or more
    reported prongs before fewer, then the smallest ``line_miss_um`` (its prongs' fitted lines
    pass closest to it). Used where a group's free lines cross nowhere (fewer than two, or all
    within :data:`MIN_CROSSING_DEG` of each other)."""
    return (-min(v.multiplicity, 3), v.line_miss_um)


def _support(x: np.ndarray, lines: Sequence[tuple]) -> float:
    """How many of ``lines`` pass through ``x`` (x, y, depth), softly: sum of w exp(-m^2 / 2) with m
    the miss in the plate plane in units of :data:`CROSSING_UM` and in depth in :data:`CROSSING_DZ_UM`,
    and w the line's voxels over :data:`FULL_VOTE_VOXELS`, at most 1."""
    return float(sum(min(ln[4] / FULL_VOTE_VOXELS, 1.0)
                     * np.exp(-0.5 * ((line_miss(x, ln) / CROSSING_UM) ** 2 + ((line_depth(x, ln) - x[2]) / CROSSING_DZ_UM) ** 2))
                     for ln in lines))


def same_tracks_once(lines: Sequence[tuple]) -> list[tuple]:
    """``lines`` (point xy, unit direction xy, depth, depth slope, voxels) with each track once:
    of lines within :data:`SAME_TRACK_DEG` and :data:`SAME_TRACK_UM` of each other, the one
    fitted to the most voxels. Kept lines come back in ``lines``' order.

    Examples
    --------
    >>> a = (np.array([0.0, 0.0]), np.array([1.0, 0.0]), 0.0, 0.0, 50)
    >>> b = (np.array([5.0, 0.3]), np.array([0.99, 0.14]), 0.0, 0.0, 80)  # the same track
    >>> c = (np.array([0.0, 0.0]), np.array([0.0, 1.0]), 0.0, 0.0, 20)
    >>> [ln[4] for ln in same_tracks_once([a, b, c])]
    [80, 20]
    """
    cos = np.cos(np.radians(SAME_TRACK_DEG))
    kept: list[int] = []
    for k in sorted(range(len(lines)), key=lambda k: -lines[k][4]):
        if not any(float(lines[k][1] @ lines[m][1]) >= cos and line_miss(lines[k][0], lines[m]) <= SAME_TRACK_UM
                   and line_miss(lines[m][0], lines[k]) <= SAME_TRACK_UM for m in kept):
            kept.append(k)
    return [lines[k] for k in sorted(kept)]


def crossing(lines: Sequence[tuple], near: np.ndarray, *, within_um: float) -> np.ndarray | None:
    """The point (x, y, developed depth) um that most of ``lines`` pass through, or None.

    Every two lines at least :data:`MIN_CROSSING_DEG` apart cross at a candidate point; those
    farther than ``within_um`` from every point of ``near`` (n, 2) (the group's vertices) are not
    looked at. Each is scored by the lines passing near it in x, y and depth (:func:`_support`), so
    the lines of a star's other prongs outvote those seen askew from a point beside it; the
    best is refined twice to the least-squares point of the lines within 1.5 :data:`CROSSING_UM`.
    Depth: the median of those lines' depths at it.

    Examples
    --------
    >>> star = [(np.array([0.0, 0.0]), np.array([np.cos(a), np.sin(a)]), 10.0, 0.1, 40) for a in (0.3, 2.4, 4.4)]
    >>> askew = (np.array([0.0, 3.0]), np.array([1.0, 0.0]), 10.0, 0.0, 30)  # a line seen from beside it
    >>> crossing([*star, askew], np.array([[0.5, 0.5], [4.0, 3.0]]), within_um=8.0).round(6).tolist()
    [0.0, 0.0, 10.0]
    """
    sin = np.sin(np.radians(MIN_CROSSING_DEG))
    best, score = None, -1.0
    for i, a in enumerate(lines):
        for b in lines[i + 1 :]:
            x = cross2(a, b, sin)
            if x is None:
                continue
            if np.hypot(*(near - x).T).min() > within_um:
                continue
            x = np.array([x[0], x[1], 0.5 * (line_depth(x, a) + line_depth(x, b))])
            s = _support(x, lines)
            if s > score:
                best, score = x, s
    for _ in range(2 if best is not None else 0):
        on = [ln for ln in lines if line_miss(best, ln) <= 1.5 * CROSSING_UM and abs(line_depth(best, ln) - best[2]) <= 1.5 * CROSSING_DZ_UM]
        x = lsq([ln[:2] for ln in on], min_det=1e-6) if len(on) >= 2 else None
        if x is None:  # no two lines meet there in depth as well
            return None
        if np.hypot(*(near - x).T).min() > within_um:  # drawn away by lines of another point
            break
        best = np.array([x[0], x[1], float(np.median([line_depth(x, ln) for ln in on]))])
    return best


def links(stars: Sequence[tuple], star_um: float, star_dz_um: float) -> np.ndarray:
    """bool (n, n): vertices of ``stars`` on the same segment within ``star_um`` in x, y and
    ``star_dz_um`` in depth of each other (each with itself; one array operation, as a field may
    hold hundreds of vertices).

    Examples
    --------
    >>> s = [(np.array([0.0, 0, 0]), 1), (np.array([6.0, 0, 0]), 1), (np.array([6.0, 0, 0]), 2), (np.array([0.0, 0, 13]), 1)]
    >>> links(s, 8.0, 12.0).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    at = np.array([t[0] for t in stars], float).reshape(-1, 3)
    lab = np.array([t[1] for t in stars])
    d = at[:, None, :] - at[None, :, :]
    return ((lab[:, None] == lab[None, :]) & (np.hypot(d[..., 0], d[..., 1]) <= star_um)
            & (np.abs(d[..., 2]) <= star_dz_um))


def _groups(link: np.ndarray) -> list[list[int]]:
    """Indices linked by ``link`` (:func:`links`), chained: the connected groups, each sorted."""
    seen = np.zeros(len(link), bool)
    out = []
    for i in range(len(link)):
        if seen[i]:
            continue
        group, todo = [], [i]
        seen[i] = True
        while todo:
            k = todo.pop()
            group.append(k)
            new = np.flatnonzero(link[k] & ~seen)
            seen[new] = True
            todo += new.tolist()
        out.append(sorted(group))
    return out


def one_per_star(stars: Sequence[tuple], params) -> list:
    """The vertices of ``stars`` left when each star is kept once (module docstring).

    ``stars`` are (position um (x, y, developed depth), segment label, Vertex, the segment's sharp
    voxels near it (n, 3) um, its prongs (criterion 4)[, their free lines, where the caller has
    them: :func:`scanstream.picker.prongs.prong_lines`]); ``params`` a
    :class:`scanstream.picker.detect.DetectParams` (``star_um``, ``star_dz_um`` and the prong
    following's). Vertices on the same segment within ``star_um`` in x, y and ``star_dz_um`` in
    depth of each other, chained, are a group. Of a group, the vertex nearest the :func:`crossing`
    of its prongs' free lines (in x, y and depth, :data:`DEPTH_WEIGHT`) is kept, the crossing
    looked for within ``r_inner`` (the shell's inner radius, 4 um) of the group's vertices: one
    farther from all of them is another point (a track crossing a prong, a second object), not
    where one of them should be. Every vertex linked to the kept one is dropped;
    what is left of the group is judged again. Where the lines cross nowhere, the best
    :func:`measured` is kept instead. Kept vertices come back in ``stars``' order; ``star_um`` 0
    keeps every vertex apart from exact repeats.
    """
    link = links(stars, params.star_um, params.star_dz_um)
    lines: dict[int, list] = {}
    kept: list[int] = []
    for group in _groups(link):
        while group:
            k = group[0]
            if len(group) > 1:
                for m in group:
                    if m not in lines:
                        at, _, _, near, arms, *given = stars[m]
                        lines[m] = given[0] if given else free_lines(near, at, arms, params)
                at = np.array([stars[m][0][:2] for m in group])
                x = crossing(same_tracks_once([ln for m in group for ln in lines[m]]), at, within_um=params.r_inner)
                if x is None:
                    k = min(group, key=lambda m: measured(stars[m][2]))
                else:
                    d = np.array([stars[m][0] for m in group]) - x
                    k = group[int(np.argmin(np.hypot(np.hypot(d[:, 0], d[:, 1]), d[:, 2] * DEPTH_WEIGHT)))]
            kept.append(k)
            group = [m for m in group if not link[k, m]]
    return [stars[k][2] for k in sorted(kept)]
