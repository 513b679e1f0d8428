"""Checking crops as they are read: the engine's scoring with no check, blake2b and fast digests.

Prints one JSON document. One store, one model, one process: :func:`score_range` over the whole
store with ``verify=False`` (no check), then with the store's digests as a store written
before fast digests has them (blake2b block digests and the content hash) and as one written
now (xxh3-128 of every block), alternating in rounds on the same cores so the machine's load
cancels; the best round of each. Also the bare hashing rates on one block. The question: what
fraction of the pipeline's time does the check cost, and how much does the fast digest give back.

Usage::

    python benchmarks/verify_digests.py [--store STORE] [--model CKPT] [--rounds 3]

Without ``--store``, the shipped cascade scores a simulated sheet of 3,000 objects (made once in a
temporary folder, about a minute); without ``--model``, the shipped cascade.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from scanstream import store as st
from scanstream.inference.engine import Ensemble, score_range
from scanstream.store.schema import block_digest
from scanstream.store.writer import add_fast_digests

ROOT = Path(__file__).resolve().parents[1]


def _legacy_copy(store: Path, to: Path) -> Path:
    """A copy of ``store`` whose digests.json has no fast digests (as an older release wrote it)."""
    shutil.copytree(store, to)
    saved = json.loads((to / st.DIGESTS_FILE).read_text())
    saved.pop("fast", None)
    saved.pop("fast_blocks", None)
    (to / st.DIGESTS_FILE).write_text(json.dumps(saved))
    return to


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "scanstream-cpu-cascade.safetensors")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (one Dask worker's share on 2 cores)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="verify_digests_"))
    try:
        if args.store is None:
            from scanstream.simulate.dataset import simulate_store

            args.store = simulate_store(tmp / "sheet.zarr", objects=3000, alpha_fraction=0.02, sheet="S1", seed=11).path
        legacy = st.open_store(_legacy_copy(args.store, tmp / "legacy.zarr"))
        fast = st.open_store(_legacy_copy(args.store, tmp / "fast.zarr"))
        add_fast_digests(fast)
        fast = st.open_store(fast.path)
        ens = Ensemble([args.model], device="cpu")
        runs = {"no_check": (legacy, False), "blake2b": (legacy, True), "fast": (fast, True)}
        for s, verify in runs.values():  # warm-up: page cache, allocations
            score_range(ens, s, 0, s.n, verify=verify)
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(args.rounds):
            for name, (s, verify) in runs.items():
                t0 = time.perf_counter()
                score_range(ens, s, 0, s.n, verify=verify)
                best[name] = min(best[name], time.perf_counter() - t0)
        n = legacy.n
        block = legacy.read(0, min(n, st.SHARD_CROPS))
        hashing = {}
        for name, fn in (("blake2b", lambda: block_digest(block)), ("fast", lambda: st.fast_digest(block))):
            fn()
            t0 = time.perf_counter()
            for _ in range(5):
                fn()
            hashing[name] = round(5 * block.nbytes / (time.perf_counter() - t0) / 1e9, 2)
        rate = {k: round(n / v, 1) for k, v in best.items()}
        print(json.dumps({
            "store": str(args.store), "model": str(args.model), "objects": n, "torch_threads": args.threads,
            "rounds": args.rounds, "load_1min": round(os.getloadavg()[0], 2),
            "crops_per_s": rate,
            "check_share_of_time": {k: round(1 - best["no_check"] / best[k], 3) for k in ("blake2b", "fast")},
            "fast_over_blake2b": round(best["blake2b"] / best["fast"], 3),
            "hash_gb_per_s": hashing,
        }, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
