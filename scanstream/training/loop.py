"""One training run of the paper's classifier (PHYSICS.md, "Training protocol").

Reads top to bottom: :class:`TrainConfig` and its validation (every bad input is refused
before any training), :class:`EarlyStopping` (the smoothed-validation-loss rule, pure),
:func:`train_one_epoch`, :func:`evaluate`, and :func:`train`, which wires them together with
Dask-fed loading (:mod:`scanstream.training.dataload`), writes the outputs and resumes interrupted runs.

Outputs in ``out_dir``: ``config.json`` (the resolved configuration, written before training),
``model.safetensors`` (the checkpoint at the minimum of the smoothed validation loss, replaced
atomically whenever a new minimum is reached, so a crash or Ctrl-C leaves the last best one
intact), ``history.csv`` and ``loss_curve.png`` (per epoch; like the paper's figure 2), and
``train_state.safetensors`` (model + optimizer + loop state after the last finished epoch:
rerunning the same command continues from there; the result is the same as an uninterrupted
run, because every random draw is a function of (seed, epoch)).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scanstream.devices import autocast_bf16, resolve_device
from scanstream.errors import ConfigError, InputError, TrainingError
from scanstream.picker.learned import (
    N_MODEL_INPUTS,
    FeatureModel,
    inputs_and_logits,
    load_feature_model,
    prefilter_threshold,
)
from scanstream.progress import as_progress
from scanstream.store import CropStore, open_store
from scanstream.training.augment import AugmentConfig, Augmenter
from scanstream.training.checkpoint import (
    checkpoint_hash,
    load_train_state,
    read_train_state,
    save_checkpoint,
    save_train_state,
)
from scanstream.training.dataload import (
    DEFAULT_BLOCK_CROPS,
    LOADERS,
    BlockStream,
    default_workers,
    open_executor,
    plan_sequential,
    plan_train_epoch,
    rebatch,
    threads_beside_loader,
)
from scanstream.training.model import ModelConfig, build_model, parameter_groups, preprocess
from scanstream.training.sampling import BalancedSampler, class_counts
from scanstream.training.sampling import pos_weight as class_pos_weight

logger = logging.getLogger(__name__)



CHECKPOINT_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
HISTORY_FILE = "history.csv"
CURVE_FILE = "loss_curve.png"
CONFIG_FILE = "config.json"
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "smoothed_val_loss", "val_ap", "images_per_s", "seconds", "best")
#: Fields that may change between a run and its resumption (max_epochs only under a constant rate:
#: the cosine schedule is laid out over max_epochs).
#: Options a rerun may change without changing the run (``keep`` only chooses which epoch is kept).
_RESUMABLE = {"max_epochs", "device", "loader", "scheduler", "workers", "ahead", "torch_threads", "out_dir", "keep"}
KEEP = ("best", "last")
LR_SCHEDULES = ("constant", "cosine")


def parse_lr_schedule(name: str) -> str:
    """``name`` if it is one of :data:`LR_SCHEDULES`, else a ConfigError naming it."""
    if name not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {name!r}")
    return name


def lr_factor(schedule: str, epoch: int, step: int, steps_per_epoch: int, max_epochs: int) -> float:
    """The multiplier of every group's base rate at ``step`` of ``epoch`` (pure).

    ``"constant"``: 1. ``"cosine"``: ``0.5 (1 + cos(pi t / T))`` with t the global step and
    T = ``max_epochs * steps_per_epoch``: 1 at the first step, 0.5 half-way, -> 0 at the end.
    """
    if parse_lr_schedule(schedule) == "constant":
        return 1.0
    total = max(1, max_epochs * steps_per_epoch)
    t = min(epoch * steps_per_epoch + step, total)
    return 0.5 * (1.0 + math.cos(math.pi * t / total))


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs (contract fields first, then tuning knobs).

    ``augment_on``: ``"worker"`` (the loader augments while the model trains: the choice on
    CPU) or ``"device"`` (the training device augments each batch: the choice on GPU);
    ``"auto"`` picks by device. ``amp``: ``"bf16"`` autocast, ``"off"``, or ``"auto"`` (bf16
    where the device runs it fast: CUDA with bf16, CPUs with AVX-512 BF16 / AMX).
    ``unfreeze``: the authors' staged unfreezing for pretrained backbones (backbone frozen
    except BatchNorm, last two stages unfrozen at ``unfreeze_epochs[0]``, the rest at
    ``unfreeze_epochs[1]``, each new group at a tenth of ``lr``).
    ``lr_schedule``: ``"constant"`` (the paper's Adam at ``lr`` throughout) or ``"cosine"``
    (every group's rate decays per step from its base to 0 at the end of ``max_epochs``:
    :func:`lr_factor`; for short runs from random weights, where a constant rate leaves the
    model noisy from epoch to epoch).
    ``feature_model``: a feature model file (``scanstream baseline --learned --save-model``);
    when given, the network is the fused one (:class:`scanstream.training.model.Classifier` with
    per-object inputs: the picker's features and the feature model's logit, read from each
    store's object table), the checkpoint carries the feature model, and when the feature
    model has a calibrated prefilter the checkpoint is a cascade: training draws only the
    objects the prefilter keeps, and validation scores the others by the feature model alone,
    as inference will.
    ``keep``: which epoch's model the checkpoint holds: ``"best"`` (the paper: the minimum of
    the smoothed validation loss, with early stopping) or ``"last"`` (the final epoch, no early
    stopping: for a fixed-length cosine schedule, whose rate reaches 0 at ``max_epochs``; with
    smoothing 0.9 and S_0 = V_0 the smoothed loss moves a tenth of the way per epoch, so in an
    8-epoch run it can stay above epoch 0's value while validation AP keeps rising). It may be
    changed on a rerun of a finished run: training is the same, only the kept epoch differs.
    ``recipe``: the named starting point (:data:`scanstream.training.recipes.RECIPES`) the values came from, recorded only.
    ``darkness_jitter``: half-width of the per-image darkness augmentation
    (:func:`scanstream.training.augment.darken`; 0, the paper: off); it covers development darkness
    varying from sheet to sheet, when TRAIN comes from fewer sheets than the model will see.
    """

    train_store: str
    valid_store: str
    out_dir: str
    backbone: str = "resnet50"
    input_size: int = 224
    pretrained: str = "none"
    n: int = 2
    m: int = 24
    darkness_jitter: float = 0.0
    seed: int = 0
    max_epochs: int = 100
    batch_size: int = 96
    lr: float = 3e-4
    lr_schedule: str = "constant"
    warmup_epochs: int = 5
    smoothing: float = 0.9
    stop_factor: float = 1.15
    device: str = "auto"
    loader: str = "dask"
    scheduler: str | None = None
    pos_weight: bool = False
    unfreeze: bool = False
    epoch_size: int | None = None
    unfreeze_epochs: tuple[int, int] = (50, 100)
    augment_on: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    workers: int | None = None
    ahead: int = 3
    block_crops: int = DEFAULT_BLOCK_CROPS
    torch_threads: int | None = None
    feature_model: str | None = None
    recipe: str = ""
    keep: str = "best"

    def model_config(self) -> ModelConfig:
        inputs = N_MODEL_INPUTS if self.feature_model else 0
        return ModelConfig(backbone=self.backbone, input_size=self.input_size, pretrained=self.pretrained, inputs=inputs)

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(n=self.n, m=self.m, darkness=self.darkness_jitter)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced.

    Attributes
    ----------
    checkpoint : Path
        ``out_dir/model.safetensors``, the best epoch's model.
    history : list of dict
        Per epoch: epoch, train_loss, val_loss, smoothed_val_loss, val_ap, images_per_s, seconds, best.
    best_epoch : int
    metrics : dict
        val_ap, val_loss, smoothed_val_loss (at the best epoch), best_epoch, epochs_run, stopped_early.
    """

    checkpoint: Path
    history: list[dict]
    best_epoch: int
    metrics: dict


# ---------------------------------------------------------------------------------------------
# Early stopping (pure)


@dataclass
class EarlyStopping:
    """The paper's rule on the smoothed validation loss.

    ``S_0 = V_0``, ``S_i = w S_{i-1} + (1 - w) V_i``; epoch i is the best so far when S_i is
    the smallest S yet; training stops at the first epoch ``i >= warmup`` with
    ``S_i > factor * min(S)``. The model kept is the one at the minimum.
    """

    smoothing: float = 0.9
    factor: float = 1.15
    warmup: int = 5
    smoothed: float | None = None
    best: float = math.inf
    best_epoch: int = -1
    epoch: int = -1

    def update(self, val_loss: float) -> tuple[float, bool, bool]:
        """Feed epoch ``self.epoch + 1``'s validation loss; return (S, is_best, stop)."""
        self.epoch += 1
        if not math.isfinite(val_loss):
            return (self.smoothed if self.smoothed is not None else math.inf), False, self.epoch >= self.warmup
        s = val_loss if self.smoothed is None else self.smoothing * self.smoothed + (1 - self.smoothing) * val_loss
        self.smoothed = s
        is_best = s < self.best
        if is_best:
            self.best, self.best_epoch = s, self.epoch
        stop = self.epoch >= self.warmup and s > self.factor * self.best
        return s, is_best, stop

    def state(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Validation of inputs (all before training starts)


def _labelled(store: CropStore, role: str) -> np.ndarray:
    labels = store.labels
    pos, neg = class_counts(labels)
    if pos + neg == 0:
        raise InputError(f"{store.path}: the {role} store has no labels (every label is -1); label it first")
    if pos == 0 or neg == 0:
        raise InputError(
            f"{store.path}: the {role} store has one class only ({pos} alpha, {neg} other); "
            "training and validation need both"
        )
    return labels


def _check_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"output directory {out_dir} is not writable: {exc.strerror or exc}") from None


