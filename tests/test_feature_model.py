"""The learned former method, the fused image + feature network and the cascade."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from scanstream.errors import CheckpointError, InputError
from scanstream.inference import engine as inference
from scanstream.inference.scoring import score_store
from scanstream.network.checkpoint import load_checkpoint, save_checkpoint
from scanstream.network.model import Classifier, ModelConfig, build_model
from scanstream.picker.features import N_FEATURES, feature_array
from scanstream.picker.learned import (
    L2_REGULARIZATION,
    LOGIT_SCALE,
    N_MODEL_INPUTS,
    FeatureModel,
    calibrate_prefilter,
    fit_feature_model,
    load_feature_model,
    model_inputs,
    prefilter_threshold,
    save_feature_model,
)
from scanstream.simulate import simulate_table
from scanstream.store import create_store
from scanstream.training.loop import TrainConfig, train


def _table(mult, lengths):
    return pa.table({"multiplicity": pa.array(mult, pa.int16()), "track_lengths_um": pa.array(lengths, pa.list_(pa.float32()))})


def test_feature_array_layout():
    t = _table([2, 5, 0], [[80.0, 10.0], [20.0, 60.0, 30.0, 49.0, 15.0], []])
    x = feature_array(t)
    assert x.shape == (3, N_FEATURES) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, :5], [2, 0, 1, 80, 10])
    np.testing.assert_array_equal(x[1, :8], [5, 4, 1, 60, 49, 30, 20, 15])  # 15 um is inside the 15-55 um window
    assert not x[0, 5:].any() and not x[2].any()


def test_feature_array_keeps_eight_longest_prongs():
    x = feature_array(_table([10], [[float(v) for v in range(1, 11)]]))
    np.testing.assert_array_equal(x[0, 3:], [10, 9, 8, 7, 6, 5, 4, 3])


@pytest.mark.parametrize(
    "table, match",
    [
        (pa.table({"multiplicity": pa.array([1], pa.int16())}), "track_lengths_um"),
        (_table([None, 3], [[], [20.0]]), "1 of 2 objects have no picker multiplicity"),
        (_table([1], [[float("nan")]]), "non-finite"),
    ],
)
def test_feature_array_refuses_tables_without_features(table, match):
    with pytest.raises(InputError, match=match):
        feature_array(table, source="S.zarr")


@pytest.fixture(scope="module")
def sheets():
    fit = simulate_table(objects=2000, alpha_fraction=0.25, sheet="FMFIT", seed=1)
    cal = simulate_table(objects=1500, alpha_fraction=0.2, sheet="FMCAL", seed=2)
    return fit, cal


@pytest.fixture(scope="module")
def fitted(sheets):
    return fit_feature_model(sheets[0], seed=0, max_iter=40)


@pytest.mark.slow
def test_tree_walk_equals_scikit_learn(sheets, fitted):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from scanstream.picker.learned import labelled_features

    x, y = labelled_features(sheets[0])
    ref = HistGradientBoostingClassifier(max_iter=40, random_state=0, l2_regularization=L2_REGULARIZATION).fit(x, y)
    xc = feature_array(sheets[1])
    np.testing.assert_allclose(fitted.decision_function(xc), ref.decision_function(xc), atol=1e-5)


def test_scikit_learns_private_tree_arrays_have_the_shape_read(sheets):
    """The one place scanstream reads scikit-learn's private attributes: a release that changes
    them fails here (and in sklearn_trees, naming the release), not with wrong logits."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from scanstream.picker.learned import NODE_FIELDS, labelled_features, sklearn_trees

    x, y = labelled_features(sheets[0])
    est = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(x, y)
    assert len(est._predictors) == est.n_iter_ and all(len(p) == 1 for p in est._predictors)
    assert set(NODE_FIELDS) <= set(est._predictors[0][0].nodes.dtype.names)
    assert np.size(est._baseline_prediction) == 1
    trees, baseline = sklearn_trees(est)
    assert len(trees) == est.n_iter_ and isinstance(baseline, float)
    # the baseline is the logit of TRAIN's prevalence (binary cross entropy's constant optimum)
    assert baseline == pytest.approx(np.log(y.mean() / (1 - y.mean())))


