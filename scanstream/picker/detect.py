"""Classical vertex detection in one field of view's z-stack: the Vertex Picker's job.

Input: the focal planes of a field, uint8 (z, y, x) in the volume's plane order, with the
pixel size (um), the z-step (um, developed emulsion) and the shrinkage factor. Output:
:class:`Vertex` records (position in voxels, multiplicity, prong lengths). Pure numpy / scipy;
:mod:`scanstream.picker.pick` runs it over a volume store with Dask. Cost (one core, a 1024 x
1024 x 76-plane field, docs/pick.md "Speed"): about 0.35-0.45 CPU-s, of it criterion 1 about
0.15 (smoothing at voxel resolution), criteria 2-3 0.03-0.04 (window counts only in the
segments' boxes), criteria 4-6 0.12-0.18 and criterion 7 0.04; reading the field (80 MB, zstd)
0.10-0.14 CPU-s.

Criteria and parameters (:class:`DetectParams`; lengths in um):

1. **Dark voxels.** Each plane is averaged over 2 x 2 pixels. A pixel is *sharp* when it is
   darker than its Gaussian neighbourhood (``sharp_sigma_um`` 1.5 um) by ``sharp_threshold``
   (0.15) of the plane's median grey (of every 4th pixel each way): in-focus grains of black
   tracks, while defocused halos are smooth and thin minimum-ionising tracks (grains 3-4 um
   apart) and fog grains rarely connect. It is *dark* when sharp or below (1 - ``threshold``) =
   0.4 of the median: the black core where prongs meet. Both are pooled to ``voxel_px`` = 4
   pixels (1.13 um at 0.283 um/px). The mean is smoothed at voxel resolution and interpolated
   (:func:`scanstream.picker.darkmasks.dark_masks`): 99.5 % of the dark voxels of smoothing at 2 x 2 pixels.
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
   within ``r_inner`` of it, or that passes the recheck (6). A prong's direction is its voxels'
   mean offset in x, y and its mean plane offset in depth. *Prongs close in azimuth*: where the
   pieces already make a vertex (three or more), a piece whose outer azimuths are bimodal
   (classes ``split_deg`` (10 degrees) apart) and that no straight line fits (voxels
   ``split_rms_um`` (1.3 um) or more from its axis, each half 0.6 of that or less from its own)
   is two prongs (:func:`_split_azimuth`), so the multiplicity and the lines count both: prongs
   about 15 degrees apart (at 20 the shell parts them; at 12 they stay one). Not before:
   splitting the two-piece candidates on single prongs made a fake vertex of many of them.
5. **Vertex rule.** A candidate with three or more prongs is a vertex, unless every prong has a
   collinear partner: two prongs whose plate-plane directions are within ``collinear_deg`` (15
   degrees) of opposite and whose depth offsets are opposite within one plane are one straight
   track through the point, so an even number of prongs all in such pairs is a crossing of
   straight tracks (two tracks: multiplicity 4) and is not reported; a star with a track
   through it is. Applied with the directions seen from the candidate and from the refined point.
6. **Position and one vertex per star.** A candidate's position is refined to the
   least-squares intersection of its prongs' lines (:func:`scanstream.picker.vertexfit.refine`:
   lines fitted to the sharp 2 x 2-pixel voxels ``fit_inner_um`` .. ``fit_outer_um`` (2.5 .. 20
   um) out, within ``tube_um`` (1.7 um) across and ``tube_dz_um`` (4.5 um) in depth; a line more
   than ``outlier_um`` (1 um) from the point is dropped while more than three remain, and where
   that drops two or more the point most lines meet is taken: a displaced radon decay's own
   point, the one the simulator records); depth from the prongs' depth-vs-distance fits.
   *Steep prongs*: a prong whose shell voxels lie more than ``steep_ratio`` (1.5) times deeper
   or shallower (developed um) than they are far in the plate plane (dipping more than about
   70 degrees) leaves few voxels in the plate-plane tube; its line is fitted in 3-D to the
   voxels in a tube about its 3-D direction and projected onto the plate plane, and its depth
   fit is left out of the depth (:func:`scanstream.picker.vertexfit.refine`).
   *3-D lines* (off by default: ``line3d_below`` 0): the same voxels' lines fitted and crossed
   in 3-D (depth weighted by ``depth_weight``, 1), which places the point along nearly parallel
   plate-plane lines (prongs close in azimuth, steep prongs); tried where the plate-plane lines'
   spread (the normal matrix's smallest eigenvalue per line, at most 0.5) is below
   ``line3d_below`` (1.0: always), and used where the 3-D lines' spread is ``line3d_gain`` (2)
   times that or more (shallow prongs' 3-D lines cross no better, and depth is measured to a
   plane, not a pixel) and the 3-D point lies within ``r_inner`` of the plate-plane one
   (farther, a line is another track's). With 1.0, 2 more of 325 alpha decays on the tuning
   seeds and 8 more fake vertices (docs/pick.md, "Efficiency"). Candidates are then ranked by
   multiplicity, then window count; one within ``merge_um`` (6 um) in x, y and two planes of a
   better one joins its group. A group is one vertex: the best candidate's prongs, at the
   median of the members' refined positions. *Recheck* (``recheck``): a candidate whose fit
   leaves it (wide-shell prongs refined beyond ``r_inner``, or lines meeting ``r_outer`` .. 2
   ``r_outer`` away) is judged again from the voxel the fit reached: three or more prongs, rule
   5, a fit within ``r_inner``. Where prongs close in angle overlap, the densest point is in
   their fan, 5-13 um from the vertex, and no candidate sits on the vertex itself.
   *Displaced radon* (off by default: ``origin_max_um`` 0; docs/pick.md, "Displaced radon"; after
   criterion 8, on each kept vertex with four or more reported prongs):
   where the radon atom moved before it decayed, the first alphas start at the star's origin. The
   prongs' free lines (:func:`scanstream.picker.prongs.free_lines`) are crossed
   (:func:`scanstream.picker.vertexfit.second_point`): the point most pass within ``r_inner`` of
   the vertex, and a second point where two or more others meet (each fitted to 30 voxels or
   more, crossing at 30 degrees or more, passing within 0.6 um and a plane, and more than
   ``origin_miss_um`` (1 um) from the first), ``origin_min_um`` .. ``origin_max_um`` (1.5 .. 10
   um when on, undeveloped 3-D) away and within a plane in depth is the vertex's ``origin``; prongs whose
   ends lie on its lines (at least two) are measured from it (:func:`origin_of`). The vertex
   itself is not moved. On tuning seeds 213-218 it found the origin of 1 of 38 picked decays whose
   radon moved 2 um or more and put one on 10 of 757 decays whose radon did not move and on 7 of
   468 other vertices: too few found for as many invented, so it is off.
7. **Prong lengths** (:mod:`scanstream.picker.prongs`). Each prong is followed outwards
   (sharp voxels within ``tube_um`` across and ``tube_dz_um`` in depth of its line) until a gap
   of ``gap_um`` (3.5 um); with ``refit`` the line is re-fitted to the voxels followed so far
   after each step, so a direction that the shell's centroid got wrong (prongs close in angle)
   no longer ends a straight alpha track at 5-15 um. The end's depth is the fitted line's;
   depth offsets are scaled by the shrinkage, so a length is the undeveloped 3-D length (um),
   as the former method's cuts expect. Prongs shorter than ``min_prong_um`` (9 um: ending
   inside the shell) are stubs: not reported, and not counted in the vertex's multiplicity.
8. **Each star once.** Candidates more than ``merge_um`` apart can still be one star: a point
   4-8 um out on a prong, or the star's own point two or three planes off (steep prongs, a
   crossing track). Vertices on the same segment within ``star_um`` (8 um) in x, y and
   ``star_dz_um`` (12 um, four planes) in depth of each other are one group
   (:mod:`scanstream.picker.stars`): every prong of the group's vertices is fitted again without
   its vertex, from its voxels 6 um and farther out (where a star's prongs are apart), and the
   vertex nearest the point most of these lines cross at (in x, y and depth) is kept. Where they
   cross nowhere, the best measured is kept: three or more reported prongs first, then the
   smallest median distance between the vertex and its prongs' followed lines.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from scanstream.picker.darkmasks import Masks, dark_masks
from scanstream.picker.prongs import prong_lines
from scanstream.picker.stars import one_per_star
from scanstream.picker.vertexfit import line_miss, refine, second_point
from scanstream.picker.voxels import label26, pieces, window_reduce


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
    recheck: bool = True
    min_arm_voxels: int = 2
    collinear_deg: float = 15.0
    split_deg: float = 10.0
    split_rms_um: float = 1.3
    merge_um: float = 6.0
    max_length_um: float = 80.0
    gap_um: float = 3.5
    tube_um: float = 1.7
    tube_dz_um: float = 4.5
    fit_inner_um: float = 2.5
    fit_outer_um: float = 20.0
    outlier_um: float = 1.0
    line3d_below: float = 0.0
    steep_ratio: float = 1.5
    line3d_gain: float = 2.0
    depth_weight: float = 1.0
    max_candidates: int = 20_000
    refit: bool = True
    min_prong_um: float = 9.0
    star_um: float = 8.0
    star_dz_um: float = 12.0
    origin_miss_um: float = 1.0
    origin_min_um: float = 1.5
    origin_max_um: float = 0.0


@dataclass(frozen=True)
class Vertex:
    """A detected vertex.

    Attributes
    ----------
    z, y, x : float
        Plane index and full-resolution row and column of the vertex.
    multiplicity : int
        Prongs meeting at it, stubs (criterion 7) left out.
    track_lengths_um : tuple of float
        Undeveloped 3-D length of each prong (um).
    directions : tuple of (dx, dy, dz)
        Unit direction of each prong (plate plane, undeveloped depth).
    density : float
        Dark voxels in the 3 x 7 x 7 window (the candidate's score).
    line_miss_um : float
        Median over the reported prongs of how far each one's fitted line passes from the
        vertex (um, plate plane); inf without a reported prong. Smaller is better measured.
    origin : (z, y, x) or None
        The star's second point, where its first alphas start when the radon atom moved before it
        decayed (criterion 6, "Displaced radon"), in the vertex's units; None where none was found.
    origin_prongs : int
        Reported prongs that start at ``origin`` (their lengths and directions are measured from
        it); 0 without an origin.
    """

    z: float
    y: float
    x: float
    multiplicity: int
    track_lengths_um: tuple[float, ...]
    directions: tuple[tuple[float, float, float], ...]
    density: float
    line_miss_um: float = float("inf")
    origin: tuple[float, float, float] | None = None
    origin_prongs: int = 0


@dataclass(frozen=True)
class _Shells:
    """The box searched around a candidate (criterion 4): offsets (voxels) and the two shells."""

    zw: int
    rv: int
    offsets: np.ndarray  # float (3, 2 zw + 1, 2 rv + 1, 2 rv + 1): z, y, x offsets (voxels)
    inner: np.ndarray  # bool, the box: r_inner .. r_outer in the plate plane
    wide: np.ndarray  # bool, the box: r_inner2 .. r_outer2

    @classmethod
    def build(cls, params: DetectParams, vox_um: float) -> _Shells:
        zw, rv = params.z_window, int(np.ceil(max(params.r_outer, params.r_outer2) / vox_um)) + 1
        off = np.mgrid[-zw : zw + 1, -rv : rv + 1, -rv : rv + 1].astype(float)
        r = np.hypot(off[1], off[2]) * vox_um
        return cls(zw, rv, off, (r >= params.r_inner) & (r <= params.r_outer),
                   (r >= params.r_inner2) & (r <= params.r_outer2))

    def window(self, labels: np.ndarray, sharp: np.ndarray, at: tuple[int, int, int], lab: int) -> np.ndarray:
        """Sharp voxels of segment ``lab`` in the box centred on ``at`` (False outside the field)."""
        (k, i, j), zw, rv, (nz, h, w) = at, self.zw, self.rv, labels.shape
        comp = np.zeros(self.inner.shape, bool)
        z0, z1, y0, y1 = max(k - zw, 0), min(k + zw + 1, nz), max(i - rv, 0), min(i + rv + 1, h)
        x0, x1 = max(j - rv, 0), min(j + rv + 1, w)
        comp[z0 - k + zw : z1 - k + zw, y0 - i + rv : y1 - i + rv, x0 - j + rv : x1 - j + rv] = (
            (labels[z0:z1, y0:y1, x0:x1] == lab) & sharp[z0:z1, y0:y1, x0:x1])
        return comp


def _arm(pts: np.ndarray, step_um: float) -> tuple:
    """One prong's tuple (:func:`_arms`) from its voxels ``pts`` ((n, 3) um from the candidate)."""
    m = pts.sum(0) / len(pts)  # pts.mean(0), without its overhead
    return float(m[0]), float(m[1]), float(m[2] / step_um), len(pts), pts


def _arms(comp: np.ndarray, shell: np.ndarray, shells: _Shells, params: DetectParams, vox_um: float,
          step_um: float) -> list:
    """Prongs of the candidate at the centre of ``comp`` (criterion 4) in ``shell``.

    Returns a list of (dx, dy, dz_planes, n, points) per prong: mean offset in the plate plane
    (um), mean plane offset, voxel count and the voxels as (n, 3) um (x, y, developed depth)
    relative to the candidate.
    """
    on = comp & shell
    where = np.flatnonzero(on)
    if len(where) == 0:
        return []
    ids, n = pieces(on, where)
    order = np.argsort(ids, kind="stable")
    ends = np.cumsum(np.bincount(ids, minlength=n + 1)[1:])
    # (n, 3) x, y, z offsets, piece by piece, in um (x, y) and developed um (z)
    pts_all = np.ascontiguousarray(shells.offsets.reshape(3, -1)[::-1, where[order]].T) * np.array([vox_um, vox_um, step_um])
    arms, start = [], 0
    for end in ends:
        piece, start = pts_all[start:end], end
        if len(piece) >= params.min_arm_voxels:
            arms.append(_arm(piece, step_um))
    return arms


def _split_azimuth(pts: np.ndarray, params: DetectParams) -> list[np.ndarray]:
    """A shell piece's voxels ((n, 3) um from the candidate) as one prong, or as two where its
    azimuths are bimodal (criterion 4): two prongs close in angle touch in the shell.

    The azimuths of the piece's outer half (in radius) are split in two where the classes' variance
    is smallest (Otsu). Two prongs when the classes' means are ``split_deg`` or more apart and
    one straight line does not fit the piece in the plate plane: its voxels' root-mean-square
    distance from their principal axis is ``split_rms_um`` or more (a black prong is two to four
    voxels wide in the shell: about 0.9 um), and 0.6 of it or less about the two halves' own
    axes. Every voxel then goes to the nearer mean.
    """
    if params.split_deg <= 0 or len(pts) < 2 * params.min_arm_voxels:
        return [pts]
    r = np.hypot(pts[:, 0], pts[:, 1])
    a = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    rad = np.radians(a)
    mean = np.degrees(np.arctan2(np.sin(rad).sum(), np.cos(rad).sum()))
    a = (a - mean + 180.0) % 360.0 - 180.0
    h = len(r) // 2  # np.median(r), without its overhead: the middle value, or the mean of the middle two
    mid = np.partition(r, (h - 1, h))
    s = np.sort(a[r >= (mid[h] if len(r) % 2 else (mid[h - 1] + mid[h]) / 2)])
    n = len(s)
    if n < 2 * params.min_arm_voxels:
        return [pts]
    k = np.arange(params.min_arm_voxels, n - params.min_arm_voxels + 1)
    c = np.cumsum(s)
    m1, m2 = c[k - 1] / k, (c[-1] - c[k - 1]) / (n - k)
    best = int(np.argmax(k * (n - k) * (m2 - m1) ** 2))  # Otsu: the largest between-class variance
    lo, hi = float(m1[best]), float(m2[best])
    if hi - lo < params.split_deg:
        return [pts]
    side = np.abs(a - hi) < np.abs(a - lo)
    parts = [pts[~side], pts[side]]
    if min(len(q) for q in parts) < params.min_arm_voxels:
        return [pts]
    one = _across_rms(pts)
    if one < params.split_rms_um:
        return [pts]
    two = np.sqrt((_across_rms(parts[0]) ** 2 * len(parts[0]) + _across_rms(parts[1]) ** 2 * len(parts[1])) / len(pts))
    return parts if two <= 0.6 * one else [pts]


def _across_rms(pts: np.ndarray) -> float:
    """Root-mean-square distance (um) of the distinct plate-plane positions of ``pts`` from their principal axis."""
    xy = np.unique(pts[:, 0] + 1j * pts[:, 1])  # one row per plate-plane position (np.unique's axis=0 is slow)
    if len(xy) < 3:
        return 0.0
    return float(np.sqrt(max(np.linalg.eigvalsh(np.cov(np.stack([xy.real, xy.imag]), bias=True))[0], 0.0)))


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


def _boxes(ids: np.ndarray, coords: tuple[np.ndarray, ...]) -> dict[int, tuple[slice, ...]]:
    """The bounding box (slices) of each label in ``ids`` (not empty) from its voxels' coordinates."""
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    lo = [np.minimum.reduceat(c[order], starts) for c in coords]
    hi = [np.maximum.reduceat(c[order], starts) + 1 for c in coords]
    return {int(lab): tuple(slice(int(a[m]), int(b[m])) for a, b in zip(lo, hi, strict=True))
            for m, lab in enumerate(ids[starts])}


def _candidates(mask: np.ndarray, params: DetectParams):
    """Segments (labels), their bounding boxes and candidate points, densest first (criteria 2, 3).

    The window counts and their local maxima are computed only in each kept segment's box (with
    the margin the two windows need): most of a field is empty, and a count there is zero. Both
    are integer (:func:`scanstream.picker.voxels.window_reduce` on uint8), the same counts as a float box filter's.
    """
    labels, n = label26(mask)
    idx = np.flatnonzero(mask)  # about 1 % of the voxels: sizes and boxes from these alone
    ids = labels.ravel()[idx]
    sizes = np.bincount(ids, minlength=n + 1)
    small = sizes < params.min_voxels
    small[0] = True
    big = ~small
    keep = big[ids]
    boxes = _boxes(ids[keep], np.unravel_index(idx[keep], mask.shape)) if keep.any() else {}
    kept_ids = np.flatnonzero(big)
    half = params.peak_half
    pad = (2, 3 + half, 3 + half)  # the count window (1, 3, 3) plus the maximum's (1, half, half)
    at, dens_at = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for lab in kept_ids:
        box = boxes[lab]
        outer = tuple(slice(max(s.start - p, 0), min(s.stop + p, size)) for s, p, size in zip(box, pad, mask.shape, strict=True))
        on = mask[outer]  # a label is 0 (small) off the mask: look up only the voxels on it
        kept = np.zeros(on.shape, bool)
        kept[on] = big[labels[outer][on]]
        dens = window_reduce(kept.view(np.uint8), (1, 3, 3), np.add)  # at most 147: uint8
        top = window_reduce(dens, (1, half, half), np.maximum)
        inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer, strict=True))
        dens, top, kept = dens[inner], top[inner], kept[inner]
        peak = (dens == top) & kept & (dens >= params.min_density)
        z, y, x = np.nonzero(peak)
        at.append(np.ravel_multi_index((z + box[0].start, y + box[1].start, x + box[2].start), mask.shape))
        dens_at.append(dens[peak].astype(np.float32))
    flat, first = np.unique(np.concatenate(at), return_index=True)  # boxes may overlap: once each
    dens = np.concatenate(dens_at)[first]
    order = np.argsort(-dens, kind="stable")[: params.max_candidates]
    return labels, boxes, np.stack(np.unravel_index(flat[order], mask.shape), 1), dens[order]


