"""ONNX export: logits against torch, the self-describing metadata, the engine's ONNX path, bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fixtures import draw_crops

from scanstream.candidates.table import part_files
from scanstream.cli import main
from scanstream.errors import CheckpointError, InputError
from scanstream.inference.classify import classify
from scanstream.inference.engine import Ensemble, checkpoint_identity, model_header, score_range
from scanstream.inference.export import ATOL, RTOL, export_int8, export_onnx, graph_bytes
from scanstream.inference.onnx_model import ONNX_METADATA_KEY, load_onnx
from scanstream.network.checkpoint import checkpoint_hash, load_checkpoint, save_checkpoint
from scanstream.network.model import IMAGENET_MEAN, ModelConfig, build_model, preprocess
from scanstream.picker.learned import N_MODEL_INPUTS, FeatureModel, prefilter_threshold

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SIZE = 32


def feature_model() -> FeatureModel:
    """One split on multiplicity: logit -2 at <= 3 prongs, +2 above; the prefilter at 0 keeps >= 4."""
    return FeatureModel(
        feature=np.array([0, 0, 0]), threshold=np.array([3.5, 0.0, 0.0]), left=np.array([1, 0, 0]),
        right=np.array([2, 0, 0]), is_leaf=np.array([False, True, True]), value=np.array([0.0, -2.0, 2.0]),
        roots=np.array([0]), baseline=0.0, info={"prefilter": {"threshold": 0.0}},
    )


def tiny_checkpoint(path, *, fused: bool = False):
    """An untrained mobilenet_v3_small at 32 px whose batch-norm statistics are those of some crops.

    With fresh statistics every crop's logit is the same; with the crops' statistics (and a
    last layer scaled up) logits differ by tenths from crop to crop, so the comparisons below
    compare something.
    """
    torch.manual_seed(0)
    cfg = ModelConfig("mobilenet_v3_small", SIZE, inputs=N_MODEL_INPUTS if fused else 0)
    model = build_model(cfg).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics: the plain mean over the passes below
    noise = np.random.default_rng(1).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)  # as export's default check
    x = preprocess(torch.from_numpy(np.concatenate([draw_crops(np.array([0, 1] * 8), seed=1), noise])), SIZE)
    with torch.no_grad():
        model(x, torch.randn(len(x), N_MODEL_INPUTS)) if fused else model(x)
        [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(10.0)
    fm = feature_model() if fused else None
    save_checkpoint(path, model.eval(), model_config=cfg, train_config={"seed": 0}, data_hash="test", metrics={"val_ap": 0.5},
                    feature_model=fm, prefilter_threshold=None if fm is None else prefilter_threshold(fm))
    return path


@pytest.fixture
def store(store_factory):
    return store_factory(n=48)


@pytest.fixture(scope="module")
def pixels_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors")


@pytest.fixture(scope="module", params=[False, True], ids=["pixels", "cascade"])
def exported(request, tmp_path_factory):
    """(checkpoint, its export checked on seeded noise, the export's report), once per kind."""
    d = tmp_path_factory.mktemp("export")
    ckpt = tiny_checkpoint(d / "m.safetensors", fused=request.param)
    return ckpt, d / "m.onnx", export_onnx(ckpt, d / "m.onnx")


@pytest.mark.slow
def test_onnx_logits_equal_torch_on_real_crops(exported, store, tmp_path):
    ckpt = exported[0]
    report = export_onnx(ckpt, tmp_path / "m.onnx", check=store)
    assert report["crops"] > 0 and report["source"] == str(store.path)
    ck, net = load_checkpoint(ckpt), load_onnx(tmp_path / "m.onnx").model
    x = preprocess(torch.from_numpy(store.read(0, store.n)), SIZE)
    args = (x,) if not ck.model_config.inputs else (x, torch.randn(store.n, N_MODEL_INPUTS))
    with torch.inference_mode():
        want, got = ck.model(*args).numpy(), net(*args).numpy()
    assert want.std() > 0.05  # the crops' logits differ, so equality says something
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


def test_metadata_makes_the_file_self_describing(exported):
    ckpt, out, report = exported
    meta = model_header(out)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props[ONNX_METADATA_KEY]) == meta
    assert meta["checkpoint_hash"] == checkpoint_hash(ckpt) == report["checkpoint_hash"]
    assert meta["model_config"]["backbone"] == "mobilenet_v3_small" and meta["input_size"] == SIZE
    assert meta["preprocess"]["mean"] == list(IMAGENET_MEAN) and meta["head"]["widths"] == [256, 32, 1]
    assert meta["precision"] == "fp32" and meta["batch"] == "dynamic"
    assert meta["tolerance"] == {"atol": ATOL, "rtol": RTOL} and meta["check"]["source"] == "seeded noise"
    assert meta["train_config"] == {"seed": 0} and meta["metrics"] == {"val_ap": 0.5}
    assert checkpoint_identity(out) == checkpoint_hash(out) == report["hash"]
    loaded = load_onnx(out)
    if meta["model_config"]["inputs"]:
        fm = feature_model()
        assert loaded.prefilter_threshold == 0.0
        for k, v in fm.arrays().items():
            np.testing.assert_array_equal(loaded.feature_model.arrays()[k], v)


