"""Training: early stopping, Dask-fed / local loading, bad inputs, a tiny end-to-end run,
determinism, resumption after a crash, and the ``train`` verb."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

import scanstream.training.loop as tr
from scanstream.cli import main
from scanstream.config import flag_name
from scanstream.errors import ConfigError, InputError
from scanstream.network.checkpoint import load_checkpoint
from scanstream.network.model import ModelConfig, build_model
from scanstream.store import create_store
from scanstream.training.augment import AugmentConfig, augment
from scanstream.training.config import TrainConfig, lr_factor, verb_fields
from scanstream.training.dataload import (
    BlockStream,
    load_block,
    plan_sequential,
    plan_train_epoch,
    rebatch,
    resize_crops,
)
from scanstream.training.loop import EarlyStopping, train

# ---------------------------------------------------------------------------------------------
# Early stopping on scripted loss sequences


def _reference_smoothing(values, w):
    out, s = [], None
    for v in values:
        s = v if s is None else w * s + (1 - w) * v
        out.append(s)
    return out


def _run_rule(values, **kw):
    es = EarlyStopping(**kw)
    rows = [es.update(v) for v in values]
    return es, rows


def test_smoothing_formula_by_hand():
    _, rows = _run_rule([1.0, 0.8, 0.6], smoothing=0.9, warmup=5)
    assert [r[0] for r in rows] == pytest.approx([1.0, 0.98, 0.942])
    assert [r[1] for r in rows] == [True, True, True] and not any(r[2] for r in rows)


def test_stops_when_smoothed_exceeds_115_percent_of_minimum():
    values = [1.0, 0.6, 0.4, 0.3, 0.25, 0.2, 0.2, 0.2] + [3.0] * 10
    es, rows = _run_rule(values)
    smoothed = _reference_smoothing(values, 0.9)
    assert [r[0] for r in rows] == pytest.approx(smoothed)
    first_stop = next(i for i, r in enumerate(rows) if r[2])
    s_min = min(smoothed[: first_stop + 1])
    assert smoothed[first_stop] > 1.15 * s_min
    assert all(smoothed[i] <= 1.15 * min(smoothed[: i + 1]) for i in range(5, first_stop))
    assert es.best_epoch == int(np.argmin(smoothed[: first_stop + 1])) == 7
    assert first_stop == 8  # the first rise: 0.9 S_7 + 0.1 x 3.0 > 1.15 S_7


def test_no_stop_during_warmup():
    values = [0.1, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    _, rows = _run_rule(values, warmup=5)
    assert [r[2] for r in rows] == [False] * 5 + [True, True]
    _, rows = _run_rule(values, warmup=0)
    assert rows[1][2]


def test_keeps_improving_never_stops():
    values = list(np.linspace(1.0, 0.1, 40))
    es, rows = _run_rule(values)
    assert not any(r[2] for r in rows) and all(r[1] for r in rows) and es.best_epoch == 39


def test_noise_below_factor_does_not_stop():
    values = [0.5, 0.4, 0.3, 0.3, 0.3, 0.3] + [0.3, 0.34] * 20
    _, rows = _run_rule(values)
    assert not any(r[2] for r in rows)


def test_nan_loss_is_never_best():
    es, rows = _run_rule([1.0, 0.5, math.nan])
    assert rows[2][1] is False and es.best_epoch == 1


# ---------------------------------------------------------------------------------------------
# Loading plans and blocks


def test_train_plan_emits_every_draw_once_within_its_chunks():
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 1000, 3000)
    tasks = plan_train_epoch(samples, n=1000, chunk_crops=64, block_crops=256, seed=1, epoch=2)
    emitted = np.concatenate([t.indices for t in tasks])
    assert np.array_equal(np.sort(emitted), np.sort(samples))
    for t in tasks:
        assert len(t.chunks) <= 4
        assert set((t.indices // 64).tolist()) == set(t.chunks)  # only chunks that drew samples are read
    again = plan_train_epoch(samples, n=1000, chunk_crops=64, block_crops=256, seed=1, epoch=2)
    assert all(np.array_equal(a.indices, b.indices) and a.chunks == b.chunks for a, b in zip(tasks, again, strict=True))
    other = plan_train_epoch(samples, n=1000, chunk_crops=64, block_crops=256, seed=1, epoch=3)
    assert not np.array_equal(emitted, np.concatenate([t.indices for t in other]))


def test_sequential_plan_covers_store_in_order():
    tasks = plan_sequential(300, chunk_crops=64, block_crops=128)
    assert np.array_equal(np.concatenate([t.indices for t in tasks]), np.arange(300))
    assert [t.chunks for t in tasks] == [(0, 1), (2, 3), (4,)]


def test_load_block_reads_resizes_and_augments(store_factory):
    store = store_factory("b.zarr", n=80)
    idx = np.array([70, 3, 3, 65, 10])
    out = load_block(str(store.path), (0, 1), idx, chunk_crops=64, size=48)
    expected = resize_crops(store.read()[idx], 48).numpy()
    assert out.shape == (5, 48, 48, 3) and out.dtype == np.uint8 and np.array_equal(out, expected)
    cfg = AugmentConfig(n=2, m=24)
    aug = load_block(str(store.path), (0, 1), idx, chunk_crops=64, size=48, augment_config=cfg, seed=5)
    ref = augment(torch.from_numpy(expected), cfg, torch.Generator().manual_seed(5)).numpy()
    assert np.array_equal(aug, ref)
    with pytest.raises(InputError, match="outside chunks"):
        load_block(str(store.path), (0,), np.array([70]), chunk_crops=64, size=48)


def test_block_stream_keeps_order_and_rebatches(store_factory):
    store = store_factory("s.zarr", n=150)
    tasks = plan_sequential(150, chunk_crops=64, block_crops=64)
    with ThreadPoolExecutor(2) as pool:
        stream = BlockStream(pool, str(store.path), tasks, ahead=2, chunk_crops=64, size=32)
        batches = list(rebatch(iter(stream), 40, drop_last=False))
    assert [len(b[0]) for b in batches] == [40, 40, 40, 30]
    assert np.array_equal(np.concatenate([b[0] for b in batches]), np.arange(150))
    assert np.array_equal(np.concatenate([b[1] for b in batches]), resize_crops(store.read(), 32).numpy())
    pieces = [(np.arange(i, i + 7), np.zeros((7, 1))) for i in range(0, 70, 7)]
    assert [len(b[0]) for b in rebatch(iter(pieces), 16, drop_last=True)] == [16] * 4


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error before training


@pytest.fixture
def stores(store_factory):
    return store_factory("t.zarr", n=64, seed=1), store_factory("v.zarr", n=32, seed=2)


def _cfg(stores, out, **kw):
    t, v = stores
    base = {"backbone": "mobilenet_v3_small", "input_size": 32, "max_epochs": 2, "batch_size": 16, "epoch_size": 32,
            "warmup_epochs": 1, "loader": "local", "block_crops": 64}
    base.update(kw)
    return TrainConfig(train_store=str(t.path), valid_store=str(v.path), out_dir=str(out), **base)


def _refused(cfg, exc, match):
    with pytest.raises(exc, match=match):
        train(cfg, progress=False)
    assert not (Path(cfg.out_dir) / "config.json").exists()


def test_store_without_labels(stores, store_factory, tmp_path):
    unlabelled = store_factory("u.zarr", n=16, labelled=False)
    _refused(_cfg((unlabelled, stores[1]), tmp_path / "r"), InputError, "no labels")


def _relabelled(store, labels, path):
    """A copy of ``store`` whose labels are ``labels`` (written as a store, so its digests match)."""
    table = store.table.set_column(store.table.schema.get_field_index("label"), "label", [labels])
    return create_store(path, store.read(), table, source={"stage": "test"})


def test_train_store_with_one_class(stores, store_factory, tmp_path):
    one = store_factory("one.zarr", n=16, alpha_fraction=0.0)
    # make_store always puts one alpha first: relabel it to leave one class
    one = _relabelled(one, np.zeros(one.n, np.int8), tmp_path / "one0.zarr")
    _refused(_cfg((one, stores[1]), tmp_path / "r"), InputError, "one class only")


def test_valid_store_with_one_class(stores, store_factory, tmp_path):
    one = store_factory("onev.zarr", n=16)
    one = _relabelled(one, np.ones(one.n, np.int8), tmp_path / "onev1.zarr")
    _refused(_cfg((stores[0], one), tmp_path / "r"), InputError, "valid store has one class")


def test_crop_shapes_differ(stores, store_factory, tmp_path):
    odd = store_factory("odd.zarr", n=16)
    arr = zarr.open_array(str(odd.path / "crops"), mode="r+")
    group = zarr.open_group(str(odd.path), mode="r+")
    del group["crops"]
    group.create_array("crops", shape=(16, 112, 112, 3), chunks=(16, 112, 112, 3), dtype="uint8")
    del arr
    _refused(_cfg((stores[0], odd), tmp_path / "r"), InputError, "crop shapes differ")


@pytest.mark.parametrize("kw,match", [({"n": 9}, "RandAugment N"), ({"n": -1}, "RandAugment N"),
                                      ({"m": 31}, "RandAugment M"), ({"m": -1}, "RandAugment M"),
                                      ({"darkness_jitter": 1.5}, "darkness jitter")])
def test_augmentation_out_of_range(stores, tmp_path, kw, match):
    _refused(_cfg(stores, tmp_path / "r", **kw), InputError, match)


def test_unwritable_out_dir(stores, tmp_path):
    (tmp_path / "afile").write_text("x")
    _refused(_cfg(stores, tmp_path / "afile" / "run"), InputError, "not writable")


@pytest.mark.parametrize("kw", [{"loader": "ray"}, {"batch_size": 0}, {"smoothing": 1.0}, {"stop_factor": 1.0},
                                {"lr_schedule": "step"}])
def test_bad_options(stores, tmp_path, kw):
    _refused(_cfg(stores, tmp_path / "r", **kw), ConfigError, next(iter(kw)))


def test_missing_store(stores, tmp_path):
    cfg = _cfg(stores, tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="no such crop store"):
        train(TrainConfig(**{**cfg.__dict__, "train_store": str(tmp_path / "nope.zarr")}), progress=False)


# ---------------------------------------------------------------------------------------------
# Runs


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("images_per_s", "seconds")} for h in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Tiny stores and one 2-epoch run with the local loader, shared by the run tests."""
    from fixtures import make_store

    d = tmp_path_factory.mktemp("ref")
    stores = (make_store(d / "t.zarr", n=64, seed=1), make_store(d / "v.zarr", n=32, seed=2))
    return stores, train(_cfg(stores, d / "run"), progress=False)


