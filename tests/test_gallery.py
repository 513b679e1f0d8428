"""scanstream.review.gallery and `scanstream gallery`: the HTML page, crops and contact sheet."""

from __future__ import annotations

import html
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from test_query import candidates_from_store, write_candidates

from scanstream.candidates.query import CandidateFilter
from scanstream.cli import main
from scanstream.errors import InputError, StoreNotFoundError
from scanstream.review.gallery import CropLookup, write_gallery


@pytest.fixture
def setup(store_factory, tmp_path):
    store = store_factory("sheet.zarr", n=40, seed=3)
    cands = candidates_from_store(store, tmp_path / "cands", seed=4, threshold=0.5)
    return store, cands


def page_ids(index_html: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'data-object-id="([^"]*)"', index_html)]


def test_gallery_highest_score_first_with_crops(setup, tmp_path):
    store, cands = setup
    res = write_gallery(cands, tmp_path / "g", stores=[store.path], filters=CandidateFilter(top=12))
    assert res.count == 12
    meta = json.loads((res.out / "gallery.json").read_text())
    rows = meta["rows"]
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    text = res.html.read_text()
    assert page_ids(text) == [r["object_id"] for r in rows]
    for r in rows:  # id, score and position are on each card
        assert f"score {r['score']:.3f}" in text and f"x {r['x_mm']:.3f}" in text and f"y {r['y_mm']:.3f}" in text
    # every crop file is the store's crop of that object
    ids = store.object_ids
    for i, r in enumerate(rows):
        png = np.asarray(Image.open(res.out / "crops" / f"{i + 1:06d}.png"))
        assert np.array_equal(png, store.read(ids.index(r["object_id"]), ids.index(r["object_id"]) + 1)[0])
    sheet = Image.open(res.contact_sheet)
    assert sheet.size[0] > 10 * 112 and sheet.size[1] > 2 * 112  # 12 thumbnails in 10 columns: two rows


def test_gallery_filters_and_default_stores(setup, tmp_path):
    store, cands = setup
    res = write_gallery(cands, tmp_path / "g", filters=CandidateFilter(selected=True))
    meta = json.loads((res.out / "gallery.json").read_text())
    assert meta["stores"] == [str(store.path)]
    assert res.count == len(meta["rows"]) > 0 and all(r["selected"] for r in meta["rows"])


def test_gallery_finds_moved_store_by_object_id(setup, tmp_path):
    store, cands = setup
    moved = tmp_path / "elsewhere.zarr"
    shutil.copytree(store.path, moved)
    shutil.rmtree(store.path)
    res = write_gallery(cands, tmp_path / "g", stores=[moved], filters=CandidateFilter(top=3))
    assert res.count == 3


def test_gallery_rerun_replaces(setup, tmp_path):
    store, cands = setup
    write_gallery(cands, tmp_path / "g", stores=[store.path], filters=CandidateFilter(top=5))
    res = write_gallery(cands, tmp_path / "g", stores=[store.path], filters=CandidateFilter(top=2))
    assert len(list((res.out / "crops").glob("*.png"))) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".g.")]


def test_gallery_escapes_hostile_ids(store_factory, tmp_path):
    store = store_factory("s.zarr", n=4)
    evil = '<script>alert(1)</script>"\''
    rows = [{"object_id": store.object_ids[0], "sheet": evil, "x_mm": 1.0, "y_mm": 2.0, "score": 3.0,
             "store": str(store.path), "store_index": 0}]
    cands = write_candidates(tmp_path / "c", rows)
    res = write_gallery(cands, tmp_path / "g", stores=[store.path])
    text = res.html.read_text()
    assert "<script>alert" not in text and html.escape(evil) in text


def test_gallery_refuses_foreign_directory(setup, tmp_path):
    store, cands = setup
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not a scanstream gallery"):
        write_gallery(cands, tmp_path / "mine", stores=[store.path])
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_gallery_object_missing_from_stores(setup, store_factory, tmp_path):
    _, cands = setup
    other = store_factory("other.zarr", n=8, seed=9, sheet="S9")
    with pytest.raises(InputError, match="in none of the crop stores"):
        write_gallery(cands, tmp_path / "g", stores=[other.path])
    assert not (tmp_path / "g").exists()


def test_gallery_bad_store_path(setup, tmp_path):
    _, cands = setup
    with pytest.raises(StoreNotFoundError):
        write_gallery(cands, tmp_path / "g", stores=[tmp_path / "nope.zarr"])


def test_crop_lookup_needs_a_store():
    with pytest.raises(InputError, match="--store"):
        CropLookup([])


def test_cli_gallery(setup, tmp_path, capsys):
    store, cands = setup
    out = tmp_path / "gal"
    assert main(["gallery", str(cands), "--store", str(store.path), "--min-score", "0", "--top", "7", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "index.html") in printed and "contact_sheet.png" in printed
    meta = json.loads((out / "gallery.json").read_text())
    assert 0 < meta["count"] <= 7 and all(r["score"] >= 0 for r in meta["rows"])


def test_cli_gallery_bad_region(setup, tmp_path, capsys):
    store, cands = setup
    assert main(["gallery", str(cands), "--store", str(store.path), "--region", "1,2", "--out", str(tmp_path / "g")]) == 2
    assert "region" in capsys.readouterr().err


def test_read_rows_any_order_with_repeats(store_factory):
    store = store_factory("s.zarr", n=70, seed=1)  # more than one chunk
    rows = np.array([69, 0, 33, 0, 64, 5])
    got = store.read_rows(rows)
    for j, r in enumerate(rows):
        assert np.array_equal(got[j], store.read(int(r), int(r) + 1)[0])
