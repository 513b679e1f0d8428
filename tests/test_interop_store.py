"""Stores open with one call in the tools users already have: xarray for crop stores, ome-zarr for volumes.

xarray and ome-zarr are test extras, not runtime dependencies: each test skips where its tool
is absent. "No warnings" is checked with every warning turned into an error.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from fixtures import draw_crops, make_store, write_stack

from scanstream import store as st
from scanstream.ingest.stacks import downsample_xy, ingest_stacks

ROW = {"experiment": "E07", "module": 99, "plate": 9, "sheet": "S1", "label": 0}


def _rows(start: int, n: int) -> list[dict]:
    return [{**ROW, "object_id": f"o{i:04d}"} for i in range(start, start + n)]


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return draw_crops(np.zeros(n, np.int8), seed=seed)


def _small_shard_store(path: Path, n: int) -> st.CropStore:
    """A complete store of ``n`` crops in shards of 8 (so that a few crops commit a shard)."""
    with st.StoreWriter(path, source={"stage": "test"}, exist_ok=False, chunk_crops=4, shard_crops=8) as w:
        w.append(_crops(n), _rows(0, n))
    return st.open_store(path)


def _open_xarray(path: Path):
    xr = pytest.importorskip("xarray")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path)


def _make_old_layout(path: Path) -> None:
    """Rewrite a store's metadata as scanstream wrote it before axis names, units and consolidation."""
    root = json.loads((path / "zarr.json").read_text())
    root.pop("consolidated_metadata", None)
    for key in ("object_table", "block_digests", "units"):
        root["attributes"].pop(key)
    (path / "zarr.json").write_text(json.dumps(root))
    arr = json.loads((path / "crops" / "zarr.json").read_text())
    arr.pop("dimension_names")
    arr.pop("attributes")
    (path / "crops" / "zarr.json").write_text(json.dumps(arr))


# -- crop stores -------------------------------------------------------------------------------
def test_crop_store_opens_in_xarray_with_named_dims_and_units(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=40)
    ds = _open_xarray(s.path)
    crops = ds["crops"]
    assert crops.dims == ("object", "y", "x", "plane") == st.CROP_DIMS
    assert crops.shape == (40, 224, 224, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops.values, s.read())
    np.testing.assert_array_equal(crops.isel(object=slice(5, 9)).values, s.read(5, 9))
    axes = {a["name"]: a for a in crops.attrs["axes"]}
    assert [a["name"] for a in crops.attrs["axes"]] == list(st.CROP_DIMS)
    assert axes["object"]["unit"] is None and axes["plane"]["unit"] is None
    assert axes["y"]["unit"] == axes["x"]["unit"] == "micrometer"
    assert axes["x"]["scale"] == pytest.approx(st.PIXEL_SIZE_UM) == crops.attrs["pixel_size_um"]
    assert axes["plane"]["labels"] == ["shallower", "vertex", "deeper"]
    assert ds.attrs["units"]["pixel_size_um"] == "micrometer" and ds.attrs["units"]["x_mm"] == "millimeter"
    assert ds.attrs["complete"] is True and ds.attrs["content_hash"] == s.content_hash


def test_group_attributes_name_the_object_table_and_digests(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=10)
    ds = _open_xarray(s.path)
    table = pq.read_table(s.path / ds.attrs["object_table"])
    assert table.column("object_id").to_pylist() == s.object_ids
    digests = json.loads((s.path / ds.attrs["block_digests"]).read_text())
    assert digests["n_rows"] == 10


