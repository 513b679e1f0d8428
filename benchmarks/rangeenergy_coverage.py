"""Coverage of the range-energy fit with the shrinkage fitted from the prongs' dips, on held-out sheets.

Simulates held-out sheets (features only, no images; seeds 1000 and up, unused while the fit
was built) whose densities are spread over 3.45-3.80 g/cm3 and shrinkages over 1.80-2.10
(stratified: both spans covered, the two unrelated), 200 alpha decays each, and fits each
sheet (:func:`scanstream.rangeenergy.fit_sheet`, default settings: density, shrinkage, the
picker's length error, thorium share and background all free; no shrinkage prior):

* ``dips``: the 200 decays' lengths and dips;
* ``dips + false``: the same with 20 % of the inputs false candidates (non-alpha objects of
  the same sheet that pass the former method's cuts, :func:`scanstream.picker.cuts.select`);
* ``lengths alone``: the 200 decays' lengths without dips (the shrinkage under the lengths-only
  prior 1.95 +- 0.03), for comparison.

Per setting: each sheet's truth, fit and errors; the share of sheets whose 68 % interval (the
profile likelihood's, lower and upper) holds the true density, and whose shrinkage's does;
pulls (fit - truth) / error, their mean and standard deviation (the pull width); deviations in
%, the worst, the shares within 0.5 / 1 / 1.5 %; CPU seconds per fit. With ``--figure`` also
the spectrum figure (lengths, and dips before and after the shrinkage correction) of one sheet.

Usage::

    python benchmarks/rangeenergy_coverage.py [--sheets 20] [--decays 200] [--false 0.2]
        [--out docs/rangeenergy/coverage.json] [--figure docs/rangeenergy/spectrum_dips.png] [--workers 4]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rangeenergy

from scanstream.atomic import write_text
from scanstream.rangeenergy import FitConfig, fit_sheet, plot_spectrum

DENSITY_SPAN = (3.45, 3.80)
SHRINKAGE_SPAN = (1.80, 2.10)
FIRST_SEED = 1000


def sheet_truth(i: int, n: int) -> tuple[float, float]:
    """Stratified (density, shrinkage) of held-out sheet ``i`` of ``n`` (rangeenergy.py's, over these spans)."""
    return rangeenergy.sheet_truth(i, n, DENSITY_SPAN, SHRINKAGE_SPAN)


def simulate_sheet(seed: int, density: float, shrinkage: float, n_alpha: int, n_false: int):
    """(lengths, dips) of the first ``n_alpha`` alpha decays and of ``n_false`` false candidates."""
    (lengths, dips), (f_lengths, f_dips) = rangeenergy.simulate_prongs(seed, density, shrinkage, n_alpha, n_false,
                                                                        prefix="HO")
    if len(f_lengths) < n_false:
        raise SystemExit(f"sheet HO{seed}: only {len(f_lengths)} false candidates pass the cuts, {n_false} wanted")
    return (lengths[:n_alpha], dips[:n_alpha]), (f_lengths[:n_false], f_dips[:n_false])


def _covered(value: float, truth: float, lower: float | None, upper: float | None) -> bool | None:
    if lower is None or upper is None:
        return None
    return value - lower <= truth <= value + upper


def one_fit(lengths: list, dips: list | None, density: float, shrinkage: float) -> tuple[dict, dict]:
    """One sheet's fit: the row of the benchmark and the fit itself."""
    t = time.process_time()
    fit = fit_sheet(lengths, dips=dips, config=FitConfig())
    cpu = time.process_time() - t
    d_err, s_err = fit["density_err"], fit["shrinkage_err"]
    row = {
        "true_density": density, "true_shrinkage": shrinkage,
        "density": round(fit["density"], 4), "density_err": d_err and round(d_err, 4),
        "density_err_lower": fit.get("density_err_lower") and round(fit["density_err_lower"], 4),
        "density_err_upper": fit.get("density_err_upper") and round(fit["density_err_upper"], 4),
        "deviation_pct": round(100.0 * (fit["density"] / density - 1.0), 3),
        "pull": None if not d_err else round((fit["density"] - density) / d_err, 2),
        "covered": _covered(fit["density"], density, fit.get("density_err_lower"), fit.get("density_err_upper")),
        "shrinkage": round(fit["shrinkage"], 4), "shrinkage_err": s_err and round(s_err, 4),
        "shrinkage_deviation_pct": round(100.0 * (fit["shrinkage"] / shrinkage - 1.0), 3),
        "shrinkage_pull": None if not s_err else round((fit["shrinkage"] - shrinkage) / s_err, 2),
        "noise_rel": round(fit["noise_rel"], 4), "background_fraction": round(fit["background_fraction"], 3),
        "prongs_fitted": fit["prongs_fitted"], "converged": fit["converged"], "cpu_s": round(cpu, 2),
    }
    return row, fit


def summarize(rows: list[dict]) -> dict:
    dev = np.array([r["deviation_pct"] for r in rows])
    pulls = np.array([r["pull"] for r in rows if r["pull"] is not None])
    s_dev = np.array([r["shrinkage_deviation_pct"] for r in rows])
    s_pulls = np.array([r["shrinkage_pull"] for r in rows if r["shrinkage_pull"] is not None])
    covered = [r["covered"] for r in rows if r["covered"] is not None]
    n = len(rows)
    return {
        "sheets": n,
        "density_coverage_68": f"{sum(covered)}/{len(covered)}",
        "density_pull_mean": round(float(pulls.mean()), 2) if len(pulls) else None,
        "density_pull_width": round(float(pulls.std(ddof=1)), 2) if len(pulls) > 1 else None,
        "density_deviation_pct_mean": round(float(dev.mean()), 3),
        "density_deviation_pct_rms": round(float(np.sqrt(np.mean(dev**2))), 3),
        "density_worst_abs_deviation_pct": round(float(np.abs(dev).max()), 3),
        "density_within_0.5pct": f"{int(np.sum(np.abs(dev) <= 0.5))}/{n}",
        "density_within_1pct": f"{int(np.sum(np.abs(dev) <= 1.0))}/{n}",
        "density_within_1.5pct": f"{int(np.sum(np.abs(dev) <= 1.5))}/{n}",
        "density_stated_error_pct_mean": round(float(np.mean([100 * r["density_err"] / r["true_density"]
                                                               for r in rows if r["density_err"]])), 3),
        "shrinkage_coverage_68": f"{int(np.sum(np.abs(s_pulls) <= 1.0))}/{len(s_pulls)}",
        "shrinkage_pull_mean": round(float(s_pulls.mean()), 2) if len(s_pulls) else None,
        "shrinkage_pull_width": round(float(s_pulls.std(ddof=1)), 2) if len(s_pulls) > 1 else None,
        "shrinkage_worst_abs_deviation_pct": round(float(np.abs(s_dev).max()), 3),
        "shrinkage_within_2pct": f"{int(np.sum(np.abs(s_dev) <= 2.0))}/{n}",
        "cpu_s_per_fit": round(float(np.mean([r["cpu_s"] for r in rows])), 2),
    }


def run_sheet(job: tuple) -> tuple[list[tuple[str, dict]], float]:
    """Simulate and fit held-out sheet ``i``: [(setting, row)] and the CPU seconds it took."""
    i, rho, sh, args, figure = job
    t0 = time.process_time()
    seed = FIRST_SEED + i
    n_false = round(args.decays * args.false / (1 - args.false))
    (lengths, dips), (f_lengths, f_dips) = simulate_sheet(seed, rho, sh, args.decays, n_false)
    settings = [("dips", lengths, dips), (f"dips + {100 * args.false:g} % false", lengths + f_lengths, dips + f_dips)]
    if not args.no_lengths_alone:
        settings.append(("lengths alone (prior 1.95 +- 0.03)", lengths, None))
    out = []
    for name, ls, ds in settings:
        row, fit = one_fit(ls, ds, rho, sh)
        row["seed"] = seed
        out.append((name, row))
        if figure is not None and name == "dips":
            plot_spectrum(ls, fit, figure, dips=ds, title=f"held-out sheet HO{seed}: {args.decays} alpha decays, "
                                                           f"truth density {rho:g} g/cm³, shrinkage {sh:g}")
    return out, time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sheets", type=int, default=20, help="held-out sheets (default 20)")
    p.add_argument("--decays", type=int, default=200, help="alpha decays per sheet (default 200)")
    p.add_argument("--false", type=float, default=0.2, help="share of false candidates among the inputs (default 0.2)")
    p.add_argument("--no-lengths-alone", action="store_true", help="skip the lengths-only comparison")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--figure", type=Path, help="the spectrum figure of the held-out sheet with the lowest shrinkage")
    p.add_argument("--workers", type=int, default=1, help="processes, one sheet each at a time (default 1)")
    args = p.parse_args(argv)
    t0 = time.time()
    truths = [sheet_truth(i, args.sheets) for i in range(args.sheets)]
    figure_sheet = int(np.argmin([s for _, s in truths]))
    jobs = [(i, rho, sh, args, args.figure if i == figure_sheet else None) for i, (rho, sh) in enumerate(truths)]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            done = list(pool.map(run_sheet, jobs))
    else:
        done = [run_sheet(job) for job in jobs]
    results: dict[str, list[dict]] = {}
    for rows, _ in done:
        for name, row in rows:
            results.setdefault(name, []).append(row)
    doc = {
        "benchmark": "rangeenergy_coverage",
        "density_span": DENSITY_SPAN, "shrinkage_span": SHRINKAGE_SPAN, "sheets": args.sheets,
        "first_seed": FIRST_SEED, "decays": args.decays, "false_share": args.false,
        "summary": {name: summarize(rows) for name, rows in results.items()},
        "sheets_fitted": results,
        "figure": None if args.figure is None else str(args.figure),
        "cpu_s_total": round(sum(cpu for _, cpu in done), 1),
        "wall_s": round(time.time() - t0, 1), "workers": args.workers,
    }
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out is not None:
        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
