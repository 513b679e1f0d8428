"""Flips + RandAugment: every operation at M = 0 and M = 30, per-image draws, determinism; the
darkness jitter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from scanstream.errors import InputError
from scanstream.training.augment import (
    ENHANCE,
    GEOMETRIC,
    OPS,
    AugmentConfig,
    Augmenter,
    apply_params,
    augment,
    darken,
    draw_params,
    op_value,
    single_op_params,
)

PIL_ENHANCE = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}


def _image(side=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(30, 226, (side, side, 3), dtype=np.uint8)
    return img


def _dot(side=96, at=(48, 80)) -> np.ndarray:
    img = np.zeros((side, side, 3), np.uint8)
    y, x = at
    img[y - 2 : y + 2, x - 2 : x + 2] = 255
    return img


def _centroid(img: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(img[..., 0] > 100)
    return float(ys.mean()), float(xs.mean())


def _apply(img: np.ndarray, op: str, value: float) -> np.ndarray:
    out = apply_params(torch.from_numpy(img.copy())[None], single_op_params(1, op, value))
    return out[0].numpy()


def test_eight_operations_and_ranges():
    assert len(OPS) == 8 and GEOMETRIC | ENHANCE == set(OPS)
    assert op_value("rotate", 30) == 30 and op_value("translate_x", 30) == 23 and op_value("shear_y", 30) == 0.1
    assert op_value("contrast", 0) == pytest.approx(0.1) and op_value("sharpness", 30) == pytest.approx(1.9)
    assert op_value("brightness", 15) == pytest.approx(1.0)
    assert op_value("rotate", 24) == pytest.approx(24.0)


@pytest.mark.parametrize("op", sorted(GEOMETRIC))
def test_geometric_ops_at_m0_are_identity(op):
    img = _image()
    assert op_value(op, 0) == 0
    assert np.array_equal(_apply(img, op, op_value(op, 0)), img)


@pytest.mark.parametrize("op", sorted(ENHANCE))
@pytest.mark.parametrize("m", [0, 30])
def test_enhance_ops_match_pil(op, m):
    """M=0 is factor 0.1 (not the identity), M=30 is 1.9; both exactly PIL's ImageEnhance."""
    img = _image()
    factor = op_value(op, m)
    ref = np.asarray(PIL_ENHANCE[op](Image.fromarray(img)).enhance(factor))
    out = _apply(img, op, factor)
    assert np.array_equal(out, ref)
    assert not np.array_equal(out, img)


def test_brightness_m0_darkens_to_a_tenth():
    img = _image()
    out = _apply(img, "brightness", op_value("brightness", 0)).astype(int)
    assert np.array_equal(out, np.floor(img * np.float32(0.1)).astype(int))


@pytest.mark.parametrize("sign", [1, -1])
def test_rotate_m30_turns_about_the_centre_like_pil(sign):
    img = _dot()
    out = _apply(img, "rotate", sign * op_value("rotate", 30))
    ref = np.asarray(Image.fromarray(img).rotate(sign * 30.0, resample=Image.BILINEAR))
    assert np.allclose(_centroid(out), _centroid(ref), atol=0.6)
    # the dot 32 px right of the centre moves 32 sin(30 deg) = 16 px up (counter-clockwise) for +30
    assert _centroid(out)[0] == pytest.approx(47.5 - sign * 16, abs=0.6)


@pytest.mark.parametrize("op,axis", [("translate_x", 1), ("translate_y", 0)])
@pytest.mark.parametrize("sign", [1, -1])
def test_translate_m30_shifts_23px_of_224(op, axis, sign):
    img = _image(side=224)
    out = _apply(img, op, sign * op_value(op, 30))
    shifted = np.roll(img, -sign * 23, axis=axis)
    inner = slice(30, 190)
    assert np.array_equal(out[inner, inner], shifted[inner, inner])
    edge = out[:, -23:] if (axis == 1 and sign == 1) else out[:, :23] if axis == 1 else out[-23:] if sign == 1 else out[:23]
    assert (edge == 0).all()  # uncovered pixels are filled with 0


def test_translate_scales_with_the_image_side():
    img = _image(side=112)
    out = _apply(img, "translate_x", 23.0)
    ref = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    expected = torch.nn.functional.grid_sample(
        ref, torch.nn.functional.affine_grid(torch.tensor([[[1.0, 0, 23 / 224 * 2], [0, 1.0, 0]]]), [1, 3, 112, 112],
                                             align_corners=False), align_corners=False
    ).round()[0].permute(1, 2, 0).numpy()
    assert np.array_equal(out, expected.astype(np.uint8))


@pytest.mark.parametrize("op,axis", [("shear_x", 1), ("shear_y", 0)])
@pytest.mark.parametrize("sign", [1, -1])
def test_shear_m30_moves_off_axis_points_by_a_tenth(op, axis, sign):
    # a dot 32 px below (shear_x) / right of (shear_y) the centre moves 3.2 px along the other axis
    at = (80, 48) if op == "shear_x" else (48, 80)
    img = _dot(at=at)
    out = _apply(img, op, sign * op_value(op, 30))
    before, after = _centroid(img), _centroid(out)
    assert after[axis] - before[axis] == pytest.approx(-sign * 3.2, abs=0.6)
    assert after[1 - axis] == pytest.approx(before[1 - axis], abs=0.3)


