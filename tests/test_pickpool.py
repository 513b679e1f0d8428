"""The pick pool: picked vertices labelled against a volume's truth, and stores merged for training."""

import numpy as np
import pytest

from scanstream.errors import InputError
from scanstream.picker.accuracy import MatchRadii, vertex_sources
from scanstream.simulate.pickpool import label_rows, merge_stores
from scanstream.store import open_store
from scanstream.store.writer import StoreWriter

UM = 1e-3  # mm

TRUTH = [
    {"x_mm": 1.0, "y_mm": 1.0, "z_mm": 0.100, "label": 1, "category": "alpha_u"},
    {"x_mm": 2.0, "y_mm": 2.0, "z_mm": 0.100, "label": 0, "category": "evap"},
    {"x_mm": 2.0, "y_mm": 2.0 + 4 * UM, "z_mm": 0.100, "label": 0, "category": "1vtx"},
]


def picked(*xyz):
    return np.array(xyz, dtype=float).reshape(-1, 3)


def test_each_picked_vertex_is_put_down_to_what_made_it():
    p = picked(
        (1.0 + 1.5 * UM, 1.0, 0.100 + 2 * UM),  # 1.5 um off, one z-step: the decay
        (1.0 + 1.5 * UM, 1.0, 0.100 + 5 * UM),  # right place in x, y, too deep: a second vertex
        (1.0 + 3.5 * UM, 1.0, 0.100),  # 3.5 um off
        (1.0 + 12 * UM, 1.0, 0.100),  # 12 um off: a second vertex of the star
        (2.0, 2.0 + 3 * UM, 0.100 + 4 * UM),  # nearest non-alpha object in x, y: the 1vtx (1 um)
        (3.0, 3.0, 0.100),  # nothing near
    )
    assert list(vertex_sources(p, TRUTH)) == ["alpha", "dup", "dup", "dup", "1vtx", "fake"]
    near = vertex_sources(p, TRUTH, MatchRadii(near_um=5.0))
    assert list(near) == ["alpha", "dup_near", "dup_near", "dup", "1vtx", "fake"]


def test_labels_follow_the_sources():
    rows = [{"object_id": "a", "x_mm": 1.0, "y_mm": 1.0, "z_mm": 0.1, "label": -1, "category": None},
            {"object_id": "b", "x_mm": 1.0 + 3 * UM, "y_mm": 1.0, "z_mm": 0.1, "label": -1, "category": None},
            {"object_id": "c", "x_mm": 5.0, "y_mm": 5.0, "z_mm": 0.1, "label": -1, "category": None}]
    out = label_rows(rows, TRUTH)
    assert [(r["object_id"], r["label"], r["category"]) for r in out] == [("a", 1, "alpha"), ("b", 0, "dup_near"),
                                                                         ("c", 0, "fake")]
    assert rows[0]["label"] == -1  # the caller's rows are not changed


def _store(path, cats, *, with_field=True, value=0):
    rows = []
    for i, c in enumerate(cats):
        r = {"object_id": f"{path.stem}-{i}", "sheet": "S", "x_mm": float(i), "y_mm": 0.0, "z_mm": 0.0,
             "label": int(c == "alpha"), "category": c, "multiplicity": 4, "track_lengths_um": [30.0] * 4}
        if with_field:
            r["pick_field"] = "F0000"
        rows.append(r)
    crops = np.full((len(cats), 224, 224, 3), value, dtype=np.uint8)
    crops[:, 0, 0, 0] = np.arange(len(cats), dtype=np.uint8) + value
    with StoreWriter(path, source={"stage": "test"}) as w:
        w.append(crops, rows)
    return open_store(path)


def test_merge_keeps_rows_in_order_drops_the_ambiguous_and_fills_missing_columns(tmp_path):
    a = _store(tmp_path / "a.zarr", ["alpha", "dup_near", "fake", "evap"])
    b = _store(tmp_path / "b.zarr", ["alpha_u", "evap", "dust"], with_field=False, value=100)
    m = merge_stores(tmp_path / "m.zarr", [(a, None), (b, np.array([2, 0]))])
    assert m.table.column("object_id").to_pylist() == ["a-0", "a-2", "a-3", "b-2", "b-0"]
    assert m.table.column("pick_field").to_pylist() == ["F0000"] * 3 + [None, None]
    assert list(m.read()[:, 0, 0, 0]) == [0, 2, 3, 102, 100]
    assert list(m.labels) == [1, 0, 0, 0, 0]
    kept = merge_stores(tmp_path / "k.zarr", [(a, None)], drop=())
    assert kept.n == 4


def test_merge_refuses_nothing_to_merge(tmp_path):
    with pytest.raises(InputError, match="nothing to merge"):
        merge_stores(tmp_path / "m.zarr", [])