def test_zarr_lists_the_group_without_warnings(tmp_path):
    # napari's built-in reader opens every array it lists as one pyramid level: crops alone
    s = make_store(tmp_path / "s.zarr", n=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(str(s.path), mode="r")
        members = dict(group.members(max_depth=None))
    assert list(members) == ["crops"] and members["crops"].metadata.dimension_names == st.CROP_DIMS


def test_without_consolidated_metadata_zarr_warns(tmp_path):
    # The files beside crops/ are what zarr warns about when it lists the directory; the
    # consolidated metadata is what spares the default readers that listing.
    s = make_store(tmp_path / "s.zarr", n=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(zarr.open_group(str(s.path), mode="r", use_consolidated=False).members())
    assert sorted(str(w.message).split()[2] for w in caught) == [st.DIGESTS_FILE, st.TABLE_FILE]


def test_appends_keep_the_consolidated_metadata_current(tmp_path):
    path = tmp_path / "s.zarr"
    _small_shard_store(path, 6)
    with pytest.raises(RuntimeError), st.StoreWriter(path, source={"stage": "test"}) as w:
        w.append(_crops(4, seed=1), _rows(6, 4))  # a whole shard is committed, then the kill
        raise RuntimeError("killed")
    root = json.loads((path / "zarr.json").read_text())
    assert root["attributes"]["complete"] is False and "consolidated_metadata" not in root  # nothing stale
    assert st.open_store(path, require_complete=False).crops.shape[0] == 8
    with st.StoreWriter(path, source={"stage": "test"}) as w:  # resume and complete
        w.append(_crops(3, seed=2), _rows(20, 3))
    s = st.open_store(path)
    ds = _open_xarray(path)
    assert ds.sizes["object"] == s.n == 11
    np.testing.assert_array_equal(ds["crops"].isel(object=slice(5, 11)).values, s.read(5, 11))


def test_rollback_leaves_a_complete_store_that_opens_in_xarray(tmp_path):
    path = tmp_path / "s.zarr"
    before = _small_shard_store(path, 3)
    w = st.StoreWriter(path, source={"stage": "other"})
    w.append(_crops(6, seed=1), _rows(3, 6))  # commits a shard: the store is marked incomplete
    assert "consolidated_metadata" not in json.loads((path / "zarr.json").read_text())
    w.rollback()
    after = st.open_store(path)
    assert after.attrs == before.attrs and after.n == 3
    assert _open_xarray(path).sizes["object"] == 3


def test_old_layout_store_still_opens_everywhere_scanstream_reads(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=12)
    _make_old_layout(s.path)
    old = st.open_store(s.path)
    assert old.n == 12 and old.content_hash == s.content_hash and "object_table" not in old.attrs
    np.testing.assert_array_equal(old.read(), s.read())
    np.testing.assert_array_equal(old.read_rows(np.array([11, 0, 5])), s.read()[[11, 0, 5]])
    assert st.validate_store(s.path, deep=True) == []
    verifier = st.BlockVerifier(old)
    for start, crops in st.iter_blocks(old, block=verifier.block):
        verifier.feed(start, crops)
    assert st.summarize_store(old)["objects"] == 12


def test_upgrade_store_gives_an_old_store_the_metadata(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=12)
    _make_old_layout(s.path)
    up = st.upgrade_store(s.path)
    assert up.content_hash == s.content_hash and up.attrs["object_table"] == st.TABLE_FILE
    ds = _open_xarray(s.path)
    assert ds["crops"].dims == st.CROP_DIMS
    np.testing.assert_array_equal(ds["crops"].values, s.read())
    stamp = (s.path / "zarr.json").stat().st_mtime_ns
    st.upgrade_store(s.path)
    assert (s.path / "zarr.json").stat().st_mtime_ns == stamp  # nothing to change: nothing rewritten


def test_appending_to_an_old_store_gives_it_the_metadata(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=4)
    _make_old_layout(s.path)
    with st.StoreWriter(s.path, source={"stage": "test"}) as w:
        w.append(_crops(2), _rows(100, 2))
    ds = _open_xarray(s.path)
    assert ds["crops"].dims == st.CROP_DIMS and ds.sizes["object"] == 6


# -- volume stores -----------------------------------------------------------------------------
@pytest.fixture
def volume(tmp_path):
    """A volume of two small fields (5 and 3 planes) and one large field (1100 x 1030 px)."""
    write_stack(tmp_path / "scan" / "a", n=5, h=40, w=56, x=1.0, seed=0)
    write_stack(tmp_path / "scan" / "b", n=3, h=40, w=56, x=1.5, seed=1)
    write_stack(tmp_path / "scan" / "c", n=3, h=1030, w=1100, x=2.0, seed=2)
    ingest_stacks(tmp_path / "scan", tmp_path / "v.zarr")
    return tmp_path / "v.zarr"


def _ome_nodes(path: Path) -> list:
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return list(Reader(parse_url(str(path)))())


def test_ome_zarr_reader_lists_every_field_with_its_pyramid(volume):
    nodes = [n for n in _ome_nodes(volume) if n.data]
    assert [n.metadata["name"] for n in nodes] == ["a", "b", "c"]
    assert [[d.shape for d in n.data] for n in nodes] == [
        [(5, 40, 56)], [(3, 40, 56)], [(3, 1030, 1100), (3, 515, 550), (3, 258, 275)]
    ]
    vol = st.open_volume(volume)
    for node, fov in zip(nodes, vol, strict=True):
        np.testing.assert_array_equal(node.data[0].compute(), fov.read())
        assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]


def test_pyramid_levels_and_their_transforms(volume):
    fov = st.open_volume(volume)["c"]
    assert fov.data.shape == (3, 1030, 1100) and len(fov.levels) == 3 and fov.levels[0] is fov.data
    np.testing.assert_array_equal(fov.levels[1][:], downsample_xy(fov.read()))
    np.testing.assert_array_equal(fov.levels[2][:], downsample_xy(downsample_xy(fov.read())))
    datasets = zarr.open_group(str(volume / fov.name), mode="r").attrs["ome"]["multiscales"][0]["datasets"]
    (s0, t0), (s2, t2) = (datasets[k]["coordinateTransformations"] for k in (0, 2))
    assert s2["scale"] == pytest.approx([s0["scale"][0], 4 * s0["scale"][1], 4 * s0["scale"][2]])
    # level 2's first pixel covers level-0 pixels 0..3: its centre is 1.5 level-0 pixels further on
    assert t2["translation"] == pytest.approx([t0["translation"][0], t0["translation"][1] + 1.5 * s0["scale"][1],
                                               t0["translation"][2] + 1.5 * s0["scale"][2]])
    assert st.summarize_volume(st.open_volume(volume))["fields"][2]["pyramid_yx"] == [[515, 550], [258, 275]]


def test_small_fields_have_no_pyramid_and_keep_their_transforms(volume):
    fov = st.open_volume(volume)["a"]
    assert len(fov.levels) == 1
    ms = zarr.open_group(str(volume / fov.name), mode="r").attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0"]
    assert fov.pixel_to_stage(0, (40 - 1) / 2, (56 - 1) / 2) == pytest.approx((1.0, -2.0, -0.118))


def test_downsample_xy_odd_sizes():
    a = np.arange(15, dtype=np.uint8).reshape(1, 3, 5)  # rows 0..4, 5..9, 10..14
    out = downsample_xy(a)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 3  # (0 + 1 + 5 + 6) / 4
    assert out[0, 0, 2] == 7  # the odd column with itself: (4 + 4 + 9 + 9) / 4 = 6.5, rounded half up
    assert out[0, 1, 2] == 14  # the corner: four times pixel 14


def test_old_volume_opens_and_a_rerun_lists_its_fields(volume):
    root = zarr.open_group(str(volume), mode="r+")
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}  # as written before
    assert [f.source for f in st.open_volume(volume)] == ["a", "b", "c"]
    assert st.open_volume(volume)["c"].data.shape == (3, 1030, 1100)
    assert not [n for n in _ome_nodes(volume) if n.data]  # the complaint: nothing to show
    result = ingest_stacks(volume.parent / "scan", volume)  # nothing new to add
    assert result.added == 0
    assert [n.metadata["name"] for n in _ome_nodes(volume) if n.data] == ["a", "b", "c"]


def test_ome_zarr_models_validates_the_collection_and_every_level(volume):
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05 import BioFormats2Raw, Image

    root = zarr.open_group(str(volume), mode="r")
    BioFormats2Raw.from_zarr(root)
    for name in root.attrs["ome"]["labels"]:
        image = Image.from_zarr(root[name])
        assert len(image.attributes.ome.multiscales[0].datasets) == len(st.open_volume(volume)[int(name)].levels)


def test_upgrade_verb_upgrades_old_stores_and_refuses_what_is_no_store(tmp_path, capsys):
    from scanstream.cli import main

    s = make_store(tmp_path / "s.zarr", n=6)
    _make_old_layout(s.path)
    assert main(["upgrade", str(s.path)]) == 0
    assert f"content hash {s.content_hash} (unchanged)" in capsys.readouterr().out
    assert _open_xarray(s.path)["crops"].dims == st.CROP_DIMS
    assert main(["upgrade", str(tmp_path / "nope.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.zarr" in err[0]
