"""``scanstream ingest --format stack``: info.json z-stacks into an OME-Zarr volume store."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import zarr
from fixtures import STACK_H, STACK_W, stack_info, write_stack
from PIL import Image

from scanstream import store as st
from scanstream.cli import main
from scanstream.errors import StoreError, StoreNotFoundError
from scanstream.ingest.stacks import ingest_stacks

H, W = STACK_H, STACK_W
info_dict = stack_info


def run(capsys, *argv):
    rc = main(["ingest", *map(str, argv), "--format", "stack", "--no-progress"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else None), err.strip()


def test_stack_round_trip_and_ngff_metadata(tmp_path, capsys):
    p0, z0 = write_stack(tmp_path / "scan" / "fov_a", x=1.0, seed=0)
    p1, _ = write_stack(tmp_path / "scan" / "fov_b", n=3, x=1.5, seed=1)
    rc, summary, err = run(capsys, tmp_path / "scan", tmp_path / "v.zarr")
    assert rc == 0, err
    assert summary["added"] == 2 and summary["planes_written"] == 8 and summary["fields_of_view_in_store"] == 2
    v = st.open_volume(tmp_path / "v.zarr")
    assert v.complete and len(v) == 2 and [f.source for f in v] == ["fov_a", "fov_b"]
    a = v["fov_a"]
    np.testing.assert_array_equal(a.read(), p0)  # planes in increasing stage z
    np.testing.assert_array_equal(v[1].read(), p1)
    np.testing.assert_array_equal(a.read(2), p0[2])
    assert a.shape == (5, H, W) and a.data.dtype == np.uint8
    assert a.stage_z_mm.tolist() == z0 and a.stage_x_mm.tolist() == [1.0] * 5 and a.stage_y_mm.tolist() == [-2.0] * 5
    assert a.pixel_size_um == (0.283, 0.284) and a.step_um == 3.0 and a.shrinkage == 2.0
    assert a.info["EmulsionType"]["Plate"] == 9 and a.info["Stage"]["ID"] == 999
    assert a.attrs["image_paths"] == ["5.png", "4.png", "3.png", "2.png", "1.png"]

    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    assert root.attrs["ome"] == {"version": "0.5", "bioformats2raw.layout": 3}  # a plain collection
    assert root["OME"].attrs["ome"] == {"version": "0.5", "series": ["0", "1"]}
    ms = root["0"].attrs["ome"]["multiscales"][0]
    assert root["0"].attrs["ome"]["version"] == "0.5"
    assert ms["axes"] == [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    scale, trans = ms["datasets"][0]["coordinateTransformations"]
    assert ms["datasets"][0]["path"] == "planes"
    assert scale == {"type": "scale", "scale": [3.0, 0.284, 0.283]}
    assert trans["type"] == "translation"
    assert trans["translation"] == pytest.approx([z0[0] * 1000, -2000 - (H - 1) / 2 * 0.284, 1000 - (W - 1) / 2 * 0.283])
    arr = root["0"]["planes"]
    assert arr.metadata.dimension_names == ("z", "y", "x")
    assert arr.chunks == (1, H, W)


def test_pixel_to_stage(tmp_path, capsys):
    write_stack(tmp_path / "s", x=1.0, y=-2.0)
    run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    f = st.open_volume(tmp_path / "v.zarr")[0]
    cx, cy = (W - 1) / 2, (H - 1) / 2
    assert f.pixel_to_stage(0, cy, cx) == pytest.approx((1.0, -2.0, -0.118))
    assert f.pixel_to_stage(4, cy + 10, cx - 100) == pytest.approx((1.0 - 100 * 0.000283, -2.0 + 10 * 0.000284, -0.106))
    assert f.pixel_to_stage(0.5, cy, cx)[2] == pytest.approx(-0.1165)


def test_single_stack_folder_as_source_and_rerun(tmp_path, capsys):
    write_stack(tmp_path / "fov_1")
    rc, summary, _ = run(capsys, tmp_path / "fov_1", tmp_path / "v.zarr")
    assert rc == 0 and summary["added"] == 1 and st.open_volume(tmp_path / "v.zarr")[0].source == "fov_1"
    before = json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())
    rc, summary, _ = run(capsys, tmp_path / "fov_1", tmp_path / "v.zarr")
    assert rc == 0 and summary["added"] == 0 and summary["already_present"] == 1 and summary["planes_written"] == 0
    assert json.loads((tmp_path / "v.zarr" / "zarr.json").read_text()) == before


def test_rerun_adds_only_new_stacks(tmp_path, capsys):
    write_stack(tmp_path / "scan" / "a")
    run(capsys, tmp_path / "scan", tmp_path / "v.zarr")
    p, _ = write_stack(tmp_path / "scan" / "b", seed=4)
    rc, summary, _ = run(capsys, tmp_path / "scan", tmp_path / "v.zarr")
    assert rc == 0 and summary["added"] == 1 and summary["already_present"] == 1
    v = st.open_volume(tmp_path / "v.zarr")
    assert [f.source for f in v] == ["a", "b"] and [f.name for f in v] == ["0", "1"]
    np.testing.assert_array_equal(v["b"].read(), p)


def test_interrupted_ingest_resumes_without_duplicates(tmp_path):
    for name in "abc":
        write_stack(tmp_path / "scan" / name, seed=ord(name))
    calls = []

    def interrupt(n):
        calls.append(n)
        if len(calls) == 4:  # after the first block of the second field of view (3 blocks each)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_stacks(tmp_path / "scan", tmp_path / "v.zarr", progress=interrupt, z_block=2)
    with pytest.raises(StoreError, match="incomplete"):
        st.open_volume(tmp_path / "v.zarr")
    partial = st.open_volume(tmp_path / "v.zarr", require_complete=False)
    assert [f.source for f in partial] == ["a"]
    result = ingest_stacks(tmp_path / "scan", tmp_path / "v.zarr")
    assert result.added == 2 and result.already_present == 1
    v = st.open_volume(tmp_path / "v.zarr")
    assert [f.source for f in v] == ["a", "b", "c"]
    for f in v:
        want, _ = write_stack(tmp_path / "again" / f.source, seed=ord(f.source))
        np.testing.assert_array_equal(f.read(), want)


def test_info_cli_on_volume(tmp_path, capsys):
    write_stack(tmp_path / "s")
    run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    assert main(["info", str(tmp_path / "v.zarr")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "volume" and out["fields_of_view"] == 1 and out["planes"] == 5
    assert out["fields"][0]["pixel_size_um"] == [0.283, 0.284] and out["fields"][0]["z_mm"] == [-0.118, -0.106]


# -- bad info.json: one line naming the file and the key --------------------------------------------
def _images(n=2):
    return [{"Path": f"{k + 1}.png", "x": 1.0, "y": 2.0, "z": -0.1 - 0.003 * k} for k in range(n)]


def _drop(d, dotted):
    d = json.loads(json.dumps(d))
    *head, last = dotted.split(".")
    cur = d
    for k in head:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    del cur[last]
    return d


BAD_INFOS = {
    "missing unit": (_drop(info_dict(_images()), "DocumentType.unit"), "missing key DocumentType.unit"),
    "missing DocumentType": (_drop(info_dict(_images()), "DocumentType"), "missing key DocumentType.unit"),
    "unit um": (info_dict(_images(), DocumentType={"ver": "1", "unit": "um"}), "DocumentType.unit is 'um', expected 'mm'"),
    "missing Interval": (_drop(info_dict(_images()), "Interval"), "missing key Interval"),
    "Interval of 2": (info_dict(_images(), Interval=[0.000283, 0.000284]),
                      "Interval is [0.000283, 0.000284], expected 3 numbers in mm"),
    "Interval in um": (info_dict(_images(), Interval=[0.283, 0.284, 3.0]),
                       "Interval[0] = 0.283 mm per pixel is outside (0, 0.01] mm; micrometres given as mm?"),
    "Interval text": (info_dict(_images(), Interval=[0.000283, "a", 0.003]), "Interval[1] is 'a', expected a number (mm)"),
    "step in um": (info_dict(_images(), Interval=[0.000283, 0.000284, 3.0]), "Interval[2] = 3.0 mm per step is outside"),
    "missing Height": (_drop(info_dict(_images()), "ImageType.Height"), "missing key ImageType.Height"),
    "Depth 16": (info_dict(_images(), ImageType={"Height": H, "Width": W, "Depth": 16}),
                 "ImageType.Depth is 16, only 8-bit images are supported"),
    "missing Images": (_drop(info_dict(_images()), "Images"), "missing key Images"),
    "empty Images": (info_dict([]), "Images is [], expected a non-empty list"),
    "image without z": (_drop(info_dict(_images()), "Images.1.z"), "missing key Images[1].z"),
    "image without Path": (_drop(info_dict(_images()), "Images.0.Path"), "missing key Images[0].Path"),
    "x not a number": (info_dict([{**_images(1)[0], "x": "1.0mm"}]), "Images[0].x is '1.0mm', expected a number (mm)"),
    "Path twice": (info_dict([_images(1)[0], _images(1)[0]]), "Images[1].Path '1.png' is listed twice"),
    "Sh negative": (info_dict(_images(), EmulsionType={"Sh": -2}), "EmulsionType.Sh is -2, expected a positive number"),
}


@pytest.mark.parametrize("case", list(BAD_INFOS))
def test_bad_info_json(tmp_path, capsys, case):
    info, message = BAD_INFOS[case]
    write_stack(tmp_path / "s", n=2)
    (tmp_path / "s" / "info.json").write_text(json.dumps(info))
    rc, summary, err = run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    assert rc == 2 and summary is None and "\n" not in err
    assert err.startswith(f"scanstream ingest: error: {tmp_path / 's' / 'info.json'}: {message}"), err
    assert not (tmp_path / "v.zarr").exists()


def test_info_json_not_json(tmp_path, capsys):
    write_stack(tmp_path / "s", n=2)
    (tmp_path / "s" / "info.json").write_text("{not json")
    rc, _, err = run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    assert rc == 2 and f"{tmp_path / 's' / 'info.json'}: not readable JSON" in err


def test_missing_plane_file(tmp_path, capsys):
    write_stack(tmp_path / "s", n=3)
    (tmp_path / "s" / "2.png").unlink()
    rc, _, err = run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    assert rc == 2
    assert err == (f"scanstream ingest: error: {tmp_path / 's' / '2.png'}: image file not found "
                   f"(Images[1] of {tmp_path / 's' / 'info.json'})")


def test_plane_size_differs_from_info(tmp_path, capsys):
    write_stack(tmp_path / "s", n=2)
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(tmp_path / "s" / "1.png")
    rc, _, err = run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    assert rc == 2 and f"1.png: image is {W + 1} x {H} px, info.json ImageType says {W} x {H}" in err


def test_truncated_plane_leaves_existing_volume_as_it_was(tmp_path, capsys):
    write_stack(tmp_path / "scan" / "a")
    run(capsys, tmp_path / "scan", tmp_path / "v.zarr")
    before = json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())
    write_stack(tmp_path / "scan" / "b", seed=2)
    data = (tmp_path / "scan" / "b" / "3.png").read_bytes()
    (tmp_path / "scan" / "b" / "3.png").write_bytes(data[: len(data) // 2])
    rc, _, err = run(capsys, tmp_path / "scan", tmp_path / "v.zarr")
    assert rc == 2 and f"{tmp_path / 'scan' / 'b' / '3.png'}: truncated or unreadable image" in err
    assert json.loads((tmp_path / "v.zarr" / "zarr.json").read_text()) == before
    assert not (tmp_path / "v.zarr" / "1").exists()
    assert [f.source for f in st.open_volume(tmp_path / "v.zarr")] == ["a"]


def test_truncated_plane_removes_new_volume(tmp_path, capsys):
    write_stack(tmp_path / "s")
    data = (tmp_path / "s" / "5.png").read_bytes()
    (tmp_path / "s" / "5.png").write_bytes(data[: len(data) // 2])
    rc, _, err = run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    assert rc == 2 and "5.png: truncated or unreadable image" in err
    assert not (tmp_path / "v.zarr").exists()


def test_skip_bad_stacks(tmp_path, capsys):
    write_stack(tmp_path / "scan" / "good")
    write_stack(tmp_path / "scan" / "units", info_over={"DocumentType": {"unit": "um"}})
    write_stack(tmp_path / "scan" / "trunc", seed=3)
    data = (tmp_path / "scan" / "trunc" / "2.png").read_bytes()
    (tmp_path / "scan" / "trunc" / "2.png").write_bytes(data[: len(data) // 2])
    rc, summary, err = run(capsys, tmp_path / "scan", tmp_path / "v.zarr", "--skip-bad")
    assert rc == 0 and summary["added"] == 1 and summary["quarantined"] == 2
    report = tmp_path / "v.zarr.quarantine.csv"
    assert summary["quarantine_report"] == str(report) and err.endswith(f"see {report}")
    rows = {r["object_id"]: r["reason"] for r in csv.DictReader(report.open())}
    assert rows["units"].endswith("DocumentType.unit is 'um', expected 'mm'")
    assert "2.png: truncated or unreadable image" in rows["trunc"]
    v = st.open_volume(tmp_path / "v.zarr")
    assert [f.source for f in v] == ["good"] and [f.name for f in v] == ["0"]
    assert zarr.open_group(str(tmp_path / "v.zarr"), mode="r")["OME"].attrs["ome"]["series"] == ["0"]


def test_no_stacks_and_wrong_flags(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, tmp_path / "empty", tmp_path / "v.zarr")
    assert rc == 2 and err.endswith(f"{tmp_path / 'empty'}: no z-stack folders (a folder with info.json or image.json)")
    write_stack(tmp_path / "s", n=1)
    rc, _, err = run(capsys, tmp_path / "s", tmp_path / "v.zarr", "--resize")
    assert rc == 2 and err.endswith("--resize: not for --format stack (info.json gives the emulsion and stage)")
    assert not (tmp_path / "v.zarr").exists()


def test_volume_is_not_a_crop_store_and_vice_versa(tmp_path, capsys, store_factory):
    s = store_factory("c.zarr", n=4)
    write_stack(tmp_path / "st", n=1)
    rc, _, err = run(capsys, tmp_path / "st", s.path)
    assert rc == 2 and err.endswith(f"{s.path}: exists and is not a scanstream volume store")
    with pytest.raises(StoreNotFoundError):
        st.open_volume(s.path)


# -- the later metadata variant (image.json) and stack problems -----------------------------------
def write_image_json_stack(folder, *, n=4, affine=None, seed=0, **over):
    """A stack folder with image.json: AffineP2S, string-typed Stage / EmulsionType, stagez and extrastage."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(folder / f"{k:04d}.png")
        images.append({"Path": f"{k:04d}.png", "x": 1.0, "y": -2.0, "z": round(-0.1 - 0.003 * k, 6),
                       "stagez": round(-0.2 - 0.003 * k, 6), "extrastage": {"theta": 0.5}})
    meta = {"Stage": {"Location": "", "ID": "nlab", "Objective": "20"},
            "EmulsionType": {"Experiment": "E07", "Module": "", "Plate": "12", "Sh": ""},
            "ImageType": {"Height": H, "Width": W, "Depth": 8},
            "AffineP2S": affine if affine is not None else [0.00028889, 0.0, 0.0, 0.00028889, 0.0, 0.0],
            "Images": images}
    meta.update(over)
    (folder / "image.json").write_text(json.dumps(meta))


