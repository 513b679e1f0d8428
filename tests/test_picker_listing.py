"""The picker's features arrive through the listing, or a model reading them refuses (issue 26).

``ingest --format images`` reads multiplicity, prong lengths and dips from the listing (a list
column in Parquet, ``;``-separated text in CSV); values out of physical range or disagreeing
with each other are refused with one line naming the row; and a fused model (the shipped
cascade) refuses objects with prongs but no lengths instead of scoring them as prong-less.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from scanstream.cli import main
from scanstream.errors import InputError
from scanstream.inference.scoring import score_store
from scanstream.store import open_store

pytestmark = pytest.mark.reliability

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "scanstream-cpu-cascade.safetensors"
ALPHA = [31.5, 24.0, 38.2, 27.9, 44.0]  # five prongs in the alpha window (um)


def _source(tmp_path: Path, n: int) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(150, 220, (224, 224), dtype=np.uint8)).save(src / f"c{i}.png")
    return src


def _csv(src: Path, rows: list[str], extra: str = "multiplicity,track_lengths,track_dips_deg") -> None:
    lines = [f"file,object_id,x_mm,y_mm,z_mm,{extra}"]
    lines += [f"c{i}.png,o{i},{i},0,0,{r}" for i, r in enumerate(rows)]
    (src / "listing.csv").write_text("\n".join(lines) + "\n")


def _ingest(src: Path, store: Path) -> int:
    return main(["ingest", str(src), str(store), "--format", "images", "--no-progress"])


def test_a_csv_listing_gives_lengths_and_dips_per_prong(tmp_path):
    src = _source(tmp_path, 3)
    _csv(src, ["2,31.5;12,10;-5", "0,,", "1,140,80"])
    assert _ingest(src, tmp_path / "s.zarr") == 0
    t = open_store(tmp_path / "s.zarr").table
    assert t.column("multiplicity").to_pylist() == [2, 0, 1]
    assert t.column("track_lengths_um").to_pylist() == [[31.5, 12.0], [], [140.0]]
    assert t.column("track_dips_deg").to_pylist() == [[10.0, -5.0], None, [80.0]]


def test_a_parquet_listing_gives_lengths_as_a_list_column(tmp_path):
    src = _source(tmp_path, 2)
    pq.write_table(pa.table({
        "file": ["c0.png", "c1.png"], "object_id": ["o0", "o1"], "x_mm": [0.0, 1.0], "y_mm": [0.0, 0.0],
        "z_mm": [0.0, 0.0], "multiplicity": [3, 1],
        "prong_lengths_um": pa.array([[20.0, 30.0, 40.0], [7.5]], pa.list_(pa.float32()))}),
        src / "listing.parquet")
    assert _ingest(src, tmp_path / "s.zarr") == 0
    t = open_store(tmp_path / "s.zarr").table
    assert t.column("track_lengths_um").to_pylist() == [[20.0, 30.0, 40.0], [7.5]]


@pytest.mark.parametrize("row, match", [
    ("-5,,", "multiplicity -5 is negative"),
    ("2,31.5;-4,", "-4.0 is out of range"),
    ("2,31.5;x,", "'x' is not a number"),
    ("3,31.5;12,", "multiplicity 3 but 2 prong length"),
    ("2,,", "multiplicity 2 but no prong lengths"),
    ("1,30,95", "95.0 is out of range"),
    ("2,31.5;12,10", "1 prong dip(s) but 2 prong length(s)"),
])
def test_picker_values_out_of_range_or_disagreeing_are_one_line(tmp_path, capsys, row, match):
    src = _source(tmp_path, 2)
    _csv(src, ["1,30,5", row])
    assert _ingest(src, tmp_path / "s.zarr") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scanstream ingest: error: ") and match in err, err
    assert "line 3" in err and not (tmp_path / "s.zarr").exists()


def test_the_shipped_cascade_scores_ingested_prongs_and_refuses_objects_without_lengths(tmp_path):
    src = _source(tmp_path, 4)
    _csv(src, [f"5,{';'.join(map(str, ALPHA))}," for _ in range(2)] + ["0,,"] * 2)
    assert _ingest(src, tmp_path / "s.zarr") == 0
    store = open_store(tmp_path / "s.zarr")
    scores = score_store(store, [SHIPPED], device="cpu", precision="fp32")
    assert np.isfinite(scores).all()
    assert scores[:2].min() > scores[2:].max() + 1.0  # five alpha-window prongs read, not "no prongs"
    # the same crops listed with multiplicity only (the listing before this release): refused, rows named
    (src / "listing.csv").unlink()
    _csv(src, ["5", "5", "0", "0"], extra="multiplicity")
    assert _ingest(src, tmp_path / "m.zarr") == 0
    with pytest.raises(InputError, match=r"2 of 4 objects .* no prong lengths \(first: o0, o1\)"):
        score_store(open_store(tmp_path / "m.zarr"), [SHIPPED], device="cpu", precision="fp32")


def test_info_on_a_store_says_which_picker_features_it_carries(tmp_path, capsys):
    import json

    src = _source(tmp_path, 3)
    _csv(src, ["2,31.5;12,10;-5", "0,,", "1,140,80"])
    assert _ingest(src, tmp_path / "s.zarr") == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s.zarr")]) == 0
    carried = json.loads(capsys.readouterr().out)["picker_features"]
    assert carried == {"multiplicity": 3, "track_lengths_um": 3, "track_dips_deg": 2}