def test_tiny_run_writes_outputs(reference):
    _, local = reference
    out = local.checkpoint.parent
    assert local.checkpoint.name == "model.safetensors"
    for name in ("config.json", "history.csv", "loss_curve.png", "model.safetensors", "train_state.safetensors"):
        assert (out / name).stat().st_size > 0
    assert [h["epoch"] for h in local.history] == [0, 1]
    assert set(local.history[0]) >= {"epoch", "train_loss", "val_loss", "smoothed_val_loss", "val_ap", "images_per_s"}
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_ap"] <= 1 for h in local.history)
    assert {"val_ap", "val_loss", "best_epoch", "epochs_run"} <= set(local.metrics) and local.metrics["epochs_run"] == 2
    best = local.history[local.best_epoch]
    assert best["best"] and local.metrics["val_ap"] == best["val_ap"]
    ck = load_checkpoint(local.checkpoint)
    assert ck.model_config == ModelConfig("mobilenet_v3_small", 32, "none")
    assert ck.metrics == local.metrics and ck.train_config["n"] == 2 and len(ck.data_hash) == 16
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["resolved"]["augment_on"] == "worker" and resolved["resolved"]["precision"] in ("fp32", "bf16")
    assert resolved["max_epochs"] == 2 and resolved["resolved"]["train_counts"]["alpha"] > 0
    header = (out / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,val_loss,smoothed_val_loss,val_ap,images_per_s")


@pytest.mark.slow
def test_dask_fed_run_is_the_same_run(reference, tmp_path):
    """Same seed, same device, Dask-fed (a LocalCluster of one process): identical history and weights."""
    stores, local = reference
    dask = train(_cfg(stores, tmp_path / "d", loader="dask", workers=1), progress=False)
    assert _strip(dask.history) == _strip(local.history)
    wa, wd = _weights(local.checkpoint), _weights(dask.checkpoint)
    assert all(torch.equal(wa[k], wd[k]) for k in wa)


def test_keep_last_on_a_finished_run_keeps_the_final_epoch(reference, tmp_path):
    """Rerunning a finished run with keep="last" trains nothing and keeps the last epoch's weights."""
    import shutil

    stores, local = reference
    run_dir = tmp_path / "copy"
    shutil.copytree(local.checkpoint.parent, run_dir)
    cfg = _cfg(stores, run_dir, keep="last")
    result = train(cfg, progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1] and result.best_epoch == 1
    final = {k[len("model."):]: v for k, v in load_file(str(run_dir / "train_state.safetensors")).items() if k.startswith("model.")}
    kept = _weights(run_dir / "model.safetensors")
    assert all(torch.equal(kept[k], final[k]) for k in kept)
    assert load_checkpoint(run_dir / "model.safetensors").metrics["val_ap"] == result.history[1]["val_ap"]


def test_another_seed_is_another_run(reference, tmp_path):
    stores, local = reference
    other = train(_cfg(stores, tmp_path / "o", seed=1, max_epochs=1), progress=False)
    assert other.history[0]["train_loss"] != local.history[0]["train_loss"]


def _crash_in_epoch_1(real):
    def crash(run, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(run, epoch, **kw)

    return crash


def _interrupt_in_epoch_1(cfg, monkeypatch):
    """Run ``cfg`` until Ctrl-C in epoch 1 (epoch 0 finished); return the real train_one_epoch."""
    real = tr.train_one_epoch
    monkeypatch.setattr(tr, "train_one_epoch", _crash_in_epoch_1(real))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    return real


def test_crash_leaves_best_checkpoint_and_rerun_resumes(reference, tmp_path, monkeypatch):
    stores, straight = reference
    cfg = _cfg(stores, tmp_path / "r")
    real = _interrupt_in_epoch_1(cfg, monkeypatch)
    ck = load_checkpoint(tmp_path / "r" / "model.safetensors")  # the last best one, intact
    assert ck.metrics["best_epoch"] == 0 and ck.metrics["epochs_run"] == 1
    monkeypatch.setattr(tr, "train_one_epoch", real)
    resumed = train(cfg, progress=False)
    assert _strip(resumed.history) == _strip(straight.history)
    wa, wr = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(wa[k], wr[k]) for k in wa)
    # finished: a rerun trains nothing and returns the same result
    monkeypatch.setattr(tr, "train_one_epoch", _crash_in_epoch_1(real))
    assert train(cfg, progress=False).history == resumed.history
    # a run directory moved elsewhere is the same run
    shutil.copytree(tmp_path / "r", tmp_path / "moved")
    assert train(_cfg(stores, tmp_path / "moved"), progress=False).history == resumed.history
    # another configuration in the same directory is refused
    with pytest.raises(InputError, match="another configuration"):
        train(_cfg(stores, tmp_path / "r", m=10), progress=False)


def test_lr_factor_constant_and_cosine():
    assert all(lr_factor("constant", e, s, 10, 4) == 1.0 for e in range(4) for s in range(10))
    cos = [lr_factor("cosine", e, s, 10, 4) for e in range(4) for s in range(10)]
    assert cos[0] == 1.0 and cos[20] == pytest.approx(0.5) and 0 < cos[-1] < 0.01
    assert all(a > b for a, b in itertools.pairwise(cos))
    assert cos[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 40)))
    with pytest.raises(ConfigError, match="lr_schedule"):
        lr_factor("linear", 0, 0, 10, 4)


