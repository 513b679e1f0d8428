"""Criterion 1 of the detector (:mod:`scanstream.picker.detect`): dark and sharp voxels of a field.

Pure numpy / scipy over a field's focal planes, uint8 (z, y, x), one plane at a time. The
parameters are :class:`scanstream.picker.detect.DetectParams`'
``threshold``, ``sharp_threshold``, ``sharp_sigma_um``, ``pixel_um`` and ``voxel_px``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage as ndi


class MaskParams(Protocol):
    """What criterion 1 reads of :class:`scanstream.picker.detect.DetectParams` (this module
    sits below the detector, so it names the fields instead of importing the class)."""

    threshold: float
    sharp_threshold: float
    sharp_sigma_um: float
    pixel_um: float
    voxel_px: int


@dataclass(frozen=True)
class Masks:
    """What criterion 1 gives, per field: bool (z, y // voxel_px, x // voxel_px) ``dark`` and
    ``sharp``, and ``fine``, the sharp 2 x 2-pixel voxels, bool (z, y // voxel_px * voxel_px / 2, same in x)."""

    dark: np.ndarray
    sharp: np.ndarray
    fine: np.ndarray

    @classmethod
    def empty(cls, nz: int, hv: int, wv: int, r: int) -> Masks:
        """All False: ``nz`` planes of ``hv`` x ``wv`` voxels of ``r`` x ``r`` fine voxels each."""
        dark = np.zeros((nz, hv, wv), bool)
        return cls(dark, np.zeros_like(dark), np.zeros((nz, hv * r, wv * r), bool))


def check_voxels(shape: tuple[int, ...], f: int) -> None:
    """Refuse a voxel size other than 2, 4, 8 or 16 px, or planes narrower than two voxels."""
    h, w = shape[-2:]
    if f not in (2, 4, 8, 16) or min(h, w) < 2 * f:
        raise ValueError(f"voxel_px must be 2, 4, 8 or 16 and the planes two voxels wide, got {f} and {h} x {w} px")


def plane_background(plane: np.ndarray) -> float:
    """A plane's median grey (of every 4th pixel each way, from its histogram), at least 1."""
    sample = plane[::4, ::4]
    return max(float(np.searchsorted(np.cumsum(np.bincount(sample.ravel(), minlength=256)), sample.size / 2)), 1.0)


def sharp_sigma(params: MaskParams) -> float:
    """The neighbourhood's Gaussian sigma in voxels, narrowed by what voxels and interpolation add."""
    f = params.voxel_px
    return float(np.sqrt(max(params.sharp_sigma_um**2 - _added_blur_um2(f, params.pixel_um), 0.0)) / (f * params.pixel_um))


def dark_masks(planes: np.ndarray, params: MaskParams) -> Masks:
    """Dark and sharp voxels (criterion 1), one plane at a time (each plane's work stays in cache).

    The neighbourhood mean is a Gaussian of the voxel means (a quarter of the samples of the
    2 x 2-pixel grid, and a kernel half as wide), interpolated bilinearly to the 2 x 2-pixel
    grid; the Gaussian is narrowed by what the wider box and the interpolation add
    (:func:`_added_blur_um2`: 1.39 instead of 1.5 um), so the sum is the 1.5 um neighbourhood.
    The interpolation is done only in voxels whose darkest 2 x 2 pixels are below the largest
    limit around them (an interpolated limit never exceeds it): about 1 % of a field.
    """
    nz, h, w = planes.shape
    f = params.voxel_px
    check_voxels(planes.shape, f)
    hv, wv, r = h // f, w // f, f // 2
    out = Masks.empty(nz, hv, wv, r)
    sigma = sharp_sigma(params)
    for k in range(nz):
        plane = planes[k, : hv * f, : wv * f]
        bg = plane_background(plane)
        s2, lo, tot = voxel_sums(plane, f)
        limit = ndi.gaussian_filter(tot.astype(np.float32) * np.float32(4.0 / (f * f)), sigma, mode="nearest")
        limit -= np.float32(4 * params.sharp_threshold * bg)
        bi, bj = np.nonzero(lo < _max3(limit))
        fy, fx, on = _fine_sharp(s2, limit, bi, bj, r)
        out.fine[k, fy, fx] = on
        out.sharp[k, bi, bj] = on.reshape(len(bi), r * r).any(1)
        out.dark[k] = out.sharp[k] | (lo < 4 * (1.0 - params.threshold) * bg)
    return out


def voxel_sums(px: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(2 x 2-pixel sums, the darkest of them in each voxel, each voxel's sum) of planes ``px``
    ((..., y, x) uint8, whole voxels): uint16 (..., y / 2, x / 2), (..., y / f, x / f) twice."""
    s2 = _sum2(px)  # 4 x the 2 x 2-pixel means
    lo, tot = s2, s2
    while lo.shape[-2] > px.shape[-2] // f:  # down to voxels: the darkest 2 x 2 pixels, and the sum
        lo = np.minimum(lo[..., 0::2, :], lo[..., 1::2, :])  # pairs of rows (contiguous), then of columns
        lo = np.minimum(lo[..., 0::2], lo[..., 1::2])
        tot = _sum2(tot)
    return s2, lo, tot


def _sum2(a: np.ndarray) -> np.ndarray:
    """Sums of 2 x 2 blocks over the last two axes (uint8 -> uint16, uint16 or float stay); odd edges dropped.

    Pairs of rows are added first (whole rows, contiguous), then pairs of columns of half as
    many rows: a third faster than adding the four strided quarters.
    """
    h, w = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    rows = a[..., 0:h:2, :w].astype(np.uint16 if a.dtype == np.uint8 else a.dtype)
    rows += a[..., 1:h:2, :w]
    return rows[..., 0::2] + rows[..., 1::2]


def _max3(a: np.ndarray) -> np.ndarray:
    """The maximum over each element's 3 x 3 neighbourhood in the last two axes (edges: the nearest value)."""
    m = a.copy()
    np.maximum(m[..., 1:, :], a[..., :-1, :], out=m[..., 1:, :])
    np.maximum(m[..., :-1, :], a[..., 1:, :], out=m[..., :-1, :])
    out = m.copy()
    np.maximum(out[..., 1:], m[..., :-1], out=out[..., 1:])
    np.maximum(out[..., :-1], m[..., 1:], out=out[..., :-1])
    return out


def _fine_sharp(s2: np.ndarray, limit: np.ndarray, bi: np.ndarray, bj: np.ndarray, r: int):
    """The r x r fine voxels of voxels (bi, bj) and whether each is sharp: its sum ``s2`` below
    ``limit`` interpolated bilinearly to its centre, (a + 1/2) / r - 1/2 voxels from the voxel's
    (edges: the nearest voxel). Returns (rows, columns, sharp), voxel by voxel, r x r each."""
    off = (np.arange(r) + 0.5) / r - 0.5
    fy = (bi[:, None, None] * r + np.arange(r)[None, :, None] + np.zeros((1, 1, r), int)).ravel()
    fx = (bj[:, None, None] * r + np.zeros((1, r, 1), int) + np.arange(r)[None, None, :]).ravel()
    hl, wl = limit.shape[-2:]
    y = np.clip((bi[:, None, None] + off[None, :, None] + np.zeros((1, 1, r))).ravel(), 0, hl - 1)
    x = np.clip((bj[:, None, None] + np.zeros((1, r, 1)) + off[None, None, :]).ravel(), 0, wl - 1)
    y0, x0 = np.minimum(y.astype(int), hl - 2), np.minimum(x.astype(int), wl - 2)
    ty, tx = y - y0, x - x0
    lim = ((1 - ty) * ((1 - tx) * limit[y0, x0] + tx * limit[y0, x0 + 1])
           + ty * ((1 - tx) * limit[y0 + 1, x0] + tx * limit[y0 + 1, x0 + 1]))
    return fy, fx, s2[fy, fx] < lim


def _added_blur_um2(f: int, pixel_um: float) -> float:
    """Variance (um2) that averaging over voxels instead of 2 x 2 pixels and the interpolation
    add to the neighbourhood's smoothing: (f^2 - 2^2) px^2 / 12 for the wider box, and t (1 - t)
    voxels^2 for linear interpolation at fraction t, averaged over the fine voxels' positions."""
    r = f // 2
    t = ((np.arange(r) + 0.5) / r - 0.5) % 1.0
    return ((f * pixel_um) ** 2 - (2 * pixel_um) ** 2) / 12 + float(np.mean(t * (1 - t))) * (f * pixel_um) ** 2