def check_config(config: TrainConfig) -> tuple[CropStore, CropStore]:
    """Validate every option and both stores; return the opened (train, valid) stores.

    Raises
    ------
    InputError, ConfigError, StoreError
        On any bad value, naming it; nothing has been written except the output directory.
    """
    config.model_config()
    config.augment_config()
    for name in ("max_epochs", "batch_size", "ahead", "block_crops"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.epoch_size is not None and config.epoch_size < 1:
        raise ConfigError(f"epoch_size must be >= 1, got {config.epoch_size}")
    if not config.lr > 0:
        raise ConfigError(f"lr must be > 0, got {config.lr}")
    parse_lr_schedule(config.lr_schedule)
    if not 0 <= config.smoothing < 1:
        raise ConfigError(f"smoothing w must be in [0, 1), got {config.smoothing}")
    if not config.stop_factor > 1:
        raise ConfigError(f"stop_factor must be > 1, got {config.stop_factor}")
    if config.keep not in KEEP:
        raise ConfigError(f"keep must be one of {', '.join(KEEP)}, got {config.keep!r}")
    if config.warmup_epochs < 0:
        raise ConfigError(f"warmup_epochs must be >= 0, got {config.warmup_epochs}")
    if config.loader not in LOADERS:
        raise ConfigError(f"loader must be one of {', '.join(LOADERS)}, got {config.loader!r}")
    if config.scheduler and config.loader != "dask":
        raise ConfigError("a scheduler address needs loader 'dask'")
    if config.augment_on not in ("auto", "worker", "device"):
        raise ConfigError(f"augment_on must be auto, worker or device, got {config.augment_on!r}")
    if config.amp not in ("auto", "bf16", "off"):
        raise ConfigError(f"amp must be auto, bf16 or off, got {config.amp!r}")
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
    _check_out_dir(Path(config.out_dir))
    return train_store, valid_store


def data_hash(train_store: CropStore, valid_store: CropStore) -> str:
    """Identity of the training data: the two stores' content hashes, hashed (16 hex)."""
    h = hashlib.sha256(f"train={train_store.content_hash};valid={valid_store.content_hash}".encode())
    return h.hexdigest()[:16]


def resolve_amp(amp: str, device: torch.device) -> bool:
    """Whether to run bf16 autocast (see :class:`TrainConfig`; the rule is :mod:`scanstream.devices`')."""
    return autocast_bf16(amp, device)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


# ---------------------------------------------------------------------------------------------
# One epoch of training, one evaluation


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
        amp=resolve_amp(config.amp, device),
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


def _to_input(run: TrainRun, crops: np.ndarray, augmenter: Augmenter | None) -> torch.Tensor:
    x = torch.from_numpy(crops)
    if run.device.type == "cuda":
        x = x.pin_memory().to(run.device, non_blocking=True)
    if augmenter is not None:
        x = augmenter(x)
    x = preprocess(x, run.config.input_size)
    if run.config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _dask_worker_threads(run: TrainRun) -> int | None:
    return 1 if run.config.loader == "dask" else None


def train_stream(run: TrainRun, epoch: int) -> BlockStream:
    """The loading stream of one training epoch (not started)."""
    cfg = run.config
    samples = run.sampler.indices(epoch)
    tasks = plan_train_epoch(
        samples, n=run.train_store.n, chunk_crops=run.train_store.chunk_crops, block_crops=cfg.block_crops,
        seed=cfg.seed, epoch=epoch,
    )
    return BlockStream(
        run.executor, str(run.train_store.path), tasks, ahead=cfg.ahead, chunk_crops=run.train_store.chunk_crops,
        size=cfg.input_size, augment_config=cfg.augment_config() if run.augment_on == "worker" else None,
        torch_threads=_dask_worker_threads(run),
    )


def train_step(run: TrainRun, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
    """One Adam step on a prepared batch (``f``: the fused network's inputs); returns the mean loss."""
    with _autocast(run.device, run.amp):
        logits = run.model(x) if f is None else run.model(x, f)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=run.pos_weight)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss.detach()


def train_one_epoch(run: TrainRun, epoch: int, *, stream: BlockStream | None = None, progress: bool = False) -> tuple[float, float, int]:
    """Train over one epoch's oversampled draws; return (mean loss, seconds, images).

    ``stream``: this epoch's :func:`train_stream`, possibly started early (so that its first
    blocks load while the previous epoch validates).
    """
    cfg = run.config
    run.model.train()
    stream = stream if stream is not None else train_stream(run, epoch)
    on_worker = run.augment_on == "worker"
    n_batches = sum(len(t.indices) for t in stream.tasks) // cfg.batch_size
    augmenter = None if on_worker else Augmenter(cfg.augment_config(), seed=cfg.seed * 100_003 + epoch)
    bar = as_progress(progress)(n_batches, f"epoch {epoch}", "batch")
    total, count, t0 = torch.zeros((), device=run.device), 0, time.perf_counter()
    for step, (idx, crops) in enumerate(rebatch(iter(stream), cfg.batch_size, drop_last=True)):
        x = _to_input(run, crops, augmenter)
        y = run.train_labels[torch.from_numpy(idx)].to(run.device, non_blocking=True)
        f = None if run.features is None else run.features.train_inputs[torch.from_numpy(idx)].to(run.device)
        if cfg.lr_schedule != "constant":
            factor = lr_factor(cfg.lr_schedule, epoch, step, n_batches, cfg.max_epochs)
            for group in run.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
        loss = train_step(run, x, y) if f is None else train_step(run, x, y, f)
        total += loss * len(idx)  # accumulated on the device: no sync per step
        count += len(idx)
        bar.update(1)
        if step % 10 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(total) / count:.4f}")
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - t0
    bar.close()
    return (float(total) / count if count else math.nan), seconds, count


