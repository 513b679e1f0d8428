"""Calibration of the simulator against the paper's Table 2 (the former method on TEST).

For each seed: simulate the picker features (no images) of a full-size TRAIN (15,885 objects,
906 alpha decays, two sheets) and TEST (46,948 objects, 255 alpha decays, a third sheet), choose
the former method's cuts on TRAIN, apply them to TEST, and compare with the paper
(:func:`scanstream.simulate.calibration.calibrate_seed`). The band the simulator must hold for
every seed: precision 0.06-0.11 and recall 0.70-0.86 with about 2,500 selected.

``--picker-errors FILE`` measures the features with the picker model calibrated to a measured
error table (``benchmarks/picker_errors.py --table``;
:func:`scanstream.simulate.pickercal.calibrate_picker`) instead of the default one.

Usage::

    python benchmarks/simulator_calibration.py --seeds 0 1 2 3 4 5 --workers 2 \\
        --out docs/simulator/calibration.json --markdown docs/simulator/calibration.md
    python benchmarks/simulator_calibration.py --seeds 0 --workers 1 --picker-errors docs/pick/picker_errors.json

Prints the Markdown table (one row per seed, the paper's figures on top).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from scanstream.atomic import write_text
from scanstream.picker.cuts import DEFAULT_CONFIG
from scanstream.simulate.calibration import BAND, PAPER, calibrate_seed, to_markdown
from scanstream.simulate.pickercal import model_parameters, picker_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the results as JSON")
    p.add_argument("--markdown", type=Path, help="write the results as a Markdown table")
    p.add_argument("--picker-errors", type=Path, metavar="FILE", help="calibrate the simulated picker to this measured error table")
    p.add_argument("--picker-group", default="tuning", help="the table's seed group (default tuning)")
    p.add_argument("--scale", type=float, default=1.0, help="the paper's Table 1 times this (1: full size; tests use less)")
    a = p.parse_args(argv)
    load = os.getloadavg()[0]
    picker = picker_model(a.picker_errors, group=a.picker_group)
    results = [calibrate_seed(s, workers=a.workers, scale=a.scale, picker=picker) for s in a.seeds]
    report = {"paper": PAPER, "band": BAND, "default_cuts": DEFAULT_CONFIG.to_dict(), "seeds": results,
              "load_average_at_start": round(load, 2), "scale": a.scale,
              "picker": "default" if a.picker_errors is None else {"errors": str(a.picker_errors), "group": a.picker_group,
                                                                   **model_parameters(picker)}}
    if a.out:
        write_text(a.out, json.dumps(report, indent=1) + "\n")
    if a.markdown:
        write_text(a.markdown, to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