class _SegmentVoxels:
    """The sharp 2 x 2-pixel voxels of each segment, as (n, 3) um (x, y, developed depth), cached."""

    def __init__(self, labels: np.ndarray, boxes: dict, masks: Masks, vox_um: float, step_um: float):
        self.labels, self.boxes, self.masks, self.vox_um, self.step_um = labels, boxes, masks, vox_um, step_um
        self.cache: dict[int, np.ndarray] = {}

    def of(self, lab: int) -> np.ndarray:
        if lab not in self.cache:
            box = self.boxes[lab]
            z, i, j = np.nonzero(self.labels[box] == lab)
            z, i, j = z + box[0].start, i + box[1].start, j + box[2].start
            r = self.masks.fine.shape[2] // self.labels.shape[2]  # fine voxels per voxel, each way
            dy, dx = (a.ravel() for a in np.mgrid[0:r, 0:r])
            fz, fy, fx = np.repeat(z, r * r), (i[:, None] * r + dy).ravel(), (j[:, None] * r + dx).ravel()
            on = self.masks.fine[fz, fy, fx]
            # fine voxel m is centred at (m - (r - 1) / 2) / r voxels in the voxels' frame
            c = (r - 1) / 2
            self.cache[lab] = np.stack([(fx[on] - c) * self.vox_um / r, (fy[on] - c) * self.vox_um / r,
                                        fz[on] * self.step_um], 1)
        return self.cache[lab]

    def near(self, lab: int, at: np.ndarray, params: DetectParams, shrinkage: float) -> np.ndarray:
        """Those of segment ``lab`` within ``max_length_um`` of ``at`` (um) in x, y and the same, undeveloped, in depth."""
        pts = self.of(lab)
        reach = (np.ceil(params.max_length_um / self.vox_um) + 0.5) * self.vox_um
        rz = (np.ceil(params.max_length_um / (self.step_um * shrinkage)) + 1.5) * self.step_um
        keep = ((np.abs(pts[:, 0] - at[0]) <= reach) & (np.abs(pts[:, 1] - at[1]) <= reach)
                & (np.abs(pts[:, 2] - at[2]) <= rz))
        return pts[keep]


