"""Emulsion physics: range-energy, decay chains, ionisation, grain density, track kinds.

The simulator draws and renders objects with it; the range-energy fit (:mod:`scanstream.rangeenergy`)
uses the same relation.

Every figure here comes from ``docs/physics.md`` (the paper, the group's range-energy table, standard
emulsion physics). Lengths are micrometres (um) of *undeveloped* emulsion unless a name says
``dev`` (developed, z shrunk by the shrinkage factor); energies are MeV; densities g/cm3.

The alpha range-energy relation interpolates the group's table (ranges at 3.60 g/cm3, from
their Barkas-type code) in log-log, continues it outside the table with the power law
R = a E^b (a = 1.98 um, b = 1.48), and scales with density as R ~ rho^-0.63.

>>> round(float(alpha_range_um(8.785)), 1)
49.8
>>> round(float(alpha_range_um(8.785, density=3.50)), 2)
50.65
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFERENCE_DENSITY = 3.60  # g/cm3: the density the range table is computed at
DENSITY_EXPONENT = -0.63  # R ~ rho^-0.63 between 3.50 and 3.815 g/cm3 (Po-212 ranges)
POWER_A_UM = 1.98  # R = a E^b fits the table within ~1 um
POWER_B = 1.48
STRAGGLING_UM = 1.0  # range straggling of single alpha tracks (sigma)
PROTON_RANGE_OFFSET_UM = 3.5  # R_p(E) ~ R_alpha(4E) - 3.5 um
LAYER_UM = 450.0  # each emulsion layer, about 450 um thick before development

#: Track kinds: how a segment ionises (the simulator's render) and how the picker sees it
#: (:class:`scanstream.physics.picker.PickerModel`).
MIP, GREY, PROTON, ALPHA, HEAVY, SCRATCH, LOBE = range(7)
KIND_NAMES = ("mip", "grey", "proton", "alpha", "heavy", "scratch", "lobe")
PARTICLE = {PROTON: "proton", ALPHA: "alpha", HEAVY: "heavy"}


@dataclass(frozen=True)
class Nuclide:
    """One alpha emitter of a decay chain: name, alpha energy (MeV), range at 3.60 g/cm3 (um)."""

    name: str
    energy_mev: float
    range_um: float


#: The range table of docs/physics.md, "Alpha decays" (density 3.60 g/cm3).
NUCLIDES: dict[str, Nuclide] = {
    n.name: n
    for n in (
        Nuclide("Th-228", 5.423, 24.2),
        Nuclide("Ra-224", 5.685, 25.9),
        Nuclide("Rn-220", 6.288, 30.0),
        Nuclide("Po-216", 6.778, 33.6),
        Nuclide("Po-212", 8.785, 49.8),
        Nuclide("Bi-212", 6.051, 28.4),
        Nuclide("Ra-226", 4.784, 20.2),
        Nuclide("Rn-222", 5.490, 24.6),
        Nuclide("Po-218", 6.002, 28.0),
        Nuclide("Po-214", 7.687, 40.6),
    )
}

#: Thorium series from Th-228: five alphas; Bi-212 decays by beta to Po-212 (64 %) or by alpha (36 %).
TH_CHAIN_COMMON = ("Th-228", "Ra-224", "Rn-220", "Po-216")
TH_PO212_FRACTION = 0.64
#: Uranium series from Ra-226: four alphas (Pb-214 and Bi-214 are beta emitters).
U_CHAIN = ("Ra-226", "Rn-222", "Po-218", "Po-214")
#: Nuclides emitted after the radon atom has (possibly) diffused away from the first vertex.
AFTER_RADON = {"Rn-220", "Po-216", "Po-212", "Bi-212", "Rn-222", "Po-218", "Po-214"}

_TABLE = sorted((n.energy_mev, n.range_um) for n in NUCLIDES.values())
_LOG_E = np.log([e for e, _ in _TABLE])
_LOG_R = np.log([r for _, r in _TABLE])


def _density_factor(density: float) -> float:
    return float((density / REFERENCE_DENSITY) ** DENSITY_EXPONENT)


def alpha_range_um(energy_mev, density: float = REFERENCE_DENSITY) -> np.ndarray:
    """Range (um) of an alpha particle of the given kinetic energy (MeV) in emulsion.

    Parameters
    ----------
    energy_mev : float or array (n,)
        Kinetic energy, MeV (> 0).
    density : float
        Emulsion density, g/cm3.

    Returns
    -------
    ndarray (n,) or 0-d
        Range in um of undeveloped emulsion.
    """
    e = np.maximum(np.asarray(energy_mev, dtype=np.float64), 1e-3)
    le = np.log(e)
    lr = np.interp(le, _LOG_E, _LOG_R)
    lo, hi = le < _LOG_E[0], le > _LOG_E[-1]
    lr = np.where(lo, _LOG_R[0] + POWER_B * (le - _LOG_E[0]), lr)
    lr = np.where(hi, _LOG_R[-1] + POWER_B * (le - _LOG_E[-1]), lr)
    return np.exp(lr) * _density_factor(density)


def alpha_energy_mev(range_um, density: float = REFERENCE_DENSITY) -> np.ndarray:
    """Inverse of :func:`alpha_range_um`: kinetic energy (MeV) of an alpha of the given range (um)."""
    r = np.maximum(np.asarray(range_um, dtype=np.float64), 1e-3) / _density_factor(density)
    lr = np.log(r)
    le = np.interp(lr, _LOG_R, _LOG_E)
    le = np.where(lr < _LOG_R[0], _LOG_E[0] + (lr - _LOG_R[0]) / POWER_B, le)
    le = np.where(lr > _LOG_R[-1], _LOG_E[-1] + (lr - _LOG_R[-1]) / POWER_B, le)
    return np.exp(le)


def proton_range_um(energy_mev, density: float = REFERENCE_DENSITY) -> np.ndarray:
    """Range (um) of a proton: about an alpha's at four times the energy, minus 3.5 um."""
    r = alpha_range_um(4.0 * np.asarray(energy_mev, dtype=np.float64), density)
    return np.maximum(r - PROTON_RANGE_OFFSET_UM * _density_factor(density), 0.3)