@torch.no_grad()
def evaluate(run: TrainRun) -> tuple[float, float, np.ndarray]:
    """Validation loss (mean BCE, no pos_weight), Average Precision and the logits (n,)."""
    from sklearn.metrics import average_precision_score

    cfg = run.config
    run.model.eval()
    store = run.valid_store
    tasks = plan_sequential(store.n, chunk_crops=store.chunk_crops, block_crops=cfg.block_crops)
    stream = BlockStream(
        run.executor, str(store.path), tasks, ahead=cfg.ahead, chunk_crops=store.chunk_crops, size=cfg.input_size,
        torch_threads=_dask_worker_threads(run),
    )
    logits = np.empty(store.n, dtype=np.float32)
    for idx, crops in rebatch(iter(stream), cfg.batch_size, drop_last=False):
        with _autocast(run.device, run.amp):
            if run.features is None:
                out = run.model(_to_input(run, crops, None))
            else:
                out = run.model(_to_input(run, crops, None), torch.from_numpy(run.features.valid_inputs[idx]).to(run.device))
        logits[idx] = out.float().cpu().numpy()
    if run.features is not None:  # a cascade: what the prefilter rejects keeps the feature model's logit
        rej = run.features.valid_rejected
        logits[rej] = run.features.valid_logits[rej]
    keep = run.valid_labels >= 0
    y = run.valid_labels[keep].astype(np.float32)
    scores = logits[keep]
    loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(scores), torch.from_numpy(y)))
    ap = float(average_precision_score(y, scores))
    return loss, ap, logits


