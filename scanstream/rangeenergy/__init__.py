"""The range-energy relation of alpha particles in emulsion, and its calibration per sheet.

Alpha decays of the thorium and uranium chains are mono-energetic lines; their ranges in a
sheet fix the sheet's density (and, through the depth part of each prong, weakly, its shrinkage).

The relation
------------
Ranges at the reference density 3.60 g/cm3 come from the group's range-energy table
(docs/physics.md: ten alpha lines from Ra-226, 4.784 MeV, 20.2 um, to Po-212, 8.785 MeV, 49.8 um),
interpolated in log-log between its points and continued outside them with the slope of the
power law R = a E^b (a = 1.98 um, b = 1.48, which fits the table within about 1 um). At another
density every range scales as

    R(E, rho) = R(E, 3.60) * (rho / 3.60) ** -0.63

(the Po-212 ranges 47.96 um at 3.815, 49.76 um at 3.60 and 50.65 um at 3.50 g/cm3). The code
is the simulator's (:func:`scanstream.physics.emulsion.alpha_range_um`): one copy of the
relation serves both the simulation and the calibration.

>>> round(float(range_um(8.785, density=3.50)), 2)  # the table's 49.8 um scaled; docs/physics.md: 50.65
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

plus the picker's error (a relative part, fitted from the lines' widths unless a picker's
error table gives it, and an absolute part) and the range straggling (sigma 1 um on R). Flat
prongs measure R whatever the shrinkage; steep ones are stretched by 2.0 / Sh and quantised.
Each line's shape (:func:`line_shapes`) integrates this over c numerically.

Where the object table has each prong's dip (``track_dips_deg``), the dip gives the number of
focal planes n the prong spans in depth, and a line's shape becomes the joint density of
(L, n) (:func:`line_shapes_dips`): the length integrated over the directions of that one
plane cell. Since c is uniform for isotropic decays, where the cells lie fixes the shrinkage,
independently of the density. Prongs that leave the emulsion layer (probability R c / 450 um)
end early and are modelled too. Each object is a thorium or uranium star whose prongs are different lines
of its chain, or a false candidate whose prongs follow a smooth background (exponential in
length over the fit window).

The fit
-------
:func:`fit_spectrum` maximises the likelihood of the prong lengths inside a window (default
the former method's 15-55 um, so selected candidates and verified decays are treated alike)
over the density, the shrinkage (from the dips with no prior; from lengths alone with a
Gaussian prior, default 1.95 +- 0.03, the E07 span), the picker's relative length error, the
share of thorium-series stars, the background fraction and its slope. It starts from a
scan over density (the likelihood has local maxima where lines swap places), then polishes
with L-BFGS-B. The density's error comes from its profile likelihood (where it has risen by
1/2, the other parameters re-fitted), the shrinkage's from the same profile plus its
conditional curvature, the others' from the inverse Hessian; a bootstrap over objects on
request.
"""

from __future__ import annotations

from scanstream.rangeenergy.fit import MAX_STAR_PRONGS, FitConfig, fit_sheet, fit_spectrum
from scanstream.rangeenergy.io import (
    SheetProngs,
    alpha_object_ids,
    expected_spectrum,
    plot_spectrum,
    read_sheet_lengths,
    read_sheet_prongs,
    run_range_energy,
)
from scanstream.rangeenergy.relation import (
    DENSITY_EXPONENT,
    LINES,
    POWER_A_UM,
    POWER_B,
    REFERENCE_DENSITY,
    RESULT_FILE,
    SPECTRUM_FILE,
    Line,
    density_from_range,
    energy_mev,
    line_ranges_um,
    power_law_range_um,
    range_um,
)
from scanstream.rangeenergy.spectrum import (
    SpectrumModel,
    background_density,
    background_dips,
    corrected_dips_deg,
    depth_planes,
    line_shapes,
    line_shapes_dips,
    line_weights,
    reported_lengths_um,
)

__all__ = [
    "DENSITY_EXPONENT",
    "LINES",
    "MAX_STAR_PRONGS",
    "POWER_A_UM",
    "POWER_B",
    "REFERENCE_DENSITY",
    "RESULT_FILE",
    "SPECTRUM_FILE",
    "FitConfig",
    "Line",
    "SheetProngs",
    "SpectrumModel",
    "alpha_object_ids",
    "background_density",
    "background_dips",
    "corrected_dips_deg",
    "density_from_range",
    "depth_planes",
    "energy_mev",
    "expected_spectrum",
    "fit_sheet",
    "fit_spectrum",
    "line_ranges_um",
    "line_shapes",
    "line_shapes_dips",
    "line_weights",
    "plot_spectrum",
    "power_law_range_um",
    "range_um",
    "read_sheet_lengths",
    "read_sheet_prongs",
    "reported_lengths_um",
    "run_range_energy",
]
