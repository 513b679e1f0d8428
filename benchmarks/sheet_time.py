"""Projected time for a whole sheet (default 3 million objects) per model and path, on this machine.

Prints one JSON document. For each model, :func:`scanstream.inference.benchmark.run_benchmark`
measures on one store: the whole classify pipeline (warm workers), the forward pass on uint8
crops in memory and the networks alone on normalised tensors; each rate becomes the seconds a
sheet of ``--objects`` objects would take at it. Models: the shipped cascade
(``models/scanstream-cpu-cascade.safetensors``: the learned former method rejects most objects
before the network; the measured fraction it passes is reported as ``network_rows / crops``) and
untrained pixels-only networks of the given configurations (the same compute as trained ones);
each also exported to ONNX and run on ONNX Runtime (``scanstream export``; skipped where
onnxruntime is not installed, or with ``--no-onnx``).
The store is a physics-simulated sheet (``--store`` to use one of your own, e.g. the demo's
``demo-output/inbox/sheet-0042.zarr``, at the natural prevalence). The goal: 3 million objects
in at most one hour on the 2 development cores (830 crops/s end to end).

Usage::

    python benchmarks/sheet_time.py [--store STORE] [--n 1024] [--objects 3000000]
        [--configs mobilenet_v3_small:112,resnet18:112] [--no-onnx]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classify_throughput import make_store

from scanstream.inference.benchmark import run_benchmark
from scanstream.network.checkpoint import save_checkpoint
from scanstream.network.model import ModelConfig, build_model
from scanstream.store import open_store

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "scanstream-cpu-cascade.safetensors"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, help="a crop store with the picker's features (default: simulate one)")
    p.add_argument("--n", type=int, default=1024, help="crops of the simulated store (default 1024)")
    p.add_argument("--objects", type=int, default=3_000_000, help="objects in the projected sheet")
    p.add_argument("--configs", default="mobilenet_v3_small:112,resnet18:112")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="torch only (no ONNX Runtime rows)")
    args = p.parse_args(argv)
    if args.onnx and importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed: torch rows only (pip install 'scanstream[onnx]')", file=sys.stderr)
        args.onnx = False
    tmp = Path(tempfile.mkdtemp(prefix="sheet_time_"))
    try:
        store = open_store(args.store) if args.store else open_store(make_store(tmp / "sheet.zarr", args.n)[0].path)
        models = {"shipped cascade": SHIPPED}
        for spec in filter(None, args.configs.split(",")):
            backbone, size = spec.split(":")
            cfg = ModelConfig(backbone=backbone, input_size=int(size))
            torch.manual_seed(0)
            path = tmp / f"{backbone}-{size}.safetensors"
            save_checkpoint(path, build_model(cfg).eval(), model_config=cfg, train_config={}, data_hash="bench", metrics={})
            models[f"{backbone} {size} px, pixels only"] = path
        if args.onnx:
            from scanstream.inference.export import export_onnx

            for name, path in list(models.items()):
                onnx = tmp / f"{path.stem}.onnx"
                export_onnx(path, onnx, check=store)
                models[f"{name}, ONNX Runtime"] = onnx
        rows = []
        for name, path in models.items():
            t0 = time.perf_counter()
            r = run_benchmark(store.path, [path], objects=args.objects, batch_size=args.batch_size)
            inp = r["in_process"]
            rates = {"pipeline": r["pipeline"]["warm_crops_per_s"], "forward": inp["forward_crops_per_s"],
                     "model_only": inp["model_only_crops_per_s"]}
            rows.append({
                "model": name, "crops": store.n, "network_fraction": round(inp["network_rows"] / inp["crops"], 3),
                "crops_per_s": rates,
                "sheet_hours": {k: round(args.objects / v / 3600, 2) for k, v in rates.items() if v},
                "stages_share": inp["stages_share"], "loadavg": r["machine"]["loadavg"],
                "seconds": round(time.perf_counter() - t0, 1),
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"benchmark": "sheet_time", "objects": args.objects, "goal_hours": 1.0,
                      "goal_crops_per_s": round(args.objects / 3600, 1), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
