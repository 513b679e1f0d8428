"""Crop-store I/O: crops/s written and read for a few chunk / shard choices, side by side.

Prints one JSON document. For every (chunk, shard) choice it measures, in the same run and on
the same crops:

- ``write_crops_per_s``: :class:`scanstream.store.StoreWriter` appends in batches of 256 plus
  ``finalize`` (zstd, digests, object table, completion marker), from memory to disk;
- ``read_task_crops_per_s``: reading the whole store in chunk-aligned ranges of one shard
  (what a classify task does);
- ``read_chunk_crops_per_s``: the same in ranges of one chunk (a prefetching loader);
- ``random_crops_per_s``: single crops at random rows (a gallery, a random-access sampler);
- ``bytes_per_crop``: compressed bytes on disk per crop; ``files``: files per 1,000,000 crops.

and, as the reference, ``memory_copy_crops_per_s``: ``np.copy`` of the same uint8 array, with
each store figure also given as a ratio to it. Crops come from the physics simulator
(``scanstream.simulate.simulate_store``) when it exists, else from the test suite's drawn stars
and blobs (``tests/conftest.py:draw_crops``, grayscale in three equal channels with noise). Reads
come from the page cache (the store was just written). The machine is shared: the JSON records
the load average, and every figure is the best of ``--repeat`` runs.

Usage::

    python benchmarks/store_io.py [--n 2048] [--configs 16:256,32:512,64:1024,64:1024:1] [--repeat 2]
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

from scanstream import store as st


def make_crops(n: int, seed: int) -> tuple[np.ndarray, list[dict], str]:
    """uint8 (n, 224, 224, 3) realistic crops plus object rows, and where they came from."""
    try:
        from scanstream.simulate import simulate_store  # type: ignore[attr-defined]
    except ImportError:
        simulate_store = None
    if simulate_store is not None:
        tmp = Path(tempfile.mkdtemp(prefix="store_io_sim_"))
        try:
            s = simulate_store(tmp / "sim.zarr", objects=n, alpha_fraction=0.25, sheet="BENCH", seed=seed,
                               workers=os.cpu_count() or 1)
            return s.read(), s.table.to_pylist(), "scanstream.simulate.simulate_store"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import draw_crops

    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.25).astype(np.int8)
    crops = draw_crops(labels, seed=seed)
    rows = [
        {"object_id": f"B-{i:07d}", "sheet": "S1", "x_mm": float(rng.uniform(0, 50)), "y_mm": float(rng.uniform(0, 50)),
         "z_mm": float(rng.uniform(-0.5, 0)), "label": int(labels[i])}
        for i in range(n)
    ]
    return crops, rows, "tests/conftest.py:draw_crops"


def best_of(repeat: int, fn) -> float:
    """Smallest wall time of ``repeat`` calls (s)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(crops: np.ndarray, rows: list[dict], chunk: int, shard: int, level: int, root: Path, repeat: int,
            seed: int) -> dict:
    n = len(crops)
    path = root / f"c{chunk}-s{shard}-l{level}.zarr"
    st.ZSTD_LEVEL = level  # read by StoreWriter when it creates the crops array

    def write() -> None:
        with st.StoreWriter(path, source={"stage": "bench"}, overwrite=True, chunk_crops=chunk, shard_crops=shard) as w:
            for i in range(0, n, 256):
                w.append(crops[i : i + 256], rows[i : i + 256])

    t_write = best_of(repeat, write)
    store = st.open_store(path)
    assert np.array_equal(store.read(0, 8), crops[:8])

    def read_ranges(step: int):
        def run() -> None:
            for a, b in store.chunk_ranges(step):
                store.read(a, b)
        return run

    t_task = best_of(repeat, read_ranges(shard))
    t_chunk = best_of(repeat, read_ranges(chunk))
    idx = np.random.default_rng(seed).integers(0, n, 64)

    def random_reads() -> None:
        for i in idx:
            np.asarray(store.crops[int(i)])

    t_rand = best_of(repeat, random_reads)
    size = sum(f.stat().st_size for f in (path / "crops").rglob("*") if f.is_file())
    n_files = sum(1 for f in (path / "crops").rglob("*") if f.is_file())
    shutil.rmtree(path)
    return {
        "chunk": chunk,
        "shard": shard,
        "zstd_level": level,
        "chunk_mb": round(chunk * crops[0].nbytes / 1e6, 2),
        "write_crops_per_s": round(n / t_write, 1),
        "read_task_crops_per_s": round(n / t_task, 1),
        "read_chunk_crops_per_s": round(n / t_chunk, 1),
        "random_crops_per_s": round(len(idx) / t_rand, 1),
        "bytes_per_crop": round(size / n, 1),
        "compression_ratio": round(crops[0].nbytes / (size / n), 2),
        "files_per_million_crops": round(1e6 / shard) + 1,
        "files_here": n_files,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048, help="crops (default 2048 = 308 MB raw)")
    ap.add_argument("--configs", default="16:256,32:512,64:1024,64:256,128:1024,64:1024:1,64:1024:6",
                    help="comma-separated chunk:shard[:zstd level] (crops; level default: the store's)")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs per figure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    args = ap.parse_args(argv)

    chosen_level = st.ZSTD_LEVEL
    crops, rows, source = make_crops(args.n, args.seed)
    t_copy = best_of(max(args.repeat, 3), lambda: np.copy(crops))
    copy_rate = args.n / t_copy
    root = Path(tempfile.mkdtemp(prefix="store_io_", dir=args.dir))
    results = []
    try:
        for pair in args.configs.split(","):
            chunk, shard, *level = (int(v) for v in pair.split(":"))
            r = measure(crops, rows, chunk, shard, level[0] if level else chosen_level, root, args.repeat, args.seed)
            for key in ("write_crops_per_s", "read_task_crops_per_s", "read_chunk_crops_per_s"):
                r[key.replace("_crops_per_s", "_vs_memory_copy")] = round(r[key] / copy_rate, 4)
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        st.ZSTD_LEVEL = chosen_level
    load = os.getloadavg()
    print(json.dumps({
        "benchmark": "store_io",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_1_5_15_min_at_end": [round(v, 2) for v in load]},
        "crops": args.n,
        "crop_source": source,
        "raw_bytes_per_crop": int(crops[0].nbytes),
        "memory_copy_crops_per_s": round(copy_rate, 1),
        "chosen": {"chunk": st.CHUNK_CROPS, "shard": st.SHARD_CROPS, "zstd_level": chosen_level},
        "configs": results,
    }, indent=1))


if __name__ == "__main__":
    main()
