"""How fast the CLI answers: ``scanstream --help``, ``info`` and ``query`` against ``import numpy``.

Prints one JSON document: the wall time of each command (a fresh ``python -m scanstream`` each
time), the median over ``--runs`` rounds, and each median as a ratio to the median of
``python -c "import numpy"`` in the same rounds. The commands run in turn within each round, so a
load that comes and goes on a shared machine falls on all of them alike. The goal (issue 25):
each command within 3x of numpy's import, which means no torch, torchvision, scikit-learn or
scipy on their paths (tests/test_cli_startup.py checks the imports themselves).

Usage::

    python benchmarks/cli_startup.py [--runs 9] [--table CANDIDATES]

Without ``--table``, a complete candidate table of 256 rows over one store of synthetic crops, with
a calibrated threshold record, is written first, in a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scanstream.candidates import table as cand
from scanstream.store import CROP_SIZE, create_store
from scanstream.trust import build_trust_reference


def synthetic_table(folder: Path, rows: int = 256) -> Path:
    """A complete candidate table (manifest, ranks, one sheet) over a store of ``rows`` noise crops.

    Its threshold record carries a calibration map, so ``info`` computes every trust field
    (expected alpha decays, drift) as it does for a real night's table.
    """
    rng = np.random.default_rng(0)
    labels = (rng.random(rows) < 0.1).astype(np.int64)
    labels[:2] = [1, 0]
    scores = (rng.normal(0, 1.5, rows) + np.where(labels == 1, 3.0, -2.0)).astype(np.float32)
    crops = rng.integers(0, 256, (rows, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    objects = [{"object_id": f"S1-{i:06d}", "experiment": "E07", "module": 1, "plate": 1, "sheet": "S1",
                "x_mm": float(rng.uniform(0, 50)), "y_mm": float(rng.uniform(0, 50)), "z_mm": -0.1, "label": -1,
                "multiplicity": 5 if labels[i] else 3, "track_lengths_um": [30.0] * (5 if labels[i] else 3)}
               for i in range(rows)]
    store = create_store(folder / "s.zarr", crops, objects, source={"stage": "benchmarks/cli_startup.py"})
    out = folder / "candidates"
    record = {"threshold": 0.0, "trust": build_trust_reference(
        labels, scores, multiplicity=[o["multiplicity"] for o in objects],
        lengths=[o["track_lengths_um"] for o in objects])}
    meta = {"threshold": record, "model_hashes": [], "store_hashes": {str(store.path): store.content_hash},
            "version": "benchmark", "run_id": "cli-startup", "time": "0"}
    part = cand.build_part(store.table, scores, threshold=0.0, store=str(store.path), start=0)
    cand.write_parts(out, part, store_hash=store.content_hash, start=0, metadata=meta)
    cand.finalize(out, stores={str(store.path): (store.content_hash, rows)}, metadata=meta)
    return out


def commands(table: Path) -> dict[str, list[str]]:
    """The commands timed, by name; ``import numpy`` is the yardstick."""
    cli = [sys.executable, "-m", "scanstream"]
    return {
        "import_numpy": [sys.executable, "-c", "import numpy"],
        "help": [*cli, "--help"],
        "info": [*cli, "info", str(table)],
        "query": [*cli, "query", str(table), "--top", "5"],
    }


def wall_time(argv: list[str]) -> float:
    """Seconds from start to exit of one command (its output discarded; a failure stops the benchmark)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds


def measure(table: Path, runs: int) -> dict[str, object]:
    cmds = commands(table)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for name, argv in cmds.items():  # one untimed start each: the page cache, not the start-up, is warm after it
        wall_time(argv)
    for _ in range(runs):
        for name, argv in cmds.items():
            times[name].append(wall_time(argv))
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["import_numpy"]
    return {
        "runs": runs,
        "python": platform.python_version(),
        "median_s": {name: round(m, 4) for name, m in median.items()},
        "min_s": {name: round(min(t), 4) for name, t in times.items()},
        "ratio_to_import_numpy": {name: round(m / base, 2) for name, m in median.items() if name != "import_numpy"},
        "goal_ratio": 3.0,
        "commands": {name: " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv))
                     for name, argv in cmds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cli_startup.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9, help="rounds; the median of each command is reported (default 9)")
    ap.add_argument("--table", type=Path, help="time info and query on this candidate table (default: a synthetic one)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs must be at least 1, got {args.runs}")
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        table = args.table if args.table is not None else synthetic_table(Path(tmp))
        doc = measure(table, args.runs)
        doc["table"] = str(args.table) if args.table is not None else "synthetic (256 rows, one sheet)"
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
