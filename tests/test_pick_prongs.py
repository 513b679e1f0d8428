"""The detector's prongs and where they meet (criteria 4-6 of scanstream.picker.detect): prongs close
in azimuth split inside a shell piece, 3-D lines where the plate-plane lines are nearly parallel,
and the vertex of a star whose radon atom moved before it decayed, with its origin (the second point)."""

from __future__ import annotations

import numpy as np
import pytest
from pickscenes import CENTRE, PX, SHRINK, STEP, TH_STAR, VERTEX_DEPTH, alpha_prongs, displaced_star, render_stack

from scanstream.picker import detect as dt
from scanstream.picker.detect import DetectParams, detect_vertices
from scanstream.picker.vertexfit import intersect, refine


def nearest(found, x_um: float, y_um: float) -> tuple[float, object]:
    """(x-y distance in um, vertex) of the found vertex nearest to (x_um, y_um) from the field centre."""
    d = [np.hypot((v.x - CENTRE) * PX - x_um, (v.y - CENTRE) * PX - y_um) for v in found]
    k = int(np.argmin(d))
    return float(d[k]), found[k]


def prong_voxels(azimuth_deg: float, *, beside_um: float = 0.0, half_width_um: float = 1.2) -> np.ndarray:
    """Shell voxels (um, (n, 3), a 1.13 um lattice, r 4-9 um, two planes) of a black prong at
    ``azimuth_deg`` passing ``beside_um`` from the candidate, as wide as criterion 4 sees one
    (two to four voxels)."""
    g = np.arange(-9, 10) * 1.13
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    u = np.array([np.cos(np.radians(azimuth_deg)), np.sin(np.radians(azimuth_deg))])
    along, across = x * u[0] + y * u[1], -x * u[1] + y * u[0] - beside_um
    keep = (np.hypot(x, y) >= 4.0) & (np.hypot(x, y) <= 9.0) & (along > 0) & (np.abs(across) <= half_width_um)
    xy = np.stack([x[keep], y[keep]], 1)
    return np.concatenate([np.c_[xy, np.zeros(len(xy))], np.c_[xy, np.full(len(xy), 3.0)]])


@pytest.mark.parametrize("gap_deg", [18.0, 25.0])
def test_a_shell_piece_of_two_prongs_close_in_azimuth_is_split(gap_deg):
    one, other = prong_voxels(30.0), prong_voxels(30.0 + gap_deg)
    piece = np.unique(np.concatenate([one, other]), axis=0)
    parts = dt._split_azimuth(piece, DetectParams())
    assert len(parts) == 2
    az = sorted(float(np.degrees(np.arctan2(p[:, 1].mean(), p[:, 0].mean()))) for p in parts)
    assert abs(az[0] - 30.0) < 5.0 and abs(az[1] - 30.0 - gap_deg) < 5.0, az
    assert len(dt._split_azimuth(piece, DetectParams(split_deg=0))) == 1


@pytest.mark.parametrize("beside_um, half_width_um", [(0.0, 0.6), (0.0, 1.2), (0.0, 1.7), (1.5, 1.2), (2.5, 1.2)])
def test_one_prong_wide_or_beside_the_candidate_stays_one(beside_um, half_width_um):
    piece = prong_voxels(30.0, beside_um=beside_um, half_width_um=half_width_um)
    assert len(dt._split_azimuth(piece, DetectParams())) == 1


@pytest.mark.parametrize("azimuths, dips", [
    ((20, 35, 150, 260), (10, -5, 15, -10)),  # two prongs 15 degrees apart, plus two more
    ((20, 35, 150, 260), (0, 0, 0, 0)),
    ((200, 216, 80, 320), (-10, 5, 0, 15)),
    ((110, 126, 240, 350), (5, -5, 10, -10)),
])
def test_collinear_prong_star_is_found_with_its_multiplicity(azimuths, dips):
    """Four prongs, two of them 15-16 degrees apart: multiplicity 4 with the split, 3 without it
    (``split_deg`` 0: the two touching prongs are one shell piece)."""
    planes = render_stack([alpha_prongs([[0, 0, VERTEX_DEPTH]] * 4, azimuths, dips, (30, 26, 34, 28))])
    for params, want in ((DetectParams(), 4), (DetectParams(split_deg=0), 3)):
        found = detect_vertices(planes, pixel_um=PX, step_um=STEP, shrinkage=SHRINK, params=params)
        assert found
        miss, v = nearest(found, 0.0, 0.0)
        assert miss <= 2.0 and abs(v.z * STEP - VERTEX_DEPTH) <= STEP
        assert v.multiplicity == want, (params.split_deg, v)


