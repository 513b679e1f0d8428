"""Revisit lists: the selected candidates of each plate ordered along a short stage path.

In the morning the microscope goes back to every selected vertex. The stage moves in x and y
(z is a short focus move), so the order that matters is a short open path through the
candidates' (x_mm, y_mm) positions. :func:`plan_path` builds one with the nearest-neighbour
heuristic followed by 2-opt improvement (segment reversals while any shortens the path); it
never returns a path longer than the order it was given.

The core functions are pure over numpy arrays; :func:`revisit_table` applies them per plate to
an Arrow table of candidates.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scanstream.errors import InputError

logger = logging.getLogger(__name__)

#: Columns of a revisit list, in order.
REVISIT_COLUMNS = ("sheet", "plate", "visit", "object_id", "x_mm", "y_mm", "z_mm", "step_mm")


def _as_points(xy: np.ndarray) -> np.ndarray:
    pts = np.asarray(xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"stage positions must be an (n, 2) array of x, y in mm, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        bad = int(np.flatnonzero(~np.isfinite(pts).all(axis=1))[0])
        raise InputError(f"stage position {bad} is not finite: {pts[bad].tolist()}")
    return pts


def path_length(xy: np.ndarray, order: Sequence[int] | np.ndarray | None = None) -> float:
    """Length in mm of the open path visiting ``xy`` in ``order``.

    Parameters
    ----------
    xy : ndarray, float (n, 2)
        Stage positions (x, y) in mm.
    order : sequence of int, optional
        A permutation of ``range(n)`` (default: the given order).

    Returns
    -------
    float
        Sum of the Euclidean steps between consecutive points (0 for n < 2).

    Examples
    --------
    >>> path_length(np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]]))
    9.0
    """
    pts = _as_points(xy)
    if order is not None:
        pts = pts[np.asarray(order, dtype=np.int64)]
    if len(pts) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


def nearest_neighbour_order(xy: np.ndarray, *, start: int = 0) -> np.ndarray:
    """Greedy open path: from ``start``, always step to the closest unvisited point.

    Parameters
    ----------
    xy : ndarray, float (n, 2)
        Stage positions in mm.
    start : int
        Index of the first point.

    Returns
    -------
    ndarray, int64 (n,)
        A permutation of ``range(n)`` beginning with ``start``.

    Notes
    -----
    The closest unvisited point is looked up among the 16 nearest points (KD tree); only when
    all of those are visited is the search made over every unvisited point, so typical inputs
    cost O(n log n) rather than O(n^2).
    """
    from scipy.spatial import cKDTree

    pts = _as_points(xy)
    n = len(pts)
    if n == 0:
        return np.zeros(0, np.int64)
    if not 0 <= start < n:
        raise InputError(f"start index {start} is outside 0..{n - 1}")
    k = min(16, n)
    near = cKDTree(pts).query(pts, k=k)[1].reshape(n, k)
    visited = np.zeros(n, bool)
    unvisited = np.arange(n)  # compacted lazily
    order = np.empty(n, np.int64)
    cur = start
    for step in range(n):
        order[step] = cur
        visited[cur] = True
        if step == n - 1:
            break
        nxt = -1
        for c in near[cur]:  # sorted by distance
            if not visited[c]:
                nxt = int(c)
                break
        if nxt < 0:
            unvisited = unvisited[~visited[unvisited]]
            d = np.einsum("ij,ij->i", pts[unvisited] - pts[cur], pts[unvisited] - pts[cur])
            nxt = int(unvisited[np.argmin(d)])
        cur = nxt
    return order


def two_opt(
    xy: np.ndarray, order: Sequence[int] | np.ndarray, *, neighbours: int = 12, max_passes: int = 50
) -> np.ndarray:
    """Improve an open path by 2-opt moves (reverse a segment while that shortens the path).

    A move removes the steps ``(p[x], p[x+1])`` and ``(p[y], p[y+1])`` and reverses
    ``p[x+1..y]``, adding ``(p[x], p[y])`` and ``(p[x+1], p[y+1])``; a missing neighbour at
    either end of the open path contributes no step. Moves are searched through neighbour
    lists: for every point ``a`` and each of its ``neighbours`` nearest points ``c``, the two
    moves that make ``a`` and ``c`` adjacent are tried and the first that gains is applied.
    A point is examined again only when a step next to it changed ("don't look" bits); the
    search ends when no point is left to examine (or after ``max_passes * n`` examinations).
    With ``neighbours >= n - 1`` the result is a true 2-opt optimum (no single reversal
    shortens it); it is never longer than ``order``.

    Parameters
    ----------
    xy : ndarray, float (n, 2)
        Stage positions in mm.
    order : sequence of int
        Starting permutation of ``range(n)``.
    neighbours : int
        Nearest points tried per point.
    max_passes : int
        Bounds the work at ``max_passes * n`` point examinations.

    Returns
    -------
    ndarray, int64 (n,)
        The improved permutation.
    """
    from scipy.spatial import cKDTree

    pts = _as_points(xy)
    path = np.asarray(order, dtype=np.int64).copy()
    n = len(path)
    if len(path) != len(pts) or (n and not np.array_equal(np.sort(path), np.arange(n))):
        raise InputError(f"order must be a permutation of 0..{len(pts) - 1}")
    if n < 3:
        return path
    _, nb = cKDTree(pts).query(pts, k=min(int(neighbours), n - 1) + 1)
    xs, ys = pts[:, 0].tolist(), pts[:, 1].tolist()
    p = path.tolist()
    pos = [0] * n
    for idx, city in enumerate(p):
        pos[city] = idx
    hypot = math.hypot
    eps = 1e-12 * max(1.0, path_length(pts, path))

    def step(u: int, v: int) -> float:
        return hypot(xs[u] - xs[v], ys[u] - ys[v])

    # "don't look" bits: only points next to a changed step are examined again
    active = deque(range(n))
    queued = [True] * n
    budget = max_passes * n  # examinations, so a pathological input still ends
    while active and budget > 0:
        budget -= 1
        a = active.popleft()
        queued[a] = False
        for c in nb[a].tolist():
            if c == a:
                continue
            lo, hi = sorted((pos[a], pos[c]))
            ends = _reverse_if_shorter(p, pos, lo, hi, step, eps)
            if ends is not None:
                for e in (*ends, a):  # a is examined again too: it may gain another move
                    if not queued[e]:
                        queued[e] = True
                        active.append(e)
                break
    return np.asarray(p, dtype=np.int64)


def _reverse_if_shorter(
    p: list[int], pos: list[int], lo: int, hi: int, step: Callable[[int, int], float], eps: float
) -> list[int] | None:
    """Apply the first of the two 2-opt moves making ``p[lo]`` and ``p[hi]`` adjacent that shortens the path.

    The successor move reverses ``p[lo+1..hi]`` (``(x, y) = (lo, hi)``), the predecessor move
    ``p[lo..hi-1]`` (``(x, y) = (lo - 1, hi - 1)``); ``pos`` (point -> index in ``p``) is kept
    up to date. Returns the points at the ends of the changed steps, or None when neither move
    gains more than ``eps``.
    """
    n = len(p)
    for x, y in ((lo, hi), (lo - 1, hi - 1)):
        if y - x < 2 or x < -1 or (x == -1 and y == n - 1):
            continue
        old = new = 0.0
        if x >= 0:
            old += step(p[x], p[x + 1])
            new += step(p[x], p[y])
        if y < n - 1:
            old += step(p[y], p[y + 1])
            new += step(p[x + 1], p[y + 1])
        if new < old - eps:
            ends = [p[i] for i in (x, x + 1, y, y + 1) if 0 <= i < n]
            p[x + 1 : y + 1] = p[x + 1 : y + 1][::-1]
            for idx in range(x + 1, y + 1):
                pos[p[idx]] = idx
            return ends
    return None


def plan_path(xy: np.ndarray, *, neighbours: int = 12, max_passes: int = 50) -> np.ndarray:
    """A short open stage path through ``xy``: nearest neighbour, then 2-opt.

    The greedy path starts at the point closest to the stage origin's corner (smallest
    ``x + y``). If 2-opt from the given order happens to beat it, that one is returned, so the
    result is never longer than the input order.

    Parameters
    ----------
    xy : ndarray, float (n, 2)
        Stage positions (x, y) in mm.

    Returns
    -------
    ndarray, int64 (n,)
        Visiting order, a permutation of ``range(n)``.
    """
    pts = _as_points(xy)
    n = len(pts)
    if n < 3:
        return np.arange(n, dtype=np.int64)
    start = int(np.argmin(pts[:, 0] + pts[:, 1]))
    best = two_opt(pts, nearest_neighbour_order(pts, start=start), neighbours=neighbours, max_passes=max_passes)
    given = np.arange(n, dtype=np.int64)
    if path_length(pts, best) > path_length(pts, given):
        best = two_opt(pts, given, neighbours=neighbours, max_passes=max_passes)
    return best


def revisit_table(candidates: pa.Table, *, selected_only: bool = True) -> pa.Table:
    """Order candidates of each (sheet, plate) along a short stage path.

    Parameters
    ----------
    candidates : pyarrow.Table
        Candidate rows with at least object_id, sheet, plate, x_mm, y_mm, z_mm (and
        ``selected`` when ``selected_only``).
    selected_only : bool
        Keep only rows with ``selected`` true (the microscope revisits selected candidates).

    Returns
    -------
    pyarrow.Table
        Columns :data:`REVISIT_COLUMNS`: per plate, ``visit`` counts 1.. along the path and
        ``step_mm`` is the stage move from the previous visit (0 for the first). Plates come in
        (sheet, plate) order; every kept row appears exactly once.
    """
    need = {"object_id", "sheet", "plate", "x_mm", "y_mm", "z_mm"} | ({"selected"} if selected_only else set())
    missing = sorted(need - set(candidates.column_names))
    if missing:
        raise InputError(f"revisit needs candidate columns {missing}, which the rows lack")
    t = candidates
    if selected_only:
        t = t.filter(pc.fill_null(t.column("selected"), False))
    sheets = t.column("sheet").to_pylist()
    plates = t.column("plate").to_pylist()
    x = np.asarray(t.column("x_mm").to_numpy(zero_copy_only=False), np.float64)
    y = np.asarray(t.column("y_mm").to_numpy(zero_copy_only=False), np.float64)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(sheets, plates)):
        groups.setdefault((str(key[0]), key[1]), []).append(i)
    take: list[int] = []
    visits: list[int] = []
    steps: list[float] = []
    for key in sorted(groups, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        rows = np.asarray(groups[key], np.int64)
        xy = np.column_stack([x[rows], y[rows]])
        order = plan_path(xy)
        logger.info(
            "sheet %s plate %s: %d candidates, path %.1f mm (given order %.1f mm)",
            key[0], key[1], len(rows), path_length(xy, order), path_length(xy),
        )
        pts = xy[order]
        step = np.concatenate([[0.0], np.linalg.norm(np.diff(pts, axis=0), axis=1)]) if len(pts) else np.zeros(0)
        take.extend(rows[order].tolist())
        visits.extend(range(1, len(rows) + 1))
        steps.extend(step.tolist())
    idx = pa.array(take, pa.int64())
    out = {name: t.column(name).take(idx) for name in ("sheet", "plate")}
    out["visit"] = pa.array(visits, pa.int64())
    for name in ("object_id", "x_mm", "y_mm", "z_mm"):
        out[name] = t.column(name).take(idx)
    out["step_mm"] = pa.array(steps, pa.float64())
    return pa.table({name: out[name] for name in REVISIT_COLUMNS})