def _estimator(nodes, baseline=(0.0,), per_class=1):
    from types import SimpleNamespace

    return SimpleNamespace(classes_=np.array([0, 1]), _baseline_prediction=np.array(baseline),
                           _predictors=[[SimpleNamespace(nodes=nodes)] * per_class])


@pytest.mark.parametrize("estimator, match", [
    (lambda n: _estimator(n[["value", "left", "right", "is_leaf", "num_threshold", "is_categorical"]]),
     r"no node fields \['feature_idx'\]"),
    (lambda n: _estimator(n, per_class=2), "not one tree with .nodes"),
    (lambda n: _estimator(np.zeros(3)), r"no node fields \['feature_idx'"),
    (lambda n: _estimator(n, baseline=(0.0, 1.0)), "_baseline_prediction has 2 values, expected 1"),
])
def test_a_release_that_changes_the_private_arrays_is_refused_by_name(sheets, estimator, match):
    import sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    from scanstream.errors import TrainingError
    from scanstream.picker.learned import from_sklearn, labelled_features

    x, y = labelled_features(sheets[0])
    nodes = HistGradientBoostingClassifier(max_iter=1, random_state=0).fit(x, y)._predictors[0][0].nodes
    with pytest.raises(TrainingError, match=rf"scikit-learn {sklearn.__version__}: .*{match}"):
        from_sklearn(estimator(nodes))


def test_feature_model_ranks_better_than_chance(sheets, fitted):
    from scanstream.metrics import average_precision

    y = sheets[1].column("label").to_numpy()
    assert average_precision(y, fitted.score_table(sheets[1])) > 2 * y.mean()


def test_saved_feature_model_reads_back_identically(tmp_path, sheets, fitted):
    path = save_feature_model(fitted, tmp_path / "fm.safetensors")
    back = load_feature_model(path)
    np.testing.assert_array_equal(back.score_table(sheets[1]), fitted.score_table(sheets[1]))
    assert back.info["features"][0] == "multiplicity" and back.info["train"]["objects"] == 2000
    assert not list(tmp_path.glob(".*tmp*"))


def test_feature_model_file_refuses_pickles_and_other_files(tmp_path, fitted):
    bad = tmp_path / "fm.safetensors"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="not a safetensors feature model"):
        load_feature_model(bad)
    with pytest.raises(CheckpointError, match="no such feature model"):
        load_feature_model(tmp_path / "absent.safetensors")
    net = tmp_path / "net.safetensors"
    save_checkpoint(net, build_model(ModelConfig("mobilenet_v3_small", 32)), model_config=ModelConfig("mobilenet_v3_small", 32),
                    train_config={}, data_hash="x", metrics={})
    with pytest.raises(CheckpointError, match="not a scanstream feature model"):
        load_feature_model(net)


def test_broken_tree_arrays_are_refused(fitted):
    arrays = fitted.arrays()
    arrays["left"] = arrays["left"] + 10**6
    with pytest.raises(CheckpointError, match="child index out of range"):
        FeatureModel.from_tensors(arrays, {}, source="fm")


@pytest.mark.parametrize("recall", [0.9, 0.99])
def test_prefilter_keeps_the_stated_recall_on_its_calibration_table(sheets, fitted, recall):
    cal = sheets[1]
    model = calibrate_prefilter(fitted, cal, recall=recall, source="FMCAL")
    t = prefilter_threshold(model)
    y = cal.column("label").to_numpy()
    kept = fitted.score_table(cal) >= t
    pre = model.info["prefilter"]
    assert pre["kept"] == kept.sum() and pre["kept_alpha"] == (kept & (y == 1)).sum()
    assert pre["kept_alpha"] == int(np.ceil(recall * (y == 1).sum() - 1e-9))
    assert pre["alpha"] == (y == 1).sum() and pre["recall"] == recall
    assert prefilter_threshold(fitted) is None


# ---------------------------------------------------------------------------------------------
# The fused network and the cascade


