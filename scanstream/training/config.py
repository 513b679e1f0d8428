"""The options of a training run and of a grid search: :class:`TrainConfig` and :class:`SearchConfig`.

Plain frozen dataclasses with no torch behind them (the CLI builds its flags from them at
start-up). Every field carries its help text in its metadata, and ``"verbs"``: the CLI verbs
(``train``, ``search``) that expose it as a flag (:func:`verb_fields`); the others are set in
TOML (``[train]`` table) or Python. A search nests the :class:`TrainConfig` every trial starts
from (:attr:`SearchConfig.base`); each trial is ``dataclasses.replace(base, n=..., m=...,
seed=..., out_dir=...)``. The option checks that need no data (:func:`parse_lr_schedule`, the
RandAugment ranges) and the learning-rate schedule (:func:`lr_factor`) live here too.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scanstream.config import from_dict
from scanstream.errors import ConfigError, InputError

LR_SCHEDULES = ("constant", "cosine")
KEEP = ("best", "last")
LOADERS = ("dask", "local")
AUGMENT_ON = ("auto", "worker", "device")
PRECISIONS = ("auto", "fp32", "bf16")
#: Crops per loading task (a block of whole store chunks; :mod:`scanstream.training.dataload`).
DEFAULT_BLOCK_CROPS = 1024
MAX_N = 8
MAX_M = 30
#: Largest darkness jitter (a factor of 1 - 0.9 = 0.1 nearly erases the tracks).
MAX_DARKNESS = 0.9
#: The verbs that expose a field as a flag (field metadata ``"verbs"``).
TRAIN = ("train",)
BOTH = ("train", "search")


def parse_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_N:
        raise InputError(f"RandAugment N (operations per image) must be an integer in 0..{MAX_N}, got {n!r}")
    return n


def parse_m(m: float) -> float:
    if isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m <= MAX_M:
        raise InputError(f"RandAugment M (magnitude) must be in 0..{MAX_M}, got {m!r}")
    return float(m)


def parse_darkness(j: float) -> float:
    if isinstance(j, bool) or not isinstance(j, int | float) or not 0 <= j <= MAX_DARKNESS:
        raise InputError(f"darkness jitter must be in 0..{MAX_DARKNESS}, got {j!r}")
    return float(j)


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
    ``"auto"`` picks by device. ``precision``: ``"bf16"`` autocast, ``"fp32"``, or ``"auto"``
    (bf16 where the device runs it fast: CUDA with bf16, CPUs with AVX-512 BF16 / AMX).
    ``unfreeze``: the authors' staged unfreezing for pretrained backbones (backbone frozen
    except BatchNorm, last two stages unfrozen at ``unfreeze_epochs[0]``, the rest at
    ``unfreeze_epochs[1]``, each new group at a tenth of ``lr``).
    ``lr_schedule``: ``"constant"`` (the paper's Adam at ``lr`` throughout) or ``"cosine"``
    (every group's rate decays per step from its base to 0 at the end of ``max_epochs``:
    :func:`lr_factor`; for short runs from random weights, where a constant rate leaves the
    model noisy from epoch to epoch).
    ``feature_model``: a feature model file (``scanstream baseline --learned --save-model``);
    when given, the network is the fused one (:class:`scanstream.network.model.Classifier` with
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

    train_store: str = field(metadata={"help": "labelled training crop store"})
    valid_store: str = field(metadata={"help": "labelled validation crop store"})
    out_dir: str = field(metadata={"help": "output directory of the run"})
    backbone: str = field(default="resnet50", metadata={
        "help": "resnet50 (paper), resnet18 or mobilenet_v3_small (cpu recipe); from a scanstream --pretrained "
        "checkpoint: its own", "verbs": BOTH})
    input_size: int = field(default=224, metadata={
        "help": "network input side: 224 native (paper), 112 (cpu recipe); from a scanstream --pretrained "
        "checkpoint: its own", "metavar": "PX", "verbs": BOTH})
    pretrained: str = field(default="none", metadata={
        "help": "initial weights: none (default), imagenet (torchvision's local cache; never downloaded) or a "
        "weights file", "metavar": "PATH|imagenet|none", "verbs": BOTH})
    n: int = field(default=2, metadata={
        "help": "RandAugment operations per image, 0..8 (paper 2; cpu and finetune recipes 0)", "verbs": TRAIN})
    m: float = field(default=24, metadata={"help": "RandAugment magnitude, 0..30 (paper 24)", "verbs": TRAIN})
    darkness_jitter: float = field(default=0.0, metadata={
        "help": "scale each crop's optical density about its background by a factor drawn in [1-J, 1+J] "
        "(sheet-to-sheet development; paper 0 = off, cpu and finetune recipes 0.3)", "metavar": "J", "verbs": BOTH})
    seed: int = field(default=0, metadata={
        "help": "random seed (default 0); same seed, same device: same result", "verbs": TRAIN})
    max_epochs: int = field(default=100, metadata={
        "help": "epoch limit (paper 100; cpu and finetune recipes 12)", "verbs": BOTH})
    batch_size: int = field(default=96, metadata={
        "help": "mini-batch size (paper 96; cpu and finetune recipes 32)", "verbs": BOTH})
    lr: float = field(default=3e-4, metadata={
        "help": "Adam learning rate (paper 3e-4, cpu 2e-3, finetune 5e-4)", "verbs": BOTH})
    lr_schedule: str = field(default="constant", metadata={
        "help": "constant (paper) or cosine (cpu and finetune recipes): decay per step to 0 at --max-epochs",
        "choices": LR_SCHEDULES, "verbs": BOTH})
    warmup_epochs: int = field(default=5, metadata={
        "help": "epochs before early stopping may stop (paper 5, cpu and finetune recipes 2)", "verbs": BOTH})
    smoothing: float = field(default=0.9, metadata={
        "help": "w of the smoothed validation loss S_i = w S_(i-1) + (1 - w) V_i, in [0, 1) (paper 0.9)"})
    stop_factor: float = field(default=1.15, metadata={
        "help": "early stop when the smoothed validation loss exceeds this times its minimum, > 1 (paper 1.15)"})
    device: str = field(default="auto", metadata={"help": "auto (default), cpu or cuda[:N]", "verbs": BOTH})
    loader: str = field(default="dask", metadata={
        "help": "dask (default) or local threads (no Dask)", "choices": LOADERS, "verbs": TRAIN})
    scheduler: str | None = field(default=None, metadata={
        "help": "use an existing Dask scheduler instead of a LocalCluster", "metavar": "ADDRESS", "verbs": TRAIN})
    pos_weight: bool = field(default=False, metadata={"help": "BCE pos_weight = negatives/positives", "verbs": BOTH})
    unfreeze: bool = field(default=False, metadata={
        "help": "the authors' staged unfreezing (for --pretrained): backbone frozen except BatchNorm, last two "
        "stages trained from epoch 50, the rest from 100, at lr/10", "verbs": BOTH})
    epoch_size: int | None = field(default=None, metadata={
        "help": "samples per epoch (default: labelled crops in TRAIN)", "metavar": "K", "verbs": BOTH})
    unfreeze_epochs: tuple[int, int] = field(default=(50, 100), metadata={
        "help": "epochs at which --unfreeze unfreezes the last two backbone stages, then the rest"})
    augment_on: str = field(default="auto", metadata={
        "help": "where augmentation runs (auto: device on GPU, loader workers on CPU)", "choices": AUGMENT_ON,
        "verbs": TRAIN})
    precision: str = field(default="auto", metadata={
        "help": "fp32, or bf16 autocast (auto: bf16 where the device is fast in it); classify's words",
        "choices": PRECISIONS, "verbs": TRAIN})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format for the network"})
    workers: int | None = field(default=None, metadata={
        "help": "loader workers (default: a few for a GPU, one per 4 cores on CPU)", "verbs": TRAIN})
    ahead: int = field(default=3, metadata={"help": "loading tasks each loader keeps in flight"})
    block_crops: int = field(default=DEFAULT_BLOCK_CROPS, metadata={
        "help": "crops per loading task (whole store chunks)"})
    torch_threads: int | None = field(default=None, metadata={
        "help": "torch threads of the training process (default: the cores the loader workers leave free)"})
    feature_model: str | None = field(default=None, metadata={
        "help": "train the fused image + feature network with this feature model (`scanstream baseline --learned "
        "TRAIN --save-model FILE`); with a calibrated prefilter the model is a cascade", "metavar": "FILE",
        "verbs": TRAIN})
    recipe: str = field(default="", metadata={"help": "the recipe the values came from (recorded only)"})
    keep: str = field(default="best", metadata={
        "help": "the epoch the checkpoint holds: best (paper: minimum of the smoothed validation loss, early "
        "stopping) or last (fixed-length cosine runs; the cpu and finetune recipes)", "choices": KEEP,
        "verbs": TRAIN})


def verb_fields(cls: type, verb: str) -> tuple[str, ...]:
    """The fields of dataclass ``cls`` that the CLI verb ``verb`` exposes as flags, in field order."""
    return tuple(f.name for f in dataclasses.fields(cls) if verb in f.metadata.get("verbs", ()))


def config_from_dict(d: Mapping[str, Any], *, where: str = "training options") -> TrainConfig:
    """A TrainConfig from a (TOML / JSON) dict; unknown keys are an error naming ``where``.

    The key ``amp`` of earlier releases (auto / bf16 / off) is still read as ``precision``
    (off is fp32), with a deprecation warning.
    """
    if "amp" in d:
        warnings.warn(f"{where}: 'amp' is deprecated; use precision = \"auto\" | \"fp32\" | \"bf16\" "
                      "(amp is read until scanstream 0.3)", DeprecationWarning, stacklevel=2)
    return from_dict(TrainConfig, without_amp(d), where=where)


def precision_of_amp(amp: Any) -> Any:
    """Training's ``amp`` of earlier releases in ``precision``'s words: off is fp32; auto and bf16 stay."""
    return "fp32" if amp == "off" else amp


def without_amp(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` with an ``amp`` key of earlier releases read as ``precision`` (a ``precision`` given wins)."""
    out = {k: v for k, v in d.items() if k != "amp"}
    if "amp" in d:
        out.setdefault("precision", precision_of_amp(d["amp"]))
    return out


