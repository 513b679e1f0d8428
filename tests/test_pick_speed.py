"""The pick path's speed work: opening one field, the separable crop resampling, the run's
timing split and the side-by-side measurement (issue 27, Speed). No timing is asserted."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from scanstream.cli import main
from scanstream.errors import InputError, StoreNotFoundError
from scanstream.picker.darkmasks import voxel_sums
from scanstream.picker.detect import DetectParams
from scanstream.picker.pick import ANTIALIAS_PX, crop_planes, pick_volume
from scanstream.picker.prongs import free_lines, prong_fits, prong_lines
from scanstream.picker.speed import pick_speed
from scanstream.picker.voxels import label26, pieces, window_reduce
from scanstream.store.schema import CROP_SIZE, PIXEL_SIZE_UM
from scanstream.store.shards import read_all_planes
from scanstream.store.volume import open_field, open_volume


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """Two simulated fields of 256 px, a 12 um slab, alpha decays among the objects."""
    d = tmp_path_factory.mktemp("speed")
    assert main(["simulate-volume", str(d / "sim"), "--fields", "2", "--seed", "3", "--objects-per-field", "4",
                 "--alpha-fraction", "0.75", "--field-px", "256", "--depth-um", "12", "--no-progress"]) == 0
    assert main(["ingest", str(d / "sim"), str(d / "v.zarr"), "--format", "stack", "--no-progress"]) == 0
    return d / "v.zarr"


def test_open_field_is_the_volumes_field(volume):
    for whole in open_volume(volume):
        one = open_field(volume, whole.name)
        assert (one.name, one.source, one.pixel_size_um, one.step_um) == (whole.name, whole.source,
                                                                          whole.pixel_size_um, whole.step_um)
        assert one.attrs == whole.attrs and len(one.levels) == len(whole.levels)
        np.testing.assert_array_equal(one.stage_z_mm, whole.stage_z_mm)
        np.testing.assert_array_equal(one.read(), whole.read())


def sharded(path, nz=5, per=2, **kw):
    """A uint8 array like a volume's level 0: one chunk a plane, ``per`` planes a shard, zstd."""
    kw = {"chunks": (1, 6, 7), "shards": (per, 6, 7), "compressors": zarr.codecs.ZstdCodec(level=3), **kw}
    return zarr.create_array(str(path), shape=(nz, 6, 7), dtype="uint8", fill_value=9, **kw)


def test_shards_read_as_zarr_reads_them(volume, tmp_path):
    for f in open_volume(volume):  # the ingested store's layout: straight from the shards
        planes = read_all_planes(f.data)
        assert planes is not None
        np.testing.assert_array_equal(planes, np.asarray(f.data[:]))
        np.testing.assert_array_equal(f.read(np.array([1, 0])), planes[[1, 0]])  # not a slice: through zarr
        np.testing.assert_array_equal(f.read(slice(1, 3)), planes[1:3])
    a = sharded(tmp_path / "a.zarr")  # shard 1 never written, shard 2 short (5 planes, 2 a shard)
    a[0] = np.arange(42, dtype=np.uint8).reshape(6, 7)
    a[4] = 200
    got = read_all_planes(zarr.open_array(str(tmp_path / "a.zarr"), mode="r"))
    np.testing.assert_array_equal(got, np.asarray(a[:]))
    assert got[1, 0, 0] == 9 and got[2, 0, 0] == 9 and got[4, 0, 0] == 200


def test_other_layouts_and_damaged_shards_are_left_to_zarr(tmp_path):
    plain = zarr.create_array(str(tmp_path / "p.zarr"), shape=(3, 6, 7), chunks=(1, 6, 7), dtype="uint8")
    assert read_all_planes(plain) is None  # not sharded
    assert read_all_planes(sharded(tmp_path / "g.zarr", compressors=zarr.codecs.GzipCodec())) is None
    a = sharded(tmp_path / "d.zarr", nz=2)
    a[:] = 5
    shard = tmp_path / "d.zarr" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF  # the index's checksum no longer matches
    shard.write_bytes(bytes(raw))
    assert read_all_planes(zarr.open_array(str(tmp_path / "d.zarr"), mode="r")) is None


def test_open_field_names_a_missing_field(volume):
    with pytest.raises(StoreNotFoundError, match="no field of view '7'"):
        open_field(volume, "7")


