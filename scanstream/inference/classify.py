"""Classify crop stores into a candidate table on Dask; score a store in-process.

``classify`` is the overnight job (DESIGN.md, "Flow"): every crop of every store is scored by
the ensemble (mean logit) and written to the candidate table (:mod:`scanstream.candidates.table`)
with the calibrated threshold's verdict. The work is split into chunk-aligned ranges of a
shard or more (thousands of crops); each is one Dask task that finds its models in the
worker's cache and writes its own part files (:func:`scanstream.inference.engine.run_task`).

A rerun of the same command finds the parts already written (their names follow from the
store hash and range start) and submits only the missing ranges, so a crash or kill loses at
most the tasks in flight and nothing is ever written twice. A failed task (a missing or
corrupt shard) fails alone; the run reports it by store and range and writes no manifest
until a rerun has completed every range. ``_run.json`` pins the identity of the table (model
hashes, threshold record, score precision): a rerun with other models or another threshold
into the same directory is refused rather than mixed in.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanstream import __version__
from scanstream.candidates import table as cand
from scanstream.errors import InputError
from scanstream.progress import as_progress
from scanstream.store import CropStore, open_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifyResult:
    """What a classify run did.

    Attributes
    ----------
    out : Path
        The candidate table directory.
    rows : int
        Rows in the table when complete (else rows written so far by finished tasks).
    selected : int
        Rows with ``score >= threshold``.
    failed : list of str
        One line per failed task (store path, crop range, error); empty on success.
    seconds : float
        Wall time of this call.
    crops_per_s : float
        Crops scored by this call per second of wall time.
    processed : int
        Crops scored by this call (0 when everything was already done).
    tasks : int
        Tasks submitted by this call.
    complete : bool
        The manifest is written: every crop has exactly one row.
    dashboard : str or None
        The Dask dashboard address, when a cluster was used.
    run_id : str
    """

    out: Path
    rows: int
    selected: int
    failed: list[str]
    seconds: float
    crops_per_s: float
    processed: int = 0
    tasks: int = 0
    complete: bool = False
    dashboard: str | None = None
    run_id: str = ""
    task_seconds: list[float] = field(default_factory=list)


# -- in-process scoring -------------------------------------------------------------------
def score_store(
    store: CropStore,
    checkpoints: Sequence[str | os.PathLike],
    *,
    device: str = "auto",
    batch_size: int = 64,
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Ensemble mean logit of every crop of ``store``, in this process.

    Parameters
    ----------
    store : CropStore
    checkpoints : sequence of path-like
        One or more scanstream checkpoints; the score is their mean logit.
    device : {"auto", "cpu", "cuda", "cuda:N"}
    batch_size : int
        Crops per forward pass.
    precision : {"auto", "fp32", "bf16"}
        See :func:`scanstream.devices.resolve_precision`.

    Returns
    -------
    ndarray, float32 (n,)
        Row i is crop i's mean logit.
    """
    from scanstream.inference.engine import Ensemble, check_crops, check_features, score_range

    _check_batch_size(batch_size)
    check_crops(store)
    check_features(checkpoints, [store])
    ensemble = Ensemble(list(checkpoints), device=device, precision=precision)
    bar = as_progress(progress)(store.n, f"score {store.path.name}", "crop")
    try:
        return score_range(ensemble, store, 0, store.n, batch_size=batch_size, on_batch=bar.update)
    finally:
        bar.close()


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")


# -- planning -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    store: CropStore
    path: str
    start: int
    stop: int
    parts: tuple[Path, ...]

    @property
    def done(self) -> bool:
        return all(p.exists() for p in self.parts)


def _open_stores(stores: Sequence[str | os.PathLike]) -> dict[str, CropStore]:
    from scanstream.inference.engine import check_crops

    if not stores:
        raise InputError("no crop stores given")
    opened: dict[str, CropStore] = {}
    by_hash: dict[str, str] = {}
    for s in stores:
        store = open_store(s)
        check_crops(store)
        path = str(Path(s).resolve())
        if path in opened:
            raise InputError(f"{s}: store given twice")
        if store.content_hash in by_hash:
            raise InputError(f"{s}: same content as {by_hash[store.content_hash]} (a copy); its crops would be classified twice")
        opened[path] = store
        by_hash[store.content_hash] = path
    return opened


