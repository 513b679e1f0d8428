"""Sheet conditions: the per-sheet physics and optics that make one sheet differ from another.

Each simulated sheet has one :class:`SheetConditions`. Defaults are drawn from the seed and the
sheet name (so TEST can come from a different sheet than TRAIN, as in the paper); any value can
be fixed on the command line (``--density 3.60``) or in a TOML / JSON conditions file whose keys
are the field names below. Unknown names and out-of-range values are errors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from scanstream.config import read_toml
from scanstream.errors import ConfigError, InputError


@dataclass(frozen=True)
class SheetConditions:
    """Physical and optical conditions of one emulsion sheet.

    Attributes
    ----------
    density : float
        Emulsion density, g/cm3 (calibrated E07 sheets: about 3.56-3.74); sets alpha ranges.
    shrinkage : float
        Thickness before / after development (E07: about 1.9-2.0); scales z only.
    fog : float
        Fog grains per 1000 um3 of developed emulsion.
    darkness : float
        Development darkness: multiplies the optical density of every grain.
    contrast : float
        Image contrast about the mean brightness.
    focus_error : float
        Sigma (um) of the error of the focal planes' z with respect to the vertex.
    mip_grains : float
        Grains per 100 um on a minimum-ionising track (25-30).
    brightness : float
        Mean background grey level of the illumination (0-255).
    noise : float
        Camera noise sigma (grey levels).
    """

    density: float = 3.60
    shrinkage: float = 1.95
    fog: float = 5.0
    darkness: float = 1.0
    contrast: float = 1.0
    focus_error: float = 0.6
    mip_grains: float = 28.0
    brightness: float = 190.0
    noise: float = 3.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            lo, hi = LIMITS[f.name]
            if not isinstance(value, (int, float)) or not np.isfinite(value) or not lo <= value <= hi:
                raise InputError(f"sheet condition {f.name}={value!r} is outside [{lo}, {hi}]")

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


#: Accepted range of each condition (anything outside is a typo, not a sheet).
LIMITS: dict[str, tuple[float, float]] = {
    "density": (3.0, 4.5),
    "shrinkage": (1.0, 3.5),
    "fog": (0.0, 100.0),
    "darkness": (0.1, 3.0),
    "contrast": (0.1, 3.0),
    "focus_error": (0.0, 10.0),
    "mip_grains": (5.0, 80.0),
    "brightness": (50.0, 250.0),
    "noise": (0.0, 30.0),
}
CONDITION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SheetConditions))

#: The range each default is drawn from (uniform), per sheet.
DRAW_RANGES: dict[str, tuple[float, float]] = {
    "density": (3.52, 3.72),
    "shrinkage": (1.90, 2.00),
    "fog": (3.0, 8.0),
    "darkness": (0.85, 1.15),
    "contrast": (0.85, 1.15),
    "focus_error": (0.3, 1.0),
    "mip_grains": (25.0, 31.0),
    "brightness": (170.0, 210.0),
    "noise": (2.0, 4.5),
}


#: Domain randomisation for training pools (``draw="wide"``): the optical and development
#: conditions drawn well past :data:`DRAW_RANGES` (roughly twice as far from the middle on each
#: side), so that a network trained on them meets paler, darker, foggier, noisier and less sharply
#: focused sheets than the nominal draw as conditions it has seen. Density and shrinkage (which
#: set the prong lengths, hence the picker's features and the prefilter) stay nominal.
WIDE_DRAW_RANGES: dict[str, tuple[float, float]] = {
    **DRAW_RANGES,
    "fog": (1.0, 18.0),
    "darkness": (0.55, 1.60),
    "contrast": (0.60, 1.45),
    "focus_error": (0.2, 1.6),
    "mip_grains": (21.0, 35.0),
    "brightness": (130.0, 235.0),
    "noise": (1.0, 8.0),
}

#: The named draws a pool or a sheet can use.
DRAWS: dict[str, dict[str, tuple[float, float]]] = {"nominal": DRAW_RANGES, "wide": WIDE_DRAW_RANGES}


def sheet_key(sheet: str) -> int:
    """A stable 63-bit integer for a sheet name (seeds per-sheet random streams)."""
    return int.from_bytes(hashlib.blake2b(sheet.encode(), digest_size=8).digest(), "little") >> 1


def draw_conditions(sheet: str, seed: int, *, draw: str = "nominal") -> SheetConditions:
    """Per-sheet default conditions drawn from ``seed`` and the sheet name (deterministic).

    ``draw`` names the ranges (:data:`DRAWS`): ``nominal`` (:data:`DRAW_RANGES`, every simulated
    sheet by default) or ``wide`` (:data:`WIDE_DRAW_RANGES`, domain randomisation for training).
    """
    if draw not in DRAWS:
        raise InputError(f"unknown condition draw {draw!r} (known: {', '.join(DRAWS)})")
    ranges = DRAWS[draw]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), sheet_key(sheet), 7]))
    return SheetConditions(**{name: float(rng.uniform(*ranges[name])) for name in CONDITION_NAMES})


def parse_overrides(values: Mapping[str, Any], *, source: str = "conditions") -> dict[str, float]:
    """Validate condition names and values; returns ``{name: float}``.

    Raises
    ------
    InputError
        An unknown name or a value that is not a number.
    """
    out: dict[str, float] = {}
    for name, value in values.items():
        key = str(name).replace("-", "_")
        if key not in CONDITION_NAMES:
            raise InputError(f"{source}: unknown sheet condition {name!r} (known: {', '.join(CONDITION_NAMES)})")
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{source}: sheet condition {name}={value!r} is not a number") from None
    return out


def parse_assignments(items: list[str] | None) -> dict[str, float]:
    """``["density=3.6", "fog=4"]`` (the ``--condition`` flag) to validated overrides."""
    values: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--condition {item!r}: expected NAME=VALUE")
        values[name.strip()] = value.strip()
    return parse_overrides(values, source="--condition")


def read_conditions_file(path: str | os.PathLike) -> dict[str, float]:
    """Condition overrides from a TOML (``.toml``) or JSON file of ``name = value`` pairs.

    Errors name the file (and the key): :class:`InputError`, as for conditions given as flags.
    """
    p = Path(path)
    if p.suffix.lower() != ".json":
        try:
            data = read_toml(p)
        except ConfigError as exc:  # "<file>: no such config file" / "not a readable TOML file: ..."
            raise InputError(str(exc)) from None
        return parse_overrides(data, source=str(p))
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"{p}: cannot read conditions file: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"{p}: not a valid JSON conditions file: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: a conditions file holds name = value pairs")
    return parse_overrides(data, source=str(p))


def resolve_conditions(
    sheet: str,
    seed: int,
    *,
    conditions: SheetConditions | Mapping[str, Any] | str | os.PathLike | None = None,
    draw: str = "nominal",
) -> SheetConditions:
    """The conditions of ``sheet``: drawn defaults, then overrides.

    Parameters
    ----------
    conditions : SheetConditions, mapping, path or None
        A complete :class:`SheetConditions` (used as is), a mapping of overrides, or a
        conditions file.
    """
    if isinstance(conditions, SheetConditions):
        return conditions
    base = draw_conditions(sheet, seed, draw=draw)
    if conditions is None:
        return base
    if isinstance(conditions, Mapping):
        overrides = parse_overrides(conditions)
    else:
        overrides = read_conditions_file(conditions)
    return replace(base, **overrides)