def _prongs(at: tuple[int, int, int], lab: int, labels, masks: Masks, shells: _Shells, params: DetectParams,
            vox_um: float, step_um: float) -> tuple[list, bool]:
    """The prongs around voxel ``at`` on segment ``lab`` (criterion 4), and whether the wide shell gave them."""
    comp = shells.window(labels, masks.sharp, at, lab)
    shell, arms = shells.inner, _arms(comp, shells.inner, shells, params, vox_um, step_um)
    if len(arms) < 4:  # prongs close in angle may touch near the point and part farther out
        more = _arms(comp, shells.wide, shells, params, vox_um, step_um)
        if len(more) > len(arms):
            shell, arms = shells.wide, more
    if len(arms) >= 3:  # a vertex by criterion 5: its pieces split by azimuth
        arms = [_arm(pts, step_um) for a in arms for pts in _split_azimuth(a[4], params)]
    return arms, shell is shells.wide


def _recheck(at: np.ndarray, lab: int, near: np.ndarray, labels, masks: Masks, shells: _Shells, params: DetectParams,
             vox_um: float, step_um: float):
    """The recheck (criterion 6) at ``at`` (um): (prongs, refined position) of the voxel there, or None."""
    kk, ii, jj = (int(np.clip(round(v), 0, n - 1)) for v, n in
                  zip((at[2] / step_um, at[1] / vox_um, at[0] / vox_um), labels.shape, strict=True))
    arms, _ = _prongs((kk, ii, jj), lab, labels, masks, shells, params, vox_um, step_um)
    if len(arms) < 3 or is_crossing(arms, params):
        return None
    base = np.array([jj * vox_um, ii * vox_um, kk * step_um])
    arms = [(*a[:4], a[4] + base) for a in arms]
    at = refine(arms, near, base, params)
    if at is None or np.hypot(*(at[:2] - base[:2])) > params.r_inner:
        return None
    return arms, at


