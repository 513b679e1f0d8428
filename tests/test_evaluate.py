"""scanstream.evaluation.evaluate / report / figures and the `evaluate` verb on tiny hand-built tables."""

from __future__ import annotations

import json
import math
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fixtures import drop_table_digest

from scanstream import metrics as mt
from scanstream.cli import main
from scanstream.errors import InputError, ThresholdError
from scanstream.evaluation import evaluate as ev
from scanstream.evaluation import loading as ld
from scanstream.store import create_store

CATS = ["dust", "1vtx", "track", "scratch"]


def tiny_store(path, n=60, *, seed=0, sheet="S1", unknown=0, prefix=None):
    """A store with blank crops (evaluate never reads crops), mixed categories, `unknown` unlabelled rows."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    labels[:2] = [1, 0]
    if unknown:
        labels[-unknown:] = -1
    rows = [
        {
            "object_id": f"{prefix or sheet}-{i:05d}",
            "sheet": sheet,
            "label": int(labels[i]),
            "category": "alpha_th" if labels[i] == 1 else (None if labels[i] < 0 else CATS[i % len(CATS)]),
        }
        for i in range(n)
    ]
    crops = np.zeros((n, 224, 224, 3), np.uint8)
    return create_store(path, crops, rows, source={"stage": "test"}), labels


def write_candidates(path, store, scores, *, threshold=None, model_hashes=("aaaa",), drop=()):
    """A candidate table following contracts.md: sheet=<s>/part-<hash12>-<start>.parquet + manifest."""
    t = store.table
    keep = np.array([i not in set(drop) for i in range(t.num_rows)])
    idx = np.flatnonzero(keep)
    s = np.asarray(scores, np.float32)[idx]
    record = None
    if threshold is not None:
        record = {"threshold": threshold, "target": {"kind": "recall", "value": 0.8}, "model_hashes": list(model_hashes)}
    table = pa.table(
        {
            "object_id": pa.array([t.column("object_id")[i].as_py() for i in idx], pa.string()),
            "experiment": pa.array(["E07"] * len(idx)),
            "module": pa.array([99] * len(idx), pa.int32()),
            "plate": pa.array([9] * len(idx), pa.int32()),
            "sheet": pa.array([t.column("sheet")[i].as_py() for i in idx]),
            "x_mm": pa.array(np.zeros(len(idx))),
            "y_mm": pa.array(np.zeros(len(idx))),
            "z_mm": pa.array(np.zeros(len(idx))),
            "score": pa.array(s, pa.float32()),
            "probability": pa.array(1 / (1 + np.exp(-s)), pa.float32()),
            "selected": pa.array(s >= threshold) if threshold is not None else pa.nulls(len(idx), pa.bool_()),
            "rank": pa.array(np.argsort(np.argsort(-s)) + 1, pa.int64()),
            "store": pa.array([str(store.path)] * len(idx)),
            "store_index": pa.array(idx, pa.int64()),
        }
    )
    meta = {"threshold": record, "model_hashes": list(model_hashes), "store_hashes": {str(store.path): store.content_hash}}
    part_dir = path / f"sheet={urllib.parse.quote(t.column('sheet')[0].as_py(), safe='')}"
    part_dir.mkdir(parents=True, exist_ok=True)
    name = f"part-{store.content_hash[:12]}-{0:012d}.parquet"
    existing = part_dir / name
    if existing.exists():
        raise AssertionError("test helper writes one part per store")
    pq.write_table(table.replace_schema_metadata({b"scanstream": json.dumps(meta)}), existing)
    (path / "_manifest.json").write_text(json.dumps({"complete": True}))
    return path


def write_baseline(path, store, selected, score=None):
    cols = {"object_id": store.table.column("object_id"), "selected": pa.array(np.asarray(selected, bool))}
    if score is not None:
        cols["baseline_score"] = pa.array(np.asarray(score, np.float64))
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture
def case(tmp_path):
    store, labels = tiny_store(tmp_path / "test.zarr", n=80, unknown=4)
    rng = np.random.default_rng(1)
    scores = 2.0 * (labels == 1) + rng.normal(0, 1.0, len(labels))
    # former method: a weaker ordering, cut to select a third of the objects
    fscore = 1.0 * (labels == 1) + rng.normal(0, 1.0, len(labels))
    fsel = fscore >= np.quantile(fscore, 0.66)
    cand = write_candidates(tmp_path / "cands", store, scores, threshold=0.5)
    base = write_baseline(tmp_path / "former.parquet", store, fsel, fscore)
    return {"tmp": tmp_path, "store": store, "labels": labels, "scores": scores, "fsel": fsel, "fscore": fscore, "cand": cand, "base": base}


def test_evaluate_end_to_end_numbers_match_metrics(case):
    res = ev.evaluate([case["cand"]], [case["store"].path], case["tmp"] / "rep", baseline=case["base"])
    known = case["labels"] >= 0
    y, s = case["labels"][known], case["scores"][known].astype(np.float32).astype(np.float64)
    m = res.metrics
    assert m["data"] == {"alpha": int((y == 1).sum()), "other": int((y == 0).sum()), "total": int(known.sum()),
                         "unknown_dropped": 4, "stores": [str(case["store"].path)]}
    assert m["models"]["cands"]["ap"] == pytest.approx(mt.average_precision(y, s))
    former = mt.operating_point_from_selection(y, case["fsel"][known])
    assert m["former"]["operating_point"]["selected"] == former.selected
    assert m["former"]["ap"] == pytest.approx(mt.average_precision(y, case["fscore"][known]))
    sect = m["at_former_recall"]
    assert sect["target_recall"] == pytest.approx(former.recall.value)
    cnn = mt.operating_point_at_recall(y, s, former.recall.value)
    t2 = sect["table2"]
    assert t2["cnn"]["candidates"]["value"] == cnn.selected
    assert t2["cnn"]["true_positives"]["value"] >= former.true_positives
    assert t2["load_factor"]["value"] == pytest.approx(former.selected / cnn.selected)
    assert t2["precision_ratio"]["value"] == pytest.approx(cnn.precision.value / former.precision.value)
    # calibrated threshold from the table's metadata
    op = m["at_threshold"]["cands"]["operating_point"]
    assert op["threshold"] == 0.5 and op["selected"] == int((s >= 0.5).sum())
    # false positives by category add up to the false positives
    assert sum(sect["false_positives"]["cands"].values()) == cnn.false_positives
    assert sum(m["former"]["false_positives"].values()) == former.false_positives
    assert set(sect["false_positives"]["cands"]) <= set(CATS)
    # object by object: the two selections' non-alpha objects
    cnn_sel, neg = s >= cnn.threshold, y == 0
    paired = sect["paired"]["cands"]
    assert paired["only_former"] == int((case["fsel"][known] & ~cnn_sel & neg).sum())
    assert paired["only_cnn"] == int((cnn_sel & ~case["fsel"][known] & neg).sum())
    assert paired["both"] + paired["only_cnn"] == cnn.false_positives and 0 < paired["p_value"] <= 1
    assert f"{paired['only_former']} non-alpha objects only the former method selects" in res.report.read_text()


def test_evaluate_writes_report_metrics_and_figures(case):
    out = case["tmp"] / "rep"
    res = ev.evaluate([case["cand"]], [case["store"].path], out, baseline=case["base"])
    for f in ("report.md", "metrics.json", "pr_curves.png", "score_distributions.png"):
        assert (out / f).stat().st_size > 0
    assert (out / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "](pr_curves.png)" in md and "](score_distributions.png)" in md
    assert "Table 2" in md and "inspection-load factor" in md and "False positives by category" in md
    js = json.loads((out / "metrics.json").read_text())  # strict JSON (NaN written as null)
    assert js["models"]["cands"]["ap"] == pytest.approx(res.metrics["models"]["cands"]["ap"])
    assert not list(out.glob(".*tmp*"))


def test_several_tables_give_mean_std_and_models_table(case):
    rng = np.random.default_rng(7)
    second = case["scores"] + rng.normal(0, 0.5, len(case["scores"]))
    c2 = write_candidates(case["tmp"] / "other", case["store"], second, model_hashes=("bbbb",))
    res = ev.evaluate([case["cand"], c2], [case["store"].path], case["tmp"] / "rep",
                      baseline=case["base"], names=["A", "B"])
    m = res.metrics
    aps = [m["models"]["A"]["ap"], m["models"]["B"]["ap"]]
    assert m["ap"]["value"] == pytest.approx(np.mean(aps)) and m["ap"]["error"] == pytest.approx(np.std(aps, ddof=1))
    assert m["at_former_recall"]["table2_models"]["models"] == 2
    assert "B" not in m["at_threshold"]  # no threshold recorded for the second table


def test_without_baseline_no_table2(case):
    res = ev.evaluate([case["cand"]], [case["store"].path], case["tmp"] / "rep")
    assert "at_former_recall" not in res.metrics and "former" not in res.metrics
    assert "Table 2 not built" in res.report.read_text()


def test_threshold_record_overrides_and_must_match_models(case):
    rec = {"threshold": 1.25, "target": {"kind": "recall", "value": 0.9}, "model_hashes": ["aaaa"],
           "achieved": {}, "calibration_store": {}}
    f = case["tmp"] / "t.json"
    f.write_text(json.dumps(rec))
    res = ev.evaluate([case["cand"]], [case["store"].path], case["tmp"] / "rep", threshold=f)
    assert res.metrics["at_threshold"]["cands"]["operating_point"]["threshold"] == 1.25
    rec["model_hashes"] = ["zzzz"]
    f.write_text(json.dumps(rec))
    with pytest.raises(ThresholdError, match="belongs to models"):
        ev.evaluate([case["cand"]], [case["store"].path], case["tmp"] / "rep2", threshold=f)


def test_missing_objects_in_candidates_is_an_error(case):
    c = write_candidates(case["tmp"] / "partial", case["store"], case["scores"], drop=(3, 5))
    with pytest.raises(InputError, match="lacks 2 of the 76 labelled objects"):
        ev.evaluate([c], [case["store"].path], case["tmp"] / "rep")
    assert not (case["tmp"] / "rep" / "report.md").exists()


def test_missing_objects_in_baseline_is_an_error(case):
    sub = case["store"].table.slice(0, 10)
    pq.write_table(pa.table({"object_id": sub.column("object_id"), "selected": pa.array([True] * 10)}), case["tmp"] / "b.parquet")
    with pytest.raises(InputError, match="lacks 66 of the 76"):
        ev.evaluate([case["cand"]], [case["store"].path], case["tmp"] / "rep", baseline=case["tmp"] / "b.parquet")


def test_baseline_without_selected_column(case):
    pq.write_table(pa.table({"object_id": case["store"].table.column("object_id")}), case["tmp"] / "b.parquet")
    with pytest.raises(InputError, match="no 'selected' column"):
        ld.load_baseline(case["tmp"] / "b.parquet")


def test_baseline_missing_or_not_parquet(tmp_path):
    with pytest.raises(InputError, match="no such former-method table"):
        ld.load_baseline(tmp_path / "nope.parquet")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a readable Parquet"):
        ld.load_baseline(tmp_path / "x.parquet")


def test_all_unknown_labels_is_an_error(tmp_path):
    store, _ = tiny_store(tmp_path / "u.zarr", n=10, unknown=10)
    c = write_candidates(tmp_path / "c", store, np.zeros(10))
    with pytest.raises(InputError, match="no labelled objects"):
        ev.evaluate([c], [store.path], tmp_path / "rep")


def test_one_class_only_is_an_error(tmp_path):
    store, _labels = tiny_store(tmp_path / "u.zarr", n=10, unknown=8)  # labels [1, 0, -1...]
    rows = store.table.to_pylist()
    for r in rows:
        r["label"] = 0
    store2 = create_store(tmp_path / "neg.zarr", np.zeros((10, 224, 224, 3), np.uint8), rows, source={"stage": "t"})
    c = write_candidates(tmp_path / "c", store2, np.zeros(10))
    with pytest.raises(InputError, match="both classes"):
        ev.evaluate([c], [store2.path], tmp_path / "rep")


def test_duplicate_ids_across_stores_is_an_error(tmp_path):
    a, _ = tiny_store(tmp_path / "a.zarr", n=10, prefix="X")
    b, _ = tiny_store(tmp_path / "b.zarr", n=10, prefix="X", seed=1)
    with pytest.raises(InputError, match="more than one of the stores"):
        ld.load_truth([a.path, b.path])


def test_candidates_covering_more_stores_use_only_the_evaluated_one(tmp_path):
    a, la = tiny_store(tmp_path / "a.zarr", n=30, sheet="SA")
    b, _ = tiny_store(tmp_path / "b.zarr", n=30, sheet="SB", seed=3)
    c = tmp_path / "c"
    write_candidates(c, a, 3.0 * la)
    write_candidates(c, b, np.zeros(30))
    res = ev.evaluate([c], [a.path], tmp_path / "rep")
    assert res.metrics["data"]["total"] == 30 and res.metrics["models"]["c"]["ap"] == 1.0


def test_equal_ids_in_two_stores_resolved_by_store_column(tmp_path):
    a, la = tiny_store(tmp_path / "a.zarr", n=20, prefix="X", sheet="SA")
    b, _ = tiny_store(tmp_path / "b.zarr", n=20, prefix="X", sheet="SB", seed=2)
    c = tmp_path / "c"
    write_candidates(c, a, 3.0 * la)
    write_candidates(c, b, -3.0 * la)
    res = ev.evaluate([c], [a.path], tmp_path / "rep")
    assert res.metrics["models"]["c"]["ap"] == 1.0


def test_names_must_match_tables(case):
    with pytest.raises(InputError, match="1 names for 2"):
        ev.evaluate([case["cand"], case["cand"]], [case["store"].path], case["tmp"] / "rep", names=["a"])


def test_not_a_candidate_table(case):
    with pytest.raises(InputError, match="candidate table"):
        ev.evaluate([case["tmp"]], [case["store"].path], case["tmp"] / "rep")


def test_scores_from_table_round_trip():
    t = pa.table({"object_id": ["a", "b"], "label": [1, 0], "s0": [1.0, 0.0], "ensemble": [0.5, 0.1]})
    t = t.replace_schema_metadata({b"scanstream": json.dumps({"model_hashes": {"s0": ["h0"]}})})
    sets = ev.scores_from_table(t)
    assert [s.name for s in sets] == ["s0", "ensemble"] and sets[0].model_hashes == ("h0",)
    assert sets[1].scores.tolist() == [0.5, 0.1]


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_evaluate(case, capsys):
    out = case["tmp"] / "cli"
    rc = main(["evaluate", str(case["cand"]), "--store", str(case["store"].path),
               "--baseline", str(case["base"]), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "cands: AP" in text and "precision ratio" in text
    assert (out / "report.md").exists()


def test_cli_evaluate_bad_input_one_line_exit_2(case, capsys):
    rc = main(["evaluate", str(case["tmp"] / "nope"), "--store", str(case["store"].path),
               "--out", str(case["tmp"] / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nope" in err


# -- figures and report rendering ----------------------------------------------------------------
def test_heatmap_and_loss_figures(tmp_path):
    from scanstream.evaluation import figures as fg

    mean = np.array([[0.9, 0.95], [np.nan, 0.97]])
    p = fg.plot_search_heatmap([2, 4], [6, 12], mean, np.full((2, 2), 0.01), tmp_path / "h.png", best=(4, 12))
    assert p.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="do not match"):
        fg.plot_search_heatmap([2], [6, 12], mean, mean, tmp_path / "bad.png")
    hist = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "smoothed_val_loss": 1.1} for e in range(4)]
    assert fg.plot_loss_curves({"s0": hist}, tmp_path / "l.png").exists()
    with pytest.raises(InputError):
        fg.plot_loss_curves({}, tmp_path / "l2.png")


def test_table2_markdown_with_paper_columns():
    from scanstream.evaluation.report import PAPER, table2_markdown

    former = mt.OperatingPoint(None, 2489, 201, 255, 46948)
    md = table2_markdown(mt.table2(former, mt.OperatingPoint(0.0, 366, 201, 255, 46948)), paper=PAPER["table2"])
    assert "0.081 ± 0.006" in md and "0.788 ± 0.056" in md and "6.8 ± 0.6" in md
    assert md.count("\n") == 8  # header, rule, 4 rows, 2 ratio rows


def test_json_ready_strict():
    from scanstream.evaluation.report import json_ready

    out = json_ready({"a": math.nan, "b": [np.float32(1.5), math.inf], "c": {"d": np.int64(3)}})
    assert json.dumps(out, allow_nan=False) == '{"a": null, "b": [1.5, null], "c": {"d": 3}}'


def test_spread_over_a_subset_of_models(case):
    rng = np.random.default_rng(8)
    extra = [ld.ScoreSet(f"s{i}", case["store"].table.column("object_id").to_numpy(zero_copy_only=False),
                         case["scores"] + rng.normal(0, 0.8, len(case["scores"]))) for i in range(2)]
    res = ev.evaluate([case["cand"]], [case["store"].path], case["tmp"] / "rep", baseline=case["base"],
                      names=["ensemble"], extra_models=extra, spread_over=["s0", "s1"])
    m = res.metrics
    aps = [m["models"]["s0"]["ap"], m["models"]["s1"]["ap"]]
    assert m["ap"]["value"] == pytest.approx(np.mean(aps)) and m["spread_over"] == ["s0", "s1"]
    ops = m["at_former_recall"]["operating_points"]
    assert m["at_former_recall"]["table2_models"]["cnn"]["candidates"]["value"] == pytest.approx(
        np.mean([ops["s0"]["selected"], ops["s1"]["selected"]]))
    assert m["at_former_recall"]["table2"]["cnn"]["candidates"]["value"] == ops["ensemble"]["selected"]
    with pytest.raises(InputError, match="unknown models"):
        ev.evaluate([case["cand"]], [case["store"].path], case["tmp"] / "rep2", extra_models=extra, spread_over=["zz"])


# -- the learned former method (--feature-model) -------------------------------------------------
@pytest.fixture(scope="module")
def feature_model_file(tmp_path_factory):
    """A small feature model fitted on simulated picker features (30 trees, about a second)."""
    from scanstream.picker.learned import fit_feature_model, save_feature_model
    from scanstream.simulate import simulate_table

    t = simulate_table(objects=2000, alpha_fraction=0.2, sheet="X", seed=1)
    return save_feature_model(fit_feature_model(t, max_iter=30), tmp_path_factory.mktemp("fm") / "fm.safetensors")


def sim_store(path, sheet, seed, *, n=100, unknown=0):
    """A store of simulated objects (picker features, categories) with blank crops."""
    from scanstream.simulate import simulate_table

    t = simulate_table(objects=n, alpha_fraction=0.3, sheet=sheet, seed=seed)
    labels = t.column("label").to_numpy(zero_copy_only=False).copy()
    if unknown:
        labels[-unknown:] = -1
        t = t.set_column(t.column_names.index("label"), "label", pa.array(labels, pa.int8()))
    return create_store(path, np.zeros((n, 224, 224, 3), np.uint8), t, source={"stage": "test"}), labels


@pytest.fixture
def fcase(tmp_path):
    """Two simulated stores scored by one candidate table, a former-method selection over both."""
    a, la = sim_store(tmp_path / "a.zarr", "S1", 2, unknown=5)
    b, lb = sim_store(tmp_path / "b.zarr", "S2", 3)
    rng = np.random.default_rng(4)
    cand = tmp_path / "cands"
    scores = {}
    for store, lab in ((a, la), (b, lb)):
        scores[store.path] = 2.0 * (lab == 1) + rng.normal(0, 1.0, len(lab))
        write_candidates(cand, store, scores[store.path])
    labels = np.concatenate([la, lb])
    fscore = 1.0 * (labels == 1) + rng.normal(0, 1.0, len(labels))
    fsel = fscore >= np.quantile(fscore, 0.66)
    ids = pa.concat_arrays([a.table.column("object_id").combine_chunks(), b.table.column("object_id").combine_chunks()])
    pq.write_table(pa.table({"object_id": ids, "selected": pa.array(fsel)}), tmp_path / "former.parquet")
    return {"tmp": tmp_path, "stores": [a, b], "labels": labels, "fsel": fsel, "cand": cand,
            "scores": np.concatenate([scores[a.path], scores[b.path]]), "base": tmp_path / "former.parquet"}


def direct_learned_logits(path, stores):
    """The feature model's logits of the stores' labelled objects, in store then row order."""
    from scanstream.picker.learned import load_feature_model

    fm = load_feature_model(path)
    parts = []
    for s in stores:
        t = s.table
        parts.append(fm.score_table(t.filter(pc.greater_equal(t.column("label"), 0))))
    return np.concatenate(parts).astype(np.float64)


def test_learned_former_method_beside_the_cuts(fcase, feature_model_file):
    out = fcase["tmp"] / "rep"
    res = ev.evaluate([fcase["cand"]], [s.path for s in fcase["stores"]], out, baseline=fcase["base"],
                      feature_model=feature_model_file)
    known = fcase["labels"] >= 0
    y, fsel = fcase["labels"][known], fcase["fsel"][known]
    cnn_s = fcase["scores"][known].astype(np.float32).astype(np.float64)
    logits = direct_learned_logits(feature_model_file, fcase["stores"])
    lm = res.metrics["learned"]
    assert lm["name"] == ld.LEARNED_NAME and lm["source"] == str(feature_model_file)
    assert lm["ap"] == pytest.approx(mt.average_precision(y, logits))
    former = mt.operating_point_from_selection(y, fsel)
    direct = mt.operating_point_at_recall(y, logits, former.recall.value)
    sect = lm["at_former_recall"]
    op = sect["operating_point"]
    assert sect["target_recall"] == pytest.approx(former.recall.value)
    assert op["selected"] == direct.selected and op["true_positives"] == direct.true_positives
    assert op["candidates"]["error"] == pytest.approx(math.sqrt(direct.selected))
    assert op["precision"]["value"] == pytest.approx(direct.precision.value)
    assert op["recall"]["error"] == pytest.approx(direct.recall.error)
    assert sect["table2"]["load_factor"]["value"] == pytest.approx(former.selected / direct.selected)
    assert sum(sect["false_positives"].values()) == direct.false_positives
    # paired: learned selection first, CNN second, as the cuts against the CNN
    lsel = logits >= direct.threshold
    csel = cnn_s >= mt.operating_point_at_recall(y, cnn_s, former.recall.value).threshold
    p = sect["paired"]["cands"]
    ref = mt.paired_false_positives(y, lsel, csel)
    assert (p["only_learned"], p["only_cnn"], p["both"]) == (ref["only_former"], ref["only_cnn"], ref["both"])
    assert p["p_value"] == pytest.approx(ref["p_value"])
    md = res.report.read_text()
    assert f"| former method | {ld.LEARNED_NAME} | cands |" in md
    assert f"| candidates to inspect | {former.selected:.0f} ± " in md and f"| {direct.selected:.0f} ± " in md
    assert f"{p['only_learned']} non-alpha objects only the learned former method selects" in md
    assert f"| {ld.LEARNED_NAME} | {lm['ap']:.3f} |" in md
    assert (out / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text())["learned"]["at_former_recall"]["operating_point"]["selected"] == direct.selected


def test_learned_without_baseline_at_the_threshold_recall(fcase, feature_model_file):
    a = fcase["stores"][0]
    cand = write_candidates(fcase["tmp"] / "thr", a, fcase["scores"][: a.n], threshold=0.5)
    res = ev.evaluate([cand], [a.path], fcase["tmp"] / "rep", feature_model=feature_model_file)
    lm = res.metrics["learned"]
    assert "at_former_recall" not in lm and "former" not in res.metrics
    known = fcase["labels"][: a.n] >= 0
    y = fcase["labels"][: a.n][known]
    logits = direct_learned_logits(feature_model_file, [a])
    recall = res.metrics["at_threshold"]["thr"]["operating_point"]["recall"]["value"]
    e = lm["at_threshold_recall"]["thr"]
    assert e["target_recall"] == recall and e["operating_point"]["selected"] == mt.operating_point_at_recall(y, logits, recall).selected
    md = res.report.read_text()
    assert f"The {ld.LEARNED_NAME} at the same recall ({recall:.3f}): {e['operating_point']['selected']} candidates" in md
    assert "Table 2 not built" in md


def test_without_feature_model_no_learned_key(case):
    out = case["tmp"] / "rep"
    ev.evaluate([case["cand"]], [case["store"].path], out, baseline=case["base"])
    assert "learned" not in json.loads((out / "metrics.json").read_text())
    assert "learned" not in (out / "report.md").read_text()


@pytest.mark.parametrize("how, match", [("null", "have no picker multiplicity"), ("dropped", "no 'multiplicity'")])
def test_store_without_features_is_one_line_naming_the_store(case, feature_model_file, capsys, how, match):
    store = case["store"]  # tiny_store: no picker output, null multiplicities
    if how == "dropped":  # an object table written before the feature columns existed
        t = store.table.drop_columns(["multiplicity", "track_lengths_um"])
        pq.write_table(t, store.path / "objects.parquet")
        drop_table_digest(store.path)  # such a store also predates the table digest checked on open
    with pytest.raises(InputError, match=match) as info:
        ev.evaluate([case["cand"]], [store.path], case["tmp"] / "rep", feature_model=feature_model_file)
    assert str(store.path) in str(info.value) and "\n" not in str(info.value)
    assert not (case["tmp"] / "rep" / "report.md").exists()
    rc = main(["evaluate", str(case["cand"]), "--store", str(store.path),
               "--feature-model", str(feature_model_file), "--out", str(case["tmp"] / "cli")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(store.path) in err


def test_join_aligns_learned_scores_by_object_id(case):
    truth = ld.load_truth([case["store"].path])
    ids = np.asarray(truth.column("object_id").to_pylist(), dtype=object)
    cnn = ld.ScoreSet("m", ids, case["scores"])
    order = np.random.default_rng(0).permutation(len(ids))
    learned = ld.ScoreSet(ld.LEARNED_NAME, ids[order], np.arange(len(ids), dtype=np.float64)[order], source="fm")
    data = ev.join(truth, [cnn], learned=learned)
    known = case["labels"] >= 0
    np.testing.assert_array_equal(data.learned.scores, np.flatnonzero(known))
    with pytest.raises(InputError, match="feature-model scores of fm lacks 1 of"):
        ev.join(truth, [cnn], learned=ld.ScoreSet(ld.LEARNED_NAME, ids[1:], np.zeros(len(ids) - 1), source="fm"))


def test_cli_evaluate_feature_model_summary_line(fcase, feature_model_file, capsys):
    a, b = fcase["stores"]
    rc = main(["evaluate", str(fcase["cand"]), "--store", str(a.path), "--store", str(b.path),
               "--baseline", str(fcase["base"]), "--feature-model", str(feature_model_file), "--out", str(fcase["tmp"] / "cli")])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(ld.LEARNED_NAME)]
    m = json.loads((fcase["tmp"] / "cli" / "metrics.json").read_text())["learned"]
    assert rc == 0 and len(lines) == 1
    assert f"AP {m['ap']:.3f}; {m['at_former_recall']['operating_point']['selected']} candidates at the former method's recall" in lines[0]
