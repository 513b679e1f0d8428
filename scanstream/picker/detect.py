"""Classical vertex detection in one field of view's z-stack: the Vertex Picker's job.

Input: the focal planes of a field, uint8 (z, y, x) in the volume's plane order, with the
pixel size (um), the z-step (um, developed emulsion) and the shrinkage factor. Output:
:class:`Vertex` records (position in voxels, multiplicity, prong lengths). Pure numpy / scipy;
:mod:`scanstream.picker.pick` runs it over a volume store with Dask.

Criteria and parameters (:class:`DetectParams`; lengths in um):

1. **Dark voxels.** Each plane is averaged over 2 x 2 pixels. A pixel is *sharp* when it is
   darker than its Gaussian neighbourhood (``sharp_sigma_um`` 1.5 um) by ``sharp_threshold``
   (0.15) of the plane's median grey: in-focus grains of black tracks, while defocused halos are
   smooth and thin minimum-ionising tracks (grains 3-4 um apart) and fog grains rarely connect.
   It is *dark* when sharp or below (1 - ``threshold``) = 0.4 of the median: the black core
   where prongs meet. Both are pooled to ``voxel_px`` = 4 pixels (1.13 um at 0.283 um/px).
2. **Track segments.** 3-D connected components (26-connectivity) of dark voxels; components
   of fewer than ``min_voxels`` (12) voxels are fog, noise or dotted tracks and are dropped.
3. **Candidate points.** Voxels of the kept segments whose count of dark voxels in a
   3 x 7 x 7 voxel window (3 planes, 8 um) is a local maximum over 3 x 9 x 9 voxels and at least
   ``min_density`` (16): junctions of several segments are denser than a single segment.
4. **Prongs (segments meeting at the point).** The candidate's own segment, sharp voxels only,
   within +-``z_window`` (3) planes, cut to the cylindrical shell ``r_inner`` .. ``r_outer``
   (4 .. 9 um in the plate plane) around the candidate, grouped 26-connected, pieces of at least
   ``min_arm_voxels`` (2) voxels: these are the prongs. A segment that starts at the point
   crosses the shell once, a segment passing through it twice, an end once; prongs at different
   depths stay apart. With fewer than four, the wider shell ``r_inner2`` .. ``r_outer2``
   (8 .. 14 um) is tried too (prongs close in angle touch near the point and part farther out);
   its count is used when larger, but only for a candidate whose refined position (6) stays
   within ``r_inner`` of it. A prong's direction is its voxels' mean offset in x, y and its mean
   plane offset in depth.
5. **Vertex rule.** A candidate with three or more prongs is a vertex, unless every prong has a
   collinear partner: two prongs whose plate-plane directions are within ``collinear_deg`` (15
   degrees) of opposite and whose depth offsets are opposite within one plane belong to one
   straight track through the point, so an even number of prongs all in such pairs is a
   crossing of straight tracks (two tracks: multiplicity 4, two collinear pairs) and is not
   reported. A star with a track through it (one pair plus other prongs) is reported. The
   rule is applied with the prongs' directions seen from the candidate, and again from the
   refined position.
6. **Position and one vertex per star.** A candidate's position is refined to the
   least-squares intersection of its prongs' lines (:func:`refine`: lines fitted to the sharp
   2 x 2-pixel voxels ``fit_inner_um`` .. ``fit_outer_um`` (2.5 .. 20 um) out, within
   ``tube_um`` (1.7 um) across and ``tube_dz_um`` (4.5 um) in depth; a line more than
   ``outlier_um`` (1 um) from the point is dropped while more than three remain: a displaced
   radon decay); depth from the prongs' depth-vs-distance fits. Candidates are then ranked by
   multiplicity, then window count; one within ``merge_um`` (6 um) in x, y and two planes of a
   better one joins its group. A group is one vertex: the best candidate's prongs, at the
   median of the members' refined positions.
7. **Prong lengths.** Each prong is followed outwards along its line (sharp voxels within
   ``tube_um`` across and ``tube_dz_um`` in depth) until a gap of ``gap_um`` (3.5 um); its depth
   extent is scaled by the shrinkage, so a length is the undeveloped 3-D length (um), as the
   former method's cuts expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

_CUBE = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class DetectParams:
    """The detector's parameters (module docstring); lengths in um, windows in voxels."""

    threshold: float = 0.6
    sharp_threshold: float = 0.15
    sharp_sigma_um: float = 1.5
    pixel_um: float = 0.283
    voxel_px: int = 4
    min_voxels: int = 12
    min_density: float = 16.0
    peak_half: int = 4
    z_window: int = 3
    r_inner: float = 4.0
    r_outer: float = 9.0
    r_inner2: float = 8.0
    r_outer2: float = 14.0
    min_arm_voxels: int = 2
    collinear_deg: float = 15.0
    merge_um: float = 6.0
    max_length_um: float = 80.0
    gap_um: float = 3.5
    tube_um: float = 1.7
    tube_dz_um: float = 4.5
    fit_inner_um: float = 2.5
    fit_outer_um: float = 20.0
    outlier_um: float = 1.0
    max_candidates: int = 20_000