def _candidate(k: int, i: int, j: int, labels, masks: Masks, shells: _Shells, segs: _SegmentVoxels,
               params: DetectParams, vox_um: float, step_um: float, shrinkage: float):
    """Criteria 4-6 for one candidate: (multiplicity, position um, nearby voxels, prongs) or None."""
    lab = int(labels[k, i, j])
    arms, wide = _prongs((k, i, j), lab, labels, masks, shells, params, vox_um, step_um)
    if len(arms) < 3 or is_crossing(arms, params):
        return None
    base = np.array([j * vox_um, i * vox_um, k * step_um])
    arms = [(*a[:4], a[4] + base) for a in arms]  # voxels in field um from here on
    near = segs.near(lab, base, params, shrinkage)
    at = refine(arms, near, base, params)
    far = refine(arms, near, base, params, reach=2 * params.r_outer) if at is None and params.recheck else None
    if far is not None or (at is not None and wide and np.hypot(*(at[:2] - base[:2])) > params.r_inner):
        # the fit left the candidate: a vertex only if the prongs, seen from where it went, agree
        moved = _recheck(far if at is None else at, lab, near, labels, masks, shells, params, vox_um, step_um) if params.recheck else None
        if moved is None and (at is not None or wide):
            return None
        arms, at = moved if moved is not None else (arms, None)
    if at is None:
        if wide:  # a point beside a star sees its prongs in the wide shell: only a fit says where it is
            return None
        at = base
    # the crossing rule again, directions seen from the refined point (a candidate beside
    # the crossing sees its four prongs askew)
    if is_crossing([(a[4][:, 0].mean() - at[0], a[4][:, 1].mean() - at[1], *a[2:]) for a in arms], params):
        return None
    return len(arms), at, near, arms, lab


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
    masks = dark_masks(planes, params)
    labels, boxes, cand, density = _candidates(masks.dark, params)
    shells = _Shells.build(params, vox_um)
    segs = _SegmentVoxels(labels, boxes, masks, vox_um, step_um)
    found = []
    for (k, i, j), dens in zip(cand, density, strict=True):
        hit = _candidate(int(k), int(i), int(j), labels, masks, shells, segs, params, vox_um, step_um, shrinkage)
        if hit is not None:
            found.append((hit[0], float(dens), *hit[1:]))
    stars = []
    for group in _groups(found, params, step_um):
        _, dens, _, near, arms, lab = group[0]
        at = np.median(np.array([g[2] for g in group]), axis=0)
        lengths, dirs, misses, lines = prong_lines(near, at, arms, params, shrinkage)  # lines: criteria 6, 8
        miss = float(np.median(misses)) if misses else float("inf")
        stars.append((at, lab, Vertex(at[2] / step_um, at[1] / vox_um * f + (f - 1) / 2,
                                      at[0] / vox_um * f + (f - 1) / 2, len(lengths), lengths, dirs, dens, miss),
                      near, arms, lines))
    kept = one_per_star(stars, params)
    if params.origin_max_um <= 0:  # the displaced radon's origin is not looked for (the default)
        return kept
    by_id = {id(s[2]): s for s in stars}
    return [_with_origin(by_id[id(v)], params, vox_um, step_um, shrinkage) for v in kept]


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



