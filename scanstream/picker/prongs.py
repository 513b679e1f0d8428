"""Prong lengths of a detected vertex (criterion 7 of :mod:`scanstream.picker.detect`).

A prong found in the shell around the vertex (criterion 4) is followed outwards through the
sharp voxels of the vertex's segment until the track stops; its length is the undeveloped 3-D
distance from the vertex to the last voxel followed, as the former method's cuts
(:mod:`scanstream.picker.cuts`) expect.

Rules (lengths in um; the parameters are :class:`scanstream.picker.detect.DetectParams`'):

* **Tube.** A voxel belongs to the prong when it lies within ``tube_um`` (1.7 um) of the prong's
  line in the plate plane, ahead of the vertex, and within ``tube_dz_um`` (4.5 um, a plane and
  a half) of the line's depth: a black track is about a grain (0.5-1 um) wide and the vertex
  and voxel positions are good to about a voxel (1.1 um).
* **Gap rule.** The prong is followed while the next voxel lies within ``gap_um`` (3.5 um) of
  the farthest one reached: a black alpha track is continuous (grains touch), so a gap of
  several grains is its end, or a stretch out of the sharp voxels.
* **Line re-fitted while following.** The first line runs from the vertex through the centroid
  of the prong's shell voxels (4-9 um out). Where prongs are close in angle, or the vertex is
  off by a voxel, that centroid is pulled sideways: a direction error of 10 degrees puts the
  track outside a 1.7 um tube beyond about 10 um, and the gap rule then ends a 30-50 um alpha
  prong at 5-15 um. Alpha tracks are straight (multiple scattering bends them by well under a
  degree per 10 um until the last few um), so after each advance the line is re-fitted to the
  voxels followed so far (:data:`REFIT_FROM_UM` and farther out, where the prong is clear of
  the others) together with the vertex (weight :data:`ANCHOR_WEIGHT` voxels): the principal
  axis in the plate plane, and depth as a linear function of the distance along it. A voxel's
  weight falls off with its distance from the current line (:data:`TRACK_SIGMA_UM`, about a
  grain), so a second prong still inside the tube does not pull the line between the two. Only
  voxels within about 27 degrees of the first line are looked at. The tube then follows the
  track itself.
* **End point and depth.** The end is the fitted line at the farthest voxel followed; its depth
  (developed) is the line's, from every voxel of the prong, not the median plane of the last
  few voxels (planes are 3 um apart: 6 um undeveloped). The depth offset is multiplied by the
  shrinkage, so a length is the undeveloped 3-D length.
* **Stubs are not prongs.** A prong whose 3-D length is below ``min_prong_um`` (9 um, the
  shell's outer radius ``r_outer``) ends inside the shell it was found in: it was never seen
  as a track, only as a few grains touching the vertex's segment (fog, a defocused halo, the
  edge of a neighbouring prong, the second piece of a steep prong). It is left out of the
  lengths and of the multiplicity the vertex reports (the vertex rule, criteria 5 and 6, still
  counts it). A radioactive alpha prong is 20-50 um long. What is lost are real prongs of a
  few um (heavy evaporation fragments, recoils): an evaporation star is then judged by its
  other prongs, as the simulator's picker model (``min_length_um``, merged prongs) reports it.
* **Free lines** (:func:`free_lines`, for criterion 8). The followed line leans towards the
  vertex it starts from (``ANCHOR_WEIGHT``), so it passes within a few tenths of a um of a
  vertex 4-7 um beside a star's point as well. Fitted again with no weight on the vertex, to the
  voxels followed :data:`FREE_FROM_UM` and farther out, a prong's line is the track's own
  whichever vertex it was followed from; :mod:`scanstream.picker.stars` crosses these lines to
  tell which of a star's vertices is on its point.
"""

from __future__ import annotations

import numpy as np

#: Voxels of a prong used for its line start this far from the vertex (um): nearer, the
#: prongs of a star overlap (the shell's inner radius, criterion 4).
REFIT_FROM_UM = 4.0
#: Weight of the vertex, in voxels, in the re-fitted line.
ANCHOR_WEIGHT = 4.0
#: A voxel's weight in the re-fitted line falls off as a Gaussian of this sigma (um) with its
#: distance from the current line: about a grain, so a second track inside the tube pulls the
#: line less than the one it is on.
TRACK_SIGMA_UM = 0.85
#: A prong's free line (:func:`free_lines`) is fitted to its voxels this far from the vertex and
#: farther (um): beyond the shell's inner radius and the 4-7 um by which a duplicate vertex of a
#: star lies off its point, so that the line does not depend on which of them it was seen from.
FREE_FROM_UM = 6.0
#: Fewest voxels a free line is fitted to: a prong's few voxels beyond 6 um (a stub) give none.
FREE_MIN_VOXELS = 6


def _fit(p: np.ndarray, weights: np.ndarray, anchor_weight: float):
    """Weighted line through points ``p`` (n, 3) um relative to the vertex and the vertex (weight ``anchor_weight``).

    Returns (origin xy, unit direction xy, depth at the origin, depth per um along the line); the
    origin is the point of the line nearest the vertex. The direction is the principal axis of
    the weighted x, y (closed form for 2 x 2); depth is a weighted linear fit along it.
    """
    return _fit_xyz(p[:, 0], p[:, 1], p[:, 2], weights, anchor_weight)


