"""One training run of the paper's classifier (docs/physics.md, "Training protocol").

Reads top to bottom: :class:`TrainResult`, :class:`EarlyStopping` (the smoothed-validation-loss
rule, pure), :func:`train_one_epoch`, :func:`evaluate`, and :func:`train`, which wires them
together with Dask-fed loading (:mod:`scanstream.training.dataload`), writes the outputs and
resumes interrupted runs. The options are :class:`scanstream.training.config.TrainConfig`; what a
run is made of before its first step (checked inputs, :class:`~scanstream.training.run.Runtime`,
:class:`~scanstream.training.run.TrainRun`) is :mod:`scanstream.training.run`.

Outputs in ``out_dir`` (:mod:`scanstream.training.outputs`): ``config.json`` (the resolved
configuration, written before training), ``model.safetensors`` (the checkpoint at the minimum of
the smoothed validation loss, replaced atomically whenever a new minimum is reached, so a crash
or Ctrl-C leaves the last best one intact), ``history.csv`` and ``loss_curve.png`` (per epoch;
like the paper's figure 2), and ``train_state.safetensors`` (model + optimizer + loop state after
the last finished epoch: rerunning the same command continues from there; the result is the same
as an uninterrupted run, because every random draw is a function of (seed, epoch)).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scanstream.config import field_defaults
from scanstream.errors import InputError, TrainingError
from scanstream.metrics import class_counts
from scanstream.network.checkpoint import (
    load_checkpoint,
    load_train_state,
    read_train_state,
    save_checkpoint,
    save_train_state,
)
from scanstream.network.model import build_model, parameter_groups, preprocess
from scanstream.picker.learned import load_feature_model
from scanstream.progress import as_progress
from scanstream.store import CropStore
from scanstream.training.augment import Augmenter
from scanstream.training.config import TrainConfig, lr_factor, without_amp
from scanstream.training.dataload import BlockStream, open_executor, plan_sequential, plan_train_epoch, rebatch
from scanstream.training.outputs import CHECKPOINT_FILE, CONFIG_FILE, STATE_FILE, write_config, write_history
from scanstream.training.run import (
    RunFeatures,
    Runtime,
    TrainRun,
    augment_config,
    autocast,
    cascade_args,
    check_config,
    data_hash,
    feature_record,
    make_run,
    model_config,
    resolve_runtime,
    set_threads,
    training_labels,
)

logger = logging.getLogger(__name__)

#: Options a rerun may change without changing the run (``keep`` only chooses which epoch is kept;
#: max_epochs only under a constant rate: the cosine schedule is laid out over max_epochs).
_RESUMABLE = {"max_epochs", "device", "loader", "scheduler", "workers", "ahead", "torch_threads", "out_dir", "keep"}


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
# One epoch of training, one evaluation


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
        size=cfg.input_size, augment_config=augment_config(cfg) if run.augment_on == "worker" else None,
        torch_threads=_dask_worker_threads(run),
    )


def train_step(run: TrainRun, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
    """One Adam step on a prepared batch (``f``: the fused network's inputs); returns the mean loss."""
    with autocast(run.device, run.amp):
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
    augmenter = None if on_worker else Augmenter(augment_config(cfg), seed=cfg.seed * 100_003 + epoch)
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
        with autocast(run.device, run.amp):
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


@dataclass(frozen=True)
class _RunFiles:
    """Where a run writes and what every checkpoint of it records (the resolved config, the data hash)."""

    config: TrainConfig
    out: Path
    resolved: dict[str, Any]
    dhash: str
    features: RunFeatures | None


def _resolved(config: TrainConfig, rt: Runtime, train_store: CropStore, valid_store: CropStore,
              features: RunFeatures | None, dhash: str) -> dict[str, Any]:
    """config.json: every option, plus what this machine resolved and the data's identity."""
    labels = training_labels(train_store, features)
    d = asdict(config)
    d["unfreeze_epochs"] = list(config.unfreeze_epochs)
    d["resolved"] = {
        "device": str(rt.device), "precision": "bf16" if rt.amp else "fp32", "augment_on": rt.augment_on, "workers": rt.workers,
        "torch_threads": rt.threads if rt.device.type == "cpu" else None,
        "epoch_size": config.epoch_size or int((labels >= 0).sum()), "data_hash": dhash, "torch": torch.__version__,
        "train_counts": class_counts(labels), "valid_counts": class_counts(valid_store.labels),
        **feature_record(config, features),
    }
    return d


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that must match for a run to be resumed (data included)."""
    # runs written before a field existed had its default; one saved with amp reads it as precision
    d = {**field_defaults(TrainConfig), **without_amp(d)}
    out = {k: v for k, v in d.items() if k not in _RESUMABLE and k != "resolved"}
    if out["lr_schedule"] != "constant":
        out["max_epochs"] = d.get("max_epochs")
    out["data_hash"] = d.get("resolved", {}).get("data_hash")
    return out


def _saved_state(files: _RunFiles) -> dict[str, Any] | None:
    """The training state of an interrupted or finished run in ``out_dir``, if it is this run."""
    state_path = files.out / STATE_FILE
    saved = read_train_state(state_path) if state_path.exists() else None
    if saved is not None and _comparable(saved["state"]["config"]) != _comparable(files.resolved):
        raise InputError(
            f"{files.out} holds a training run with another configuration or data ({CONFIG_FILE}); "
            "use another --out directory (or remove it)"
        )
    return saved


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
    rt = resolve_runtime(config)
    set_threads(rt)
    features = None
    if config.feature_model:
        features = RunFeatures.build(load_feature_model(config.feature_model), train_store, valid_store)
    dhash = data_hash(train_store, valid_store)
    files = _RunFiles(config, Path(config.out_dir), _resolved(config, rt, train_store, valid_store, features, dhash),
                      dhash, features)
    saved = _saved_state(files)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model = build_model(model_config(config)).to(rt.device)
    write_config(files.out, files.resolved)  # after the weights load: a refused run writes nothing
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start_epoch, history = 0, []
    stopper = EarlyStopping(config.smoothing, config.stop_factor, config.warmup_epochs)
    if saved is not None:
        start_epoch = int(saved["state"]["epoch"]) + 1
        optimizer = _build_optimizer(model, config, start_epoch - 1)
        st = load_train_state(files.out / STATE_FILE, model, optimizer)
        history = st["history"]
        stopper = EarlyStopping(**st["stopper"])
        if st.get("stopped") or start_epoch >= config.max_epochs:
            logger.info("%s: run already finished at epoch %d", files.out, start_epoch - 1)
            return _finished(files, model, history, stopper, stopped=bool(st.get("stopped")))
        logger.info("%s: resuming after epoch %d", files.out, start_epoch - 1)
    else:
        optimizer = _build_optimizer(model, config, 0)
    with open_executor(config.loader, scheduler=config.scheduler, workers=rt.workers) as executor:
        run = make_run(config, rt, executor, train_store, valid_store, model, optimizer, features=features)
        stopped = _run_epochs(files, run, history, stopper, start_epoch, progress=progress)
    if stopper.best_epoch < 0:
        raise TrainingError(f"{files.out}: the validation loss was never finite (diverged?); no checkpoint was written")
    _finalise_checkpoint(files, history, stopper, stopped)
    return _result(files.out, history, stopper, stopped=stopped, keep=config.keep)


def _run_epochs(files: _RunFiles, run: TrainRun, history: list[dict], stopper: EarlyStopping, start_epoch: int, *,
                progress: bool) -> bool:
    """Epochs ``start_epoch`` .. max_epochs - 1, the outputs written after each; whether it stopped early.

    The next epoch's loading starts while this one validates.
    """
    config = run.config
    next_stream = None
    for epoch in range(start_epoch, config.max_epochs):
        if config.unfreeze and epoch in config.unfreeze_epochs:
            run.optimizer = _build_optimizer_keeping(run.optimizer, run.model, config, epoch)
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
        stopped = stop and config.keep == "best"
        _save_epoch(files, run, history, stopper, is_best=is_best, stopped=stopped)
        if stopped:
            if next_stream is not None:
                next_stream.cancel()
            logger.info("early stop at epoch %d: smoothed loss %.4f > %.2f x min %.4f (epoch %d)", epoch, smoothed,
                        config.stop_factor, stopper.best, stopper.best_epoch)
            return True
    return False


def _save_epoch(files: _RunFiles, run: TrainRun, history: list[dict], stopper: EarlyStopping, *, is_best: bool,
                stopped: bool) -> None:
    """After an epoch: the checkpoint (a new best, or every epoch with keep="last"), history, training state."""
    config, epoch = files.config, history[-1]["epoch"]
    if is_best or config.keep == "last":
        metrics = _metrics(history, stopper, epochs_run=epoch + 1, stopped=False, keep=config.keep)
        save_checkpoint(files.out / CHECKPOINT_FILE, run.model, model_config=model_config(config),
                        train_config=files.resolved, data_hash=files.dhash, metrics=metrics, **cascade_args(files.features))
    write_history(history, files.out, keep=config.keep)
    save_train_state(files.out / STATE_FILE, run.model, run.optimizer, {
        "epoch": epoch, "history": history, "stopper": stopper.state(), "stopped": stopped, "config": files.resolved,
    })


def _finished(files: _RunFiles, model: torch.nn.Module, history: list[dict], stopper: EarlyStopping, *,
              stopped: bool) -> TrainResult:
    """A finished run rerun: nothing trains; with ``keep="last"`` the checkpoint becomes the final epoch's model
    (the loaded state's weights)."""
    keep = files.config.keep
    if keep == "last":
        metrics = _metrics(history, stopper, epochs_run=len(history), stopped=stopped, keep="last")
        if load_checkpoint(files.out / CHECKPOINT_FILE).metrics != metrics:
            save_checkpoint(files.out / CHECKPOINT_FILE, model, model_config=model_config(files.config),
                            train_config=files.resolved, data_hash=files.dhash, metrics=metrics,
                            **cascade_args(files.features))
    return _result(files.out, history, stopper, stopped=stopped, keep=keep)


def _finalise_checkpoint(files: _RunFiles, history: list[dict], stopper: EarlyStopping, stopped: bool) -> None:
    """Rewrite the best checkpoint's metrics with the final epochs_run / stopped_early."""
    ckpt = load_checkpoint(files.out / CHECKPOINT_FILE)
    metrics = _metrics(history, stopper, epochs_run=len(history), stopped=stopped, keep=files.config.keep)
    if ckpt.metrics != metrics:
        save_checkpoint(files.out / CHECKPOINT_FILE, ckpt.model, model_config=model_config(files.config),
                        train_config=files.resolved, data_hash=files.dhash, metrics=metrics,
                        feature_model=ckpt.feature_model, prefilter_threshold=ckpt.prefilter_threshold)


def _metrics(history: list[dict], stopper: EarlyStopping, *, epochs_run: int, stopped: bool, keep: str = "best") -> dict[str, Any]:
    rows = [h for h in history if h["epoch"] == stopper.best_epoch]
    best = rows[0] if rows and keep == "best" else history[-1]
    return {
        "val_ap": best["val_ap"], "val_loss": best["val_loss"], "smoothed_val_loss": best["smoothed_val_loss"],
        "train_loss": best["train_loss"], "best_epoch": best["epoch"], "epochs_run": epochs_run,
        "stopped_early": stopped,
    }


def _result(out: Path, history: list[dict], stopper: EarlyStopping, *, stopped: bool, keep: str = "best") -> TrainResult:
    metrics = _metrics(history, stopper, epochs_run=len(history), stopped=stopped, keep=keep)
    return TrainResult(checkpoint=out / CHECKPOINT_FILE, history=list(history), best_epoch=metrics["best_epoch"],
                       metrics=metrics)