def test_params_drawn_per_image():
    params = draw_params(64, AugmentConfig(n=2, m=24), torch.Generator().manual_seed(0))
    assert params.ops.shape == (64, 2) and params.values.shape == (64, 2)
    assert len(set(params.ops[:, 0].tolist())) > 4
    assert 0 < int(params.hflip.sum()) < 64 and 0 < int(params.vflip.sum()) < 64
    geo = torch.tensor([OPS[i] in GEOMETRIC for i in params.ops.flatten().tolist()])
    vals = params.values.flatten()
    assert (vals[geo] < 0).any() and (vals[geo] > 0).any()  # random signs
    assert (vals[~geo] > 0).all()


def test_images_of_a_batch_get_different_augmentations():
    batch = torch.from_numpy(np.repeat(_image()[None], 16, axis=0))
    out = augment(batch, AugmentConfig(n=2, m=24), torch.Generator().manual_seed(1))
    distinct = {out[i].numpy().tobytes() for i in range(16)}
    assert len(distinct) >= 14


def test_seeded_generator_is_deterministic():
    batch = torch.from_numpy(np.stack([_image(seed=s) for s in range(8)]))
    cfg = AugmentConfig(n=3, m=18)
    a = augment(batch, cfg, torch.Generator().manual_seed(7))
    b = augment(batch, cfg, torch.Generator().manual_seed(7))
    c = augment(batch, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    aug1, aug2 = Augmenter(cfg, seed=3), Augmenter(cfg, seed=3)
    first = aug1(batch)
    assert torch.equal(first, aug2(batch)) and not torch.equal(first, aug1(batch))


def test_flips_only_when_n0():
    img = _image()
    batch = torch.from_numpy(np.repeat(img[None], 32, axis=0))
    out = augment(batch, AugmentConfig(n=0, m=30), torch.Generator().manual_seed(0)).numpy()
    variants = {v.tobytes() for v in (img, img[:, ::-1], img[::-1], img[::-1, ::-1])}
    got = {o.tobytes() for o in out}
    assert got <= variants and len(got) >= 3


def test_output_is_uint8_nhwc_same_device():
    batch = torch.from_numpy(np.stack([_image(side=48, seed=s) for s in range(4)]))
    out = augment(batch, AugmentConfig(n=8, m=30), torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == batch.shape and out.device == batch.device


@pytest.mark.parametrize("kw", [{"n": 9}, {"n": -1}, {"m": 31}, {"m": -0.5}, {"n": 2.0}])
def test_n_m_out_of_range(kw):
    with pytest.raises(InputError, match="RandAugment"):
        AugmentConfig(**kw)


def test_refuses_float_or_non_square():
    with pytest.raises(InputError, match="uint8"):
        augment(torch.zeros(2, 32, 32, 3), AugmentConfig())
    with pytest.raises(InputError, match="square"):
        augment(torch.zeros(2, 32, 40, 3, dtype=torch.uint8), AugmentConfig())


# ---------------------------------------------------------------------------------------------
# Darkness jitter


def _beer_lambert(darkness: float, seed: int = 0, side: int = 48) -> np.ndarray:
    """A crop as the renderer makes one: I = I0 exp(-darkness A), A zero on most of the crop."""
    rng = np.random.default_rng(seed)
    a = np.zeros((side, side, 3))
    a[10:14, 5:40] = rng.uniform(0.5, 2.5, (4, 35, 3))  # a track
    a[30:33, 20:23] = 1.0  # a grain
    i0 = np.array([190.0, 185.0, 200.0])
    return np.clip(np.round(i0 * np.exp(-darkness * a)), 0, 255).astype(np.uint8)


def _darken(img: np.ndarray, factor: float) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    return darken(x, torch.tensor([factor]))[0].permute(1, 2, 0).to(torch.uint8).numpy()


def test_darken_is_a_change_of_development_darkness():
    """darken(image of darkness d, f) is the image of darkness f d (Beer-Lambert), background kept."""
    img = _beer_lambert(1.0)
    assert np.array_equal(_darken(img, 1.0), img)
    for f in (0.7, 1.3):
        got, want = _darken(img, f).astype(int), _beer_lambert(f).astype(int)
        assert np.abs(got - want).max() <= 2
        assert np.array_equal(got[40:, 40:], img[40:, 40:].astype(int))  # background unchanged
    assert _darken(img, 0.7)[12, 20].mean() > img[12, 20].mean() > _darken(img, 1.3)[12, 20].mean()


def test_darkness_factors_drawn_per_image_without_changing_the_other_draws():
    base = draw_params(64, AugmentConfig(n=2, m=24), torch.Generator().manual_seed(0))
    jit = draw_params(64, AugmentConfig(n=2, m=24, darkness=0.3), torch.Generator().manual_seed(0))
    assert base.darkness is None
    for name in ("hflip", "vflip", "ops", "values"):  # runs without the jitter keep their stream
        assert torch.equal(getattr(base, name), getattr(jit, name))
    d = jit.darkness
    assert d.shape == (64,) and bool(((d >= 0.7) & (d <= 1.3)).all()) and len(set(d.tolist())) == 64
    assert d.min() < 0.8 and d.max() > 1.2


def test_darkness_jitter_alone_changes_images_differently():
    batch = torch.from_numpy(np.repeat(_beer_lambert(1.0)[None], 8, axis=0))
    aug = Augmenter(AugmentConfig(n=0, m=0, flips=False, darkness=0.3), seed=0)
    out = aug(batch)
    assert len({out[i].numpy().tobytes() for i in range(8)}) >= 6  # close factors can round alike
    assert torch.equal(out[:, 40:, 40:], batch[:, 40:, 40:])


@pytest.mark.parametrize("j", [-0.1, 0.95, True, "0.3"])
def test_darkness_out_of_range(j):
    with pytest.raises(InputError, match="darkness"):
        AugmentConfig(darkness=j)