def _round_to_blocks(store: CropStore, crops_per_task: int | None) -> int:
    """Task size in crops: whole digest blocks (shards), so every task can verify what it reads."""
    block = int(store.attrs.get("shard_crops", store.chunk_crops))
    want = crops_per_task or block
    return max(block, -(-want // block) * block)


def plan_tasks(out: Path, stores: dict[str, CropStore], crops_per_task: int | None) -> list[_Task]:
    """Every range of every store with the part files it writes (done or not)."""
    tasks = []
    for path, store in stores.items():
        sheets = store.table.column("sheet").fill_null("").to_numpy(zero_copy_only=False)
        for start, stop in store.chunk_ranges(_round_to_blocks(store, crops_per_task)):
            names = set(sheets[start:stop].tolist())
            tasks.append(_Task(store, path, start, stop, tuple(cand.part_paths(out, names, store.content_hash, start))))
    return tasks


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _open_run(out: Path, identity: dict[str, Any], stores: dict[str, CropStore]) -> dict[str, Any]:
    """Read or start ``_run.json``; refuse a directory that holds another run's table."""
    f = out / cand.RUN_FILE
    wanted = {p: {"hash": s.content_hash, "rows": s.n} for p, s in stores.items()}
    if f.exists():
        try:
            run = json.loads(f.read_text())
        except ValueError as exc:
            raise InputError(f"{f}: unreadable run file: {exc}") from None
        old = run.get("identity") or {}
        if old != identity:
            diff = sorted(k for k in identity if old.get(k) != identity[k])
            was = ", ".join(f"{k}={old.get(k)} (now {identity[k]})" for k in diff)
            raise InputError(f"{out}: holds a candidate table made with other {was}; use a new --out")
        for p, s in wanted.items():
            old = run["stores"].get(p)
            if old is not None and old["hash"] != s["hash"]:
                raise InputError(f"{p}: store changed since {out} was started ({old['hash']} -> {s['hash']}); use a new --out")
        if not set(wanted) <= set(run["stores"]) and cand.read_manifest(out) is not None:
            # extending a complete table: a new run, and the table is incomplete until it ends
            run["run_id"] = uuid.uuid4().hex[:12]
            (out / cand.MANIFEST).unlink()
        run["stores"] = {**run["stores"], **wanted}
    else:
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out}: exists and is not a candidate table started by classify; use a new --out")
        run = {
            "run_id": uuid.uuid4().hex[:12],
            "identity": identity,
            "stores": wanted,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    out.mkdir(parents=True, exist_ok=True)
    cand.write_json_atomic(run, f)
    return run


# -- the run ------------------------------------------------------------------------------
def classify(
    stores: list[Path],
    checkpoints: list[Path],
    out: Path,
    *,
    threshold: Path | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    batch_size: int = 64,
    crops_per_task: int | None = None,
    progress: bool = True,
    precision: str = "auto",
    verify: bool = True,
    on_cluster: Callable[[str | None], None] | None = None,
    processes: bool = True,
) -> ClassifyResult:
    """Score every crop of ``stores`` with the ensemble on Dask into the candidate table ``out``.

    Parameters
    ----------
    stores : list of Path
        Complete crop stores (uint8 224 x 224 x 3 crops).
    checkpoints : list of Path
        The ensemble; the score is the mean logit. Workers read these paths (a shared
        filesystem on a cluster) and check each file's hash.
    out : Path
        The candidate table directory (created; resumed when it holds this run's table).
    threshold : Path, optional
        A threshold record for exactly these models; without one ``selected`` is null.
    scheduler : str, optional
        Address of an existing Dask scheduler; default: a LocalCluster for this run.
    workers : int, optional
        LocalCluster workers (default: one per GPU with CUDA, else 1 using every core).
    device : {"auto", "cpu", "cuda"}
    batch_size : int
        Crops per forward pass.
    crops_per_task : int, optional
        Crops per Dask task, rounded up to whole shards (default: one shard).
    precision : {"auto", "fp32", "bf16"}
    verify : bool
        Check every crop read against the store's block digests.
    on_cluster : callable, optional
        Called with the dashboard address once the cluster is up (the CLI prints it).
    processes : bool
        LocalCluster workers as processes (default) or threads of this process.

    Returns
    -------
    ClassifyResult
        ``failed`` lists failed tasks; the table is complete only when it is empty.

    Raises
    ------
    ThresholdError
        The threshold record belongs to other models.
    StoreError, CheckpointError, InputError
        A store or checkpoint that cannot be used, or ``out`` holds another run's table.
    """
    from scanstream.devices import resolve_device, resolve_precision
    from scanstream.inference.engine import check_features, checkpoint_identity
    from scanstream.inference.threshold import check_models, load_threshold

    t0 = time.perf_counter()
    _check_batch_size(batch_size)
    for name, v in (("workers", workers), ("crops per task", crops_per_task)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if not checkpoints:
        raise InputError("no model checkpoints given")
    model_paths = [str(Path(c).resolve()) for c in checkpoints]
    hashes = [checkpoint_identity(c) for c in checkpoints]
    if len(set(hashes)) != len(hashes):
        raise InputError(f"the same checkpoint is given twice among {[str(c) for c in checkpoints]}")
    record = None
    if threshold is not None:
        record = load_threshold(threshold)
        check_models(record, hashes, source=str(threshold))
    opened = _open_stores(stores)
    check_features(checkpoints, list(opened.values()))
    out = Path(out)

    if scheduler is None:
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
    else:  # the workers' hardware decides, asked once connected
        dev, prec = None, None

    def identity(prec: str) -> dict[str, Any]:
        return {"model_hashes": sorted(hashes), "threshold": _digest(record) if record else None, "score_precision": prec}

    if prec is not None:
        run = _open_run(out, identity(prec), opened)
    if out.exists():
        cand.remove_temporaries(out)
    tasks = plan_tasks(out, opened, crops_per_task)
    pending = [t for t in tasks if not t.done]
    dashboard = None
    failed: list[str] = []
    processed = 0
    task_seconds: list[float] = []
    if pending or prec is None:
        from scanstream.executor import dask_client, gpu_count

        gpus = gpu_count() if dev is not None and dev.type == "cuda" else 0
        with dask_client(scheduler, workers=workers, gpus=gpus, processes=processes) as client:
            dashboard = client.dashboard_link
            logger.info("Dask dashboard: %s", dashboard)
            if on_cluster is not None:
                on_cluster(dashboard)
            if prec is None:
                dev, prec = _resolve_on_workers(client, device, precision)
                run = _open_run(out, identity(prec), opened)
                cand.remove_temporaries(out)
                pending = [t for t in plan_tasks(out, opened, crops_per_task) if not t.done]
            if record is not None and record.get("score_precision") not in (None, prec):
                logger.warning(
                    "threshold was calibrated with %s scores but this run scores in %s; borderline crops may move",
                    record.get("score_precision"), prec,
                )
            metadata = _metadata(record, hashes, run, prec, dev.type)
            processed, failed, task_seconds = _submit(
                client, pending, model_paths, hashes, out, record, metadata, dev, prec, batch_size, verify, progress
            )
    else:
        metadata = _metadata(record, hashes, run, prec, dev.type)

    complete = False
    manifest = cand.read_manifest(out) if not failed and not processed else None
    if manifest is not None and manifest.get("run_id") == run["run_id"] and set(manifest["stores"]) == set(run["stores"]):
        rows, selected, complete = manifest["rows"], manifest["selected"], True  # nothing was left to do
    elif not failed:
        manifest = cand.finalize(
            out, stores={p: (s["hash"], s["rows"]) for p, s in run["stores"].items()}, metadata=metadata
        )
        rows, selected, complete = manifest["rows"], manifest["selected"], True
    else:
        done = cand.part_files(out)
        t = cand.read_candidates(out, columns=["selected"]) if done else None
        rows = t.num_rows if t is not None else 0
        selected = int(np.asarray(t.column("selected").fill_null(False)).sum()) if t is not None else 0
    seconds = time.perf_counter() - t0
    return ClassifyResult(
        out=out,
        rows=rows,
        selected=selected,
        failed=failed,
        seconds=seconds,
        crops_per_s=processed / seconds if seconds > 0 else 0.0,
        processed=processed,
        tasks=len(pending),
        complete=complete,
        dashboard=dashboard,
        run_id=run["run_id"],
        task_seconds=task_seconds,
    )


def _metadata(record: dict | None, hashes: list[str], run: dict, prec: str, device: str) -> dict[str, Any]:
    return {
        "threshold": record,
        "model_hashes": sorted(hashes),
        "store_hashes": {p: s["hash"] for p, s in run["stores"].items()},
        "version": __version__,
        "run_id": run["run_id"],
        "time": run["started"],
        "score_precision": prec,
        "device": device,
    }


def _resolve_on_workers(client: Any, device: str, precision: str) -> tuple[Any, str]:
    """Device and precision of an existing cluster's workers (they, not this client, run models)."""
    from scanstream.devices import PRECISIONS, cpu_has_native_bf16, parse_device, resolve_precision

    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    def probe() -> tuple[bool, bool]:
        import torch

        cuda = torch.cuda.is_available()
        return cuda, bool(cuda and torch.cuda.is_bf16_supported())

    answers = list(client.run(probe).values())
    if not answers:
        raise InputError("the Dask cluster has no workers")
    dev = parse_device(device, cuda=all(a[0] for a in answers))
    native = all(a[1] for a in answers) if dev.type == "cuda" else all(client.run(cpu_has_native_bf16).values())
    return dev, resolve_precision(precision, dev, native=native)


def _submit(
    client: Any,
    pending: list[_Task],
    model_paths: list[str],
    hashes: list[str],
    out: Path,
    record: dict | None,
    metadata: dict,
    dev: Any,
    prec: str,
    batch_size: int,
    verify: bool,
    progress: bool,
) -> tuple[int, list[str], list[float]]:
    from distributed import as_completed

    from scanstream.executor import host_threads, task_resources
    from scanstream.inference.engine import TaskSpec, run_task

    if not pending:
        return 0, [], []
    resources = task_resources(client, gpu=dev.type == "cuda")
    if resources:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        if not any(w.get("resources", {}).get("GPU") for w in workers):
            raise InputError(
                "no Dask worker offers the resource GPU, so no model task could start; start GPU workers "
                "with --resources GPU=1 (one per GPU, e.g. `dask cuda worker ADDRESS --resources GPU=1`)"
            )
    threads = host_threads(client)
    meta_json = json.dumps(metadata, sort_keys=True)
    specs = [
        TaskSpec(
            store=t.path,
            store_hash=t.store.content_hash,
            start=t.start,
            stop=t.stop,
            checkpoints=tuple(model_paths),
            model_hashes=tuple(hashes),
            out=str(out.resolve()),
            threshold=None if record is None else float(record["threshold"]),
            metadata=meta_json,
            device="cuda" if dev.type == "cuda" else str(dev),  # a GPU worker uses the GPU it sees
            precision=prec,
            batch_size=batch_size,
            verify=verify,
            host_threads=threads,
        )
        for t in pending
    ]
    futures = client.map(run_task, specs, pure=False, resources=resources, retries=0)
    name = {f.key: s for f, s in zip(futures, specs, strict=True)}
    processed, failed, seconds = 0, [], []
    bar = as_progress(progress)(sum(t.stop - t.start for t in pending), "classify", "crop")
    try:
        for fut in as_completed(futures):
            if fut.status == "error":
                s = name[fut.key]
                exc = fut.exception()
                msg = str(exc) if str(exc).startswith(s.store) else f"{s.store}: crops [{s.start}, {s.stop}): {exc!r}"
                logger.error("task failed: %s", msg)
                failed.append(msg)
                continue
            res = fut.result()
            processed += res["rows"]
            seconds.append(res["seconds"])
            bar.update(res["rows"])
    finally:
        bar.close()
    failed.sort()
    return processed, failed, seconds
