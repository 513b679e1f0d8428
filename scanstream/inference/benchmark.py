"""Throughput on the user's hardware against the scanner's picker (``scanstream benchmark``).

Does classification keep pace with scanning and picking, and how many scanners does one node
serve? :func:`run_benchmark` measures, on one store and one ensemble, in one run:

- ``pipeline``: crops/s of the whole classify pipeline (:func:`scanstream.inference.classify.classify`:
  store -> Dask task -> read + digest check -> model -> Parquet part -> ranks -> manifest) into a
  temporary table, once with the workers loading the models (``cold``) and once more with the
  models in the workers' cache (``warm``: the steady state of a night of thousands of tasks).
- ``forward``: :meth:`Ensemble.score` on uint8 crops already in memory (preprocessing, the
  cascade's prefilter and the networks), and ``model_only``: the networks alone on normalised
  tensors at their input size already in memory (a cascade's network sees only the rows its
  prefilter keeps; rates are per crop of the store either way).
- ``stages``: where the time goes, seconds per 1,000 crops: ``read`` (the shard files' bytes),
  ``decode`` (zarr's decompression: reading the crops less ``read``), ``features`` (the
  prefilter's trees), ``resize`` (:func:`scanstream.network.model.preprocess`), ``forward``
  (the networks) and ``write`` (Parquet parts, ranks and manifest).
- ``former_method``: objects/s of the former method's cuts (:mod:`scanstream.picker.cuts`) and,
  for a cascade, of its learned feature model (:mod:`scanstream.picker.learned`) on the same
  object table.
- ``projection``: seconds for a sheet of N objects (N given or the store's) at the pipeline's
  rate, and how many scanners one node keeps pace with at the picker's rate.

The picker's rate is given (objects/s) or read from a picker log (:func:`read_picker_log`).
Everything is checked before any timing: a rate <= 0, a log line that does not parse, or a
model whose input the store cannot give (crops of another shape, a fused network on a store
without the picker's features, an input larger than the crops) is refused by name.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scanstream import store as st
from scanstream.candidates import table as cand
from scanstream.errors import InputError
from scanstream.executor import dask_client, gpu_count, local_cores, worker_count
from scanstream.inference.classify import classify
from scanstream.inference.engine import (
    Ensemble,
    cascade_step,
    check_crops,
    check_features,
    checkpoint_identity,
    model_header,
    read_plan,
)
from scanstream.inference.export import measure_rates
from scanstream.network.model import preprocess
from scanstream.picker.cuts import run_baseline_table
from scanstream.picker.speed import pick_speed
from scanstream.progress import as_progress

__all__ = ["PickerRate", "check_rate", "format_report", "read_picker_log", "run_benchmark"]

#: Crops the in-process measurements (stages, forward, model-only) use at most.
DEFAULT_SAMPLE = 2048


# -- the picker's rate --------------------------------------------------------------------
@dataclass(frozen=True)
class PickerRate:
    """The scanner's vertex picker: objects per second, and where the figure came from."""

    objects_per_s: float
    source: str
    objects: int | None = None
    seconds: float | None = None
    #: measured on a volume (``--volume``): fields/s picking, fields/s reading the planes alone
    #: (one process, one field after another) and the ratio picking / reading
    fields_per_s: float | None = None
    reading_fields_per_s: float | None = None
    picking_over_reading: float | None = None


def check_rate(rate: float, *, what: str = "picker rate") -> float:
    """``rate`` as a float when it is finite and > 0 (objects per second), else InputError."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of objects per second, got {rate!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{what} must be > 0 objects per second, got {rate!r}")
    return value


def _parse_time(text: str) -> float:
    """Seconds since the epoch from an ISO 8601 timestamp (naive: UTC) or a number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    t = datetime.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return t.timestamp()


def measure_picker(volume: str | os.PathLike, *, scheduler: str | None = None, workers: int | None = None) -> PickerRate:
    """The picker's rate measured here: ``scanstream pick`` over ``volume`` into a temporary store.

    Objects per second over the whole run (reading the planes, detecting, cropping, writing),
    on the same hardware (and cluster) as the classify measurements; beside it, fields per
    second, and reading every field's planes alone in this process (before picking, so both
    find the same files cached): the floor under any picker that looks at every plane. The
    measurement is :func:`scanstream.picker.speed.pick_speed`'s with one worker count.
    """
    doc = pick_speed(volume, workers=(workers or 1,), scheduler=scheduler)
    (run,) = doc["picking"]
    if run["objects"] == 0:
        raise InputError(f"{volume}: the picker found no vertex-like object, so it has no rate to measure")
    return PickerRate(run["objects"] / run["seconds"], f"scanstream pick on {volume} ({doc['volume']['fields']} fields)",
                      objects=run["objects"], seconds=run["seconds"], fields_per_s=run["fields_per_s"],
                      reading_fields_per_s=doc["reading"]["fields_per_s"], picking_over_reading=run["over_reading"])