def _fit_xyz(x: np.ndarray, y: np.ndarray, z: np.ndarray, weights: np.ndarray, anchor_weight: float):
    """:func:`_fit` of the points' coordinates ``x``, ``y``, ``z`` (n,) each: the weighted sums in
    one matrix product, the vertex's share added (it sits at 0: weight, no sums)."""
    sums = np.stack([x, y, z, x * x, y * y, x * y]) @ weights
    sw = float(weights.sum()) + anchor_weight
    mx, my, mz = float(sums[0]) / sw, float(sums[1]) / sw, float(sums[2]) / sw
    cxx = float(sums[3]) / sw - mx * mx
    cyy = float(sums[4]) / sw - my * my
    cxy = float(sums[5]) / sw - mx * my
    phi = 0.5 * np.arctan2(2 * cxy, cxx - cyy)
    u0, u1 = float(np.cos(phi)), float(np.sin(phi))
    if u0 * float(sums[0]) + u1 * float(sums[1]) < 0:  # the points' weighted projection on u
        u0, u1 = -u0, -u1
    along = mx * u0 + my * u1
    o0, o1 = mx - along * u0, my - along * u1
    t = (x - o0) * u0 + (y - o1) * u1
    t_anchor = -(o0 * u0 + o1 * u1)
    tm = (float(weights @ t) + anchor_weight * t_anchor) / sw
    dt = t - tm
    wdt = weights * dt
    var = float(wdt @ dt) + anchor_weight * (t_anchor - tm) ** 2
    cov = float(wdt @ (z - mz)) + anchor_weight * (t_anchor - tm) * (0.0 - mz)
    slope = cov / var if var > 1e-9 else 0.0
    return np.array([o0, o1]), np.array([u0, u1]), mz - slope * tm, slope


def _follow(d: np.ndarray, shell: np.ndarray, params, refit: bool):
    """The following loop of :func:`follow_line`: (origin xy, direction xy, depth at the origin, depth
    per um, reach um, the voxels looked at) of the prong's last line, relative to the vertex."""
    c = shell.mean(0)
    rc = max(float(np.hypot(c[0], c[1])), 1e-9)
    o, u, z0, slope = np.zeros(2), c[:2] / rc, 0.0, float(c[2]) / rc
    reach = float(np.min(shell[:, :2] @ u))  # the prong is seen from the shell on
    if refit:  # the line turns by far less than 27 degrees: voxels outside that cone never join
        t = d[:, :2] @ u
        d = d[(t > 0) & (np.abs(d[:, 0] * u[1] - d[:, 1] * u[0]) <= params.tube_um + 0.5 * t)]
    x, y, z = (np.ascontiguousarray(d[:, k]) for k in range(3))
    far = np.hypot(x, y) >= REFIT_FROM_UM  # voxels a re-fitted line is fitted to: the same every round
    while True:
        (o0, o1), (u0, u1) = o, u
        a, b = x - o0, y - o1
        t = a * u0 + b * u1
        off = np.abs(a * u1 - b * u0)
        on = (t > 0) & (off <= params.tube_um) & (np.abs(z - (z0 + slope * t)) <= params.tube_dz_um)
        ahead = on & (t > reach) & (t <= reach + params.gap_um)
        if not ahead.any():
            break
        if not refit:  # the first line: the gap rule over the sorted distances
            for tt in np.sort(t[on & (t > reach)]):
                if tt - reach > params.gap_um:
                    break
                reach = float(tt)
            break
        reach = float(t[ahead].max())  # every voxel in (reach, reach + gap] is within a gap of the last
        used = on & (t <= reach) & far
        if np.count_nonzero(used) >= 3:
            w = np.exp(-0.5 * (off[used] / (TRACK_SIGMA_UM)) ** 2)
            o, u, z0, slope = _fit_xyz(x[used], y[used], z[used], w, ANCHOR_WEIGHT)
    return o, u, z0, slope, reach, d


def follow_line(d: np.ndarray, shell: np.ndarray, params, *, refit: bool = True) -> tuple[np.ndarray, float]:
    """Follow one prong (module docstring): its end (x, y, developed depth) um relative to the
    vertex, and how far (um, plate plane) the prong's last fitted line passes
    from the vertex: a few tenths of a um on a prong that starts at the vertex, more where the
    vertex is off the star's true point (the vertex pulls the line by ``ANCHOR_WEIGHT`` voxels only)."""
    return _end(_follow(d, shell, params, refit), params, refit)


