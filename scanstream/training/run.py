"""What a training run is made of, before its first step: checked inputs, where it runs, what it shares.

:func:`check_config` refuses every bad option and store before anything is written (except the
output directory); :func:`resolve_runtime` fixes the device, bf16 autocast, where augmentation
runs, loader workers and torch threads on this machine (:class:`Runtime`); :class:`RunFeatures`
holds the fused network's per-object inputs and the cascade's prefilter; :func:`make_run`
bundles what the epoch functions of :mod:`scanstream.training.loop` share (:class:`TrainRun`;
benchmarks build runs too).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scanstream.atomic import write_bytes
from scanstream.devices import resolve_device, resolve_precision
from scanstream.errors import InputError
from scanstream.metrics import class_counts
from scanstream.network.checkpoint import checkpoint_hash
from scanstream.network.model import ModelConfig
from scanstream.picker.learned import (
    N_MODEL_INPUTS,
    FeatureModel,
    inputs_and_logits,
    prefilter_threshold,
)
from scanstream.store import CropStore, open_store
from scanstream.store.crops import verify_crops
from scanstream.training.augment import AugmentConfig
from scanstream.training.config import TrainConfig, check_options
from scanstream.training.dataload import default_workers, threads_beside_loader
from scanstream.training.sampling import BalancedSampler
from scanstream.training.sampling import pos_weight as class_pos_weight


def model_config(config: TrainConfig) -> ModelConfig:
    """The network a run trains (the fused one when it has a feature model)."""
    inputs = N_MODEL_INPUTS if config.feature_model else 0
    return ModelConfig(backbone=config.backbone, input_size=config.input_size, pretrained=config.pretrained, inputs=inputs)


def augment_config(config: TrainConfig) -> AugmentConfig:
    """The run's flips, RandAugment (N, M) and darkness jitter."""
    return AugmentConfig(n=config.n, m=config.m, darkness=config.darkness_jitter)


# ---------------------------------------------------------------------------------------------
# Validation of inputs (all before training starts)


def _labelled(store: CropStore, role: str) -> np.ndarray:
    labels = store.labels
    counts = class_counts(labels)
    pos, neg = counts["alpha"], counts["other"]
    if pos + neg == 0:
        raise InputError(f"{store.path}: the {role} store has no labels (every label is -1); label it first")
    if pos == 0 or neg == 0:
        raise InputError(
            f"{store.path}: the {role} store has one class only ({pos} alpha, {neg} other); "
            "training and validation need both"
        )
    return labels


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output directory {out_dir} is a file; give a directory for --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = write_bytes(out_dir / f".write-test-{os.getpid()}", b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"output directory {out_dir} is not writable: {exc.strerror or exc}") from None


def check_config(config: TrainConfig) -> tuple[CropStore, CropStore]:
    """Validate every option and both stores; return the opened (train, valid) stores.

    Raises
    ------
    InputError, ConfigError, StoreError
        On any bad value, naming it (also crops that do not match the store's digests);
        nothing has been written except the output directory.
    """
    model_config(config)
    check_options(config)
    resolve_device(config.device)
    train_store = open_store(config.train_store)
    valid_store = open_store(config.valid_store)
    _labelled(train_store, "train")
    _labelled(valid_store, "valid")
    if train_store.crops.shape[1:] != valid_store.crops.shape[1:]:
        raise InputError(
            f"crop shapes differ: {train_store.path} has {tuple(train_store.crops.shape[1:])}, "
            f"{valid_store.path} has {tuple(valid_store.crops.shape[1:])}"
        )
    # What classify refuses, train refuses: every crop against the store's digests (one read
    # of each store; a deleted shard file would otherwise train on zeros).
    for store in {train_store.path.resolve(): train_store, valid_store.path.resolve(): valid_store}.values():
        verify_crops(store)
    _check_out_dir(Path(config.out_dir))
    return train_store, valid_store


