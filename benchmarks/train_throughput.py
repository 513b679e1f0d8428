"""Training throughput: the bare step vs the full Dask-fed, augmented step, side by side.

For each backbone configuration, in one process and with the same torch threads:

(a) ``in_memory``: Adam steps on a preprocessed float batch already in memory (compute only);
(b) ``dask_fed``: epochs of the real training loop (:func:`scanstream.training.loop.train_one_epoch`):
    Dask workers read chunk-aligned blocks from a crop store, resize and augment them (flips +
    RandAugment), the main process preprocesses and steps;
measured in interleaved rounds (a, b, a, b, ...; medians reported, so a shared machine's load
drifts hit both alike) after a warm-up epoch that starts the workers, and their ratio (b)/(a)
(the design's goal is >= 0.95); plus the same with local threads instead of Dask, and
augmentation alone (images/s on one thread, as a loader worker runs it, and on the main
process's threads).

Prints JSON. Example (what docs/training.md reports)::

    python benchmarks/train_throughput.py --config resnet18:112:32:12 --config resnet50:112:16:4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scanstream.network.model import build_model, preprocess
from scanstream.store import CROP_SIZE, StoreWriter
from scanstream.training.augment import AugmentConfig, Augmenter
from scanstream.training.config import TrainConfig
from scanstream.training.dataload import open_executor
from scanstream.training.loop import train_one_epoch, train_step, train_stream
from scanstream.training.run import check_config, make_run, model_config, resolve_runtime

THREADS: int | None = None  # --threads: torch threads of the training process (default: the library's)


def synthetic_crops(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 224, 224, 3): grey background, grain noise, a few dark prongs (compresses like crops)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE].astype(np.float32) - CROP_SIZE / 2
    out = np.empty((n, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i in range(n):
        img = 195 + rng.normal(0, 7, (CROP_SIZE, CROP_SIZE)).astype(np.float32)
        for a in rng.uniform(0, 2 * np.pi, rng.integers(2, 6)):
            t = xx * np.cos(a) + yy * np.sin(a)
            d = np.abs(-xx * np.sin(a) + yy * np.cos(a))
            img -= 120 * ((d < 2.0) & (t > 0) & (t < rng.uniform(30, 100)))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)[..., None]
    return out


def make_store(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 1 / 18).astype(int)
    labels[:2] = [1, 0]
    with StoreWriter(path, source={"stage": "benchmark"}, overwrite=True) as w:
        for s in range(0, n, 256):
            k = min(256, n - s)
            w.append(synthetic_crops(k, seed + s), [{"object_id": f"B{s + i:07d}", "label": int(labels[s + i])} for i in range(k)])


def augment_rate(size: int, batch: int, threads: int, repeats: int = 5) -> float:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        crops = torch.from_numpy(synthetic_crops(batch, 2))
        if size != CROP_SIZE:
            crops = torch.from_numpy(
                F.interpolate(crops.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", antialias=True)
                .round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
            )
        aug = Augmenter(AugmentConfig(n=2, m=24), seed=0)
        aug(crops)
        t0 = time.perf_counter()
        for _ in range(repeats):
            aug(crops)
        return batch * repeats / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)


def fed_vs_memory(tmp: Path, backbone: str, size: int, batch: int, steps: int, precision: str, loader: str, workers: int,
                  rounds: int) -> dict:
    """Interleaved rounds of (a) in-memory steps and (b) one epoch of the real Dask-fed loop.

    Both use the same model, optimizer and threads. Before each round the epoch's first blocks
    are already loaded, as :func:`scanstream.training.loop.train` has them loaded during validation.
    """
    cfg = TrainConfig(
        train_store=str(tmp / "train.zarr"), valid_store=str(tmp / "valid.zarr"), out_dir=str(tmp / "unused"),
        backbone=backbone, input_size=size, batch_size=batch, epoch_size=batch * steps, loader=loader,
        workers=workers, precision=precision, device="cpu", torch_threads=THREADS,
    )
    train_store, valid_store = check_config(cfg)
    rt = resolve_runtime(cfg)
    torch.set_num_threads(rt.threads)
    torch.manual_seed(0)
    model = build_model(model_config(cfg)).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x = preprocess(torch.from_numpy(synthetic_crops(batch, 1)), size).contiguous(memory_format=torch.channels_last)
    y = (torch.arange(batch) % 2).float()

    def in_memory(run) -> float:
        """The loop's own step (:func:`scanstream.training.loop.train_step`) on a batch already prepared."""
        model.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(run, x, y)
        return batch * steps / (time.perf_counter() - t0)

    a_rates, b_rates = [], []
    with open_executor(loader, workers=rt.workers) as executor:
        run = make_run(cfg, rt, executor, train_store, valid_store, model, opt)
        train_one_epoch(run, 0)  # warm-up: worker start, first imports
        for r in range(1, rounds + 1):
            stream = train_stream(run, r).start().wait_ready()
            a_rates.append(in_memory(run))
            _, seconds, images = train_one_epoch(run, r, stream=stream)
            b_rates.append(images / seconds)
    a, b = float(np.median(a_rates)), float(np.median(b_rates))
    return {"a": a, "b": b, "a_rounds": [round(v, 2) for v in a_rates], "b_rounds": [round(v, 2) for v in b_rates],
            "threads": rt.threads, "amp": rt.amp, "workers": rt.workers, "augment_on": rt.augment_on}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", metavar="BACKBONE:SIZE:BATCH:STEPS",
                    help="repeatable; default resnet18:112:32:12 and resnet50:112:16:4")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--workers", type=int, default=1, help="loader workers (Dask processes / local threads)")
    ap.add_argument("--no-local", action="store_true", help="skip the local-thread loader measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved (a)/(b) rounds; medians are reported")
    ap.add_argument("--threads", type=int, help="torch threads of the training process (default: cores - workers)")
    args = ap.parse_args(argv)
    global THREADS
    THREADS = args.threads
    configs = args.config or ["resnet18:112:32:12", "resnet50:112:16:4"]
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    out: dict = {
        "machine": {"cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "loadavg_start": list(os.getloadavg())},
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="scanstream-bench-") as d:
        tmp = Path(d)
        for spec in configs:
            backbone, size, batch, steps = spec.split(":")
            size, batch, steps = int(size), int(batch), int(steps)
            make_store(tmp / "train.zarr", batch * steps, seed=0)
            make_store(tmp / "valid.zarr", 32, seed=99)
            dask = fed_vs_memory(tmp, backbone, size, batch, steps, args.precision, "dask", args.workers, args.rounds)
            row = {
                "backbone": backbone, "input_size": size, "batch": batch, "steps_per_round": steps,
                "rounds": args.rounds, "precision": "bf16" if dask["amp"] else "fp32", "torch_threads": dask["threads"],
                "loader_workers": dask["workers"], "augment_on": dask["augment_on"],
                "in_memory_images_per_s": round(dask["a"], 2), "dask_fed_images_per_s": round(dask["b"], 2),
                "ratio_dask_fed_over_in_memory": round(dask["b"] / dask["a"], 3),
                "rounds_in_memory": dask["a_rounds"], "rounds_dask_fed": dask["b_rounds"],
            }
            if not args.no_local:
                local = fed_vs_memory(tmp, backbone, size, batch, steps, args.precision, "local", args.workers, args.rounds)
                row.update(local_in_memory_images_per_s=round(local["a"], 2), local_fed_images_per_s=round(local["b"], 2),
                           ratio_local_fed_over_in_memory=round(local["b"] / local["a"], 3))
            row["augment_images_per_s_1_thread"] = round(augment_rate(size, batch, 1), 1)
            row[f"augment_images_per_s_{threads}_threads"] = round(augment_rate(size, batch, threads), 1)
            torch.set_num_threads(threads)
            out["results"].append(row)
            print(json.dumps(row), flush=True)
    out["machine"]["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
