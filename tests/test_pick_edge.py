"""Overlapping fields: the simulator's sheet of overlapping fields, and each vertex owned by one field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from scanstream import store as st
from scanstream.cli import main
from scanstream.errors import InputError
from scanstream.physics.emulsion import ALPHA
from scanstream.picker import overlap as ov
from scanstream.picker.pick import pick_field, pick_volume
from scanstream.simulate.conditions import SheetConditions
from scanstream.simulate.objects import SimObject
from scanstream.simulate.render import render_planes, track_grains
from scanstream.simulate.volume import SheetCells, VolumeSimConfig, redraw_truth, simulate_volume

PX, STEP, N_PLANES, DEPTH = 0.283, 3.0, 11, 15.0
MM = PX / 1000


def square(index: int, x_mm: float, y_mm: float = 0.0, size: int = 100) -> ov.Footprint:
    return ov.Footprint(str(index), index, (x_mm, y_mm), (MM, 0.0, 0.0, MM), (size, size))


# -- ownership --------------------------------------------------------------------------------------


def test_edge_to_edge_fields_keep_every_vertex_they_find():
    fields = [square(0, 0.0), square(1, 100 * MM), square(2, 0.0, 100 * MM)]
    pts = np.random.default_rng(0).uniform(-50 * MM, 50 * MM, (500, 2))
    assert ov.owned(pts, fields[0], fields).all()
    past = np.array([[50.4 * MM, 0.0], [0.0, 50.4 * MM]])  # placed just past the last pixel, on a neighbour
    assert ov.owned(past, fields[0], fields).all()
    assert not ov.overlapping(fields[0], fields[1]) and ov.overlapping(fields[0], square(3, 98 * MM))


def test_overlapping_fields_split_at_the_middle_and_tile_without_gaps():
    fields = [square(i, (i % 2) * 80 * MM, (i // 2) * 80 * MM) for i in range(4)]  # 20 px overlaps
    pts = np.random.default_rng(1).uniform(-50 * MM, 130 * MM, (4000, 2))
    inside = np.any([f.contains(pts) for f in fields], axis=0)
    owners = np.array([ov.owned(pts, f, fields) & f.contains(pts) for f in fields])
    assert (owners.sum(axis=0)[inside] == 1).all()  # every scanned point has exactly one owner
    assert not owners[:, ~inside].any()
    nearest = np.argmin([np.hypot(*(pts - f.centre_mm).T) for f in fields], axis=0)
    np.testing.assert_array_equal(owners.argmax(axis=0)[inside], nearest[inside])  # Voronoi cells


def test_a_point_on_the_bisector_goes_to_the_field_listed_first():
    a, b = square(0, 0.0), square(1, 80 * MM)
    mid = np.array([[40 * MM, 0.0]])
    assert ov.owned(mid, a, [a, b]).tolist() == [True] and ov.owned(mid, b, [a, b]).tolist() == [False]


def test_a_field_scanned_twice_is_not_a_neighbour():
    a, again = square(0, 0.0), square(1, 0.0)
    pts = np.array([[0.0, 0.0], [10 * MM, -5 * MM]])
    assert ov.owned(pts, again, [a, again]).all() and ov.owned(pts, a, [a, again]).all()


def test_a_field_keeps_a_vertex_just_past_its_last_pixel_unless_a_neighbour_images_it():
    a, b = square(0, 0.0), square(1, 120 * MM)  # 20 px apart: no overlap
    past = np.array([[50.5 * MM, 0.0]])
    assert ov.owned(past, a, [a, b]).all()
    c = square(1, 90 * MM)  # overlapping: the point lies on c and nearer its centre
    assert not ov.owned(past, a, [a, c]).any()


def test_rotated_pixel_axes_are_followed():
    # 100 rows along -x, 40 columns along +y: the image is 100 px wide in x and 40 px in y
    f = ov.Footprint("0", 0, (0.0, 0.0), (0.0, -MM, MM, 0.0), (100, 40))
    assert f.contains(np.array([[49 * MM, 0.0], [0.0, 19 * MM], [0.0, 0.0]])).tolist() == [True, True, True]
    assert f.contains(np.array([[51 * MM, 0.0], [0.0, 21 * MM]])).tolist() == [False, False]


# -- the simulator ----------------------------------------------------------------------------------

SMALL = ["--fields", "4", "--seed", "7", "--objects-per-field", "3", "--alpha-fraction", "0.5", "--field-px", "128",
         "--depth-um", "12", "--no-progress"]
#: volume_hash of ``simulate-volume SMALL``, rendered by the simulator before --overlap-um existed
SMALL_HASH = "72184b6de320218faa7fe675640c7b36f91e08c915863bc8a9170c9560061feb"


def volume_hash(d: Path) -> str:
    """sha256 of every field's info.json and decoded planes, and the truth table with its metadata."""
    h = hashlib.sha256()
    for f in sorted(d.glob("F*")):
        h.update((f / "info.json").read_bytes())
        for png in sorted(f.glob("*.png")):
            with Image.open(png) as im:
                h.update(np.asarray(im).tobytes())
    t = pq.read_table(d / "truth.parquet")
    t = t.drop_columns([c for c in ("rn_dx_um", "rn_dy_um", "rn_dz_um") if c in t.column_names])  # added later, no draw
    h.update(json.dumps(t.to_pylist(), sort_keys=True).encode())
    h.update(t.schema.metadata[b"scanstream"])
    return h.hexdigest()


