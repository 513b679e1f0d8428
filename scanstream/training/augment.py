"""Batched, per-image data augmentation: random flips, then the paper's RandAugment.

docs/physics.md, "Training protocol": random horizontal and vertical flips, then N operations drawn
with replacement from eight, each at the value ``(M / 30) * (max - min) + min``, geometric ones
with a random sign:

============  ======  ======  ============================================
operation     min     max     meaning
============  ======  ======  ============================================
rotate        0       30      degrees, about the crop centre
contrast      0.1     1.9     PIL ``ImageEnhance.Contrast`` factor
brightness    0.1     1.9     PIL ``ImageEnhance.Brightness`` factor
sharpness     0.1     1.9     PIL ``ImageEnhance.Sharpness`` factor
shear_x       0       0.1     x' = x + s * y, about the crop centre
shear_y       0       0.1     y' = y + s * x, about the crop centre
translate_x   0       23      pixels of a 224-px crop (scaled with the image side)
translate_y   0       23      pixels of a 224-px crop
============  ======  ======  ============================================

Before RandAugment, an optional darkness jitter (not in the paper; ``darkness`` > 0) stands in
for the sheet-to-sheet spread of development: each image's optical density about its
background, log(I / I_bg) with I_bg the image's per-channel median, is multiplied by a factor
drawn uniformly in [1 - darkness, 1 + darkness], i.e. I' = I_bg (I / I_bg)^factor. That is what a
darker or lighter development does to a Beer-Lambert image (I = I0 exp(-darkness x A)): tracks and
grains darken or fade while the background stays put.

Note that M = 0 is not the identity for the three enhance operations: their factor is then
0.1 (a nearly black, flat or blurred image), as the formula says.

Unlike torchvision's v2 transforms applied to a batched tensor (one draw shared by the whole
batch), every image draws its own flips, operations, signs and values. Everything runs on the
batch's device: operations are applied slot by slot (slot k holds each image's k-th operation);
within a slot the images with a geometric operation go through one batched
``affine_grid``/``grid_sample`` with per-image matrices, and the enhance operations are per-image
blends. Values are rounded to integers and clipped to 0..255 after each operation, as PIL's
uint8 images are. Geometric operations fill uncovered pixels with ``fill`` (0, PIL's default).
Random draws come from a CPU ``torch.Generator``, so a seed gives the same augmentation on
any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scanstream.errors import InputError
from scanstream.training.config import MAX_M, parse_darkness, parse_m, parse_n

#: The paper's eight operations, in a fixed order (their index is the op code).
OPS: tuple[str, ...] = (
    "rotate",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
#: (min, max) of each operation's value (docs/physics.md, "Training protocol").
OP_RANGES: dict[str, tuple[float, float]] = {
    "rotate": (0.0, 30.0),
    "contrast": (0.1, 1.9),
    "brightness": (0.1, 1.9),
    "sharpness": (0.1, 1.9),
    "shear_x": (0.0, 0.1),
    "shear_y": (0.0, 0.1),
    "translate_x": (0.0, 23.0),
    "translate_y": (0.0, 23.0),
}
GEOMETRIC = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
ENHANCE = frozenset({"contrast", "brightness", "sharpness"})
#: translate values are in pixels of a crop of this side.
REFERENCE_SIDE = 224


def op_value(op: str, m: float) -> float:
    """The unsigned value of operation ``op`` at magnitude ``m``: ``(m/30)(max-min)+min``."""
    lo, hi = OP_RANGES[op]
    return parse_m(m) / MAX_M * (hi - lo) + lo


@dataclass(frozen=True)
class AugmentConfig:
    """Flips plus RandAugment(N, M).

    Attributes
    ----------
    n : int
        Operations per image, 0..8, drawn with replacement.
    m : float
        Magnitude, 0..30.
    flips : bool
        Random horizontal and vertical flips (each with probability 1/2) first.
    darkness : float
        Darkness jitter half-width, 0..0.9 (0: off, the paper): each image's optical density
        about its background is scaled by a factor drawn in [1 - darkness, 1 + darkness].
    fill : int
        Value of pixels uncovered by geometric operations.
    interpolation : str
        ``"bilinear"`` or ``"nearest"`` for geometric operations.
    """

    n: int = 2
    m: float = 24
    flips: bool = True
    darkness: float = 0.0
    fill: int = 0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        parse_n(self.n)
        parse_m(self.m)
        parse_darkness(self.darkness)
        if self.interpolation not in ("bilinear", "nearest"):
            raise InputError(f"interpolation must be 'bilinear' or 'nearest', got {self.interpolation!r}")
        if not 0 <= self.fill <= 255:
            raise InputError(f"fill must be in 0..255, got {self.fill!r}")


@dataclass(frozen=True)
class AugmentParams:
    """Per-image draws for a batch of B images and N slots (all CPU tensors).

    Attributes
    ----------
    hflip, vflip : torch.Tensor
        bool (B,).
    ops : torch.Tensor
        int64 (B, N): index into :data:`OPS` of each image's k-th operation.
    values : torch.Tensor
        float32 (B, N): the operation's value, signed for geometric operations.
    darkness : torch.Tensor or None
        float32 (B,): each image's optical-density factor; None: no darkness jitter.
    """

    hflip: torch.Tensor
    vflip: torch.Tensor
    ops: torch.Tensor
    values: torch.Tensor
    darkness: torch.Tensor | None = None


def draw_params(batch: int, config: AugmentConfig, generator: torch.Generator | None = None) -> AugmentParams:
    """Draw every image's flips, operations and signed values independently."""
    g = generator
    flips = torch.rand(batch, 2, generator=g) < 0.5 if config.flips else torch.zeros(batch, 2, dtype=torch.bool)
    ops = torch.randint(0, len(OPS), (batch, config.n), generator=g)
    sign = torch.where(torch.rand(batch, config.n, generator=g) < 0.5, -1.0, 1.0)
    base = torch.tensor([op_value(op, config.m) for op in OPS], dtype=torch.float32)
    geometric = torch.tensor([op in GEOMETRIC for op in OPS])
    values = base[ops] * torch.where(geometric[ops], sign, torch.ones_like(sign))
    darkness = None
    if config.darkness > 0:  # drawn last, so runs without it keep the same stream as before it existed
        darkness = 1.0 + config.darkness * (2.0 * torch.rand(batch, generator=g) - 1.0)
    return AugmentParams(hflip=flips[:, 0], vflip=flips[:, 1], ops=ops, values=values, darkness=darkness)


