"""Named starting points of a training run (the CLI's ``--recipe``) and what a checkpoint lends one.

TOML keys and flags override a recipe's values; :func:`choose_recipe` picks one by the initial
weights and the device, and :func:`pretrained_options` reads from a scanstream checkpoint what
fine-tuning must take from it.
"""

from __future__ import annotations

from typing import Any

from scanstream.devices import resolve_device
from scanstream.errors import CheckpointError, ConfigError
from scanstream.network.checkpoint import read_header

#: Named starting points of a run (the CLI's ``--recipe``); TOML keys and flags override them.
#: ``paper``: the dataclass defaults, the published protocol (ResNet50 at 224 px, RandAugment
#: (2, 24), Adam 3e-4 constant, batch 96, up to 100 epochs), for GPUs and ImageNet weights.
#: ``cpu``: what trains from random weights on a few cores (docs/training.md: flips and darkness
#: jitter, a cosine rate over a fixed short run; the paper's constant rate and RandAugment left a
#: CPU model noisy from epoch to epoch and its best epoch at 0). ``finetune``: from a scanstream
#: checkpoint (the shipped simulation-trained model), on a small labelled store: a lower rate.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"backbone": "mobilenet_v3_small", "input_size": 112, "n": 0, "m": 0, "darkness_jitter": 0.3, "lr": 2e-3,
            "lr_schedule": "cosine", "max_epochs": 12, "batch_size": 32, "warmup_epochs": 2, "keep": "last"},
    "finetune": {"n": 0, "m": 0, "darkness_jitter": 0.3, "lr": 5e-4, "lr_schedule": "cosine", "max_epochs": 12,
                 "batch_size": 32, "warmup_epochs": 2, "keep": "last"},
}


def choose_recipe(name: str, *, device: str = "auto", pretrained: str | None = None) -> tuple[str, str]:
    """The recipe to start from, and why: ``auto`` picks by initial weights and device.

    ``auto``: ``finetune`` when ``pretrained`` is a scanstream checkpoint, else ``paper`` on a
    CUDA device, else ``cpu``.
    """
    if name != "auto":
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; choose auto, {', '.join(RECIPES)}")
        return name, "asked for"
    if pretrained and pretrained not in ("none", "imagenet") and scanstream_checkpoint(pretrained) is not None:
        return "finetune", f"--pretrained {pretrained} is a scanstream checkpoint"
    if resolve_device(device).type == "cuda":
        return "paper", "a CUDA device"
    return "cpu", "no GPU here"


def scanstream_checkpoint(path: str) -> dict[str, Any] | None:
    """A scanstream checkpoint's header metadata, or None when ``path`` is not one."""
    try:
        return read_header(path)
    except CheckpointError:
        return None


def pretrained_options(path: str) -> dict[str, Any]:
    """What fine-tuning from a scanstream checkpoint takes from it unless told otherwise.

    The backbone and input size (the weights only fit those), and for a fused network its
    feature model (the checkpoint itself: :func:`scanstream.picker.learned.load_feature_model`
    reads the feature model inside it).
    """
    meta = scanstream_checkpoint(path)
    if meta is None:
        return {}
    mc = meta["model_config"]
    out = {"backbone": mc["backbone"], "input_size": mc["input_size"]}
    if mc.get("inputs"):
        out["feature_model"] = str(path)
    return out