def test_without_overlap_the_volume_is_what_it_was(tmp_path, capsys):
    assert main(["simulate-volume", str(tmp_path / "sim"), *SMALL]) == 0
    capsys.readouterr()
    assert volume_hash(tmp_path / "sim") == SMALL_HASH


@pytest.mark.parametrize("value", ["-1", "18.2"])
def test_overlap_outside_zero_to_half_a_field_is_refused(tmp_path, capsys, value):
    assert main(["simulate-volume", str(tmp_path / "sim"), *SMALL, "--overlap-um", value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--overlap-um must be at least 0 and less than half the field (18.1 um), got {float(value)}")
    assert not (tmp_path / "sim").exists()


OVERLAP_PX = 40  # the overlap a whole number of pixels: a field's pixels fall on its neighbour's
SHEET = VolumeSimConfig(fields=4, seed=3, objects_per_field=6, alpha_fraction=0.5, field_px=128, depth_um=12.0,
                        overlap_um=OVERLAP_PX * PX)


def test_sheet_objects_lie_in_their_own_fields_region_once(tmp_path):
    truth = simulate_volume(tmp_path / "sim", SHEET).to_pylist()
    assert len(truth) == 4 * 6 and len({r["object_id"] for r in truth}) == 24
    info = [json.loads((tmp_path / "sim" / f"F{i:04d}" / "info.json").read_text()) for i in range(4)]
    pitch = (128 - OVERLAP_PX) * MM
    centres = np.array([(i["Images"][0]["x"], i["Images"][0]["y"]) for i in info])
    np.testing.assert_allclose(centres, [(0, 0), (pitch, 0), (0, pitch), (pitch, pitch)], atol=1e-6)
    fields = [square(k, c[0], c[1], 128) for k, c in enumerate(centres)]
    xy = np.array([[r["x_mm"], r["y_mm"]] for r in truth])
    owner = np.array([[ov.owned(p[None], f, fields)[0] and f.contains(p[None])[0] for f in fields] for p in xy])
    assert (owner.sum(axis=1) == 1).all()
    assert [f"F{k:04d}" for k in owner.argmax(axis=1)] == [r["field"] for r in truth]
    shared = [sum(f.contains(p[None])[0] for f in fields) > 1 for p in xy]
    assert any(shared)  # objects in the overlaps, listed once
    assert redraw_truth(tmp_path / "sim").to_pylist() == truth


def test_neighbouring_fields_show_the_same_grains_where_they_overlap():
    cond = SheetConditions()
    cells = SheetCells(SHEET, cond)
    half = 64 * PX
    a, b = cells.field_grains(0), cells.field_grains(1)
    shift = (128 - OVERLAP_PX) * PX
    in_a = (a[0][:, 0] > half - OVERLAP_PX * PX) & (a[0][:, 0] < half)
    in_b = (b[0][:, 0] + shift > half - OVERLAP_PX * PX) & (b[0][:, 0] + shift < half)
    assert in_a.sum() > 100
    key = np.round(a[0][in_a], 6), np.round(b[0][in_b] + [shift, 0, 0], 6)
    np.testing.assert_allclose(key[0][np.lexsort(key[0].T)], key[1][np.lexsort(key[1].T)], atol=1e-6)
    assert {tuple(p) for p in np.round(a[0], 3)} != {tuple(p) for p in np.round(b[0] + [shift, 0, 0], 3)}


# -- picking ----------------------------------------------------------------------------------------

SIZE, OVERLAP_UM = 512, 60.0
HALF = SIZE * PX / 2
PITCH = SIZE * PX - OVERLAP_UM  # field b's centre from field a's (x, um)
EDGE_STAR = (HALF - 8.5, 25.0)  # 8.5 um inside a's right edge: cut in a, 51 um inside b
SHARED_STAR = (PITCH / 2 - 4.5, -30.0)  # in the overlap, both fields image all of it; nearer a's centre


def star_at(x: float, y: float, lengths=(16.0, 18.0, 20.0, 22.0)) -> SimObject:
    v = np.array([x, y, DEPTH])
    ends = []
    for k, length in enumerate(lengths):
        phi, dip = 2 * np.pi * k / len(lengths) + 0.4, np.radians([20, -25, 10, -15][k])
        ends.append(v + length * np.array([np.cos(dip) * np.cos(phi), np.cos(dip) * np.sin(phi), np.sin(dip) / 1.95]))
    n = len(lengths)
    return SimObject("test", 1, np.array([v] * n), np.array(ends), np.full(n, ALPHA, np.int8), np.zeros(n),
                     np.full(n, np.nan), np.zeros(n), np.zeros((0, 4)), 0.0, 0.0)


def write_field(folder: Path, planes: np.ndarray, x_mm: float) -> None:
    """A stack folder in the scanner's format (plane k at stage z -3k um, the surface first)."""
    folder.mkdir(parents=True)
    for k, p in enumerate(planes):
        Image.fromarray(p).save(folder / f"{k:03d}.png")
    (folder / "info.json").write_text(json.dumps({
        "DocumentType": {"ver": "20170810", "unit": "mm"}, "EmulsionType": {"Experiment": "E07", "Module": 1, "Plate": 1, "Sh": 1.95},
        "ImageType": {"Height": SIZE, "Width": SIZE, "Depth": 8}, "Interval": [MM, MM, STEP / 1000],
        "Images": [{"Path": f"{k:03d}.png", "x": x_mm, "y": 0.0, "z": round(-k * STEP / 1000, 6)}
                   for k in range(len(planes))]}))


@pytest.fixture(scope="module")
def two_fields(tmp_path_factory):
    """Fields a (centre 0) and b (``PITCH`` um along x) overlapping by 60 um, one sheet's grains in both."""
    d = tmp_path_factory.mktemp("edge")
    cond = SheetConditions(fog=0.0, noise=2.0)
    rng = np.random.default_rng(5)
    box = {"xy_lo": (-HALF - 4, -HALF - 4), "xy_hi": (PITCH + HALF + 4, HALF + 4)}
    parts = [track_grains(star_at(*xy), cond, rng, 0.0, STEP * N_PLANES + 12, **box) for xy in (EDGE_STAR, SHARED_STAR)]
    pos, sig, opa = (np.concatenate([p[i] for p in parts]) for i in range(3))
    depths = np.arange(N_PLANES) * STEP
    for name, x_um in (("a", 0.0), ("b", PITCH)):
        planes = render_planes(pos - [x_um, 0, 0], sig, opa, depths, cond, np.random.default_rng(len(name) + ord(name)),
                               shape=(SIZE, SIZE), pixel_um=PX)
        write_field(d / "scan" / name, planes, round(x_um / 1000, 6))
    assert main(["ingest", str(d / "scan"), str(d / "v.zarr"), "--format", "stack", "--no-progress"]) == 0
    return d


def near(row: dict, xy_um: tuple[float, float]) -> bool:
    return np.hypot(row["x_mm"] * 1000 - xy_um[0], row["y_mm"] * 1000 - xy_um[1]) <= 2.0


def test_each_star_once_the_edge_star_from_the_neighbour(two_fields):
    d = two_fields
    vol = st.open_volume(d / "v.zarr")
    # without the rule, both fields image the shared star: the duplicate the rule removes
    alone = {f.source: pick_field(f, "s").rows for f in vol}
    assert any(near(r, SHARED_STAR) for r in alone["a"]) and any(near(r, SHARED_STAR) for r in alone["b"])
    res = pick_volume(d / "v.zarr", d / "c.zarr", processes=False, workers=1)
    rows = st.open_store(d / "c.zarr").table.to_pylist()
    assert res.objects_added == len(rows) == 2
    edge = [r for r in rows if near(r, EDGE_STAR)]
    shared = [r for r in rows if near(r, SHARED_STAR)]
    assert len(edge) == 1 and edge[0]["pick_field"] == "b"  # cut at a's edge, whole in b
    assert len(shared) == 1 and shared[0]["pick_field"] == "a"  # nearer a's centre
    counts = json.loads((d / "c.zarr" / "pick_fields.json").read_text())
    assert sorted(counts.values()) == [1, 1]
    again = pick_volume(d / "v.zarr", d / "c.zarr", processes=False, workers=1)  # a rerun: nothing to add
    assert again.fields_skipped == 2 and again.objects_added == 0 and st.open_store(d / "c.zarr").n == 2


def test_keep_owned_leaves_a_single_field_and_a_field_without_a_footprint_alone(two_fields):
    vol = st.open_volume(two_fields / "v.zarr")
    a = vol["a"]
    verts = [type("V", (), {"z": 5.0, "y": 256.0, "x": 500.0})()]  # in the overlap, nearer b's centre
    fields = ov.footprints(vol)
    assert ov.keep_owned(a, verts, fields) == []
    assert ov.keep_owned(a, verts, fields[:1]) == verts
    assert ov.keep_owned(a, verts, fields[1:]) == verts


def test_simulated_sheet_with_overlap_picks_through(tmp_path):
    """The simulator's overlapping sheet ingests and picks; no vertex is reported by two fields."""
    cfg = VolumeSimConfig(fields=2, seed=5, objects_per_field=3, alpha_fraction=1.0, field_px=256, depth_um=30.0,
                          overlap_um=20.0)
    simulate_volume(tmp_path / "sim", cfg)
    assert main(["ingest", str(tmp_path / "sim"), str(tmp_path / "v.zarr"), "--format", "stack", "--no-progress"]) == 0
    pick_volume(tmp_path / "v.zarr", tmp_path / "c.zarr", processes=False, workers=1)
    rows = st.open_store(tmp_path / "c.zarr").table.to_pylist()
    pos = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in rows]).reshape(-1, 3) * 1000
    fields = [r["pick_field"] for r in rows]
    for i in range(len(rows)):
        for j in range(i):
            assert fields[i] == fields[j] or np.linalg.norm(pos[i] - pos[j]) > 8.0


