"""Where a candidate's prongs meet: the fitted lines and their intersection (criterion 6 of
:mod:`scanstream.picker.detect`).

Each prong's line is fitted to the sharp 2 x 2-pixel voxels of its segment along the prong's
direction; the vertex is the point closest (least squares) to the lines. Two refinements of the
plain least-squares point (docs/pick.md, "Efficiency"):

* **The point most lines meet.** The farthest line is dropped while more than three remain and
  it passes more than ``outlier_um`` from the point. Where that drops two lines or more, the
  lines may meet at two points: in a star whose radon atom moved before it decayed, the lines of
  the Rn-220 (Rn-222) and later alphas meet at the radon's point, those of the first alphas at
  the star's origin, and dropping one line at a time from the compromise point between the two
  can keep the wrong ones. Then the crossing of every pair of lines is tried too and the point
  that most lines pass near is kept: the radon's point, the vertex the simulator records
  (``make_alpha`` in :mod:`scanstream.simulate.objects`).
* **3-D lines.** Prongs close in azimuth give nearly parallel plate-plane lines, whose crossing
  along their common direction is ill-determined, and a steep prong's plate-plane direction is
  poor; the dips usually differ, so the lines fitted in 3-D (x, y and developed depth scaled by
  ``depth_weight``) still cross at one point. The plate-plane fit's voxels give the first 3-D
  lines; each line is then fitted again to the voxels in a 3-D tube (``tube_um``) about it, out
  from their crossing. Tried where the smallest eigenvalue of the plate-plane normal matrix, per
  line (at most 0.5; sin^2 of the angle between two lines, halved), is below ``line3d_below``,
  and used where that of the 3-D lines is ``line3d_gain`` times it or more.

* **Steep prongs.** A prong dipping more than about 70 degrees crosses the plate-plane tube
  in a few voxels (the depth-slope clip and ``tube_dz_um`` cut it): its line is its 3-D line,
  fitted to the voxels about its 3-D direction, projected (:func:`_steep_line`), and its
  depth-vs-distance fit, ill-posed for a nearly vertical prong, gives no depth while another
  prong does.

* **A second point: the displaced radon's origin** (:func:`second_point`). Where the radon atom
  moved 1.5-15 um before it decayed, the vertex is the radon's point (the point most lines meet,
  above) and the first alphas (Th-228 and Ra-224) start at the star's origin. Their tracks' lines,
  fitted without the vertex (:func:`scanstream.picker.prongs.free_lines`), miss the vertex and
  cross each other there. The origin is reported where at least two such lines, each fitted to
  ``ORIGIN_MIN_VOXELS`` voxels or more and passing more than ``origin_miss_um`` from the vertex,
  cross at ``ORIGIN_MIN_DEG`` or more in the plate plane and within ``ORIGIN_DZ_UM`` in depth,
  ``origin_min_um`` .. ``origin_max_um`` (undeveloped 3-D) from the vertex.

The parameters are :class:`scanstream.picker.detect.DetectParams`' (lengths in um).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

#: Two lines give a second point only where they cross at this angle (degrees) or more in the
#: plate plane: nearer parallel, an error of a tenth of a degree in either moves the crossing along them.
ORIGIN_MIN_DEG = 30.0
#: Fewest voxels a line through a second point is fitted to (a stub's few um of track give a
#: line good to only a degree or two; a black track 15-40 um long gives hundreds).
ORIGIN_MIN_VOXELS = 30
#: A line passes a second point when within this distance of it in the plate plane (um) ...
ORIGIN_ON_UM = 0.6
#: ... and within this much in depth (developed um: a plane step).
ORIGIN_DZ_UM = 3.0


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of y against x (``np.polyfit(x, y, 1)``, without its overhead).

    >>> line_fit(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 5.0]))
    (2.0, 1.0)
    """
    xm, ym = x.mean(), y.mean()
    dx = x - xm
    slope = float(dx @ (y - ym) / (dx @ dx))
    return slope, float(ym - slope * xm)


