"""``scanstream ingest --format images|imagefolder``: round trips, bad input, reruns, --skip-bad."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from scanstream import store as st
from scanstream.cli import main
from scanstream.ingest import images as ig


def gray_crops(n: int, seed: int = 0, size: int = 224) -> np.ndarray:
    """uint8 (n, size, size) smooth-ish grayscale crops (PNG-compressible, distinct)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size // 8, size // 8), dtype=np.uint8)
    return np.kron(base, np.ones((1, 8, 8), np.uint8)) + rng.integers(0, 4, (n, size, size), dtype=np.uint8)


def write_images_source(src, n=6, *, seed=0, listing="listing.csv", columns=None, rgb_every=3):
    """Crop files (PNG, every ``rgb_every``-th RGB, one TIFF) plus a listing; returns (crops (n,224,224,3), rows)."""
    src.mkdir(parents=True, exist_ok=True)
    grays = gray_crops(n, seed)
    crops, rows = [], []
    for i in range(n):
        if i % rgb_every == 1:
            rgb = np.stack([grays[i], 255 - grays[i], grays[i] // 2], axis=2)
            img, crop = Image.fromarray(rgb), rgb
        else:
            img, crop = Image.fromarray(grays[i]), np.repeat(grays[i][:, :, None], 3, axis=2)
        name = f"sub/crop_{i:03d}.tif" if i == n - 1 else f"crop_{i:03d}.png"
        (src / name).parent.mkdir(exist_ok=True)
        img.save(src / name)
        crops.append(crop)
        rows.append({"file": name, "object_id": f"{i:06d}", "x_mm": 10 + i / 8, "y_mm": -2.5 * i, "z_mm": -0.106,
                     "label": [1, 0, -1][i % 3], "sheet": "S7", "plate": 9})
    write_listing(src / listing, rows, columns)
    return np.stack(crops), rows


def write_listing(path, rows, columns=None):
    """Write rows as CSV or Parquet; ``columns`` renames keys (e.g. {"file": "FileName"})."""
    columns = columns or {}
    named = [{columns.get(k, k): v for k, v in r.items()} for r in rows]
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(named), path)
    else:
        keys = list(named[0]) if named else ["file", "object_id", "x_mm", "y_mm", "z_mm"]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(named)


def run(capsys, *argv) -> tuple[int, dict | None, str]:
    rc = main(["ingest", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else None), err.strip()


# -- images: round trips ------------------------------------------------------------------------
def test_images_csv_round_trip(tmp_path, capsys):
    crops, rows = write_images_source(tmp_path / "src")
    rc, summary, err = run(capsys, tmp_path / "src", tmp_path / "s.zarr", "--format", "images")
    assert rc == 0, err
    assert summary["added"] == 6 and summary["already_present"] == 0 and summary["quarantined"] == 0
    assert summary["objects_in_store"] == 6 and summary["quarantine_report"] is None
    s = st.open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(s.read(), crops)
    assert (s.read()[0, :, :, 0] == s.read()[0, :, :, 2]).all()  # grayscale -> 3 equal channels
    t = s.table.to_pylist()
    assert [r["object_id"] for r in t] == [r["object_id"] for r in rows]  # leading zeros kept
    for got, want in zip(t, rows, strict=True):
        assert (got["x_mm"], got["y_mm"], got["z_mm"]) == (want["x_mm"], want["y_mm"], want["z_mm"])
        assert got["label"] == want["label"] and got["sheet"] == "S7" and got["plate"] == 9
    assert s.attrs["source"]["stage"] == "ingest" and s.attrs["source"]["format"] == "images"
    assert st.validate_store(s.path, deep=True) == []


def test_images_parquet_listing_with_other_column_names(tmp_path, capsys):
    names = {"file": "FileName", "object_id": "ID", "x_mm": "stage_x", "y_mm": "Stage_Y", "z_mm": "z"}
    crops, rows = write_images_source(tmp_path / "src", n=4, listing="objects.parquet", columns=names)
    rc, _summary, err = run(capsys, tmp_path / "src", tmp_path / "s.zarr", "--format", "images",
                           "--sheet", "default-sheet", "--experiment", "E07", "--module", "99")
    assert rc == 0, err
    s = st.open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(s.read(), crops)
    assert s.table.column("x_mm").to_pylist() == [r["x_mm"] for r in rows]
    assert s.table.column("sheet").to_pylist() == ["S7"] * 4  # the listing's value wins over --sheet
    assert s.table.column("experiment").to_pylist() == ["E07"] * 4
    assert s.table.column("module").to_pylist() == [99] * 4


def test_images_listing_defaults_and_label_words(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    grays = gray_crops(3)
    rows = []
    for i, word in enumerate(["alpha", "Other", ""]):
        Image.fromarray(grays[i]).save(src / f"{i}.png")
        rows.append({"file": f"{i}.png", "id": f"k{i}", "x": i, "y": 0, "z": 0, "label": word})
    write_listing(tmp_path / "list.csv", rows)  # outside SRC, given with --listing
    rc, _, err = run(capsys, src, tmp_path / "s.zarr", "--format", "images", "--listing", tmp_path / "list.csv",
                     "--sheet", "S3")
    assert rc == 0, err
    t = st.open_store(tmp_path / "s.zarr").table
    assert t.column("label").to_pylist() == [1, 0, -1]
    assert t.column("sheet").to_pylist() == ["S3"] * 3


def test_jpeg_is_decoded_like_pillow(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(gray_crops(1)[0]).save(src / "a.jpg", quality=90)
    write_listing(src / "l.csv", [{"file": "a.jpg", "object_id": "a", "x_mm": 0, "y_mm": 0, "z_mm": 0}])
    rc, _, err = run(capsys, src, tmp_path / "s.zarr", "--format", "images")
    assert rc == 0, err
    want = np.asarray(Image.open(src / "a.jpg").convert("L"))
    got = st.open_store(tmp_path / "s.zarr").read()[0]
    np.testing.assert_array_equal(got, np.repeat(want[:, :, None], 3, axis=2))


def test_decode_crop_modes(tmp_path):
    g = gray_crops(1)[0]
    rgba = np.dstack([g, g // 2, 255 - g, np.full_like(g, 7)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(ig.decode_crop(tmp_path / "rgba.png"), rgba[:, :, :3])
    Image.fromarray(g).convert("P").save(tmp_path / "p.png")
    got = ig.decode_crop(tmp_path / "p.png")
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    Image.fromarray(g > 128).save(tmp_path / "bw.png")
    np.testing.assert_array_equal(ig.decode_crop(tmp_path / "bw.png")[:, :, 1], np.where(g > 128, 255, 0))


def test_resize_when_asked(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    big = gray_crops(1, size=448)[0]
    Image.fromarray(big).save(src / "big.png")
    write_listing(src / "l.csv", [{"file": "big.png", "object_id": "b", "x_mm": 0, "y_mm": 0, "z_mm": 0}])
    rc, _, err = run(capsys, src, tmp_path / "s.zarr", "--format", "images")
    assert rc == 2 and err.endswith("big.png: image is 448 x 448 px, expected 224 x 224 (use --resize)")
    assert not (tmp_path / "s.zarr").exists()
    rc, _, err = run(capsys, src, tmp_path / "s.zarr", "--format", "images", "--resize")
    assert rc == 0, err
    want = np.asarray(Image.fromarray(big).resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(st.open_store(tmp_path / "s.zarr").read()[0, :, :, 0], want)


# -- imagefolder ---------------------------------------------------------------------------------
def write_imagefolder(root, counts, seed=0):
    """counts: {class: n}; returns {relative path: gray crop}."""
    grays = gray_crops(sum(counts.values()), seed)
    out, k = {}, 0
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rel = f"{cls}/img_{i}.png"
            Image.fromarray(grays[k]).save(root / rel)
            out[rel] = grays[k]
            k += 1
    return out


def test_imagefolder_round_trip(tmp_path, capsys):
    files = write_imagefolder(tmp_path / "root", {"0_negative": 3, "1_positive": 2})
    (tmp_path / "root" / "README.txt").write_text("not an image: ignored")
    rc, summary, err = run(capsys, tmp_path / "root", tmp_path / "s.zarr", "--format", "imagefolder",
                           "--sheet", "TRAIN")
    assert rc == 0, err and summary["added"] == 5
    s = st.open_store(tmp_path / "s.zarr")
    ids = s.object_ids
    assert ids == sorted(files)  # ids are the relative paths, in sorted order
    for i, oid in enumerate(ids):
        np.testing.assert_array_equal(s.read(i, i + 1)[0], np.repeat(files[oid][:, :, None], 3, axis=2))
    t = s.table.to_pylist()
    assert [r["label"] for r in t] == [0, 0, 0, 1, 1]
    assert [r["category"] for r in t] == ["0_negative"] * 3 + ["1_positive"] * 2
    assert all(r["sheet"] == "TRAIN" and math.isnan(r["x_mm"]) for r in t)


def test_imagefolder_positive_name_and_other_folders_negative(tmp_path, capsys):
    write_imagefolder(tmp_path / "root", {"alpha": 2, "1vtx": 1, "dust": 1})
    rc, _, err = run(capsys, tmp_path / "root", tmp_path / "s.zarr", "--format", "imagefolder",
                     "--positive", "alpha", "--id-prefix", "setA:")
    assert rc == 0, err
    t = st.open_store(tmp_path / "s.zarr").table.to_pylist()
    assert {r["object_id"]: r["label"] for r in t} == {
        "setA:1vtx/img_0.png": 0, "setA:alpha/img_0.png": 1, "setA:alpha/img_1.png": 1, "setA:dust/img_0.png": 0}


def test_imagefolder_needs_class_folders(tmp_path, capsys):
    (tmp_path / "root").mkdir()
    Image.fromarray(gray_crops(1)[0]).save(tmp_path / "root" / "x.png")
    rc, _, err = run(capsys, tmp_path / "root", tmp_path / "s.zarr", "--format", "imagefolder")
    assert rc == 2 and "no class folders" in err and "\n" not in err


def test_imagefolder_image_outside_class_folder(tmp_path, capsys):
    write_imagefolder(tmp_path / "root", {"0_negative": 1, "1_positive": 1})
    Image.fromarray(gray_crops(1)[0]).save(tmp_path / "root" / "stray.png")
    rc, _, err = run(capsys, tmp_path / "root", tmp_path / "s.zarr", "--format", "imagefolder")
    assert rc == 2 and err == f"scanstream ingest: error: {tmp_path / 'root' / 'stray.png'}: image is not inside a class folder"
    assert not (tmp_path / "s.zarr").exists()


# -- reruns --------------------------------------------------------------------------------------
def test_rerun_adds_nothing_and_leaves_store_untouched(tmp_path, capsys):
    write_images_source(tmp_path / "src")
    run(capsys, tmp_path / "src", tmp_path / "s.zarr", "--format", "images")
    before = st.open_store(tmp_path / "s.zarr")
    mtime = (tmp_path / "s.zarr" / st.TABLE_FILE).stat().st_mtime_ns
    rc, summary, _ = run(capsys, tmp_path / "src", tmp_path / "s.zarr", "--format", "images")
    assert rc == 0 and summary["added"] == 0 and summary["already_present"] == 6
    after = st.open_store(tmp_path / "s.zarr")
    assert after.attrs == before.attrs and after.n == 6
    assert (tmp_path / "s.zarr" / st.TABLE_FILE).stat().st_mtime_ns == mtime


def test_rerun_with_more_files_adds_only_the_new_ones(tmp_path, capsys):
    files = write_imagefolder(tmp_path / "root", {"0_negative": 2, "1_positive": 1})
    run(capsys, tmp_path / "root", tmp_path / "s.zarr", "--format", "imagefolder")
    files.update(write_imagefolder(tmp_path / "root", {"1_positive": 3}, seed=5))
    rc, summary, _ = run(capsys, tmp_path / "root", tmp_path / "s.zarr", "--format", "imagefolder")
    assert rc == 0 and summary["added"] == 2 and summary["already_present"] == 3 and summary["objects_in_store"] == 5
    s = st.open_store(tmp_path / "s.zarr")
    assert sorted(s.object_ids) == sorted(files) and len(set(s.object_ids)) == 5
    assert st.validate_store(s.path, deep=True) == []


#: 2-crop chunks in 4-crop shards, so small runs commit several shards.
SMALL_SHARDS = {"chunk_crops": 2, "shard_crops": 4}


def test_interrupted_ingest_resumes(tmp_path, capsys, monkeypatch):
    crops, _rows = write_images_source(tmp_path / "src", n=11)
    store = tmp_path / "s.zarr"
    calls = []

    def interrupt(n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    cfg = ig.IngestConfig(format="images", batch_size=3, **SMALL_SHARDS)
    with pytest.raises(KeyboardInterrupt):
        ig.ingest(tmp_path / "src", store, cfg, progress=interrupt)
    partial = st.open_store(store, require_complete=False)
    assert not partial.complete and partial.n == 8  # two 4-crop shards committed before the interrupt
    result = ig.ingest(tmp_path / "src", store, cfg)
    assert result.added == 3 and result.already_present == 8
    s = st.open_store(store)
    np.testing.assert_array_equal(s.read(), crops)
    oneshot = ig.ingest(tmp_path / "src", tmp_path / "one.zarr", cfg)
    assert oneshot.added == 11 and s.content_hash == st.open_store(tmp_path / "one.zarr").content_hash


@pytest.mark.parametrize("sizes", [{"chunk_crops": 3, "shard_crops": 4}, {"chunk_crops": 0, "shard_crops": 4},
                                   {"chunk_crops": 4, "shard_crops": 0}])
def test_store_layout_must_be_whole_chunks_per_shard(sizes):
    with pytest.raises(ValueError, match="not a positive multiple of chunk_crops"):
        ig.IngestConfig(**sizes)


def test_ingest_streams_in_batches(tmp_path, monkeypatch):
    write_images_source(tmp_path / "src", n=7)
    sizes = []
    real = st.StoreWriter.append

    def spy(self, crops, rows):
        sizes.append(len(crops))
        return real(self, crops, rows)

    monkeypatch.setattr(st.StoreWriter, "append", spy)
    ig.ingest(tmp_path / "src", tmp_path / "s.zarr", ig.IngestConfig(format="images", batch_size=3))
    assert sizes == [3, 3, 1]


# -- bad input: one line naming the file and problem, exit 2, nothing written ---------------------
def bad_case(tmp_path, capsys, *, expect, extra=()):
    rc, summary, err = run(capsys, tmp_path / "src", tmp_path / "s.zarr", "--format", "images", *extra)
    assert rc == 2 and summary is None
    assert err.startswith("scanstream ingest: error: ") and "\n" not in err
    assert expect in err, err
    assert not (tmp_path / "s.zarr").exists()
    assert not (tmp_path / "s.zarr.quarantine.csv").exists()
    return err


def test_unreadable_image(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=3)
    (tmp_path / "src" / "crop_001.png").write_bytes(b"this is not a PNG")
    err = bad_case(tmp_path, capsys, expect="crop_001.png: unreadable image")
    assert str(tmp_path / "src" / "crop_001.png") in err


def test_truncated_image_found_mid_stream_removes_new_store(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=4)
    data = (tmp_path / "src" / "crop_002.png").read_bytes()
    (tmp_path / "src" / "crop_002.png").write_bytes(data[: len(data) // 2])
    bad_case(tmp_path, capsys, expect="crop_002.png: truncated or unreadable image")


def test_truncated_image_leaves_existing_store_as_it_was(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=3)
    ig.ingest(tmp_path / "src", tmp_path / "s.zarr", ig.IngestConfig(format="images", **SMALL_SHARDS))
    before = st.open_store(tmp_path / "s.zarr")
    more = gray_crops(9, seed=3)
    rows = []
    for i in range(9):
        Image.fromarray(more[i]).save(tmp_path / "src" / f"new_{i}.png")
        rows.append({"file": f"new_{i}.png", "object_id": f"n{i}", "x_mm": 0, "y_mm": 0, "z_mm": 0})
    data = (tmp_path / "src" / "new_8.png").read_bytes()
    (tmp_path / "src" / "new_8.png").write_bytes(data[:200])
    old = list(csv.DictReader((tmp_path / "src" / "listing.csv").open()))
    write_listing(tmp_path / "src" / "listing.csv", [*old, *({k: r.get(k, "") for k in old[0]} for r in rows)])
    rc, _, err = run(capsys, tmp_path / "src", tmp_path / "s.zarr", "--format", "images", "--batch-size", "2")
    assert rc == 2 and "new_8.png: truncated or unreadable image" in err
    after = st.open_store(tmp_path / "s.zarr")  # complete, as before: the 8 new crops written were rolled back
    assert after.attrs == before.attrs and after.n == 3
    assert st.validate_store(after.path, deep=True) == []


def test_wrong_size_without_resize(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=3)
    Image.fromarray(gray_crops(1, size=112)[0]).save(tmp_path / "src" / "crop_000.png")
    bad_case(tmp_path, capsys, expect="crop_000.png: image is 112 x 112 px, expected 224 x 224 (use --resize)")


def test_sixteen_bit_image_refused(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=3)
    Image.fromarray(gray_crops(1)[0].astype(np.uint16) * 256).save(tmp_path / "src" / "crop_000.png")
    bad_case(tmp_path, capsys, expect="crop_000.png: image mode I;16 is not 8-bit")


def test_missing_object_id(tmp_path, capsys):
    _, rows = write_images_source(tmp_path / "src", n=3)
    rows[1]["object_id"] = ""
    write_listing(tmp_path / "src" / "listing.csv", rows)
    bad_case(tmp_path, capsys, expect=f"{tmp_path / 'src' / 'listing.csv'}:line 3: missing object id")


def test_duplicate_object_id(tmp_path, capsys):
    _, rows = write_images_source(tmp_path / "src", n=4)
    rows[3]["object_id"] = rows[1]["object_id"]
    write_listing(tmp_path / "src" / "listing.csv", rows)
    bad_case(tmp_path, capsys, expect="listing.csv:line 3: object id '000001' appears in 2 rows (line 3, line 5)")


def test_listing_row_without_file(tmp_path, capsys):
    _, rows = write_images_source(tmp_path / "src", n=3)
    rows.append({**rows[0], "file": "gone.png", "object_id": "gone"})
    write_listing(tmp_path / "src" / "listing.csv", rows)
    bad_case(tmp_path, capsys, expect=f"{tmp_path / 'src' / 'gone.png'}: file not found (listed in ")


def test_file_without_listing_row(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=3)
    Image.fromarray(gray_crops(1)[0]).save(tmp_path / "src" / "orphan.png")
    bad_case(tmp_path, capsys, expect="orphan.png: file has no row in the listing")


def test_listing_without_required_column(tmp_path, capsys):
    _, rows = write_images_source(tmp_path / "src", n=2)
    write_listing(tmp_path / "src" / "listing.csv", [{k: v for k, v in r.items() if k != "z_mm"} for r in rows])
    bad_case(tmp_path, capsys, expect="listing.csv: no 'z_mm' column (accepted names: z_mm, z, stage_z, stage_z_mm)")


def test_bad_stage_value_and_label(tmp_path, capsys):
    _, rows = write_images_source(tmp_path / "src", n=3)
    rows[0]["y_mm"] = "north"
    write_listing(tmp_path / "src" / "listing.csv", rows)
    bad_case(tmp_path, capsys, expect="listing.csv:line 2: stage y_mm 'north' is not a number (mm)")
    rows[0]["y_mm"] = 1.0
    rows[2]["label"] = "maybe"
    write_listing(tmp_path / "src" / "listing.csv", rows)
    bad_case(tmp_path, capsys, expect="listing.csv:line 4: label 'maybe' is not 1/alpha, 0/other or -1/unknown")


def test_no_or_several_listings(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=2)
    (tmp_path / "src" / "listing.csv").rename(tmp_path / "elsewhere.csv")
    bad_case(tmp_path, capsys, expect="no listing (.csv or .parquet) in the folder; give one with --listing")
    (tmp_path / "elsewhere.csv").rename(tmp_path / "src" / "a.csv")
    (tmp_path / "src" / "b.parquet").write_bytes(b"")
    bad_case(tmp_path, capsys, expect="several listings (a.csv, b.parquet); choose one with --listing")


def test_several_problems_reported_as_one_line_with_count(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=3)
    Image.fromarray(gray_crops(1)[0]).save(tmp_path / "src" / "orphan1.png")
    Image.fromarray(gray_crops(1)[0]).save(tmp_path / "src" / "orphan2.png")
    bad_case(tmp_path, capsys, expect="(and 1 more bad items; --skip-bad ingests the rest")


# -- --skip-bad ----------------------------------------------------------------------------------
def test_skip_bad_ingests_the_rest_and_writes_quarantine(tmp_path, capsys):
    crops, rows = write_images_source(tmp_path / "src", n=8)
    src = tmp_path / "src"
    (src / "crop_001.png").write_bytes(b"garbage")  # unreadable header
    data = (src / "crop_003.png").read_bytes()
    (src / "crop_003.png").write_bytes(data[: len(data) // 2])  # truncated: found while decoding
    Image.fromarray(gray_crops(1, size=104)[0]).save(src / "crop_004.png")  # wrong size
    Image.fromarray(gray_crops(1)[0]).save(src / "orphan.png")  # no row
    rows[5]["object_id"] = rows[6]["object_id"]  # duplicate id: both rows bad
    rows.append({**rows[0], "file": "gone.png", "object_id": "gone"})  # no file
    write_listing(src / "listing.csv", rows)
    rc, summary, err = run(capsys, src, tmp_path / "s.zarr", "--format", "images", "--skip-bad")
    assert rc == 0
    report = tmp_path / "s.zarr.quarantine.csv"
    assert summary["added"] == 3 and summary["quarantined"] == 7 and summary["quarantine_report"] == str(report)
    assert err.endswith(f"7 bad items left out; see {report}")
    s = st.open_store(tmp_path / "s.zarr")
    assert s.object_ids == ["000000", "000002", "000007"]
    np.testing.assert_array_equal(s.read(), crops[[0, 2, 7]])
    quarantined = list(csv.DictReader(report.open()))
    reasons = {r["item"].split("/")[-1]: r["reason"] for r in quarantined}
    assert reasons["crop_001.png"].startswith("unreadable image")
    assert reasons["crop_003.png"].startswith("truncated or unreadable image")
    assert reasons["crop_004.png"] == "image is 104 x 104 px, expected 224 x 224 (use --resize)"
    assert reasons["orphan.png"].startswith("file has no row in the listing")
    assert reasons["gone.png"].startswith("file not found (listed in ")
    assert reasons["listing.csv:line 7"] == reasons["listing.csv:line 8"] == \
        "object id '000006' appears in 2 rows (line 7, line 8)"
    assert {r["object_id"] for r in quarantined} >= {"000001", "000003", "000004", "000006", "gone"}
    # a rerun quarantines the same items again and adds nothing
    rc, summary, _ = run(capsys, src, tmp_path / "s.zarr", "--format", "images", "--skip-bad")
    assert summary["added"] == 0 and summary["already_present"] == 3 and summary["quarantined"] == 7
    assert len(list(csv.DictReader(report.open()))) == 7


def test_skip_bad_with_nothing_bad_writes_empty_report(tmp_path, capsys):
    write_images_source(tmp_path / "src", n=2)
    rc, summary, _ = run(capsys, tmp_path / "src", tmp_path / "s.zarr", "--format", "images", "--skip-bad")
    assert rc == 0 and summary["quarantined"] == 0
    assert (tmp_path / "s.zarr.quarantine.csv").read_text().splitlines() == ["item,object_id,reason"]


def test_help_documents_formats(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    out = capsys.readouterr().out
    for word in ("images", "imagefolder", "stack", "--skip-bad", "--positive", "--resize", "quarantine"):
        assert word in out
