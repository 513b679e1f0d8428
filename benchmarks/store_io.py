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
the load average; repeats go round all configurations and every figure is the best of them.

Usage::

    python benchmarks/store_io.py [--n 2048] [--configs 16:1024,64:1024:1] [--repeat 3] [--cache crops.npz]
                                  [--ingest-files 1000,4000]
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


def make_crops(n: int, seed: int, cache: Path | None = None) -> tuple[np.ndarray, list[dict], str]:
    """uint8 (n, 224, 224, 3) realistic crops plus object rows, and where they came from.

    With ``cache`` (a .npz file) the crops are loaded from it when it holds ``n`` crops of
    this seed, and saved to it otherwise (simulating 2,048 crops takes minutes on 2 cores).
    """
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            if int(z["seed"]) == seed and len(z["crops"]) == n:
                return z["crops"], _rows(n, seed), str(z["source"])
    crops, source = _simulate_or_draw(n, seed)
    if cache is not None:
        np.savez(cache, crops=crops, seed=seed, source=source)
    return crops, _rows(n, seed), source


def _rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"object_id": f"B-{i:07d}", "sheet": "S1", "x_mm": float(rng.uniform(0, 50)),
             "y_mm": float(rng.uniform(0, 50)), "z_mm": float(rng.uniform(-0.5, 0)), "label": int(i % 2)}
            for i in range(n)]


def _simulate_or_draw(n: int, seed: int) -> tuple[np.ndarray, str]:
    try:
        from scanstream.simulate import simulate_store  # type: ignore[attr-defined]
    except ImportError:
        simulate_store = None
    if simulate_store is not None:
        tmp = Path(tempfile.mkdtemp(prefix="store_io_sim_"))
        try:
            s = simulate_store(tmp / "sim.zarr", objects=n, alpha_fraction=0.25, sheet="BENCH", seed=seed,
                               workers=os.cpu_count() or 1)
            return s.read(), "scanstream.simulate.simulate_store"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import draw_crops

    labels = (np.random.default_rng(seed).random(n) < 0.25).astype(np.int8)
    return draw_crops(labels, seed=seed), "tests/conftest.py:draw_crops"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_once(crops: np.ndarray, rows: list[dict], chunk: int, shard: int, level: int, root: Path,
                 seed: int) -> dict:
    """One write and the three reads of one configuration: wall times (s) and sizes."""
    n = len(crops)
    path = root / f"c{chunk}-s{shard}-l{level}.zarr"
    st.ZSTD_LEVEL = level  # read by StoreWriter when it creates the crops array

    def write() -> None:
        with st.StoreWriter(path, source={"stage": "bench"}, overwrite=True, chunk_crops=chunk, shard_crops=shard) as w:
            for i in range(0, n, 256):
                w.append(crops[i : i + 256], rows[i : i + 256])

    out = {"write": timed(write)}
    store = st.open_store(path)
    assert np.array_equal(store.read(0, 8), crops[:8])
    for key, step in (("read_task", shard), ("read_chunk", chunk)):
        out[key] = timed(lambda step=step: [store.read(a, b) for a, b in store.chunk_ranges(step)])
    idx = np.random.default_rng(seed).integers(0, n, 64)
    out["random"] = timed(lambda: [np.asarray(store.crops[int(i)]) for i in idx])
    out["bytes"] = sum(f.stat().st_size for f in (path / "crops").rglob("*") if f.is_file())
    out["files"] = sum(1 for f in (path / "crops").rglob("*") if f.is_file())
    shutil.rmtree(path)
    return out


def summarize(runs: list[dict], crops: np.ndarray, chunk: int, shard: int, level: int) -> dict:
    """Best (smallest) time of each measurement over the repeats, as crops/s."""
    n = len(crops)
    best = {k: min(r[k] for r in runs) for k in ("write", "read_task", "read_chunk", "random")}
    return {
        "chunk": chunk,
        "shard": shard,
        "zstd_level": level,
        "chunk_mb": round(chunk * crops[0].nbytes / 1e6, 2),
        "write_crops_per_s": round(n / best["write"], 1),
        "read_task_crops_per_s": round(n / best["read_task"], 1),
        "read_chunk_crops_per_s": round(n / best["read_chunk"], 1),
        "random_crops_per_s": round(64 / best["random"], 1),
        "bytes_per_crop": round(runs[0]["bytes"] / n, 1),
        "compression_ratio": round(crops[0].nbytes / (runs[0]["bytes"] / n), 3),
        "files_per_million_crops": round(1e6 / shard) + 1,
        "files_here": runs[0]["files"],
    }


