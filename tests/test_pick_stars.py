"""Each star once (criterion 8 of scanstream.picker.detect): duplicate vertices of one star are merged."""

from __future__ import annotations

import numpy as np
import pytest

from scanstream.picker.detect import DetectParams, Vertex
from scanstream.picker.stars import one_per_star


def vertex(multiplicity: int, miss: float, tag: float = 0.0) -> Vertex:
    return Vertex(tag, 0.0, 0.0, multiplicity, (30.0,) * multiplicity, ((1.0, 0.0, 0.0),) * multiplicity, 100.0, miss)


def star(x: float, y: float, z: float, lab: int, multiplicity: int, miss: float, tag: float):
    return np.array([x, y, z]), lab, vertex(multiplicity, miss, tag)


def kept(stars, params=None) -> list[float]:
    p = params or DetectParams()
    return sorted(v.z for v in one_per_star(stars, star_um=p.star_um, star_dz_um=p.star_dz_um))


def test_a_duplicate_beside_the_star_is_merged_into_the_better_measured():
    # the point 6 um out sees five prongs whose lines miss it; the star's point sees four through it
    stars = [star(0, 0, 0, 1, 5, 0.9, 0.0), star(6, 0, 0, 1, 4, 0.1, 1.0)]
    assert kept(stars) == [1.0]
    assert kept(stars[::-1]) == [1.0]  # not the order of detection


def test_three_reported_prongs_come_before_a_closer_line():
    stars = [star(0, 0, 0, 1, 2, 0.01, 0.0), star(5, 0, 0, 1, 3, 0.6, 1.0)]
    assert kept(stars) == [1.0]
    # among vertices of fewer than three prongs, the closer lines
    assert kept([star(0, 0, 0, 1, 2, 0.01, 0.0), star(5, 0, 0, 1, 1, 0.6, 1.0)]) == [0.0]


def test_the_same_point_planes_apart_is_one_star():
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
    # 12 um from the best, kept; the middle one is within 8 um of both and goes
    assert kept(stars) == [0.0, 2.0]