def hand_model(prefilter: float | None = 0.0) -> FeatureModel:
    """One split on multiplicity: logit -2 at <= 3 prongs, +2 above; prefilter at 0 keeps >= 4."""
    fm = FeatureModel(
        feature=np.array([0, 0, 0]), threshold=np.array([3.5, 0.0, 0.0]), left=np.array([1, 0, 0]),
        right=np.array([2, 0, 0]), is_leaf=np.array([False, True, True]), value=np.array([0.0, -2.0, 2.0]),
        roots=np.array([0]), baseline=0.0, info={"features": "hand"},
    )
    return fm if prefilter is None else FeatureModel(**{**fm.__dict__, "info": {"prefilter": {"threshold": prefilter}}})


def feature_store(path, n=64, seed=0, features=True):
    """Stripes for alpha, blobs for others; multiplicities 2-6 independent of the label."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int8)
    labels[:4] = [1, 0, 1, 0]
    mult = rng.integers(2, 7, n)
    mult[:4] = [5, 5, 2, 2]  # both classes kept and rejected
    crops = np.full((n, 224, 224, 3), 200, np.uint8)
    crops[labels == 1, 100:124, :, :] = 40
    crops[labels == 0, 90:130, 90:130, :] = 60
    rows = [{"object_id": f"F-{i:04d}", "sheet": "F1", "label": int(labels[i]),
             "multiplicity": int(mult[i]) if features else None,
             "track_lengths_um": [25.0] * int(mult[i]) if features else None} for i in range(n)]
    return create_store(path, crops, rows, source={"stage": "test", "seed": seed})


def fused_checkpoint(path, prefilter=0.0):
    torch.manual_seed(0)
    cfg = ModelConfig("mobilenet_v3_small", 32, inputs=N_MODEL_INPUTS)
    model = build_model(cfg).eval()
    fm = hand_model(prefilter)
    save_checkpoint(path, model, model_config=cfg, train_config={}, data_hash="d", metrics={}, feature_model=fm,
                    prefilter_threshold=prefilter_threshold(fm))
    return path


def test_fused_network_needs_its_inputs():
    net = Classifier("mobilenet_v3_small", inputs=N_MODEL_INPUTS).eval()
    x = torch.zeros(2, 3, 32, 32)
    assert net(x, torch.zeros(2, N_MODEL_INPUTS)).shape == (2,)
    with pytest.raises(InputError, match="per-object inputs"):
        net(x)
    with pytest.raises(InputError, match="per-object inputs"):
        net(x, torch.zeros(2, 3))


def test_fused_checkpoint_carries_its_feature_model(tmp_path):
    ck = load_checkpoint(fused_checkpoint(tmp_path / "c.safetensors", prefilter=0.5))
    assert ck.reads_features and ck.prefilter_threshold == 0.5 and ck.model_config.inputs == N_MODEL_INPUTS
    t = _table([2, 5], [[], []])
    np.testing.assert_array_equal(ck.feature_model.score_table(t), [-2.0, 2.0])


def test_fused_network_is_saved_with_a_feature_model_only(tmp_path):
    cfg = ModelConfig("mobilenet_v3_small", 32, inputs=N_MODEL_INPUTS)
    with pytest.raises(InputError, match="saved with its feature model"):
        save_checkpoint(tmp_path / "c.safetensors", build_model(cfg), model_config=cfg, train_config={}, data_hash="d", metrics={})


@pytest.mark.slow
def test_cascade_scores_kept_rows_with_the_network_and_the_rest_by_features(tmp_path):
    store = feature_store(tmp_path / "s.zarr")
    path = fused_checkpoint(tmp_path / "c.safetensors")
    ens = inference.Ensemble([path], device="cpu", precision="fp32")
    seen = []
    ens.models[0].net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    got = inference.score_range(ens, store, 0, store.n, batch_size=16)
    mult = store.table.column("multiplicity").to_numpy()
    kept = mult >= 4
    np.testing.assert_array_equal(got[~kept], -2.0)  # rejected: the feature model's logit, never the network
    assert sum(seen) == kept.sum()  # the network saw exactly the kept rows
    ck = load_checkpoint(path)
    from scanstream.network.model import preprocess

    inputs = torch.from_numpy(model_inputs(store.table, ck.feature_model))
    x = preprocess(torch.from_numpy(store.read(0, store.n)), 32)
    with torch.no_grad():
        ref = ck.model(x, inputs).numpy()
    np.testing.assert_allclose(got[kept], ref[kept], atol=1e-4)


def test_without_prefilter_every_row_goes_through_the_network(tmp_path):
    store = feature_store(tmp_path / "s.zarr", n=32)
    ens = inference.Ensemble([fused_checkpoint(tmp_path / "c.safetensors", prefilter=None)], device="cpu", precision="fp32")
    seen = []
    ens.models[0].net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    inference.score_range(ens, store, 0, store.n, batch_size=16)
    assert sum(seen) == 32


def test_model_inputs_are_scaled_features_and_logit():
    t = _table([5], [[30.0] * 5])
    x = model_inputs(t, hand_model())
    assert x.shape == (1, N_MODEL_INPUTS) and x[0, -1] == pytest.approx(2.0 / LOGIT_SCALE)


def test_fused_model_refuses_a_store_without_features(tmp_path):
    store = feature_store(tmp_path / "nofeat.zarr", n=16, features=False)
    path = fused_checkpoint(tmp_path / "c.safetensors")
    with pytest.raises(InputError, match=r"nofeat.zarr: 16 of 16 objects have no picker multiplicity.*fused network"):
        score_store(store, [path], device="cpu", precision="fp32")
    from scanstream.inference.classify import classify

    with pytest.raises(InputError, match="nofeat.zarr"):
        classify([store.path], [path], tmp_path / "cand", device="cpu", progress=False, processes=False)
    assert not (tmp_path / "cand").exists()


def test_training_a_cascade(tmp_path):
    train_store = feature_store(tmp_path / "t.zarr", n=64, seed=1)
    valid_store = feature_store(tmp_path / "v.zarr", n=32, seed=2)
    fm_path = save_feature_model(hand_model(0.0), tmp_path / "fm.safetensors")
    cfg = TrainConfig(train_store=str(train_store.path), valid_store=str(valid_store.path), out_dir=str(tmp_path / "run"),
                      backbone="mobilenet_v3_small", input_size=32, n=0, m=0, max_epochs=1, batch_size=8, loader="local",
                      workers=1, feature_model=str(fm_path), warmup_epochs=0)
    result = train(cfg, progress=False)
    ck = load_checkpoint(result.checkpoint)
    assert ck.prefilter_threshold == 0.0 and ck.model_config.inputs == N_MODEL_INPUTS
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    kept = int((train_store.table.column("multiplicity").to_numpy() >= 4).sum())
    assert resolved["train_kept"] == kept and resolved["epoch_size"] == kept
    assert resolved["valid_rejected"] == int((valid_store.table.column("multiplicity").to_numpy() < 4).sum())
    assert 0 <= result.metrics["val_ap"] <= 1


def test_training_a_fused_model_on_a_store_without_features_is_refused(tmp_path):
    train_store = feature_store(tmp_path / "t.zarr", n=16, features=False)
    valid_store = feature_store(tmp_path / "v.zarr", n=16, seed=2)
    fm_path = save_feature_model(hand_model(None), tmp_path / "fm.safetensors")
    cfg = TrainConfig(train_store=str(train_store.path), valid_store=str(valid_store.path), out_dir=str(tmp_path / "run"),
                      backbone="mobilenet_v3_small", input_size=32, feature_model=str(fm_path), loader="local")
    with pytest.raises(InputError, match="t.zarr: 16 of 16 objects have no picker multiplicity"):
        train(cfg, progress=False)


# ---------------------------------------------------------------------------------------------
# Recipes and fine-tuning from a shipped checkpoint


def test_auto_recipe_by_initial_weights_and_device(tmp_path):
    from scanstream.training.recipes import RECIPES, choose_recipe

    assert choose_recipe("auto", device="cpu") == ("cpu", "no GPU here")
    ck = fused_checkpoint(tmp_path / "c.safetensors")
    assert choose_recipe("auto", device="cpu", pretrained=str(ck))[0] == "finetune"
    assert choose_recipe("paper", device="cpu") == ("paper", "asked for")
    assert RECIPES["paper"] == {}  # the paper's protocol is the dataclass defaults, unchanged
    with pytest.raises(Exception, match="unknown recipe 'fast'"):
        choose_recipe("fast")


def test_fine_tuning_takes_backbone_size_and_feature_model_from_the_checkpoint(tmp_path):
    from scanstream.training.recipes import pretrained_options

    ck = fused_checkpoint(tmp_path / "c.safetensors", prefilter=0.0)
    opts = pretrained_options(str(ck))
    assert opts == {"backbone": "mobilenet_v3_small", "input_size": 32, "feature_model": str(ck)}
    fm = load_feature_model(ck)  # the feature model inside the fused checkpoint
    assert prefilter_threshold(fm) == 0.0
    np.testing.assert_array_equal(fm.score_table(_table([2, 5], [[], []])), [-2.0, 2.0])
    # the fused weights load whole into the fused network of a fine-tuning run
    model = build_model(ModelConfig("mobilenet_v3_small", 32, pretrained=str(ck), inputs=N_MODEL_INPUTS))
    ref = load_checkpoint(ck).model.state_dict()
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref)


def test_cli_fine_tunes_a_shipped_cascade(tmp_path, capsys):
    from scanstream.cli import main

    t = feature_store(tmp_path / "t.zarr", n=48, seed=3)
    v = feature_store(tmp_path / "v.zarr", n=32, seed=4)
    ck = fused_checkpoint(tmp_path / "c.safetensors", prefilter=0.0)
    rc = main(["train", str(t.path), str(v.path), "--out", str(tmp_path / "ft"), "--pretrained",
               str(ck), "--max-epochs", "1", "--batch-size", "8", "--loader", "local", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recipe"]["name"] == "finetune" and summary["recipe"]["fused_with"] == str(ck)
    resolved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert resolved["recipe"] == "finetune" and resolved["lr"] == 5e-4 and resolved["input_size"] == 32
    out = load_checkpoint(tmp_path / "ft" / "model.safetensors")
    assert out.prefilter_threshold == 0.0 and out.model_config.inputs == N_MODEL_INPUTS


def test_cli_learned_baseline_beside_the_cuts(tmp_path, sheets, capsys):
    import pyarrow.parquet as pq

    from scanstream.cli import main

    fit, cal = sheets
    pq.write_table(fit, tmp_path / "train.parquet")
    pq.write_table(cal, tmp_path / "test.parquet")
    rc = main(["baseline", str(tmp_path / "test.parquet"), "--learned", str(tmp_path / "train.parquet"), "--save-model",
               str(tmp_path / "fm.safetensors"), "--prefilter-recall", "0.95", "--calibrate-on", str(tmp_path / "test.parquet"),
               "--out", str(tmp_path / "sel.parquet")])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    model = load_feature_model(tmp_path / "fm.safetensors")
    scores = model.score_table(cal)
    from scanstream.metrics import average_precision, operating_point_at_recall

    y = cal.column("label").to_numpy()
    assert doc["learned"]["ap"] == pytest.approx(average_precision(y, scores))
    assert doc["learned"]["at_recall"]["selected"] == operating_point_at_recall(y, scores, doc["recall"]["value"]).selected
    assert doc["learned"]["model"]["prefilter"]["recall"] == 0.95
    out = pq.read_table(tmp_path / "sel.parquet")
    np.testing.assert_allclose(out.column("learned_score").to_numpy(), scores, rtol=1e-6)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--save-model", "x.safetensors"], "--save-model needs --learned"),
        (["--learned", "T", "--prefilter-recall", "0.9"], "go together"),
        (["--learned", "T", "--feature-model", "F"], "either --learned"),
    ],
)
def test_cli_learned_baseline_bad_flags(tmp_path, sheets, capsys, extra, match):
    import pyarrow.parquet as pq

    from scanstream.cli import main

    pq.write_table(sheets[1], tmp_path / "test.parquet")
    rc = main(["baseline", str(tmp_path / "test.parquet"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and match in err


def test_threshold_and_watch_take_a_cascade(tmp_path):
    from scanstream.inference.scoring import calibrate_threshold
    from scanstream.inference.watch import WatchConfig, watch

    store = feature_store(tmp_path / "v.zarr", n=48)
    ck = fused_checkpoint(tmp_path / "c.safetensors")
    rec = calibrate_threshold(store.path, [ck], target_recall=0.5, device="cpu", precision="fp32")
    assert rec["achieved"]["recall"] >= 0.5
    bare = feature_store(tmp_path / "nofeat.zarr", n=16, features=False)
    with pytest.raises(InputError, match="nofeat.zarr"):
        calibrate_threshold(bare.path, [ck], target_recall=0.5, device="cpu", precision="fp32")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    feature_store(inbox / "night.zarr", n=32, seed=5)
    config = WatchConfig(models=(str(ck),), device="cpu", workers=1, processes=False)
    rep = watch(inbox, tmp_path / "cand", config, once=True, progress=False)
    assert not rep.failed and len(rep.processed) == 1


def test_prefilter_accounting_counts_what_the_network_never_sees():
    from scanstream.picker.learned import prefilter_accounting

    t = _table([2, 5, 3, 6, 4], [[]] * 5).append_column("label", pa.array([1, 1, 0, 0, 1], pa.int8()))
    acc = prefilter_accounting(hand_model(), t, 0.0)  # keeps multiplicity >= 4
    assert acc == {"objects": 5, "passed": 3, "alpha": 3, "alpha_rejected": 1, "recall_lost": pytest.approx(1 / 3)}
    with pytest.raises(InputError, match="no 'label' column"):
        prefilter_accounting(hand_model(), _table([2], [[]]), 0.0)


# ---------------------------------------------------------------------------------------------
# The shipped checkpoint

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "scanstream-cpu-cascade.safetensors"


def test_shipped_cascade_loads_and_scores_a_simulated_sheet(tmp_path):
    from scanstream.network.checkpoint import checkpoint_hash
    from scanstream.simulate import simulate_store

    ck = load_checkpoint(SHIPPED)
    assert ck.model_config == ModelConfig("mobilenet_v3_small", 112, "none", inputs=N_MODEL_INPUTS)
    assert ck.prefilter_threshold is not None and ck.feature_model.n_trees > 0
    assert ck.feature_model.info["prefilter"]["recall"] == 0.99
    tc = ck.train_config
    assert tc["seed"] == 0 and tc["keep"] == "last" and tc["resolved"]["data_hash"] == ck.data_hash
    assert len(tc["resolved"]["feature_model_hash"]) == 16 and 0.9 < ck.metrics["val_ap"] <= 1
    assert ck.hash == checkpoint_hash(SHIPPED)
    assert SHIPPED.stat().st_size < 25 * 1024 * 1024
    store = simulate_store(tmp_path / "s.zarr", objects=40, alpha_fraction=0.5, sheet="SHIPTEST", seed=5)
    scores = score_store(store, [SHIPPED], device="cpu", precision="fp32")
    passed = ck.feature_model.score_table(store.table) >= ck.prefilter_threshold
    assert np.isfinite(scores).all() and passed.any()
    y = store.labels
    assert scores[y == 1].mean() > scores[y == 0].mean()



def test_network_reads_the_logit_clipped_and_rejected_rows_keep_it_whole(tmp_path):
    from scanstream.picker.learned import LOGIT_CLIP, inputs_and_logits

    extreme = FeatureModel(**{**hand_model().__dict__, "value": np.array([0.0, -400.0, 300.0])})
    t = _table([2, 5], [[], []])
    inputs, logits = inputs_and_logits(t, extreme)
    np.testing.assert_array_equal(logits, [-400.0, 300.0])
    np.testing.assert_allclose(inputs[:, -1], [-LOGIT_CLIP / LOGIT_SCALE, LOGIT_CLIP / LOGIT_SCALE])
    np.testing.assert_array_equal(model_inputs(t, extreme), inputs)


def test_regularised_leaves_stay_small(sheets):
    fm = fit_feature_model(sheets[0], seed=0, max_iter=60)
    assert fm.info["params"]["l2_regularization"] == L2_REGULARIZATION
    assert np.abs(fm.value[fm.is_leaf]).max() < 5
