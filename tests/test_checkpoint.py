"""Checkpoints: round trip, identity hash, atomic writes, and refusal of anything else."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

import scanstream.network.checkpoint as ckpt
from scanstream.errors import CheckpointError
from scanstream.network.checkpoint import checkpoint_hash, load_checkpoint, read_header, save_checkpoint
from scanstream.network.model import ModelConfig, build_model

CFG = ModelConfig(backbone="resnet18", input_size=64)


def _save(path, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(CFG)
    args = {"model_config": CFG, "train_config": {"n": 2, "m": 24, "lr": 3e-4}, "data_hash": "abc123",
            "metrics": {"val_ap": 0.9, "best_epoch": 3}}
    args.update(kw)
    return model, save_checkpoint(path, model, **args)


def test_round_trip(tmp_path):
    path = tmp_path / "m.safetensors"
    model, h = _save(path)
    loaded = load_checkpoint(path)
    assert loaded.model_config == CFG
    assert loaded.train_config == {"n": 2, "m": 24, "lr": 3e-4}
    assert loaded.data_hash == "abc123"
    assert loaded.metrics == {"val_ap": 0.9, "best_epoch": 3}
    assert loaded.hash == h == hashlib.sha256(path.read_bytes()).hexdigest()[:16] == checkpoint_hash(path)
    assert not loaded.model.training
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert read_header(path)["scanstream_checkpoint"] == 1


def test_hash_differs_between_models(tmp_path):
    _, h1 = _save(tmp_path / "a.safetensors", seed=1)
    _, h2 = _save(tmp_path / "b.safetensors", seed=2)
    assert h1 != h2 and len(h1) == 16


def test_channels_last_model_saves(tmp_path):
    torch.manual_seed(0)
    model = build_model(CFG).to(memory_format=torch.channels_last)
    save_checkpoint(tmp_path / "m.safetensors", model, model_config=CFG, train_config={}, data_hash="", metrics={})
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert torch.equal(loaded.model.net.conv1.weight, model.net.conv1.weight)


def test_pretrained_config_is_not_needed_to_load(tmp_path):
    """A model fine-tuned from ImageNet loads where the ImageNet file is absent."""
    cfg = ModelConfig(backbone="resnet18", input_size=64, pretrained="imagenet")
    model = build_model(CFG)
    save_checkpoint(tmp_path / "m.safetensors", model, model_config=cfg, train_config={}, data_hash="", metrics={})
    assert load_checkpoint(tmp_path / "m.safetensors").model_config.pretrained == "imagenet"


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_is_refused_without_being_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.safetensors"
    if writer == "torch.save":
        torch.save({"state": evil}, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(path)
    assert not marker.exists()


def test_random_bytes_refused(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint|never unpickles"):
        load_checkpoint(path)


def test_plain_safetensors_without_metadata_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file(build_model(CFG).state_dict(), str(path))
    with pytest.raises(CheckpointError, match="not a scanstream checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_weights_not_fitting_config_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    model = build_model(ModelConfig(backbone="mobilenet_v3_small", input_size=64))
    save_checkpoint(path, model, model_config=CFG, train_config={}, data_hash="", metrics={})
    with pytest.raises(CheckpointError, match="do not fit resnet18"):
        load_checkpoint(path)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    _, h = _save(path)

    def broken_save(state, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(KeyboardInterrupt):
        _save(path, seed=5)
    assert load_checkpoint(path).hash == h
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_refuses_other_suffix(tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        _save(tmp_path / "m.pt")


def test_version_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "CHECKPOINT_VERSION", 99)
    _save(tmp_path / "m.safetensors")
    monkeypatch.setattr(ckpt, "CHECKPOINT_VERSION", 1)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_checkpoint_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _save(tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644
