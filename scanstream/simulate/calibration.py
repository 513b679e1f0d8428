"""Calibration of the simulator against the paper's Table 2 (the former method on TEST).

For each seed: simulate the picker features (no images) of a full-size TRAIN (15,885 objects,
906 alpha decays, two sheets) and TEST (46,948 objects, 255 alpha decays, a third sheet), choose
the former method's cuts on TRAIN (:func:`scanstream.picker.cuts.choose_config`), apply them to
TEST, and compare with the paper: 2,489 selected, precision 0.081 +- 0.006, recall
0.788 +- 0.056. The band the simulator must hold for every seed: precision 0.06-0.11 and
recall 0.70-0.86 with about 2,500 selected. ``benchmarks/simulator_calibration.py`` runs it
over seeds and writes docs/simulator/calibration.json and .md. The features come from the
default picker model, or from one calibrated to the picker's measured errors
(:func:`scanstream.simulate.pickercal.calibrate_picker`).
"""

from __future__ import annotations

import logging
import time

from scanstream.physics.picker import DEFAULT_PICKER, PickerModel
from scanstream.picker.cuts import DEFAULT_CONFIG, choose_config, run_baseline_table, summarize
from scanstream.simulate.dataset import dataset_tables

logger = logging.getLogger(__name__)

PAPER = {"selected": 2489, "true_positives": 201, "alpha": 255, "objects": 46948, "precision": 0.081, "recall": 0.788}
BAND = {"precision": (0.06, 0.11), "recall": (0.70, 0.86)}


def calibrate_seed(seed: int, *, workers: int = 1, scale: float = 1.0, picker: PickerModel = DEFAULT_PICKER) -> dict:
    """The former method on one seed's TEST (full size by default), with cuts chosen on its TRAIN (and the
    defaults), the features measured by ``picker``."""
    t0 = time.perf_counter()
    tables = dataset_tables(scale=scale, seed=seed, workers=workers, splits=("train", "test"), picker=picker)
    seconds = time.perf_counter() - t0
    chosen = choose_config(tables["train"])
    out: dict = {"seed": seed, "features_seconds": round(seconds, 1), "cuts_from_train": chosen.to_dict()}
    test = tables["test"]
    for name, cfg in (("train_cuts", chosen), ("default_cuts", DEFAULT_CONFIG)):
        s = summarize(test, run_baseline_table(test, config=cfg))
        s["in_band"] = bool(
            BAND["precision"][0] <= s["precision"]["value"] <= BAND["precision"][1]
            and BAND["recall"][0] <= s["recall"]["value"] <= BAND["recall"][1]
        )
        out[name] = s
    sheet = test.column("sheet")[0].as_py()
    out["test_sheet"] = {"sheet": sheet, **{k[6:]: round(float(test.column(k)[0].as_py()), 3) for k in
                                            ("truth_density", "truth_shrinkage", "truth_fog")}}
    return out


def to_markdown(results: list[dict]) -> str:
    """A table of the calibration results (one row per seed), with the paper's figures on top."""
    lines = [
        "| seed | TEST sheet (density, shrinkage) | cuts chosen on TRAIN | selected | true pos. | precision | recall | in band |",
        "|---|---|---|---|---|---|---|---|",
        (f"| paper | E07 TEST | multiplicity + track length | {PAPER['selected']:,} | {PAPER['true_positives']} / "
        f"{PAPER['alpha']} | 0.081 +- 0.006 | 0.788 +- 0.056 | |"),
    ]
    for r in results:
        s, c, ts = r["train_cuts"], r["cuts_from_train"], r["test_sheet"]
        cuts = f"m {c['min_multiplicity']}-{c['max_multiplicity']}, {c['min_length_um']:g}-{c['max_length_um']:g} um"
        lines.append(
            f"| {r['seed']} | {ts['sheet']} ({ts['density']:.3f}, {ts['shrinkage']:.3f}) | {cuts} | {s['selected']:,} | "
            f"{s['true_positives']} / {s['alpha']} | {s['precision']['value']:.3f} +- {s['precision']['error']:.3f} | "
            f"{s['recall']['value']:.3f} +- {s['recall']['error']:.3f} | {'yes' if s['in_band'] else 'NO'} |"
        )
    lines.append("")
    lines.append("False positives of the former method by category (cuts chosen on TRAIN):")
    lines.append("")
    cats = sorted({k for r in results for k in r["train_cuts"].get("false_positives_by_category", {})})
    lines.append("| seed | " + " | ".join(cats) + " |")
    lines.append("|---|" + "---|" * len(cats))
    for r in results:
        fp = r["train_cuts"].get("false_positives_by_category", {})
        lines.append(f"| {r['seed']} | " + " | ".join(str(fp.get(c, 0)) for c in cats) + " |")
    return "\n".join(lines) + "\n"