def heavy_range_um(energy_mev, density: float = REFERENCE_DENSITY) -> np.ndarray:
    """Rough range (um) of a heavy evaporation fragment or recoil nucleus (Li .. O).

    Heavy ions of a few MeV stop within a few um (range about a third of an alpha's of the
    same energy); only the order of magnitude matters for the look of a short thick stub.
    """
    return np.maximum(alpha_range_um(energy_mev, density) / 3.0, 0.5)


MIN_IONISING_DEDX = 1.4 * 1e-4  # MeV cm2/g * (cm/um): dE/dx per (g/cm3) at the minimum


def relative_ionisation(particle: str, residual_um, density: float = REFERENCE_DENSITY) -> np.ndarray:
    """Ionisation dE/dx relative to the minimum-ionising plateau, at a residual range.

    Parameters
    ----------
    particle : {"alpha", "proton", "heavy", "mip"}
        ``mip`` is a relativistic (shower) track: 1 everywhere.
    residual_um : array (n,)
        Residual range (um) of each point along the track; large values mean "still fast".

    Returns
    -------
    ndarray (n,)
        dE/dx / (dE/dx)_min, at least 1.
    """
    r = np.maximum(np.asarray(residual_um, dtype=np.float64), 0.4)
    dmin = MIN_IONISING_DEDX * density
    if particle == "alpha":
        e = alpha_energy_mev(r, density)
        dedx = e / (POWER_B * r)  # dE/dR of the local power law
    elif particle == "proton":
        ra = r + PROTON_RANGE_OFFSET_UM * _density_factor(density)
        dedx = alpha_energy_mev(ra, density) / (POWER_B * ra) / 4.0
    elif particle == "heavy":
        e = alpha_energy_mev(3.0 * r, density)
        dedx = 3.0 * e / (POWER_B * 3.0 * r)
    elif particle == "mip":
        return np.ones_like(r)
    else:
        raise ValueError(f"unknown particle {particle!r}")
    return np.maximum(dedx / dmin, 1.0)


def grain_density_per_um(ionisation, *, g0: float, g_sat: float = 3.2) -> np.ndarray:
    """Developed grains per um of track: g0 at minimum ionisation, saturating at ``g_sat``.

    ``g0`` is the plateau grain density (about 0.25-0.30 per um: 25-30 grains per 100 um);
    heavily ionising tracks saturate into a continuous black line.
    """
    i = np.asarray(ionisation, dtype=np.float64)
    return g_sat * (1.0 - np.exp(-g0 * i / g_sat))


def grain_sigma_um(ionisation) -> np.ndarray:
    """Apparent grain radius (Gaussian sigma, um): thin dotted minimum tracks, thick black alphas.

    Developed grains are about 0.5-1 um across; heavily ionising tracks look broader (delta
    rays, clumped grains), growing with the logarithm of the ionisation: about 0.27 um at
    minimum, 0.40 um for a slow proton, 0.44 um for an alpha and more at its Bragg end.
    """
    return 0.27 + 0.07 * np.log10(np.asarray(ionisation, dtype=np.float64))


def grain_opacity(ionisation) -> np.ndarray:
    """Peak optical density of an in-focus grain (darker for heavier ionisation)."""
    return 0.9 + 0.15 * np.log10(np.asarray(ionisation, dtype=np.float64))


def isotropic_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) unit vectors uniform on the sphere (x, y in the plate plane, z into the depth)."""
    cos_t = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    sin_t = np.sqrt(1.0 - cos_t**2)
    return np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1)


def thorium_chain(rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """(branch name, nuclides) of one thorium-series star from Th-228: five alpha emitters."""
    if rng.random() < TH_PO212_FRACTION:
        return "Th-Po212", TH_CHAIN_COMMON + ("Po-212",)
    return "Th-Bi212", TH_CHAIN_COMMON + ("Bi-212",)


def chain_ranges_um(nuclides, rng: np.random.Generator, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Energies (MeV) and straggled ranges (um) of the alphas of a chain at ``density``."""
    e = np.array([NUCLIDES[n].energy_mev for n in nuclides])
    r = np.array([NUCLIDES[n].range_um for n in nuclides]) * _density_factor(density)
    r = np.maximum(r + rng.normal(0.0, STRAGGLING_UM, len(r)), 1.0)
    return e, r