def lsq(lines, *, min_det: float = 0.0) -> np.ndarray | None:
    """The point closest (least squares) to lines given as (point, unit direction, ...), any
    dimension; None where they are parallel (the normal matrix singular, or its determinant
    ``min_det`` or less when that is given)."""
    dim = len(lines[0][0])
    a, b = np.zeros((dim, dim)), np.zeros(dim)
    for c, d, *_ in lines:
        proj = np.eye(dim) - np.outer(d, d)
        a += proj
        b += proj @ c
    if min_det > 0 and abs(np.linalg.det(a)) <= min_det:
        return None
    try:
        p = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return None
    return p if np.all(np.isfinite(p)) else None


def _dist(p: np.ndarray, line) -> float:
    """Distance (um) from ``p`` to a line (point, unit direction)."""
    q = p - line[0]
    return float(np.linalg.norm(q - (q @ line[1]) * line[1]))


def _drop_worst(lines, outlier_um: float) -> tuple[np.ndarray | None, list]:
    """The least-squares point, dropping the farthest line while more than three remain and it
    passes more than ``outlier_um`` away; (point, lines kept)."""
    lines = list(lines)
    while True:
        p = lsq(lines)
        if p is None:
            return None, lines
        dist = [_dist(p, ln) for ln in lines]
        worst = int(np.argmax(dist))
        if len(lines) <= 3 or dist[worst] <= outlier_um:
            return p, lines
        del lines[worst]


def _score(p: np.ndarray | None, lines, outlier_um: float) -> tuple[int, float]:
    """(lines within ``outlier_um`` of ``p``, minus their summed distance): larger is better."""
    if p is None:
        return (-1, 0.0)
    dist = np.array([_dist(p, ln) for ln in lines])
    return int((dist <= outlier_um).sum()), -float(dist[dist <= outlier_um].sum())


def intersect(lines, outlier_um: float) -> np.ndarray | None:
    """The point closest (least squares) to lines (point, unit direction) in 2-D or 3-D.

    The farthest line is dropped while more than three remain and it passes more than
    ``outlier_um`` from the point (a badly fitted prong). Where that drops two lines or more
    (two clusters: module docstring), the crossing of every pair of lines is tried too, and the
    lines within ``outlier_um`` of the best crossing (most such lines, then the smallest summed
    distance) give the point instead when they are more, or as many and closer. None when the
    lines are parallel.

    >>> lines = [(np.array([0.0, 0.0]), np.array([1.0, 0.0])), (np.array([0.0, 0.0]), np.array([0.0, 1.0])),
    ...          (np.array([1.0, 1.0]), np.array([0.6, 0.8]))]
    >>> np.round(intersect(lines, 1.0), 2).tolist()
    [0.08, -0.06]
    """
    lines = list(lines)
    p, kept = _drop_worst(lines, outlier_um)
    if p is None or len(lines) - len(kept) < 2:
        return p
    best, best_key = p, _score(p, lines, outlier_um)
    for i, j in combinations(range(len(lines)), 2):
        if abs(lines[i][1] @ lines[j][1]) >= 0.999:  # parallel: no crossing
            continue
        q = lsq([lines[i], lines[j]])
        near = [ln for ln in lines if q is not None and _dist(q, ln) <= outlier_um]
        if len(near) < 3:
            continue
        q = _drop_worst(near, outlier_um)[0]
        key = _score(q, lines, outlier_um)
        if key > best_key:
            best, best_key = q, key
    return best


def _spread(lines) -> float:
    """Smallest eigenvalue of the lines' normal matrix (2-D or 3-D), per line: 0 for parallel lines."""
    dim = len(lines[0][1])
    a = sum(np.eye(dim) - np.outer(d, d) for _, d in lines)
    return float(np.linalg.eigvalsh(a)[0]) / len(lines)


def _lines_3d(fits: list[np.ndarray], weight: float) -> list:
    """Each prong's principal axis in 3-D, depth scaled by ``weight`` (None-free: prongs of < 3 voxels left out)."""
    lines = []
    for pts in fits:
        if len(pts) < 3:
            continue
        q = pts * np.array([1.0, 1.0, weight])
        c = q.mean(0)
        lines.append((c, np.linalg.svd(q - c, full_matrices=False)[2][0]))
    return lines


