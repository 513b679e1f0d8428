"""Simulated stores: determinism, Table 1 counts, rendering of every class, bad input, CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from scipy import ndimage as ndi

from scanstream.cli import main
from scanstream.errors import InputError, StoreExistsError
from scanstream.simulate import CATEGORIES, SheetConditions, dataset, simulate_dataset, simulate_store, simulate_table
from scanstream.simulate.conditions import draw_conditions, parse_assignments, read_conditions_file, resolve_conditions
from scanstream.simulate.dataset import TABLE1, dataset_plans, dataset_tables, table1_counts
from scanstream.simulate.objects import make_object
from scanstream.simulate.render import render_object
from scanstream.store import open_store, validate_store

ARGS = {"objects": 18, "alpha_fraction": 0.25, "sheet": "T1", "seed": 5}


@pytest.fixture(scope="module")
def store_1worker(tmp_path_factory):
    return simulate_store(tmp_path_factory.mktemp("s1") / "a.zarr", **ARGS, workers=1)


def test_store_is_valid_with_truth_columns(store_1worker):
    s = store_1worker
    assert validate_store(s.path) == []
    t = s.table
    assert s.n == 18 and int((s.labels == 1).sum()) == round(18 * 0.25)
    assert t.column("object_id")[0].as_py() == "SIM-T1-000000"
    assert set(t.column("experiment").to_pylist()) == {"SIM"}
    assert t.schema.field("multiplicity").type == pa.int16()
    for col in ("truth_n_prongs", "truth_ranges_um", "truth_energies_mev", "truth_density", "truth_shrinkage", "truth_chain"):
        assert col in t.column_names
    alphas = [r for r in t.to_pylist() if r["label"] == 1]
    assert all(r["category"] in ("alpha_th", "alpha_u") and r["truth_n_prongs"] in (4, 5) for r in alphas)
    assert s.attrs["source"]["stage"] == "simulate"
    assert s.attrs["pixel_size_um"] == pytest.approx(87 / 224)


def test_same_arguments_same_store_whatever_the_workers(store_1worker, tmp_path):
    again = simulate_store(tmp_path / "b.zarr", **ARGS, workers=2)
    assert again.content_hash == store_1worker.content_hash
    other = simulate_store(tmp_path / "c.zarr", **{**ARGS, "seed": 6}, workers=1)
    assert other.content_hash != store_1worker.content_hash


def test_features_only_table_equals_the_store_table(store_1worker):
    t = simulate_table(**ARGS)
    stored = store_1worker.table.replace_schema_metadata(None)
    assert t.cast(stored.schema).equals(stored)  # (Parquet renames list items to "element")


def test_conditions_change_the_store_and_are_recorded(tmp_path):
    s = simulate_store(tmp_path / "d.zarr", **{**ARGS, "objects": 4}, conditions={"density": 3.52, "fog": 2.0})
    dens = s.table.column("truth_density").to_numpy()
    assert np.allclose(dens, 3.52)
    assert s.attrs["source"]["conditions"]["T1"]["fog"] == 2.0


def test_table1_counts_at_a_scale():
    assert table1_counts(1.0) == TABLE1
    assert table1_counts(0.01) == {"train": (9, 150), "valid": (2, 38), "test": (3, 467)}
    plans, sheets = dataset_plans(0.01, seed=3)
    for split, (alpha, other) in table1_counts(0.01).items():
        cats = [p.category for p in plans[split]]
        n_alpha = sum(c.startswith("alpha") for c in cats)
        assert (n_alpha, len(cats) - n_alpha) == (alpha, other)
        assert [p.index for p in plans[split]] == list(range(len(cats)))
    assert {p.sheet for p in plans["train"]} == {sheets["pair_a"], sheets["pair_b"]}
    assert {p.sheet for p in plans["valid"]} <= {sheets["pair_a"], sheets["pair_b"]}
    assert {p.sheet for p in plans["test"]} == {sheets["test"]}
    train_ids = {(p.sheet, p.serial) for p in plans["train"]}
    assert not train_ids & {(p.sheet, p.serial) for p in plans["valid"]}


def test_dataset_tables_have_the_counts_and_sheet_conditions_differ():
    tables = dataset_tables(scale=0.004, seed=1)
    for split, (alpha, other) in table1_counts(0.004).items():
        labels = tables[split].column("label").to_numpy()
        assert ((labels == 1).sum(), (labels == 0).sum()) == (alpha, other)
    test_density = set(tables["test"].column("truth_density").to_pylist())
    train_density = set(tables["train"].column("truth_density").to_pylist())
    assert len(test_density) == 1 and len(train_density) == 2 and not test_density & train_density


def test_simulate_dataset_writes_three_stores(tmp_path):
    paths = simulate_dataset(tmp_path / "ds", scale=0.001, seed=2, workers=1)
    assert sorted(paths) == ["test", "train", "valid"]
    for split, (alpha, other) in table1_counts(0.001).items():
        s = open_store(paths[split])
        assert ((s.labels == 1).sum(), (s.labels == 0).sum()) == (alpha, other)
        assert paths[split].name == f"{split}.zarr"
    with pytest.raises(StoreExistsError, match="overwrite"):
        simulate_dataset(tmp_path / "ds", scale=0.001, seed=2)
    # an interrupted dataset run resumes: complete stores of the same command are kept
    hashes = {k: open_store(p).content_hash for k, p in paths.items()}
    train_mtime = (paths["train"] / "zarr.json").stat().st_mtime_ns
    shutil.rmtree(paths["test"])
    again = simulate_dataset(tmp_path / "ds", scale=0.001, seed=2)
    assert {k: open_store(p).content_hash for k, p in again.items()} == hashes
    assert (paths["train"] / "zarr.json").stat().st_mtime_ns == train_mtime


def test_interrupted_simulation_resumes_where_it_stopped(tmp_path, monkeypatch):
    args = {**ARGS, "objects": 70}
    full = simulate_store(tmp_path / "full.zarr", **args, shard_crops=64)
    real, calls = dataset._task, []

    def flaky(*a):
        calls.append(1)
        if len(calls) == 3:  # after two batches of 32 (one committed shard of 64)
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(dataset, "_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        simulate_store(tmp_path / "r.zarr", **args, shard_crops=64)
    partial = open_store(tmp_path / "r.zarr", require_complete=False)
    assert not partial.complete and partial.n == 64
    monkeypatch.setattr(dataset, "_task", real)
    resumed = simulate_store(tmp_path / "r.zarr", **args, shard_crops=64)
    assert resumed.n == 70 and len(set(resumed.object_ids)) == 70
    assert resumed.content_hash == full.content_hash


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_class_is_rendered(category):
    cond = SheetConditions()
    obj = make_object(category, np.random.default_rng(4), cond)
    crop = render_object(obj, cond, np.random.default_rng(9))
    empty = replace(obj, starts=np.zeros((0, 3)), ends=np.zeros((0, 3)), kinds=np.zeros(0, np.int8),
                    residual_end=np.zeros(0), ionisation=np.zeros(0), widths=np.zeros(0), blobs=np.zeros((0, 4)))
    blank = render_object(empty, cond, np.random.default_rng(9))
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    darker = blank.astype(int) - crop.astype(int)
    assert (darker > 10).sum() > 300, f"{category}: hardly anything drawn"
    assert 40 < blank.mean() < 250  # a lit background, not empty


def test_out_of_focus_objects_are_blurred_in_every_plane():
    cond = SheetConditions(focus_error=0.0)
    for seed in range(6):
        obj = make_object("blur", np.random.default_rng(seed), cond)
        assert abs(obj.defocus) >= 7.0 and obj.truth["underlying"] in ("evap", "dust", "2vtx")
        blurred = render_object(obj, cond, np.random.default_rng(0)).astype(int)
        sharp = render_object(replace(obj, defocus=0.0), cond, np.random.default_rng(0)).astype(int)
        # no plane has the sharp edges the object shows in focus (smoothed against camera noise)
        def edge(img):
            img = ndi.gaussian_filter(img.astype(float), 1.0)
            return max(np.abs(np.diff(img, axis=0)).max(), np.abs(np.diff(img, axis=1)).max())

        assert all(edge(blurred[..., c]) < 0.5 * edge(sharp[..., 1]) for c in range(3)), obj.truth["underlying"]


def test_channels_are_focal_planes():
    # a flat track at the vertex depth is sharpest (darkest) in G, the middle plane
    cond = SheetConditions(focus_error=0.0, fog=0.0, noise=0.0)
    obj = make_object("alpha_th", np.random.default_rng(1), cond)
    flat = replace(obj, ends=obj.ends * np.array([1.0, 1.0, 0.0]), starts=obj.starts * np.array([1.0, 1.0, 0.0]))
    crop = render_object(flat, cond, np.random.default_rng(0)).astype(int)
    assert crop[..., 1].min() < crop[..., 0].min() and crop[..., 1].min() < crop[..., 2].min()


# -- bad input: a clear error before any work ---------------------------------------------------
def test_negative_count_is_an_error(tmp_path):
    with pytest.raises(InputError, match="non-negative"):
        simulate_store(tmp_path / "x.zarr", **{**ARGS, "objects": -1})
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_fraction_outside_unit_interval_is_an_error(tmp_path, fraction):
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        simulate_store(tmp_path / "x.zarr", **{**ARGS, "alpha_fraction": fraction})
    assert not (tmp_path / "x.zarr").exists()


def test_unknown_condition_name_is_an_error(tmp_path):
    with pytest.raises(InputError, match="unknown sheet condition 'humidity'"):
        simulate_store(tmp_path / "x.zarr", **ARGS, conditions={"humidity": 3})
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(InputError, match="NAME=VALUE"):
        parse_assignments(["density"])


def test_unknown_condition_in_a_file_is_an_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("density = 3.6\ncolour = 2\n")
    with pytest.raises(InputError, match=r"c\.toml: unknown sheet condition 'colour'"):
        read_conditions_file(f)
    f.write_text("density = 3.55\nfog = 4\n")
    assert resolve_conditions("S", 0, conditions=f).density == 3.55


def test_condition_out_of_range_is_an_error():
    with pytest.raises(InputError, match="density=9.0"):
        resolve_conditions("S", 0, conditions={"density": 9.0})


def test_existing_store_without_overwrite_is_an_error(store_1worker):
    before = store_1worker.content_hash
    with pytest.raises(StoreExistsError, match="--overwrite"):
        simulate_store(store_1worker.path, **ARGS)
    assert open_store(store_1worker.path).content_hash == before


def test_dataset_scale_must_be_positive(tmp_path):
    with pytest.raises(InputError, match="scale"):
        simulate_dataset(tmp_path, scale=0, seed=0)


def test_drawn_conditions_are_deterministic_per_sheet():
    assert draw_conditions("A", 1) == draw_conditions("A", 1)
    assert draw_conditions("A", 1) != draw_conditions("B", 1)
    assert 3.50 <= draw_conditions("A", 1).density <= 3.74


# -- the command line -----------------------------------------------------------------------------
def test_cli_simulate_and_errors(tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    assert main(["simulate", str(out), "--objects", "6", "--alpha-fraction", "0.5", "--sheet", "C", "--density", "3.6"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objects"] == 6
    assert main(["simulate", str(out), "--objects", "6", "--alpha-fraction", "0.5", "--sheet", "C"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "n.zarr"), "--objects", "-3", "--alpha-fraction", "0.5", "--sheet", "C"]) == 2
    assert main(["simulate", str(tmp_path / "n.zarr"), "--objects", "3", "--alpha-fraction", "2", "--sheet", "C"]) == 2
    assert main(["simulate", str(tmp_path / "n.zarr"), "--objects", "3", "--alpha-fraction", "0.1", "--sheet", "C",
                 "--condition", "wetness=1"]) == 2
    err = capsys.readouterr().err
    assert "non-negative" in err and "[0, 1]" in err and "wetness" in err
    assert not (tmp_path / "n.zarr").exists()


def test_cli_features_only(tmp_path, capsys):
    out = tmp_path / "f.parquet"
    assert main(["simulate", str(out), "--objects", "50", "--alpha-fraction", "0.1", "--sheet", "F", "--features-only"]) == 0
    import pyarrow.parquet as pq

    t = pq.read_table(out)
    assert t.num_rows == 50 and "track_lengths_um" in t.column_names
    capsys.readouterr()


def test_calibration_report_structure():
    from scanstream.simulate.calibration import calibrate_seed, to_markdown

    r = calibrate_seed(3, scale=0.01)
    assert r["cuts_from_train"]["min_multiplicity"] <= r["cuts_from_train"]["max_multiplicity"]
    s = r["train_cuts"]
    assert s["objects"] == sum(table1_counts(0.01)["test"]) and s["alpha"] == table1_counts(0.01)["test"][0]
    assert isinstance(s["in_band"], bool) and 0 <= s["recall"]["value"] <= 1
    md = to_markdown([r])
    assert "| 3 | S3T" in md and "2,489" in md


def test_pool_keeps_what_the_rule_keeps_and_a_rerun_reuses_it(tmp_path):
    from scanstream.simulate.pool import simulate_pool

    def keep(table):
        return np.asarray(table.column("multiplicity").to_numpy(zero_copy_only=False)) >= 3

    args = {"prefix": "PL", "sheets": 2, "objects_per_sheet": 15, "alpha_fraction": 0.4, "seed": 3, "keep": keep,
            "keep_identity": {"rule": "m>=3"}}
    store, counts = simulate_pool(tmp_path / "pool.zarr", **args)
    mult = store.table.column("multiplicity").to_numpy()
    assert counts["planned"] == 30 and counts["kept"] == store.n == int((mult >= 3).sum()) and (mult >= 3).all()
    assert set(store.table.column("sheet").to_pylist()) <= {"PL00", "PL01"}
    again, counts2 = simulate_pool(tmp_path / "pool.zarr", **args)
    assert again.content_hash == store.content_hash and counts2 == counts
    with pytest.raises(Exception, match="exists"):
        simulate_pool(tmp_path / "pool.zarr", **{**args, "keep_identity": {"rule": "other"}})
