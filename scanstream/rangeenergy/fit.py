"""The maximum-likelihood fit of a sheet's density (and shrinkage) to its stars' prong lengths (package docstring)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

from scanstream.errors import InputError
from scanstream.physics import emulsion as ph
from scanstream.rangeenergy.relation import LINES, line_ranges_um
from scanstream.rangeenergy.spectrum import (
    SpectrumModel,
    background_density,
    background_dips,
    depth_planes,
    line_shapes,
    line_shapes_dips,
    line_weights,
)

logger = logging.getLogger(__name__)


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
        Gaussian prior (mean, sigma) on the fitted shrinkage, e.g. a measurement with its error;
        None: none (flat within ``shrinkage_bounds``) when the prongs have dips, else
        ``lengths_only_prior``.
    lengths_only_prior : (float, float) or None
        The prior used when the prongs carry no dips and no ``shrinkage_prior`` is given.
        Lengths alone constrain the shrinkage only weakly (through the steep prongs), so it
        carries the E07 span 1.9-2.0 (sigma 0.03, that of a uniform 1.9-2.0); its width enters
        the density's error. With dips the data fix the shrinkage themselves.
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
    shrinkage_prior: tuple[float, float] | None = None
    lengths_only_prior: tuple[float, float] | None = (1.95, 0.03)
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
        for prior in (self.shrinkage_prior, self.lengths_only_prior):
            if prior is not None and not (len(prior) == 2 and prior[1] > 0):
                raise InputError(f"a shrinkage prior is (mean, sigma > 0), got {prior!r}")
        if self.th_fraction is not None and not 0.0 <= self.th_fraction <= 1.0:
            raise InputError(f"thorium fraction must lie in [0, 1], got {self.th_fraction!r}")
        if not 0.0 < self.prong_efficiency <= 1.0:
            raise InputError(f"prong efficiency must lie in (0, 1], got {self.prong_efficiency!r}")
        if self.bootstrap < 0 or self.min_prongs < 1:
            raise InputError(f"bootstrap >= 0 and min_prongs >= 1 required, got {self.bootstrap}, {self.min_prongs}")

    def prior(self, dips: bool) -> tuple[float, float] | None:
        """The prior on a fitted shrinkage: ``shrinkage_prior``, else ``lengths_only_prior`` for prongs without dips."""
        return self.shrinkage_prior if self.shrinkage_prior is not None or dips else self.lengths_only_prior


# parameter vector: density, shrinkage, logit(th_fraction), logit(background fraction), slope (1/um),
# log(the picker's relative length error)
_NAMES = ("density", "shrinkage", "th_fraction", "background_fraction", "background_slope_per_um", "noise_rel")
_NOISE_BOUNDS = (0.005, 0.2)
_NOISE_START = 0.04
_LOGIT_BOUND = 9.0
# finite-difference steps for the curvature: the likelihood has kinks where a line's steepest
# prongs reach one more focal plane, so steps far below the errors would measure the kinks
_STEPS = np.array([5e-3, 5e-3, 5e-2, 5e-2, 5e-3, 2e-2])


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
    """Negative log-likelihood of in-window prongs; line shapes cached per (density, shrinkage, noise).

    Each prong is its length or, with ``planes`` (the focal planes its dip says it spans in
    depth), its length and planes jointly (:func:`line_shapes_dips`).

    With ``config.stars`` each object is one term: a thorium or uranium star whose m prongs
    come from m *different* lines of its chain (the sum over the assignments of lines to
    prongs, conditional on the m prongs lying in the window), or a false candidate whose prongs
    all follow the background. Otherwise each prong is a term of a mixture of all ten lines.
    """

    def __init__(self, x: np.ndarray, groups: np.ndarray, model: SpectrumModel, config: FitConfig,
                 planes: np.ndarray | None = None) -> None:
        self.x, self.model, self.config, self.planes = x, model, config, planes
        self.prior = config.prior(dips=planes is not None)
        lo, hi = model.window_um
        self.grid = np.arange(lo, hi + model.grid_step_um, model.grid_step_um)
        pos = (x - lo) / model.grid_step_um
        self.i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(self.grid) - 2)
        self.frac = (pos - self.i0)[:, None]
        self._cache: dict[tuple[float, float, float], tuple[np.ndarray, np.ndarray]] = {}
        # objects by their number of in-window prongs: (index array (n_m, m), {star: maps (n_maps, m)})
        self.by_m: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        order = np.argsort(groups, kind="stable")
        _, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
        for m in range(1, MAX_STAR_PRONGS + 1):
            rows = [order[s:s + m] for s, c in zip(starts, counts, strict=True) if c == m]
            if rows:
                maps = {k: np.array(list(itertools.permutations(v, m))) for k, v in _STARS.items() if len(v) >= m}
                self.by_m[m] = (np.array(rows), maps)

    def shapes(self, density: float, shrinkage: float, noise_rel: float) -> tuple[np.ndarray, np.ndarray]:
        key = (float(density), float(shrinkage), float(noise_rel))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            if self.planes is not None:
                self._cache[key] = line_shapes_dips(self.x, self.planes, density, shrinkage, self.model, noise_rel)
            else:
                g, inside = line_shapes(self.grid, density, shrinkage, self.model, noise_rel)
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
        density, shrinkage, t_th, t_bg, slope, log_noise = (float(v) for v in u)
        g, inside = self.shapes(density, shrinkage, math.exp(log_noise))
        f_th, f_bg = float(special.expit(t_th)), float(special.expit(t_bg))
        bg = background_density(self.x, slope, self.model.window_um)
        if self.planes is not None:
            bg = bg * background_dips(self.x, self.planes, shrinkage, self.model)
        if self.config.stars:
            nll = self._star_terms(g, inside, f_th, f_bg, bg)
        else:
            w = line_weights(f_th)
            p = g @ w / (inside @ w)
            if self.config.background:
                p = (1.0 - f_bg) * p + f_bg * bg
            nll = -float(np.sum(np.log(np.maximum(p, 1e-300))))
        if self.prior is not None and self.config.shrinkage is None:
            nll += 0.5 * ((shrinkage - self.prior[0]) / self.prior[1]) ** 2
        return nll


def _bounds(config: FitConfig, model: SpectrumModel) -> list[tuple[float, float]]:
    s = (config.shrinkage, config.shrinkage) if config.shrinkage is not None else config.shrinkage_bounds
    t = special.logit(config.th_fraction) if config.th_fraction is not None else None
    th = (float(np.clip(t, -_LOGIT_BOUND, _LOGIT_BOUND)),) * 2 if t is not None else (-_LOGIT_BOUND, _LOGIT_BOUND)
    bg = (-_LOGIT_BOUND, _LOGIT_BOUND) if config.background else (-_LOGIT_BOUND, -_LOGIT_BOUND)
    slope = (-0.3, 0.3) if config.background else (0.0, 0.0)
    noise = (math.log(model.noise_rel or 1e-6),) * 2 if model.noise_rel is not None else tuple(map(math.log, _NOISE_BOUNDS))
    return [config.density_range, s, th, bg, slope, noise]


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
    bounds = _bounds(config, nll.model)
    free = _free(bounds)
    if start is None:
        s0 = bounds[1][0] if not free[1] else (nll.prior or (float(np.mean(bounds[1])), 0))[0]
        th0 = 0.0 if free[2] else bounds[2][0]
        noise0 = math.log(_NOISE_START) if free[5] else bounds[5][0]
        u0 = np.array([np.mean(bounds[0]), s0, th0, -2.0 if free[3] else bounds[3][0], 0.0, noise0])
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
    u : float array (6,)
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
    vals = [float(u[0]), float(u[1]), float(special.expit(u[2])), f_bg, float(u[4]), math.exp(float(u[5]))]
    jac = [1.0, 1.0, vals[2] * (1 - vals[2]), vals[3] * (1 - vals[3]), 1.0, vals[5]]
    out: dict[str, Any] = {}
    for i, name in enumerate(_NAMES):
        out[name] = vals[i]
        out[f"{name}_err"] = None if not np.isfinite(err[i]) else float(err[i] * jac[i])
        if boot is not None:
            col = boot[:, i] if i in (0, 1, 4) else np.exp(boot[:, i]) if i == 5 else special.expit(boot[:, i])
            out[f"{name}_bootstrap_err"] = float(np.std(col, ddof=1)) if len(col) > 1 else None
    return out


def _bootstrap(x: np.ndarray, groups: np.ndarray, u: np.ndarray, model: SpectrumModel, config: FitConfig,
               planes: np.ndarray | None) -> np.ndarray:
    """Refits (from the best fit) of ``config.bootstrap`` resamplings of the objects, (B, 6)."""
    members = [np.flatnonzero(groups == i) for i in range(int(groups.max()) + 1)]
    rng = np.random.default_rng(config.seed)
    rows = []
    for _ in range(config.bootstrap):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[i] for i in pick])
        new_groups = np.repeat(np.arange(len(pick)), [len(members[i]) for i in pick])
        sub = _Likelihood(x[idx], new_groups, model, config, None if planes is None else planes[idx])
        rows.append(_best_fit(sub, config, start=u)[0])
    return np.array(rows)


def _checked(lengths_um: np.ndarray, groups: np.ndarray | None,
             dips_deg: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Lengths, groups and dips as flat arrays, refused (InputError) when non-finite or of other lengths."""
    x_all = np.asarray(lengths_um, np.float64).ravel()
    if not np.all(np.isfinite(x_all)):
        raise InputError(f"prong lengths must be finite; got {int(np.sum(~np.isfinite(x_all)))} non-finite value(s)")
    g_all = np.arange(len(x_all)) if groups is None else np.asarray(groups).ravel()
    if len(g_all) != len(x_all):
        raise InputError(f"{len(g_all)} group labels for {len(x_all)} prong lengths")
    d_all = None if dips_deg is None else np.asarray(dips_deg, np.float64).ravel()
    if d_all is not None and (len(d_all) != len(x_all) or not np.all(np.isfinite(d_all))):
        raise InputError(f"{len(d_all)} dips for {len(x_all)} prong lengths; every prong needs a finite dip")
    return x_all, g_all, d_all


