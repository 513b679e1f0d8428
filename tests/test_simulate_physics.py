"""The simulator's physics and picker: range-energy table, decay chains, picker geometry."""

from __future__ import annotations

import numpy as np
import pytest

from scanstream.physics import emulsion as ph
from scanstream.physics.emulsion import ALPHA, MIP
from scanstream.physics.picker import PickerModel
from scanstream.simulate.conditions import SheetConditions
from scanstream.simulate.objects import SimObject, make_object
from scanstream.simulate.picker import pick_features

# docs/physics.md, "Alpha decays": ranges at 3.60 g/cm3 from the group's range-energy code
TABLE = {
    "Th-228": (5.423, 24.2),
    "Ra-224": (5.685, 25.9),
    "Rn-220": (6.288, 30.0),
    "Po-216": (6.778, 33.6),
    "Po-212": (8.785, 49.8),
    "Bi-212": (6.051, 28.4),
    "Ra-226": (4.784, 20.2),
    "Rn-222": (5.490, 24.6),
    "Po-218": (6.002, 28.0),
    "Po-214": (7.687, 40.6),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_range_energy_reproduces_the_table(name):
    e, r = TABLE[name]
    assert float(ph.alpha_range_um(e, 3.60)) == pytest.approx(r, abs=0.05)
    assert float(ph.alpha_energy_mev(r, 3.60)) == pytest.approx(e, abs=0.01)
    # the power law R = 1.98 E^1.48 agrees within about 1 um
    assert abs(1.98 * e**1.48 - float(ph.alpha_range_um(e))) < 1.0


def test_range_density_dependence_matches_po212_figures():
    assert float(ph.alpha_range_um(8.785, 3.50)) == pytest.approx(50.65, abs=0.1)
    assert float(ph.alpha_range_um(8.785, 3.815)) == pytest.approx(47.96, abs=0.15)


def test_range_is_monotonic_outside_the_table():
    e = np.linspace(0.5, 20, 200)
    r = ph.alpha_range_um(e)
    assert np.all(np.diff(r) > 0)
    assert np.allclose(ph.alpha_energy_mev(r), e, rtol=1e-9)


def test_proton_range_is_alpha_range_at_four_times_the_energy_minus_3_5_um():
    assert float(ph.proton_range_um(1.5)) == pytest.approx(float(ph.alpha_range_um(6.0)) - 3.5)
    assert 22 < float(ph.proton_range_um(1.5)) < 27  # "a 1.5 MeV proton travels about 25 um"


def test_alpha_ionisation_exceeds_proton_at_same_range():
    r = np.array([5.0, 20.0, 40.0])
    assert np.all(ph.relative_ionisation("alpha", r) > ph.relative_ionisation("proton", r))
    assert np.all(ph.relative_ionisation("mip", r) == 1.0)


def _stars(category: str, n: int, density: float):
    cond = SheetConditions(density=density)
    rng = np.random.default_rng(11)
    return [make_object(category, rng, cond) for _ in range(n)]


@pytest.mark.parametrize("density", [3.50, 3.60, 3.74])
def test_thorium_star_prong_ranges_follow_the_table(density):
    stars = _stars("alpha_th", 300, density)
    scale = (density / 3.60) ** -0.63
    by_nuclide: dict[str, list[float]] = {}
    branches = []
    for s in stars:
        assert s.label == 1 and s.truth["n_prongs"] == 5
        branches.append(s.truth["chain"])
        for nuc, r in zip(s.truth["nuclides"], s.truth["ranges_um"], strict=True):
            by_nuclide.setdefault(nuc, []).append(r)
    for nuc, ranges in by_nuclide.items():
        assert np.mean(ranges) == pytest.approx(TABLE[nuc][1] * scale, abs=0.35), nuc
        if len(ranges) > 80:
            assert 0.8 < np.std(ranges) < 1.2  # straggling sigma about 1 um
    assert branches.count("Th-Po212") / len(branches) == pytest.approx(0.64, abs=0.08)


def test_uranium_star_has_four_prongs_on_the_table_lines():
    stars = _stars("alpha_u", 150, 3.60)
    ranges = np.array([s.truth["ranges_um"] for s in stars])
    assert ranges.shape == (150, 4)
    assert np.allclose(ranges.mean(0), [TABLE[n][1] for n in ph.U_CHAIN], atol=0.35)
    energies = np.array([s.truth["energies_mev"] for s in stars])
    assert np.allclose(energies[0], [TABLE[n][0] for n in ph.U_CHAIN])


def _obj(starts, ends, kinds, *, residual=None, defocus=0.0) -> SimObject:
    k = len(kinds)
    return SimObject(
        category="test", label=0, starts=np.asarray(starts, float).reshape(k, 3), ends=np.asarray(ends, float).reshape(k, 3),
        kinds=np.asarray(kinds, np.int8), residual_end=np.zeros(k) if residual is None else np.asarray(residual, float),
        ionisation=np.full(k, np.nan), widths=np.zeros(k), blobs=np.zeros((0, 4)), defocus=defocus, depth=100.0,
    )


EXACT = PickerModel(noise_rel=0.0, noise_abs_um=0.0, p_black=1.0, p_mip=1.0)


def test_picker_measures_flat_prongs_exactly_without_noise():
    angles = np.radians([0, 72, 144, 216, 288])
    lengths = np.array([24.2, 25.9, 30.0, 33.6, 49.8])
    ends = np.stack([lengths * np.cos(angles), lengths * np.sin(angles), np.zeros(5)], axis=1)
    m, measured = pick_features(_obj(np.zeros((5, 3)), ends, [ALPHA] * 5), np.random.default_rng(0), EXACT)
    assert m == 5
    assert np.allclose(measured, np.sort(lengths)[::-1], atol=1e-3)


def test_picker_merges_overlapping_prongs():
    a = np.radians(5.0)
    ends = [[30, 0, 0], [25 * np.cos(a), 25 * np.sin(a), 0], [0, 30, 0]]
    m, measured = pick_features(_obj(np.zeros((3, 3)), ends, [ALPHA] * 3), np.random.default_rng(0), EXACT)
    assert m == 2  # 5 degrees apart: reported as one prong, the longer one
    assert measured[0] == pytest.approx(30.0)


def test_picker_sees_a_crossing_track_as_two_long_prongs():
    m, measured = pick_features(_obj([[-300, 0, 0]], [[300, 0, 0]], [MIP]), np.random.default_rng(0), EXACT)
    assert m == 2
    assert np.allclose(measured, EXACT.follow_um)  # followed out to the edge of its field


def test_picker_reads_depth_to_a_focal_plane_so_steep_prongs_look_short():
    # a vertical 24.2 um alpha at shrinkage 2.0: 12.1 um of developed depth, read as 12 (4 z-steps)
    m, measured = pick_features(_obj([[0, 0, 0]], [[0, 0, 12.1]], [ALPHA]), np.random.default_rng(0), EXACT)
    assert m == 1 and measured[0] == pytest.approx(24.0)
    m, measured = pick_features(_obj([[0, 0, 0]], [[0, 0, 13.4]], [ALPHA]), np.random.default_rng(0), EXACT)
    assert measured[0] == pytest.approx(24.0)  # 26.8 um, ends 1.4 um past the plane: looks short


def test_picker_ignores_segments_far_from_the_vertex_and_misses_undetected_tracks():
    far = _obj([[10, 10, 0]], [[40, 10, 0]], [ALPHA])
    assert pick_features(far, np.random.default_rng(0), EXACT)[0] == 0
    blind = PickerModel(p_mip=0.0)
    crossing = _obj([[-300, 0, 0]], [[300, 0, 0]], [MIP])
    assert pick_features(crossing, np.random.default_rng(0), blind)[0] == 0
