"""How fast ``pick`` runs here, beside reading the planes alone (issue 27's speed goal).

:func:`pick_speed` measures, one after the other on this machine and one volume store:
reading every field's planes in this process (zstd decompression of every plane: the floor
under any picker that looks at every plane), then ``scanstream pick``
(:func:`scanstream.picker.pick.pick_volume`) into a temporary store with each number of Dask
worker processes asked for. For each run it reports the whole run's seconds and, apart, the
cluster's start and the work from then to the last field's crops appended, so a short volume's
fields/s is not hidden under a few seconds of starting worker processes. The machine may be
shared: the load average before and after goes with the figures, and the ratios picking /
reading are what compare across machines. ``benchmarks/pick_speed.py`` prints it as JSON.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scanstream.errors import InputError
from scanstream.picker.pick import pick_volume
from scanstream.store.volume import open_volume


def pick_speed(volume: str | os.PathLike, *, workers: Sequence[int] = (1, 2), scheduler: str | None = None) -> dict[str, Any]:
    """Reading alone and picking with each of ``workers`` worker processes (module docstring).

    Returns a JSON-ready dict: ``machine`` (cores, load average before and after), ``volume``
    (fields, planes), ``reading`` (seconds, fields/s, CPU seconds of this process) and
    ``picking``, one entry per worker count: seconds, start and work seconds, fields/s over the
    whole run and over the work alone, objects, both fields/s over reading's, and the CPU seconds
    of this process (the client and, on a local cluster, the scheduler) and of the local
    cluster's worker processes (their start and imports included; 0 with ``scheduler``).

    Raises
    ------
    InputError
        No worker count, or one below 1.
    """
    if not workers or min(workers) < 1:
        raise InputError(f"pick_speed: worker counts must be >= 1, got {list(workers)}")
    load0 = os.getloadavg()
    vol = open_volume(volume)
    n, planes = len(vol), sum(f.shape[0] for f in vol)
    t0, c0 = time.perf_counter(), time.process_time()
    for f in vol:
        f.read()
    read_s, read_cpu = time.perf_counter() - t0, time.process_time() - c0
    reading = {"seconds": round(read_s, 3), "cpu_seconds": round(read_cpu, 3), "fields_per_s": _sig(n / read_s)}
    runs = []
    for count in workers:
        tmp = Path(tempfile.mkdtemp(prefix="scanstream-pick-speed-"))
        c0, k0 = time.process_time(), _children_cpu()
        try:
            res = pick_volume(volume, tmp / "picked.zarr", workers=count, scheduler=scheduler)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        cpu, kids = time.process_time() - c0, _children_cpu() - k0
        whole, work = n / res.seconds, n / max(res.work_seconds, 1e-9)
        runs.append({
            "workers": count, "seconds": round(res.seconds, 3), "start_seconds": round(res.start_seconds, 3),
            "work_seconds": round(res.work_seconds, 3), "objects": res.objects, "fields_per_s": _sig(whole),
            "fields_per_s_work": _sig(work), "over_reading": _sig(whole / (n / read_s)),
            "work_over_reading": _sig(work / (n / read_s)),
            "cpu_seconds": {"this_process": round(cpu, 3), "worker_processes": round(kids, 3)},
        })
    return {
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(v, 2) for v in load0],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "volume": {"path": str(volume), "fields": n, "planes": planes, "field_px": list(vol[0].shape[1:]) if n else []},
        "reading": reading,
        "picking": runs,
    }


def _children_cpu() -> float:
    """CPU seconds (user and system) of this process's ended and waited-for child processes:
    a local cluster's worker processes once it has closed."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def _sig(x: float) -> float:
    """``x`` to 4 significant figures (rates near 0.01 keep their precision, unlike 3 decimals)."""
    return float(f"{x:.4g}")
