"""The two pools beside the Dask executor, against the executor doing the same work. Prints JSON.

- ``simulate``: rendering simulated crops in batches of 32 objects, in plan order, on
  ``--workers`` processes: :func:`scanstream.simulate.dataset.iter_simulated`'s process pool
  against a Dask LocalCluster of as many one-thread worker processes
  (:func:`scanstream.executor.dask_client`), the same batch function mapped and gathered in order.
- ``ingest``: decoding ``--files`` PNG crops (224 x 224 RGB) as ingest's second pass does
  (``scanstream.ingest.images._decode_or_reason``): ingest's thread pool against Dask clients
  with ``--workers`` threads in one process and with ``--workers`` worker processes.

Every figure is the best of ``--repeat`` rounds; a Dask figure counts the cluster's start
(``*_start_s`` gives that part alone), since a stage would start one per run. The machine is
shared: the JSON records the load average.

    .venv/bin/python benchmarks/pools.py [--objects 128] [--files 512] [--workers 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from scanstream.atomic import write_png
from scanstream.executor import dask_client
from scanstream.ingest.images import _decode_or_reason
from scanstream.simulate.conditions import draw_conditions
from scanstream.simulate.dataset import BATCH, _task, iter_simulated, plan_sheet


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _dask(fn, items, workers: int, processes: bool) -> tuple[float, float]:
    """Seconds to start a local cluster, and seconds from the start to every result in order."""
    t0 = time.perf_counter()
    with dask_client(workers=workers, processes=processes) as client:
        started = time.perf_counter() - t0
        futures = client.map(fn, items, pure=False)
        for f in futures:  # in order, as the stages consume them
            f.result()
    return started, time.perf_counter() - t0


def bench_simulate(objects: int, workers: int, repeat: int) -> dict:
    sheet = "POOLS"
    cond = {sheet: draw_conditions(sheet, 0)}
    plans = plan_sheet(objects, 0.1, sheet, 0)
    batches = [plans[i : i + BATCH] for i in range(0, len(plans), BATCH)]
    conds = {k: v.as_dict() for k, v in cond.items()}
    pool, dask_s, start_s = [], [], []
    for _ in range(repeat):
        pool.append(_timed(lambda: list(iter_simulated(plans, cond, workers=workers))))
        s, t = _dask(lambda b: _task(b, conds, True), batches, workers, True)
        start_s.append(s)
        dask_s.append(t)
    return {"objects": objects, "batches": len(batches), "process_pool_s": round(min(pool), 2),
            "dask_processes_s": round(min(dask_s), 2), "dask_processes_start_s": round(min(start_s), 2)}


def bench_ingest(files: int, workers: int, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        base = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        paths = []
        for i in range(files):  # grain-like noise that compresses about as real crops do
            crop = np.clip(base.astype(np.int16) // 2 + rng.integers(0, 64, base.shape), 0, 255).astype(np.uint8)
            paths.append(write_png(Path(d) / f"{i:05d}.png", crop, compress_level=1))

        def decode(p):
            return _decode_or_reason(p, False)

        def threads():
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(decode, paths))

        out: dict[str, list[float]] = {"serial_s": [], "thread_pool_s": [], "dask_threads_s": [],
                                       "dask_threads_start_s": [], "dask_processes_s": [],
                                       "dask_processes_start_s": []}
        for _ in range(repeat):
            out["serial_s"].append(_timed(lambda: [decode(p) for p in paths]))
            out["thread_pool_s"].append(_timed(threads))
            for kind, processes in (("threads", False), ("processes", True)):
                s, t = _dask(decode, paths, workers, processes)
                out[f"dask_{kind}_start_s"].append(s)
                out[f"dask_{kind}_s"].append(t)
    return {"files": files, **{k: round(min(v), 2) for k, v in out.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=128, help="simulated objects to render")
    p.add_argument("--files", type=int, default=512, help="PNG crops to decode")
    p.add_argument("--workers", type=int, default=2, help="workers of every pool and cluster")
    p.add_argument("--repeat", type=int, default=2, help="rounds; every figure is the best")
    a = p.parse_args()
    load = os.getloadavg()[0]
    result = {"workers": a.workers, "cores": os.cpu_count(), "load_average_before": round(load, 1),
              "simulate": bench_simulate(a.objects, a.workers, a.repeat),
              "ingest": bench_ingest(a.files, a.workers, a.repeat),
              "load_average_after": round(os.getloadavg()[0], 1)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