def test_image_json_variant(tmp_path, capsys):
    rot = [0.0002, -0.0001, 0.0001, 0.0002]  # rotated by 26.6 degrees, 0.2236 um per pixel
    write_image_json_stack(tmp_path / "scan" / "new", affine=rot)
    write_stack(tmp_path / "scan" / "old")
    rc, summary, err = run(capsys, tmp_path / "scan", tmp_path / "v.zarr")
    assert rc == 0, err
    assert summary["added"] == 2
    f = st.open_volume(tmp_path / "v.zarr")["new"]
    assert f.pixel_size_um == pytest.approx((0.2236068, 0.2236068)) and f.step_um == pytest.approx(3.0)
    assert f.attrs["affine_p2s_mm"] == [0.0002, -0.0001, 0.0001, 0.0002, 0.0, 0.0]
    assert f.attrs["metadata_file"] == "image.json" and f.shrinkage is None
    assert f.attrs["stagez"] == [-0.209, -0.206, -0.203, -0.2] and f.attrs["extrastage"][0] == {"theta": 0.5}
    cx, cy = (W - 1) / 2, (H - 1) / 2
    assert f.pixel_to_stage(0, cy + 10, cx + 10) == pytest.approx((1.0 + 10 * 0.0001, -2.0 + 10 * 0.0003, -0.109))
    assert st.open_volume(tmp_path / "v.zarr")["old"].attrs["metadata_file"] == "info.json"


