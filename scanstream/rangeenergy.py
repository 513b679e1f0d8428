"""The range-energy relation of alpha particles in emulsion, and its calibration per sheet.

Alpha decays of the thorium and uranium chains are mono-energetic lines; their ranges in a
sheet fix the sheet's density (and, through the depth part of each prong, weakly, its shrinkage).

The relation
------------
Ranges at the reference density 3.60 g/cm3 come from the group's range-energy table
(PHYSICS.md: ten alpha lines from Ra-226, 4.784 MeV, 20.2 um, to Po-212, 8.785 MeV, 49.8 um),
interpolated in log-log between its points and continued outside them with the slope of the
power law R = a E^b (a = 1.98 um, b = 1.48, which fits the table within about 1 um). At another
density every range scales as

    R(E, rho) = R(E, 3.60) * (rho / 3.60) ** -0.63

(the Po-212 ranges 47.96 um at 3.815, 49.76 um at 3.60 and 50.65 um at 3.50 g/cm3). The code
is the simulator's (:func:`scanstream.simulate.physics.alpha_range_um`): one copy of the
relation serves both the simulation and the calibration.

>>> round(float(range_um(8.785, density=3.50)), 2)  # the table's 49.8 um scaled; PHYSICS.md: 50.65
50.69
>>> round(density_from_range(49.8, 8.785), 3)
3.6

The measured spectrum
---------------------
The picker reports 3-D prong lengths (:mod:`scanstream.simulate.picker`): the plate-plane part
is exact, the depth part is read off the nearest focal plane (3 um steps of developed depth)
and multiplied by a *nominal* shrinkage 2.0 instead of the sheet's own. A prong of true range
R at polar angle theta (c = |cos theta|, uniform for isotropic decays) is therefore reported
as

    L0 = sqrt(R^2 (1 - c^2) + (2.0 * 3 * round(R c / (3 Sh)))^2)  um

plus the picker's error (4 % of the length and 0.8 um, in quadrature) and the range
straggling (sigma 1 um on R). Flat prongs measure R whatever the shrinkage; steep ones are
stretched by 2.0 / Sh and quantised. Each line's shape (:func:`line_shapes`) integrates this
over c numerically. Each object is a thorium or uranium star whose prongs are different lines
of its chain, or a false candidate whose prongs follow a smooth background (exponential in
length over the fit window).

The fit
-------
:func:`fit_spectrum` maximises the likelihood of the prong lengths inside a window (default
the former method's 15-55 um, so selected candidates and verified decays are treated alike)
over the density, the shrinkage (with a Gaussian prior, default 1.95 +- 0.03, the E07 span),
the share of thorium-series stars, the background fraction and its slope. It starts from a
scan over density (the likelihood has local maxima where lines swap places), then polishes
with L-BFGS-B. The density's error comes from its profile likelihood (where it has risen by
1/2, the other parameters re-fitted), the shrinkage's from the same profile plus its
conditional curvature, the others' from the inverse Hessian; a bootstrap over objects on
request.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import optimize, special

from scanstream import baseline as bl
from scanstream.atomic import atomic_path
from scanstream.errors import InputError
from scanstream.simulate import physics as ph
from scanstream.simulate.picker import DEFAULT_PICKER, PickerModel

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


#: The ten lines of PHYSICS.md's table, thorium chain first.
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
@dataclass(frozen=True)
class SpectrumModel:
    """How the picker turns a line into measured lengths (um); defaults from the picker and PHYSICS.md.

    Attributes
    ----------
    straggling_um : float
        Range straggling, sigma (um).
    noise_rel, noise_abs_um : float
        The picker's length error: relative, and absolute (um), added in quadrature.
    z_step_um : float
        Developed depth between focal planes (um); depth is read to the nearest plane.
    shrinkage_nominal : float
        The shrinkage the picker converts depth with (not the sheet's own).
    window_um : (float, float)
        Prong lengths fitted (um); default the former method's length cuts.
    n_gauss : int
        Gauss-Legendre points per focal-plane cell of the integral over the prong's |cos theta|.
    grid_step_um : float
        Spacing of the tabulated line shapes (um); data are interpolated linearly.
    """

    straggling_um: float = ph.STRAGGLING_UM
    noise_rel: float = DEFAULT_PICKER.noise_rel
    noise_abs_um: float = DEFAULT_PICKER.noise_abs_um
    z_step_um: float = DEFAULT_PICKER.z_step_um
    shrinkage_nominal: float = DEFAULT_PICKER.shrinkage_nominal
    window_um: tuple[float, float] = (bl.DEFAULT_CONFIG.min_length_um, bl.DEFAULT_CONFIG.max_length_um)
    n_gauss: int = 4
    grid_step_um: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.window_um
        if not 0 <= lo < hi:
            raise InputError(f"fit window {self.window_um} um is empty or negative")
        for name in ("straggling_um", "noise_rel", "noise_abs_um"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not (self.z_step_um >= 0 and self.shrinkage_nominal > 0 and self.n_gauss >= 2 and self.grid_step_um > 0):
            raise InputError("z_step_um >= 0, shrinkage_nominal > 0, n_gauss >= 2 and grid_step_um > 0 are required")

    @classmethod
    def from_picker(cls, picker: PickerModel, **overrides: Any) -> SpectrumModel:
        """The model of a given picker (its errors, z-step and nominal shrinkage)."""
        base = cls(noise_rel=picker.noise_rel, noise_abs_um=picker.noise_abs_um, z_step_um=picker.z_step_um,
                   shrinkage_nominal=picker.shrinkage_nominal)
        return replace(base, **overrides)


def reported_lengths_um(ranges_um: np.ndarray, cos: np.ndarray, shrinkage: float, model: SpectrumModel) -> np.ndarray:
    """Noise-free length (um) the picker reports for ranges ``ranges_um`` at |cos theta| ``cos``.

    Shapes broadcast. Depth R c / Sh (developed um) is read to the nearest focal plane and
    scaled back with the nominal shrinkage, as :func:`scanstream.simulate.picker.pick_features` does.
    """
    r = np.asarray(ranges_um, np.float64)
    c = np.asarray(cos, np.float64)
    depth_dev = r * c / shrinkage
    if model.z_step_um > 0:
        depth_dev = np.floor(depth_dev / model.z_step_um + 0.5) * model.z_step_um
    dz = depth_dev * model.shrinkage_nominal
    return np.sqrt(r * r * (1.0 - c * c) + dz * dz)


def _cos_nodes(r: np.ndarray, shrinkage: float, model: SpectrumModel) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes and weights in c = |cos theta| for each range, exact across plane boundaries.

    The reported depth jumps by one z-step where R c / Sh crosses a half-step, so the integral
    over c is split at those points and each piece integrated by Gauss-Legendre: the line shape
    then moves smoothly with density and shrinkage (a fixed grid in c would make the likelihood
    a staircase that a local optimiser cannot climb).

    Returns
    -------
    c, w : float arrays (K, P)
        Nodes and weights (summing to 1 per row) for the K ranges ``r``.
    """
    x, wq = np.polynomial.legendre.leggauss(model.n_gauss)
    x, wq = 0.5 * (x + 1.0), 0.5 * wq
    r = np.asarray(r, np.float64)[:, None]
    if model.z_step_um > 0:
        step_c = model.z_step_um * shrinkage / r  # c per focal plane, (K, 1)
        n_cells = int(np.ceil(float((1.0 / step_c).max()) + 1.5))
        edges = np.clip((np.arange(n_cells + 1)[None, :] - 0.5) * step_c, 0.0, 1.0)  # (K, J + 1)
        edges[:, -1] = 1.0
    else:
        edges = np.array([[0.0, 1.0]]).repeat(len(r), axis=0)
    lo, width = edges[:, :-1], np.diff(edges, axis=1)  # (K, J)
    c = (lo[:, :, None] + width[:, :, None] * x[None, None, :]).reshape(len(r), -1)
    w = (width[:, :, None] * wq[None, None, :]).reshape(len(r), -1)
    return c, w


def line_shapes(lengths_um: np.ndarray, density: float, shrinkage: float,
                model: SpectrumModel = SpectrumModel()) -> tuple[np.ndarray, np.ndarray]:
    """Densities (1/um) of each line's measured length, and each line's share inside the window.

    Parameters
    ----------
    lengths_um : float array (n,)
        Where to evaluate, um.
    density : float
        g/cm3.
    shrinkage : float
        The sheet's true shrinkage.
    model : SpectrumModel

    Returns
    -------
    g : float array (n, 10)
        p(L | line k), normalised over all L (not over the window), for :data:`LINES`.
    inside : float array (10,)
        Probability that a prong of line k is measured inside ``model.window_um``.
    """
    r = line_ranges_um(density)
    c, w = _cos_nodes(r, shrinkage, model)  # (K, P)
    r = r[:, None]
    l0 = reported_lengths_um(r, c, shrinkage, model)
    sig = np.sqrt((model.straggling_um * l0 / r) ** 2 + (model.noise_rel * l0) ** 2 + model.noise_abs_um**2)
    lo, hi = model.window_um
    inside = ((special.ndtr((hi - l0) / sig) - special.ndtr((lo - l0) / sig)) * w).sum(axis=1)
    x = np.asarray(lengths_um, np.float64)
    z = (x[:, None, None] - l0[None]) / sig[None]
    g = (np.exp(-0.5 * z * z) / (sig[None] * math.sqrt(2.0 * math.pi)) * w[None]).sum(axis=2)
    return g, inside


def line_weights(th_fraction: float) -> np.ndarray:
    """Expected prongs of each line per decay, shape (10,), with ``th_fraction`` of stars thorium."""
    return _INTENSITY * np.where(_IS_TH, th_fraction, 1.0 - th_fraction)


def background_density(lengths_um: np.ndarray, slope: float, window_um: tuple[float, float]) -> np.ndarray:
    """Exponential background exp(slope * L) normalised over the window (1/um)."""
    lo, hi = window_um
    x = np.asarray(lengths_um, np.float64) - lo
    w = hi - lo
    if abs(slope) * w < 1e-6:
        return np.full_like(x, 1.0 / w)
    return slope * np.exp(slope * x) / np.expm1(slope * w)


# -- the fit --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitConfig:
    """Options of :func:`fit_spectrum` (densities g/cm3).

    Attributes
    ----------
    density_range : (float, float)
        Densities searched; the scan steps by ``density_step`` before the local fit.
    shrinkage : float or None
        Fix the sheet's shrinkage (a measured value); None fits it.
    shrinkage_prior : (float, float) or None
        Gaussian prior (mean, sigma) on the fitted shrinkage; None: flat within ``shrinkage_bounds``.
        Lengths alone constrain the shrinkage only weakly (through the steep prongs), so the
        prior carries the E07 span 1.9-2.0 (sigma 0.03, that of a uniform 1.9-2.0); its width
        enters the density's error. Other emulsions need their own.
    th_fraction : float or None
        Fix the share of thorium-series stars; None fits it.
    background : bool
        Fit a background of false candidates' prongs (exponential in length).
    bootstrap : int
        Resample the objects this many times and refit, for bootstrap errors (0: curvature only).
    seed : int
        Seed of the bootstrap.
    min_prongs : int
        Fewer prongs inside the window is an error.
    stars : bool
        Fit objects as stars (each prong a different line of one chain; default) rather than
        prongs as independent draws from all ten lines. Knowing that a thorium star holds one
        prong of each of its lines resolves most of the ambiguity between close lines.
    prong_efficiency : float
        Probability that each alpha of a star is reported inside the window (sets how likely a
        4-prong object is a uranium star or a thorium star that lost a prong). 0.93: simulated
        thorium stars show 5 of 5 in-window prongs 72 % of the time, uranium stars 4 of 4 77 %.
    """

    density_range: tuple[float, float] = (3.30, 3.95)
    density_step: float = 0.01
    shrinkage: float | None = None
    shrinkage_prior: tuple[float, float] | None = (1.95, 0.03)
    shrinkage_bounds: tuple[float, float] = (1.6, 2.4)
    th_fraction: float | None = None
    background: bool = True
    bootstrap: int = 0
    seed: int = 0
    min_prongs: int = 20
    stars: bool = True
    prong_efficiency: float = 0.93

    def __post_init__(self) -> None:
        lo, hi = self.density_range
        if not 1.0 <= lo < hi <= 10.0 or not 0 < self.density_step < hi - lo:
            raise InputError(f"density range {self.density_range} g/cm3 (step {self.density_step}) is not usable")
        s_lo, s_hi = self.shrinkage_bounds
        if not 0.5 <= s_lo < s_hi <= 5.0:
            raise InputError(f"shrinkage bounds {self.shrinkage_bounds} are not usable")
        if self.shrinkage is not None and not s_lo <= self.shrinkage <= s_hi:
            raise InputError(f"shrinkage {self.shrinkage!r} is outside {self.shrinkage_bounds}")
        if self.shrinkage_prior is not None and not self.shrinkage_prior[1] > 0:
            raise InputError(f"shrinkage prior sigma must be > 0, got {self.shrinkage_prior!r}")
        if self.th_fraction is not None and not 0.0 <= self.th_fraction <= 1.0:
            raise InputError(f"thorium fraction must lie in [0, 1], got {self.th_fraction!r}")
        if not 0.0 < self.prong_efficiency <= 1.0:
            raise InputError(f"prong efficiency must lie in (0, 1], got {self.prong_efficiency!r}")
        if self.bootstrap < 0 or self.min_prongs < 1:
            raise InputError(f"bootstrap >= 0 and min_prongs >= 1 required, got {self.bootstrap}, {self.min_prongs}")


# parameter vector: density, shrinkage, logit(th_fraction), logit(background fraction), slope (1/um)
_NAMES = ("density", "shrinkage", "th_fraction", "background_fraction", "background_slope_per_um")
_LOGIT_BOUND = 9.0
# finite-difference steps for the curvature: the likelihood has kinks where a line's steepest
# prongs reach one more focal plane, so steps far below the errors would measure the kinks
_STEPS = np.array([5e-3, 5e-3, 5e-2, 5e-2, 5e-3])


#: Alpha lines (indices into LINES) of each kind of star: thorium by either branch, uranium.
_STARS: dict[str, tuple[int, ...]] = {
    "Th-Po212": tuple(i for i, ln in enumerate(LINES) if ln.chain == "Th" and ln.nuclide != "Bi-212"),
    "Th-Bi212": tuple(i for i, ln in enumerate(LINES) if ln.chain == "Th" and ln.nuclide != "Po-212"),
    "U": tuple(i for i, ln in enumerate(LINES) if ln.chain == "U"),
}
MAX_STAR_PRONGS = max(len(v) for v in _STARS.values())


def _star_weights(th_fraction: float, m: int, efficiency: float) -> np.ndarray:
    """P(kind of star | m prongs seen in the window), over :data:`_STARS` (zeros where impossible).

    Each of a star's n alphas is seen inside the window with probability ``efficiency``
    (binomial in m); thorium stars take the Po-212 branch 64 % of the time.
    """
    prior = np.array([th_fraction * ph.TH_PO212_FRACTION, th_fraction * (1 - ph.TH_PO212_FRACTION), 1 - th_fraction])
    n = np.array([len(v) for v in _STARS.values()])
    like = np.array([math.comb(int(k), m) for k in n]) * efficiency**m * (1 - efficiency) ** np.maximum(n - m, 0)
    w = prior * like
    return w / w.sum() if w.sum() > 0 else w


class _Likelihood:
    """Negative log-likelihood of in-window prong lengths; line shapes cached per (density, shrinkage).

    With ``config.stars`` each object is one term: a thorium or uranium star whose m prongs
    come from m *different* lines of its chain (the sum over the assignments of lines to
    prongs, conditional on the m prongs lying in the window), or a false candidate whose prongs
    all follow the background. Otherwise each prong is a term of a mixture of all ten lines.
    """

    def __init__(self, x: np.ndarray, groups: np.ndarray, model: SpectrumModel, config: FitConfig) -> None:
        self.x, self.model, self.config = x, model, config
        lo, hi = model.window_um
        self.grid = np.arange(lo, hi + model.grid_step_um, model.grid_step_um)
        pos = (x - lo) / model.grid_step_um
        self.i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(self.grid) - 2)
        self.frac = (pos - self.i0)[:, None]
        self._cache: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}
        # objects by their number of in-window prongs: (index array (n_m, m), {star: maps (n_maps, m)})
        self.by_m: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        order = np.argsort(groups, kind="stable")
        _, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
        for m in range(1, MAX_STAR_PRONGS + 1):
            rows = [order[s:s + m] for s, c in zip(starts, counts, strict=True) if c == m]
            if rows:
                maps = {k: np.array(list(itertools.permutations(v, m))) for k, v in _STARS.items() if len(v) >= m}
                self.by_m[m] = (np.array(rows), maps)

    def shapes(self, density: float, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
        key = (float(density), float(shrinkage))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            g, inside = line_shapes(self.grid, density, shrinkage, self.model)
            self._cache[key] = (g[self.i0] * (1.0 - self.frac) + g[self.i0 + 1] * self.frac, inside)
        return self._cache[key]

    def _star_terms(self, g: np.ndarray, inside: np.ndarray, f_th: float, f_bg: float, bg: np.ndarray) -> float:
        total = 0.0
        for m, (rows, maps) in self.by_m.items():
            gm = g[rows]  # (n_m, m, K)
            weights = _star_weights(f_th, m, self.config.prong_efficiency)
            p = np.zeros(len(rows))
            for w, (star, mp) in zip(weights, ((k, maps.get(k)) for k in _STARS), strict=True):
                if w == 0 or mp is None:
                    continue
                vals = gm[:, np.arange(m)[None, :], mp].prod(axis=2).mean(axis=1)  # (n_m,)
                p += w * vals / inside[mp].prod(axis=1).mean()
            if self.config.background:
                p = (1.0 - f_bg) * p + f_bg * bg[rows].prod(axis=1)
            total -= float(np.sum(np.log(np.maximum(p, 1e-300))))
        return total

    def __call__(self, u: np.ndarray) -> float:
        density, shrinkage, t_th, t_bg, slope = (float(v) for v in u)
        g, inside = self.shapes(density, shrinkage)
        f_th, f_bg = float(special.expit(t_th)), float(special.expit(t_bg))
        bg = background_density(self.x, slope, self.model.window_um)
        if self.config.stars:
            nll = self._star_terms(g, inside, f_th, f_bg, bg)
        else:
            w = line_weights(f_th)
            p = g @ w / (inside @ w)
            if self.config.background:
                p = (1.0 - f_bg) * p + f_bg * bg
            nll = -float(np.sum(np.log(np.maximum(p, 1e-300))))
        prior = self.config.shrinkage_prior
        if prior is not None and self.config.shrinkage is None:
            nll += 0.5 * ((shrinkage - prior[0]) / prior[1]) ** 2
        return nll


def _bounds(config: FitConfig) -> list[tuple[float, float]]:
    s = (config.shrinkage, config.shrinkage) if config.shrinkage is not None else config.shrinkage_bounds
    t = special.logit(config.th_fraction) if config.th_fraction is not None else None
    th = (float(np.clip(t, -_LOGIT_BOUND, _LOGIT_BOUND)),) * 2 if t is not None else (-_LOGIT_BOUND, _LOGIT_BOUND)
    bg = (-_LOGIT_BOUND, _LOGIT_BOUND) if config.background else (-_LOGIT_BOUND, -_LOGIT_BOUND)
    slope = (-0.3, 0.3) if config.background else (0.0, 0.0)
    return [config.density_range, s, th, bg, slope]


def _minimise(nll: _Likelihood, u0: np.ndarray, bounds: list[tuple[float, float]], free: np.ndarray) -> tuple[np.ndarray, bool]:
    """L-BFGS-B over the free parameters (the others held at ``u0``)."""
    idx = np.flatnonzero(free)
    if not len(idx):
        return u0.copy(), True

    def f(v: np.ndarray) -> float:
        u = u0.copy()
        u[idx] = v
        return nll(u)

    res = optimize.minimize(f, u0[idx], method="L-BFGS-B", bounds=[bounds[i] for i in idx],
                            options={"eps": 1e-5, "maxiter": 300})
    u = u0.copy()
    u[idx] = res.x
    # a line search stopped by a kink of the likelihood is still at its minimum (checked by the
    # density profile in fit_spectrum); only running out of iterations is a failure
    return u, bool(res.success) or "ABNORMAL" in str(res.message)


def _free(bounds: list[tuple[float, float]]) -> np.ndarray:
    return np.array([hi > lo for lo, hi in bounds])


def _best_fit(nll: _Likelihood, config: FitConfig, start: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Scan the density (other parameters at typical values), then fit everything locally from the best."""
    bounds = _bounds(config)
    free = _free(bounds)
    if start is None:
        s0 = bounds[1][0] if not free[1] else (config.shrinkage_prior or (float(np.mean(bounds[1])), 0))[0]
        th0 = 0.0 if free[2] else bounds[2][0]
        u0 = np.array([np.mean(bounds[0]), s0, th0, -2.0 if free[3] else bounds[3][0], 0.0])
        lo, hi = config.density_range
        grid = np.arange(lo, hi + 1e-9, config.density_step)
        values = [nll(np.concatenate([[rho], u0[1:]])) for rho in grid]
        start = np.concatenate([[grid[int(np.argmin(values))]], u0[1:]])
    return _minimise(nll, start, bounds, free)


def _curvature_errors(nll: _Likelihood, u: np.ndarray, bounds: list[tuple[float, float]]) -> np.ndarray:
    """Standard errors from the inverse Hessian of the NLL, over free parameters not at a bound."""
    err = np.full(len(u), np.nan)
    free = _free(bounds)
    inner = np.array([f and lo + h < x < hi - h for f, (lo, hi), x, h in zip(free, bounds, u, _STEPS, strict=True)])
    idx = np.flatnonzero(inner)
    if not len(idx):
        return err
    h = _STEPS[idx]
    k = len(idx)
    hess = np.empty((k, k))
    f0 = nll(u)

    def at(*moves: tuple[int, float]) -> float:
        v = u.copy()
        for i, d in moves:
            v[idx[i]] += d
        return nll(v)

    for i in range(k):
        hess[i, i] = (at((i, h[i])) - 2 * f0 + at((i, -h[i]))) / h[i] ** 2
        for j in range(i):
            hess[i, j] = hess[j, i] = (at((i, h[i]), (j, h[j])) - at((i, h[i]), (j, -h[j]))
                                       - at((i, -h[i]), (j, h[j])) + at((i, -h[i]), (j, -h[j]))) / (4 * h[i] * h[j])
    try:
        cov = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return err
    diag = np.diag(cov)
    err[idx] = np.where(diag > 0, np.sqrt(np.abs(diag)), np.nan)
    return err


def _profile(nll: _Likelihood, u: np.ndarray, bounds: list[tuple[float, float]], i: int,
             step: float, max_steps: int = 7) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """The profile likelihood of parameter ``i`` (others re-fitted): where it has risen by 1/2.

    Density and shrinkage lie on a long, kinked, flat-bottomed ridge (lengths constrain mainly
    a combination of the two), where a finite-difference Hessian is fragile. The profile is
    walked outwards at ``step`` times 1, 2, 4, ... until it has risen by 1/2, and the crossing
    interpolated (linearly in sqrt(2 rise), exact for a parabola). A profile point below the
    fit (a minimum the local fit missed) becomes the new fit and the walk starts again, once.

    Returns
    -------
    u : float array (5,)
        The fit (improved if the walk found a lower point).
    ends : [lower, upper]
        The parameter vectors where the profile crosses +1/2 (None where it does not within
        the bounds).
    """
    free = _free(bounds)
    free[i] = False
    ends: list[np.ndarray | None] = [None, None]
    for _ in range(2):
        f0 = nll(u)
        ends, better = [], None
        for sign in (-1.0, 1.0):
            v, prev_v, prev, end = u.copy(), u.copy(), 0.0, None
            for k in range(max_steps):
                v = v.copy()
                v[i] = u[i] + sign * step * 2**k
                if not bounds[i][0] <= v[i] <= bounds[i][1]:
                    break
                v, _ = _minimise(nll, v, bounds, free)
                rise = nll(v) - f0
                if rise < -1e-3 and (better is None or nll(v) < nll(better)):
                    better = v
                r = math.sqrt(2.0 * max(rise, 0.0))
                if r >= 1.0:
                    end = prev_v + (v - prev_v) * (1.0 - prev) / (r - prev)
                    break
                prev, prev_v = r, v
            ends.append(end)
        if better is None:
            break
        u, _ = _minimise(nll, better, bounds, _free(bounds))
    return u, ends


def _conditional_sigma(nll: _Likelihood, u: np.ndarray, i: int, h: float) -> float:
    """Error of parameter ``i`` with all others held at ``u``: 1 / sqrt(d2 NLL / d u_i^2)."""
    up, down = u.copy(), u.copy()
    up[i] += h
    down[i] -= h
    d2 = (nll(up) - 2.0 * nll(u) + nll(down)) / (h * h)
    return 1.0 / math.sqrt(d2) if d2 > 0 else math.nan


def _report(u: np.ndarray, err: np.ndarray, boot: np.ndarray | None, config: FitConfig) -> dict[str, Any]:
    """Natural parameters (fractions, not logits) with their errors (delta method for the logits)."""
    f_bg = float(special.expit(u[3])) if config.background else 0.0
    vals = [float(u[0]), float(u[1]), float(special.expit(u[2])), f_bg, float(u[4])]
    jac = [1.0, 1.0, vals[2] * (1 - vals[2]), vals[3] * (1 - vals[3]), 1.0]
    out: dict[str, Any] = {}
    for i, name in enumerate(_NAMES):
        out[name] = vals[i]
        out[f"{name}_err"] = None if not np.isfinite(err[i]) else float(err[i] * jac[i])
        if boot is not None:
            col = boot[:, i] if i in (0, 1, 4) else special.expit(boot[:, i])
            out[f"{name}_bootstrap_err"] = float(np.std(col, ddof=1)) if len(col) > 1 else None
    return out


def _bootstrap(x: np.ndarray, groups: np.ndarray, u: np.ndarray, model: SpectrumModel, config: FitConfig) -> np.ndarray:
    """Refits (from the best fit) of ``config.bootstrap`` resamplings of the objects, (B, 5)."""
    members = [np.flatnonzero(groups == i) for i in range(int(groups.max()) + 1)]
    rng = np.random.default_rng(config.seed)
    rows = []
    for _ in range(config.bootstrap):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[i] for i in pick])
        new_groups = np.repeat(np.arange(len(pick)), [len(members[i]) for i in pick])
        rows.append(_best_fit(_Likelihood(x[idx], new_groups, model, config), config, start=u)[0])
    return np.array(rows)


def fit_spectrum(lengths_um: np.ndarray, *, groups: np.ndarray | None = None, model: SpectrumModel | None = None,
                 config: FitConfig | None = None) -> dict[str, Any]:
    """Maximum-likelihood density (and shrinkage) of a sheet from alpha prong lengths.

    Parameters
    ----------
    lengths_um : float array (n,)
        Measured prong lengths (um, as the picker reports them); those outside the window are
        counted but not fitted.
    groups : int array (n,), optional
        The object of each prong (the bootstrap resamples objects, whose prongs are fitted
        together); default one object per prong.
    model : SpectrumModel, optional
    config : FitConfig, optional

    Returns
    -------
    dict
        ``density`` (g/cm3), ``shrinkage``, ``th_fraction``, ``background_fraction``,
        ``background_slope_per_um``, each with ``*_err`` (density: profile likelihood, also
        ``density_err_lower`` / ``_upper``; shrinkage: profile + conditional curvature; others:
        inverse Hessian; None when fixed or at a bound) and, with a bootstrap,
        ``*_bootstrap_err``; ``line_ranges_um`` at the fit; ``prongs``, ``prongs_fitted``,
        ``objects_fitted`` (objects with 1-5 prongs in the window), ``nll``, ``converged``,
        ``window_um``, ``shrinkage_fixed``.

    Raises
    ------
    InputError
        Fewer than ``config.min_prongs`` prongs inside the window, or non-finite lengths.
    """
    model = model or SpectrumModel()
    config = config or FitConfig()
    x_all = np.asarray(lengths_um, np.float64).ravel()
    if not np.all(np.isfinite(x_all)):
        raise InputError(f"prong lengths must be finite; got {int(np.sum(~np.isfinite(x_all)))} non-finite value(s)")
    g_all = np.arange(len(x_all)) if groups is None else np.asarray(groups).ravel()
    if len(g_all) != len(x_all):
        raise InputError(f"{len(g_all)} group labels for {len(x_all)} prong lengths")
    lo, hi = model.window_um
    keep = (x_all >= lo) & (x_all <= hi)
    _, g_in = np.unique(g_all[keep], return_inverse=True)
    if config.stars:  # objects with more prongs in the window than any star are left out
        keep[keep] = np.bincount(g_in)[g_in] <= MAX_STAR_PRONGS
        _, g_in = np.unique(g_all[keep], return_inverse=True)
    x = x_all[keep]
    if len(x) < config.min_prongs:
        raise InputError(f"only {len(x)} prong length(s) inside the fit window {lo:g}-{hi:g} um "
                         f"(of {len(x_all)}); at least {config.min_prongs} are needed")
    nll = _Likelihood(x, g_in, model, config)
    u, ok = _best_fit(nll, config)
    bounds = _bounds(config)
    err = _curvature_errors(nll, u, bounds)
    profile: dict[str, float | None] = {}
    if _free(bounds)[0]:
        u, ends = _profile(nll, u, bounds, 0, 0.02)
        lo_end, hi_end = ends
        profile = {"density_err_lower": None if lo_end is None else float(u[0] - lo_end[0]),
                   "density_err_upper": None if hi_end is None else float(hi_end[0] - u[0])}
        if lo_end is not None and hi_end is not None:
            err[0] = 0.5 * (hi_end[0] - lo_end[0])
            if _free(bounds)[1]:  # marginal = conditional + the ridge's share (Gaussian identity)
                cond = _conditional_sigma(nll, u, 1, _STEPS[1])
                err[1] = math.sqrt((cond if np.isfinite(cond) else 0.0) ** 2 + (0.5 * (hi_end[1] - lo_end[1])) ** 2)
    boot = _bootstrap(x, g_in, u, model, config) if config.bootstrap else None
    out = _report(u, err, boot, config)
    out.update(
        line_ranges_um={ln.nuclide: float(r) for ln, r in zip(LINES, line_ranges_um(out["density"]), strict=True)},
        prongs=len(x_all), prongs_fitted=len(x), objects_fitted=int(g_in.max() + 1), nll=float(nll(u)),
        converged=ok,
        window_um=[float(lo), float(hi)],
    )
    out.update(profile)
    out["shrinkage_fixed"] = config.shrinkage is not None
    return out


def fit_sheet(lengths: Sequence[np.ndarray], *, model: SpectrumModel | None = None,
              config: FitConfig | None = None) -> dict[str, Any]:
    """Fit a sheet's density from its alpha decays' (or selected candidates') prong lengths.

    Parameters
    ----------
    lengths : sequence of float arrays
        One array per object: its measured prong lengths (um), e.g. ``track_lengths_um``.
    model, config : optional
        See :class:`SpectrumModel` and :class:`FitConfig`.

    Returns
    -------
    dict
        :func:`fit_spectrum`'s result plus ``objects`` (number of objects given); JSON-ready.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r = line_ranges_um(3.65)
    >>> stars = [rng.normal(r[:5], 1.5) for _ in range(150)]
    >>> fit = fit_sheet(stars, config=FitConfig(shrinkage=2.0, background=False))
    >>> abs(fit["density"] - 3.65) < 0.05
    True
    """
    arrays = [np.asarray(a if a is not None else [], np.float64).ravel() for a in lengths]
    if not arrays:
        raise InputError("no objects given: a sheet's fit needs the prong lengths of its alpha decays")
    flat = np.concatenate(arrays)
    groups = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    out = fit_spectrum(flat, groups=groups, model=model, config=config)
    out["objects"] = len(arrays)
    return out


# -- inputs, outputs ------------------------------------------------------------------------
def alpha_object_ids(verdicts: str | os.PathLike) -> set[str]:
    """Object ids whose latest verdict in a verdicts table (directory or .jsonl file) is alpha."""
    from scanstream.verdicts import read_verdicts

    latest: dict[str, str] = {}
    for record in read_verdicts(verdicts):  # in time order: the last one per object wins
        latest[str(record["object_id"])] = record["verdict"]
    ids = {k for k, v in latest.items() if v == "alpha"}
    if not ids:
        raise InputError(f"{verdicts}: no object is marked alpha ({len(latest)} verdict(s) read)")
    return ids


def _column(table: pa.Table, name: str, source: str | os.PathLike) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise InputError(f"{source}: object table has no {name!r} column")
    return table.column(name)


def _sheet_rows(table: pa.Table, sheet: str, source: str | os.PathLike) -> pa.Table:
    rows = table.filter(pc.equal(_column(table, "sheet", source).cast(pa.string()), sheet))
    if rows.num_rows == 0:
        known = sorted({str(s) for s in pc.unique(table.column("sheet")).to_pylist()})[:10]
        raise InputError(f"{source}: no objects of sheet {sheet!r} (sheets there: {', '.join(known) or 'none'})")
    return rows


def read_sheet_lengths(source: str | os.PathLike, *, sheet: str, store: str | os.PathLike | None = None,
                       verdicts: str | os.PathLike | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Prong lengths (um) of one sheet's alpha decays or candidates, and what was read.

    Parameters
    ----------
    source : path
        A candidate table directory (with ``store``), else a labelled crop store or
        features-only ``.parquet`` object table.
    sheet : str
    store : path, optional
        The crop store (or object table) holding the candidates' ``track_lengths_um``.
    verdicts : path, optional
        A verdicts table: keep only objects whose latest verdict is alpha (instead of the
        candidates' ``selected`` or the store's ``label == 1``).

    Returns
    -------
    lengths : list of float arrays
        One per object.
    inputs : dict
        Paths, the selection used, counts, and the simulation's truth where the table has it.
    """
    inputs: dict[str, Any] = {"sheet": sheet, "verdicts": None if verdicts is None else str(verdicts)}
    alpha_ids = alpha_object_ids(verdicts) if verdicts is not None else None
    if store is None:
        table = _sheet_rows(bl.read_object_table(source), sheet, source)
        inputs.update(mode="store", store=str(source))
        if alpha_ids is None:
            rows = table.filter(pc.equal(_column(table, "label", source), 1))
            inputs["selection"] = "label == 1"
        else:
            rows = table.filter(pc.is_in(_column(table, "object_id", source), pa.array(sorted(alpha_ids))))
            inputs["selection"] = "verdict alpha"
        wanted = rows.num_rows
    else:
        from scanstream.candidates import read_candidates

        cands = _sheet_rows(read_candidates(source, columns=["object_id", "sheet", "selected"]), sheet, source)
        if alpha_ids is None:
            cands = cands.filter(pc.fill_null(cands.column("selected"), False))
            inputs["selection"] = "selected"
        else:
            cands = cands.filter(pc.is_in(cands.column("object_id"), pa.array(sorted(alpha_ids))))
            inputs["selection"] = "verdict alpha"
        ids = pa.array(sorted(set(cands.column("object_id").to_pylist())), pa.string())
        table = bl.read_object_table(store)
        rows = table.filter(pc.is_in(_column(table, "object_id", store).cast(pa.string()), ids))
        inputs.update(mode="candidates", candidates=str(source), store=str(store), missing_in_store=len(ids) - rows.num_rows)
        wanted = len(ids)
        if inputs["missing_in_store"]:
            logger.warning("%s: %d of %d candidate(s) are not in %s", source, inputs["missing_in_store"], wanted, store)
    if rows.num_rows == 0:
        raise InputError(f"{source}: no objects of sheet {sheet!r} left after the selection ({inputs['selection']})")
    inputs.update(objects_wanted=int(wanted), objects=rows.num_rows)
    lengths = [np.asarray(x if x is not None else [], np.float64)
               for x in _column(rows, "track_lengths_um", inputs["store"]).to_pylist()]
    if "truth_density" in rows.column_names:
        inputs["truth"] = {k: float(np.nanmean(np.asarray(rows.column(f"truth_{k}").to_pylist(), float)))
                           for k in ("density", "shrinkage") if f"truth_{k}" in rows.column_names}
    return lengths, inputs


def expected_spectrum(lengths_um: np.ndarray, fit: dict[str, Any], model: SpectrumModel | None = None) -> dict[str, np.ndarray]:
    """The fitted model's prong spectrum (1/um, over the window) as per-prong densities.

    Returns ``{"total", "background"}`` evaluated at ``lengths_um``: the lines in proportion
    to their weights at the fitted thorium share, plus the background share.
    """
    model = model or SpectrumModel()
    g, inside = line_shapes(lengths_um, fit["density"], fit["shrinkage"], model)
    w = line_weights(fit["th_fraction"])
    f_bg = fit.get("background_fraction") or 0.0
    bg = f_bg * background_density(lengths_um, fit.get("background_slope_per_um") or 0.0, model.window_um)
    return {"total": (1.0 - f_bg) * (g @ w) / (inside @ w) + bg, "background": bg}


def plot_spectrum(lengths: Sequence[np.ndarray], fit: dict[str, Any], path: str | os.PathLike, *,
                  model: SpectrumModel | None = None, title: str = "") -> Path:
    """PNG: the measured prong-length spectrum, the fitted expectation and the lines at the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # imported here: fit_sheet's callers (watch) need no plotting

    model = model or SpectrumModel()
    flat = np.concatenate([np.asarray(a, float) for a in lengths]) if len(lengths) else np.zeros(0)
    lo, hi = model.window_um
    top = max(hi + 15.0, float(np.percentile(flat, 99)) + 5.0 if len(flat) else 0.0)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    ax.hist(flat, bins=np.arange(0.0, top + 1.0, 1.0), color="0.55", label=f"measured prongs ({len(flat)})")
    x = np.linspace(lo, hi, 600)
    curves = expected_spectrum(x, fit, model)
    n_fit = fit.get("prongs_fitted", len(flat))
    ax.plot(x, n_fit * curves["total"], color="C3", lw=1.8, label="fitted expectation")
    if np.any(curves["background"] > 0):
        ax.plot(x, n_fit * curves["background"], color="C0", lw=1.2, ls="--", label="background")
    ax.axvspan(0.0, lo, color="0.9", zorder=-1)
    ax.axvspan(hi, top, color="0.9", zorder=-1, label="outside the fit window")
    ymax = ax.get_ylim()[1]
    for ln, r in zip(LINES, line_ranges_um(fit["density"]), strict=True):
        ax.axvline(r, color="C2" if ln.chain == "Th" else "C1", lw=0.8, ls=":")
        ax.text(r, ymax * 0.98, f"{ln.nuclide}", rotation=90, va="top", ha="right", fontsize=7,
                color="C2" if ln.chain == "Th" else "C1")
    ax.set_xlim(0.0, top)
    ax.set_xlabel("measured prong length (um, picker: nominal shrinkage 2.0)")
    ax.set_ylabel("prongs per 1 um")
    err = fit.get("density_err")
    s_err = fit.get("shrinkage_err")
    head = (f"density {fit['density']:.3f}" + (f" ± {err:.3f}" if err else "") + " g/cm³, shrinkage "
            f"{fit['shrinkage']:.3f}" + (f" ± {s_err:.3f}" if s_err else " (fixed)" if fit.get("shrinkage_fixed") else ""))
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.8))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return out


def _write_json(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` as JSON (temporary file in the same folder, fsync, rename)."""
    out = Path(path)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return out


def run_range_energy(source: str | os.PathLike, *, sheet: str, out: str | os.PathLike,
                     store: str | os.PathLike | None = None, verdicts: str | os.PathLike | None = None,
                     model: SpectrumModel | None = None, config: FitConfig | None = None) -> dict[str, Any]:
    """Read a sheet's alpha decays or candidates, fit, write ``OUT/rangeenergy.json`` and ``OUT/spectrum.png``.

    See :func:`read_sheet_lengths` for ``source``, ``store`` and ``verdicts``; returns the JSON
    document written (fitted values with errors, inputs, counts, model and fit settings).
    """
    from scanstream import __version__

    model = model or SpectrumModel()
    config = config or FitConfig()
    lengths, inputs = read_sheet_lengths(source, sheet=sheet, store=store, verdicts=verdicts)
    fit = fit_sheet(lengths, model=model, config=config)
    out_dir = Path(out)
    png = plot_spectrum(lengths, fit, out_dir / SPECTRUM_FILE, model=model, title=f"sheet {sheet}")
    doc = {
        "stage": "range-energy",
        "version": __version__,
        "sheet": sheet,
        "fit": fit,
        "inputs": inputs,
        "model": asdict(model),
        "config": asdict(config),
        "relation": {"reference_density": REFERENCE_DENSITY, "density_exponent": DENSITY_EXPONENT,
                     "power_law_a_um": POWER_A_UM, "power_law_b": POWER_B},
        "spectrum": str(png),
    }
    doc["json"] = str(_write_json(doc, out_dir / RESULT_FILE))
    return doc
