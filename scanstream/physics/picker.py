"""The vertex picker's error model: what a picker working on a z-stack of micrographs can and cannot do.

The simulator applies it to its objects (:func:`scanstream.simulate.picker.pick_features`); the
range-energy fit (:mod:`scanstream.rangeenergy`) folds the same length errors into its line shapes.

* it sees a prong when a track segment passes within ``attach_um`` of the vertex; a track that
  passes *through* the vertex (a crossing) gives two prongs, one each way;
* it follows a prong through the z-stack over ``z_window_um`` of developed depth and out to
  ``follow_um`` in the plate plane: a track leaving the field looks long; depth is read off
  the nearest focal plane (``z_step_um``) and converted with a nominal shrinkage, so a steep
  prong's length is known only to a z-step and, ending between planes, tends to look short;
* thin minimum-ionising tracks (about 28 grains per 100 um) are often missed; black tracks
  rarely; prongs shorter than ``min_length_um`` are not reported;
* two prongs closer in angle than ``merge_angle_deg`` are reported as one (overlap);
* lengths carry a relative and an absolute measurement error and a constant bias;
* a reported prong's direction is off (by more than the angle its errors are matched within,
  docs/pick.md "Measured errors") with probability ``p_misdirect``: no feature changes, but the
  measured table counts the prong as missed and as an extra prong;
* a reported prong is reported twice (split: a second prong within a few degrees of it, of a
  length uniform in ``split_length_um``) with probability ``p_split``;
* a reported prong comes with a stub (a short extra prong in a direction of its own) with
  probability ``stub_rate``.

An out-of-focus object (``defocus``) is seen worse: lower detection, larger errors.

The default parameters are set by hand (docs/simulator.md, "The picker's features"). The picker's
measured errors (``benchmarks/picker_errors.py --table``) are a versioned JSON table
(:data:`ERROR_TABLE_FORMAT`, read by :func:`read_error_table`, schema in docs/formats.md) from
which :func:`scanstream.simulate.pickercal.calibrate_picker` sets them instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanstream.atomic import write_json
from scanstream.errors import InputError
from scanstream.physics.emulsion import ALPHA, GREY, HEAVY, LOBE, MIP, PROTON, SCRATCH


@dataclass(frozen=True)
class PickerModel:
    """Resolution and failure modes of the scanner's vertex picker (lengths in um)."""

    attach_um: float = 2.0  # a segment this close to the vertex is one of its prongs
    z_window_um: float = 30.0  # developed depth the picker follows a prong over (10 z-steps)
    z_step_um: float = 3.0  # depth is read off the focal plane where the prong ends
    follow_um: float = 80.0  # radius in the plate plane out to which a prong is followed
    shrinkage_nominal: float = 2.0  # the picker converts depth with this, not the sheet's own
    p_mip: float = 0.35  # detection probability of a thin minimum-ionising track
    p_grey: float = 0.75
    p_black: float = 0.98  # alphas, slow protons
    p_heavy: float = 0.95  # short thick fragments
    p_surface: float = 0.90  # scratches and dust lobes
    min_length_um: float = 2.5  # shorter prongs are not reported
    merge_angle_deg: float = 12.0  # overlapping prongs are reported as one
    noise_rel: float = 0.04
    noise_abs_um: float = 0.8
    defocus_detection: float = 0.7  # detection factor for objects out of focus
    defocus_noise: float = 2.0  # error factor for objects out of focus
    length_bias_um: float = 0.0  # added to every measured length
    p_misdirect: float = 0.0  # probability that a reported prong's direction is off
    p_split: float = 0.0  # probability that a reported prong is reported twice
    split_length_um: tuple[float, float] = (10.0, 40.0)  # the second prong's measured length: uniform in this range
    stub_rate: float = 0.0  # probability that a reported prong comes with a stub
    stub_length_um: tuple[float, float] = (3.0, 12.0)  # a stub's measured length: uniform in this range

    def p_detect(self, kinds: np.ndarray) -> np.ndarray:
        table = np.zeros(7)
        table[MIP], table[GREY] = self.p_mip, self.p_grey
        table[PROTON], table[ALPHA], table[HEAVY] = self.p_black, self.p_black, self.p_heavy
        table[SCRATCH], table[LOBE] = self.p_surface, self.p_surface
        return table[kinds]


DEFAULT_PICKER = PickerModel()


#: Format name and version of the picker's measured error table (docs/formats.md).
ERROR_TABLE_FORMAT = "scanstream.picker-errors"
ERROR_TABLE_VERSION = 1
#: Keys of one seed group of the table (a measure that could not be made is null).
GROUP_KEYS = (
    "seeds", "fields", "alpha_decays", "alpha_picked", "efficiency",
    "prongs", "extra_prongs_by_length", "split_prongs_by_length", "length_error_by_true_length",
    "vertex_offset_xy_um_q50_68_95", "vertex_offset_z_um_q16_50_84", "multiplicity_measured_minus_true",
    "fake_vertices_per_field", "cuts_kept_of_picked_alpha", "cuts_kept_of_found_alpha",
)
#: Keys of a group's ``prongs``: counts, and each count per true prong.
PRONG_KEYS = ("true", "reported", "matched", "merged", "missed", "extra", "split", "matched_per_true_prong",
              "merged_per_true_prong", "missed_per_true_prong", "extra_per_true_prong", "split_per_true_prong")
