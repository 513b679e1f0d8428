"""What a crop store's coordinate arrays cost: writing them at the seal, and opening them in xarray.

Prints one JSON document. For each number of objects n: ids like the picker's
(``<sheet>-F<field>-V<k>``), the seconds of :func:`scanstream.store.coordinates.write_coordinates`
(what sealing a store now adds: the ``object``, ``plane``, ``y`` and ``x`` arrays) beside the
seconds of writing the same ids as a one-column Parquet file (a lower bound of the object table
the seal writes anyway), and the seconds of ``xarray.open_zarr`` on the coordinates (xarray loads
the ``object`` index whole) beside reading that Parquet column: wall and CPU seconds (the
process's, all threads; on a shared machine CPU is the steadier), the best of ``--repeat``
rounds after an untimed warm-up round, and the CPU ratios.

Usage::

    python benchmarks/store_coordinates.py [--n 100000,1000000] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import xarray
import zarr

from scanstream.atomic import write_parquet
from scanstream.store.coordinates import write_coordinates
from scanstream.store.schema import PIXEL_SIZE_UM, PLANE_STEP_UM


def _ids(n: int) -> pa.ChunkedArray:
    return pa.chunked_array([[f"SHEET-E07-F{i // 5000:04d}-V{i % 5000:06d}" for i in range(n)]])


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``; CPU is this process's, every thread's (zarr writes on threads)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _open_coordinates(folder: Path, n: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert xarray.open_zarr(folder).sizes["object"] == n


def _round(folder: Path, ids: pa.ChunkedArray) -> dict[str, float]:
    """One round: write and open the coordinates, write and read the ids as Parquet (seconds)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    steps = {
        "write_coordinates": lambda: write_coordinates(folder, ids, {"pixel_size_um": PIXEL_SIZE_UM,
                                                                     "plane_step_um": PLANE_STEP_UM}),
        "write_ids_parquet": lambda: write_parquet(folder / "ids.parquet", pa.table({"object_id": ids})),
    }
    out = {}
    for name, fn in steps.items():
        out[f"{name}_s"], out[f"{name}_cpu_s"] = _timed(fn)
    # the coordinates as a group of their own (no crops array here), consolidated as a sealed store is
    (folder / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that consolidated metadata is not in the v3 specification
        zarr.consolidate_metadata(str(folder))
    out["xarray_open_s"], out["xarray_open_cpu_s"] = _timed(lambda: _open_coordinates(folder, len(ids)))
    out["read_ids_parquet_s"], out["read_ids_parquet_cpu_s"] = _timed(lambda: pq.read_table(folder / "ids.parquet"))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="100000,1000000", help="numbers of objects, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    sizes = [int(v) for v in args.n.split(",")]
    scratch = Path(tempfile.mkdtemp(dir=args.dir))
    results = []
    try:
        _round(scratch / "warm-up", _ids(10))  # imports and first-use costs, untimed
        for n in sizes:
            ids = _ids(n)
            best: dict[str, float] = {}
            for r in range(args.repeat):
                for key, value in _round(scratch / f"r{r}", ids).items():
                    best[key] = min(best.get(key, value), value)
            results.append({
                "objects": n, **{k: round(v, 3) for k, v in best.items()},
                "write_cpu_ratio_to_parquet": round(best["write_coordinates_cpu_s"] / best["write_ids_parquet_cpu_s"], 2),
                "open_cpu_ratio_to_parquet": round(best["xarray_open_cpu_s"] / best["read_ids_parquet_cpu_s"], 2),
                "object_array_bytes": sum(f.stat().st_size for f in (scratch / "r0" / "object").rglob("*") if f.is_file()),
            })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    doc = {"repeat": args.repeat, "sizes": results}
    print(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