# ---------------------------------------------------------------------------------------------
# Outputs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_history(history: list[dict], out_dir: Path) -> None:
    """history.csv (one row per epoch) and loss_curve.png (train, val, smoothed val loss)."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in HISTORY_COLUMNS})
    _write_atomic(out_dir / HISTORY_FILE, buf.getvalue())
    plot_loss_curve(history, out_dir / CURVE_FILE)


def plot_loss_curve(history: list[dict], path: Path) -> None:
    """Loss per epoch: training, validation and smoothed validation, best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(epochs, [h["train_loss"] for h in history], label="training loss", color="tab:blue")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss", color="tab:orange", alpha=0.6)
    ax.plot(epochs, [h["smoothed_val_loss"] for h in history], label="smoothed validation loss", color="tab:red")
    best = [h["epoch"] for h in history if h.get("best")]
    if best:
        ax.axvline(best[-1], color="grey", ls="--", lw=1, label=f"kept model (epoch {best[-1]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross entropy")
    ax.legend(frameon=False)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The run


def _build_optimizer(model: torch.nn.Module, cfg: TrainConfig, epoch: int) -> torch.optim.Optimizer:
    """Adam over the parameters trainable at ``epoch`` (staged unfreezing when asked)."""
    if not cfg.unfreeze:
        for p in model.parameters():
            p.requires_grad_(True)
        return torch.optim.Adam([{"params": list(model.parameters()), "base_lr": cfg.lr}], lr=cfg.lr)
    groups = parameter_groups(model)
    stages = [["head", "norm"], ["late"], ["early"]]
    starts = [0, *cfg.unfreeze_epochs]
    param_groups = []
    for stage, start in zip(stages, starts, strict=True):
        params = [p for name in stage for p in groups[name]]
        active = epoch >= start
        for p in params:
            p.requires_grad_(active)
        if active:
            rate = cfg.lr if start == 0 else cfg.lr / 10
            param_groups.append({"params": params, "lr": rate, "base_lr": rate})
    return torch.optim.Adam(param_groups, lr=cfg.lr)


