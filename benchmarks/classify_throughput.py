"""Classify throughput: the bare forward pass against the whole Dask pipeline, side by side.

Prints one JSON document. For each model configuration (backbone, input size, precision), on
the same crops, batch size and machine, in one run:

- ``a_forward_crops_per_s``: :meth:`scanstream.inference.engine.Ensemble.score` on uint8 crops
  already in memory (moved to the device, normalised there, the model in channels_last,
  bf16 autocast when asked): what the model itself costs, measured before the first (b) run
  and after every round of warm (b) runs (median reported; each (b) figure is compared with
  the mean of the (a) runs around it). ``a_model_only_crops_per_s`` is the forward pass on
  already-normalised input.
- ``b_pipeline_crops_per_s``: :func:`scanstream.inference.classify.classify` of the whole store on a
  running Dask cluster (store -> Dask task -> read + digest check -> model -> Parquet part ->
  ranks -> manifest), wall time of the call. ``cold``: the workers load the model during the
  run (first use); ``warm``: a second run into a new table, models already in the workers'
  cache (the steady state of an overnight run of thousands of tasks).
- ``b_*_over_a``: the ratios (median over ``--repeat`` rounds), the design's goal being >= 0.95.

The LocalCluster (started once, its start time reported separately) has ``--workers``
single-thread workers; each task uses cores / workers torch threads, and (a) runs in this
process with the same number of threads. With CUDA the cluster has one worker per GPU and (a)
uses one GPU. Models are untrained (same compute as trained ones); crops come from the physics
simulator. The machine may be shared: the JSON records the load average around each figure.

Usage::

    python benchmarks/classify_throughput.py [--n 256] [--batch-size 32] [--workers 1]
        [--configs resnet50:224:fp32,resnet50:224:bf16,resnet18:112:fp32] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scanstream.devices import resolve_device
from scanstream.executor import dask_client, gpu_count, local_cores
from scanstream.inference import engine as inference
from scanstream.inference.classify import classify
from scanstream.network.checkpoint import save_checkpoint
from scanstream.network.model import ModelConfig, build_model, preprocess
from scanstream.store import create_store, open_store


def make_store(path: Path, n: int, seed: int = 0):
    """A store of ``n`` simulated crops (the test suite's drawn crops if the simulator is absent)."""
    try:
        from scanstream.simulate import simulate_store
    except ImportError:
        simulate_store = None
    if simulate_store is not None:
        return simulate_store(path, objects=n, alpha_fraction=0.25, sheet="BENCH", seed=seed), "simulate_store"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import draw_crops

    labels = (np.random.default_rng(seed).random(n) < 0.25).astype(np.int8)
    rows = [{"object_id": f"B-{i:06d}", "sheet": "BENCH", "label": int(v)} for i, v in enumerate(labels)]
    return create_store(path, draw_crops(labels, seed=seed), rows, source={"stage": "benchmark"}), "conftest.draw_crops"


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text} (load {load()})", file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def bare_forward(ens: inference.Ensemble, crops: torch.Tensor, batch_size: int) -> float:
    """crops/s of Ensemble.score over in-memory uint8 crops (one warm-up batch first)."""
    ens.score(crops[:batch_size])
    t0 = time.perf_counter()
    for i in range(0, len(crops), batch_size):
        ens.score(crops[i : i + batch_size])
    return len(crops) / (time.perf_counter() - t0)


@torch.inference_mode()
def model_only(ens: inference.Ensemble, crops: torch.Tensor, batch_size: int) -> float:
    """crops/s of the model alone on normalised input already on the device."""
    model, size = ens.models[0], ens.input_sizes[0]
    x = preprocess(crops[:batch_size].to(ens.device), size).contiguous(memory_format=torch.channels_last)
    with torch.autocast(ens.device.type, dtype=torch.bfloat16, enabled=ens.precision == "bf16"):
        model(x)
        if ens.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batches = max(1, len(crops) // batch_size)
        for _ in range(batches):
            model(x)
        if ens.device.type == "cuda":
            torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - t0)


