"""Simulator throughput: crops/s rendered (1 and 2 worker processes, and into a store) and
objects/s for picker features only. Prints JSON.

    .venv/bin/python benchmarks/simulate.py --crops 256 --features 20000

The full Table 1 dataset (67,861 crops) within 15 minutes on 2 cores needs >= 75 crops/s
into the store with 2 workers. The machine's load average is printed next to the figures,
since other work on a shared machine slows every figure down.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from scanstream.simulate.conditions import draw_conditions
from scanstream.simulate.dataset import iter_simulated, plan_sheet, simulate_store


def _rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--crops", type=int, default=256)
    p.add_argument("--features", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    sheet = "BENCH"
    cond = {sheet: draw_conditions(sheet, a.seed)}
    plans = plan_sheet(a.crops, 0.1, sheet, a.seed)
    fplans = plan_sheet(a.features, 255 / 46948, sheet, a.seed)
    load_before = os.getloadavg()[0]
    out = {
        "crops": a.crops,
        "render_crops_per_s_1_worker": _rate(a.crops, lambda: list(iter_simulated(plans, cond, workers=1))),
        "render_crops_per_s_2_workers": _rate(a.crops, lambda: list(iter_simulated(plans, cond, workers=2))),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out["store_crops_per_s_2_workers"] = _rate(
            a.crops,
            lambda: simulate_store(Path(tmp) / "b.zarr", objects=a.crops, alpha_fraction=0.1, sheet=sheet, seed=a.seed,
                                   conditions=cond[sheet], workers=2),
        )
    out["features"] = a.features
    out["features_objects_per_s_1_worker"] = _rate(
        a.features, lambda: list(iter_simulated(fplans, cond, workers=1, render=False, batch=2048))
    )
    out["features_objects_per_s_2_workers"] = _rate(
        a.features, lambda: list(iter_simulated(fplans, cond, workers=2, render=False, batch=2048))
    )
    out["table1_minutes_at_store_rate"] = 67861 / out["store_crops_per_s_2_workers"] / 60
    out["load_average_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    out["cpu_count"] = os.cpu_count()
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
