"""A physics-grounded simulator of vertex-like objects in nuclear emulsion (docs/physics.md).

``objects`` (3-D objects per category), ``picker`` (the scanner's features, with the error
model of :mod:`scanstream.physics.picker`), ``render`` (the microscope), ``conditions`` (per-sheet
conditions) and ``dataset`` (stores with truth, the paper's Table 1, parallel rendering).
"""

from __future__ import annotations

from scanstream.simulate.conditions import SheetConditions, draw_conditions, resolve_conditions
from scanstream.simulate.dataset import (
    TABLE1,
    simulate_dataset,
    simulate_objects,
    simulate_store,
    simulate_table,
    table1_counts,
)
from scanstream.simulate.objects import CATEGORIES, SimObject, make_object
from scanstream.simulate.picker import pick_features
from scanstream.simulate.render import render_object

__all__ = [
    "CATEGORIES",
    "TABLE1",
    "SheetConditions",
    "SimObject",
    "draw_conditions",
    "make_object",
    "pick_features",
    "render_object",
    "resolve_conditions",
    "simulate_dataset",
    "simulate_objects",
    "simulate_store",
    "simulate_table",
    "table1_counts",
]