def test_engine_scores_through_onnx_equal_torch(exported, store):
    ckpt, onnx_path, _ = exported
    want = score_range(Ensemble([ckpt], device="cpu", precision="fp32"), store, 0, store.n, batch_size=16)
    ens = Ensemble([onnx_path], device="cpu")
    assert ens.reads_features == (model_header(ckpt)["model_config"]["inputs"] > 0)
    got = score_range(ens, store, 0, store.n, batch_size=16)
    assert want.std() > 0.05
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.slow
def test_an_ensemble_mixes_onnx_and_torch_models(exported, store):
    ckpt, onnx_path, _ = exported
    want = score_range(Ensemble([ckpt], device="cpu", precision="fp32"), store, 0, store.n)
    got = score_range(Ensemble([ckpt, onnx_path], device="cpu", precision="fp32"), store, 0, store.n)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.slow
def test_fixed_batch_export_runs_that_batch_and_the_engine_refuses_it(pixels_ckpt, tmp_path):
    ck = pixels_ckpt
    out = tmp_path / "b8.onnx"
    assert export_onnx(ck, out, batch_size=8)["batch"] == 8
    net = load_onnx(out).model
    assert net.session.get_inputs()[0].shape[0] == 8
    assert net(torch.zeros(8, 3, SIZE, SIZE)).shape == (8,)
    with pytest.raises(InputError, match="fixed-batch"):
        Ensemble([out], device="cpu")


@pytest.mark.slow
def test_export_refuses_logits_beyond_the_tolerance(exported, tmp_path):
    ckpt, _, report = exported
    assert report["max_abs_diff"] > 0  # folded batch norm rounds differently, so a zero tolerance fails
    with pytest.raises(CheckpointError, match="differ from torch's"):
        export_onnx(ckpt, tmp_path / "m.onnx", tolerance=(0.0, 0.0))
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("gate, why", [({"max_ap_loss": -1.0}, "it loses"), ({"min_speedup": 1e9}, "it is not 1e\\+09x as fast")])
def test_int8_not_kept_when_it_loses_ap_or_is_not_faster(pixels_ckpt, tmp_path, store, gate, why):
    out = tmp_path / "q.onnx"
    with pytest.raises(InputError, match=rf"int8 not kept \([^)]*{why}.*crops/s .*onnx_int8.*AP fp32 [\d.]+ int8 [\d.]+"):
        export_int8(pixels_ckpt, out, calibration=store, validation=store, calibration_crops=16, rate_seconds=0.01, **gate)
    assert [p.name for p in tmp_path.iterdir()] == [store.path.name]  # nothing written beside the store


