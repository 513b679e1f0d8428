"""scanstream.review.adapt: the useful review order, threshold from verdicts, and its benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import draw_crops, load_script, make_checkpoint, make_store
from test_query import write_candidates

from scanstream.candidates.query import CandidateFilter
from scanstream.cli import main
from scanstream.errors import InputError, VerdictError
from scanstream.review.adapt import (
    ALLOCATION,
    JudgedSample,
    _design_of,
    asked_until,
    band_edges,
    build_design,
    record_from_verdicts,
    threshold_from_verdicts,
    weighted_recall,
    weighted_recall_cut,
)
from scanstream.review.gallery import write_gallery
from scanstream.review.server import ReviewSession
from scanstream.threshold import load_threshold, threshold_at_recall
from scanstream.verdicts import read_records


def sheet_scores(n=2000, prevalence=0.05, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.int8)
    s = np.where(y == 1, rng.normal(2.0, 1.5, n), rng.normal(-2.0, 1.5, n))
    return np.array([f"o{i:05d}" for i in range(n)]), s, y


def test_bands_cover_the_sheet_and_the_order_asks_every_object_once():
    ids, s, _ = sheet_scores(500)
    d = build_design(ids, s, threshold=1.0, sheet="A", seed=3)
    k = int((s >= 1.0).sum())
    assert d.edges == band_edges(500, k) and d.edges[0] == 0 and d.edges[-1] == 500 and k in d.edges
    assert sorted(d.order.tolist()) == list(range(500))
    assert np.all(np.diff(d.scores) <= 0)  # ranked, highest first
    # the first round asks two objects of each of the four bands around the threshold, one of each deep band
    bands = len(d.edges) - 1
    assert bands == 6 and d.allocation == ALLOCATION == (2, 2, 2, 2, 1, 1)
    assert d.band[d.order[:10]].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 5]
    # equal allocation: one object of every band per round, in band order
    equal = build_design(ids, s, threshold=1.0, sheet="A", seed=3, allocation=(1,))
    assert equal.band[equal.order[: 3 * bands]].tolist() == list(range(bands)) * 3
    assert equal.design_id != d.design_id and np.array_equal(equal.draw, d.draw)
    assert build_design(ids, s, threshold=1.0, sheet="A", seed=3).design_id == d.design_id
    other = build_design(ids, s, threshold=1.0, sheet="A", seed=4)
    assert other.design_id != d.design_id and not np.array_equal(other.order, d.order)
    f = d.verdict_fields(7)
    assert f["design"] == d.design_id and f["band_size"] == d.sizes[f["band"]] and f["order_position"] == 7
    assert f["design_allocation"] == [2, 2, 2, 2, 1, 1]


@pytest.mark.parametrize("bad", [(0,), (1.5,), (-2, 1)])
def test_bad_allocations_are_refused(bad):
    with pytest.raises(InputError, match="allocation"):
        build_design(["a", "b"], [1.0, 0.0], threshold=0.5, allocation=bad)


def test_verdicts_without_an_allocation_were_asked_with_equal_allocation():
    base = {"order": "useful", "design": "d1", "sheet": "A", "design_seed": 3, "design_threshold": 1.0}
    assert _design_of([base], None, None, "v")[4] == (1,)
    assert _design_of([{**base, "design_allocation": [2, 2, 1]}], None, None, "v")[4] == (2, 2, 1)


def horvitz_thompson_reference(design, asked, y_ranked):
    """Slow reference: sum over judged alpha decays of 1 / (n_h / N_h), one object at a time."""
    total = 0.0
    for i in asked:
        h = design.band[i]
        n_h = sum(1 for j in asked if design.band[j] == h)
        total += y_ranked[i] / (n_h / design.sizes[h])
    return total


def test_the_simulated_reviewer_stops_at_the_asked_alpha_count():
    scores = np.linspace(5, -5, 400)
    y = (np.arange(400) % 9 == 0).astype(np.int8)  # 45 alpha decays spread over the ranks
    d = build_design([f"o{i}" for i in range(400)], scores, threshold=0.0, sheet="R")
    asked = asked_until(d, y[d.source], 10)
    assert (y[d.source][asked] == 1).sum() == 10 and y[d.source][asked[-1]] == 1  # stops on the 10th
    assert asked_until(d, y[d.source], 1000).size == 400  # fewer than asked: the whole order


def test_alpha_total_is_unbiased_over_designs_and_matches_the_slow_reference():
    ids, s, y = sheet_scores(1500, prevalence=0.04, seed=1)
    estimates, recalls = [], []
    for seed in range(300):
        d = build_design(ids, s, threshold=1.5, sheet="A", seed=seed)
        asked = np.sort(d.order[:150])
        yr = y[d.source]
        sample = JudgedSample(d, asked, yr[asked])
        w = sample.weights()
        est = float((w * (sample.labels == 1)).sum())
        if seed < 5:
            assert est == pytest.approx(horvitz_thompson_reference(d, asked, yr))
        estimates.append(est)
        recalls.append(weighted_recall(sample.labels, w, d.scores[asked], 1.5))
    true_alpha, true_recall = y.sum(), y[s >= 1.5].sum() / y.sum()
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - true_alpha) < 4 * se
    assert abs(np.mean(recalls) - true_recall) < 0.03  # a ratio estimator: bias of order 1/n


def test_a_census_gives_the_labelled_threshold():
    ids, s, y = sheet_scores(400, seed=2)
    d = build_design(ids, s, threshold=0.5, sheet="A")
    everyone = np.arange(400)
    sample = JudgedSample(d, everyone, y[d.source])
    assert np.all(sample.weights() == 1.0)
    rec = record_from_verdicts(sample, target_recall=0.8, model_hashes=["m"], calibration={}, replicates=200)
    assert rec["threshold"] == threshold_at_recall(y, s, 0.8)
    assert rec["achieved"]["recall_ci"][0] == rec["achieved"]["recall_ci"][1] == rec["achieved"]["recall"]
    assert rec["achieved"]["alpha"] == y.sum()
    assert weighted_recall_cut(y, np.ones(400), s, 0.8) == rec["threshold"]


def test_a_band_without_verdicts_is_named():
    ids, s, y = sheet_scores(400)
    d = build_design(ids, s, threshold=0.5, sheet="A")
    first_band = np.nonzero(d.band == 0)[0]
    with pytest.raises(VerdictError, match="score band 1 .*review further"):
        JudgedSample(d, first_band, y[d.source][first_band]).weights()


@pytest.mark.parametrize("bad", [{"threshold": float("nan")}, {"seed": -1}, {"scores": [1.0, float("inf")]}])
def test_bad_design_inputs_are_refused(bad):
    kw = {"object_ids": ["a", "b"], "scores": [1.0, 0.0], "threshold": 0.5, **bad}
    with pytest.raises(InputError):
        build_design(**kw)


# -- the review page, the verdicts and the threshold verb -----------------------------------------
@pytest.fixture
def reviewed(tmp_path):
    """A candidate table of one labelled store, and a reviewer answering in the useful order."""
    store = make_store(tmp_path / "sheet.zarr", n=160, alpha_fraction=0.15, seed=7, sheet="PALE")
    labels = store.labels
    rng = np.random.default_rng(0)
    t = store.table
    rows = [{"object_id": oid, "sheet": "PALE", "plate": 9, "x_mm": 1.0, "y_mm": 2.0,
             "score": float(rng.normal(1.5 if lab else -1.5, 1.2)), "store": str(store.path), "store_index": i}
            for i, (oid, lab) in enumerate(zip(t.column("object_id").to_pylist(), labels))]
    cands = write_candidates(tmp_path / "cands", rows, threshold=1.0, store_hash=store.content_hash)
    session = ReviewSession(cands, tmp_path / "verdicts", stores=[store.path], filters=CandidateFilter(top=90),
                            order="useful", seed=5)
    truth = dict(zip(t.column("object_id").to_pylist(), labels))
    for i, row in enumerate(session.rows):
        session.record(i, "alpha" if truth[row["object_id"]] == 1 else "not_alpha")
    return store, cands, session, tmp_path / "verdicts", rows, truth


def test_useful_order_verdicts_record_their_band(reviewed):
    _, _, session, verdicts, _, _ = reviewed
    assert len(session.rows) == 90 and session.shown == "90 of 160"
    recs = read_records(verdicts)
    assert len(recs) == 90 and {r["design"] for r in recs} == {session.design_fields[0]["design"]}
    assert [r["order_position"] for r in recs] == list(range(90))
    assert "score band" in session.page() and "useful order" in session.page()
    assert len({r["band"] for r in recs}) == len({f["band"] for f in session.design_fields if f}) > 3


def test_threshold_from_verdicts_on_the_cli(reviewed, tmp_path, capsys):
    _, cands, _, verdicts, rows, truth = reviewed
    out = tmp_path / "thr.json"
    assert main(["threshold", str(cands), "--verdicts", str(verdicts), "--recall", "0.8", "--out", str(out),
                 "--replicates", "300"]) == 0
    printed = capsys.readouterr().out
    assert "estimated recall" in printed and "previous threshold" in printed
    rec = load_threshold(out)  # the same record format, readable by classify
    assert rec["target"] == {"kind": "recall", "value": 0.8} and rec["model_hashes"] == ["m" * 16]
    assert rec["calibration_store"]["kind"] == "verdicts" and rec["calibration_store"]["sheet"] == "PALE"
    assert rec["weighting"]["method"].startswith("model-based") and rec["previous"]["threshold"] == 1.0
    assert rec["design_based"]["method"] == "horvitz-thompson" and 0.0 <= rec["design_based"]["recall"] <= 1.0
    assert rec["weighting"]["allocation"] == list(ALLOCATION[: len(rec["weighting"]["bands"])]) and rec["cut_rule"].startswith("posterior mean")
    bands = rec["weighting"]["bands"]
    assert sum(b["size"] for b in bands) == 160 and sum(b["judged"] for b in bands) == 90
    assert all(b["inclusion_probability"] == b["judged"] / b["size"] for b in bands)
    lo, hi = rec["achieved"]["recall_ci"]
    assert lo <= rec["achieved"]["recall"] <= hi and rec["threshold_ci"][0] <= rec["threshold"] <= rec["threshold_ci"][1]
    scores = np.array([r["score"] for r in rows], np.float32)  # as the table holds them
    y = np.array([truth[r["object_id"]] for r in rows])
    assert rec["achieved"]["selected"] == int((scores >= rec["threshold"]).sum())
    assert abs(rec["achieved"]["alpha"] - y.sum()) < 0.5 * y.sum()


def test_score_order_verdicts_do_not_count(tmp_path, reviewed):
    store, cands, _, _, _, _ = reviewed
    other = tmp_path / "score-order"
    s = ReviewSession(cands, other, stores=[store.path], filters=CandidateFilter(top=20))
    for i in range(20):
        s.record(i, "alpha")
    with pytest.raises(VerdictError, match="no verdict was given in the useful order"):
        threshold_from_verdicts(cands, other, target_recall=0.8)


def test_changed_scores_are_refused(tmp_path, reviewed):
    store, _, _, verdicts, rows, _ = reviewed
    moved = write_candidates(tmp_path / "rescored", [{**r, "score": -r["score"]} for r in rows], threshold=1.0,
                             store_hash=store.content_hash)
    with pytest.raises(VerdictError, match="scores or objects changed"):
        threshold_from_verdicts(moved, verdicts, target_recall=0.8)


@pytest.mark.parametrize("extra, needle", [(["--model", "x.safetensors"], "drop --model"),
                                           (["--target-precision", "0.5"], "give --target-recall")])
def test_cli_refusals_from_verdicts(reviewed, tmp_path, capsys, extra, needle):
    _, cands, _, verdicts, _, _ = reviewed
    argv = ["threshold", str(cands), "--verdicts", str(verdicts), "--out", str(tmp_path / "t.json"), *extra]
    if "--target-precision" not in extra:
        argv += ["--target-recall", "0.8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "t.json").exists()


def test_useful_order_refuses_filters_it_cannot_sample(reviewed, tmp_path):
    store, cands, _, _, _, _ = reviewed
    with pytest.raises(InputError, match="--region"):
        ReviewSession(cands, tmp_path / "v", stores=[store.path], order="useful",
                      filters=CandidateFilter(region=(0, 10, 0, 10), top=5))


def test_gallery_in_the_useful_order(reviewed, tmp_path):
    store, cands, session, _, _, _ = reviewed
    res = write_gallery(cands, tmp_path / "g", stores=[store.path], filters=CandidateFilter(top=12), order="useful",
                        seed=5)
    meta = json.loads((res.out / "gallery.json").read_text())
    assert meta["order"] == "useful" and [r["object_id"] for r in meta["rows"]] == [
        r["object_id"] for r in session.rows[:12]]


def test_useful_verdicts_become_a_store_for_fine_tuning(reviewed, tmp_path):
    """verdicts to-store, then train --recipe finetune --pretrained on it (one tiny epoch)."""
    store, _, _, verdicts, _, _ = reviewed
    out = tmp_path / "verdicts.zarr"
    assert main(["verdicts", "to-store", str(verdicts), "--store", str(store.path), "--out", str(out)]) == 0
    valid = make_store(tmp_path / "valid.zarr", n=40, seed=8)
    ck = make_checkpoint(tmp_path / "c.safetensors", 0, draw_crops(np.array([1, 0, 1, 0]), seed=1))
    rc = main(["train", str(out), str(valid.path), "--out", str(tmp_path / "ft"), "--recipe", "finetune",
               "--pretrained", str(ck), "--max-epochs", "1", "--batch-size", "8", "--loader", "local",
               "--no-progress", "--device", "cpu"])
    assert rc == 0 and (tmp_path / "ft" / "model.safetensors").exists()


# -- the benchmark ------------------------------------------------------------------------------
def test_benchmark_runs_tiny(tmp_path, capsys):
    mod = load_script("benchmarks/verdicts_adapt.py")
    valid = make_store(tmp_path / "valid.zarr", n=120, alpha_fraction=0.2, seed=11, sheet="VALID")
    sheet = make_store(tmp_path / "sheet.zarr", n=300, alpha_fraction=0.1, seed=12, sheet="SHIFT")
    ck = make_checkpoint(tmp_path / "c.safetensors", 0, draw_crops(np.array([1, 0] * 4), seed=2))
    assert mod.main(["--model", str(ck), "--valid", str(valid.path), "--sheet", str(sheet.path), "--alpha-verdicts",
                     "10", "--replicates", "200", "--finetune", "--work", str(tmp_path / "w"), "--epochs", "1",
                     "--batch-size", "8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["objects"] == 300 and doc["verdicts"]["alpha"] == 10
    assert doc["verdicts"]["asked"] == sum(b["judged"] for b in doc["verdicts"]["bands"])
    for key in ("before", "after"):
        assert 0.0 <= doc[key]["true_recall"] <= 1.0 and len(doc[key]["recall_ci"]) == 2
    assert doc["after"]["truth_inside_ci"] == (doc["after"]["recall_ci"][0] <= doc["after"]["true_recall"]
                                              <= doc["after"]["recall_ci"][1])
    assert "load_cut" in doc and "cuts_recall" in doc["load_cut"]
    ft = doc["finetuned"]  # the verdicts became a store, the model was fine-tuned on it and rescored the sheet
    assert Path(ft["checkpoint"]).exists() and 0.0 <= ft["after"]["true_recall"] <= 1.0
    assert ft["after"]["estimated_alpha"] > 0 and "factor" in ft["load_cut"]


def test_benchmark_help_says_what_to_run(capsys):
    mod = load_script("benchmarks/verdicts_adapt.py")
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    text = capsys.readouterr().out
    assert "scanstream simulate" in text and "benchmarks/verdicts_adapt.py --model" in text


def test_benchmark_binormal_mode(capsys):
    mod = load_script("benchmarks/verdicts_adapt.py")
    assert mod.main(["--binormal", "3", "--objects", "1500", "--alpha", "40", "--settings", "1.8:0:20:0,1.2:-1:10:0.15",
                     "--replicates", "100"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["binormal"]["sheets"] == 3 and [s["alpha_verdicts"] for s in doc["settings"]] == [20, 10]
    for setting in doc["settings"]:
        for method in ("previous", "current"):
            m = setting[method]
            assert 0.0 <= m["ci_holds_truth"] <= 1.0 and m["ci_width_median"] >= 0.0
            lo, mid, hi = m["verdicts_asked_q10_50_90"]
            assert setting["alpha_verdicts"] <= lo <= mid <= hi <= 1500


def test_the_benchmark_baseline_is_the_previous_estimator():
    """The benchmark's baseline cut is the Horvitz-Thompson cut, and a census gives it a closed interval."""
    mod = load_script("benchmarks/verdicts_adapt.py")
    ids, s, y = sheet_scores(400, seed=2)
    d = build_design(ids, s, threshold=0.5, sheet="A", allocation=(1,))
    everyone = np.arange(400)
    t, lo, hi = mod.previous_estimator(d, everyone, y[d.source], 0.8, 200, 0)
    assert t == threshold_at_recall(y, s, 0.8) and lo == hi
