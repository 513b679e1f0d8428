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

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scanstream.atomic import atomic_path
from scanstream.devices import resolve_device
from scanstream.errors import CheckpointError, ConfigError, InputError
from scanstream.network.model import ModelConfig, build_model
from scanstream.picker.learned import EMBEDDED_PREFIX, FeatureModel

CHECKPOINT_VERSION = 1
METADATA_KEY = "scanstream"
PREFILTER_PREFIX = EMBEDDED_PREFIX
#: A safetensors header larger than this is not one of ours (ours are a few tens of kB).
_MAX_HEADER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read back.

    Attributes
    ----------
    model : torch.nn.Module
        The classifier, in eval mode, on the requested device.
    model_config : ModelConfig
    train_config : dict
        The resolved training configuration it was trained with.
    data_hash : str
        Identity of the training data (content hashes of the train and valid stores).
    metrics : dict
        Final metrics (VALID AP, loss, best epoch, ...).
    hash : str
        :func:`checkpoint_hash` of the file.
    feature_model : FeatureModel or None
        The fused network's feature model (tensors ``prefilter.*``): its logit is one of the
        network's inputs, and with ``prefilter_threshold`` it is the cascade's first stage.
    prefilter_threshold : float or None
        Objects whose feature-model logit is below this are never shown to the network
        (a cascade); None: every object is scored by the network.
    """

    model: nn.Module
    model_config: ModelConfig
    train_config: dict
    data_hash: str
    metrics: dict
    hash: str
    feature_model: FeatureModel | None = None
    prefilter_threshold: float | None = None

    @property
    def reads_features(self) -> bool:
        """Whether scoring needs the picker's features from the store's object table."""
        return self.feature_model is not None


def checkpoint_hash(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes, first 16 hex characters."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
    return h.hexdigest()[:16]


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


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The scanstream metadata of a checkpoint, without reading its tensors.

    Raises
    ------
    CheckpointError
        ``path`` is missing, is not a safetensors file (a pickle or ``torch.save`` zip is named
        as such), or is a safetensors file without scanstream metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
        raw = f.read(n) if 0 < n <= min(_MAX_HEADER_BYTES, size - 8) else b""
    try:
        header = json.loads(raw.decode("utf-8")) if raw[:1] == b"{" else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if header is None:
        # Name the common impostors; their bytes are never interpreted.
        if head[:2] == b"PK":
            kind = "a zip archive (torch.save)"
        elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            kind = "a Python pickle"
        else:
            raise CheckpointError(f"{path}: not a safetensors checkpoint (no valid safetensors header)")
        raise CheckpointError(f"{path}: is {kind}, not a safetensors checkpoint; scanstream never unpickles model files")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (header is not a JSON object)")
    meta_raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if meta_raw is None:
        raise CheckpointError(f"{path}: a safetensors file but not a scanstream checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(meta_raw)
    except ValueError:
        raise CheckpointError(f"{path}: scanstream metadata is not valid JSON") from None
    version = meta.get("scanstream_checkpoint") if isinstance(meta, dict) else None
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported scanstream checkpoint version {version!r} (expected {CHECKPOINT_VERSION})")
    for key, kind in (("model_config", dict), ("train_config", dict), ("data_hash", str), ("metrics", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint metadata lacks {key!r} ({kind.__name__})")
    return meta


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