#: Keys of each true-length bin of ``length_error_by_true_length``.
BIN_KEYS = ("true_um", "prongs", "median_um", "q16_q84_um")
#: Measured-length bins (um) of the extra prongs (``extra_prongs_by_length``).
EXTRA_BINS_UM = (0.0, 5.0, 10.0, 15.0, 25.0, 40.0, 55.0, 80.0, 10000.0)


def extra_by_length(lengths_um: Any, true_prongs: int, bins: Any = EXTRA_BINS_UM) -> list[dict]:
    """Extra (or split) measured prongs by their measured length (um), per true prong.

    Examples
    --------
    >>> extra_by_length([3.0, 4.0, 30.0], 100, bins=(0.0, 5.0, 20.0, 50.0))
    [{'length_um': [0.0, 5.0], 'per_true_prong': 0.02}, {'length_um': [5.0, 20.0], 'per_true_prong': 0.0}, {'length_um': [20.0, 50.0], 'per_true_prong': 0.01}]
    """
    counts = np.histogram(np.asarray(lengths_um, float), bins=np.asarray(bins, float))[0]
    return [{"length_um": [float(lo), float(hi)], "per_true_prong": round(int(c) / max(int(true_prongs), 1), 5)}
            for lo, hi, c in zip(bins[:-1], bins[1:], counts, strict=True)]


def error_table(groups: Mapping[str, Mapping[str, Any] | None], *, measured: Mapping[str, Any]) -> dict:
    """The picker's measured error table: :data:`GROUP_KEYS` of each seed group's measures.

    ``groups`` maps a group name ("tuning", "held_out") to the measures
    ``benchmarks/picker_errors.py`` computes for it (extra keys are dropped; a group that is None
    is left out); ``measured`` says how (commit, command, seeds' volumes), copied as it is.

    Examples
    --------
    >>> g = {k: None for k in GROUP_KEYS} | {"seeds": [1], "detect_seconds_per_field": 0.4}
    >>> t = error_table({"tuning": g, "held_out": None}, measured={"commit": "abc"})
    >>> t["format"], t["version"], list(t["groups"]), "detect_seconds_per_field" in t["groups"]["tuning"]
    ('scanstream.picker-errors', 1, ['tuning'], False)
    """
    return {"format": ERROR_TABLE_FORMAT, "version": ERROR_TABLE_VERSION, "measured": dict(measured),
            "groups": {name: {k: g[k] for k in GROUP_KEYS} for name, g in groups.items() if g is not None}}


def write_error_table(path: str | os.PathLike, table: Mapping[str, Any]) -> Path:
    """Write an :func:`error_table` to ``path`` (JSON, atomically) after checking it as a reader would."""
    check_error_table(table, str(path))
    return write_json(path, table)


def _need(obj: Any, key: str, where: str, source: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise InputError(f"{source}: picker error table lacks {where}{key}")
    return obj[key]


def check_error_table(table: Any, source: str = "picker error table") -> dict:
    """``table`` itself when it has this format's name, version and every key; else an
    :class:`~scanstream.errors.InputError` naming ``source`` and the first key missing or wrong."""
    fmt = _need(table, "format", "", source)
    if fmt != ERROR_TABLE_FORMAT:
        raise InputError(f"{source}: format {fmt!r} is not {ERROR_TABLE_FORMAT!r}")
    version = _need(table, "version", "", source)
    if version != ERROR_TABLE_VERSION:
        raise InputError(f"{source}: {ERROR_TABLE_FORMAT} version {version!r} is not {ERROR_TABLE_VERSION} (this reader)")
    _need(table, "measured", "", source)
    groups = _need(table, "groups", "", source)
    if not isinstance(groups, Mapping) or not groups:
        raise InputError(f"{source}: picker error table has no seed group under 'groups'")
    for name, g in groups.items():
        for key in GROUP_KEYS:
            _need(g, key, f"groups.{name}.", source)
        for key in PRONG_KEYS:
            _need(g["prongs"], key, f"groups.{name}.prongs.", source)
        bins = g["length_error_by_true_length"]
        if not isinstance(bins, list):
            raise InputError(f"{source}: groups.{name}.length_error_by_true_length is not a list of bins")
        for i, b in enumerate(bins):
            for key in BIN_KEYS:
                _need(b, key, f"groups.{name}.length_error_by_true_length[{i}].", source)
        for hist in ("extra_prongs_by_length", "split_prongs_by_length"):
            for i, b in enumerate(g[hist] or []):
                for key in ("length_um", "per_true_prong"):
                    _need(b, key, f"groups.{name}.{hist}[{i}].", source)
    return dict(table)


def read_error_table(source: str | os.PathLike | Mapping[str, Any]) -> dict:
    """The picker's measured error table from a JSON file (or a mapping, checked the same way).

    Raises
    ------
    InputError
        One line naming the file and what is wrong: missing, not JSON, another format or
        version, a key missing.
    """
    if isinstance(source, Mapping):
        return check_error_table(source)
    path = Path(source)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such picker error table") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the picker error table ({type(e).__name__})") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    return check_error_table(table, str(path))
