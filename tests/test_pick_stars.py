"""Each star once (criterion 8 of scanstream.picker.detect): duplicate vertices of one star are merged."""

from __future__ import annotations

import numpy as np
import pytest
from pickscenes import PX, SHRINK, SIZE, STEP, VERTEX_DEPTH, alpha_prongs, render_stack

from scanstream.picker.detect import DetectParams, Vertex, detect_vertices
from scanstream.picker.prongs import free_lines, prong_fits
from scanstream.picker.stars import crossing, one_per_star, same_tracks_once
from scanstream.simulate.objects import SimObject

DEPTH = VERTEX_DEPTH
CENTRE = (SIZE - 1) / 2


def vertex(multiplicity: int, miss: float, tag: float = 0.0) -> Vertex:
    return Vertex(tag, 0.0, 0.0, multiplicity, (30.0,) * multiplicity, ((1.0, 0.0, 0.0),) * multiplicity, 100.0, miss)


def star(x: float, y: float, z: float, lab: int, multiplicity: int, miss: float, tag: float):
    """A vertex with no voxels: its group has no free lines, so the best measured is kept."""
    return np.array([x, y, z]), lab, vertex(multiplicity, miss, tag), np.zeros((0, 3)), []


def kept(stars, params=None) -> list[float]:
    return sorted(v.z for v in one_per_star(stars, params or DetectParams()))


def test_without_lines_the_better_measured_is_kept():
    # the point 6 um out sees five prongs whose lines miss it; the star's point sees four through it
    stars = [star(0, 0, 0, 1, 5, 0.9, 0.0), star(6, 0, 0, 1, 4, 0.1, 1.0)]
    assert kept(stars) == [1.0]
    assert kept(stars[::-1]) == [1.0]  # not the order of detection
    # three reported prongs before closer lines; among fewer, the closer lines
    assert kept([star(0, 0, 0, 1, 2, 0.01, 0.0), star(5, 0, 0, 1, 3, 0.6, 1.0)]) == [1.0]
    assert kept([star(0, 0, 0, 1, 2, 0.01, 0.0), star(5, 0, 0, 1, 1, 0.6, 1.0)]) == [0.0]
    assert kept([star(0, 0, 0, 1, 6, 0.19, 0.0), star(0.4, 0, 7.8, 1, 4, 0.07, 1.0)]) == [1.0]


@pytest.mark.parametrize("other", [
    star(0.0, 0.0, 0.0, 2, 3, 0.5, 1.0),  # another segment: another object
    star(8.5, 0.0, 0.0, 1, 3, 0.5, 1.0),  # beyond star_um in x, y
    star(0.0, 0.0, 12.5, 1, 3, 0.5, 1.0),  # beyond star_dz_um in depth
])
def test_vertices_apart_or_on_other_segments_are_kept(other):
    assert kept([star(0, 0, 0, 1, 4, 0.1, 0.0), other]) == [0.0, 1.0]


def test_merge_can_be_switched_off_and_chains_do_not_merge_through():
    stars = [star(0, 0, 0, 1, 4, 0.1, 0.0), star(6, 0, 0, 1, 3, 0.5, 1.0), star(12, 0, 0, 1, 3, 0.2, 2.0)]
    assert kept(stars, DetectParams(star_um=0.0)) == [0.0, 1.0, 2.0]
    assert kept([]) == []
    # 12 um from the best, kept; the middle one is within 8 um of both and goes
    assert kept(stars) == [0.0, 2.0]


def line(x: float, y: float, azimuth_deg: float, *, z: float = 10.0, slope: float = 0.0, n: int = 40) -> tuple:
    a = np.radians(azimuth_deg)
    return np.array([x, y]), np.array([np.cos(a), np.sin(a)]), z, slope, n


def slow_crossing(lines, near, within_um):
    """Reference: the best-supported point on a 0.05 um grid within ``within_um`` of ``near``, by brute force."""
    g = np.arange(-within_um, within_um + 1e-9, 0.05)
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    pts = np.concatenate([c + np.stack([gx, gy], 1)[np.hypot(gx, gy) <= within_um] for c in near])
    score = np.zeros(len(pts))
    for p, u, *_ in lines:
        q = pts - p
        score += np.exp(-0.5 * (q[:, 0] * u[1] - q[:, 1] * u[0]) ** 2)
    return pts[np.argmax(score)]


