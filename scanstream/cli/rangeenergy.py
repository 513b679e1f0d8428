"""``scanstream range-energy``: a sheet's density (and shrinkage) from its alpha decays' prong ranges."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from scanstream.cli._common import print_json
from scanstream.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "range-energy",
        help="calibrate a sheet's range-energy relation (density, shrinkage) from its alpha decays",
        description="Fit a sheet's emulsion density (and shrinkage, under a prior) by maximum likelihood to the "
        "prong lengths of its alpha decays: the thorium and uranium lines (Po-212 8.785 MeV the longest), with "
        "straggling, the picker's length error, its depth quantisation and nominal shrinkage, and a background of "
        "false candidates (scanstream.rangeenergy). SOURCE is a candidate table directory (with --store: its "
        "selected rows of --sheet, joined to the store's prong lengths by object_id) or a labelled crop store / "
        "features-only .parquet table (its label == 1 rows of --sheet). --verdicts keeps only objects whose "
        "latest verdict is alpha. Writes OUT/rangeenergy.json and OUT/spectrum.png and prints the fit.",
    )
    p.add_argument("source", type=Path, metavar="CANDIDATES|STORE",
                   help="a candidate table directory (needs --store) or a labelled store / .parquet object table")
    p.add_argument("--store", type=Path, help="the crop store (or .parquet object table) holding the candidates' prongs")
    p.add_argument("--sheet", required=True, help="the sheet to calibrate")
    p.add_argument("--verdicts", type=Path, metavar="FILE",
                   help="a verdicts table (directory or .jsonl): keep only objects marked alpha")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where rangeenergy.json and spectrum.png go")
    g = p.add_argument_group("fit settings (defaults: scanstream.rangeenergy.FitConfig and SpectrumModel)")
    g.add_argument("--shrinkage", type=float, help="fix the sheet's shrinkage at a measured value instead of fitting it "
                   "(default: the scan metadata's EmulsionType.Sh where the table has one, else fitted)")
    g.add_argument("--fit-shrinkage", action="store_true",
                   help="fit the shrinkage even where the scan metadata gives one")
    g.add_argument("--shrinkage-prior", type=float, nargs=2, metavar=("MEAN", "SIGMA"),
                   help="Gaussian prior on the fitted shrinkage (default: none where the prongs have dips; "
                   "1.95 0.03, E07 plates 1.9-2.0, for lengths alone)")
    g.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                   help="prong lengths fitted, um (default the former method's cuts, 15 55)")
    g.add_argument("--no-background", action="store_true", help="no background term (verified decays only)")
    g.add_argument("--bootstrap", type=int, default=0, metavar="N", help="also N bootstrap refits over objects")
    g.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scanstream import rangeenergy as re
    from scanstream.candidates.table import part_files
    from scanstream.store import is_store

    if args.store is None and args.source.is_dir() and not is_store(args.source) and part_files(args.source):
        raise InputError(f"{args.source}: a candidate table needs --store STORE (the store holding its prongs)")
    config = re.FitConfig(shrinkage=args.shrinkage, background=not args.no_background, bootstrap=args.bootstrap,
                          seed=args.seed)
    if args.shrinkage_prior is not None:
        config = replace(config, shrinkage_prior=tuple(args.shrinkage_prior))
    model = re.SpectrumModel()
    if args.window is not None:
        model = re.SpectrumModel(window_um=tuple(args.window))
    doc = re.run_range_energy(args.source, sheet=args.sheet, out=args.out, store=args.store, verdicts=args.verdicts,
                              model=model, config=config, use_metadata_shrinkage=not args.fit_shrinkage)
    fit = doc["fit"]
    keys = ("density", "density_err", "shrinkage", "shrinkage_err", "shrinkage_source", "noise_rel", "th_fraction",
            "background_fraction",
            "objects", "prongs", "prongs_fitted", "converged")
    print_json({"sheet": doc["sheet"], **{k: fit.get(k) for k in keys}, "inputs": doc["inputs"],
                "json": doc["json"], "spectrum": doc["spectrum"]})
    return 0
