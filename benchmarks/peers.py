"""scanstream classify against what a user would otherwise write: the same model over the same store.

Prints one JSON document. For each model configuration (backbone:input size), in one run, on
the same store, batch size, threads and machine, crops/s and the ratio to ``model_only`` (the
network on normalised tensors at its input size already in memory):

- ``scanstream_classify``: :func:`scanstream.inference.classify.classify` of the whole store on a
  running LocalCluster (one worker, all cores), warm (models already in the worker's cache),
  store -> Parquet candidate table, digests checked.
- ``dataloader_per_crop``: the loop a user would write: a torch ``Dataset`` whose item is one
  crop read from the zarr store, a ``DataLoader`` with ``--loader-workers`` worker processes,
  torchvision-style preprocessing (``F.interpolate`` antialiased, as ``transforms.Resize``) and
  the model in the main process; scores collected in memory (no table written).
- ``dataloader_per_chunk``: the same with one zarr chunk per item (a careful user's loop).
- ``ray_data``: Ray Data ``map_batches`` with an actor pool, only when ``ray`` imports
  (``pip install scanstream[bench]``); otherwise a skip message.
- ``preprocess``: the antialiased 224 -> 112 resize and normalisation alone, ``F.interpolate``
  (before) against the exact halving filter (after, :func:`scanstream.network.model.preprocess`),
  and the forward pass on uint8 crops in memory with each.

Every path runs once per round, between two model-only measurements, and each rate is also
given as a ratio to the mean of those two (``ratios``): on a machine shared with other jobs the
absolute rates swing from round to round, the ratios much less. Medians over ``--rounds``.

Usage::

    python benchmarks/peers.py [--n 512] [--batch-size 64] [--configs mobilenet_v3_small:112,resnet18:112] [--rounds 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classify_throughput import make_store

from scanstream.executor import dask_client, local_cores
from scanstream.inference.classify import classify
from scanstream.network.checkpoint import save_checkpoint
from scanstream.network.model import ModelConfig, build_model, preprocess
from scanstream.store import open_store


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text} (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)


class CropDataset(torch.utils.data.Dataset):
    """One crop (per_chunk=False) or one zarr chunk of crops per item, opened lazily in each worker."""

    def __init__(self, path: str, n: int, chunk: int, per_chunk: bool) -> None:
        self.path, self.n, self.chunk, self.per_chunk = path, n, chunk, per_chunk
        self._crops = None

    def __len__(self) -> int:
        return -(-self.n // self.chunk) if self.per_chunk else self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._crops is None:
            import zarr

            self._crops = zarr.open_array(str(Path(self.path) / "crops"), mode="r")
        if self.per_chunk:
            return torch.from_numpy(np.asarray(self._crops[i * self.chunk : min((i + 1) * self.chunk, self.n)]))
        return torch.from_numpy(np.asarray(self._crops[i]))


@torch.inference_mode()
def user_loop(model, size: int, store, *, per_chunk: bool, batch_size: int, workers: int) -> float:
    """crops/s of a DataLoader loop over the store (first batch excluded: worker start-up)."""
    ds = CropDataset(str(store.path), store.n, store.chunk_crops, per_chunk)
    loader = torch.utils.data.DataLoader(ds, batch_size=None if per_chunk else batch_size, num_workers=workers,
                                         persistent_workers=False)
    scores, t0, first = [], None, 0
    for crops in loader:
        if t0 is None:
            first = len(crops)
            t0 = time.perf_counter()
        scores.append(model(preprocess(crops, size, halving=False).contiguous(memory_format=torch.channels_last)))
    done = sum(len(s) for s in scores) - first
    return done / (time.perf_counter() - t0) if done else float("nan")


@torch.inference_mode()
def model_only(model, size: int, crops: torch.Tensor, batch_size: int) -> float:
    x = preprocess(crops[:batch_size], size).contiguous(memory_format=torch.channels_last)
    model(x)
    batches = max(1, len(crops) // batch_size)
    t0 = time.perf_counter()
    for _ in range(batches):
        model(x)
    return batches * len(x) / (time.perf_counter() - t0)


@torch.inference_mode()
def preprocess_rates(model, size: int, crops: torch.Tensor, batch_size: int) -> dict:
    """Preprocessing alone and the forward pass on uint8 crops, with F.interpolate and with halving.

    The two are interleaved batch by batch (interpolate, halving, interpolate, ...), so that a
    machine shared with other jobs slows both alike; ``halving_over_interpolate`` is the ratio of
    their rates.
    """
    spent = dict.fromkeys(("preprocess_interpolate", "preprocess_halving", "forward_interpolate", "forward_halving"), 0.0)
    preprocess(crops[:batch_size], size, halving=True)
    for i in range(0, len(crops), batch_size):
        batch = crops[i : i + batch_size]
        for name, halving in (("interpolate", False), ("halving", True)):
            t0 = time.perf_counter()
            x = preprocess(batch, size, halving=halving).contiguous(memory_format=torch.channels_last)
            t1 = time.perf_counter()
            model(x)
            t2 = time.perf_counter()
            spent[f"preprocess_{name}"] += t1 - t0
            spent[f"forward_{name}"] += t2 - t0
    out = {k: len(crops) / v for k, v in spent.items()}
    out["preprocess_halving_over_interpolate"] = spent["preprocess_interpolate"] / spent["preprocess_halving"]
    out["forward_halving_over_interpolate"] = spent["forward_interpolate"] / spent["forward_halving"]
    return out


def ray_data(ckpt: Path, store, batch_size: int) -> dict:
    try:
        import ray
    except ImportError:
        msg = "skipped: ray is not installed (pip install 'scanstream[bench]' to compare with Ray Data)"
        note(msg)
        return {"skipped": msg}
    from scanstream.network.checkpoint import load_checkpoint

    class Scorer:
        def __init__(self) -> None:
            ck = load_checkpoint(ckpt)
            self.model, self.size = ck.model.to(memory_format=torch.channels_last).eval(), ck.model_config.input_size

        def __call__(self, batch: dict) -> dict:
            with torch.inference_mode():
                x = preprocess(torch.from_numpy(np.stack(batch["crop"])), self.size)
                batch["score"] = self.model(x.contiguous(memory_format=torch.channels_last)).numpy()
            return batch

    ray.init(num_cpus=local_cores(), include_dashboard=False, ignore_reinit_error=True)
    try:
        blocks = [{"crop": c} for c in store.read()]
        t0 = time.perf_counter()
        ds = ray.data.from_items(blocks).map_batches(Scorer, batch_size=batch_size, concurrency=1)
        n = sum(len(b["score"]) for b in ds.iter_batches(batch_size=batch_size))
        return {"crops_per_s": round(n / (time.perf_counter() - t0), 2)}
    finally:
        ray.shutdown()


def one_round(model, cfg, ckpt: Path, store, crops: torch.Tensor, *, tmp: Path, scheduler: str, batch_size: int,
              loader_workers: int, tag: str) -> dict:
    """Every path once, model-only before and after; each rate also as a ratio to their mean."""
    size = cfg.input_size
    r: dict = {"load": round(os.getloadavg()[0], 2), "model_only_before": model_only(model, size, crops, batch_size)}
    res = classify([store.path], [ckpt], tmp / f"out-{tag}", scheduler=scheduler, device="cpu", precision="fp32",
                   batch_size=batch_size, progress=False)
    r["scanstream_classify"] = res.crops_per_s
    for per_chunk in (False, True):
        r["dataloader_per_chunk" if per_chunk else "dataloader_per_crop"] = user_loop(
            model, size, store, per_chunk=per_chunk, batch_size=batch_size, workers=loader_workers)
    r.update(preprocess_rates(model, size, crops, batch_size))
    r["model_only_after"] = model_only(model, size, crops, batch_size)
    ref = (r["model_only_before"] + r["model_only_after"]) / 2
    r["ratios"] = {k: round(v / ref, 3) for k, v in r.items()
                   if k not in ("load", "ratios") and "_over_" not in k and isinstance(v, float)}
    note(f"{tag}: " + ", ".join(f"{k} {v}" for k, v in r["ratios"].items()))
    return {k: (round(v, 3 if "_over_" in k else 1) if isinstance(v, float) else v) for k, v in r.items()}


def run_config(spec: str, *, store, tmp: Path, scheduler: str, batch_size: int, loader_workers: int,
               rounds: int) -> dict:
    backbone, size = spec.split(":")
    cfg = ModelConfig(backbone=backbone, input_size=int(size))
    torch.manual_seed(0)
    model = build_model(cfg).eval().to(memory_format=torch.channels_last)
    ckpt = tmp / f"{backbone}-{size}.safetensors"
    save_checkpoint(ckpt, model, model_config=cfg, train_config={}, data_hash="bench", metrics={})
    crops = torch.from_numpy(store.read())
    classify([store.path], [ckpt], tmp / f"out-{backbone}-{size}-cold", scheduler=scheduler, device="cpu",
             precision="fp32", batch_size=batch_size, progress=False)  # the worker loads the model
    runs = [one_round(model, cfg, ckpt, store, crops, tmp=tmp, scheduler=scheduler, batch_size=batch_size,
                      loader_workers=loader_workers, tag=f"{spec}-{i}") for i in range(rounds)]
    keys = runs[0]["ratios"].keys()
    halving = ("preprocess_halving_over_interpolate", "forward_halving_over_interpolate")
    row: dict = {"backbone": backbone, "input_size": int(size),
                 "median_halving_over_interpolate": {k: round(float(np.median([r[k] for r in runs])), 3) for k in halving},
                 "median_crops_per_s": {k: round(float(np.median([r[k] for r in runs])), 1) for k in keys},
                 "median_over_model_only": {k: round(float(np.median([r["ratios"][k] for r in runs])), 3) for k in keys},
                 "rounds": runs, "ray_data": ray_data(ckpt, store, batch_size)}
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=512, help="crops in the store (default 512)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--configs", default="mobilenet_v3_small:112,resnet18:112")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every path (medians reported; default 3)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="peers_bench_"))
    cores = local_cores()
    try:
        store, source = make_store(tmp / "bench.zarr", args.n)
        store = open_store(store.path)
        with dask_client(None, workers=1) as client:
            torch.set_num_threads(cores)  # the model-only and user loops get what the one worker's tasks get
            results = [run_config(c, store=store, tmp=tmp, scheduler=client.scheduler.address,
                                  batch_size=args.batch_size, loader_workers=args.loader_workers, rounds=args.rounds)
                       for c in args.configs.split(",")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "benchmark": "peers",
        "machine": {"platform": platform.platform(), "cpu_cores": cores, "torch": torch.__version__},
        "crops": args.n, "crops_source": source, "batch_size": args.batch_size, "torch_threads": cores,
        "loader_workers": args.loader_workers, "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