@pytest.mark.parametrize("seed", range(4))
def test_crossing_is_where_most_lines_meet_against_a_grid_search(seed):
    rng = np.random.default_rng(seed)
    true = rng.uniform(-3, 3, 2)
    lines = [line(*(true + rng.normal(0, 0.1, 2)), a) for a in rng.uniform(0, 45) + np.arange(4) * 90 + rng.normal(0, 10, 4)]
    # seen askew from a point beside the star: two lines that pass 3-5 um off the point
    for a in rng.uniform(0, 360, 2):
        side = np.radians(a + 90)
        lines.append(line(*(true + rng.uniform(3, 5) * np.array([np.cos(side), np.sin(side)])), a))
    near = np.array([true + (0.5, 0.0), true + (5.0, 2.0)])
    x = crossing(lines, near, within_um=8.0)
    assert np.hypot(*(x[:2] - true)) < 0.3
    assert np.hypot(*(x[:2] - slow_crossing(lines, near, 8.0))) < 0.3


def test_crossing_needs_lines_meeting_in_depth_and_at_an_angle():
    near = np.array([[0.0, 0.0]])
    # two tracks crossing in the plate plane 12 um apart in depth, and a third meeting neither
    assert crossing([line(0, 0, 0, z=10), line(0, 0, 90, z=22)], near, within_um=8.0) is None
    three = [line(0, 0, 0, z=10), line(0, 0, 90, z=10), line(0, 3, 45, z=22)]
    assert crossing(three, near, within_um=8.0).round(6).tolist() == [0.0, 0.0, 10.0]
    assert crossing([line(0, 0, 0), line(0, 1, 10)], near, within_um=8.0) is None  # 10 degrees apart
    assert crossing([line(0, 0, 0), line(20, 0, 90)], near, within_um=8.0) is None  # meet 20 um away
    assert crossing([], near, within_um=8.0) is None


def test_one_track_seen_from_two_vertices_counts_once():
    a, b, c = line(0, 0, 0, n=50), line(5, 0.3, 8, n=80), line(0, 0, 90, n=20)
    assert [ln[4] for ln in same_tracks_once([a, b, c])] == [80, 20]
    assert len(same_tracks_once([a, line(0, 3, 0)])) == 2  # parallel tracks 3 um apart


def alpha_star(azimuths, dips, lengths, at=(0.0, 0.0)) -> SimObject:
    """An alpha star at ``at`` (um from the field centre), prongs at the given azimuths and dips (degrees)."""
    return alpha_prongs([(*at, DEPTH)] * len(azimuths), azimuths, dips, lengths)


def prong_voxels(center, azimuths, dips, lengths) -> list[np.ndarray]:
    """Sharp voxels (um: x, y, developed depth) every 0.3 um along each straight prong from ``center``."""
    out = []
    for a, d, length in zip(np.radians(azimuths), np.radians(dips), lengths, strict=True):
        u = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d) / SHRINK])
        out.append(np.arange(0.3, length + 1e-9, 0.3)[:, None] * u + center)
    return out


def shell_pieces(per: list[np.ndarray], at: np.ndarray) -> list[tuple]:
    """Criterion 4's prongs seen from ``at``: each prong's voxels 4-9 um from it in the plate plane,
    a prong through the shell twice giving two pieces (before and after its point nearest ``at``)."""
    arms = []
    for p in per:
        r = np.hypot(*(p - at)[:, :2].T)
        on = (r >= 4.0) & (r <= 9.0)
        for side in (np.arange(len(p)) < np.argmin(r), np.arange(len(p)) >= np.argmin(r)):
            if (on & side).sum() >= 2:
                arms.append((0, 0, 0, 0, p[on & side]))
    return arms


