"""Crop stores open with one call in the tools users already have: the metadata xarray and zarr read.

The coordinates are tests/test_xarray.py's, volume stores tests/test_ome.py's. xarray is a test
extra, not a runtime dependency: each test skips where it is absent. "No warnings" is checked
with every warning turned into an error.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from fixtures import draw_crops, make_store

from scanstream import store as st

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
    """Rewrite a store's metadata as scanstream wrote it before axis names, units, coordinates and consolidation."""
    for name in ("object", "plane", "y", "x"):
        shutil.rmtree(path / name)
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
    s = make_store(tmp_path / "s.zarr", n=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(str(s.path), mode="r")
        members = dict(group.members(max_depth=None))
    assert sorted(members) == ["crops", "object", "plane", "x", "y"]
    assert members["crops"].metadata.dimension_names == st.CROP_DIMS
    assert all(members[axis].metadata.dimension_names == (axis,) for axis in st.CROP_DIMS)
    # napari's built-in reader takes every array of a group as one pyramid level; the crops
    # array alone is what it opens as one stack
    assert isinstance(zarr.open(str(s.path / "crops"), mode="r"), zarr.Array)


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