def _resolved(config: TrainConfig, **extra: Any) -> dict[str, Any]:
    d = asdict(config)
    d["unfreeze_epochs"] = list(config.unfreeze_epochs)
    d.update(extra)
    return d


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that must match for a run to be resumed (data included)."""
    d = {**field_defaults(TrainConfig), **d}  # runs written before a field existed had its default
    out = {k: v for k, v in d.items() if k not in _RESUMABLE and k != "resolved"}
    if out["lr_schedule"] != "constant":
        out["max_epochs"] = d.get("max_epochs")
    out["data_hash"] = d.get("resolved", {}).get("data_hash")
    return out


def train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train one model; see the module docstring for the outputs.

    Parameters
    ----------
    config : TrainConfig
    progress : bool
        Show a progress bar per epoch (stderr).

    Raises
    ------
    InputError, ConfigError, StoreError
        Bad options or stores, before training starts.
    """
    train_store, valid_store = check_config(config)
    out = Path(config.out_dir)
    rt = resolve_runtime(config)
    device, amp, augment_on, workers, threads = rt.device, rt.amp, rt.augment_on, rt.workers, rt.threads
    _set_threads(rt)
    features = None
    if config.feature_model:
        features = RunFeatures.build(load_feature_model(config.feature_model), train_store, valid_store)
    labels = _training_labels(train_store, features)
    epoch_size = config.epoch_size or int((labels >= 0).sum())
    dhash = data_hash(train_store, valid_store)
    resolved = _resolved(
        config,
        resolved={"device": str(device), "amp": "bf16" if amp else "off", "augment_on": augment_on, "workers": workers,
                  "torch_threads": threads if device.type == "cpu" else None, "epoch_size": epoch_size,
                  "data_hash": dhash, "torch": torch.__version__, "train_counts": class_counts(labels),
                  "valid_counts": class_counts(valid_store.labels), **_feature_record(config, features)},
    )
    state_path = out / STATE_FILE
    saved = read_train_state(state_path) if state_path.exists() else None
    if saved is not None and _comparable(saved["state"]["config"]) != _comparable(resolved):
        raise InputError(
            f"{out} holds a training run with another configuration or data ({CONFIG_FILE}); "
            "use another --out directory (or remove it)"
        )
    _write_atomic(out / CONFIG_FILE, json.dumps(resolved, indent=2, sort_keys=True))

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model = build_model(config.model_config()).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start_epoch, history = 0, []
    stopper = EarlyStopping(config.smoothing, config.stop_factor, config.warmup_epochs)
    if saved is not None:
        start_epoch = int(saved["state"]["epoch"]) + 1
        optimizer = _build_optimizer(model, config, start_epoch - 1)
        st = load_train_state(state_path, model, optimizer)
        history = st["history"]
        stopper = EarlyStopping(**st["stopper"])
        if st.get("stopped") or start_epoch >= config.max_epochs:
            logger.info("%s: run already finished at epoch %d", out, start_epoch - 1)
            stopped = bool(st.get("stopped"))
            if config.keep == "last":  # the finished run's final weights are the loaded state
                _save_last(out, model, history, stopper, stopped, config, resolved, dhash, features)
            return _result(out, history, stopper, stopped=stopped, keep=config.keep)
        logger.info("%s: resuming after epoch %d", out, start_epoch - 1)
    else:
        optimizer = _build_optimizer(model, config, 0)
    stopped = False
    with open_executor(config.loader, scheduler=config.scheduler, workers=workers) as executor:
        run = make_run(config, rt, executor, train_store, valid_store, model, optimizer, features=features)
        next_stream = None
        for epoch in range(start_epoch, config.max_epochs):
            if config.unfreeze and epoch in config.unfreeze_epochs:
                run.optimizer = _build_optimizer_keeping(run.optimizer, model, config, epoch)
            stream = next_stream if next_stream is not None else train_stream(run, epoch)
            train_loss, seconds, images = train_one_epoch(run, epoch, stream=stream, progress=progress)
            next_stream = train_stream(run, epoch + 1).start() if epoch + 1 < config.max_epochs else None
            val_loss, val_ap, _ = evaluate(run)
            smoothed, is_best, stop = stopper.update(val_loss)
            row = {
                "epoch": epoch, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
                "smoothed_val_loss": round(smoothed, 6), "val_ap": round(val_ap, 6),
                "images_per_s": round(images / seconds, 2) if seconds > 0 else None,
                "seconds": round(seconds, 2), "best": is_best,
            }
            history.append(row)
            logger.info("epoch %d: train %.4f val %.4f smoothed %.4f AP %.4f %.1f img/s%s", epoch, train_loss, val_loss,
                        smoothed, val_ap, row["images_per_s"] or 0, " (best)" if is_best else "")
            if is_best or config.keep == "last":
                metrics = _metrics(history, stopper, epochs_run=epoch + 1, stopped=False, keep=config.keep)
                save_checkpoint(out / CHECKPOINT_FILE, model, model_config=config.model_config(), train_config=resolved,
                                data_hash=dhash, metrics=metrics, **_cascade(features))
            stopped = stop and config.keep == "best"
            write_history(history, out)
            save_train_state(state_path, model, run.optimizer, {
                "epoch": epoch, "history": history, "stopper": stopper.state(), "stopped": stopped, "config": resolved,
            })
            if stopped:
                if next_stream is not None:
                    next_stream.cancel()
                logger.info("early stop at epoch %d: smoothed loss %.4f > %.2f x min %.4f (epoch %d)", epoch, smoothed,
                            config.stop_factor, stopper.best, stopper.best_epoch)
                break
    if stopper.best_epoch < 0:
        raise TrainingError(f"{out}: the validation loss was never finite (diverged?); no checkpoint was written")
    _finalise_checkpoint(out, history, stopper, stopped, config, resolved, dhash)
    return _result(out, history, stopper, stopped=stopped, keep=config.keep)