@pytest.mark.slow
def test_cosine_run_decays_rates_and_resumes_the_same(reference, tmp_path, monkeypatch):
    """Cosine: each group's rate follows lr_factor; an interrupted run resumes to the same result;
    max_epochs (which lays out the schedule) may not change on resume, unlike under a constant rate."""
    stores, _ = reference
    seen = []
    real_step = tr.train_step

    def spy(run, x, y):
        seen.append(run.optimizer.param_groups[0]["lr"])
        return real_step(run, x, y)

    monkeypatch.setattr(tr, "train_step", spy)
    cfg = _cfg(stores, tmp_path / "c", lr=1e-3, lr_schedule="cosine")
    straight = train(cfg, progress=False)
    steps = 32 // 16
    expected = [1e-3 * lr_factor("cosine", e, s, steps, 2) for e in range(2) for s in range(steps)]
    assert seen == pytest.approx(expected)
    real_epoch = _interrupt_in_epoch_1(_cfg(stores, tmp_path / "r", lr=1e-3, lr_schedule="cosine"), monkeypatch)
    monkeypatch.setattr(tr, "train_one_epoch", real_epoch)
    with pytest.raises(InputError, match="another configuration"):
        train(_cfg(stores, tmp_path / "r", lr=1e-3, lr_schedule="cosine", max_epochs=3), progress=False)
    resumed = train(_cfg(stores, tmp_path / "r", lr=1e-3, lr_schedule="cosine"), progress=False)
    assert _strip(resumed.history) == _strip(straight.history)
    wa, wr = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(wa[k], wr[k]) for k in wa)
    # a constant-rate run may be extended
    train(_cfg(stores, tmp_path / "k", max_epochs=1), progress=False)
    assert len(train(_cfg(stores, tmp_path / "k", max_epochs=2), progress=False).history) == 2