def test_open_field_refuses_what_is_not_a_volume(tmp_path):
    with pytest.raises(StoreNotFoundError, match="not a scanstream volume store"):
        open_field(tmp_path, "0")


def reference_crop(planes, row, col, pixel_um):
    """crop_planes as it was: the smoothed region sampled by ``ndi.map_coordinates(order=1)``."""
    sx, sy = PIXEL_SIZE_UM / pixel_um[0], PIXEL_SIZE_UM / pixel_um[1]
    half = (CROP_SIZE - 1) / 2
    ry, rx = int(np.ceil(half * sy)) + 3, int(np.ceil(half * sx)) + 3
    r0, c0 = int(np.floor(row)) - ry, int(np.floor(col)) - rx
    grid = np.arange(CROP_SIZE) - half
    out = np.empty((CROP_SIZE, CROP_SIZE, 3), np.uint8)
    h, w = planes.shape[1:]
    for ch in range(3):
        fill = float(np.median(planes[ch, :: max(1, h // 64), :: max(1, w // 64)]))
        region = np.full((2 * ry + 2, 2 * rx + 2), fill, np.float32)
        y0, y1, x0, x1 = max(r0, 0), min(r0 + region.shape[0], h), max(c0, 0), min(c0 + region.shape[1], w)
        if y1 > y0 and x1 > x0:
            region[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = planes[ch, y0:y1, x0:x1]
        region = ndi.gaussian_filter(region, ANTIALIAS_PX, mode="nearest")
        rr = (row - r0 + grid * sy)[:, None] + np.zeros((1, CROP_SIZE))
        cc = (col - c0 + grid * sx)[None, :] + np.zeros((CROP_SIZE, 1))
        vals = ndi.map_coordinates(region, [rr, cc], order=1, mode="constant", cval=fill)
        out[..., ch] = np.clip(vals + 0.5, 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("pixel_um", [(0.283, 0.283), (0.2, 0.31), (0.45, 0.45)])
def test_crop_resampling_along_rows_then_columns_is_the_bilinear_sampling(pixel_um):
    """Inside the field, at its edges and beyond it: the same grey levels, but for ties in rounding."""
    rng = np.random.default_rng(7)
    planes = rng.integers(0, 256, (3, 300, 420), dtype=np.uint8)
    differ = 0
    for row, col in [(150.0, 210.0), (3.7, 411.2), (-40.5, 500.0), *rng.uniform(-60, 460, (6, 2))]:
        got, want = crop_planes(planes, row, col, pixel_um), reference_crop(planes, row, col, pixel_um)
        assert np.abs(got.astype(int) - want).max() <= 1
        differ += int((got != want).sum())
    assert differ <= 1e-4 * 9 * got.size


def test_pick_run_splits_its_seconds(volume, tmp_path):
    res = pick_volume(volume, tmp_path / "p.zarr", workers=1)
    assert res.fields_picked == 2 and res.start_seconds > 0 and res.work_seconds > 0
    assert res.start_seconds + res.work_seconds <= res.seconds
    assert {"start_seconds", "work_seconds"} <= set(res.summary())


def test_pick_speed_sets_picking_beside_reading(volume):
    doc = pick_speed(volume, workers=(1,))
    assert doc["volume"]["fields"] == 2 and doc["reading"]["fields_per_s"] > 0
    (run,) = doc["picking"]
    assert run["workers"] == 1 and run["objects"] > 0
    assert run["fields_per_s"] == pytest.approx(2 / run["seconds"], rel=1e-2)
    assert run["fields_per_s_work"] == pytest.approx(2 / run["work_seconds"], rel=1e-2)
    assert run["over_reading"] == pytest.approx(run["fields_per_s"] / doc["reading"]["fields_per_s"], rel=1e-2)
    assert len(doc["machine"]["load_average_before"]) == 3
    # the worker process picked the fields (and started): its CPU seconds came back when it ended
    assert run["cpu_seconds"]["worker_processes"] > 0 and run["cpu_seconds"]["this_process"] > 0


@pytest.mark.parametrize("workers", [(), (0,), (1, -2)])
def test_pick_speed_refuses_worker_counts_below_one(volume, workers):
    with pytest.raises(InputError, match="worker counts must be >= 1"):
        pick_speed(volume, workers=workers)


@pytest.mark.parametrize("f", [2, 4, 8])
def test_voxel_sums_against_reshaped_sums_and_minima(f):
    """Rows first, then columns: the 2 x 2-pixel sums, their minimum and their sum per voxel."""
    rng = np.random.default_rng(f)
    px = rng.integers(0, 256, (3, 8 * f, 6 * f), dtype=np.uint8)
    s2, lo, tot = voxel_sums(px, f)
    want = px.astype(np.int64).reshape(3, 4 * f, 2, 3 * f, 2).sum((2, 4))
    np.testing.assert_array_equal(s2, want)
    np.testing.assert_array_equal(lo, want.reshape(3, 8, f // 2, 6, f // 2).min((2, 4)))
    np.testing.assert_array_equal(tot, px.astype(np.int64).reshape(3, 8, f, 6, f).sum((2, 4)))
    assert s2.dtype == lo.dtype == tot.dtype == np.uint16


@pytest.mark.parametrize("seed", range(4))
def test_window_reduce_is_the_box_filters_in_integers(seed):
    """Sums and maxima over centred windows, zeros beyond the edges: ndimage's constant-mode
    uniform filter (times the window's size) and maximum filter, on boxes as small as one voxel."""
    rng = np.random.default_rng(seed)
    for _ in range(25):
        shape = tuple(int(n) for n in rng.integers(1, 13, 3))
        a = (rng.random(shape) < rng.random()).astype(np.uint8)
        half = (int(rng.integers(0, 2)), int(rng.integers(0, 5)), int(rng.integers(0, 5)))
        size = tuple(2 * h + 1 for h in half)
        got = window_reduce(a, half, np.add)
        want = np.rint(ndi.uniform_filter(a.astype(np.float32), size=size, mode="constant") * np.prod(size))
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.uint8 and got.shape == shape
        np.testing.assert_array_equal(window_reduce(got, half, np.maximum),
                                      ndi.maximum_filter(got, size=size, mode="constant"))


@pytest.mark.parametrize("seed", range(4))
def test_pieces_are_ndimage_labels_at_the_voxels(seed):
    """The shell's pieces from the voxels' bounding box: ndi.label's pieces and numbering."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        on = rng.random((7, 29, 29)) < rng.uniform(0.002, 0.05)
        where = np.flatnonzero(on)
        if len(where) == 0:
            continue
        ids, n = pieces(on, where)
        lab, m = ndi.label(on, np.ones((3, 3, 3), bool))
        np.testing.assert_array_equal(ids, lab.ravel()[where])
        assert n == m


@pytest.mark.parametrize("refit", [True, False])
def test_prong_lines_follow_once_for_lengths_and_free_lines(refit):
    """Three straight prongs (a voxel every 0.3 um) and a stub, seen from 1.5 um beside their point:
    one following gives prong_fits' lengths, directions and misses and free_lines' lines."""
    center = np.array([10.0, -20.0, 30.0])
    per = []
    for a, d, length in zip(np.radians([20, 140, 260, 320]), np.radians([10, -15, 5, 0]), [35.0, 30.0, 40.0, 6.0],
                            strict=True):
        u = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d) / 2.0])
        per.append(np.arange(0.3, length + 1e-9, 0.3)[:, None] * u + center)
    near, at, params = np.concatenate(per), center + [1.5, 0.0, 0.0], DetectParams(refit=refit)
    arms = [(0, 0, 0, 0, p[(np.hypot(*(p - at)[:, :2].T) >= 4.0) & (np.hypot(*(p - at)[:, :2].T) <= 9.0)]) for p in per]
    lengths, dirs, misses, lines = prong_lines(near, at, arms, params, 2.0)
    assert (lengths, dirs, misses) == prong_fits(near, at, arms, params, 2.0)
    assert len(lengths) == 3 and len(lines) == 3  # the stub: neither a length nor a line
    want = free_lines(near, at, arms, params)
    for a, b in zip(lines, want, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2:] == b[2:]


@pytest.mark.parametrize("density", [0.0, 0.01, 0.2, 1.0])
def test_label26_is_ndimage_label(density):
    """Segments of sparse and dense masks, thin boxes and a voxel at every face: ndi.label's
    labels, numbering and count."""
    rng = np.random.default_rng(int(density * 100))
    for shape in ((1, 1, 1), (3, 1, 9), (5, 17, 12), (9, 40, 33)):
        mask = rng.random(shape) < density
        labels, n = label26(mask)
        want, m = ndi.label(mask, np.ones((3, 3, 3), bool))
        np.testing.assert_array_equal(labels, want)
        assert n == m and labels.dtype == np.int32
