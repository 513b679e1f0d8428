"""What made each picked vertex of a simulated volume: an alpha decay, a second vertex beside one,
another object, or nothing (a fake).

``scanstream pick`` on a simulated volume reports vertices at stage positions; the volume's truth
table (``simulate-volume``'s truth.parquet) holds every object's true vertex. A picked vertex is

* ``alpha``: a true alpha-decay vertex lies within ``xy_um`` in x, y and ``z_um`` in depth (one
  z-step, 3 um by default) - the definition the end-to-end benchmark scores;
* ``dup_near``: no such vertex, but an alpha decay lies within ``near_um`` in x, y - its own vertex
  measured 2-5 um off (the 95th percentile of pick's offset is about 2.5 um) or a second vertex
  close beside it: ambiguous, so a training pool leaves it out;
* ``dup``: an alpha decay within ``duplicate_um`` in x, y - a second vertex of the same star;
* a category name (``1vtx``, ``evap``, ...): the nearest true non-alpha object within
  ``fake_xy_um`` in x, y and ``fake_z_um`` in depth;
* ``fake``: nothing near.

``near_um = 0`` turns ``dup_near`` off (those vertices are then ``dup``), as the end-to-end
benchmark counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MatchRadii:
    """Distances (um) of :func:`vertex_sources` (module docstring)."""

    xy_um: float = 2.0
    z_um: float = 3.0
    near_um: float = 0.0
    duplicate_um: float = 15.0
    fake_xy_um: float = 5.0
    fake_z_um: float = 6.0


def truth_arrays(truth: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions (n, 3) mm, is-alpha (n,), categories (n,)) of a volume's truth rows."""
    pos = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in truth], dtype=float).reshape(-1, 3)
    alpha = np.array([r["label"] == 1 for r in truth], dtype=bool)
    cats = np.array([str(r["category"]) for r in truth], dtype=object)
    return pos, alpha, cats


def vertex_sources(picked_mm: np.ndarray, truth: Sequence[Mapping[str, Any]], radii: MatchRadii = MatchRadii()) -> np.ndarray:
    """What made each picked vertex (positions (k, 3) mm): an array of k source names."""
    tp, lab, cats = truth_arrays(truth)
    out = np.empty(len(picked_mm), dtype=object)
    for i, v in enumerate(np.asarray(picked_mm, dtype=float).reshape(-1, 3)):
        dxy = np.hypot(tp[:, 0] - v[0], tp[:, 1] - v[1]) * 1000.0
        dz = np.abs(tp[:, 2] - v[2]) * 1000.0
        other = (dxy <= radii.fake_xy_um) & (dz <= radii.fake_z_um) & ~lab
        if ((dxy <= radii.xy_um) & (dz <= radii.z_um) & lab).any():
            out[i] = "alpha"
        elif ((dxy <= radii.near_um) & lab).any():
            out[i] = "dup_near"
        elif ((dxy <= radii.duplicate_um) & lab).any():
            out[i] = "dup"
        elif other.any():
            near = np.nonzero(other)[0]
            out[i] = str(cats[near[np.argmin(dxy[near])]])
        else:
            out[i] = "fake"
    return out