def test_config_refuses_a_bad_overlap():
    with pytest.raises(InputError, match="got 200.0"):
        VolumeSimConfig(field_px=1024, overlap_um=200.0)


def test_a_fields_neighbourhood_owns_exactly_what_the_whole_sheet_gives_it():
    """A pick task carries only its field's overlapping neighbours; ownership must not change."""
    from scanstream.picker.overlap import Footprint, neighbourhoods, owned

    axes, shape, pitch = (0.001, 0.0, 0.0, 0.001), (100, 100), 0.08  # 100 um fields, 20 um overlap
    fields = [Footprint(str(k), k, (pitch * (k % 5), pitch * (k // 5)), axes, shape) for k in range(25)]
    near = neighbourhoods(fields)
    assert max(len(v) for v in near.values()) == 9 and len(near["0"]) == 4  # 8 neighbours inside, 3 at a corner
    pts = np.random.default_rng(0).uniform(-0.05, 0.37, (4000, 2))
    for f in fields:
        assert near[f.name][0] is f
        assert np.array_equal(owned(pts, f, near[f.name]), owned(pts, f, fields))
    apart = [Footprint(str(k), k, (0.1 * k, 0.0), axes, shape) for k in range(3)]  # edge to edge
    assert all(len(v) == 1 for v in neighbourhoods(apart).values())
