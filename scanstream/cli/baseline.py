"""``scanstream baseline``: the former method (multiplicity and track-length cuts) on a store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from scanstream.cli._common import print_json
from scanstream.errors import InputError

if TYPE_CHECKING:  # the verb imports them when it runs (scikit-learn, scipy): --help stays fast
    import numpy as np
    import pyarrow as pa

    from scanstream.picker import learned as fm


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline",
        help="the former method: alpha candidates by multiplicity and track-length cuts",
        description="Select alpha-decay candidates the way it was done before the CNN: cuts on the "
        "picker's vertex multiplicity and prong lengths (scanstream.picker.cuts.BaselineConfig). "
        "Writes object_id, selected, baseline_score (--out) and prints the selection; with labels, "
        "true positives, precision and recall with sqrt(N) errors. --cuts-from TRAIN chooses the "
        "cuts on a labelled TRAIN store first (never choose them on TEST).",
    )
    p.add_argument("store", type=Path, help="a crop store (or a features-only .parquet object table)")
    p.add_argument("--out", type=Path, help="write the selection here (Parquet)")
    p.add_argument("--cuts-from", type=Path, metavar="TRAIN", help="choose the cuts on this labelled TRAIN store")
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON file of BaselineConfig fields")
    g = p.add_argument_group(
        "the learned former method",
        "boosted trees on the same picker features (multiplicity, prongs in 15-55 um, the eight longest prong "
        "lengths), fitted on a labelled TRAIN store or features-only table; scored beside the cuts "
        "(learned_score = logit in --out; with labels, its AP and the candidates it needs at the cuts' recall)",
    )
    g.add_argument("--learned", type=Path, metavar="TRAIN", help="fit the feature model on this labelled store or table")
    g.add_argument("--feature-model", type=Path, metavar="FILE", help="score with this feature model instead of fitting one")
    g.add_argument("--save-model", type=Path, metavar="FILE", help="write the fitted feature model (.safetensors)")
    g.add_argument("--prefilter-recall", type=float, metavar="R",
                   help="calibrate a cascade prefilter threshold at recall R on --calibrate-on before saving")
    g.add_argument("--calibrate-on", type=Path, metavar="STORE", help="labelled store or table (not TRAIN) for --prefilter-recall")
    g.add_argument("--seed", type=int, default=0, help="the feature model's random seed (default 0)")
    p.set_defaults(func=run)


def _learned(args: argparse.Namespace, table: pa.Table) -> tuple[fm.FeatureModel, np.ndarray] | None:
    """The feature model asked for (fitted or read, calibrated if asked) and its scores on ``table``."""
    from scanstream.picker import cuts as bl
    from scanstream.picker import learned as fm

    if args.learned is not None and args.feature_model is not None:
        raise InputError("give either --learned TRAIN (fit a feature model) or --feature-model FILE, not both")
    for flag, value in (("--save-model", args.save_model), ("--prefilter-recall", args.prefilter_recall)):
        if value is not None and args.learned is None:
            raise InputError(f"{flag} needs --learned TRAIN")
    if (args.prefilter_recall is None) != (args.calibrate_on is None):
        raise InputError("--prefilter-recall R and --calibrate-on STORE go together")
    if args.prefilter_recall is not None and not 0 < args.prefilter_recall <= 1:
        raise InputError(f"--prefilter-recall must be in (0, 1], got {args.prefilter_recall}")
    if args.learned is not None:
        model = fm.fit_feature_model(bl.read_object_table(args.learned), seed=args.seed, source=str(args.learned))
        if args.calibrate_on is not None:
            model = fm.calibrate_prefilter(model, bl.read_object_table(args.calibrate_on), recall=args.prefilter_recall,
                                           source=str(args.calibrate_on))
    elif args.feature_model is not None:
        model = fm.load_feature_model(args.feature_model)
    else:
        return None
    return model, model.score_table(table, source=str(args.store))


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from scanstream.picker import cuts as bl
    from scanstream.picker import learned as fm

    table = bl.read_object_table(args.store)
    if args.cuts_from is not None and args.config is not None:
        raise InputError("give either --cuts-from or --config, not both")
    if args.cuts_from is not None:
        config = bl.choose_config(bl.read_object_table(args.cuts_from))
    elif args.config is not None:
        try:
            fields = json.loads(args.config.read_text())
            config = bl.BaselineConfig(**fields)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{args.config}: not a BaselineConfig JSON file: {exc}") from None
    else:
        config = bl.DEFAULT_CONFIG
    result = bl.run_baseline_table(table, config=config)
    summary = bl.summarize(table, result)
    summary["cuts"] = config.to_dict()
    learned = _learned(args, table)
    if learned is not None:
        model, scores = learned
        result = result.append_column("learned_score", pa.array(scores, pa.float32()))
        recall = summary.get("recall", {}).get("value") if summary.get("true_positives") else None
        summary["learned"] = bl.summarize_scores(table, scores, at_recall=recall)
        summary["learned"]["model"] = {k: model.info[k] for k in ("train", "prefilter") if k in model.info}
        if args.save_model is not None:
            summary["learned"]["saved"] = str(fm.save_feature_model(model, args.save_model))
    if args.out is not None:
        summary["out"] = str(bl.write_result(result, args.out, config=config))
    print_json(summary)
    return 0
