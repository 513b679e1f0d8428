"""Which field of view owns a point where the scanner's fields overlap.

A scanner steps its stage by a little less than the field's width, so neighbouring fields
share a strip of emulsion (docs/pick.md, "Overlapping fields"). A star in that strip is imaged
twice, and a star at one field's edge (cut there) lies well inside its neighbour. Each point of
the scanned area is given to one field: among the fields whose image contains it, the one whose
centre is nearest in stage x, y (ties to the field listed first). The fields' owned regions are
then the Voronoi cells of their centres, clipped to the scanned area, and they tile it without
overlap: the picker keeps only the vertices a field owns (:func:`keep_owned`), so a star is
reported once, by the field where it lies furthest from an edge; the simulator
(:mod:`scanstream.simulate.volume`) places each object in the one field that owns it.

The rule reads only the fields' stage positions, pixel axes and image sizes, so it is the same
in every process and on every rerun. Only fields whose images overlap by more than a pixel
(:func:`overlapping`) take points from each other: fields edge to edge keep every vertex they
find, even one placed just past the last pixel; fields at the same stage position (a field
scanned twice) are not neighbours, and a field without stage positions owns all its vertices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Fields whose centres are closer than this (in pixels) are the same place scanned twice.
SAME_PLACE_PX = 1.0


@dataclass(frozen=True)
class Footprint:
    """Where a field's image lies on the stage.

    Attributes
    ----------
    name : str
        The field's name in its volume.
    index : int
        Its place in the volume's order (ties in distance go to the lower index).
    centre_mm : tuple of float
        Stage x, y of the image centre (mm).
    axes_mm : tuple of float
        (a, b, c, d): stage x = a col + b row, stage y = c col + d row (mm per pixel, about the
        centre).
    shape : tuple of int
        The image's (rows, cols).
    """

    name: str
    index: int
    centre_mm: tuple[float, float]
    axes_mm: tuple[float, float, float, float]
    shape: tuple[int, int]

    def contains(self, xy_mm: np.ndarray) -> np.ndarray:
        """bool (n,): which stage points ``xy_mm`` (n, 2) mm lie on the image (its pixels' full extent).

        Examples
        --------
        >>> f = Footprint("0", 0, (1.0, 2.0), (0.001, 0.0, 0.0, 0.001), (100, 100))
        >>> f.contains(np.array([[1.0, 2.0], [1.049, 2.0], [1.051, 2.0]])).tolist()
        [True, True, False]
        """
        a, b, c, d = self.axes_mm
        rel = np.asarray(xy_mm, float).reshape(-1, 2) - np.asarray(self.centre_mm)
        px = np.linalg.solve(np.array([[a, b], [c, d]]), rel.T).T  # (col, row) offsets from the centre
        return (np.abs(px[:, 0]) <= self.shape[1] / 2) & (np.abs(px[:, 1]) <= self.shape[0] / 2)

    @property
    def pixel_mm(self) -> float:
        a, b, c, d = self.axes_mm
        return float(np.sqrt(abs(a * d - b * c)))

    def half_extent_mm(self) -> tuple[float, float]:
        """Half the stage x and y extent (mm) of the image's bounding box."""
        a, b, c, d = self.axes_mm
        ny, nx = self.shape
        return (abs(a) * nx + abs(b) * ny) / 2, (abs(c) * nx + abs(d) * ny) / 2


def overlapping(f: Footprint, g: Footprint) -> bool:
    """Whether the images of ``f`` and ``g`` share more than a pixel's width in x and in y (their
    bounding boxes on the stage): fields edge to edge do not; a field scanned twice (centres within
    :data:`SAME_PLACE_PX`) does not count either.

    Examples
    --------
    >>> f = Footprint("0", 0, (0.0, 0.0), (0.001, 0.0, 0.0, 0.001), (100, 100))
    >>> [overlapping(f, Footprint("1", 1, (x, 0.0), f.axes_mm, f.shape)) for x in (0.08, 0.1, 0.0)]
    [True, False, False]
    """
    (fx, fy), (gx, gy) = f.half_extent_mm(), g.half_extent_mm()
    dx, dy = abs(f.centre_mm[0] - g.centre_mm[0]), abs(f.centre_mm[1] - g.centre_mm[1])
    px = min(f.pixel_mm, g.pixel_mm)
    if np.hypot(dx, dy) < SAME_PLACE_PX * px:
        return False
    return fx + gx - dx > px and fy + gy - dy > px


def footprint(fov: Any, index: int) -> Footprint | None:
    """The :class:`Footprint` of a volume's field of view (:class:`scanstream.store.volume.FieldOfView`),
    or None when its planes lack stage positions."""
    x, y = np.asarray(fov.stage_x_mm, float), np.asarray(fov.stage_y_mm, float)
    if not len(x) or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    aff = fov.affine_mm
    if aff is None:
        aff = (fov.pixel_size_um[0] / 1000.0, 0.0, 0.0, fov.pixel_size_um[1] / 1000.0)
    ny, nx = fov.shape[1:]
    return Footprint(str(fov.name), index, (float(np.mean(x)), float(np.mean(y))), tuple(float(v) for v in aff),
                     (int(ny), int(nx)))


def footprints(fields: Iterable[Any]) -> tuple[Footprint, ...]:
    """The footprints of a volume's fields, in its order (those without stage positions left out)."""
    found = (footprint(f, i) for i, f in enumerate(fields))
    return tuple(f for f in found if f is not None)


def neighbourhoods(fields: Sequence[Footprint]) -> dict[str, tuple[Footprint, ...]]:
    """Per field name, its own footprint and then those of the fields whose images overlap it
    (:func:`overlapping`): all that :func:`keep_owned` reads for that field, so a pick task
    carries a handful of footprints instead of the whole sheet's (30,000 fields: 3 MB a task).

    Examples
    --------
    >>> fs = [Footprint(str(i), i, (0.08 * i, 0.0), (0.001, 0.0, 0.0, 0.001), (100, 100)) for i in range(4)]
    >>> [[g.name for g in near] for near in neighbourhoods(fs).values()]
    [['0', '1'], ['1', '0', '2'], ['2', '1', '3'], ['3', '2']]
    """
    from scipy.spatial import cKDTree

    if not fields:
        return {}
    centres = np.array([f.centre_mm for f in fields], float)
    reach = 2.0 * max(float(np.hypot(*f.half_extent_mm())) for f in fields)  # centres of overlapping images
    found = cKDTree(centres).query_ball_point(centres, reach)
    return {f.name: (f, *(fields[j] for j in sorted(near) if j != i and overlapping(f, fields[j])))
            for i, (f, near) in enumerate(zip(fields, found, strict=True))}


def owned(xy_mm: np.ndarray, own: Footprint, fields: Sequence[Footprint]) -> np.ndarray:
    """bool (n,): which stage points ``xy_mm`` (n, 2) mm field ``own`` owns among ``fields`` (module docstring).

    ``own`` is taken to image every point (a vertex it found just past its last pixel stays
    its own unless a neighbour's image holds it).

    Examples
    --------
    Two 100-pixel fields of 1 um pixels, 80 um apart: they share 20 um, split at the middle.

    >>> a = Footprint("0", 0, (0.0, 0.0), (0.001, 0.0, 0.0, 0.001), (100, 100))
    >>> b = Footprint("1", 1, (0.08, 0.0), (0.001, 0.0, 0.0, 0.001), (100, 100))
    >>> pts = np.array([[0.035, 0.0], [0.045, 0.0], [0.04, 0.0]])
    >>> owned(pts, a, [a, b]).tolist(), owned(pts, b, [a, b]).tolist()
    ([True, False, True], [False, True, False])
    """
    xy = np.asarray(xy_mm, float).reshape(-1, 2)
    keep = np.ones(len(xy), bool)
    d_own = np.hypot(*(xy - np.asarray(own.centre_mm)).T)
    for other in fields:
        if other.index == own.index or not overlapping(own, other):
            continue
        d = np.hypot(*(xy - np.asarray(other.centre_mm)).T)
        nearer = (d < d_own) | ((d == d_own) & (other.index < own.index))
        keep &= ~(nearer & other.contains(xy))
    return keep


def keep_owned(fov: Any, vertices: Sequence[Any], fields: Sequence[Footprint]) -> list[Any]:
    """The vertices (with .z, .y, .x in plane and pixel units) of ``fov`` that it owns among
    ``fields`` (:func:`footprints` of its volume); all of them when ``fov`` has no footprint there."""
    own = next((f for f in fields if f.name == str(fov.name)), None)
    if own is None or len(fields) < 2 or not vertices:
        return list(vertices)
    xy = np.array([fov.pixel_to_stage(v.z, v.y, v.x)[:2] for v in vertices], float)
    mask = owned(xy, own, fields)
    return [v for v, k in zip(vertices, mask, strict=True) if k]
