"""Stores in xarray: crop stores with coordinates and their object table, volume fields by name.

xarray is a test extra, not a runtime dependency: the module skips where it is absent. "No
warnings" is checked with every warning turned into an error.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zarr
from fixtures import draw_crops, make_store, write_stack

import scanstream
from scanstream import store as st
from scanstream.errors import IncompleteStoreError, StoreError, StoreNotFoundError
from scanstream.ingest.stacks import ingest_stacks

xr = pytest.importorskip("xarray")

COORDS = ("object", "plane", "y", "x")


def _open_zarr(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path)


def _open_dataset(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return scanstream.open_dataset(path)


def _rows(ids: list[str], **extra) -> list[dict]:
    return [{"object_id": oid, "experiment": "E07", "sheet": "S1", "label": 0, **extra} for oid in ids]


def _previous_release(path: Path) -> None:
    """The store as the previous release wrote it: consolidated metadata of crops alone, no coordinates."""
    for name in COORDS:
        shutil.rmtree(path / name)
    root = json.loads((path / "zarr.json").read_text())
    members = root["consolidated_metadata"]["metadata"]
    root["consolidated_metadata"]["metadata"] = {"crops": members["crops"]}
    (path / "zarr.json").write_text(json.dumps(root))


def _oldest_release(path: Path) -> None:
    """The store as written before consolidated metadata, axis names and units."""
    _previous_release(path)
    root = json.loads((path / "zarr.json").read_text())
    root.pop("consolidated_metadata")
    (path / "zarr.json").write_text(json.dumps(root))
    arr = json.loads((path / "crops" / "zarr.json").read_text())
    arr.pop("dimension_names")
    (path / "crops" / "zarr.json").write_text(json.dumps(arr))


# -- crop stores: coordinates ------------------------------------------------------------------
def test_crop_store_opens_with_its_coordinates(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=12)
    ds = _open_zarr(s.path)
    assert set(ds.coords) == set(COORDS) and ds["crops"].dims == st.CROP_DIMS
    assert ds["object"].values.tolist() == s.object_ids
    assert ds["plane"].values.tolist() == [-3.0, 0.0, 3.0] and ds["plane"].attrs["units"] == "micrometer"
    assert ds["plane"].attrs["labels"] == ["shallower", "vertex", "deeper"]
    for axis in ("y", "x"):
        c = ds[axis].values
        assert len(c) == 224 and ds[axis].attrs["units"] == "micrometer"
        np.testing.assert_allclose(np.diff(c), st.PIXEL_SIZE_UM)
        np.testing.assert_allclose(c[111] + c[112], 0.0, atol=1e-12)  # the vertex, at the centre
        assert c[-1] - c[0] == pytest.approx(223 * st.PIXEL_SIZE_UM)
    oid = s.object_ids[7]
    np.testing.assert_array_equal(ds["crops"].sel(object=oid).values, s.read(7, 8)[0])
    np.testing.assert_array_equal(ds["crops"].sel(plane=3.0).values, s.read()[..., 2])  # B: one step deeper


def test_the_planes_follow_the_writers_step_and_pixel_size(tmp_path):
    path = tmp_path / "s.zarr"
    with st.StoreWriter(path, source={"stage": "test"}, plane_step_um=0.1, pixel_size_um=0.5) as w:
        w.append(draw_crops(np.zeros(3, np.int8)), _rows(["a", "b", "c"]))
    ds = _open_zarr(path)
    assert ds["plane"].values.tolist() == [-0.1, 0.0, 0.1] and ds.attrs["plane_step_um"] == 0.1
    assert ds["x"].values[[0, 111, 112, 223]].tolist() == [-55.75, -0.25, 0.25, 55.75]
    assert ds.attrs["units"]["plane_step_um"] == "micrometer"


def test_appends_and_resumes_extend_the_object_coordinate(tmp_path):
    path = tmp_path / "s.zarr"
    with st.StoreWriter(path, source={"stage": "test"}, chunk_crops=2, shard_crops=4) as w:
        w.append(draw_crops(np.zeros(3, np.int8)), _rows(["a", "b", "c"]))
    with pytest.raises(RuntimeError), st.StoreWriter(path, source={"stage": "test"}) as w:
        w.append(draw_crops(np.zeros(2, np.int8), seed=1), _rows(["d", "e"]))  # commits a shard
        raise RuntimeError("killed")
    with st.StoreWriter(path, source={"stage": "test"}) as w:
        w.append(draw_crops(np.zeros(1, np.int8), seed=2), _rows(["f"]))
    ds = _open_zarr(path)
    assert ds["object"].values.tolist() == ["a", "b", "c", "d", "f"] == st.open_store(path).object_ids


def test_rollback_leaves_the_coordinates_of_the_store_it_restores(tmp_path):
    path = tmp_path / "s.zarr"
    with st.StoreWriter(path, source={"stage": "test"}, chunk_crops=2, shard_crops=4) as w:
        w.append(draw_crops(np.zeros(3, np.int8)), _rows(["a", "b", "c"]))
    stamp = (path / "object" / "zarr.json").stat().st_mtime_ns
    w = st.StoreWriter(path, source={"stage": "other"})
    w.append(draw_crops(np.zeros(2, np.int8), seed=1), _rows(["d", "e"]))  # commits a shard
    w.rollback()
    assert _open_zarr(path)["object"].values.tolist() == ["a", "b", "c"]
    assert (path / "object" / "zarr.json").stat().st_mtime_ns == stamp  # the same ids: not rewritten


def test_an_empty_store_has_empty_coordinates(tmp_path):
    s = st.create_store(tmp_path / "e.zarr", np.empty((0, 224, 224, 3), np.uint8), [], source={"stage": "test"})
    ds = _open_zarr(s.path)
    assert ds.sizes["object"] == 0 and ds["crops"].shape == (0, 224, 224, 3)


# -- crop stores: the object table -------------------------------------------------------------
def test_open_dataset_joins_the_scalar_columns(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=9)
    ds = _open_dataset(s.path)
    table = s.table
    scalar = [f.name for f in table.schema if not pa.types.is_nested(f.type) and f.name != "object_id"]
    assert scalar and set(scalar) <= set(ds.data_vars)
    assert "track_lengths_um" not in ds.variables  # a list per object: not a variable
    for name in scalar:
        assert ds[name].dims == ("object",)
        assert ds[name].values.tolist() == table.column(name).to_pylist()
    assert ds["x_mm"].attrs["units"] == "millimeter" and "units" not in ds["label"].attrs
    alpha = ds.where(ds["label"] == 1, drop=True)
    assert alpha["object"].values.tolist() == [o for o, lab in zip(s.object_ids, s.labels, strict=True) if lab == 1]
    assert scanstream.open_dataset is st.open_dataset


def test_open_dataset_missing_values(tmp_path):
    rows = _rows(["a", "b"], category=None)
    rows[0].update(multiplicity=4, category="alpha_th")
    s = st.create_store(tmp_path / "s.zarr", draw_crops(np.zeros(2, np.int8)), rows, source={"stage": "test"})
    ds = _open_dataset(s.path)
    assert ds["multiplicity"].values[0] == 4 and np.isnan(ds["multiplicity"].values[1])
    assert ds["category"].values[0] == "alpha_th" and ds["category"].isnull().values.tolist() == [False, True]


def test_xarray_alone_on_stores_of_earlier_releases(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=3)
    _previous_release(s.path)
    bare = _open_zarr(s.path)
    assert bare["crops"].dims == st.CROP_DIMS and not set(COORDS) & set(bare.coords)  # crops without coordinates
    oldest = make_store(tmp_path / "oldest.zarr", n=3)
    _oldest_release(oldest.path)
    with warnings.catch_warnings(), pytest.raises(KeyError, match="dimension_names"):
        warnings.simplefilter("ignore")  # zarr warns about the files beside crops/ as it lists the folder
        xr.open_zarr(oldest.path)


@pytest.mark.parametrize("release", [_previous_release, _oldest_release])
def test_stores_of_earlier_releases(tmp_path, release):
    s = make_store(tmp_path / "s.zarr", n=6)
    new = _open_dataset(s.path)
    release(s.path)
    old = st.open_store(s.path)  # scanstream reads them as before
    assert old.content_hash == s.content_hash and st.validate_store(s.path, deep=True) == []
    xr.testing.assert_identical(_open_dataset(s.path).drop_attrs(), new.drop_attrs())  # computed
    st.upgrade_store(s.path)
    assert set(_open_zarr(s.path).coords) == set(COORDS)
    stamps = [(s.path / name / "zarr.json").stat().st_mtime_ns for name in COORDS]
    st.upgrade_store(s.path)
    assert [(s.path / name / "zarr.json").stat().st_mtime_ns for name in COORDS] == stamps  # nothing rewritten


# -- crop stores: bad input --------------------------------------------------------------------
def test_open_dataset_refuses_what_is_no_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match="nope.zarr"):
        st.open_dataset(tmp_path / "nope.zarr")


def test_open_dataset_refuses_an_incomplete_store(tmp_path):
    w = st.StoreWriter(tmp_path / "s.zarr", source={"stage": "test"})
    w.append(draw_crops(np.zeros(1, np.int8)), _rows(["a"]))
    with pytest.raises(IncompleteStoreError, match="s.zarr"):
        st.open_dataset(tmp_path / "s.zarr")


def test_upgrade_rewrites_object_ids_that_differ_from_the_table(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=4)
    zarr.open_array(str(s.path / "object"), mode="r+")[0] = "someone-else"  # a damaged copy
    assert _open_dataset(s.path)["object"].values.tolist() == s.object_ids  # computed from the table
    st.upgrade_store(s.path)
    assert _open_zarr(s.path)["object"].values.tolist() == s.object_ids


def test_the_coordinates_on_disk_are_the_computed_ones(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=5)
    on_disk, computed = _open_zarr(s.path), _open_dataset(s.path)
    for name in COORDS:
        xr.testing.assert_identical(on_disk[name].reset_coords(drop=True), computed[name].reset_coords(drop=True))
    xr.testing.assert_identical(on_disk["crops"], computed["crops"])


def test_open_dataset_refuses_a_column_named_like_a_variable(tmp_path):
    s = st.create_store(tmp_path / "s.zarr", draw_crops(np.zeros(1, np.int8)), _rows(["a"], crops=1),
                        source={"stage": "test"})
    with pytest.raises(StoreError, match="'crops'"):
        st.open_dataset(s.path)


# -- volume stores -----------------------------------------------------------------------------
def test_volume_fields_open_with_named_variables_and_no_warnings(tmp_path):
    write_stack(tmp_path / "scan" / "a", n=4, h=40, w=56, seed=0)
    write_stack(tmp_path / "scan" / "c", n=3, h=1030, w=1100, x=2.0, seed=2)
    ingest_stacks(tmp_path / "scan", tmp_path / "v.zarr")
    vol = st.open_volume(tmp_path / "v.zarr")
    for fov in vol:
        ds = _open_zarr(tmp_path / "v.zarr" / fov.name)
        assert list(ds.data_vars) == ["planes"] and ds["planes"].dims == ("z", "y", "x")
        np.testing.assert_array_equal(ds["planes"].values, fov.read())
    big = vol["c"]
    for k, level in enumerate(big.levels[1:], start=1):
        ds = _open_zarr(tmp_path / "v.zarr" / big.name / st.level_path(k).rsplit("/", 1)[0])
        np.testing.assert_array_equal(ds["planes"].values, level[:])