def _tubes_3d(q: np.ndarray, p: np.ndarray, lines, params) -> list[np.ndarray]:
    """For each 3-D line, the points of ``q`` (depth scaled) within ``tube_um`` of it and
    ``fit_inner_um`` .. ``fit_outer_um`` along it from ``p``, on the side the line lies."""
    out = []
    for c, d in lines:
        d = d if (c - p) @ d >= 0 else -d
        t = (q - p) @ d
        off = np.linalg.norm(q - p - t[:, None] * d, axis=1)
        out.append(q[(t >= params.fit_inner_um) & (t <= params.fit_outer_um) & (off <= params.tube_um)])
    return out


def refine(arms, near: np.ndarray, start: np.ndarray, params, reach: float | None = None) -> np.ndarray | None:
    """The vertex (field um: x, y, developed depth) from the prongs' fitted lines.

    x, y: the point closest (least squares, :func:`intersect`) to every prong's line in the
    plate plane, each line the principal axis of the segment's sharp voxels (``near``, (n, 3)
    um) within ``tube_um`` of the prong's direction from ``fit_inner_um`` to ``fit_outer_um``
    from the current estimate, and within ``tube_dz_um`` in depth of the prong's own depth slope
    (tracks crossing above or below stay out); two rounds from ``start`` (the candidate). Depth:
    the median over prongs of each prong's linear depth-vs-distance fit at that point. Where the
    plate-plane lines are nearly parallel (module docstring) the same voxels' 3-D lines give x, y
    and depth. None where a fit is degenerate or lands farther than ``r_outer`` (``reach``)
    from the candidate.
    """
    reach = reach or params.r_outer
    p = start[:2].copy()
    # the fits reach fit_outer_um (and tube_um across) from a point within reach of the start
    near = near[np.hypot(near[:, 0] - p[0], near[:, 1] - p[1]) <= params.fit_outer_um + params.tube_um + reach]
    fits = []
    for _ in range(2):
        lines, fits, steeps = [], [], []
        q = near[:, :2] - p
        for *_, pts in arms:
            steep = _steep_line(pts, near, np.array([*p, start[2]]), params)
            if steep is not None:  # a steep prong: its 3-D line, projected
                lines.append(steep[0])
                fits.append(steep[1])
                steeps.append(len(fits) - 1)
                continue
            c0 = pts[:, :2].mean(0)
            u = (c0 - p) / max(np.linalg.norm(c0 - p), 1e-9)
            t = q @ u
            off = np.abs(q[:, 0] * u[1] - q[:, 1] * u[0])
            ta = (pts[:, :2] - p) @ u  # the prong's shell voxels: where it is, and its depth slope
            tc, zc = float(ta.mean()), float(pts[:, 2].mean())
            slope = float(np.clip(line_fit(ta, pts[:, 2])[0], -1.5, 1.5)) if np.ptp(ta) > 1.0 else 0.0
            on_depth = np.abs(near[:, 2] - (zc + slope * (t - tc))) <= params.tube_dz_um
            sel = (t >= params.fit_inner_um) & (t <= params.fit_outer_um) & (off <= params.tube_um) & on_depth
            if sel.sum() >= 3:
                xy = near[sel, :2]
                c = xy.mean(0)
                d = np.linalg.svd(xy - c, full_matrices=False)[2][0]
                fits.append(near[sel])
            else:
                c, d = c0, u
                fits.append(pts)
            lines.append((c, d))
        new = intersect(lines, params.outlier_um)
        if new is None or np.linalg.norm(new - start[:2]) > reach:
            return None
        p = new
    spread = _spread(lines)
    if params.line3d_below > 0 and spread < params.line3d_below:
        w = params.depth_weight
        lines3 = _lines_3d(fits, w)
        p3 = intersect(lines3, params.outlier_um) if len(lines3) >= 3 else None
        if p3 is not None:  # once more, each prong's voxels in a 3-D tube about its 3-D line
            lines3 = _lines_3d(_tubes_3d(near * np.array([1.0, 1.0, w]), p3, lines3, params), 1.0)
            p3 = intersect(lines3, params.outlier_um) if len(lines3) >= 3 else None
        # only where the 3-D lines cross at a wider angle than their plate-plane projections, and
        # near their crossing (the two disagree by more where a line is another track's)
        if (p3 is not None and np.linalg.norm(p3[:2] - start[:2]) <= reach and np.linalg.norm(p3[:2] - p) <= params.r_inner
                and _spread(lines3) > params.line3d_gain * spread):
            return np.array([p3[0], p3[1], float(np.clip(p3[2] / w, start[2] - params.r_outer, start[2] + params.r_outer))])
    z0 = []
    for k, pts in enumerate(fits):
        if k in steeps and len(steeps) < len(fits):  # a steep prong's depth-vs-distance is ill-posed
            continue
        r = np.hypot(pts[:, 0] - p[0], pts[:, 1] - p[1])
        if len(pts) >= 3 and np.ptp(r) > 1.0:
            z0.append(line_fit(r, pts[:, 2])[1])
        else:
            z0.append(pts[:, 2].mean())
    z = float(np.clip(np.median(z0), start[2] - params.r_outer, start[2] + params.r_outer))
    return np.array([p[0], p[1], z])


