"""``scanstream train``: one training run of the classifier, fed by Dask workers."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path

from scanstream.cli._common import deprecated_option, print_json
from scanstream.config import add_flags, given_flags, read_toml
from scanstream.training.config import TrainConfig, config_from_dict, precision_of_amp, verb_fields

logger = logging.getLogger(__name__)

#: TrainConfig fields with a flag (their help is the field's; flags left unset fall back to
#: --config, then the recipe, then the defaults)
FLAGS = verb_fields(TrainConfig, "train")
HELP = {f.name: f.metadata.get("help") for f in fields(TrainConfig)}


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
    p.add_argument("train", type=Path, nargs="?", metavar="TRAIN.zarr", help=HELP["train_store"])
    p.add_argument("valid", type=Path, nargs="?", metavar="VALID.zarr", help=HELP["valid_store"])
    deprecated_option(p, "--train", "train", "give the stores first: scanstream train TRAIN.zarr VALID.zarr --out ...",
                      type=Path)
    deprecated_option(p, "--valid", "valid", "give the stores first: scanstream train TRAIN.zarr VALID.zarr --out ...",
                      type=Path)
    p.set_defaults(required_inputs={"train": "TRAIN.zarr", "valid": "VALID.zarr"})
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help=HELP["out_dir"])
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="training options as TOML keys, optionally under [train] "
                   "(flags override)")
    p.add_argument("--recipe", default="auto", choices=("auto", "paper", "cpu", "finetune"),
                   help="starting values of every option (TOML and flags override): paper (ResNet50 224 px, "
                   "RandAugment (2, 24), constant 3e-4, batch 96, 100 epochs), cpu (mobilenet_v3_small 112 px, flips + "
                   "darkness jitter 0.3, cosine 2e-3, batch 32, 12 epochs, the last epoch kept), finetune (from a scanstream "
                   "checkpoint: cosine 5e-4, 12 epochs, the last kept); auto (default): finetune with a scanstream checkpoint as --pretrained, "
                   "paper on a GPU, cpu otherwise. The recipe used is printed and recorded in config.json")
    add_flags(p, TrainConfig, FLAGS)
    deprecated_option(p, "--amp", "precision", "use --precision auto | fp32 | bf16 (off is fp32)",
                      type=precision_of_amp, choices=("auto", "bf16", "fp32"))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from scanstream.training.loop import train
    from scanstream.training.outputs import CURVE_FILE, HISTORY_FILE
    from scanstream.training.recipes import RECIPES, choose_recipe, pretrained_options

    given = read_toml(args.config, section="train") if args.config else {}
    given.update(given_flags(args, FLAGS))
    recipe, why = choose_recipe(args.recipe, device=given.get("device", "auto"), pretrained=given.get("pretrained"))
    options = {**RECIPES[recipe], **(pretrained_options(given["pretrained"]) if given.get("pretrained") else {}), **given}
    options["recipe"] = recipe
    logger.info("recipe %s (%s)", recipe, why)
    if isinstance(options.get("m"), float) and options["m"].is_integer():
        options["m"] = int(options["m"])
    options.update(train_store=str(args.train), valid_store=str(args.valid), out_dir=str(args.out))
    config = config_from_dict(options, where=f"{args.config} [train]" if args.config else "training options")
    result = train(config, progress=not args.no_progress)
    print_json(
        {
            "recipe": {"name": recipe, "why": why, "backbone": config.backbone, "input_size": config.input_size,
                       "fused_with": config.feature_model},
            "checkpoint": str(result.checkpoint),
            "best_epoch": result.best_epoch,
            "metrics": result.metrics,
            "history": str(Path(config.out_dir) / HISTORY_FILE),
            "loss_curve": str(Path(config.out_dir) / CURVE_FILE),
        }
    )
    return 0