@dataclass(frozen=True)
class Vertex:
    """A detected vertex.

    Attributes
    ----------
    z, y, x : float
        Plane index and full-resolution row and column of the vertex.
    multiplicity : int
        Prongs meeting at it.
    track_lengths_um : tuple of float
        Undeveloped 3-D length of each prong (um).
    directions : tuple of (dx, dy, dz)
        Unit direction of each prong (plate plane, undeveloped depth).
    density : float
        Dark voxels in the 3 x 7 x 7 window (the candidate's score).
    """

    z: float
    y: float
    x: float
    multiplicity: int
    track_lengths_um: tuple[float, ...]
    directions: tuple[tuple[float, float, float], ...]
    density: float


def _pool(a: np.ndarray, f: int, how: str) -> np.ndarray:
    """``f`` x ``f`` blocks of a 2-D array: their mean (float) or, for bool, any ("max")."""
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    parts = [a[dy:h:f, dx:w:f] for dy in range(f) for dx in range(f)]  # strided views: fast
    if how == "max":
        return np.logical_or.reduce(parts) if a.dtype == bool else np.maximum.reduce(parts)
    return np.add.reduce(parts, dtype=np.float32) * np.float32(1.0 / (f * f))


def dark_masks(planes: np.ndarray, params: DetectParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark and sharp voxels (criterion 1): bool (z, y // voxel_px, x // voxel_px) each, and the
    sharp ones at 2 x 2 pixels, bool (z, 2 (y // voxel_px), 2 (x // voxel_px)), for the line fits."""
    nz, h, w = planes.shape
    f = params.voxel_px
    dark = np.zeros((nz, h // f, w // f), bool)
    sharp = np.zeros_like(dark)
    fine = np.zeros((nz, 2 * (h // f), 2 * (w // f)), bool)
    for k in range(nz):
        img = _pool(planes[k].astype(np.float32), 2, "mean")
        bg = max(float(np.median(img)), 1.0)
        local = ndi.gaussian_filter(img, params.sharp_sigma_um / (2 * params.pixel_um), mode="nearest")
        s = (local - img) > params.sharp_threshold * bg
        sharp[k] = _pool(s, f // 2, "max")
        fine[k] = s[: fine.shape[1], : fine.shape[2]]
        dark[k] = _pool(s | (img < (1.0 - params.threshold) * bg), f // 2, "max")
    return dark, sharp, fine


def _window(labels: np.ndarray, lab: int, at: tuple[int, int, int], zw: int, rv: int) -> np.ndarray:
    """Voxels of component ``lab`` in a (2 zw + 1, 2 rv + 1, 2 rv + 1) box centred on ``at`` (zeros outside)."""
    k, i, j = at
    nz, h, w = labels.shape
    comp = np.zeros((2 * zw + 1, 2 * rv + 1, 2 * rv + 1), bool)
    z0, z1, y0, y1 = max(k - zw, 0), min(k + zw + 1, nz), max(i - rv, 0), min(i + rv + 1, h)
    x0, x1 = max(j - rv, 0), min(j + rv + 1, w)
    comp[z0 - k + zw : z1 - k + zw, y0 - i + rv : y1 - i + rv, x0 - j + rv : x1 - j + rv] = (
        labels[z0:z1, y0:y1, x0:x1] == lab)
    return comp


def _arms(comp: np.ndarray, k0: int, r_in: float, r_out: float, params: DetectParams, vox_um: float, step_um: float):
    """Prongs of the candidate at the centre of ``comp`` (criterion 4).

    Returns a list of (dx, dy, dz_planes, n, points) per prong: mean offset in the plate plane
    (um), mean plane offset, voxel count and the voxels as (n, 3) um (x, y, developed depth).
    """
    nz, h, w = comp.shape
    zz, yy, xx = np.mgrid[0:nz, 0:h, 0:w]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = np.hypot(yy - cy, xx - cx) * vox_um
    shell = comp & (r >= r_in) & (r <= r_out)
    lab, _ = ndi.label(shell, _CUBE)
    arms = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        sel = lab[sl] == i
        m = int(sel.sum())
        if m < params.min_arm_voxels:
            continue
        pts = np.stack([(xx[sl][sel] - cx) * vox_um, (yy[sl][sel] - cy) * vox_um, (zz[sl][sel] - k0) * step_um], 1)
        arms.append((float(pts[:, 0].mean()), float(pts[:, 1].mean()), float(pts[:, 2].mean() / step_um), m, pts))
    return arms


def is_crossing(arms, params: DetectParams) -> bool:
    """True when every prong has a collinear partner (criterion 5): straight tracks crossing."""
    if len(arms) % 2:
        return False
    ang = np.array([np.arctan2(a[1], a[0]) for a in arms])
    dz = np.array([a[2] for a in arms])
    tol = np.radians(params.collinear_deg)
    unpaired = set(range(len(arms)))
    for i in range(len(arms)):
        if i not in unpaired:
            continue
        best = None
        for j in sorted(unpaired - {i}):
            d = abs((ang[i] - ang[j]) % (2 * np.pi) - np.pi)  # 0 when exactly opposite
            if d <= tol and abs(dz[i] + dz[j]) <= 1.0 and (best is None or d < best[0]):
                best = (d, j)
        if best is None:
            return False
        unpaired -= {i, best[1]}
    return True


def _intersect(lines, outlier_um: float) -> np.ndarray | None:
    """The point closest (least squares) to 2-D lines given as (point, unit direction).

    While more than three lines remain and the farthest passes more than ``outlier_um`` from
    the point, it is dropped (a prong from a displaced radon decay, a badly fitted prong).
    """
    lines = list(lines)
    while True:
        a, b = np.zeros((2, 2)), np.zeros(2)
        for c, d in lines:
            proj = np.eye(2) - np.outer(d, d)
            a += proj
            b += proj @ c
        try:
            p = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(p)):
            return None
        dist = [abs((p - c)[0] * d[1] - (p - c)[1] * d[0]) for c, d in lines]
        worst = int(np.argmax(dist))
        if len(lines) <= 3 or dist[worst] <= outlier_um:
            return p
        del lines[worst]


def refine(arms, near: np.ndarray, start: np.ndarray, params: DetectParams) -> np.ndarray | None:
    """The vertex (field um: x, y, developed depth) from the prongs' fitted lines.

    x, y: the point closest (least squares) to every prong's line in the plate plane, each line
    the principal axis of the segment's sharp voxels (``near``, (n, 3) um) within ``tube_um`` of
    the prong's direction from ``fit_inner_um`` to ``fit_outer_um`` from the current estimate,
    and within ``tube_dz_um`` in depth of the prong's own depth slope (tracks crossing above or
    below stay out); two rounds from ``start`` (the candidate). Depth: the median over prongs of
    each prong's linear depth-vs-distance fit at that point. None where a fit is degenerate or
    lands farther than ``r_outer`` from the candidate.
    """
    p = start[:2].copy()
    fits = []
    for _ in range(2):
        lines, fits = [], []
        for *_, pts in arms:
            c0 = pts[:, :2].mean(0)
            u = (c0 - p) / max(np.linalg.norm(c0 - p), 1e-9)
            q = near[:, :2] - p
            t = q @ u
            off = np.abs(q[:, 0] * u[1] - q[:, 1] * u[0])
            ta = (pts[:, :2] - p) @ u  # the prong's shell voxels: where it is, and its depth slope
            tc, zc = float(ta.mean()), float(pts[:, 2].mean())
            slope = float(np.clip(np.polyfit(ta, pts[:, 2], 1)[0], -1.5, 1.5)) if np.ptp(ta) > 1.0 else 0.0
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
        new = _intersect(lines, params.outlier_um)
        if new is None or np.linalg.norm(new - start[:2]) > params.r_outer:
            return None
        p = new
    z0 = []
    for pts in fits:
        r = np.hypot(pts[:, 0] - p[0], pts[:, 1] - p[1])
        if len(pts) >= 3 and np.ptp(r) > 1.0:
            z0.append(np.polyfit(r, pts[:, 2], 1)[1])
        else:
            z0.append(pts[:, 2].mean())
    z = float(np.clip(np.median(z0), start[2] - params.r_outer, start[2] + params.r_outer))
    return np.array([p[0], p[1], z])


def _lengths(near: np.ndarray, center: np.ndarray, arms, params: DetectParams, shrinkage: float):
    """Undeveloped 3-D length and unit direction of each prong (criterion 7).

    ``near`` (n, 3) are the sharp voxels of the vertex's segment (um: x, y, developed depth).
    A prong is the line from the vertex through its shell voxels' centroid; it is followed
    outwards through voxels within ``tube_um`` of the line in x, y and 1.5 z-steps in depth
    until a gap of ``gap_um``.
    """
    d = near - center
    lengths, dirs = [], []
    for *_, pts in arms:
        c = pts.mean(0) - center
        rc = max(np.hypot(c[0], c[1]), 1e-9)
        u = np.array([c[0], c[1]]) / rc
        slope = c[2] / rc  # developed depth per um in the plate plane
        t = d[:, 0] * u[0] + d[:, 1] * u[1]
        off = np.abs(d[:, 0] * u[1] - d[:, 1] * u[0])
        on = (t > 0) & (off <= params.tube_um) & (np.abs(d[:, 2] - slope * t) <= params.tube_dz_um)
        q = pts - center
        reach = float(np.min(q[:, 0] * u[0] + q[:, 1] * u[1]))  # the prong is seen from the shell on
        for tt in np.sort(t[on & (t > reach)]):
            if tt - reach > params.gap_um:
                break
            reach = float(tt)
        end = on & (t >= reach - 3.0) & (t <= reach)
        dz_dev = float(np.median(d[end, 2])) if end.any() else slope * reach
        v = np.array([u[0] * reach, u[1] * reach, dz_dev * shrinkage])
        lengths.append(round(float(np.linalg.norm(v)), 2))
        dirs.append(tuple(float(x) for x in v / max(np.linalg.norm(v), 1e-9)))
    return tuple(lengths), tuple(dirs)


def _candidates(mask: np.ndarray, params: DetectParams):
    """Segments (labels) and candidate points, densest first (criteria 2 and 3)."""
    labels, _ = ndi.label(mask, _CUBE)
    sizes = np.bincount(labels.ravel())
    small = sizes < params.min_voxels
    small[0] = True
    labels[small[labels]] = 0
    kept = labels > 0
    density = ndi.uniform_filter(kept.astype(np.float32), size=(3, 7, 7), mode="constant") * 147.0
    w = 2 * params.peak_half + 1
    peak = (density == ndi.maximum_filter(density, size=(3, w, w), mode="constant")) & kept
    peak &= density >= params.min_density
    cand = np.argwhere(peak)
    order = np.argsort(-density[peak], kind="stable")[: params.max_candidates]
    return labels, density, cand[order]


def detect_vertices(planes: np.ndarray, *, pixel_um: float, step_um: float, shrinkage: float = 2.0,
                    params: DetectParams | None = None) -> list[Vertex]:
    """Vertices in one field's focal planes uint8 (z, y, x) (module docstring for the criteria).

    Examples
    --------
    >>> detect_vertices(np.full((5, 64, 64), 180, np.uint8), pixel_um=0.283, step_um=3.0)
    []
    """
    params = params or DetectParams()
    planes = np.asarray(planes)
    if planes.ndim != 3 or planes.shape[0] < 3:
        raise ValueError(f"need a stack of at least 3 planes (z, y, x), got shape {planes.shape}")
    f = params.voxel_px
    vox_um = pixel_um * f
    mask, sharp, fine = dark_masks(planes, params)
    labels, density, cand = _candidates(mask, params)
    rv = int(np.ceil(max(params.r_outer, params.r_outer2) / vox_um)) + 1
    found = []
    for k, i, j in cand:
        lab = labels[k, i, j]
        comp = _window(labels, lab, (k, i, j), params.z_window, rv) & _window(sharp, True, (k, i, j), params.z_window, rv)
        arms = _arms(comp, params.z_window, params.r_inner, params.r_outer, params, vox_um, step_um)
        wide = False
        if len(arms) < 4:  # prongs close in angle may touch near the point and part farther out
            more = _arms(comp, params.z_window, params.r_inner2, params.r_outer2, params, vox_um, step_um)
            wide = len(more) > len(arms)
            arms = more if wide else arms
        if len(arms) < 3 or is_crossing(arms, params):
            continue
        base = np.array([j * vox_um, i * vox_um, k * step_um])
        arms = [(*a[:4], a[4] + base) for a in arms]  # voxels in field um from here on
        near = _segment_voxels(labels, fine, int(lab), base, params, vox_um, step_um, shrinkage)
        at = refine(arms, near, base, params)
        if at is None:
            if wide:  # a point beside a star sees its prongs in the wide shell: only a fit says where it is
                continue
            at = base
        elif wide and np.hypot(*(at[:2] - base[:2])) > params.r_inner:
            continue
        # the crossing rule again, directions seen from the refined point (a candidate beside
        # the crossing sees its four prongs askew)
        if is_crossing([(a[4][:, 0].mean() - at[0], a[4][:, 1].mean() - at[1], *a[2:]) for a in arms], params):
            continue
        found.append((len(arms), float(density[k, i, j]), at, near, arms))
    out: list[Vertex] = []
    for group in _groups(found, params, step_um):
        mult, dens, _, near, arms = group[0]
        at = np.median(np.array([g[2] for g in group]), axis=0)
        lengths, dirs = _lengths(near, at, arms, params, shrinkage)
        out.append(Vertex(at[2] / step_um, at[1] / vox_um * f + (f - 1) / 2, at[0] / vox_um * f + (f - 1) / 2,
                          mult, lengths, dirs, dens))
    return out


def _groups(found: list, params: DetectParams, step_um: float) -> list[list]:
    """Candidates grouped around the best (most prongs, then densest) within ``merge_um`` and two planes."""
    found = sorted(found, key=lambda t: (-t[0], -t[1]))
    groups: list[list] = []
    for cand in found:
        at = cand[2]
        for g in groups:
            lead = g[0][2]
            if abs(at[2] - lead[2]) <= 2 * step_um and np.hypot(*(at[:2] - lead[:2])) < params.merge_um:
                g.append(cand)
                break
        else:
            groups.append([cand])
    return groups


def _segment_voxels(labels, fine, lab: int, at: np.ndarray, params: DetectParams, vox_um: float, step_um: float,
                    shrinkage: float) -> np.ndarray:
    """Sharp 2 x 2-pixel voxels of segment ``lab`` within ``max_length_um`` of ``at``, as (n, 3) um."""
    k, i, j = round(at[2] / step_um), round(at[1] / vox_um), round(at[0] / vox_um)
    rv = int(np.ceil(params.max_length_um / vox_um))
    rz = int(np.ceil(params.max_length_um / (step_um * shrinkage))) + 1
    z0, y0, x0 = max(k - rz, 0), max(i - rv, 0), max(j - rv, 0)
    z1, y1, x1 = k + rz + 1, i + rv + 1, j + rv + 1
    seg = labels[z0:z1, y0:y1, x0:x1] == lab
    box = np.repeat(np.repeat(seg, 2, axis=1), 2, axis=2) & fine[z0:z1, 2 * y0 : 2 * y1, 2 * x0 : 2 * x1]
    zz, yy, xx = np.nonzero(box)
    half = vox_um / 2  # fine voxel m is centred at (m - 1/2) half-voxels in the coarse voxels' frame
    return np.stack([(xx + 2 * x0) * half - half / 2, (yy + 2 * y0) * half - half / 2, (zz + z0) * step_um], 1)