def test_image_json_string_shrinkage_and_stagez_only(tmp_path, capsys):
    write_image_json_stack(tmp_path / "s", EmulsionType={"Sh": "1.9", "Plate": ""})
    meta = json.loads((tmp_path / "s" / "image.json").read_text())
    for im in meta["Images"]:
        del im["z"]
    (tmp_path / "s" / "image.json").write_text(json.dumps(meta))
    rc, _, err = run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    assert rc == 0, err
    f = st.open_volume(tmp_path / "v.zarr")[0]
    assert f.shrinkage == 1.9 and f.stage_z_mm.tolist() == [-0.209, -0.206, -0.203, -0.2]
    assert f.pixel_size_um == pytest.approx((0.28889, 0.28889))


@pytest.mark.parametrize("affine, message", [
    ([1, 0, 0, 1, 0, 0], "AffineP2S gives 1.0 mm per pixel in x, outside (0, 0.01] mm"),
    ([0.0003, 0.0003, 0.0003, 0.0003], "AffineP2S [0.0003, 0.0003, 0.0003, 0.0003] is singular"),
    ("0.0003", "AffineP2S is '0.0003', expected [a, b, c, d(, e, f)]"),
])
def test_bad_affine(tmp_path, capsys, affine, message):
    write_image_json_stack(tmp_path / "s", affine=affine)
    rc, _, err = run(capsys, tmp_path / "s", tmp_path / "v.zarr")
    assert rc == 2 and "\n" not in err and f"{tmp_path / 's' / 'image.json'}: {message}" in err
    assert not (tmp_path / "v.zarr").exists()