def data_hash(train_store: CropStore, valid_store: CropStore) -> str:
    """Identity of the training data: the two stores' content hashes, hashed (16 hex)."""
    h = hashlib.sha256(f"train={train_store.content_hash};valid={valid_store.content_hash}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Where the run runs


def resolve_amp(precision: str, device: torch.device) -> bool:
    """Whether to run bf16 autocast (see :class:`TrainConfig`; the rule is :mod:`scanstream.devices`')."""
    return resolve_precision(precision, device) == "bf16"


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@dataclass(frozen=True)
class Runtime:
    """Execution choices resolved from a :class:`TrainConfig` on this machine."""

    device: torch.device
    amp: bool
    augment_on: str
    workers: int
    threads: int


def resolve_runtime(config: TrainConfig) -> Runtime:
    """Device, bf16 autocast, where augmentation runs, loader workers and torch threads."""
    device = resolve_device(config.device)
    workers = config.workers or default_workers(device)
    return Runtime(
        device=device,
        amp=resolve_amp(config.precision, device),
        augment_on=config.augment_on if config.augment_on != "auto" else ("device" if device.type == "cuda" else "worker"),
        workers=workers,
        threads=config.torch_threads or _default_threads(device, workers, config),
    )


def _default_threads(device: torch.device, workers: int, config: TrainConfig) -> int:
    """Torch threads of the training process: the cores the loader workers leave free.

    Loader workers on this machine (a LocalCluster or local threads) run one thread each;
    giving torch every core as well oversubscribes them, and on a busy machine a torch thread
    team whose members get descheduled slows down many times (measured: docs/training.md).
    """
    cores = os.cpu_count() or 1
    if config.loader == "dask" and config.scheduler:
        return cores
    return threads_beside_loader(device, workers, cores)


def set_threads(rt: Runtime) -> None:
    """Torch threads on CPU; deterministic cuDNN on CUDA."""
    if rt.device.type == "cpu":
        torch.set_num_threads(rt.threads)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# ---------------------------------------------------------------------------------------------
# What the epoch functions share


@dataclass(frozen=True)
class RunFeatures:
    """The fused network's per-object inputs for both stores, and the cascade's prefilter.

    ``train_inputs`` float32 (n_train, k) tensor, ``valid_inputs`` float32 (n_valid, k) ndarray
    (:func:`scanstream.picker.learned.model_inputs`); ``valid_rejected`` bool (n_valid,): rows
    the prefilter rejects (scored by the feature model's logit, never by the network).
    """

    model: FeatureModel
    prefilter: float | None
    train_inputs: torch.Tensor
    valid_inputs: np.ndarray
    valid_logits: np.ndarray
    valid_rejected: np.ndarray
    train_kept: np.ndarray

    @classmethod
    def build(cls, model: FeatureModel, train_store: CropStore, valid_store: CropStore) -> RunFeatures:
        prefilter = prefilter_threshold(model)
        tin, t_logits = inputs_and_logits(train_store.table, model, source=str(train_store.path))
        vin, v_logits = inputs_and_logits(valid_store.table, model, source=str(valid_store.path))
        keep_t = np.ones(len(tin), bool) if prefilter is None else t_logits >= prefilter
        rejected_v = np.zeros(len(vin), bool) if prefilter is None else v_logits < prefilter
        return cls(model, prefilter, torch.from_numpy(tin), vin, v_logits, rejected_v, keep_t)


@dataclass
class TrainRun:
    """What the loop functions share (built by :func:`make_run`)."""

    config: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: bool
    augment_on: str
    executor: Any
    train_store: CropStore
    valid_store: CropStore
    train_labels: torch.Tensor
    valid_labels: np.ndarray
    sampler: BalancedSampler
    pos_weight: torch.Tensor | None
    workers: int
    features: RunFeatures | None = None


def training_labels(train_store: CropStore, features: RunFeatures | None) -> np.ndarray:
    """TRAIN's labels, with the rows a cascade's prefilter rejects unlabelled (-1: never drawn)."""
    labels = train_store.labels
    if features is not None and not features.train_kept.all():
        labels = np.where(features.train_kept, labels, -1).astype(labels.dtype)
        _check_classes(labels, f"{train_store.path} (objects the prefilter keeps)")
    return labels


def _check_classes(labels: np.ndarray, what: str) -> None:
    counts = class_counts(labels)
    pos, neg = counts["alpha"], counts["other"]
    if pos == 0 or neg == 0:
        raise InputError(f"{what}: one class only ({pos} alpha, {neg} other); training needs both")


def feature_record(config: TrainConfig, features: RunFeatures | None) -> dict[str, Any]:
    """What config.json records of a fused run's feature model and prefilter."""
    if features is None:
        return {}
    return {"feature_model_hash": checkpoint_hash(config.feature_model), "prefilter_threshold": features.prefilter,
            "train_kept": int(features.train_kept.sum()), "valid_rejected": int(features.valid_rejected.sum())}


def cascade_args(features: RunFeatures | None) -> dict[str, Any]:
    """save_checkpoint's feature model and prefilter arguments."""
    if features is None:
        return {}
    return {"feature_model": features.model, "prefilter_threshold": features.prefilter}


def make_run(
    config: TrainConfig, rt: Runtime, executor: Any, train_store: CropStore, valid_store: CropStore,
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, features: RunFeatures | None = None,
) -> TrainRun:
    """Bundle what :func:`scanstream.training.loop.train_one_epoch` and ``evaluate`` need (benchmarks build runs too)."""
    labels = training_labels(train_store, features)
    epoch_size = config.epoch_size or int((labels >= 0).sum())
    return TrainRun(
        config=config, model=model, optimizer=optimizer, device=rt.device, amp=rt.amp, augment_on=rt.augment_on,
        executor=executor, train_store=train_store, valid_store=valid_store,
        train_labels=torch.from_numpy(labels.astype(np.float32)), valid_labels=valid_store.labels,
        sampler=BalancedSampler(labels=labels, num_samples=epoch_size, seed=config.seed),
        pos_weight=torch.tensor(class_pos_weight(labels), device=rt.device) if config.pos_weight else None,
        workers=rt.workers, features=features,
    )
