"""Classify crop stores into a candidate table on Dask.

``classify`` is the overnight job (docs/architecture.md, "The flow"): every crop of every store is scored by
the ensemble (mean logit) and written to the candidate table (:mod:`scanstream.candidates.table`)
with the calibrated threshold's verdict. The work is split into chunk-aligned ranges of a
shard or more (thousands of crops); each is one Dask task that finds its models in the
worker's cache and writes its own part files (:func:`scanstream.inference.engine.run_task`).

A rerun of the same command finds the parts already written (their names follow from the
store hash and range start) and submits only the missing ranges, so a crash or kill loses at
most the tasks in flight and nothing is ever written twice. A failed task (a missing or
corrupt shard) fails alone; the run reports it by store and range and writes no manifest
until a rerun has completed every range. The run record (``_run.parquet``) pins the identity of the table (model
hashes, threshold record, score precision): a rerun with other models or another threshold
into the same directory is refused rather than mixed in.

Scoring one store in this process is :func:`scanstream.inference.scoring.score_store`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanstream import __version__
from scanstream.candidates import table as cand
from scanstream.candidates.ids import refuse_duplicate_ids
from scanstream.devices import PRECISIONS, cpu_has_native_bf16, parse_device, resolve_device, resolve_precision
from scanstream.errors import InputError
from scanstream.executor import dask_client, gpu_count, host_threads, run_tasks, task_resources
from scanstream.inference.engine import TaskSpec, check_crops, check_features, checkpoint_identity, run_task
from scanstream.inference.scoring import check_batch_size
from scanstream.progress import as_progress
from scanstream.store import BlockVerifier, CropStore, open_store
from scanstream.threshold import check_models, load_threshold, validate_threshold_record

__all__ = ["ClassifyResult", "classify", "plan_tasks"]

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


# -- planning -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    store: CropStore
    path: str
    start: int
    stop: int
    parts: tuple[Path, ...]
    out: Path | None = None  # where its parts go: the table, or its staging directory

    @property
    def done(self) -> bool:
        return all(p.exists() for p in self.parts)


def _open_stores(stores: Sequence[str | os.PathLike]) -> dict[str, CropStore]:
    if not stores:
        raise InputError("no crop stores given")
    opened: dict[str, CropStore] = {}
    by_hash: dict[str, str] = {}
    for s in stores:
        store = open_store(s)
        check_crops(store)
        if store.n == 0:
            raise InputError(f"{s}: store has no objects; nothing to classify")
        BlockVerifier(store)  # reads digests.json: a damaged one is named now, not by every task
        path = str(Path(s).resolve())
        if path in opened:
            raise InputError(f"{s}: store given twice")
        if store.content_hash in by_hash:
            raise InputError(f"{s}: same content as {by_hash[store.content_hash]} (a copy); its crops would be classified twice")
        opened[path] = store
        by_hash[store.content_hash] = path
    refuse_duplicate_ids({p: s.object_ids for p, s in opened.items()})
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
            tasks.append(_Task(store, path, start, stop, tuple(cand.part_paths(out, names, store.content_hash, start)), out))
    return tasks


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _open_run(out: Path, identity: dict[str, Any], stores: dict[str, CropStore]) -> dict[str, Any]:
    """Read or start the run record; refuse a directory that holds another run's table."""
    wanted = {p: {"hash": s.content_hash, "rows": s.n} for p, s in stores.items()}
    if cand.is_legacy(out):
        raise InputError(f"{out}: a candidate table of an earlier scanstream (version 1: sheet=* folders); "
                         "it can be read but not extended; use a new --out")
    run = cand.read_side(out, cand.RUN_FILE)
    if run is not None:
        old = run.get("identity") or {}
        if old != identity:
            diff = sorted(k for k in identity if old.get(k) != identity[k])
            was = ", ".join(f"{k}={old.get(k)} (now {identity[k]})" for k in diff)
            raise InputError(f"{out}: holds a candidate table made with other {was}; use a new --out")
        for p, s in wanted.items():
            old = run["stores"].get(p)
            if old is not None and old["hash"] != s["hash"]:
                raise InputError(f"{p}: store changed since {out} was started ({old['hash']} -> {s['hash']}); use a new --out")
        manifest = cand.read_manifest(out)
        if run.get("staging") and manifest is not None and manifest.get("run_id") == run["run_id"]:
            run.pop("staging")  # a merge that ended before its run file was updated
        _refuse_ids_in_table(out, {p: s for p, s in stores.items() if p not in run["stores"]})
        if not set(wanted) <= set(run["stores"]) and manifest is not None and not run.get("staging"):
            # extending a complete table: a new run whose parts wait in a staging directory; the
            # table stays complete (its manifest kept) until cand.merge_staged switches them in
            run["run_id"] = uuid.uuid4().hex[:12]
            run["staging"] = cand.staging_dir(out, run["run_id"]).name  # a sibling of out
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
    cand.write_side(out, cand.RUN_FILE, run)
    return run


