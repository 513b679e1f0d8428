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
from scanstream.physics.picker import DEFAULT_PICKER, PickerModel
from scanstream.picker import cuts as bl
from scanstream.rangeenergy.relation import _INTENSITY, _IS_TH, line_ranges_um

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpectrumModel:
    """How the picker turns a line into measured lengths (um); defaults from the picker and docs/physics.md.

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