def _steep_line(pts: np.ndarray, near: np.ndarray, at: np.ndarray, params):
    """A steep prong's plate-plane line from its 3-D line, or None for a prong that is not steep.

    A prong whose shell voxels (``pts``, field um, developed depth) lie deeper or shallower than
    ``at`` by more than ``steep_ratio`` times their distance in the plate plane leaves too few
    voxels in the plate-plane tube, and its plate-plane direction is poor: its voxels among
    ``near`` within ``tube_um`` of the 3-D direction from ``at``, ``fit_inner_um`` ..
    ``fit_outer_um`` along it, are fitted in 3-D and the line projected onto the plate plane.
    Returns ((point, unit direction), the voxels fitted).
    """
    if params.steep_ratio <= 0:
        return None
    off = pts.mean(0) - at
    h = float(np.hypot(off[0], off[1]))
    if abs(off[2]) <= params.steep_ratio * h:
        return None
    u = off / np.linalg.norm(off)
    q = near - at
    t = q @ u
    across = np.linalg.norm(q - t[:, None] * u, axis=1)
    sel = near[(t >= params.fit_inner_um) & (t <= params.fit_outer_um) & (across <= params.tube_um)]
    if len(sel) < 3:
        return None
    c = sel.mean(0)
    d = np.linalg.svd(sel - c, full_matrices=False)[2][0]
    dxy = d[:2] if d[:2] @ off[:2] >= 0 else -d[:2]
    n = float(np.linalg.norm(dxy))
    if n < 1e-6:
        return None
    return (c[:2], dxy / n), sel


def line_miss(x: np.ndarray, line) -> float:
    """How far (um, plate plane) a line (point xy, unit direction xy, ...) passes from ``x``."""
    q = x[:2] - line[0]
    return float(abs(q[0] * line[1][1] - q[1] * line[1][0]))


def line_depth(x: np.ndarray, line) -> float:
    """A free line's developed depth (um) at its point nearest ``x`` (x, y)."""
    return float(line[2] + line[3] * float((x[:2] - line[0]) @ line[1]))


def cross2(a, b, min_sin: float) -> np.ndarray | None:
    """Where two lines (point xy, unit direction xy, ...) cross in the plate plane (x, y), or None
    where the sine of their angle is below ``min_sin``."""
    cross = a[1][0] * b[1][1] - a[1][1] * b[1][0]
    if abs(cross) < min_sin:
        return None
    q = b[0] - a[0]
    return a[0] + (q[0] * b[1][1] - q[1] * b[1][0]) / cross * a[1]


def _meet(lines, idx: list[int], keep, prefer=None) -> tuple[np.ndarray, list[int]] | None:
    """The point (x, y, developed depth) most of the free lines ``idx`` pass through (within
    :data:`ORIGIN_ON_UM` and :data:`ORIGIN_DZ_UM`; then the largest ``prefer(point)``, by default the
    smallest summed miss), among the
    crossings of two of them at :data:`ORIGIN_MIN_DEG` or more, at depths within :data:`ORIGIN_DZ_UM`,
    where ``keep(point)``; moved to those lines' least-squares point where that keeps them. (point,
    the lines through it) or None."""
    sin = np.sin(np.radians(ORIGIN_MIN_DEG))

    def through(x: np.ndarray) -> list[int]:
        return [k for k in idx if line_miss(x, lines[k]) <= ORIGIN_ON_UM and abs(line_depth(x, lines[k]) - x[2]) <= ORIGIN_DZ_UM]

    best, best_key = None, None
    for i, j in combinations(idx, 2):
        a, b = lines[i], lines[j]
        x = cross2(a, b, sin)
        if x is None:
            continue
        za, zb = line_depth(x, a), line_depth(x, b)
        x = np.array([x[0], x[1], 0.5 * (za + zb)])
        if abs(za - zb) > ORIGIN_DZ_UM or not keep(x):
            continue
        on = through(x)
        key = (len(on), prefer(x) if prefer else -sum(line_miss(x, lines[k]) for k in on))
        if best_key is None or key > best_key:
            best, best_key = x, key
    if best is None:
        return None
    on = through(best)
    p = lsq([lines[k][:2] for k in on])
    if p is not None:
        x = np.array([p[0], p[1], float(np.median([line_depth(p, lines[k]) for k in on]))])
        if keep(x) and set(on) <= set(through(x)):
            best, on = x, through(x)
    return best, on