def test_staged_unfreezing_groups():
    model = build_model(ModelConfig("resnet18", 32))
    cfg = TrainConfig("t", "v", "o", unfreeze=True, unfreeze_epochs=(2, 4), lr=1e-3)
    opt = tr._build_optimizer(model, cfg, 0)
    assert [g["lr"] for g in opt.param_groups] == [1e-3]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in model.head.parameters()} <= trainable
    assert not model.net.layer4[0].conv1.weight.requires_grad and model.net.layer4[0].bn1.weight.requires_grad
    loss = model(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    opt.step()
    opt = tr._build_optimizer_keeping(opt, model, cfg, 2)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert model.net.layer4[0].conv1.weight.requires_grad and not model.net.conv1.weight.requires_grad
    assert len(opt.state) > 0  # Adam moments of the head kept
    opt = tr._build_optimizer_keeping(opt, model, cfg, 4)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4, 1e-4]
    assert all(p.requires_grad for p in model.parameters())


def test_cli_train(stores, tmp_path, capsys):
    t, v = stores
    out = tmp_path / "cli"
    rc = main(["train", str(t.path), str(v.path), "--out", str(out), "--backbone",
               "mobilenet_v3_small", "--input-size", "32", "--max-epochs", "1", "--batch-size", "16",
               "--epoch-size", "32", "--loader", "local", "--darkness-jitter", "0.2", "--no-progress"])
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["darkness_jitter"] == 0.2
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint"] == str(out / "model.safetensors") and summary["metrics"]["epochs_run"] == 1
    assert load_checkpoint(out / "model.safetensors").model_config.input_size == 32