def single_op_params(batch: int, op: str, value: float | torch.Tensor) -> AugmentParams:
    """Params applying exactly ``op`` at ``value`` (scalar or (B,)) to every image, no flips."""
    values = torch.as_tensor(value, dtype=torch.float32).expand(batch).reshape(batch, 1).clone()
    return AugmentParams(
        hflip=torch.zeros(batch, dtype=torch.bool),
        vflip=torch.zeros(batch, dtype=torch.bool),
        ops=torch.full((batch, 1), OPS.index(op), dtype=torch.int64),
        values=values,
    )


# ---------------------------------------------------------------------------------------------
# Operations on float (B, 3, H, W) images holding integer values 0..255


def _affine_matrices(ops: torch.Tensor, values: torch.Tensor, side: int) -> torch.Tensor:
    """(G, 2, 3) affine_grid matrices (output -> input, normalised coordinates) per image.

    For square images, normalised coordinates are pixel coordinates about the centre divided
    by side/2, so rotations and shears carry over unchanged and translations scale by 2/side.
    """
    g = ops.shape[0]
    theta = torch.zeros(g, 2, 3, dtype=torch.float32)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    names = [OPS[i] for i in ops.tolist()]
    for i, (name, v) in enumerate(zip(names, values.tolist(), strict=True)):
        if name == "rotate":
            # Counter-clockwise on screen for positive angles, as PIL's Image.rotate (y points down).
            a = math.radians(v)
            theta[i, 0, 0], theta[i, 0, 1] = math.cos(a), -math.sin(a)
            theta[i, 1, 0], theta[i, 1, 1] = math.sin(a), math.cos(a)
        elif name == "shear_x":
            theta[i, 0, 1] = v
        elif name == "shear_y":
            theta[i, 1, 0] = v
        elif name == "translate_x":
            theta[i, 0, 2] = v * (side / REFERENCE_SIDE) * 2.0 / side
        elif name == "translate_y":
            theta[i, 1, 2] = v * (side / REFERENCE_SIDE) * 2.0 / side
    return theta


