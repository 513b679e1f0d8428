"""The range-energy relation of alpha particles in emulsion, as a function of density (see the package docstring)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from scanstream.errors import InputError
from scanstream.physics import emulsion as ph

logger = logging.getLogger(__name__)

REFERENCE_DENSITY = ph.REFERENCE_DENSITY  # g/cm3
DENSITY_EXPONENT = ph.DENSITY_EXPONENT  # R ~ rho^-0.63
POWER_A_UM = ph.POWER_A_UM
POWER_B = ph.POWER_B
RESULT_FILE = "rangeenergy.json"
SPECTRUM_FILE = "spectrum.png"


@dataclass(frozen=True)
class Line:
    """One alpha line: nuclide, chain ("Th" or "U"), energy (MeV), range at 3.60 g/cm3 (um).

    ``intensity`` is alphas of this line per decay chain (Po-212 0.64, Bi-212 0.36, others 1).
    """

    nuclide: str
    chain: str
    energy_mev: float
    range_um: float
    intensity: float


def _lines() -> tuple[Line, ...]:
    th = [(n, 1.0) for n in ph.TH_CHAIN_COMMON] + [("Po-212", ph.TH_PO212_FRACTION), ("Bi-212", 1 - ph.TH_PO212_FRACTION)]
    u = [(n, 1.0) for n in ph.U_CHAIN]
    out = [Line(n, "Th", ph.NUCLIDES[n].energy_mev, ph.NUCLIDES[n].range_um, w) for n, w in th]
    out += [Line(n, "U", ph.NUCLIDES[n].energy_mev, ph.NUCLIDES[n].range_um, w) for n, w in u]
    return tuple(out)


#: The ten lines of the table in docs/physics.md, thorium chain first.
LINES: tuple[Line, ...] = _lines()
_IS_TH = np.array([ln.chain == "Th" for ln in LINES])
_INTENSITY = np.array([ln.intensity for ln in LINES])
_ENERGIES = np.array([ln.energy_mev for ln in LINES])


def range_um(energy_mev: float | np.ndarray, density: float = REFERENCE_DENSITY) -> np.ndarray:
    """Range (um, undeveloped emulsion) of an alpha of ``energy_mev`` (MeV) at ``density`` (g/cm3).

    Examples
    --------
    >>> round(float(range_um(8.785)), 1)
    49.8
    """
    _check_density(density)
    return ph.alpha_range_um(energy_mev, density)


def energy_mev(range_um_: float | np.ndarray, density: float = REFERENCE_DENSITY) -> np.ndarray:
    """Kinetic energy (MeV) of an alpha of range ``range_um_`` (um) at ``density`` (g/cm3)."""
    _check_density(density)
    return ph.alpha_energy_mev(range_um_, density)


def power_law_range_um(energy_mev_: float | np.ndarray, density: float = REFERENCE_DENSITY) -> np.ndarray:
    """The power law R = 1.98 E^1.48 um (E in MeV) scaled to ``density``: within ~1 um of the table."""
    _check_density(density)
    e = np.asarray(energy_mev_, dtype=np.float64)
    return POWER_A_UM * e**POWER_B * (density / REFERENCE_DENSITY) ** DENSITY_EXPONENT


def line_ranges_um(density: float) -> np.ndarray:
    """Ranges (um) of :data:`LINES` at ``density`` (g/cm3), shape (10,)."""
    return range_um(_ENERGIES, density)


def density_from_range(measured_um: float, energy_mev_: float = 8.785) -> float:
    """The density (g/cm3) at which an alpha of ``energy_mev_`` has range ``measured_um`` (um)."""
    if not measured_um > 0:
        raise InputError(f"range must be positive, got {measured_um!r} um")
    r_ref = float(ph.alpha_range_um(energy_mev_))
    return float(REFERENCE_DENSITY * (measured_um / r_ref) ** (1.0 / DENSITY_EXPONENT))


def _check_density(density: float) -> None:
    if not (isinstance(density, (int, float, np.floating)) and 1.0 <= float(density) <= 10.0):
        raise InputError(f"density must be a number in [1, 10] g/cm3, got {density!r}")


# -- the measured spectrum ------------------------------------------------------------------