def test_cli_train_reads_a_toml_config_and_flags_override_it(stores, tmp_path, capsys):
    t, v = stores
    toml = tmp_path / "train.toml"
    toml.write_text('[train]\nbackbone = "mobilenet_v3_small"\ninput_size = 32\nmax_epochs = 1\nbatch_size = 16\n'
                    'epoch_size = 32\nloader = "local"\ndarkness_jitter = 0.1\nunfreeze_epochs = [3, 5]\n')
    out = tmp_path / "toml"
    rc = main(["train", str(t.path), str(v.path), "--out", str(out), "--config", str(toml),
               "--darkness-jitter", "0.2", "--no-progress"])
    assert rc == 0
    resolved = json.loads((out / "config.json").read_text())
    assert (resolved["darkness_jitter"], resolved["input_size"], resolved["unfreeze_epochs"]) == (0.2, 32, [3, 5])
    capsys.readouterr()
    toml.write_text("[train]\nmax_epoch = 1\n")
    rc = main(["train", str(t.path), str(v.path), "--out", str(tmp_path / "bad"), "--config",
               str(toml)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "max_epoch" in err and str(toml) in err


def test_cli_flags_are_the_config_fields_with_their_help(capsys):
    assert all(f.metadata.get("help") for f in fields(TrainConfig))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    flags = verb_fields(TrainConfig, "train")
    assert len(flags) == 23 and all(flag_name(name) in text for name in flags)
    assert "--pos-weight" in text and "--input-size PX" in text and "{constant,cosine}" in text


def test_cli_bad_n_is_one_line_exit_2(stores, tmp_path, capsys):
    t, v = stores
    rc = main(["train", str(t.path), str(v.path), "--out", str(tmp_path / "x"), "--n", "9"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "N" in err and "0..8" in err


@pytest.mark.slow
def test_cli_dask_start_up_lines_only_with_verbose(stores, tmp_path):
    """A Dask-fed run from the command line: stderr carries no 'INFO distributed...' lines unless -v."""
    import subprocess
    import sys

    t, v = stores
    args = [sys.executable, "-m", "scanstream", "train", str(t.path), str(v.path),
            "--backbone", "mobilenet_v3_small", "--input-size", "32", "--max-epochs", "1", "--batch-size", "16",
            "--epoch-size", "32", "--loader", "dask", "--workers", "1", "--no-progress"]
    # in-process CLI calls of earlier tests set the quieting variable in this process's environment
    env = {k: v for k, v in os.environ.items() if k != "DASK_LOGGING__DISTRIBUTED"}
    quiet = subprocess.run([*args, "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=300,
                           check=False, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO distributed" not in quiet.stderr
    loud = subprocess.run([*args[:3], "-v", *args[3:], "--out", str(tmp_path / "l")], capture_output=True, text=True,
                          timeout=300, check=False, env=env)
    assert loud.returncode == 0 and "INFO distributed.scheduler" in loud.stderr


def test_a_run_saved_with_amp_resumes_under_precision():
    from scanstream.training.loop import _comparable

    new = {"precision": "fp32", "lr_schedule": "constant", "resolved": {"data_hash": "d"}}
    old = {"amp": "off", "lr_schedule": "constant", "resolved": {"data_hash": "d"}}
    assert _comparable(old) == _comparable(new)
    assert _comparable({**old, "amp": "bf16"}) != _comparable(new)
