"""The former method: cuts, ordering, counting with sqrt(N) errors, cuts chosen on TRAIN, CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scanstream.cli import main
from scanstream.errors import InputError
from scanstream.picker.cuts import (
    DEFAULT_CONFIG,
    BaselineConfig,
    choose_config,
    run_baseline,
    run_baseline_table,
    select,
    summarize,
)

ALPHA_STAR = [49.0, 33.0, 30.0, 26.0, 24.0]


def _table(mults, lengths, labels, categories=None) -> pa.Table:
    n = len(mults)
    return pa.table(
        {
            "object_id": [f"O{i:06d}" for i in range(n)],
            "label": pa.array(labels, pa.int8()),
            "category": categories or [("alpha_th" if y == 1 else "evap") for y in labels],
            "multiplicity": pa.array(mults, pa.int16()),
            "track_lengths_um": pa.array(lengths, pa.list_(pa.float32())),
        }
    )


def test_cuts_select_alpha_like_stars_only():
    cases = [
        (5, ALPHA_STAR, True),  # thorium star
        (4, [40.0, 28.0, 24.0, 20.0], True),  # uranium star
        (3, [40.0, 28.0, 24.0], False),  # a prong missing: multiplicity cut
        (6, [40.0, 30.0, 28.0, 24.0, 22.0, 20.0], False),
        (5, [80.0, 33.0, 30.0, 26.0, 24.0], False),  # a track leaving the field
        (4, [30.0, 25.0, 20.0, 4.0], False),  # a short stub: evaporation fragment or dust lobe
        (5, [DEFAULT_CONFIG.max_length_um, 33.0, 30.0, 26.0, DEFAULT_CONFIG.min_length_um], True),  # inclusive
        (-1, [], False),  # unknown features
    ]
    sel, score = select(np.array([c[0] for c in cases]), [np.array(c[1]) for c in cases])
    assert sel.tolist() == [c[2] for c in cases]
    assert score[sel].min() > score[~sel].max()  # selected objects come first


def test_score_orders_by_prongs_in_the_window_then_length():
    mults = np.array([2, 3, 5, 5])
    lengths = [np.array([30.0, 80.0]), np.array([30.0, 25.0, 20.0]), np.array(ALPHA_STAR), np.array([40.0, 33.0, 30.0, 26.0, 24.0])]
    _, score = select(mults, lengths)
    assert score[0] < score[1] < score[3] < score[2]  # longest prong in the window breaks the tie


def test_paper_counting_with_sqrt_n_errors():
    # the paper's TEST sheet: 2,489 selected with 201 of the 255 alpha decays among 46,948 objects
    n, tp, alpha, sel = 46948, 201, 255, 2489
    mults = np.full(n, 2)
    labels = np.zeros(n, np.int8)
    labels[:alpha] = 1
    mults[:tp] = 5  # selected alphas
    mults[alpha : alpha + sel - tp] = 5  # selected others
    lengths = [ALPHA_STAR if m == 5 else [30.0, 90.0] for m in mults]
    table = _table(mults.tolist(), lengths, labels.tolist())
    result = run_baseline_table(table)
    s = summarize(table, result)
    assert (s["selected"], s["true_positives"], s["alpha"], s["false_positives"]) == (2489, 201, 255, 2288)
    assert round(s["precision"]["value"], 3) == 0.081 and round(s["precision"]["error"], 3) == 0.006
    assert round(s["recall"]["value"], 3) == 0.788 and round(s["recall"]["error"], 3) == 0.056
    assert s["false_positives_by_category"] == {"evap": 2288}


def test_summary_without_labels_counts_the_selection_only():
    table = _table([5, 2], [ALPHA_STAR, [30.0, 90.0]], [-1, -1])
    s = summarize(table, run_baseline_table(table))
    assert s == {"objects": 2, "selected": 1, "labelled": 0}


def test_result_columns_follow_the_contract(store_factory):
    store = store_factory(n=20)
    result = run_baseline(store)
    assert result.column_names == ["object_id", "selected", "baseline_score"]
    assert result.schema.field("selected").type == pa.bool_()
    assert result.schema.field("baseline_score").type == pa.float64()
    assert result.column("object_id").to_pylist() == store.object_ids


def test_choose_config_from_train_alphas():
    rng = np.random.default_rng(0)
    mults, lengths, labels = [], [], []
    for i in range(400):
        m = 5 if i % 3 else 4
        mults.append(m)
        lengths.append(rng.uniform(18.0, 52.0, m).tolist())
        labels.append(1)
    for _ in range(50):  # a few 3-prong alphas and many backgrounds do not move the cuts
        mults.append(3)
        lengths.append([5.0, 5.0, 100.0])
        labels.append(1)
    for _ in range(2000):
        mults.append(4)
        lengths.append([2.0, 3.0, 90.0, 120.0])
        labels.append(0)
    cfg = choose_config(_table(mults, lengths, labels))
    assert (cfg.min_multiplicity, cfg.max_multiplicity) == (4, 5)
    assert (cfg.min_length_um, cfg.max_length_um) == (15.0, 55.0)  # 2nd / 99.5th percentile, rounded to 5 um
    fine = choose_config(_table(mults, lengths, labels), step=0.5)
    assert 18.0 <= fine.min_length_um <= 19.0 and 51.5 <= fine.max_length_um <= 52.0


def test_choose_config_needs_labelled_alphas():
    with pytest.raises(InputError, match="labelled alpha"):
        choose_config(_table([5], [ALPHA_STAR], [0]))


def test_bad_config_and_missing_features():
    with pytest.raises(InputError, match="multiplicity window"):
        BaselineConfig(min_multiplicity=6, max_multiplicity=4)
    with pytest.raises(InputError, match="length window"):
        BaselineConfig(min_length_um=60.0, max_length_um=55.0)
    with pytest.raises(InputError, match="multiplicity"):
        run_baseline_table(pa.table({"object_id": ["a"]}))


def test_cli_baseline_writes_the_selection(store_factory, tmp_path, capsys):
    store = store_factory(n=24)
    out = tmp_path / "sel.parquet"
    assert main(["baseline", str(store.path), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    t = pq.read_table(out)
    assert t.num_rows == 24 and summary["selected"] == int(np.sum(t.column("selected").to_numpy(zero_copy_only=False)))
    assert "precision" in summary and summary["cuts"] == DEFAULT_CONFIG.to_dict()
    assert json.loads(t.schema.metadata[b"scanstream_baseline"]) == DEFAULT_CONFIG.to_dict()


def test_cli_baseline_cuts_from_train_and_bad_paths(store_factory, tmp_path, capsys):
    train = store_factory("train.zarr", n=40, seed=1)
    test = store_factory("test.zarr", n=20, seed=2)
    assert main(["baseline", str(test.path), "--cuts-from", str(train.path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cuts"]["min_multiplicity"] == 5  # the fixture's alphas all report 5 prongs
    assert main(["baseline", str(tmp_path / "nothing.zarr")]) == 2
    assert "neither a crop store" in capsys.readouterr().err
