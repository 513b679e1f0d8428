"""Checkpoints: one safetensors file holding the weights and, in its header, what made them.

A checkpoint is ``NAME.safetensors`` (docs/formats.md, "The artefacts", Checkpoint). The safetensors header's
``__metadata__`` (str -> str) has one key, ``"scanstream"``, whose value is the JSON of::

    {"scanstream_checkpoint": 1, "model_config": {...}, "train_config": {...},
     "data_hash": "...", "metrics": {...}}

The file's content hash (:func:`checkpoint_hash`) is the model's identity downstream
(candidate tables and threshold records name the models by it).

Loading never unpickles: the header is parsed as JSON and the tensors are read by safetensors;
a pickle, a zip (``torch.save``) or any other file is refused with :class:`CheckpointError`
before anything in it is interpreted. Saving is atomic (temporary file in the same directory,
fsync, then ``os.replace``), so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scanstream.atomic import atomic_path
from scanstream.devices import resolve_device
from scanstream.errors import CheckpointError, ConfigError, InputError
from scanstream.network.header import (
    CHECKPOINT_VERSION,
    METADATA_KEY,
    PREFILTER_PREFIX,
    LoadedCheckpoint,
    checkpoint_hash,
    read_header,
)
from scanstream.network.model import ModelConfig, build_model
from scanstream.picker.learned import FeatureModel


def _json_ready(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=True, default=str)
    except (TypeError, ValueError) as exc:
        raise InputError(f"checkpoint {what} is not JSON-serialisable: {exc}") from None


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_config: ModelConfig,
    train_config: dict,
    data_hash: str,
    metrics: dict,
    feature_model: FeatureModel | None = None,
    prefilter_threshold: float | None = None,
) -> str:
    """Write ``model``'s weights and metadata to ``path`` atomically.

    Parameters
    ----------
    path : path-like
        The ``*.safetensors`` file to write (replaced if it exists).
    model : torch.nn.Module
        The classifier (any device, any memory format; written as contiguous CPU tensors).
    model_config, train_config, data_hash, metrics
        Recorded in the header (see the module docstring).
    feature_model : FeatureModel, optional
        Required when ``model_config.inputs > 0`` (a fused network); stored as ``prefilter.*``
        tensors with its metadata under ``feature_model``.
    prefilter_threshold : float, optional
        Makes the checkpoint a cascade (see :class:`LoadedCheckpoint`).

    Returns
    -------
    str
        :func:`checkpoint_hash` of the written file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: a checkpoint file name must end in .safetensors")
    if (model_config.inputs > 0) != (feature_model is not None):
        raise InputError("a fused network (inputs > 0) is saved with its feature model, a pixels-only one without")
    if prefilter_threshold is not None and feature_model is None:
        raise InputError("a prefilter threshold needs a feature model")
    meta = {
        "scanstream_checkpoint": CHECKPOINT_VERSION,
        "model_config": model_config.to_dict(),
        "train_config": dict(train_config),
        "data_hash": str(data_hash),
        "metrics": dict(metrics),
    }
    if feature_model is not None:
        meta["feature_model"] = feature_model.info
        meta["prefilter_threshold"] = None if prefilter_threshold is None else float(prefilter_threshold)
    header = {METADATA_KEY: _json_ready(meta, "metadata"), "format": "pt"}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if feature_model is not None:
        state.update(feature_model.tensors(PREFILTER_PREFIX))
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return checkpoint_hash(path)


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles).

    Parameters
    ----------
    path : path-like
        A ``*.safetensors`` scanstream checkpoint.
    device : str or torch.device
        Where to put the model (``"auto"``: CUDA when available).

    Raises
    ------
    CheckpointError
        Anything that is not a valid scanstream checkpoint: missing file, pickle / zip /
        other formats, missing metadata, or weights that do not fit the recorded model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_header(path)
    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except (InputError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad model config in checkpoint: {exc}") from None
    dev = resolve_device(device)
    model = build_model(ModelConfig(backbone=config.backbone, input_size=config.input_size, inputs=config.inputs))
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors tensors: {exc}") from None
    fm_tensors = {k: state.pop(k) for k in [k for k in state if k.startswith(PREFILTER_PREFIX)]}
    feature_model, prefilter = None, None
    if config.inputs:
        if not isinstance(meta.get("feature_model"), dict):
            raise CheckpointError(f"{path}: a fused network's checkpoint lacks its feature model metadata")
        feature_model = FeatureModel.from_tensors(
            {k: v.numpy() for k, v in fm_tensors.items()}, meta["feature_model"], prefix=PREFILTER_PREFIX, source=str(path)
        )
        prefilter = meta.get("prefilter_threshold")
        if prefilter is not None and not isinstance(prefilter, (int, float)):
            raise CheckpointError(f"{path}: prefilter_threshold {prefilter!r} is not a number")
    elif fm_tensors:
        raise CheckpointError(f"{path}: a pixels-only checkpoint holding prefilter tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {config.backbone}: {first}") from None
    model.to(dev).eval()
    return LoadedCheckpoint(
        model=model,
        model_config=config,
        train_config=meta["train_config"],
        data_hash=meta["data_hash"],
        metrics=meta["metrics"],
        hash=checkpoint_hash(path),
        feature_model=feature_model,
        prefilter_threshold=None if prefilter is None else float(prefilter),
    )


# ---------------------------------------------------------------------------------------------
# Resumable training state (model + optimizer + loop state), also safetensors, never pickle

STATE_KEY = "scanstream_train_state"


def save_train_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write the training state after an epoch, atomically.

    Tensors: the model's state dict (``model.*``) and the optimizer's per-parameter state
    (``optim.<param index>.<name>``); the header holds ``state`` (JSON: epoch, early-stopping
    state, history, ...) and the optimizer's param groups without their parameters.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, pstate in opt["state"].items():
        for name, value in pstate.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = t.detach().to("cpu").contiguous()
    groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
    meta = {STATE_KEY: _json_ready({"state": state, "param_groups": groups}, "training state"), "format": "pt"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_train_state(path: str | os.PathLike) -> dict | None:
    """The JSON part of a training state file, or None when it is absent or unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
    try:
        return json.loads(meta[STATE_KEY])
    except (KeyError, ValueError):
        return None


def load_train_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer from :func:`save_train_state`; return the JSON ``state``.

    The optimizer must have been built with the same parameter groups as when saved.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    saved = read_train_state(path)
    if saved is None:
        raise CheckpointError(f"{path}: not a scanstream training state file")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable training state: {exc}") from None
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: training state does not fit the model: {str(exc).splitlines()[0]}") from None
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    groups = saved["param_groups"]
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise CheckpointError(f"{path}: training state has other optimizer parameter groups than this run")
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit: {exc}") from None
    return saved["state"]