def second_point(lines, at: np.ndarray, params, shrinkage: float) -> tuple[np.ndarray, np.ndarray, list[int], list[int]] | None:
    """The two points where a star's lines meet (module docstring): the radon's and a displaced radon's origin.

    ``lines`` are free lines (point (x, y) um, unit direction (x, y), developed depth at the point,
    depth per um along the direction, voxels fitted: :func:`scanstream.picker.prongs.free_lines`),
    ``at`` the vertex (x, y, developed depth) um, ``params`` a :class:`scanstream.picker.detect.DetectParams`
    (``origin_miss_um``, ``origin_min_um``, ``origin_max_um``: 0 looks for none; ``r_inner``) and
    ``shrinkage`` undeveloped / developed depth. Of the lines fitted to :data:`ORIGIN_MIN_VOXELS`
    voxels or more: the main point is the crossing most of them pass through within ``r_inner``
    (undeveloped 3-D) of ``at``, of those as many pass, the nearest ``at`` (:func:`_meet`; ``at``
    itself may be a compromise between the two points, and a line may pass both); the second point the crossing most of the others pass through, each passing more than
    ``origin_miss_um`` from the main point, ``origin_min_um`` .. ``origin_max_um`` from it and within
    :data:`ORIGIN_DZ_UM` of its depth. Two
    lines or more at each. Returns (main point, second point (x, y, developed depth) um, indices of
    the lines through the second, and of those through the main and not the second) or None.

    Examples
    --------
    >>> from scanstream.picker.detect import DetectParams
    >>> ray = lambda p, a, n=100: (np.array(p, float), np.array([np.cos(np.radians(a)), np.sin(np.radians(a))]), 10.0, 0.0, n)
    >>> lines = [ray((0, 0), a) for a in (10, 130, 250)] + [ray((4, 3), a) for a in (60, 170)]
    >>> on10 = DetectParams(origin_max_um=10.0)
    >>> main, p, on, on_main = second_point(lines, np.array([1.0, 0.5, 10.0]), on10, 2.0)
    >>> np.round(main, 3).tolist(), np.round(p, 3).tolist(), on, on_main
    ([0.0, 0.0, 10.0], [4.0, 3.0, 10.0], [3, 4], [0, 1, 2])
    >>> second_point(lines[:4], np.array([0.0, 0.0, 10.0]), on10, 2.0) is None  # one line: no second point
    True
    """
    if params.origin_max_um <= 0:
        return None

    def dist(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.hypot(np.hypot(x[0] - y[0], x[1] - y[1]), (x[2] - y[2]) * shrinkage))

    full = [k for k, ln in enumerate(lines) if ln[4] >= ORIGIN_MIN_VOXELS]
    main = _meet(lines, full, lambda x: dist(x, at) <= params.r_inner, lambda x: -dist(x, at))
    if main is None:
        return None
    p, on = main
    off = [k for k in full if k not in on and line_miss(p, lines[k]) > params.origin_miss_um]
    second = _meet(lines, off, lambda x: params.origin_min_um <= dist(x, p) <= params.origin_max_um
                   and abs(x[2] - p[2]) <= ORIGIN_DZ_UM)
    if second is None or len(second[1]) < 2:
        return None
    x = second[0]
    return p, x, second[1], [k for k in on if line_miss(x, lines[k]) > ORIGIN_ON_UM]
