"""Shared scenes for the picker's tests: small rendered z-stacks (``from pickscenes import render_stack``).

A 256-pixel field (0.283 um pixels), 11 focal planes 3 um apart from the surface, the
simulator's grain and optics model with no fog unless asked; alpha prongs as a
:class:`scanstream.simulate.objects.SimObject` at given azimuths and dips; a thorium star whose
radon atom moved.
"""

from __future__ import annotations

import numpy as np

from scanstream.physics.emulsion import ALPHA
from scanstream.simulate.conditions import SheetConditions
from scanstream.simulate.objects import SimObject
from scanstream.simulate.render import fog_grains, render_planes, track_grains

PX, STEP, SIZE, N_PLANES, VERTEX_DEPTH, SHRINK = 0.283, 3.0, 256, 11, 15.0, 1.95
HALF = SIZE * PX / 2
CENTRE = (SIZE - 1) / 2


def render_stack(objects=(), *, fog=0.0, seed=0) -> np.ndarray:
    """Planes uint8 (z, y, x) of ``objects``, plane k at depth 3k um (the surface first)."""
    rng = np.random.default_rng(seed)
    cond = SheetConditions(fog=fog, noise=2.0)
    depths = np.arange(N_PLANES) * STEP
    box = {"xy_lo": (-HALF - 4, -HALF - 4), "xy_hi": (HALF + 4, HALF + 4)}
    parts = [track_grains(o, cond, rng, 0.0, depths[-1] + 12, **box) for o in objects]
    parts.append(fog_grains(cond, rng, 0.0, depths[-1] + 12, **box))
    pos, sig, opa = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return render_planes(pos, sig, opa, depths, cond, rng, shape=(SIZE, SIZE), pixel_um=PX)


def alpha_prongs(origins, azimuths, dips, lengths) -> SimObject:
    """Alpha prongs from ``origins`` (um, (n, 3)) at the given azimuths and dips (degrees, undeveloped)."""
    a, d = np.radians(azimuths), np.radians(dips)
    dirs = np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d) / SHRINK], 1)
    starts = np.asarray(origins, float).reshape(-1, 3)
    n = len(a)
    return SimObject(category="test", label=1, starts=starts, ends=starts + dirs * np.asarray(lengths, float)[:, None],
                     kinds=np.full(n, ALPHA, np.int8), residual_end=np.zeros(n), ionisation=np.full(n, np.nan),
                     widths=np.zeros(n), blobs=np.zeros((0, 4)), defocus=0.0, depth=0.0)


#: A thorium star's prongs: azimuths, dips (degrees, undeveloped) and lengths (um); the first two
#: (Th-228, Ra-224) start at the star's origin, the other three (Rn-220, Po-216, Po-212) where the
#: radon atom decayed (:func:`displaced_star`).
TH_STAR = ((100, 230, 10, 140, 270), (10, -15, 5, -10, 20), (22, 24, 38, 44, 60))


def displaced_star(shift) -> tuple[np.ndarray, np.ndarray, SimObject]:
    """(origin, radon's point, the star :data:`TH_STAR`) at the field centre, the radon moved by ``shift``
    (undeveloped um) from the origin before it decayed; points in um (x, y, developed depth)."""
    origin = np.array([0.0, 0.0, VERTEX_DEPTH])
    moved = origin + np.array(shift, float) * np.array([1.0, 1.0, 1.0 / SHRINK])
    return origin, moved, alpha_prongs([origin, origin, moved, moved, moved], *TH_STAR)