def run_config(
    spec: str, *, store, tmp: Path, scheduler: str, device: torch.device, batch_size: int, repeat: int
) -> dict:
    backbone, size, precision = spec.split(":")
    cfg = ModelConfig(backbone=backbone, input_size=int(size))
    torch.manual_seed(0)
    ckpt = tmp / f"{backbone}-{size}.safetensors"
    save_checkpoint(ckpt, build_model(cfg).eval(), model_config=cfg, train_config={}, data_hash="bench", metrics={})
    crops = torch.from_numpy(store.read())
    if device.type == "cuda":
        crops = crops.pin_memory()
    ens = inference.Ensemble([ckpt], device=device, precision=precision)
    row: dict = {"backbone": backbone, "input_size": int(size), "precision": ens.precision}
    loads: dict[str, list[float]] = {"a": [], "cold": [], "warm": [], "warm_noverify": []}
    a_runs: list[float] = []

    def measure_a() -> None:
        loads["a"].append(load())
        a_runs.append(bare_forward(ens, crops, batch_size))
        note(f"{spec}: (a) {a_runs[-1]:.2f} crops/s")

    def measure_b(name: str, verify: bool) -> object:
        loads[name].append(load())
        out = tmp / f"out-{backbone}-{size}-{precision}-{name}-{len(loads[name])}"
        res = classify([store.path], [ckpt], out, scheduler=scheduler, device=str(device), precision=precision,
                       batch_size=batch_size, verify=verify, progress=False)
        if not res.complete:
            raise SystemExit(f"classify failed: {res.failed}")
        note(f"{spec}: (b) {name} {res.crops_per_s:.2f} crops/s")
        return res

    measure_a()
    row["a_model_only_crops_per_s"] = round(model_only(ens, crops, batch_size), 2)
    b: dict[str, list] = {"cold": [measure_b("cold", True)], "warm": [], "warm_noverify": []}
    for _ in range(repeat):
        b["warm"].append(measure_b("warm", True))
        b["warm_noverify"].append(measure_b("warm_noverify", False))
        measure_a()
    # each (b) against the mean of the (a) measured just before and just after it
    a_around = [(a_runs[i] + a_runs[i + 1]) / 2 for i in range(repeat)]
    row["a_forward_crops_per_s"] = round(float(np.median(a_runs)), 2)
    row["a_forward_runs"] = [round(v, 2) for v in a_runs]
    for name, results in b.items():
        rates = [r.crops_per_s for r in results]
        ratios = [r / a for r, a in zip(rates, a_around[:1] if name == "cold" else a_around, strict=True)]
        row[f"b_{name}_crops_per_s"] = round(float(np.median(rates)), 2)
        row[f"b_{name}_over_a"] = round(float(np.median(ratios)), 3)
        row[f"b_{name}_runs"] = [round(v, 2) for v in rates]
        row[f"b_{name}_ratios"] = [round(v, 3) for v in ratios]
        row[f"b_{name}_task_seconds"] = [round(sum(r.task_seconds), 2) for r in results]
        row[f"b_{name}_wall_seconds"] = [round(r.seconds, 2) for r in results]
    row["tasks"] = b["cold"][0].tasks
    row["loadavg_1min"] = loads
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="crops in the store (default 256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, help="LocalCluster workers (default: 1 on CPU, one per GPU)")
    p.add_argument("--crops-per-task", type=int, help="(default: one shard)")
    p.add_argument("--configs", default="resnet50:224:fp32,resnet50:224:bf16,resnet18:112:fp32,resnet18:112:bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=1, help="rounds of (b) warm runs, each between two (a) runs")
    p.add_argument("--tmp", type=Path, help="working directory (default: a new temporary one, removed after)")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="classify_bench_", dir=args.tmp))
    device = resolve_device(args.device)
    cores = local_cores()
    try:
        t0 = time.perf_counter()
        store, source = make_store(tmp / "bench.zarr", args.n)
        store = open_store(store.path)
        make_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with dask_client(None, workers=args.workers, gpus=gpu_count() if device.type == "cuda" else 0) as client:
            start_s = time.perf_counter() - t0
            n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
            threads = max(1, cores // n_workers)
            torch.set_num_threads(threads)  # (a) gets what one worker's task gets
            results = [
                run_config(c, store=store, tmp=tmp, scheduler=client.scheduler.address, device=device,
                           batch_size=args.batch_size, repeat=args.repeat)
                for c in args.configs.split(",")
            ]
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    print(json.dumps({
        "benchmark": "classify_throughput",
        "machine": {"platform": platform.platform(), "cpu_cores": cores, "gpu": gpu, "torch": torch.__version__,
                    "device": str(device)},
        "crops": args.n, "crops_source": source, "store_seconds": round(make_s, 1),
        "batch_size": args.batch_size, "workers": n_workers, "torch_threads_per_task": threads,
        "cluster_start_seconds": round(start_s, 2),
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
