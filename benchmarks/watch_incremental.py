"""watch's cost per store as the table grows: 20 small stores (one sheet each) added in turn.

Prints one JSON document. Each store lands in the inbox and ``watch(once=True)`` runs (one Dask
LocalCluster for the whole run, as a night's watch has); a store's overhead is the call's wall
time less the seconds its Dask tasks spent scoring and writing parts: the inbox poll, planning,
the merge into the table (checks, ranking and rewriting the touched sheet, the manifest) and the
morning summary (``classify_overhead_s``: planning and merge only). Side by side with each add
to the growing table, the same store is added to a control table holding one store (a fresh
copy each time), so the machine's load cancels in ``grown_over_control``. The goal: the last
store's overhead within 1.2x of the first added one's (``last_over_second``; the 20th store
against the 2nd, the first merge) and a ratio to the control that does not grow.

Usage::

    python benchmarks/watch_incremental.py [--stores 20] [--crops 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures import make_store

from scanstream.executor import dask_client
from scanstream.inference.watch import WatchConfig, watch
from scanstream.network.checkpoint import save_checkpoint
from scanstream.network.model import ModelConfig, build_model


def _add(root: Path, store: Path, config: WatchConfig) -> dict:
    """Put ``store`` in ``root/inbox`` and run ``watch(once=True)`` into ``root/cands``; its overheads."""
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    shutil.copytree(store, root / "inbox" / store.name)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    report = watch(root / "inbox", root / "cands", config, once=True, progress=False)
    wall = time.perf_counter() - t0
    (rec,) = report.processed
    return {"overhead_s": round(wall - rec["task_seconds"], 3),
            "classify_overhead_s": round(rec["seconds"] - rec["task_seconds"], 3), "load": round(load, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", type=int, default=20)
    p.add_argument("--crops", type=int, default=64, help="crops per store")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="watch_incremental_"))
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(backbone="resnet18", input_size=32)
        ckpt = tmp / "m.safetensors"
        save_checkpoint(ckpt, build_model(cfg).eval(), model_config=cfg, train_config={}, data_hash="bench", metrics={})
        made = [make_store(tmp / "made" / f"s{i:02d}.zarr", args.crops, seed=i, sheet=f"S{i:02d}").path
                for i in range(args.stores)]
        rows = []
        with dask_client(None, workers=1) as client:
            config = WatchConfig(models=(str(ckpt),), scheduler=client.scheduler.address, device="cpu",
                                 precision="fp32", batch_size=32)
            # the control: a table holding one store (the first), copied afresh for every added store
            template = tmp / "template"
            _add(template, made[0], config)
            grown = tmp / "grown"
            _add(grown, made[0], config)
            for i, store in enumerate(made[1:], start=2):
                control = tmp / f"control-{i}"
                shutil.copytree(template, control, symlinks=True)
                g = _add(grown, store, config)
                c = _add(control, store, config)
                shutil.rmtree(control)
                rows.append({"stores_in_table": i, "grown_overhead_s": g["overhead_s"],
                             "control_overhead_s": c["overhead_s"], "grown_classify_overhead_s": g["classify_overhead_s"],
                             "control_classify_overhead_s": c["classify_overhead_s"], "load": g["load"]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        ratio = [r["grown_overhead_s"] / r["control_overhead_s"] for r in rows]
        k = min(5, len(rows) // 2) or 1
        first, last = rows[0], rows[-1]
        print(json.dumps({
            "benchmark": "watch_incremental", "stores": args.stores, "crops_per_store": args.crops,
            "second_store_overhead_s": first["grown_overhead_s"], "last_store_overhead_s": last["grown_overhead_s"],
            "last_over_second": round(last["grown_overhead_s"] / first["grown_overhead_s"], 3),
            "median_last5_over_first5": round(float(np.median([r["grown_overhead_s"] for r in rows[-k:]])
                                                    / np.median([r["grown_overhead_s"] for r in rows[:k]])), 3),
            "grown_over_control_median": round(float(np.median(ratio)), 3),
            "grown_over_control_last5_median": round(float(np.median(ratio[-k:])), 3),
            "rows": rows,
        }, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