def read_picker_log(path: str | os.PathLike) -> PickerRate:
    """The picker's rate from its log: CSV lines ``timestamp,objects``.

    Each line says that the picker finished a field of view (or any batch) at ``timestamp``
    (ISO 8601, e.g. ``2026-12-01T03:15:07.250``, UTC when no offset is given, or seconds since
    the epoch) holding ``objects`` vertex-like objects (an integer >= 0). Blank lines, lines
    starting with ``#`` and a header line ``timestamp,objects`` are skipped. The rate is the
    objects of every line after the first over the time from the first line to the last (the
    first line's objects were picked before the clock started).

    Raises
    ------
    InputError
        A missing file, a line that does not parse (names the file and line number), a
        timestamp earlier than the line before it, fewer than two lines, no time between the
        first and the last line, or no objects.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read picker log: {exc}") from None
    times: list[float] = []
    counts: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.replace(" ", "").lower() == "timestamp,objects":
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) != 2:
                raise ValueError("expected 2 fields")
            t, n = _parse_time(fields[0]), int(fields[1])
            if n < 0 or not math.isfinite(t):
                raise ValueError("negative count or bad time")
        except ValueError:
            raise InputError(f"{path}:{number}: not 'timestamp,objects' (ISO 8601 or epoch seconds, integer >= 0): {raw!r}") from None
        if times and t < times[-1]:
            raise InputError(f"{path}:{number}: timestamp {fields[0]} is earlier than the line before it")
        times.append(t)
        counts.append(n)
    if len(times) < 2:
        raise InputError(f"{path}: a picker log needs at least two 'timestamp,objects' lines, found {len(times)}")
    seconds, objects = times[-1] - times[0], sum(counts[1:])
    if seconds <= 0:
        raise InputError(f"{path}: no time passes between the first and the last line")
    return PickerRate(check_rate(objects / seconds, what=f"{path}: picker rate"), str(path), objects, seconds)


# -- checks before timing -----------------------------------------------------------------
def check_inputs(store_path: str | os.PathLike, checkpoints: Sequence[str | os.PathLike]) -> st.CropStore:
    """Open the store and refuse, before any timing, models whose input it cannot give."""
    if not checkpoints:
        raise InputError("no model checkpoints given")
    store = st.open_store(store_path)
    check_crops(store)
    check_features(checkpoints, [store])
    for c in checkpoints:
        checkpoint_identity(c)
        size = int(model_header(c)["model_config"]["input_size"])
        if size > st.CROP_SIZE:
            raise InputError(
                f"{c}: the model takes {size} px input but {store.path} holds {st.CROP_SIZE} px crops"
            )
    if store.n == 0:
        raise InputError(f"{store.path}: the store holds no crops")
    return store


# -- measurements -------------------------------------------------------------------------
def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 2) if seconds > 0 else None


def pipeline_rates(store: st.CropStore, checkpoints: Sequence[str | os.PathLike], client: Any, tmp: Path, *,
                   device: str, batch_size: int, repeats: int = 2) -> dict[str, Any]:
    """classify's crops/s over the whole store into temporary tables: cold, then the best of ``repeats`` warm runs."""
    out: dict[str, Any] = {"crops": store.n, "warm_runs_crops_per_s": []}
    for i, name in enumerate(("cold", *["warm"] * repeats)):
        res = classify([store.path], [Path(c) for c in checkpoints], tmp / f"table-{i}",
                       scheduler=client.scheduler.address, device=device, batch_size=batch_size, progress=False)
        if not res.complete:
            raise InputError(f"{store.path}: classify failed during the benchmark: {res.failed[0]}")
        if name == "warm":
            out["warm_runs_crops_per_s"].append(round(res.crops_per_s, 2))
            if res.crops_per_s < out.get("warm_crops_per_s", 0):
                continue
        out[f"{name}_crops_per_s"] = round(res.crops_per_s, 2)
        out[f"{name}_seconds"] = round(res.seconds, 3)
        out[f"{name}_task_seconds"] = round(sum(res.task_seconds), 3)
    return out


