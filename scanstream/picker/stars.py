"""Each star once (criterion 8 of :mod:`scanstream.picker.detect`): duplicate vertices of one star merged.

Candidates more than ``merge_um`` apart (criterion 6) can still be one star: a point 6-8 um out
on a prong sees the same prongs, and the star's own point two or three planes off (steep
prongs, a crossing track) is a second vertex. Measured on the tuning seeds (docs/pick.md,
"Measured errors"), 0.23 of the picked vertices had another within 8 um before this rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def measured(v) -> tuple:
    """Sort key of a :class:`scanstream.picker.detect.Vertex`, best measured first: three or more
    reported prongs before fewer, then the smallest ``line_miss_um`` (its prongs' fitted lines
    pass closest to it). Not the most prongs: a point a plane or two off a star sees a crossing
    track's two halves as extra prongs, and a point beside it sees the same prongs."""
    return (-min(v.multiplicity, 3), v.line_miss_um)


def one_per_star(stars: Sequence[tuple], *, star_um: float, star_dz_um: float) -> list:
    """The vertices of ``stars`` left when, of vertices on the same segment within ``star_um`` in x, y and
    ``star_dz_um`` in depth of a better measured (:func:`measured`) one already kept, only that one stays.

    ``stars`` are (position um (x, y, developed depth), segment label, Vertex); the kept vertices
    come back in ``stars``' order. ``star_um`` 0 keeps every vertex apart from exact repeats.
    """
    order = sorted(range(len(stars)), key=lambda k: measured(stars[k][2]))
    kept: list[int] = []
    for k in order:
        at, lab, _ = stars[k]
        if not any(stars[m][1] == lab and np.hypot(*(at[:2] - stars[m][0][:2])) <= star_um
                   and abs(at[2] - stars[m][0][2]) <= star_dz_um for m in kept):
            kept.append(k)
    return [stars[k][2] for k in sorted(kept)]