_CHILD = (
    "import resource, sys, time; from scanstream.cli import main; t = time.perf_counter(); "
    "rc = main(sys.argv[1:]); print('RESULT', rc, time.perf_counter() - t, "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
)


def measure_ingest(crops: np.ndarray, n_files: int, root: Path) -> dict:
    """Ingest ``n_files`` PNG crops in a fresh process; files/s and peak RSS (MiB)."""
    import csv
    import subprocess

    from PIL import Image

    src = root / f"ingest{n_files}"
    src.mkdir()
    with (src / "listing.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "object_id", "x_mm", "y_mm", "z_mm"])
        for i in range(n_files):
            Image.fromarray(np.roll(crops[i % len(crops)], i // len(crops), axis=1)).save(src / f"{i:07d}.png",
                                                                                       compress_level=1)
            w.writerow([f"{i:07d}.png", f"I-{i:07d}", 0.0, 0.0, 0.0])
    cmd = [sys.executable, "-c", _CHILD, "ingest", str(src), str(root / f"ingest{n_files}.zarr"), "--format", "images",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [x for x in proc.stderr.splitlines() if x.startswith("RESULT")]
    if proc.returncode or not line:
        raise RuntimeError(f"ingest of {n_files} files failed: {proc.stderr[-2000:]}")
    _, _, seconds, maxrss_kib = line[-1].split()
    shutil.rmtree(src)
    shutil.rmtree(root / f"ingest{n_files}.zarr")
    return {"files": n_files, "seconds": round(float(seconds), 2), "files_per_s": round(n_files / float(seconds), 1),
            "peak_rss_mib": round(int(maxrss_kib) / 1024, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048, help="crops (default 2048 = 308 MB raw)")
    ap.add_argument("--configs", default="16:1024,32:1024,64:1024,32:256,32:1024:3",
                    help="comma-separated chunk:shard[:zstd level] (crops; level default: the store's)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per figure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    ap.add_argument("--ingest-files", default="", help="comma-separated file counts for the ingest measurement")
    ap.add_argument("--cache", type=Path, default=None, help="a .npz file to keep the generated crops in between runs")
    args = ap.parse_args(argv)

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)  # before the crops: a bad --dir fails at once
    chosen_level = st.ZSTD_LEVEL
    crops, rows, source = make_crops(args.n, args.seed, args.cache)
    t_copy = min(timed(lambda: np.copy(crops)) for _ in range(5))
    copy_rate = args.n / t_copy
    root = Path(tempfile.mkdtemp(prefix="store_io_", dir=args.dir))
    configs = []
    for pair in args.configs.split(","):
        chunk, shard, *level = (int(v) for v in pair.split(":"))
        configs.append((chunk, shard, level[0] if level else chosen_level))
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    results = []
    try:
        # Repeats go round all configurations, so a change of load on the shared machine
        # touches every configuration alike; each figure is the best of its repeats.
        for _ in range(args.repeat):
            for c in configs:
                runs[c].append(measure_once(crops, rows, *c, root, args.seed))
        for c in configs:
            r = summarize(runs[c], crops, *c)
            for key in ("write_crops_per_s", "read_task_crops_per_s", "read_chunk_crops_per_s"):
                r[key.replace("_crops_per_s", "_vs_memory_copy")] = round(r[key] / copy_rate, 4)
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
        ingest = []
        for n_files in (int(v) for v in args.ingest_files.split(",") if v):
            ingest.append(measure_ingest(crops, n_files, root))
            print(json.dumps(ingest[-1]), file=sys.stderr)
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
        "ingest": ingest,
    }, indent=1))


if __name__ == "__main__":
    main()
