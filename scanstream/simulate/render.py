"""The microscope: developed grains in 3-D to a 224 x 224 x 3 crop centred on the vertex.

Channel encoding (the three channels are three focal planes, i.e. depth):

====== =====================================================================
R (0)  focal plane one z-step (3 um) *shallower* than the vertex (towards the surface)
G (1)  focal plane at the vertex depth
B (2)  focal plane one z-step *deeper* than the vertex
====== =====================================================================

All three planes carry the crop's focus error (a per-crop offset drawn with the sheet's
``focus_error`` sigma); an out-of-focus object (``blur``) sits several um away from all three.
A grain at depth offset dz from a plane is imaged as a Gaussian of sigma
sqrt(s_grain^2 + s_psf^2 + (k dz)^2) with the same integrated absorption, so it fades and
spreads as it leaves the depth of field (about +-1 um sharp, gone beyond about 12 um).
Brightness follows Beer-Lambert: I = I0(x, y) exp(-A), A the summed absorption; then contrast,
camera noise and 8-bit quantisation. The pixel size is :data:`scanstream.store.PIXEL_SIZE_UM`.

The same grain, blur and exposure code renders the focal planes of a whole field of view
(:func:`render_planes`, grayscale, any image size and pixel size: the scanner's 0.283 um/px for
:mod:`scanstream.simulate.volume`), so a crop picked from a simulated z-stack shows the same
physics as a simulated crop.

Every category goes through exactly the same code with the same sheet conditions; nothing
in the image depends on the label except the physics of the object itself.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from scanstream.physics import emulsion as ph
from scanstream.physics.emulsion import ALPHA, GREY, HEAVY, MIP, PARTICLE, PROTON, SCRATCH
from scanstream.simulate.conditions import SheetConditions
from scanstream.simulate.objects import SimObject
from scanstream.store import CROP_SIZE, PIXEL_SIZE_UM

Z_STEP_UM = 3.0  # distance between the three focal planes (developed um)
PLANE_OFFSETS = np.array([-Z_STEP_UM, 0.0, Z_STEP_UM])  # R, G, B relative to the vertex
DEFOCUS_PER_UM = 0.45  # blur sigma (um) per um of defocus
PSF_SIGMA_UM = 0.15
MAX_DEFOCUS_UM = 12.0  # grains further from a plane only add a uniform haze
HALF_FIELD_UM = CROP_SIZE * PIXEL_SIZE_UM / 2 + 4.0  # grains beyond cannot reach the crop
SCRATCH_OPACITY = 0.05
LOBE_OPACITY = 1.4
BLOB_OPACITY = 1.6
FOG_SIGMA_UM = 0.17
FOG_OPACITY = 0.75
JITTER_UM = 0.07  # grain scatter about the ideal trajectory

# Grains imaged sharper than STAMP_MAX_PX are drawn as exact separable Gaussian stamps; blurrier
# ones are shared (linearly in log sigma) between the two nearest of a ladder of blur levels,
# which are convolved at half resolution (sigma below TIER_QUARTER px) or quarter resolution:
# the result is smooth at that scale anyway.
STAMP_MAX_PX, STAMP_RADIUS = 1.6, 4
LEVEL_RATIO = 1.7
LEVELS = STAMP_MAX_PX * LEVEL_RATIO ** np.arange(6)  # 1.6 .. 22 px
TIER_QUARTER = 4.0
_YY, _XX = (g.astype(np.float32) for g in np.mgrid[-1 : 1 : CROP_SIZE * 1j, -1 : 1 : CROP_SIZE * 1j])

_NOISE_BANK: np.ndarray | None = None
_NOISE_BANK_SIZE = 1 << 22


def _noise_bank() -> np.ndarray:
    """A fixed bank of standard normals (same in every process); crops take random windows."""
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(0x5CA4).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    return _NOISE_BANK


def _clip_box(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """Parameter interval [t0, t1] of segment a->b inside the box lo..hi (t0 >= t1: outside)."""
    t0, t1 = 0.0, 1.0
    d = b - a
    for ax in range(3):
        if d[ax] == 0.0:
            if not lo[ax] <= a[ax] <= hi[ax]:
                return 1.0, 0.0
            continue
        ta, tb = (lo[ax] - a[ax]) / d[ax], (hi[ax] - a[ax]) / d[ax]
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    return t0, t1


def _positions(rng: np.random.Generator, t0: float, t1: float, mean: float) -> np.ndarray:
    """Grain positions in [t0, t1]: a Poisson number of them, one per equal sub-interval.

    Stratified rather than uniform: a track develops the silver halide crystals it crosses,
    which are packed evenly, so a saturated (black) track is continuous, not beaded.
    """
    n = int(rng.poisson(mean))
    return t0 + (t1 - t0) * (np.arange(n) + rng.random(n)) / max(n, 1)


def track_grains(obj: SimObject, cond: SheetConditions, rng: np.random.Generator, zlo: float, zhi: float,
                 *, xy_lo: tuple[float, float] | None = None, xy_hi: tuple[float, float] | None = None):
    """Developed grains of every segment within the imaged box.

    The box is x, y in ``xy_lo`` .. ``xy_hi`` (object-frame um; default: the crop's field,
    +-HALF_FIELD_UM) and depth ``zlo`` .. ``zhi``.

    Returns
    -------
    pos : ndarray (n, 3)
        Grain centres, developed um.
    sigma : ndarray (n,)
        Grain radius (Gaussian sigma, um).
    opacity : ndarray (n,)
        Peak optical density of the grain in focus.
    """
    xy_lo = (-HALF_FIELD_UM, -HALF_FIELD_UM) if xy_lo is None else xy_lo
    xy_hi = (HALF_FIELD_UM, HALF_FIELD_UM) if xy_hi is None else xy_hi
    lo = np.array([xy_lo[0], xy_lo[1], zlo])
    hi = np.array([xy_hi[0], xy_hi[1], zhi])
    g0 = cond.mip_grains / 100.0
    scale = np.array([1.0, 1.0, cond.shrinkage])
    out_p, out_s, out_o = [], [], []
    for i in range(len(obj.kinds)):
        a, b = obj.starts[i], obj.ends[i]
        t0, t1 = _clip_box(a, b, lo, hi)
        if t1 <= t0:
            continue
        kind = int(obj.kinds[i])
        length = float(np.linalg.norm((b - a) * scale))  # undeveloped um
        seg = (t1 - t0) * length
        if kind in (MIP, GREY):
            ion = float(obj.ionisation[i])
            g = float(ph.grain_density_per_um(ion, g0=g0))
            t = _positions(rng, t0, t1, g * seg)
            sig = np.full(len(t), float(ph.grain_sigma_um(ion)))
            opa = np.full(len(t), float(ph.grain_opacity(ion)))
        elif kind in (PROTON, ALPHA, HEAVY):
            g_max = float(ph.grain_density_per_um(1e4, g0=g0))
            t = _positions(rng, t0, t1, g_max * seg)
            ion = ph.relative_ionisation(PARTICLE[kind], obj.residual_end[i] + (1.0 - t) * length, cond.density)
            keep = rng.random(len(t)) * g_max < ph.grain_density_per_um(ion, g0=g0)
            t, ion = t[keep], ion[keep]
            sig, opa = ph.grain_sigma_um(ion), ph.grain_opacity(ion)
        elif kind == SCRATCH:
            t = _positions(rng, t0, t1, 3.0 * seg)
            sig = np.full(len(t), float(obj.widths[i]))
            opa = np.full(len(t), SCRATCH_OPACITY)
        else:  # LOBE: a stubby extension of a dust blob
            t = _positions(rng, t0, t1, 5.0 * seg)
            sig = np.full(len(t), float(obj.widths[i]))
            opa = np.full(len(t), LOBE_OPACITY)
        if not len(t):
            continue
        p = a + t[:, None] * (b - a)
        p += rng.normal(0.0, JITTER_UM, p.shape)
        out_p.append(p)
        out_s.append(sig * rng.uniform(0.85, 1.15, len(t)))
        out_o.append(opa)
    for x, y, z, r in obj.blobs:
        n = int(30 + 25 * r * r)
        c = np.array([x, y, z])
        p = c + rng.normal(0.0, 1.0, (n, 3)) * np.array([r / 2, r / 2, r / 2 / cond.shrinkage])
        out_p.append(p)
        out_s.append(rng.uniform(0.3, 0.6, n))
        out_o.append(np.full(n, BLOB_OPACITY))
    if not out_p:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    return np.concatenate(out_p), np.concatenate(out_s), np.concatenate(out_o)


def fog_grains(cond: SheetConditions, rng: np.random.Generator, zlo: float, zhi: float,
               *, xy_lo: tuple[float, float] | None = None, xy_hi: tuple[float, float] | None = None):
    """Random fog grains in the imaged box (as :func:`track_grains`): (pos (n,3), sigma (n,), opacity (n,))."""
    if xy_lo is None and xy_hi is None:
        xy_lo, xy_hi = (-HALF_FIELD_UM, -HALF_FIELD_UM), (HALF_FIELD_UM, HALF_FIELD_UM)
        volume = (2 * HALF_FIELD_UM) ** 2 * (zhi - zlo)
    else:
        volume = (xy_hi[0] - xy_lo[0]) * (xy_hi[1] - xy_lo[1]) * (zhi - zlo)
    n = int(rng.poisson(cond.fog * volume / 1000.0))
    pos = rng.uniform([xy_lo[0], xy_lo[1], zlo], [xy_hi[0], xy_hi[1], zhi], (n, 3))
    return pos, FOG_SIGMA_UM * rng.uniform(0.8, 1.3, n), np.full(n, FOG_OPACITY)


def _splat(rows: np.ndarray, cols: np.ndarray, mass: np.ndarray, layer: np.ndarray, n_layers: int,
           shape: tuple[int, int]) -> np.ndarray:
    """Bilinear deposit of point masses into ``n_layers`` images of ``shape`` (rows, cols)."""
    h, w = shape
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    idx_parts, w_parts = [], []
    for dr, dc, wt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        idx_parts.append((layer[ok] * h + rr[ok]) * w + cc[ok])
        w_parts.append((mass * wt)[ok])
    acc = np.bincount(np.concatenate(idx_parts), np.concatenate(w_parts), minlength=n_layers * h * w)
    return acc.reshape(n_layers, h, w).astype(np.float32)


def _stamps(rows: np.ndarray, cols: np.ndarray, mass: np.ndarray, sigma_px: np.ndarray, plane: np.ndarray, n_planes: int,
            shape: tuple[int, int]) -> np.ndarray:
    """Gaussian spots (separable, normalised to ``mass``) on full-resolution planes (n_planes, *shape)."""
    h, w_img = shape
    off = np.arange(-STAMP_RADIUS, STAMP_RADIUS + 1)
    r0, c0 = np.rint(rows).astype(np.int64), np.rint(cols).astype(np.int64)
    inv = 1.0 / (2.0 * sigma_px**2)
    wy = np.exp(-((off[None, :] - (rows - r0)[:, None]) ** 2) * inv[:, None])
    wx = np.exp(-((off[None, :] - (cols - c0)[:, None]) ** 2) * inv[:, None])
    wy *= (mass / wy.sum(1) / wx.sum(1))[:, None]
    w = wy[:, :, None] * wx[:, None, :]
    rr = r0[:, None, None] + off[None, :, None]
    cc = c0[:, None, None] + off[None, None, :]
    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w_img)
    idx = (plane[:, None, None] * h + rr) * w_img + cc
    acc = np.bincount(idx[ok], w[ok], minlength=n_planes * h * w_img)
    return acc.reshape(n_planes, h, w_img).astype(np.float32)


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of the last two axes (pixel centres aligned, edges repeated)."""
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = a.shape[-2:]
    rows = np.empty(a.shape[:-2] + (2 * h, w + 2), a.dtype)
    rows[..., 0::2, :] = 0.75 * p[..., 1:-1, :] + 0.25 * p[..., :-2, :]
    rows[..., 1::2, :] = 0.75 * p[..., 1:-1, :] + 0.25 * p[..., 2:, :]
    out = np.empty(a.shape[:-2] + (2 * h, 2 * w), a.dtype)
    out[..., 0::2] = 0.75 * rows[..., 1:-1] + 0.25 * rows[..., :-2]
    out[..., 1::2] = 0.75 * rows[..., 1:-1] + 0.25 * rows[..., 2:]
    return out


