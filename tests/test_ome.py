"""Volume stores as OME-Zarr readers expect them: a plain NGFF collection of multiscale images.

ome-zarr and ome-zarr-models are test extras, not runtime dependencies: each test skips where
its library is absent. "No warnings" is checked with every warning turned into an error. How
the fields open in xarray is tests/test_xarray.py's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from fixtures import write_stack

from scanstream import store as st
from scanstream.ingest.stacks import downsample_xy, ingest_stacks


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
        location = parse_url(str(path))
        assert location is not None, f"ome-zarr does not read {path}"
        return list(Reader(location)())


def _series(path: Path) -> list[str]:
    return zarr.open_group(str(path), mode="r")["OME"].attrs["ome"]["series"]


def _make_old_root(path: Path) -> None:
    """The root's "ome" attributes as written before: the fields also listed as "labels"."""
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3, "labels": _series(path)}


def test_root_is_a_plain_collection(volume):
    root = zarr.open_group(str(volume), mode="r")
    assert root.attrs["ome"] == {"version": "0.5", "bioformats2raw.layout": 3}
    assert _series(volume) == ["0", "1", "2"] == [f.name for f in st.open_volume(volume)]


def test_ome_zarr_models_reads_the_root_as_a_collection_not_labels(volume):
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05 import BioFormats2Raw, Image, Labels
    from pydantic import ValidationError

    root = zarr.open_group(str(volume), mode="r")
    collection = BioFormats2Raw.from_zarr(root)
    assert collection.ome_attributes.bioformats2raw_layout == 3
    with pytest.raises(ValidationError):
        Labels.from_zarr(root)
    vol = st.open_volume(volume)
    for name in _series(volume):
        image = Image.from_zarr(root[name])
        datasets = image.attributes.ome.multiscales[0].datasets
        assert [d.path for d in datasets] == [st.level_path(k) for k in range(len(vol[name].levels))]


def test_a_rerun_drops_the_old_roots_labels_list(volume):
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05 import BioFormats2Raw

    _make_old_root(volume)
    assert [f.source for f in st.open_volume(volume)] == ["a", "b", "c"]  # scanstream reads either
    result = ingest_stacks(volume.parent / "scan", volume)  # nothing new to add
    assert result.added == 0
    root = zarr.open_group(str(volume), mode="r")
    assert root.attrs["ome"] == {"version": "0.5", "bioformats2raw.layout": 3}
    BioFormats2Raw.from_zarr(root)


def test_ome_zarr_reader_accepts_the_root_and_reads_every_series(volume):
    assert not [n for n in _ome_nodes(volume) if n.data]  # ome-zarr 0.18 does not descend a collection
    vol = st.open_volume(volume)
    images = []
    for name in _series(volume):
        nodes = [n for n in _ome_nodes(volume / name) if n.data]
        assert len(nodes) == 1
        images.append(nodes[0])
    assert [n.metadata["name"] for n in images] == ["a", "b", "c"]
    assert [[d.shape for d in n.data] for n in images] == [
        [(5, 40, 56)], [(3, 40, 56)], [(3, 1030, 1100), (3, 515, 550), (3, 258, 275)]
    ]
    for node, fov in zip(images, vol, strict=True):
        np.testing.assert_array_equal(node.data[0].compute(), fov.read())
        np.testing.assert_array_equal(node.data[-1].compute(), np.asarray(fov.levels[-1][:]))
        assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]


def test_levels_are_named_and_every_field_is_consolidated(volume):
    for name in _series(volume):
        meta = json.loads((volume / name / "zarr.json").read_text())
        datasets = meta["attributes"]["ome"]["multiscales"][0]["datasets"]
        arrays = {k for k, v in meta["consolidated_metadata"]["metadata"].items() if v["node_type"] == "array"}
        assert arrays == {d["path"] for d in datasets}
        for path in arrays:
            assert zarr.open_array(str(volume / name / path), mode="r").metadata.dimension_names == ("z", "y", "x")


def test_pyramid_levels_and_their_transforms(volume):
    fov = st.open_volume(volume)["c"]
    assert fov.data.shape == (3, 1030, 1100) and len(fov.levels) == 3 and fov.levels[0] is fov.data
    np.testing.assert_array_equal(fov.levels[1][:], downsample_xy(fov.read()))
    np.testing.assert_array_equal(fov.levels[2][:], downsample_xy(downsample_xy(fov.read())))
    datasets = zarr.open_group(str(volume / fov.name), mode="r").attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["planes", "level1/planes", "level2/planes"]
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
    assert [d["path"] for d in ms["datasets"]] == ["planes"]
    assert fov.pixel_to_stage(0, (40 - 1) / 2, (56 - 1) / 2) == pytest.approx((1.0, -2.0, -0.118))


def test_volume_with_levels_at_numbered_paths_still_opens(tmp_path):
    # the layout before level names: level 0 at "0", level k at "k", all in the field's group
    write_stack(tmp_path / "scan" / "a", n=3, h=40, w=56, seed=0)
    ingest_stacks(tmp_path / "scan", tmp_path / "v.zarr")
    field = tmp_path / "v.zarr" / "0"
    (field / "planes").rename(field / "0")
    g = zarr.open_group(str(field), mode="r+", use_consolidated=False)
    ome = dict(g.attrs["ome"])
    ome["multiscales"][0]["datasets"][0]["path"] = "0"
    g.attrs["ome"] = ome
    fov = st.open_volume(tmp_path / "v.zarr")[0]
    assert fov.data.shape == (3, 40, 56) and fov.levels == (fov.data,)


def test_downsample_xy_odd_sizes():
    a = np.arange(15, dtype=np.uint8).reshape(1, 3, 5)  # rows 0..4, 5..9, 10..14
    out = downsample_xy(a)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 3  # (0 + 1 + 5 + 6) / 4
    assert out[0, 0, 2] == 7  # the odd column with itself: (4 + 4 + 9 + 9) / 4 = 6.5, rounded half up
    assert out[0, 1, 2] == 14  # the corner: four times pixel 14