def _refuse_ids_in_table(out: Path, new: dict[str, CropStore]) -> None:
    """Refuse stores added to a table whose other stores' rows already hold some of their object ids.

    Every row of the table is another store's: ``new`` are stores outside the run record, and a
    store enters the record before any of its parts is written; so only ``object_id`` is read.
    """
    if not new or not cand.part_files(out):
        return
    old = cand.read_candidates(out, columns=["object_id"], partial=True).column("object_id")
    refuse_duplicate_ids({out.name: old.to_pylist(), **{p: s.object_ids for p, s in new.items()}})


# -- the run ------------------------------------------------------------------------------
def classify(
    stores: list[Path],
    checkpoints: list[Path],
    out: Path,
    *,
    threshold: Path | Mapping[str, Any] | None = None,
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
    threshold : Path or dict, optional
        A threshold record for exactly these models, or the path of its JSON file (what
        ``scanstream threshold`` writes); without one ``selected`` is null.
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
        LocalCluster workers as processes (default) or threads of this process. Called from a
        script's top level without a ``__main__`` guard, the workers are threads all the same
        (:func:`scanstream.executor.unguarded_script`).

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
    t0 = time.perf_counter()
    _check_counts(batch_size=batch_size, workers=workers, crops_per_task=crops_per_task)
    job = _prepare_job(stores, checkpoints, out, threshold, batch_size=batch_size, verify=verify,
                       crops_per_task=crops_per_task)
    cluster = _Cluster(scheduler, workers, processes, device, precision, on_cluster)
    return _result(job.out, _score_missing(job, cluster, progress), t0)


def _result(out: Path, scored: _Scored, t0: float) -> ClassifyResult:
    """The call's result, once the table is finalized (when every range is in)."""
    rows, selected, complete = _table_counts(out, scored)
    seconds = time.perf_counter() - t0
    return ClassifyResult(
        out=out,
        rows=rows,
        selected=selected,
        failed=scored.failed,
        seconds=seconds,
        crops_per_s=scored.processed / seconds if seconds > 0 else 0.0,
        processed=scored.processed,
        tasks=len(scored.pending),
        complete=complete,
        dashboard=scored.dashboard,
        run_id=scored.run["run_id"],
        task_seconds=scored.task_seconds,
    )


def _check_counts(**counts: int | None) -> None:
    """Refuse a batch size, worker count or task size that is not a positive integer."""
    check_batch_size(counts.pop("batch_size"))
    for name, v in counts.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{name.replace('_', ' ')} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class _Job:
    """What one classify call scores, and what every one of its tasks shares."""

    out: Path
    stores: dict[str, CropStore]
    model_paths: tuple[str, ...]
    hashes: tuple[str, ...]
    record: dict[str, Any] | None
    batch_size: int
    verify: bool
    crops_per_task: int | None

    def identity(self, prec: str) -> dict[str, Any]:
        """What the run record pins: the models, the threshold record and the score precision."""
        return {"model_hashes": sorted(self.hashes), "threshold": _digest(self.record) if self.record else None,
                "score_precision": prec}

    def start(self, prec: str) -> tuple[dict[str, Any], list[_Task]]:
        """Open (or resume) the run in ``out``; the run record and the tasks still to do."""
        run = _open_run(self.out, self.identity(prec), self.stores)
        cand.remove_temporaries(self.out)
        if not run.get("staging"):
            return run, [t for t in plan_tasks(self.out, self.stores, self.crops_per_task) if not t.done]
        # adding stores to a complete table: those it lacks are scored into the staging directory
        merged = (cand.read_manifest(self.out) or {}).get("stores", {})
        old = {p: s for p, s in self.stores.items() if merged.get(p, {}).get("hash") == s.content_hash}
        new = {p: s for p, s in self.stores.items() if p not in old}
        tasks = plan_tasks(self.out, old, self.crops_per_task) + plan_tasks(self.out.parent / run["staging"], new, self.crops_per_task)
        return run, [t for t in tasks if not t.done]

    def metadata(self, run: dict[str, Any], prec: str, device: str) -> dict[str, Any]:
        """The ``scanstream`` schema metadata of every part."""
        return {
            "threshold": self.record,
            "model_hashes": sorted(self.hashes),
            "store_hashes": {p: s["hash"] for p, s in run["stores"].items()},
            "version": __version__,
            "run_id": run["run_id"],
            "time": run["started"],
            "score_precision": prec,
            "device": device,
        }

    def specs(self, pending: list[_Task], metadata: dict[str, Any], dev: Any, prec: str,
              threads: tuple[tuple[str, int], ...]) -> list[TaskSpec]:
        """One Dask task spec per pending range."""
        meta_json = json.dumps(metadata, sort_keys=True)
        return [
            TaskSpec(
                store=t.path,
                store_hash=t.store.content_hash,
                start=t.start,
                stop=t.stop,
                checkpoints=self.model_paths,
                model_hashes=self.hashes,
                out=str((t.out or self.out).resolve()),
                threshold=None if self.record is None else float(self.record["threshold"]),
                metadata=meta_json,
                device="cuda" if dev.type == "cuda" else str(dev),  # a GPU worker uses the GPU it sees
                precision=prec,
                batch_size=self.batch_size,
                verify=self.verify,
                host_threads=threads,
            )
            for t in pending
        ]


def _prepare_job(stores: list[Path], checkpoints: list[Path], out: Path, threshold: Path | Mapping[str, Any] | None, *,
                 batch_size: int, verify: bool, crops_per_task: int | None) -> _Job:
    """Check the models, the threshold record and the stores before any cluster starts."""
    if not checkpoints:
        raise InputError("no model checkpoints given")
    model_paths = tuple(str(Path(c).resolve()) for c in checkpoints)
    hashes = tuple(checkpoint_identity(c) for c in checkpoints)
    if len(set(hashes)) != len(hashes):
        raise InputError(f"the same checkpoint is given twice among {[str(c) for c in checkpoints]}")
    record = None
    if threshold is not None:
        if isinstance(threshold, Mapping):
            source, record = "threshold record", validate_threshold_record(dict(threshold), source="threshold record")
        else:
            source, record = str(threshold), load_threshold(threshold)
        check_models(record, hashes, source=source)
    opened = _open_stores(stores)
    check_features(checkpoints, list(opened.values()))
    return _Job(Path(out), opened, model_paths, hashes, record, batch_size, verify, crops_per_task)


@dataclass(frozen=True)
class _Cluster:
    """Where the tasks run: an existing scheduler or a LocalCluster, and the device asked for."""

    scheduler: str | None
    workers: int | None
    processes: bool
    device: str
    precision: str
    on_cluster: Callable[[str | None], None] | None


@dataclass(frozen=True)
class _Scored:
    """What :func:`_score_missing` did."""

    run: dict[str, Any]
    pending: list[_Task]
    metadata: dict[str, Any]
    processed: int = 0
    failed: list[str] = field(default_factory=list)
    task_seconds: list[float] = field(default_factory=list)
    dashboard: str | None = None


def _score_missing(job: _Job, cluster: _Cluster, progress: bool) -> _Scored:
    """Score the ranges the table lacks, on a cluster started (or joined) only when there is work.

    With an existing scheduler its workers' hardware decides the device and precision, so the
    run is opened once connected.
    """
    dev = prec = None
    if cluster.scheduler is None:
        dev = resolve_device(cluster.device)
        prec = resolve_precision(cluster.precision, dev)
        run, pending = job.start(prec)
        if not pending:
            return _Scored(run, pending, job.metadata(run, prec, dev.type))
    gpus = gpu_count() if dev is not None and dev.type == "cuda" else 0
    with dask_client(cluster.scheduler, workers=cluster.workers, gpus=gpus, processes=cluster.processes) as client:
        dashboard = client.dashboard_link
        if cluster.on_cluster is not None:
            cluster.on_cluster(dashboard)
        if prec is None:
            dev, prec = _resolve_on_workers(client, cluster.device, cluster.precision)
            run, pending = job.start(prec)
        if job.record is not None and job.record.get("score_precision") not in (None, prec):
            logger.warning(
                "threshold was calibrated with %s scores but this run scores in %s; borderline crops may move",
                job.record.get("score_precision"), prec,
            )
        metadata = job.metadata(run, prec, dev.type)
        processed, failed, task_seconds = _submit(client, pending, job, metadata, dev, prec, progress)
    return _Scored(run, pending, metadata, processed, failed, task_seconds, dashboard)


def _table_counts(out: Path, scored: _Scored) -> tuple[int, int, bool]:
    """Rows, selected rows and completeness of the table; finalize it when every range is in."""
    run = scored.run
    manifest = cand.read_manifest(out) if not scored.failed and not scored.processed else None
    if manifest is not None and manifest.get("run_id") == run["run_id"] and set(manifest["stores"]) == set(run["stores"]):
        return manifest["rows"], manifest["selected"], True  # nothing was left to do
    if not scored.failed:
        stores = {p: (s["hash"], s["rows"]) for p, s in run["stores"].items()}
        previous = cand.read_manifest(out)
        if run.get("staging") and previous is not None:
            manifest = cand.merge_staged(out, out.parent / run["staging"], stores=stores, metadata=scored.metadata,
                                         previous=previous)
            cand.write_side(out, cand.RUN_FILE, {k: v for k, v in run.items() if k != "staging"})
        else:
            manifest = cand.finalize(out, stores=stores, metadata=scored.metadata)
        return manifest["rows"], manifest["selected"], True
    t = cand.read_candidates(out, columns=["selected"], partial=True) if cand.part_files(out) else None
    if t is None:
        return 0, 0, False
    return t.num_rows, int(np.asarray(t.column("selected").fill_null(False)).sum()), False


def _resolve_on_workers(client: Any, device: str, precision: str) -> tuple[Any, str]:
    """Device and precision of an existing cluster's workers (they, not this client, run models)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    def probe() -> tuple[bool, bool]:
        try:
            import torch
        except ImportError:  # a worker of the light install: the CPU only
            return False, False
        cuda = torch.cuda.is_available()
        return cuda, bool(cuda and torch.cuda.is_bf16_supported())

    answers = list(client.run(probe).values())
    if not answers:
        raise InputError("the Dask cluster has no workers")
    dev = parse_device(device, cuda=all(a[0] for a in answers))
    native = all(a[1] for a in answers) if dev.type == "cuda" else all(client.run(cpu_has_native_bf16).values())
    return dev, resolve_precision(precision, dev, native=native)


def _task_resources(client: Any, dev: Any) -> dict[str, int] | None:
    """What each model task claims; GPU tasks are refused when no worker offers a GPU."""
    resources = task_resources(client, gpu=dev.type == "cuda")
    if resources:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        if not any(w.get("resources", {}).get("GPU") for w in workers):
            raise InputError(
                "no Dask worker offers the resource GPU, so no model task could start; start GPU workers "
                "with --resources GPU=1 (one per GPU, e.g. `dask cuda worker ADDRESS --resources GPU=1`)"
            )
    return resources


def _submit(
    client: Any, pending: list[_Task], job: _Job, metadata: dict, dev: Any, prec: str, progress: bool
) -> tuple[int, list[str], list[float]]:
    """Run one task per pending range; crops scored, failed tasks (sorted lines) and task times."""
    if not pending:
        return 0, [], []
    resources = _task_resources(client, dev)
    specs = job.specs(pending, metadata, dev, prec, host_threads(client))
    processed, failed, seconds = 0, [], []
    bar = as_progress(progress)(sum(t.stop - t.start for t in pending), "classify", "crop")
    try:
        for s, res, exc in run_tasks(client, run_task, specs, resources=resources):
            if exc is not None:
                msg = str(exc) if str(exc).startswith(s.store) else f"{s.store}: crops [{s.start}, {s.stop}): {exc!r}"
                logger.error("task failed: %s", msg)
                failed.append(msg)
                continue
            processed += res["rows"]
            seconds.append(res["seconds"])
            bar.update(res["rows"])
    finally:
        bar.close()
    failed.sort()
    return processed, failed, seconds