def test_nearly_parallel_plate_plane_lines_are_crossed_in_3d():
    # three prongs within 20 degrees in azimuth, dipping differently: their plate-plane lines
    # nearly coincide, their 3-D lines cross at the vertex (5, 5, 12) um
    vertex = np.array([5.0, 5.0, 12.0])
    rng = np.random.default_rng(1)
    arms, near = [], []
    for az, dip in ((0.0, 40.0), (10.0, -5.0), (20.0, -40.0)):
        a, d = np.radians(az), np.radians(dip)
        u = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
        pts = vertex + np.linspace(1.0, 20.0, 40)[:, None] * u + rng.normal(0.0, 0.15, (40, 3))
        near.append(pts)
        arms.append((*(pts[10:20].mean(0) - vertex)[:2], 0.0, 10, pts[8:20]))
    near = np.concatenate(near)
    start = vertex + np.array([2.0, 0.5, 0.0])
    at = refine(arms, near, start, DetectParams(line3d_below=1.0))
    assert at is not None and np.linalg.norm(at[:2] - vertex[:2]) <= 1.0, at
    plain = refine(arms, near, start, DetectParams(line3d_below=0.0))
    assert plain is None or np.linalg.norm(plain[:2] - vertex[:2]) > np.linalg.norm(at[:2] - vertex[:2])


