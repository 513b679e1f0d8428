"""The classifier: a torchvision backbone with the paper's three-stage fully connected head.

The paper (docs/physics.md, "Training protocol") replaces ResNet50's 1000-way layer by
``Linear(2048, 256) -> Linear(256, 32) -> Linear(32, 1)``: one logit per crop, positive = alpha
decay. The paper does not state the activations between the stages; we put a ReLU after each
hidden stage (without them the three stages collapse into one linear map) and no dropout
(the paper mentions none, and the early-stopping rule already guards against over-fitting).
Lighter backbones for CPU-only sites (``resnet18``, ``mobilenet_v3_small``) get the same head on
their pooled features (512 and 576 features).

ImageNet initialisation comes from a local file only, never from the network: ``"imagenet"``
looks in torchvision's cache (``$TORCH_HOME/hub/checkpoints/``, default
``~/.cache/torch/hub/checkpoints/``) for the file name torchvision itself would download, and
a path may name a safetensors file (a backbone state dict or a scanstream checkpoint) or a
torchvision ``.pth`` weights file under its original name. ``.pth`` files are read with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.

:func:`preprocess` turns uint8 crops into the network's input; training and inference share it.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from scanstream.errors import CheckpointError, InputError
from scanstream.network.header import (  # noqa: F401 - callers import them from here too
    BACKBONES,
    HEAD_WIDTHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    ModelConfig,
    parse_backbone,
    parse_input_size,
)

logger = logging.getLogger(__name__)

#: Backbones by name: (torchvision constructor, its weights enum, pooled feature count); the
#: names are scanstream.network.header.BACKBONES (checked at import).
_BACKBONES: dict[str, tuple[Callable[..., nn.Module], Any, int]] = {
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights, 2048),
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights, 512),
    "mobilenet_v3_small": (tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights, 576),
}
assert tuple(_BACKBONES) == BACKBONES, "scanstream.network.header.BACKBONES names the backbones built here"

#: Width of the fused network's per-object feature encoding.
FUSION_WIDTH = 64
BN_MOMENTUM = 0.1


def make_head(in_features: int) -> nn.Sequential:
    """The paper's head: ``in -> 256 -> 32 -> 1`` with ReLU between stages."""
    a, b = HEAD_WIDTHS
    return nn.Sequential(nn.Linear(in_features, a), nn.ReLU(inplace=True), nn.Linear(a, b), nn.ReLU(inplace=True), nn.Linear(b, 1))