@pytest.mark.parametrize("path", ["../../x.png", "/etc/hostname"])
def test_image_path_outside_the_stack_folder(tmp_path, capsys, path):
    write_stack(tmp_path / "scan" / "f1", n=2)
    info = json.loads((tmp_path / "scan" / "f1" / "info.json").read_text())
    info["Images"][1]["Path"] = path
    (tmp_path / "scan" / "f1" / "info.json").write_text(json.dumps(info))
    rc, _, err = run(capsys, tmp_path / "scan", tmp_path / "v.zarr")
    assert rc == 2 and "\n" not in err
    assert err.endswith(f"field 'f1': Images[1].Path {path!r} is outside the stack folder")


def test_missing_plane_and_skip_bad_lists_the_field(tmp_path, capsys):
    write_stack(tmp_path / "scan" / "gap", n=4)
    info = json.loads((tmp_path / "scan" / "gap" / "info.json").read_text())
    del info["Images"][2]
    (tmp_path / "scan" / "gap" / "info.json").write_text(json.dumps(info))
    write_stack(tmp_path / "scan" / "ok", n=2)
    rc, _, err = run(capsys, tmp_path / "scan", tmp_path / "v.zarr")
    assert rc == 2 and "field 'gap': missing plane(s) between z = -0.115 and -0.109 mm (step 0.003 mm)" in err
    rc, summary, err = run(capsys, tmp_path / "scan", tmp_path / "v.zarr", "--skip-bad")
    assert rc == 0 and summary["added"] == 1 and summary["quarantined"] == 1
    rows = list(csv.DictReader((tmp_path / "v.zarr.quarantine.csv").open()))
    assert rows[0]["object_id"] == "gap" and "missing plane" in rows[0]["reason"]