def _read_times(store: st.CropStore, n: int, batch_size: int) -> tuple[np.ndarray, float, float]:
    """The first ``n`` crops, the seconds reading their shard files' bytes, and reading the crops."""
    grid = (store.crops.shards or store.crops.chunks)[0]
    enc = store.crops.metadata.chunk_key_encoding
    t0 = time.perf_counter()
    for i in range(-(-n // grid)):
        f = store.path / "crops" / enc.encode_chunk_key((i, 0, 0, 0))
        if f.exists():
            f.read_bytes()
    raw = time.perf_counter() - t0
    crops = np.empty((n, st.CROP_SIZE, st.CROP_SIZE, st.CHANNELS), np.uint8)
    t0 = time.perf_counter()
    for a, b in read_plan(store, 0, n, batch_size):
        crops[a:b] = store.read(a, b)
    return crops, raw, time.perf_counter() - t0


@torch.inference_mode()
def _model_times(ens: Ensemble, crops: torch.Tensor, table: Any, batch_size: int) -> dict[str, float]:
    """Seconds in the prefilter's trees, in preprocess and in the networks over ``crops``.

    Each model runs on the rows its prefilter keeps (all rows for a pixels-only network).
    """
    t0 = time.perf_counter()
    objects = ens.object_inputs(table) if ens.reads_features else [None] * len(ens.models)
    times = {"features": time.perf_counter() - t0, "resize": 0.0, "forward": 0.0, "network_rows": 0}
    bf16 = ens.precision == "bf16"
    for model, size, obj in zip(ens.models, ens.input_sizes, objects, strict=True):
        keep = None if obj is None else obj.kept()
        rows = np.arange(len(crops)) if keep is None else np.flatnonzero(keep)
        times["network_rows"] += len(rows)
        model(preprocess(crops[: min(batch_size, len(crops))], size).contiguous(memory_format=torch.channels_last),
              *(() if obj is None else (torch.from_numpy(obj.inputs[: min(batch_size, len(crops))]),)))  # warm-up
        for i in range(0, len(rows), batch_size):
            idx = rows[i : i + batch_size]
            t0 = time.perf_counter()
            x = preprocess(crops[torch.from_numpy(idx)], size).contiguous(memory_format=torch.channels_last)
            t1 = time.perf_counter()
            with torch.autocast(ens.device.type, dtype=torch.bfloat16, enabled=bf16):
                model(x, *(() if obj is None else (torch.from_numpy(obj.inputs[idx]),)))
            times["forward"] += time.perf_counter() - t1
            times["resize"] += t1 - t0
    return times


def _bare_forward(ens: Ensemble, crops: torch.Tensor, table: Any, batch_size: int) -> float:
    """Seconds of :meth:`Ensemble.score` over in-memory uint8 crops (after one warm-up batch)."""
    objects = ens.object_inputs(table) if ens.reads_features else None
    step = cascade_step(objects, batch_size)  # as score_range calls it

    def rows(a: int, b: int) -> Any:
        return None if objects is None else [None if o is None else o.rows(a, b) for o in objects]

    ens.score(crops[:batch_size], rows(0, min(batch_size, len(crops))))
    t0 = time.perf_counter()
    for i in range(0, len(crops), step):
        ens.score(crops[i : i + step], rows(i, min(i + step, len(crops))))
    return time.perf_counter() - t0


def _write_time(store: st.CropStore, n: int, tmp: Path) -> float:
    """Seconds writing ``n`` rows of candidate parts (one per shard range), ranking them and the manifest."""
    out = tmp / "write"
    rows = store.table.slice(0, n)
    scores = np.random.default_rng(0).normal(size=n).astype(np.float32)
    t0 = time.perf_counter()
    meta = {"run_id": "benchmark", "model_hashes": [], "threshold": None}
    for a, b in store.chunk_ranges():
        if a >= n:
            break
        b = min(b, n)
        part = cand.build_part(rows.slice(a, b - a), scores[a:b], threshold=None, store=str(store.path), start=a)
        cand.write_parts(out, part, store_hash="benchmark000", start=a, metadata=meta)
    cand.finalize(out, stores={str(store.path): ("benchmark000", n)}, metadata=meta)
    return time.perf_counter() - t0


def in_process(ens: Ensemble, store: st.CropStore, n: int, tmp: Path, *, batch_size: int,
               repeats: int = 3) -> dict[str, Any]:
    """Stages, the bare forward pass and the model-only rate on the store's first ``n`` crops (best of ``repeats``)."""
    crops_np, raw, read = _read_times(store, n, batch_size)
    crops = torch.from_numpy(crops_np).to(ens.device)
    table = store.table.slice(0, n)
    # the best of a few rounds: on a machine shared with other jobs a round can stall
    runs = [_model_times(ens, crops, table, batch_size) for _ in range(repeats)]
    model = {k: min(r[k] for r in runs) for k in runs[0]}
    forward = min(_bare_forward(ens, crops, table, batch_size) for _ in range(repeats))
    write = _write_time(store, n, tmp)
    per_k = 1000.0 / n
    stages = {
        "read": raw, "decode": max(0.0, read - raw), "features": model["features"],
        "resize": model["resize"], "forward": model["forward"], "write": write,
    }
    total = sum(stages.values())
    return {
        "crops": n,
        "network_rows": int(model["network_rows"]),
        "forward_crops_per_s": _rate(n, forward),
        "model_only_crops_per_s": _rate(n, model["forward"]),
        "stages_s_per_1000": {k: round(v * per_k, 4) for k, v in stages.items()},
        "stages_share": {k: round(v / total, 3) for k, v in stages.items()} if total > 0 else {},
    }


def former_method_rates(store: st.CropStore, ens: Ensemble, *, min_seconds: float = 0.2) -> dict[str, Any]:
    """Objects/s of the former method's cuts (and of a cascade's learned feature model) on the store's table."""

    def rate(fn: Any) -> float:  # one round after a warm-up call
        return round(measure_rates({"fn": fn}, store.n, rounds=1, min_seconds=min_seconds)["fn"], 1)

    out: dict[str, Any] = {"objects": store.n, "cuts_objects_per_s": rate(lambda: run_baseline_table(store.table))}
    fm = next((m for m in ens.feature_models if m is not None), None)
    if fm is not None:
        out["learned_objects_per_s"] = rate(lambda: fm.score_table(store.table, source=str(store.path)))
    return out


def projection(pipeline_rate: float, sheet_objects: int, picker: PickerRate | None) -> dict[str, Any]:
    """Seconds per sheet of ``sheet_objects`` objects and scanners one node keeps pace with."""
    out: dict[str, Any] = {
        "sheet_objects": sheet_objects,
        "sheet_seconds": round(sheet_objects / pipeline_rate, 1) if pipeline_rate > 0 else None,
    }
    if picker is not None:
        out["picker_objects_per_s"] = round(picker.objects_per_s, 3)
        out["picker_source"] = picker.source
        out["picker_sheet_seconds"] = round(sheet_objects / picker.objects_per_s, 1)
        out["scanners_per_node"] = round(pipeline_rate / picker.objects_per_s, 2)
        out["keeps_pace"] = pipeline_rate >= picker.objects_per_s
    return out


# -- the run ------------------------------------------------------------------------------
def run_benchmark(
    store: str | os.PathLike,
    checkpoints: Sequence[str | os.PathLike],
    *,
    picker: PickerRate | None = None,
    objects: int | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    batch_size: int = 64,
    sample: int = DEFAULT_SAMPLE,
    processes: bool = True,
    progress: Any = False,
) -> dict[str, Any]:
    """Measure classify, the forward pass and the former method on one store; project a sheet.

    Parameters
    ----------
    store : path-like
        A complete crop store; the pipeline scores all of it (a few thousand crops suffice).
    checkpoints : sequence of path-like
        The ensemble (mean logit), as classify would run it.
    picker : PickerRate, optional
        The picker's rate (:func:`read_picker_log`, or built from a given rate with
        :func:`check_rate`); without it no scanners-per-node figure.
    objects : int, optional
        Objects in a sheet for the projection (default: the store's).
    scheduler, workers, processes
        The Dask cluster, as for classify (default: a LocalCluster started for the benchmark).
    sample : int
        Crops of the store (the first ones) for the in-process measurements.

    Returns a JSON-ready dict (machine, store, models, pipeline, in_process, former_method,
    projection); raises InputError, StoreError or CheckpointError before any timing on bad input.
    """
    _check_counts(objects=objects, sample=sample, batch_size=batch_size, workers=workers)
    opened = check_inputs(store, checkpoints)
    bar = as_progress(progress)(3, "benchmark", "step")
    tmp = Path(tempfile.mkdtemp(prefix="scanstream-benchmark-"))
    try:
        with dask_client(scheduler, workers=workers, processes=processes,
                         gpus=gpu_count() if torch.cuda.is_available() and device != "cpu" else 0) as client:
            pipe = pipeline_rates(opened, checkpoints, client, tmp, device=device, batch_size=batch_size)
            bar.update(1)
            n_workers = worker_count(client)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, local_cores() // n_workers))  # what one worker's task gets
        try:
            ens = Ensemble(list(checkpoints), device=device)
            inproc = in_process(ens, opened, min(sample, opened.n), tmp, batch_size=batch_size)
            bar.update(1)
            former = former_method_rates(opened, ens)
            bar.update(1)
        finally:
            torch.set_num_threads(threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bar.close()
    warm, model_only = pipe["warm_crops_per_s"], inproc["model_only_crops_per_s"]
    return {
        "benchmark": "scanstream benchmark",
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_cores": local_cores(), "device": str(ens.device),
                    "torch": torch.__version__, "torch_threads": max(1, local_cores() // n_workers),
                    "workers": n_workers, "loadavg": [round(v, 2) for v in os.getloadavg()]},
        "store": {"path": str(opened.path), "crops": opened.n},
        "models": [{"path": str(c), "hash": h, "input_size": s, "cascade": p is not None}
                   for c, h, s, p in zip(checkpoints, ens.hashes, ens.input_sizes, ens.prefilters, strict=True)],
        "batch_size": batch_size,
        "pipeline": pipe,
        "in_process": inproc,
        "pipeline_over_model_only": round(warm / model_only, 3) if model_only else None,
        "former_method": former,
        "picker": None if picker is None else asdict(picker),
        "projection": projection(warm, objects or opened.n, picker),
    }


def _check_counts(**counts: int | None) -> None:
    for name, v in counts.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{name.replace('_', ' ')} must be a positive integer, got {v!r}")


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table for the terminal."""
    pipe, inp, proj, former = report["pipeline"], report["in_process"], report["projection"], report["former_method"]
    m = report["machine"]
    lines = [
        (f"scanstream benchmark: {report['store']['path']} ({report['store']['crops']:,} crops), "
         f"{len(report['models'])} model(s), {m['device']}, {m['workers']} worker(s) x {m['torch_threads']} "
         f"torch thread(s), load {m['loadavg'][0]}"),
        "",
        f"{'what':<44} {'rate':>14}",
        f"{'classify pipeline, warm (store -> Parquet)':<44} {pipe['warm_crops_per_s']:>10,.1f} /s",
        f"{'classify pipeline, cold (models loading)':<44} {pipe['cold_crops_per_s']:>10,.1f} /s",
        f"{'forward pass (uint8 crops in memory)':<44} {_fmt(inp['forward_crops_per_s'])}",
        f"{'model only (normalised tensors in memory)':<44} {_fmt(inp['model_only_crops_per_s'])}",
        f"{'pipeline / model only':<44} {_fmt(report['pipeline_over_model_only'], unit='')}",
        f"{'former method: cuts':<44} {former['cuts_objects_per_s']:>10,.0f} /s",
    ]
    if "learned_objects_per_s" in former:
        lines.append(f"{'former method: learned (cascade prefilter)':<44} {former['learned_objects_per_s']:>10,.0f} /s")
    if "picker_objects_per_s" in proj:
        lines.append(f"{'picker (' + Path(proj['picker_source']).name[:30] + ')':<44} {proj['picker_objects_per_s']:>10,.1f} /s")
    if (report.get("picker") or {}).get("reading_fields_per_s"):
        pk = report["picker"]
        lines.append(f"{'picker, fields (reading the planes alone)':<44} {pk['fields_per_s']:>10,.2f} /s "
                     f"({pk['reading_fields_per_s']:,.2f} /s: picking / reading {pk['picking_over_reading']:.3f})")
    lines += ["", f"sheet of {proj['sheet_objects']:,} objects: {_duration(proj['sheet_seconds'])} at the pipeline's rate"]
    if "scanners_per_node" in proj:
        pace = "keeps pace" if proj["keeps_pace"] else "does NOT keep pace"
        lines.append(f"the picker needs {_duration(proj['picker_sheet_seconds'])}; one node {pace}: "
                     f"{proj['scanners_per_node']:.2f} scanners per node")
    lines += ["", f"where the time goes (first {inp['crops']:,} crops; networks ran on {inp['network_rows']:,} rows):"]
    for k, v in inp["stages_s_per_1000"].items():
        lines.append(f"  {k:<10} {v:>9.3f} s per 1,000 crops  {100 * inp['stages_share'].get(k, 0):5.1f} %")
    return "\n".join(lines)


def _fmt(v: float | None, *, unit: str = " /s") -> str:
    return f"{'n/a':>10}{unit}" if v is None else f"{v:>10,.{3 if not unit else 1}f}{unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