def _with_origin(star: tuple, params: DetectParams, vox_um: float, step_um: float, shrinkage: float) -> Vertex:
    """A kept star's vertex with its second point (criterion 6, "Displaced radon"), or as it was.

    Looked for where four or more prongs are reported (two at the radon's point, two at the
    origin): :func:`scanstream.picker.vertexfit.second_point` over the prongs' free lines
    (:func:`origin_of`).
    """
    at, _, v, _, _, lines = star
    if v.multiplicity < 4:
        return v
    return origin_of(v, at, lines, params, vox_um, step_um, shrinkage)


#: A reported prong is on a free line when its end lies within this distance of it (um, plate
#: plane) and ahead of the line's point within 20 degrees: the end is on the prong's followed
#: line, anchored at the vertex, and a prong of the origin followed from the radon's point leans.
END_ON_UM = 1.5


def origin_of(v: Vertex, at: np.ndarray, lines: list, params: DetectParams, vox_um: float, step_um: float,
              shrinkage: float) -> Vertex:
    """The vertex ``v`` found at ``at`` (um: x, y, developed depth) with the second point its prongs'
    free lines ``lines`` meet at (:func:`scanstream.picker.vertexfit.second_point`), or ``v`` itself.

    The vertex stays where criterion 6 put it (moving it to its lines' crossing, or to the second
    point where more lines pass that, lost 3 of 1,029 alpha decays picked on tuning seeds, docs/pick.md,
    "Displaced radon"). A reported prong starts at the origin when its end is on one of the
    origin's lines (:data:`END_ON_UM`); at least two such prongs, or no origin. Their lengths and
    directions are then measured from the origin.
    """
    hit = second_point(lines, at, params, shrinkage)
    if hit is None:
        return v
    _, q, on, _ = hit
    scale = np.array([1.0, 1.0, shrinkage])
    ends = [np.asarray(at) + length * np.asarray(d) / scale for length, d in zip(v.track_lengths_um, v.directions, strict=True)]
    starts: set[int] = set()
    for k in on:
        u = lines[k][1]
        fits = [(line_miss(e, lines[k]), m) for m, e in enumerate(ends) if m not in starts
                and (e[:2] - q[:2]) @ u >= np.cos(np.radians(20.0)) * np.hypot(*(e[:2] - q[:2]))]
        if fits and min(fits)[0] <= END_ON_UM:
            starts.add(min(fits)[1])
    if len(starts) < 2:
        return v
    lengths, dirs = list(v.track_lengths_um), list(v.directions)
    for m in starts:
        d = (ends[m] - q) * scale
        n = float(np.linalg.norm(d))
        lengths[m], dirs[m] = round(n, 2), tuple(float(x) for x in d / max(n, 1e-9))
    f = params.voxel_px
    origin = (float(q[2] / step_um), float(q[1] / vox_um * f + (f - 1) / 2), float(q[0] / vox_um * f + (f - 1) / 2))
    return replace(v, track_lengths_um=tuple(lengths), directions=tuple(dirs), origin=origin, origin_prongs=len(starts))