def test_loading_refuses_an_onnx_graph_without_scanstream_metadata(tmp_path):
    model = build_model(ModelConfig("mobilenet_v3_small", SIZE)).eval()
    (tmp_path / "bare.onnx").write_bytes(graph_bytes(model, input_size=SIZE, inputs=0))
    with pytest.raises(CheckpointError, match="not a scanstream export"):
        load_onnx(tmp_path / "bare.onnx")


def test_loading_never_unpickles(tmp_path):
    path = tmp_path / "evil.onnx"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        Ensemble([path], device="cpu")


# -- the CLI verb --------------------------------------------------------------------------
def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("scanstream export: error:")
    return err


@pytest.mark.slow
def test_cli_exports_and_prints_the_report(pixels_ckpt, tmp_path, store, capsys):
    ck = pixels_ckpt
    assert main(["export", str(ck), "--out", str(tmp_path / "m.onnx"), "--check", str(store.path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hash"] == checkpoint_hash(tmp_path / "m.onnx") and report["source"] == str(store.path)


def test_cli_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(pickle.dumps({"weights": [1, 2]}))
    err = one_line_error(capsys, ["export", str(bad), "--out", str(tmp_path / "m.onnx")])
    assert str(bad) in err and "pickle" in err


@pytest.mark.slow
def test_cli_unwritable_out(pixels_ckpt, tmp_path, capsys):
    ck = pixels_ckpt
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "m.onnx"
    err = one_line_error(capsys, ["export", str(ck), "--out", str(out)])
    assert str(tmp_path / "file") in err


def test_cli_out_must_be_onnx(pixels_ckpt, tmp_path, capsys):
    ck = pixels_ckpt
    err = one_line_error(capsys, ["export", str(ck), "--out", str(tmp_path / "m.bin")])
    assert "m.bin" in err and ".onnx" in err


def test_cli_int8_needs_calibration(pixels_ckpt, tmp_path, capsys):
    ck = pixels_ckpt
    assert "--calibration" in one_line_error(capsys, ["export", str(ck), "--out", str(tmp_path / "m.onnx"), "--int8"])


def test_classify_runs_an_onnx_model(exported, store, tmp_path):
    """classify takes an export where it takes a checkpoint."""
    ckpt, onnx_path, _ = exported
    classify([store.path], [onnx_path], tmp_path / "cands", device="cpu", precision="fp32", workers=1,
             processes=False, progress=False)
    rows = pq.read_table(part_files(tmp_path / "cands")).sort_by("store_index")
    want = score_range(Ensemble([ckpt], device="cpu", precision="fp32"), store, 0, store.n)
    np.testing.assert_allclose(rows.column("score").to_numpy(), want, atol=ATOL, rtol=RTOL)


@pytest.mark.slow
def test_int8_written_when_the_gates_pass(pixels_ckpt, tmp_path, store):
    """Gates opened wide (any speed, any AP), so the written path runs whatever this machine measures."""
    out = tmp_path / "q.onnx"
    report = export_int8(pixels_ckpt, out, calibration=store, validation=store, calibration_crops=16,
                         rate_seconds=0.01, min_speedup=0.0, max_ap_loss=1.0)
    meta = model_header(out)
    assert meta["precision"] == "int8" and meta["checkpoint_hash"] == checkpoint_hash(pixels_ckpt)
    assert meta["int8_gate"]["ap"] == report["ap"] and set(report["crops_per_s"]) == {"torch_fp32", "onnx_fp32", "onnx_int8"}
    assert meta["quantization"]["calibration"] == str(store.path) and report["hash"] == checkpoint_hash(out)
    scores = score_range(Ensemble([out], device="cpu"), store, 0, store.n)
    assert scores.shape == (store.n,) and np.isfinite(scores).all()
