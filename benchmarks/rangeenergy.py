"""How well alpha decays calibrate a sheet's density: simulated sheets, fitted, against the truth.

Each seed is one simulated sheet (features only, no images) whose density and shrinkage are
spread over 3.50-3.74 g/cm3 and the simulator's 1.90-2.00 (stratified over the seeds, so the
runs cover both ranges). From the sheet's alpha decays, the first 50, 200 and 1,000 are fitted
(:func:`scanstream.rangeenergy.fit_sheet`, default settings: shrinkage fitted under its prior);
with ``--contamination F``, the 200- and 1,000-decay samples are fitted again with false
candidates mixed in: non-alpha objects of the same sheet that pass the former method's cuts
(:func:`scanstream.picker.cuts.select`), F of the inputs. ``--fixed-shrinkage`` adds fits with
the shrinkage fixed at its true value (a perfectly measured shrinkage), and
``--measured-shrinkage SIGMA ...`` fits with the shrinkage measured to SIGMA: each sheet's
measurement is its truth plus a Gaussian error of that width (drawn from the sheet's seed),
given to the fit as its prior (``--shrinkage-prior MEASURED SIGMA`` on the command line), as
when the scanner reports the developed emulsion thickness and the poured one is known.

Usage::

    python benchmarks/rangeenergy.py [--seeds 6] [--decays 50 200 1000] [--contamination 0.2]
        [--fixed-shrinkage] [--measured-shrinkage SIGMA ...] [--fixed-only] [--shrinkage-prior MEAN SIGMA]
        [--prongs] [--out FILE]

Prints one JSON document: per setting, each sheet's truth and fit and a summary (mean and
standard deviation of the density's deviation in %, the largest |deviation|, the share within
1 % and 1.5 %, the mean and RMS of the pulls (fit - truth) / error, CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from scanstream.picker import cuts as bl
from scanstream.rangeenergy import FitConfig, fit_sheet
from scanstream.simulate import simulate_table

DENSITY_SPAN = (3.50, 3.74)
SHRINKAGE_SPAN = (1.90, 2.00)
FALSE_PASS_RATE = 0.03  # about 4.5 % of non-alpha objects pass the cuts; sized low to have enough


def sheet_truth(seed: int, n_seeds: int, density_span: tuple[float, float] = DENSITY_SPAN,
                shrinkage_span: tuple[float, float] = SHRINKAGE_SPAN) -> tuple[float, float]:
    """Stratified (density, shrinkage) of sheet ``seed`` of ``n_seeds``: both spans covered."""
    u = (seed + 0.5) / n_seeds
    v = (0.3 + seed * 0.6180339887) % 1.0  # golden-ratio sequence: shrinkages spread, unrelated to u
    return (round(density_span[0] + u * (density_span[1] - density_span[0]), 4),
            round(shrinkage_span[0] + v * (shrinkage_span[1] - shrinkage_span[0]), 4))


def simulate_prongs(seed: int, density: float, shrinkage: float, n_alpha: int, n_false: int, *,
                    prefix: str = "RE") -> tuple[tuple[list, list], tuple[list, list]]:
    """(lengths, dips) of a simulated sheet's alpha decays (about ``n_alpha``) and of its false
    candidates (non-alpha objects passing the cuts; about ``n_false`` or more): sheet ``{prefix}{seed}``."""
    n_other = math.ceil(n_false / FALSE_PASS_RATE) if n_false else 0
    table = simulate_table(objects=n_alpha + n_other, alpha_fraction=n_alpha / (n_alpha + n_other),
                           sheet=f"{prefix}{seed}", seed=seed, conditions={"density": density, "shrinkage": shrinkage})
    label = np.asarray(table.column("label").to_pylist())
    mult = np.asarray(table.column("multiplicity").to_pylist())
    lengths = [np.asarray(x, np.float64) for x in table.column("track_lengths_um").to_pylist()]
    dips = [np.asarray(x, np.float64) for x in table.column("track_dips_deg").to_pylist()]
    selected, _ = bl.select(mult, lengths)
    alpha, false = np.flatnonzero(label == 1), np.flatnonzero((label == 0) & selected)
    return ([lengths[i] for i in alpha], [dips[i] for i in alpha]), ([lengths[i] for i in false], [dips[i] for i in false])


def simulate_sheet(seed: int, density: float, shrinkage: float, n_alpha: int, n_false: int) -> tuple[list, list]:
    """Prong lengths of ``n_alpha`` alpha decays and of at least ``n_false`` false candidates."""
    (alphas, _), (false, _) = simulate_prongs(seed, density, shrinkage, n_alpha, n_false)
    return alphas, false


def measured_shrinkages(seed: int, shrinkage: float, sigmas: list[float]) -> list[tuple[float, float]]:
    """(sigma, the sheet's measured shrinkage) for each measurement error: truth + N(0, sigma)."""
    rng = np.random.default_rng([seed, 77])
    z = rng.standard_normal()  # one draw per sheet, scaled per sigma: the same sheet errs the same way
    return [(s, round(shrinkage + s * z, 4)) for s in sigmas]


def one_fit(lengths: list, density: float, shrinkage: float, config: FitConfig) -> dict:
    t = time.process_time()
    fit = fit_sheet(lengths, config=config)
    dev = 100.0 * (fit["density"] / density - 1.0)
    err = fit["density_err"]
    return {
        "true_density": density, "true_shrinkage": shrinkage,
        "density": round(fit["density"], 4), "density_err": None if err is None else round(err, 4),
        "deviation_pct": round(dev, 3), "pull": None if not err else round((fit["density"] - density) / err, 2),
        "shrinkage": round(fit["shrinkage"], 4), "shrinkage_err": fit["shrinkage_err"] and round(fit["shrinkage_err"], 4),
        "background_fraction": round(fit["background_fraction"], 3), "prongs_fitted": fit["prongs_fitted"],
        "cpu_s": round(time.process_time() - t, 2),
    }


def summarize(rows: list[dict]) -> dict:
    dev = np.array([r["deviation_pct"] for r in rows])
    pulls = np.array([r["pull"] for r in rows if r["pull"] is not None])
    errs = np.array([100 * r["density_err"] / r["true_density"] for r in rows if r["density_err"]])
    return {
        "sheets": len(rows),
        "deviation_pct_mean": round(float(dev.mean()), 3),
        "deviation_pct_std": round(float(dev.std(ddof=1)), 3) if len(dev) > 1 else None,
        "deviation_pct_rms": round(float(np.sqrt(np.mean(dev**2))), 3),
        "max_abs_deviation_pct": round(float(np.abs(dev).max()), 3),
        "within_1pct": f"{int(np.sum(np.abs(dev) <= 1.0))}/{len(dev)}",
        "within_1.5pct": f"{int(np.sum(np.abs(dev) <= 1.5))}/{len(dev)}",
        "stated_error_pct_mean": round(float(errs.mean()), 3) if len(errs) else None,
        "pull_mean": round(float(pulls.mean()), 2) if len(pulls) else None,
        "pull_rms": round(float(np.sqrt(np.mean(pulls**2))), 2) if len(pulls) else None,
        "cpu_s_per_fit": round(float(np.mean([r["cpu_s"] for r in rows])), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=6, help="simulated sheets (default 6)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--decays", type=int, nargs="+", default=[50, 200, 1000], help="alpha decays per fit")
    p.add_argument("--contamination", type=float, default=0.2, help="share of false candidates among the inputs")
    p.add_argument("--contaminated-decays", type=int, nargs="*", default=[200, 1000])
    p.add_argument("--fixed-shrinkage", action="store_true", help="also fit with the true shrinkage fixed")
    p.add_argument("--fixed-only", action="store_true",
                   help="skip the fits whose shrinkage is free under the default prior (keep fixed and measured ones)")
    p.add_argument("--measured-shrinkage", type=float, nargs="+", default=[], metavar="SIGMA",
                   help="also fit with the shrinkage measured to SIGMA (truth + N(0, SIGMA) as the prior)")
    p.add_argument("--shrinkage-prior", type=float, nargs=2, metavar=("MEAN", "SIGMA"),
                   help="prior on the fitted shrinkage (default FitConfig's)")
    p.add_argument("--prongs", action="store_true", help="fit prongs independently (FitConfig(stars=False))")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    t0 = time.process_time()
    n_max = max(args.decays + args.contaminated_decays)
    f = args.contamination
    n_false_max = round(max(args.contaminated_decays or [0]) * f / (1 - f)) if f > 0 else 0
    base = FitConfig(stars=not args.prongs)
    if args.shrinkage_prior:
        base = replace(base, shrinkage_prior=tuple(args.shrinkage_prior))
    results: dict[str, list[dict]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rho, sh = sheet_truth(seed - args.first_seed, args.seeds)
        alphas, false = simulate_sheet(seed, rho, sh, n_max, n_false_max)
        settings: list[tuple[str, list, FitConfig]] = []
        for n in args.decays:
            if not args.fixed_only:
                settings.append((f"{n} decays", alphas[:n], base))
            if args.fixed_shrinkage:
                settings.append((f"{n} decays, shrinkage fixed at truth", alphas[:n], replace(base, shrinkage=sh)))
            for sigma, measured in measured_shrinkages(seed, sh, args.measured_shrinkage):
                settings.append((f"{n} decays, shrinkage measured to {sigma:g}", alphas[:n],
                                 replace(base, shrinkage_prior=(measured, sigma))))
        for n in args.contaminated_decays if f > 0 else []:
            k = round(n * f / (1 - f))
            if k > len(false):
                print(f"seed {seed}: only {len(false)} false candidates, {k} wanted", file=sys.stderr)
            mixed = alphas[:n] + false[:k]
            if not args.fixed_only:
                settings.append((f"{n} decays + {100 * f:g} % false candidates", mixed, base))
            for sigma, measured in measured_shrinkages(seed, sh, args.measured_shrinkage):
                settings.append((f"{n} decays + {100 * f:g} % false candidates, shrinkage measured to {sigma:g}", mixed,
                                 replace(base, shrinkage_prior=(measured, sigma))))
        for name, lengths, config in settings:
            row = one_fit(lengths, rho, sh, config)
            row["seed"] = seed
            results.setdefault(name, []).append(row)
    doc = {
        "benchmark": "rangeenergy",
        "density_span": DENSITY_SPAN, "shrinkage_span": SHRINKAGE_SPAN, "seeds": args.seeds,
        "fit_config": asdict(base),
        "summary": {name: summarize(rows) for name, rows in results.items()},
        "sheets": results,
        "cpu_s_total": round(time.process_time() - t0, 1),
    }
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