def absorption_planes(pos: np.ndarray, sigma: np.ndarray, opacity: np.ndarray, planes: np.ndarray,
                      *, shape: tuple[int, int] = (CROP_SIZE, CROP_SIZE), pixel_um: float = PIXEL_SIZE_UM) -> np.ndarray:
    """Absorption images (n_planes, *shape) float32 of grains seen from focal planes at depths ``planes``.

    ``pos`` is in um with x, y = 0 at the image centre (columns along +x, rows along +y);
    ``shape`` (rows, cols) must be a multiple of 4 (the blur tiers). Each grain keeps its
    integrated absorption (opacity x its in-focus area) while its image spreads with defocus.
    """
    h, w = shape
    k = len(planes)
    dz = pos[None, :, 2] - np.asarray(planes)[:, None]  # (planes, grains)
    plane_idx, grain = np.nonzero(np.abs(dz) < MAX_DEFOCUS_UM)
    dz = dz[plane_idx, grain]
    sig = sigma[grain]
    sig_tot = np.sqrt(sig**2 + PSF_SIGMA_UM**2 + (DEFOCUS_PER_UM * dz) ** 2) / pixel_um
    mass = opacity[grain] * 2.0 * np.pi * (sig / pixel_um) ** 2  # integrated absorption (px^2)
    cols = pos[grain, 0] / pixel_um + (w - 1) / 2
    rows = pos[grain, 1] / pixel_um + (h - 1) / 2
    sharp = sig_tot < STAMP_MAX_PX
    out = _stamps(rows[sharp], cols[sharp], mass[sharp], sig_tot[sharp], plane_idx[sharp], k, shape)
    blur = ~sharp
    if not blur.any():
        return out
    rows, cols, mass, plane_idx = rows[blur], cols[blur], mass[blur], plane_idx[blur]
    u = np.clip(np.log(sig_tot[blur] / STAMP_MAX_PX) / np.log(LEVEL_RATIO), 0.0, len(LEVELS) - 1.0)
    lev0 = np.minimum(np.floor(u).astype(np.int64), len(LEVELS) - 2)
    frac = u - lev0
    # share each grain between its two nearest levels
    rows, cols, plane_idx = np.tile(rows, 2), np.tile(cols, 2), np.tile(plane_idx, 2)
    level = np.concatenate([lev0, lev0 + 1])
    mass = np.concatenate([mass * (1.0 - frac), mass * frac])
    half = np.zeros((k, h // 2, w // 2), np.float32)
    for factor, ids in ((2, np.flatnonzero(LEVELS < TIER_QUARTER)), (4, np.flatnonzero(LEVELS >= TIER_QUARTER))):
        sel = (level >= ids[0]) & (level <= ids[-1]) & (mass > 0)
        if not sel.any():
            continue
        size = (h // factor, w // factor)
        nl = len(ids)
        # fine pixel centre p sits at (p + 0.5) / f - 0.5 on the coarse grid
        stack = _splat(
            (rows[sel] + 0.5) / factor - 0.5,
            (cols[sel] + 0.5) / factor - 0.5,
            mass[sel] / factor**2,
            plane_idx[sel] * nl + (level[sel] - ids[0]),
            k * nl,
            size,
        ).reshape(k, nl, *size)
        img = np.zeros((k, *size), np.float32)
        for j, lev in enumerate(ids):
            if stack[:, j].any():
                s = LEVELS[lev] / factor
                img += ndi.gaussian_filter(stack[:, j], (0.0, s, s), mode="constant", truncate=3.0)
        half += img if factor == 2 else _upsample2(img)
    return out + _upsample2(half)


def render_object(obj: SimObject, cond: SheetConditions, rng: np.random.Generator) -> np.ndarray:
    """The crop of one object: uint8 (224, 224, 3), channels = focal planes (see module doc)."""
    # independent streams for the object's grains and for the scene (focus, fog, light, noise),
    # so the same scene can be drawn with and without the object
    rng, scene = rng.spawn(2)
    focus = scene.normal(0.0, cond.focus_error)
    planes = PLANE_OFFSETS + focus - obj.defocus  # object-frame depth of each focal plane
    zlo, zhi = planes.min() - MAX_DEFOCUS_UM, planes.max() + MAX_DEFOCUS_UM
    # Grains exist only inside the emulsion layer (the surface is at depth -obj.depth).
    zlo = max(zlo, -obj.depth)
    pos, sig, opa = track_grains(obj, cond, rng, zlo, zhi)
    fpos, fsig, fopa = fog_grains(cond, scene, zlo, zhi)
    pos = np.concatenate([pos, fpos])
    sig = np.concatenate([sig, fsig])
    opa = np.concatenate([opa, fopa]) * cond.darkness
    # illumination: brightness, gradient, vignetting, slight colour balance
    base = _illumination(scene, cond, _XX, _YY)
    gains = (1.0 + scene.normal(0.0, 0.015, 3)).astype(np.float32)
    noise = _noise(scene, (CROP_SIZE, CROP_SIZE, 3))
    a = np.moveaxis(absorption_planes(pos, sig, opa, planes), 0, -1)
    return _expose(a, base[..., None], gains, cond, noise)


def _illumination(scene: np.random.Generator, cond: SheetConditions, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Illumination (grey levels) over a [-1, 1] x [-1, 1] image grid: level, gradient, vignetting, fog veil."""
    gx, gy = scene.normal(0.0, 0.05, 2)
    vign = scene.uniform(0.0, 0.08)
    level = cond.brightness * scene.uniform(0.95, 1.05) * np.exp(-cond.fog * 0.004 * cond.darkness)  # fog veil
    return (level * (1.0 + gx * xx + gy * yy - vign * (xx**2 + yy**2) / 2)).astype(np.float32)


def _noise(scene: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Camera noise (standard normals) of ``shape``: a random window of the shared bank."""
    bank = _noise_bank()
    size = int(np.prod(shape))
    start = int(scene.integers(0, bank.size - size))
    return bank[start : start + size].reshape(shape)


def _expose(a: np.ndarray, base: np.ndarray, gains, cond: SheetConditions, noise: np.ndarray) -> np.ndarray:
    """Absorption to 8-bit grey levels: Beer-Lambert under ``base`` light, contrast, noise, rounding."""
    img = np.exp(-a)
    img *= base
    img *= gains * cond.contrast
    img += cond.brightness * (1.0 - cond.contrast)
    img += cond.noise * noise
    np.clip(img, 0.0, 255.0, out=img)
    img += 0.5  # round to nearest on the cast
    return img.astype(np.uint8)


def render_planes(
    pos: np.ndarray, sigma: np.ndarray, opacity: np.ndarray, depths: np.ndarray, cond: SheetConditions,
    scene: np.random.Generator, *, shape: tuple[int, int], pixel_um: float, block: int = 8,
) -> np.ndarray:
    """Grayscale focal planes uint8 (len(depths), *shape) of a field of view.

    ``pos`` (n, 3) are grains in um (x, y from the image centre, developed depth), ``sigma``
    and ``opacity`` as from :func:`track_grains` (opacity already times the sheet's darkness);
    ``depths`` the developed depth of each focal plane. One illumination for the field, camera
    noise per plane; ``block`` planes are rendered at a time (memory stays flat).
    """
    h, w = shape
    yy, xx = (g.astype(np.float32) for g in np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j])
    base = _illumination(scene, cond, xx, yy)
    gain = np.float32(1.0 + scene.normal(0.0, 0.015))
    depths = np.asarray(depths, float)
    out = np.empty((len(depths), h, w), np.uint8)
    order = np.argsort(pos[:, 2], kind="stable")
    z_sorted = pos[order, 2]
    for start in range(0, len(depths), block):
        d = depths[start : start + block]
        lo, hi = np.searchsorted(z_sorted, [d.min() - MAX_DEFOCUS_UM, d.max() + MAX_DEFOCUS_UM])
        sel = order[lo:hi]
        a = absorption_planes(pos[sel], sigma[sel], opacity[sel], d, shape=shape, pixel_um=pixel_um)
        for j in range(len(d)):
            out[start + j] = _expose(a[j], base, gain, cond, _noise(scene, shape))
    return out