def fit_spectrum(lengths_um: np.ndarray, *, groups: np.ndarray | None = None, dips_deg: np.ndarray | None = None,
                 model: SpectrumModel | None = None, config: FitConfig | None = None) -> dict[str, Any]:
    """Maximum-likelihood density and shrinkage of a sheet from alpha prong lengths (and dips).

    Parameters
    ----------
    lengths_um : float array (n,)
        Measured prong lengths (um, as the picker reports them); those outside the window are
        counted but not fitted.
    groups : int array (n,), optional
        The object of each prong (the bootstrap resamples objects, whose prongs are fitted
        together); default one object per prong.
    dips_deg : float array (n,), optional
        Each prong's dip (degrees from the plate plane, as the picker reports it): the fit is
        then joint in length and depth (:func:`line_shapes_dips`), and the dips' isotropy fixes
        the shrinkage. NaN dips are an error; leave the argument out for a length-only fit.
    model : SpectrumModel, optional
    config : FitConfig, optional

    Returns
    -------
    dict
        ``density`` (g/cm3), ``shrinkage``, ``th_fraction``, ``background_fraction``,
        ``background_slope_per_um``, ``noise_rel`` (the picker's relative length error, fitted
        unless ``model.noise_rel`` is given), each with ``*_err`` (density: profile likelihood, also
        ``density_err_lower`` / ``_upper``; shrinkage: profile + conditional curvature; others:
        inverse Hessian; None when fixed or at a bound) and, with a bootstrap,
        ``*_bootstrap_err``; ``line_ranges_um`` at the fit; ``prongs``, ``prongs_fitted``,
        ``objects_fitted`` (objects with 1-5 prongs in the window), ``nll``, ``converged``,
        ``window_um``, ``shrinkage_fixed``, ``dips`` (whether they were fitted),
        ``shrinkage_prior`` (the prior used, or None).

    Raises
    ------
    InputError
        Fewer than ``config.min_prongs`` prongs inside the window, or non-finite lengths.
    """
    model = model or SpectrumModel()
    config = config or FitConfig()
    x_all, g_all, d_all = _checked(lengths_um, groups, dips_deg)
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
    planes = None if d_all is None else depth_planes(x, d_all[keep], model)
    nll = _Likelihood(x, g_in, model, config, planes)
    u, ok = _best_fit(nll, config)
    bounds = _bounds(config, model)
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
    boot = _bootstrap(x, g_in, u, model, config, planes) if config.bootstrap else None
    out = _report(u, err, boot, config)
    out.update(
        line_ranges_um={ln.nuclide: float(r) for ln, r in zip(LINES, line_ranges_um(out["density"]), strict=True)},
        prongs=len(x_all), prongs_fitted=len(x), objects_fitted=int(g_in.max() + 1), nll=float(nll(u)),
        converged=ok,
        window_um=[float(lo), float(hi)],
    )
    out.update(profile)
    out["shrinkage_fixed"] = config.shrinkage is not None
    out["dips"] = planes is not None
    out["shrinkage_prior"] = None if nll.prior is None or config.shrinkage is not None else list(nll.prior)
    return out


def fit_sheet(lengths: Sequence[np.ndarray], *, dips: Sequence[np.ndarray] | None = None,
              model: SpectrumModel | None = None, config: FitConfig | None = None) -> dict[str, Any]:
    """Fit a sheet's density and shrinkage from its alpha decays' (or selected candidates') prongs.

    Parameters
    ----------
    lengths : sequence of float arrays
        One array per object: its measured prong lengths (um), e.g. ``track_lengths_um``.
    dips : sequence of float arrays, optional
        One array per object, parallel to ``lengths``: its prongs' dips (degrees), e.g.
        ``track_dips_deg``; they fix the shrinkage (:func:`fit_spectrum`).
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
    flat_dips = None
    if dips is not None:
        dip_arrays = [np.asarray(a if a is not None else [], np.float64).ravel() for a in dips]
        if [len(a) for a in dip_arrays] != [len(a) for a in arrays]:
            raise InputError("dips must give one dip per prong length, object by object")
        flat_dips = np.concatenate(dip_arrays)
    out = fit_spectrum(flat, groups=groups, dips_deg=flat_dips, model=model, config=config)
    out["objects"] = len(arrays)
    return out