def _geometric(x: torch.Tensor, theta: torch.Tensor, *, fill: int, interpolation: str) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode=interpolation, padding_mode="zeros", align_corners=False) + fill
    return out.round_().clamp_(0, 255)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, factor)``: degenerate + factor * (x - degenerate).

    Clipped to 0..255 and truncated to an integer, as PIL's ImagingBlend does.
    """
    f = factor.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return (degenerate + f * (x - degenerate)).clamp_(0, 255).floor_()


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Brightness``: blend with black. ``factor`` (B,)."""
    return _blend(torch.zeros_like(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Contrast``: blend with the image's mean grey level (rounded)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    grey = (x * w).sum(1).round()
    mean = grey.mean(dim=(1, 2)).add(0.5).floor().view(-1, 1, 1, 1)
    return _blend(mean.expand_as(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image (border kept).

    SMOOTH is the 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, i.e. (3x3 box sum +
    4 x centre) / 13, computed with an exact integer box sum (cheaper than a depthwise conv).
    """
    box = F.avg_pool2d(x, 3, stride=1, divisor_override=1)
    smooth = ((box + 4 * x[..., 1:-1, 1:-1]) / 13.0).round_()
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def darken(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each image's optical density about its background: I_bg (I / I_bg)^factor.

    I_bg is the image's per-channel median grey level (the background: tracks cover a small
    part of a crop); pixels at 0 are treated as 0.5. Rounded and clipped to 0..255. ``factor`` (B,).
    """
    b, c = x.shape[:2]
    bg = x.reshape(b, c, -1).median(dim=-1).values.clamp_(min=1.0).view(b, c, 1, 1)
    f = factor.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return (bg * (x.clamp(min=0.5) / bg).pow(f)).round_().clamp_(0, 255)


_ENHANCE_FN = {"brightness": brightness, "contrast": contrast, "sharpness": sharpness}


def apply_params(crops: torch.Tensor, params: AugmentParams, *, fill: int = 0, interpolation: str = "bilinear") -> torch.Tensor:
    """Apply drawn parameters to a batch.

    Parameters
    ----------
    crops : torch.Tensor
        uint8 (B, S, S, 3), NHWC, any device.
    params : AugmentParams
        From :func:`draw_params` (or :func:`single_op_params`) for B images.

    Returns
    -------
    torch.Tensor
        uint8 (B, S, S, 3) on the same device.
    """
    if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise InputError(f"augmentation needs uint8 (B, S, S, 3) square crops, got {crops.dtype} {tuple(crops.shape)}")
    b, side = crops.shape[0], crops.shape[1]
    if params.ops.shape[0] != b:
        raise InputError(f"augmentation parameters are for {params.ops.shape[0]} images, batch has {b}")
    dev = crops.device
    x = crops.permute(0, 3, 1, 2).float()
    h, v = params.hflip.to(dev).view(-1, 1, 1, 1), params.vflip.to(dev).view(-1, 1, 1, 1)
    if params.hflip.any():
        x = torch.where(h, x.flip(-1), x)
    if params.vflip.any():
        x = torch.where(v, x.flip(-2), x)
    if params.darkness is not None:
        x = darken(x, params.darkness)
    geometric_codes = torch.tensor([op in GEOMETRIC for op in OPS])
    for k in range(params.ops.shape[1]):
        ops, values = params.ops[:, k], params.values[:, k]
        geo = geometric_codes[ops]
        if geo.any():
            idx = torch.nonzero(geo).view(-1)
            theta = _affine_matrices(ops[idx], values[idx], side)
            idx_d = idx.to(dev)
            x = x.index_copy(0, idx_d, _geometric(x.index_select(0, idx_d), theta, fill=fill, interpolation=interpolation))
        for name, fn in _ENHANCE_FN.items():
            sel = ops == OPS.index(name)
            if sel.any():
                idx_d = torch.nonzero(sel).view(-1).to(dev)
                x = x.index_copy(0, idx_d, fn(x.index_select(0, idx_d), values[sel]))
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class Augmenter:
    """Callable flips + RandAugment with its own seeded generator.

    ``Augmenter(config, seed)(crops)`` -> augmented uint8 crops; successive calls continue
    the generator's stream, so a run with the same seed sees the same augmentations.
    """

    def __init__(self, config: AugmentConfig, seed: int = 0) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        if self.config.n == 0 and not self.config.flips and self.config.darkness == 0:
            return crops
        params = draw_params(crops.shape[0], self.config, self.generator)
        return apply_params(crops, params, fill=self.config.fill, interpolation=self.config.interpolation)


def augment(crops: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flips (+ darkness jitter) + RandAugment(N, M) with per-image draws; uint8 (B, S, S, 3) in and out."""
    params = draw_params(crops.shape[0], config, generator)
    return apply_params(crops, params, fill=config.fill, interpolation=config.interpolation)
