"""What the picker reports for a prong of a given range: line shapes of the measured spectrum (package docstring)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import special

from scanstream.errors import InputError
from scanstream.physics import emulsion as ph
from scanstream.picker import cuts as bl
from scanstream.rangeenergy.relation import _INTENSITY, _IS_TH, line_ranges_um

logger = logging.getLogger(__name__)

#: The E07 scans' focal-plane spacing (um of developed depth) and the shrinkage the pickers
#: convert depth with when the scan's metadata gives none (``scanstream.picker.pick``).
Z_STEP_UM = 3.0
NOMINAL_SHRINKAGE = 2.0
# three-point Gauss-Hermite rule over the range straggling (exact for cubics in R)
_GH_X = np.array([-math.sqrt(3.0), 0.0, math.sqrt(3.0)])
_GH_W = np.array([1.0, 4.0, 1.0]) / 6.0
_CUT_NODES = 6  # Gauss-Legendre points over the remnant of a prong that left the layer


@dataclass(frozen=True)
class SpectrumModel:
    """How the picker turns a line into measured lengths (um): straggling from docs/physics.md, the scan's geometry.

    The picker's length error is not taken from any simulator: by default its relative part
    is fitted to the data (the lines' widths measure it), or it is given here from a picker's
    measured error table.

    Attributes
    ----------
    straggling_um : float
        Range straggling, sigma (um).
    noise_rel : float or None
        The picker's relative length error; None fits it (the fit reports ``noise_rel``).
    noise_abs_um : float
        The picker's absolute length error (um), added in quadrature; 0 by default, where the
        fitted relative part absorbs it.
    z_step_um : float
        Developed depth between focal planes (um); depth is read to the nearest plane.
    shrinkage_nominal : float
        The shrinkage the picker converts depth with (not the sheet's own, unless the scan's
        metadata gave it).
    window_um : (float, float)
        Prong lengths fitted (um); default the former method's length cuts.
    layer_um : float or None
        Thickness of the emulsion layer before development (um), through which the decays are
        spread: a prong of range R at |cos theta| = c leaves it, ending early, with probability
        R c / layer (steep prongs of vertices near a surface). Used by the fit with dips; None
        ignores it.
    n_gauss : int
        Gauss-Legendre points per focal-plane cell of the integral over the prong's |cos theta|.
    grid_step_um : float
        Spacing of the tabulated line shapes (um); data are interpolated linearly.
    """

    straggling_um: float = ph.STRAGGLING_UM
    noise_rel: float | None = None
    noise_abs_um: float = 0.0
    z_step_um: float = Z_STEP_UM
    shrinkage_nominal: float = NOMINAL_SHRINKAGE
    window_um: tuple[float, float] = (bl.DEFAULT_CONFIG.min_length_um, bl.DEFAULT_CONFIG.max_length_um)
    layer_um: float | None = ph.LAYER_UM
    n_gauss: int = 4
    grid_step_um: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.window_um
        if not 0 <= lo < hi:
            raise InputError(f"fit window {self.window_um} um is empty or negative")
        for name in ("straggling_um", "noise_abs_um"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.noise_rel is not None and not 0 <= self.noise_rel < 1:
            raise InputError(f"noise_rel must lie in [0, 1) or be None (fitted), got {self.noise_rel!r}")
        if self.layer_um is not None and not self.layer_um > 0:
            raise InputError(f"layer_um must be > 0 or None, got {self.layer_um!r}")
        if not (self.z_step_um >= 0 and self.shrinkage_nominal > 0 and self.n_gauss >= 2 and self.grid_step_um > 0):
            raise InputError("z_step_um >= 0, shrinkage_nominal > 0, n_gauss >= 2 and grid_step_um > 0 are required")

    @classmethod
    def from_picker(cls, picker: Any, **overrides: Any) -> SpectrumModel:
        """The model of a picker described by ``noise_rel``, ``noise_abs_um``, ``z_step_um``, ``shrinkage_nominal``."""
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
                model: SpectrumModel = SpectrumModel(), noise_rel: float | None = None) -> tuple[np.ndarray, np.ndarray]:
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
    noise_rel : float, optional
        The picker's relative length error; default ``model.noise_rel`` (which must then be set).

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
    sig = np.sqrt((model.straggling_um * l0 / r) ** 2 + (_noise(model, noise_rel) * l0) ** 2 + model.noise_abs_um**2)
    lo, hi = model.window_um
    inside = ((special.ndtr((hi - l0) / sig) - special.ndtr((lo - l0) / sig)) * w).sum(axis=1)
    x = np.asarray(lengths_um, np.float64)
    z = (x[:, None, None] - l0[None]) / sig[None]
    g = (np.exp(-0.5 * z * z) / (sig[None] * math.sqrt(2.0 * math.pi)) * w[None]).sum(axis=2)
    return g, inside


def _noise(model: SpectrumModel, noise_rel: float | None) -> float:
    value = model.noise_rel if noise_rel is None else noise_rel
    if value is None:
        raise InputError("the picker's relative length error is neither given nor fitted (noise_rel is None)")
    return float(value)


def depth_planes(lengths_um: np.ndarray, dips_deg: np.ndarray, model: SpectrumModel) -> np.ndarray:
    """Focal planes each prong spans in depth: round(L sin|dip| / (nominal shrinkage * z-step)), int (n,)."""
    if not model.z_step_um > 0:
        raise InputError("dips need the focal-plane step: z_step_um must be > 0")
    dz = np.asarray(lengths_um, np.float64) * np.sin(np.radians(np.abs(np.asarray(dips_deg, np.float64))))
    return np.floor(dz / (model.shrinkage_nominal * model.z_step_um) + 0.5).astype(np.int64)


def corrected_dips_deg(dips_deg: np.ndarray, shrinkage: float, model: SpectrumModel) -> np.ndarray:
    """Dips (degrees, 0-90) with the depth converted at ``shrinkage`` instead of the picker's nominal one.

    tan(dip) scales as the depth: tan(corrected) = tan(|dip|) * shrinkage / nominal. For
    isotropic decays at the right shrinkage, sin(corrected dip) is uniform on [0, 1] (up to
    the focal planes' quantisation).

    >>> round(float(corrected_dips_deg(np.array([45.0]), 1.8, SpectrumModel())[0]), 2)
    41.99
    """
    t = np.tan(np.radians(np.clip(np.abs(np.asarray(dips_deg, np.float64)), 0.0, 90.0)))
    return np.degrees(np.arctan(t * shrinkage / model.shrinkage_nominal))


def line_shapes_dips(lengths_um: np.ndarray, planes: np.ndarray, density: float, shrinkage: float,
                     model: SpectrumModel, noise_rel: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Joint densities of each line's measured (length, depth in focal planes), and each line's share in the window.

    A prong of range R at |cos theta| = c spans n = round(R c / (Sh z_step)) focal planes, so
    the number of planes it is read to span picks out the slice of directions it came from:
    p(L, n | line) integrates the length's Gaussian over the c of that one cell (the cells of
    :func:`_cos_nodes`), not over all c. Isotropy is what makes every c equally likely; the
    shrinkage sets where the cells lie. The range straggling is integrated by a three-point
    Gauss-Hermite rule (it moves a prong across plane boundaries); the picker's error is a
    Gaussian on the length. With ``model.layer_um`` a prong may leave the emulsion layer and
    end early (:func:`_range_rows`): left out, the missing steep prongs and their short, steep
    remnants would read as a smaller shrinkage.

    Parameters
    ----------
    lengths_um : float array (n,)
    planes : int array (n,)
        :func:`depth_planes` of each prong.
    density, shrinkage : float
    model : SpectrumModel
    noise_rel : float, optional
        Default ``model.noise_rel``.

    Returns
    -------
    g : float array (n, 10)
        p(L, n | line k) (1/um), normalised over all L and n.
    inside : float array (10,)
        Probability that a prong of line k is measured inside ``model.window_um``.
    """
    rel = _noise(model, noise_rel)
    r, weight, owner, parent, cut = _range_rows(line_ranges_um(density), model)
    c, w = _cos_nodes(r, shrinkage, model)  # (M, J * P)
    n_cells = c.shape[1] // model.n_gauss
    c = c.reshape(len(r), n_cells, model.n_gauss)
    w = w.reshape(len(r), n_cells, model.n_gauss)
    if model.layer_um:  # the whole prong survives, or (probability R c / layer) ends at the surface
        escape = np.clip(parent[:, None, None] * c / model.layer_um, 0.0, 1.0)
        w = w * np.where(cut[:, None, None], escape, 1.0 - escape)
    w = w * weight[:, None, None]
    l0 = reported_lengths_um(r[:, None, None], c, shrinkage, model)
    sig = np.sqrt((rel * l0) ** 2 + model.noise_abs_um**2 + 1e-6)
    onehot = (owner[:, None] == np.arange(int(owner.max()) + 1)[None, :]).astype(np.float64)  # (M, K)
    lo, hi = model.window_um
    inside = ((special.ndtr((hi - l0) / sig) - special.ndtr((lo - l0) / sig)) * w).sum(axis=(1, 2)) @ onehot
    n = np.asarray(planes, np.int64)
    ok = (n >= 0) & (n < n_cells)
    cell = np.clip(n, 0, n_cells - 1)
    x = np.asarray(lengths_um, np.float64)
    l0_i, sig_i, w_i = l0[:, cell, :], sig[:, cell, :], w[:, cell, :]  # (M, n, P)
    z = (x[None, :, None] - l0_i) / sig_i
    dens = (np.exp(-0.5 * z * z) / (sig_i * math.sqrt(2.0 * math.pi)) * w_i).sum(axis=2)  # (M, n)
    return (dens.T @ onehot) * ok[:, None], inside


def _range_rows(ranges: np.ndarray, model: SpectrumModel) -> tuple[np.ndarray, ...]:
    """Ranges integrated over for each line: straggled whole prongs, and (with a layer) prongs cut short.

    Returns
    -------
    r, weight : float arrays (M,)
        Each row's range (um) and quadrature weight.
    owner : int array (M,)
        The line of each row.
    parent : float array (M,)
        The whole prong's range (um): what sets the chance of leaving the layer.
    cut : bool array (M,)
        Rows of prongs that left the layer: a remnant u R, u uniform on (0, 1) (the vertex
        lies anywhere in the layer's depth).
    """
    k = len(ranges)
    r = (ranges[:, None] + model.straggling_um * _GH_X[None, :]).ravel()
    rows = [(r, np.tile(_GH_W, k), np.repeat(np.arange(k), 3), r, np.zeros(len(r), bool))]
    if model.layer_um:
        u, wu = np.polynomial.legendre.leggauss(_CUT_NODES)
        u, wu = 0.5 * (u + 1.0), 0.5 * wu
        rows.append(((ranges[:, None] * u[None, :]).ravel(), np.tile(wu, k), np.repeat(np.arange(k), len(u)),
                     np.repeat(ranges, len(u)), np.ones(k * len(u), bool)))
    return tuple(np.concatenate(parts) for parts in zip(*rows, strict=True))


def background_dips(lengths_um: np.ndarray, planes: np.ndarray, shrinkage: float, model: SpectrumModel,
                    *, floor: float = 0.05) -> np.ndarray:
    """p(n | L) of a false candidate's prong: isotropic in the emulsion, range about its length.

    The width of the prong's c-cell for R = L at the sheet's shrinkage, mixed with ``floor``
    of a uniform over the planes a prong of that length can span (false candidates' prongs
    are not all isotropic, and a length is not a range).
    """
    x = np.maximum(np.asarray(lengths_um, np.float64), 1e-6)
    n = np.asarray(planes, np.float64)
    step = model.z_step_um * shrinkage / x
    width = np.clip((n + 0.5) * step, 0.0, 1.0) - np.clip((n - 0.5) * step, 0.0, 1.0)
    n_max = np.floor(x / (model.shrinkage_nominal * model.z_step_um) + 0.5) + 1.0
    uniform = np.where(n <= n_max, 1.0 / (n_max + 1.0), 0.0)
    return (1.0 - floor) * width + floor * uniform


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