def _set_threads(rt: Runtime) -> None:
    if rt.device.type == "cpu":
        torch.set_num_threads(rt.threads)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _training_labels(train_store: CropStore, features: RunFeatures | None) -> np.ndarray:
    """TRAIN's labels, with the rows a cascade's prefilter rejects unlabelled (-1: never drawn)."""
    labels = train_store.labels
    if features is not None and not features.train_kept.all():
        labels = np.where(features.train_kept, labels, -1).astype(labels.dtype)
        _check_classes(labels, f"{train_store.path} (objects the prefilter keeps)")
    return labels


def _check_classes(labels: np.ndarray, what: str) -> None:
    pos, neg = class_counts(labels)
    if pos == 0 or neg == 0:
        raise InputError(f"{what}: one class only ({pos} alpha, {neg} other); training needs both")


def _feature_record(config: TrainConfig, features: RunFeatures | None) -> dict[str, Any]:
    if features is None:
        return {}
    return {"feature_model_hash": checkpoint_hash(config.feature_model), "prefilter_threshold": features.prefilter,
            "train_kept": int(features.train_kept.sum()), "valid_rejected": int(features.valid_rejected.sum())}


def _cascade(features: RunFeatures | None) -> dict[str, Any]:
    """save_checkpoint's feature model and prefilter arguments."""
    if features is None:
        return {}
    return {"feature_model": features.model, "prefilter_threshold": features.prefilter}