def check_options(config: TrainConfig) -> None:
    """Refuse option values no run can use (the checks that need neither data nor a device)."""
    parse_n(config.n)
    parse_m(config.m)
    parse_darkness(config.darkness_jitter)
    for name in ("max_epochs", "batch_size", "ahead", "block_crops"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("epoch_size", "workers", "torch_threads"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {config.seed}")
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
    if config.augment_on not in AUGMENT_ON:
        raise ConfigError(f"augment_on must be auto, worker or device, got {config.augment_on!r}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision must be auto, fp32 or bf16, got {config.precision!r}")


# ---------------------------------------------------------------------------------------------
# The grid search

PAPER_NS = (2, 4, 6, 8)
PAPER_MS = (6, 12, 18, 24, 30)
PAPER_SEEDS = 4
#: A grid a CPU finishes in minutes with a light backbone (2 x 2 settings, 2 seeds).
CPU_NS = (2, 6)
CPU_MS = (12, 24)
CPU_SEEDS = 2
MAX_MAGNITUDE = MAX_M
SEARCH = ("search",)


def default_grid(gpu: bool) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(Ns, Ms, seeds): the paper's grid with GPUs, a small one on CPU."""
    return (PAPER_NS, PAPER_MS, PAPER_SEEDS) if gpu else (CPU_NS, CPU_MS, CPU_SEEDS)


def parse_int_list(text: str | Iterable[int], what: str) -> tuple[int, ...]:
    """``"2,4,6"`` (or a sequence of ints) -> (2, 4, 6); rejects empty lists and duplicates."""
    if isinstance(text, str):
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    else:
        values = tuple(int(v) for v in text)
    if not values:
        raise ConfigError(f"{what} is empty")
    if len(set(values)) != len(values):
        raise ConfigError(f"{what} has duplicates: {values}")
    return values


@dataclass(frozen=True)
class SearchConfig:
    """A grid search: the trials' shared :class:`TrainConfig` and the grid.

    Every trial is ``dataclasses.replace(base, n=N, m=M, seed=s, out_dir=...)`` run with the
    local loader (its data loading stays inside its Dask task). ``base.train_store`` and
    ``base.valid_store`` are the labelled stores (VALID AP picks the setting); ``base.device``
    is each trial's device ("auto": a GPU when the worker has one).
    """

    base: TrainConfig = field(metadata={"help": "the training options every trial shares"})
    out_dir: str = field(metadata={"help": "search directory (trials, results, report)"})
    ns: tuple[int, ...] = field(default=PAPER_NS, metadata={
        "help": "RandAugment operation counts, e.g. 2,4,6,8", "flag": "--n", "metavar": "LIST", "verbs": SEARCH})
    ms: tuple[int, ...] = field(default=PAPER_MS, metadata={
        "help": "RandAugment magnitudes in 0..30, e.g. 6,12,18,24,30", "flag": "--m", "metavar": "LIST",
        "verbs": SEARCH})
    seeds: int = field(default=PAPER_SEEDS, metadata={
        "help": "training runs per setting (seeds 0 .. seeds-1)", "verbs": SEARCH})
    test_store: str | None = field(default=None, metadata={
        "help": "labelled TEST store to measure the best setting's models on"})
    threads: int | None = field(default=None, metadata={
        "help": "torch threads per trial (default: cores / workers, less one for its loader thread on CPU)",
        "verbs": SEARCH})
    score_batch_size: int = field(default=64, metadata={"help": "batch size when scoring TEST"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "ns", parse_int_list(self.ns, "N values"))
        object.__setattr__(self, "ms", parse_int_list(self.ms, "M values"))
        for n in self.ns:
            if n < 0:
                raise ConfigError(f"N (RandAugment operations) must be >= 0, got {n}")
        for m in self.ms:
            if not 0 <= m <= MAX_MAGNITUDE:
                raise ConfigError(f"M (RandAugment magnitude) must be in 0..{MAX_MAGNITUDE}, got {m}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        parse_lr_schedule(self.base.lr_schedule)
        try:
            parse_darkness(self.base.darkness_jitter)
        except InputError as exc:
            raise ConfigError(str(exc)) from None
        if self.base.max_epochs < 1:
            raise ConfigError(f"max_epochs must be >= 1, got {self.base.max_epochs}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")

    def trials(self) -> list[tuple[int, int, int]]:
        """(N, M, seed) of every trial, in grid order."""
        return [(n, m, s) for n in self.ns for m in self.ms for s in range(self.seeds)]