class Classifier(nn.Module):
    """A torchvision backbone whose last layer is the paper's head; one logit per crop.

    ``forward(x)``: float (B, 3, S, S), already :func:`preprocess`-ed -> logits float (B,).
    The torchvision module is kept whole as ``self.net`` (its final layer replaced), so state
    dict keys are torchvision's with a ``net.`` prefix.

    With ``inputs > 0`` it is the fused network (beyond the paper): ``forward(x, f)`` also takes
    float (B, inputs) per-object numbers (:func:`scanstream.picker.learned.model_inputs`); a
    small MLP (``inputs -> 64 -> 64``) encodes them, and the paper's head reads the backbone's
    pooled features and that encoding side by side (late fusion). The image branch then learns
    what the picker's numbers do not say (how black and thick each prong is, what crosses the
    vertex), and the feature branch carries what the crop's three focal planes cannot show
    (lengths of steep prongs measured through the whole stack).
    """

    def __init__(self, backbone: str, inputs: int = 0) -> None:
        super().__init__()
        ctor, _, features = _BACKBONES[parse_backbone(backbone)]
        self.backbone_name = backbone
        self.inputs = inputs
        self.net = ctor(weights=None)
        if inputs:
            self._set_head(nn.Identity())
            self.feature_net = nn.Sequential(
                nn.Linear(inputs, FUSION_WIDTH), nn.ReLU(inplace=True), nn.Linear(FUSION_WIDTH, FUSION_WIDTH), nn.ReLU(inplace=True)
            )
            self.fusion_head = make_head(features + FUSION_WIDTH)
        else:
            self._set_head(make_head(features))
        # torchvision's MobileNetV3 uses BatchNorm momentum 0.01, tuned for ImageNet's ~10^6
        # steps: after the few hundred steps of a crop-store run its running statistics are
        # still near their initial values and the eval-mode network outputs a constant. PyTorch's
        # default 0.1 (ResNet's) lets them follow within tens of steps.
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = BN_MOMENTUM

    def _set_head(self, head: nn.Module) -> None:
        if self.backbone_name.startswith("resnet"):
            self.net.fc = head
        else:
            self.net.classifier = head

    @property
    def head(self) -> nn.Module:
        if self.inputs:
            return nn.ModuleList([self.feature_net, self.fusion_head])
        return self.net.fc if self.backbone_name.startswith("resnet") else self.net.classifier

    def forward(self, x: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
        if not self.inputs:
            return self.net(x).reshape(-1)
        if f is None or f.ndim != 2 or f.shape != (x.shape[0], self.inputs):
            got = None if f is None else tuple(f.shape)
            raise InputError(f"the fused network needs per-object inputs of shape ({x.shape[0]}, {self.inputs}), got {got}")
        emb = self.net(x).flatten(1)
        return self.fusion_head(torch.cat([emb, self.feature_net(f.to(emb.dtype))], dim=1)).reshape(-1)


def build_model(config: ModelConfig) -> nn.Module:
    """Build the classifier described by ``config`` (weights loaded from a local file if asked).

    Returns
    -------
    Classifier
        In training mode, on the CPU. ``forward`` maps (B, 3, S, S) float to (B,) logits.

    Raises
    ------
    CheckpointError
        ``pretrained`` names a file that is missing, unreadable or does not fit the backbone,
        or ``"imagenet"`` and torchvision's cache lacks the weights file (the message names
        the path to place it at).
    """
    model = Classifier(config.backbone, config.inputs)
    if config.pretrained != "none":
        state = _pretrained_state(config)
        _load_backbone_state(model, state, source=config.pretrained)
    return model


# ---------------------------------------------------------------------------------------------
# Pretrained weights (local files only)


def imagenet_weight_files(backbone: str) -> list[Path]:
    """Where torchvision's cache would hold this backbone's ImageNet weights, preferred first."""
    _, weights_enum, _ = _BACKBONES[parse_backbone(backbone)]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    members = [weights_enum.DEFAULT] + [w for w in weights_enum if w is not weights_enum.DEFAULT]
    return [cache / os.path.basename(w.url) for w in members]


def _torchvision_file_names(backbone: str) -> set[str]:
    _, weights_enum, _ = _BACKBONES[backbone]
    return {os.path.basename(w.url) for w in weights_enum}


def _pretrained_state(config: ModelConfig) -> dict[str, torch.Tensor]:
    if config.pretrained == "imagenet":
        candidates = imagenet_weight_files(config.backbone)
        for path in candidates:
            if path.is_file():
                logger.info("ImageNet weights for %s from %s", config.backbone, path)
                return _read_torchvision_pth(path)
        raise CheckpointError(
            f"ImageNet weights for {config.backbone} not found: expected {candidates[0]} "
            f"(torchvision's cache; set TORCH_HOME to move it). Copy the file {candidates[0].name} "
            f"from a machine with internet (torchvision downloads it to ~/.cache/torch/hub/checkpoints/) "
            f"or pass --pretrained PATH; scanstream never downloads weights"
        )
    path = Path(config.pretrained)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights file {path} does not exist (use 'none', 'imagenet' or a file path)")
    if path.suffix == ".safetensors":
        return _read_safetensors_backbone(path)
    if path.name in _torchvision_file_names(config.backbone):
        return _read_torchvision_pth(path)
    raise CheckpointError(
        f"{path}: pretrained weights must be a .safetensors file or a torchvision weights file under its "
        f"original name ({', '.join(sorted(_torchvision_file_names(config.backbone)))})"
    )


def _read_torchvision_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torchvision weights file: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def _read_safetensors_backbone(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    return state


def _load_backbone_state(model: Classifier, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load backbone weights; the head stays as initialised unless ``state`` is a full classifier.

    Accepts torchvision keys (``conv1.weight``) or scanstream keys (``net.conv1.weight``).
    A state dict holding this head's keys too (a scanstream checkpoint) loads whole.
    """
    own = model.state_dict()
    state = {(k if k.startswith(("net.", "feature_net.", "fusion_head.")) else f"net.{k}"): v for k, v in state.items()}
    head_keys = {k for k in own if k.startswith(("net.fc.", "net.classifier.", "feature_net.", "fusion_head."))}
    backbone_keys = set(own) - head_keys
    missing = sorted(backbone_keys - set(state))
    if missing:
        raise CheckpointError(f"{source}: weights do not fit backbone {model.backbone_name}: missing {missing[:3]}...")
    take = {k: v for k, v in state.items() if k in backbone_keys}
    if head_keys <= set(state) and all(state[k].shape == own[k].shape for k in head_keys):
        take.update({k: state[k] for k in head_keys})
    bad = [k for k, v in take.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source}: weight shapes do not fit backbone {model.backbone_name}: {bad[:3]}")
    model.load_state_dict({**own, **take}, strict=True)
    logger.info("loaded %d pretrained tensors from %s", len(take), source)


# ---------------------------------------------------------------------------------------------
# Parameter groups for staged unfreezing


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def parameter_groups(model: Classifier) -> dict[str, list[nn.Parameter]]:
    """Parameters split as the authors' staged unfreezing uses them.

    Returns
    -------
    dict
        ``head`` (the new layers), ``norm`` (every BatchNorm of the backbone: trained from the
        start), ``late`` (the backbone's last two stages: unfrozen first) and ``early`` (the
        rest of the backbone: unfrozen last). Every parameter is in exactly one group.
    """
    net = model.net
    if model.backbone_name.startswith("resnet"):
        late_modules = [net.layer3, net.layer4]
    else:
        late_modules = list(net.features)[-2:]
    head_ids = {id(p) for p in model.head.parameters()}
    norm_ids = {id(p) for m in net.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    late_ids = {id(p) for m in late_modules for p in m.parameters()} - norm_ids
    groups: dict[str, list[nn.Parameter]] = {"head": [], "norm": [], "late": [], "early": []}
    for p in model.parameters():
        key = (
            "head" if id(p) in head_ids else "norm" if id(p) in norm_ids else "late" if id(p) in late_ids else "early"
        )
        groups[key].append(p)
    return groups


# ---------------------------------------------------------------------------------------------
# Input preparation


def preprocess(crops: torch.Tensor, input_size: int, *, halving: bool = True) -> torch.Tensor:
    """uint8 crops to normalised network input, on the crops' device.

    Parameters
    ----------
    crops : torch.Tensor
        uint8 (B, H, W, 3), NHWC (the store's layout), any device.
    input_size : int
        Output side S in pixels. Resizing is antialiased bilinear (skipped when S == H == W).
    halving : bool
        When H == W == 2 S (224 -> 112, the CPU models), compute the same antialiased bilinear
        resize as a fixed 4 x 4 stride-2 filter with the normalisation folded in
        (:func:`_halve_normalised`): equal to the ``F.interpolate`` path within float32
        rounding (measured max |difference| ~1e-6 on normalised values of order 1) and about
        twice as fast on the CPU. False: always ``F.interpolate`` (the reference).

    Returns
    -------
    torch.Tensor
        float32 (B, 3, S, S), ImageNet-normalised (mean/std per channel of the [0, 1] image).
    """
    if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
        raise InputError(f"crops must be uint8 (B, H, W, 3), got {crops.dtype} {tuple(crops.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=crops.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=crops.device, dtype=torch.float32).view(1, 3, 1, 1)
    h, w = crops.shape[1:3]
    if halving and h == w == 2 * input_size and input_size >= 2:
        return _halve_normalised(crops, mean, std).contiguous()
    x = crops.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    return ((x - mean) / std).contiguous()


#: PyTorch's antialiased bilinear weights for a downscale by exactly 2: a triangle of half-width
#: 2 input pixels centred between two pixels gives taps [1, 3, 3, 1] / 8 at stride 2.
_HALVING_TAPS = (1.0, 3.0, 3.0, 1.0)


def _halve_normalised(crops: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 2S, 2S, 3) -> normalised float32 (B, 3, S, S), as interpolate(antialias) + normalise.

    The resize is separable with taps [1, 3, 3, 1] / 8 at stride 2; at the borders F.interpolate
    drops the tap outside the image and renormalises ([3, 3, 1] / 7), which is the zero-padded
    filter times 8 / 7 in the first and last row and column. The division by 255 and by the
    channel's std go into the filter, the mean after it.
    """
    k = torch.tensor(_HALVING_TAPS, device=crops.device, dtype=torch.float32) / 8.0
    weight = torch.outer(k, k).view(1, 1, 4, 4) / (255.0 * std.view(3, 1, 1, 1))
    y = F.conv2d(crops.permute(0, 3, 1, 2).float(), weight, stride=2, padding=1, groups=3)
    edge = torch.ones(y.shape[-1], device=crops.device, dtype=torch.float32)
    edge[0] = edge[-1] = 8.0 / 7.0
    return y * (edge.view(1, 1, -1, 1) * edge.view(1, 1, 1, -1)) - mean / std