def make_run(
    config: TrainConfig, rt: Runtime, executor: Any, train_store: CropStore, valid_store: CropStore,
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, features: RunFeatures | None = None,
) -> TrainRun:
    """Bundle what :func:`train_one_epoch` and :func:`evaluate` need (benchmarks build runs too)."""
    labels = _training_labels(train_store, features)
    epoch_size = config.epoch_size or int((labels >= 0).sum())
    return TrainRun(
        config=config, model=model, optimizer=optimizer, device=rt.device, amp=rt.amp, augment_on=rt.augment_on,
        executor=executor, train_store=train_store, valid_store=valid_store,
        train_labels=torch.from_numpy(labels.astype(np.float32)), valid_labels=valid_store.labels,
        sampler=BalancedSampler(labels=labels, num_samples=epoch_size, seed=config.seed),
        pos_weight=torch.tensor(class_pos_weight(labels), device=rt.device) if config.pos_weight else None,
        workers=rt.workers, features=features,
    )


def _build_optimizer_keeping(old: torch.optim.Optimizer, model, config: TrainConfig, epoch: int) -> torch.optim.Optimizer:
    """Add the newly unfrozen parameter group, keeping the Adam state of the others."""
    new = _build_optimizer(model, config, epoch)
    state = old.state_dict()
    n_old = len(state["param_groups"])
    fresh = new.state_dict()
    fresh["state"] = state["state"]
    fresh["param_groups"][:n_old] = state["param_groups"]
    new.load_state_dict(fresh)
    return new


def _metrics(history: list[dict], stopper: EarlyStopping, *, epochs_run: int, stopped: bool, keep: str = "best") -> dict[str, Any]:
    rows = [h for h in history if h["epoch"] == stopper.best_epoch]
    best = rows[0] if rows and keep == "best" else history[-1]
    return {
        "val_ap": best["val_ap"], "val_loss": best["val_loss"], "smoothed_val_loss": best["smoothed_val_loss"],
        "train_loss": best["train_loss"], "best_epoch": best["epoch"], "epochs_run": epochs_run,
        "stopped_early": stopped,
    }


def _finalise_checkpoint(out: Path, history, stopper, stopped, config, resolved, dhash) -> None:
    """Rewrite the best checkpoint's metrics with the final epochs_run / stopped_early."""
    from scanstream.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / CHECKPOINT_FILE)
    metrics = _metrics(history, stopper, epochs_run=len(history), stopped=stopped, keep=config.keep)
    if ckpt.metrics != metrics:
        save_checkpoint(out / CHECKPOINT_FILE, ckpt.model, model_config=config.model_config(), train_config=resolved,
                        data_hash=dhash, metrics=metrics, feature_model=ckpt.feature_model,
                        prefilter_threshold=ckpt.prefilter_threshold)


def _save_last(out: Path, model, history, stopper, stopped, config, resolved, dhash, features) -> None:
    """A finished run rerun with ``keep="last"``: the checkpoint becomes the final epoch's model."""
    from scanstream.training.checkpoint import load_checkpoint

    metrics = _metrics(history, stopper, epochs_run=len(history), stopped=stopped, keep="last")
    if load_checkpoint(out / CHECKPOINT_FILE).metrics != metrics:
        save_checkpoint(out / CHECKPOINT_FILE, model, model_config=config.model_config(), train_config=resolved,
                        data_hash=dhash, metrics=metrics, **_cascade(features))


def _result(out: Path, history: list[dict], stopper: EarlyStopping, *, stopped: bool, keep: str = "best") -> TrainResult:
    metrics = _metrics(history, stopper, epochs_run=len(history), stopped=stopped, keep=keep)
    return TrainResult(checkpoint=out / CHECKPOINT_FILE, history=list(history), best_epoch=metrics["best_epoch"],
                       metrics=metrics)


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of dataclass ``cls`` that has one (tuples as lists, as in JSON)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a (TOML / JSON) dict; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown training options {sorted(unknown)}")
    d = dict(d)
    if "unfreeze_epochs" in d:
        d["unfreeze_epochs"] = tuple(d["unfreeze_epochs"])
    return TrainConfig(**d)