def _end(state: tuple, params, refit: bool) -> tuple[np.ndarray, float]:
    """:func:`follow_line`'s end and miss from :func:`_follow`'s ``state``."""
    o, u, z0, slope, reach, d = state
    if refit:
        return np.array([*(o + u * reach), z0 + slope * reach]), float(np.hypot(*o))
    t = (d[:, :2] - o) @ u
    off = np.abs(d[:, 0] * u[1] - d[:, 1] * u[0])
    on = (t > 0) & (off <= params.tube_um) & (np.abs(d[:, 2] - slope * t) <= params.tube_dz_um)
    near_end = on & (t >= reach - 3.0) & (t <= reach)
    end = np.array([u[0] * reach, u[1] * reach, float(np.median(d[near_end, 2])) if near_end.any() else slope * reach])
    return end, 0.0


def free_lines(near: np.ndarray, center: np.ndarray, arms, params) -> list[tuple]:
    """Each prong's line fitted without the vertex (criterion 8, :mod:`scanstream.picker.stars`).

    A prong is followed from ``center`` as :func:`follow_line` follows it; the line is then fitted
    again, with no weight on the vertex, to the voxels followed :data:`FREE_FROM_UM` and farther
    out, where a star's prongs are apart. Seen from a point beside the star, the same track gives
    the same free line, so the lines of a star's duplicate vertices all cross at its true point.
    A prong with fewer than :data:`FREE_MIN_VOXELS` such voxels gives no line.

    Parameters are those of :func:`prong_fits`. Returns a list of (point (x, y) field um, unit
    direction (x, y), developed depth at the point um, depth per um along the direction, voxels
    fitted), the point being the line's nearest to ``center``. :func:`prong_lines` gives the
    same lines from the following that measures the prongs' lengths.
    """
    d = np.asarray(near, float) - center
    return _free([_follow(d, pts - center, params, True) for *_, pts in arms], center, params)


def _free(followed: list, center: np.ndarray, params) -> list[tuple]:
    """:func:`free_lines` from the prongs' re-fitted following (:func:`_follow` with ``refit``)."""
    out = []
    for o, u, z0, slope, reach, dd in followed:
        t = (dd[:, :2] - o) @ u
        off = np.abs((dd[:, 0] - o[0]) * u[1] - (dd[:, 1] - o[1]) * u[0])
        sel = ((t > 0) & (t <= reach) & (off <= params.tube_um) & (np.abs(dd[:, 2] - (z0 + slope * t)) <= params.tube_dz_um)
               & (np.hypot(dd[:, 0], dd[:, 1]) >= FREE_FROM_UM))
        if sel.sum() < FREE_MIN_VOXELS:
            continue
        o, u, z0, slope = _fit(dd[sel], np.exp(-0.5 * (off[sel] / TRACK_SIGMA_UM) ** 2), 0.0)
        out.append((o + center[:2], u, float(z0 + center[2]), float(slope), int(sel.sum())))
    return out


def prong_lengths(near: np.ndarray, center: np.ndarray, arms, params, shrinkage: float):
    """Undeveloped 3-D length (um) and unit direction of each prong (criterion 7, module docstring).

    Parameters
    ----------
    near : ndarray (n, 3)
        Sharp voxels of the vertex's segment, um (x, y, developed depth).
    center : ndarray (3,)
        The vertex, same units.
    arms : list
        The prongs (criterion 4): tuples whose last item is the prong's shell voxels (m, 3) um.
    params : DetectParams
        ``tube_um``, ``tube_dz_um``, ``gap_um``, ``min_prong_um`` and ``refit`` (re-fit the line
        while following; False keeps the first line) are used.
    shrinkage : float
        Undeveloped / developed thickness: scales depth offsets.

    Returns
    -------
    lengths : tuple of float
        Rounded to 0.01 um; stubs (shorter than ``params.min_prong_um``) left out.
    directions : tuple of (dx, dy, dz)
        Unit vectors from the vertex to each prong's end (undeveloped), same prongs.
    """
    lengths, dirs, _ = prong_fits(near, center, arms, params, shrinkage)
    return lengths, dirs


def prong_fits(near: np.ndarray, center: np.ndarray, arms, params, shrinkage: float):
    """:func:`prong_lengths` and, for the same prongs, how far each one's fitted line passes
    from ``center`` (um, plate plane; :func:`follow_line`): the lines of a vertex placed on the
    star's point pass through it, those seen from a point beside it miss it."""
    return prong_lines(near, center, arms, params, shrinkage)[:3]


def prong_lines(near: np.ndarray, center: np.ndarray, arms, params, shrinkage: float):
    """:func:`prong_fits` and the prongs' :func:`free_lines`, each prong followed once for both
    (with ``params.refit``; without it the free lines follow again, re-fitting as they must)."""
    d = near - center
    lengths, dirs, misses, followed = [], [], [], []
    for *_, pts in arms:
        state = _follow(d, pts - center, params, params.refit)
        followed.append(state)
        end, miss = _end(state, params, params.refit)
        v = np.array([end[0], end[1], end[2] * shrinkage])
        if np.linalg.norm(v) < params.min_prong_um:
            continue
        lengths.append(round(float(np.linalg.norm(v)), 2))
        dirs.append(tuple(float(x) for x in v / max(np.linalg.norm(v), 1e-9)))
        misses.append(miss)
    free = _free(followed, center, params) if params.refit else free_lines(near, center, arms, params)
    return tuple(lengths), tuple(dirs), tuple(misses), free
