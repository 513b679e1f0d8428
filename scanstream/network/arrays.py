"""The network's input from uint8 crops in numpy: what :func:`scanstream.network.model.preprocess` computes, without torch.

An ONNX export (:mod:`scanstream.inference.export`) takes the normalised float32 input, so a
machine that classifies with exports only (the light install, docs/install.md) prepares it
here: the same antialiased bilinear resize as ``torch.nn.functional.interpolate(...,
mode="bilinear", antialias=True, align_corners=False)`` (PyTorch's separable triangle filter,
its support widened by the downscale factor and its weights renormalised at the borders), then
the ImageNet normalisation. tests/test_light_install.py checks it against torch's to float32
rounding.
"""

from __future__ import annotations

import numpy as np

from scanstream.errors import InputError
from scanstream.network.header import IMAGENET_MEAN, IMAGENET_STD


def resize_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights of an antialiased bilinear resize along one axis, as PyTorch's.

    Output pixel ``i`` is centred at ``c = scale (i + 1/2)`` in input pixels (``scale = n_in /
    n_out``); the triangle filter ``max(0, 1 - |x|)`` is stretched by ``scale`` when shrinking,
    taken over the input pixels whose centres lie within its support, and its weights are
    normalised to sum to 1.

    Returns
    -------
    index : int64 (n_out, K)
        Input pixels of each output pixel (padded with the last pixel, at weight 0).
    weight : float64 (n_out, K)

    Examples
    --------
    >>> index, weight = resize_taps(4, 2)
    >>> index.tolist(), (weight * 7).round(6).tolist()
    ([[0, 1, 2], [1, 2, 3]], [[3.0, 3.0, 1.0], [1.0, 3.0, 3.0]])
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    centre = scale * (np.arange(n_out) + 0.5)
    lo = np.maximum((centre - support + 0.5).astype(np.int64), 0)  # truncation, as the C++ cast
    hi = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    j = np.arange(int((hi - lo).max()))
    index = lo[:, None] + j[None, :]
    weight = np.clip(1.0 - np.abs((index - centre[:, None] + 0.5) * invscale), 0.0, None)
    weight[index >= hi[:, None]] = 0.0
    weight /= weight.sum(axis=1, keepdims=True)
    return np.minimum(index, n_in - 1), weight


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """``x`` resized along ``axis`` to ``n_out`` (float32).

    For an integer factor (224 -> 112, the CPU models) every output pixel away from the borders
    has the same taps at a fixed stride: strided slices of the zero-padded input, five times as
    fast as gathering each tap; the few border pixels, whose weights are renormalised, are
    computed tap by tap afterwards.
    """
    n_in = x.shape[axis]
    index, weight = resize_taps(n_in, n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out

    def gathered(rows: np.ndarray) -> np.ndarray:
        out = 0.0
        for k in range(index.shape[1]):
            w = weight[rows, k].astype(np.float32).reshape([len(rows) if a == axis else 1 for a in range(x.ndim)])
            out = out + np.take(x, index[rows, k], axis=axis) * w
        return out

    factor, rest = divmod(n_in, n_out)
    if rest or n_out < 8:
        return gathered(np.arange(n_out)).astype(np.float32, copy=False)
    m = n_out // 2
    taps = index.shape[1]
    offset = int(index[m, 0]) - factor * m
    regular = np.all(index == factor * np.arange(n_out)[:, None] + offset + np.arange(taps), axis=1)
    regular &= np.all(np.abs(weight - weight[m]) < 1e-12, axis=1)
    before = max(0, -offset)
    after = max(0, factor * (n_out - 1) + offset + taps - n_in)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (before, after)
    xp = np.pad(x, pad)
    out = np.zeros(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], np.float32)
    term = np.empty_like(out)
    for k in range(taps):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(offset + before + k, offset + before + k + factor * n_out, factor)
        out += np.multiply(xp[tuple(sl)], np.float32(weight[m, k]), out=term)
    border = np.flatnonzero(~regular)
    if border.size:
        sl = [slice(None)] * x.ndim
        sl[axis] = border
        out[tuple(sl)] = gathered(border)
    return out


def preprocess_array(crops: np.ndarray, input_size: int) -> np.ndarray:
    """uint8 crops (B, H, W, 3) NHWC to the network's input, float32 (B, 3, S, S), C-contiguous.

    Resized to ``input_size`` with antialiased bilinear filtering (skipped when it is the crops'
    size), scaled to [0, 1] and ImageNet-normalised per channel.
    """
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
        raise InputError(f"crops must be uint8 (B, H, W, 3), got {crops.dtype} {tuple(crops.shape)}")
    x = crops.astype(np.float32)  # NHWC: the resize walks H and W with C innermost, then one transpose
    if x.shape[1] != input_size:
        x = _resize_axis(x, input_size, 1)
    if x.shape[2] != input_size:
        x = _resize_axis(x, input_size, 2)
    std = np.asarray(IMAGENET_STD, np.float32)
    x *= np.float32(1.0 / 255.0) / std
    x -= np.asarray(IMAGENET_MEAN, np.float32) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