def test_lines_meeting_at_two_points_give_the_point_most_meet():
    # three lines through (4, 0), two through the origin: the radon's point and the star's origin
    lines = [(np.array([4.0, 0.0]), np.array([np.cos(a), np.sin(a)])) for a in np.radians([10.0, 130.0, 250.0])]
    lines += [(np.zeros(2), np.array([np.cos(a), np.sin(a)])) for a in np.radians([60.0, 300.0])]
    assert np.allclose(intersect(lines, 1.0), [4.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("shift", [(2.5, 1.0, 0.0), (-1.5, 2.5, 1.0)])
def test_displaced_radon_star_gives_a_vertex_at_the_radon_point(shift):
    # Th-228 and Ra-224 from the origin; Rn-220, Po-216 and Po-212 from where the radon moved: the
    # simulator's truth vertex (scanstream.simulate.objects.make_alpha)
    _, moved, obj = displaced_star(shift)
    found = detect_vertices(render_stack([obj], seed=2), pixel_um=PX, step_um=STEP, shrinkage=SHRINK)
    assert found
    miss, v = nearest(found, moved[0], moved[1])
    assert miss <= 2.0, [(v.x, v.y, v.multiplicity) for v in found]
    assert v.multiplicity >= 3


@pytest.mark.parametrize("azimuths, dips, seed, steeper", [
    ((20, 110, 200, 290), (65, -70, 10, -15), 0, False),  # two prongs dipping 60-75 degrees
    ((40, 160, 250, 330), (-60, 75, 5, -20), 1, False),
    ((0, 90, 180, 270), (70, 62, -10, 20), 0, False),
    ((20, 110, 200, 290), (75, -80, 70, -15), 0, True),  # three dipping 70-80 degrees
    ((20, 110, 200, 290), (75, -80, 70, -15), 1, True),
    ((40, 160, 250, 330), (-78, 82, 65, -20), 0, True),
    ((40, 160, 250, 330), (-78, 82, 65, -20), 1, True),
])
def test_star_with_steep_prongs_is_found_within_2_um(azimuths, dips, seed, steeper):
    """Steep prongs' lines are fitted in 3-D and projected (``steep_ratio``): the plate-plane tube
    holds only a few of their voxels. Without it, the stars with three prongs dipping 70-80
    degrees are placed 2.2-8 um off."""
    planes = render_stack([alpha_prongs([[0, 0, VERTEX_DEPTH]] * 4, azimuths, dips, (30, 26, 34, 28))], seed=seed)
    found = detect_vertices(planes, pixel_um=PX, step_um=STEP, shrinkage=SHRINK)
    assert found
    miss, v = nearest(found, 0.0, 0.0)
    assert miss <= 2.0 and abs(v.z * STEP - VERTEX_DEPTH) <= STEP, (miss, v)
    assert v.multiplicity >= 3
    if steeper:
        plain = detect_vertices(planes, pixel_um=PX, step_um=STEP, shrinkage=SHRINK, params=DetectParams(steep_ratio=0))
        assert not plain or nearest(plain, 0.0, 0.0)[0] > miss


#: The detector with the displaced radon's second point looked for (off by default).
ORIGINS = DetectParams(origin_max_um=10.0)


def first_alphas(v) -> list[tuple[float, np.ndarray]]:
    """(length um, unit direction) of the prongs of ``v`` pointing within 20 degrees of the star's first
    two alphas (azimuths 100 and 230 degrees, :data:`pickscenes.TH_STAR`), each found once."""
    out = []
    for az in TH_STAR[0][:2]:
        near = [(length, np.array(d)) for length, d in zip(v.track_lengths_um, v.directions, strict=True)
                if abs((np.degrees(np.arctan2(d[1], d[0])) - az + 180.0) % 360.0 - 180.0) <= 20.0]
        assert len(near) == 1, (az, v.track_lengths_um, v.directions)
        out.append(near[0])
    return out


@pytest.mark.parametrize("shift, seed", [((2.5, 1.0, 0.0), 2), ((2.5, 1.0, 0.0), 3), ((4.0, -3.0, 0.0), 3),
                                         ((1.0, 3.5, 0.0), 2), ((1.0, 3.5, 0.0), 3), ((-2.5, -1.0, -1.0), 3)])
def test_displaced_radon_star_reports_its_origin_and_the_first_alphas_from_it(shift, seed):
    """The second point (criterion 6, "Displaced radon") within 1 um in x, y and a plane in depth of
    the star's origin, two prongs starting there, and the first alphas' lengths from it within 1.5 um
    of their true lengths, closer in all than the same tracks' ends measured from the vertex."""
    origin, moved, obj = displaced_star(shift)
    planes = render_stack([obj], seed=seed)
    found = detect_vertices(planes, pixel_um=PX, step_um=STEP, shrinkage=SHRINK, params=ORIGINS)
    miss, v = nearest(found, moved[0], moved[1])
    assert miss <= 2.0 and v.origin is not None and v.origin_prongs == 2, (miss, v)
    off = detect_vertices(planes, pixel_um=PX, step_um=STEP, shrinkage=SHRINK)  # the default looks for none
    assert all(w.origin is None for w in off) and [(w.x, w.y, w.z) for w in off] == [(w.x, w.y, w.z) for w in found]
    oz, oy, ox = v.origin
    at_origin = np.array([(ox - CENTRE) * PX, (oy - CENTRE) * PX, oz * STEP])
    assert np.hypot(*(at_origin[:2] - origin[:2])) <= 1.0 and abs(at_origin[2] - VERTEX_DEPTH) <= STEP, v.origin
    at_vertex = np.array([(v.x - CENTRE) * PX, (v.y - CENTRE) * PX, v.z * STEP])
    scale = np.array([1.0, 1.0, SHRINK])
    errs, from_vertex = [], []
    for (length, d), want in zip(first_alphas(v), TH_STAR[2][:2], strict=True):
        end = at_origin * scale + length * d  # undeveloped um
        errs.append(abs(length - want))
        from_vertex.append(abs(float(np.linalg.norm(end - at_vertex * scale)) - want))
    assert max(errs) <= 1.5 and sum(errs) < sum(from_vertex), (errs, from_vertex)


def black_track_beside(offset_um: float, azimuth_deg: float):
    """A straight black track 90 um long in the plate plane passing ``offset_um`` beside the field centre."""
    a = np.radians(azimuth_deg)
    u, n = np.array([np.cos(a), np.sin(a), 0.0]), np.array([-np.sin(a), np.cos(a), 0.0])
    start = np.array([0.0, 0.0, VERTEX_DEPTH]) + offset_um * n - 45.0 * u
    return alpha_prongs([start], (azimuth_deg,), (0.0,), (90.0,))


@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("track", [None, (1.5, 60.0), (3.0, 200.0)])
def test_star_whose_radon_did_not_move_reports_no_origin(seed, track):
    """All five prongs from one point, alone or with a black track through the star 1.5-3 um beside it:
    a vertex, and no second point."""
    origin, _, obj = displaced_star((0.0, 0.0, 0.0))
    objects = [obj] if track is None else [obj, black_track_beside(*track)]
    found = detect_vertices(render_stack(objects, seed=seed), pixel_um=PX, step_um=STEP, shrinkage=SHRINK, params=ORIGINS)
    miss, v = nearest(found, origin[0], origin[1])
    assert miss <= 2.0 and v.multiplicity >= 4, (miss, v)
    assert all(w.origin is None and w.origin_prongs == 0 for w in found), found
