"""``scanstream train``: one training run of the classifier, fed by Dask workers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from scanstream.cli._common import print_json
from scanstream.errors import ConfigError

logger = logging.getLogger(__name__)

#: flag dest -> TrainConfig field (flags left unset fall back to --config, then the defaults)
_FIELDS = (
    "backbone", "input_size", "pretrained", "n", "m", "darkness_jitter", "seed", "max_epochs", "batch_size",
    "epoch_size", "lr", "lr_schedule", "warmup_epochs", "device", "loader", "scheduler", "workers", "amp",
    "augment_on", "pos_weight", "unfreeze", "feature_model", "keep",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the alpha-decay classifier on labelled crop stores",
        description="Train the paper's classifier (a torchvision backbone with a 256-32-1 head) on a labelled "
        "TRAIN store, validating on VALID each epoch: oversampled balanced batches, random flips + "
        "RandAugment(N, M), Adam, binary cross entropy, early stopping on the smoothed validation loss. "
        "Dask workers read and prepare the batches (a LocalCluster unless --scheduler is given). "
        "RUN_DIR receives model.safetensors (the best epoch), config.json, history.csv and loss_curve.png; "
        "rerunning the same command after an interruption resumes from the last finished epoch.",
    )
    p.add_argument("--train", required=True, type=Path, metavar="T.zarr", help="labelled training crop store")
    p.add_argument("--valid", required=True, type=Path, metavar="V.zarr", help="labelled validation crop store")
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="output directory of the run")
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="training options as TOML keys (flags override)")
    p.add_argument("--recipe", default="auto", choices=("auto", "paper", "cpu", "finetune"),
                   help="starting values of every option (TOML and flags override): paper (ResNet50 224 px, "
                   "RandAugment (2, 24), constant 3e-4, batch 96, 100 epochs), cpu (mobilenet_v3_small 112 px, flips + "
                   "darkness jitter 0.3, cosine 2e-3, batch 32, 12 epochs, the last epoch kept), finetune (from a scanstream "
                   "checkpoint: cosine 5e-4, 12 epochs, the last kept); auto (default): finetune with a scanstream checkpoint as --pretrained, "
                   "paper on a GPU, cpu otherwise. The recipe used is printed and recorded in config.json")
    p.add_argument("--feature-model", metavar="FILE",
                   help="train the fused image + feature network with this feature model (`scanstream baseline "
                   "--learned TRAIN --save-model FILE`); with a calibrated prefilter the model is a cascade")
    p.add_argument("--backbone", help="resnet50 (paper), resnet18 or mobilenet_v3_small (cpu recipe); from a scanstream --pretrained checkpoint: its own")
    p.add_argument("--input-size", type=int, metavar="PX", help="network input side: 224 native (paper), 112 (cpu recipe); from a scanstream --pretrained checkpoint: its own")
    p.add_argument("--pretrained", metavar="PATH|imagenet|none",
                   help="initial weights: none (default), imagenet (torchvision's local cache; never downloaded) "
                   "or a weights file")
    p.add_argument("--n", type=int, help="RandAugment operations per image, 0..8 (paper 2; cpu and finetune recipes 0)")
    p.add_argument("--m", type=float, help="RandAugment magnitude, 0..30 (paper 24)")
    p.add_argument("--darkness-jitter", type=float, metavar="J",
                   help="scale each crop's optical density about its background by a factor drawn in "
                   "[1-J, 1+J] (sheet-to-sheet development; paper 0 = off, cpu and finetune recipes 0.3)")
    p.add_argument("--seed", type=int, help="random seed (default 0); same seed, same device: same result")
    p.add_argument("--max-epochs", type=int, help="epoch limit (paper 100; cpu and finetune recipes 12)")
    p.add_argument("--batch-size", type=int, help="mini-batch size (paper 96; cpu and finetune recipes 32)")
    p.add_argument("--epoch-size", type=int, metavar="K", help="samples per epoch (default: labelled crops in TRAIN)")
    p.add_argument("--lr", type=float, help="Adam learning rate (paper 3e-4, cpu 2e-3, finetune 5e-4)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"),
                   help="constant (paper) or cosine (cpu and finetune recipes): decay per step to 0 at --max-epochs")
    p.add_argument("--warmup-epochs", type=int, help="epochs before early stopping may stop (paper 5, cpu and finetune recipes 2)")
    p.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask scheduler instead of a LocalCluster")
    p.add_argument("--loader", choices=("dask", "local"), help="dask (default) or local threads (no Dask)")
    p.add_argument("--workers", type=int, help="loader workers (default: a few for a GPU, one per 4 cores on CPU)")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), help="bf16 autocast (auto: where the device is fast in it)")
    p.add_argument("--augment-on", choices=("auto", "worker", "device"),
                   help="where augmentation runs (auto: device on GPU, loader workers on CPU)")
    p.add_argument("--pos-weight", action="store_true", default=None, help="BCE pos_weight = negatives/positives")
    p.add_argument("--unfreeze", action="store_true", default=None,
                   help="the authors' staged unfreezing (for --pretrained): backbone frozen except BatchNorm, "
                   "last two stages trained from epoch 50, the rest from 100, at lr/10")
    p.add_argument("--keep", choices=("best", "last"),
                   help="the epoch the checkpoint holds: best (paper: minimum of the smoothed validation loss, early "
                   "stopping) or last (fixed-length cosine runs; the cpu and finetune recipes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


def _toml_options(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read training options: {exc}") from None
    return dict(data.get("train", data))


def run_train(args: argparse.Namespace) -> int:
    from scanstream.training.loop import config_from_dict, train
    from scanstream.training.recipes import RECIPES, choose_recipe, pretrained_options

    given = _toml_options(args.config) if args.config else {}
    for name in _FIELDS:
        value = getattr(args, name)
        if value is not None:
            given[name] = value
    recipe, why = choose_recipe(args.recipe, device=given.get("device", "auto"), pretrained=given.get("pretrained"))
    options = {**RECIPES[recipe], **(pretrained_options(given["pretrained"]) if given.get("pretrained") else {}), **given}
    options["recipe"] = recipe
    logger.info("recipe %s (%s)", recipe, why)
    if isinstance(options.get("m"), float) and options["m"].is_integer():
        options["m"] = int(options["m"])
    options.update(train_store=str(args.train), valid_store=str(args.valid), out_dir=str(args.out))
    config = config_from_dict(options)
    result = train(config, progress=not args.no_progress)
    print_json(
        {
            "recipe": {"name": recipe, "why": why, "backbone": config.backbone, "input_size": config.input_size,
                       "fused_with": config.feature_model},
            "checkpoint": str(result.checkpoint),
            "best_epoch": result.best_epoch,
            "metrics": result.metrics,
            "history": str(Path(config.out_dir) / "history.csv"),
            "loss_curve": str(Path(config.out_dir) / "loss_curve.png"),
        }
    )
    return 0
