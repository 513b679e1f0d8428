"""Training throughput: the bare step vs the full Dask-fed, augmented step, side by side.

For each backbone configuration, in one process and with the same torch threads:

(a) ``in_memory``: Adam steps on a preprocessed float batch already in memory (compute only);
(b) ``dask_fed``: the real training loop (:func:`scanstream.train.train`): Dask workers read
    chunk-aligned blocks from a crop store, resize and augment them (flips + RandAugment), the
    main process preprocesses and steps; images/s of the second epoch (the first includes the
    workers' start-up);
and their ratio (b)/(a) (the design's goal is >= 0.95), plus the same loop fed by local threads
instead of Dask, and augmentation alone (images/s on one thread, as a loader worker runs it,
and on the main process's threads).

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

from scanstream.augment import AugmentConfig, Augmenter
from scanstream.model import ModelConfig, build_model, preprocess
from scanstream.store import CROP_SIZE, StoreWriter
from scanstream.train import TrainConfig, resolve_amp, train


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


def in_memory_rate(backbone: str, size: int, batch: int, steps: int, amp: bool) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone, size)).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    crops = torch.from_numpy(synthetic_crops(batch, 1))
    x = preprocess(crops, size).contiguous(memory_format=torch.channels_last)
    y = (torch.arange(batch) % 2).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


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


def fed_rate(tmp: Path, backbone: str, size: int, batch: int, steps: int, amp: str, loader: str, workers: int) -> float:
    cfg = TrainConfig(
        train_store=str(tmp / "train.zarr"), valid_store=str(tmp / "valid.zarr"), out_dir=str(tmp / f"run-{backbone}-{loader}"),
        backbone=backbone, input_size=size, batch_size=batch, epoch_size=batch * steps, max_epochs=2, warmup_epochs=5,
        loader=loader, workers=workers, amp=amp, device="cpu",
    )
    result = train(cfg, progress=False)
    return float(result.history[-1]["images_per_s"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", metavar="BACKBONE:SIZE:BATCH:STEPS",
                    help="repeatable; default resnet18:112:32:12 and resnet50:112:16:4")
    ap.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    ap.add_argument("--workers", type=int, default=1, help="loader workers (Dask processes / local threads)")
    ap.add_argument("--no-local", action="store_true", help="skip the local-thread loader measurement")
    args = ap.parse_args(argv)
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
            amp = resolve_amp(args.amp, torch.device("cpu"))
            make_store(tmp / "train.zarr", batch * steps, seed=0)
            make_store(tmp / "valid.zarr", 32, seed=99)
            a = in_memory_rate(backbone, size, batch, steps, amp)
            b = fed_rate(tmp, backbone, size, batch, steps, args.amp, "dask", args.workers)
            local = None if args.no_local else fed_rate(tmp, backbone, size, batch, steps, args.amp, "local", args.workers)
            torch.set_num_threads(threads)
            row = {
                "backbone": backbone, "input_size": size, "batch": batch, "steps": steps,
                "amp": "bf16" if amp else "off", "torch_threads": threads, "loader_workers": args.workers,
                "in_memory_images_per_s": round(a, 2), "dask_fed_images_per_s": round(b, 2),
                "ratio_dask_fed_over_in_memory": round(b / a, 3),
                "local_fed_images_per_s": None if local is None else round(local, 2),
                "augment_images_per_s_1_thread": round(augment_rate(size, batch, 1), 1),
                f"augment_images_per_s_{threads}_threads": round(augment_rate(size, batch, threads), 1),
            }
            out["results"].append(row)
            print(json.dumps(row), flush=True)
    out["machine"]["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