@pytest.mark.parametrize("out_um, prong", [(5.0, 0), (6.5, 0), (7.5, 2), (6.0, 3)])
def test_a_duplicate_beside_a_star_is_merged_onto_the_star_point(out_um, prong):
    """A duplicate 5-7.5 um out on one of a star's prongs that measures better by its own (anchored)
    lines and has more prongs: the crossing of the free lines is at the star's point, and the vertex
    kept is the one there."""
    center = np.array([40.0, 30.0, 20.0])
    az, dips, lengths = (0.0, 100.0, 200.0, 280.0), (5.0, -10.0, 15.0, 0.0), (35.0, 30.0, 28.0, 32.0)
    per = prong_voxels(center, az, dips, lengths)
    near = np.concatenate(per)
    beside = per[prong][np.argmin(np.abs(np.hypot(*(per[prong] - center)[:, :2].T) - out_um))]
    true_vertex, dup = vertex(4, 0.3, 0.0), vertex(5, 0.1, 1.0)
    stars = [(center, 1, true_vertex, near, shell_pieces(per, center)), (beside, 1, dup, near, shell_pieces(per, beside))]
    assert np.hypot(*(beside - center)[:2]) == pytest.approx(out_um * abs(np.cos(np.radians(dips[prong]))), abs=0.4)
    assert kept(stars) == [0.0] and kept(stars[::-1]) == [0.0]
    # without voxels the better measured, the duplicate, is kept (the rule before the free lines)
    assert kept([(*t[:3], np.zeros((0, 3)), []) for t in stars]) == [1.0]


@pytest.mark.parametrize("apart_um", [10.0, 11.0, 12.0])
def test_two_stars_apart_on_one_segment_stay_two(apart_um):
    """Star A's first prong ends at star B's point: one segment, two stars."""
    a = alpha_star((0, 130, 230), (5, -20, 15), (apart_um, 30, 35), at=(-apart_um / 2, 0.0))
    b = alpha_star((40, -50, 110), (-10, 20, 10), (32, 28, 25), at=(apart_um / 2, 0.0))
    found = detect_vertices(render_stack([a, b], seed=1), pixel_um=PX, step_um=STEP, shrinkage=SHRINK)
    assert len(found) == 2
    for v, x in zip(sorted(found, key=lambda v: v.x), (-apart_um / 2, apart_um / 2), strict=True):
        assert np.hypot((v.x - CENTRE) * PX - x, (v.y - CENTRE) * PX) < 2.0


def test_free_lines_do_not_depend_on_the_vertex_they_are_seen_from():
    """Sharp voxels every 0.3 um along three straight prongs, followed from the star's point and
    from points 1.5-3 um beside it: the free lines are the same tracks (within 1 degree and 0.1 um),
    while the followed lines of criterion 7, anchored at the vertex, are pulled towards it."""
    center = np.array([10.0, -20.0, 30.0])
    per = []
    for a, d, length in zip(np.radians([20, 140, 260]), np.radians([10, -15, 5]), [35.0, 30.0, 40.0], strict=True):
        u = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d) / SHRINK])
        per.append(np.arange(0.3, length + 1e-9, 0.3)[:, None] * u + center)
    near = np.concatenate(per)
    params = DetectParams()
    truth = free_lines(near, center, [(0, 0, 0, 0, p[np.hypot(*(p - center)[:, :2].T) >= 4.0][:15]) for p in per], params)
    assert len(truth) == 3
    for ln in truth:
        assert abs((ln[0] - center[:2])[0] * ln[1][1] - (ln[0] - center[:2])[1] * ln[1][0]) < 0.05
    for shift in ([1.5, 0.0, 0.0], [0.0, -2.0, 3.0], [-2.1, 2.1, 0.0]):
        at = center + shift
        arms = [(0, 0, 0, 0, p[(np.hypot(*(p - at)[:, :2].T) >= 4.0) & (np.hypot(*(p - at)[:, :2].T) <= 9.0)]) for p in per]
        seen = free_lines(near, at, arms, params)
        assert len(seen) == 3
        for a, b in zip(truth, seen, strict=True):
            assert float(a[1] @ b[1]) > np.cos(np.radians(1.0))
            q = b[0] - a[0]
            assert abs(q[0] * a[1][1] - q[1] * a[1][0]) < 0.1
            assert abs(b[2] + b[3] * float((a[0] - b[0]) @ b[1]) - a[2]) < 0.2  # the same depth
        # the followed lines pass nearer the vertex than the 1.5-3 um the true lines miss it by
        _, _, misses = prong_fits(near, at, arms, params, SHRINK)
        true_miss = [abs((at[:2] - ln[0])[0] * ln[1][1] - (at[:2] - ln[0])[1] * ln[1][0]) for ln in truth]
        assert np.median(misses) < np.median(true_miss)
