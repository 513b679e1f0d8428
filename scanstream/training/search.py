"""The RandAugment (N, M) grid search: every (N, M, seed) trial is one training run on Dask.

The paper (docs/physics.md, "Training protocol", grid search) trains four seeds at each N in {2, 4, 6, 8} and M in
{6, 12, 18, 24, 30} and keeps the setting with the best mean VALID Average Precision; its
four models are then measured on TEST one by one (mean +- std AP). Trials are independent,
so each is a Dask task (:func:`scanstream.executor.run_tasks`) running
:func:`scanstream.training.loop.train` on ``dataclasses.replace(config.base, n=N, m=M, seed=s,
out_dir=...)`` with ``loader="local"`` (the data loader stays inside the task, no nested
cluster). With GPUs every task asks for the worker resource ``GPU=1``: a LocalCluster gets one
worker per GPU declaring it, and on an existing cluster (``scheduler``) the resource is asked for
when its workers advertise it. The options are :class:`scanstream.training.config.SearchConfig`.

What trains a trial and what scores TEST are arguments of :func:`run_search` (``trainer``,
``scorer``; module-level functions, so that Dask can send them to its workers), defaulting to
:func:`scanstream.training.loop.train` and :func:`scanstream.inference.scoring.score_store`.

Layout of the output directory::

    DIR/search_config.json           the resolved settings shared by every trial
    DIR/trials/n{N}_m{M}_s{seed}/    the training run's out_dir (model.safetensors, history...)
    DIR/trials/.../done.json         written last: the trial's result; a trial with it is
                                     never rerun (resume)
    DIR/results.csv, results.parquet one row per trial
    DIR/summary.csv                  mean +- std VALID AP per (N, M)
    DIR/heatmap.png                  figure 3
    DIR/test_scores.parquet          best setting's models on TEST (object_id, label, one
                                     logit column per model, ensemble = mean logit)
    DIR/report.md, metrics.json      the search report (:func:`scanstream.evaluation.report.render_search`)

The core (:func:`summarize`, :func:`best_setting`) is pure over the results table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scanstream import metrics as mt
from scanstream.atomic import atomic_path, write_json, write_parquet
from scanstream.config import field_defaults
from scanstream.devices import resolve_device
from scanstream.errors import ConfigError, InputError, PipelineError
from scanstream.evaluation.figures import plot_search_heatmap
from scanstream.evaluation.report import render_search, write_report
from scanstream.executor import dask_client, gpu_count, run_tasks, task_resources, worker_count
from scanstream.inference.scoring import score_store
from scanstream.network.checkpoint import checkpoint_hash
from scanstream.progress import as_progress
from scanstream.store import CropStore, open_store
from scanstream.training.config import SearchConfig, TrainConfig
from scanstream.training.dataload import threads_beside_loader
from scanstream.training.loop import train

logger = logging.getLogger(__name__)

DONE = "done.json"
#: TrainConfig fields a trial's identity does not depend on (where and how it runs).
_RUNTIME_FIELDS = ("out_dir", "device", "loader", "scheduler", "torch_threads", "workers", "ahead")
#: TrainConfig fields every trial sets itself.
_TRIAL_FIELDS = ("n", "m", "seed")


def trial_key(n: int, m: int, seed: int) -> str:
    return f"n{n}_m{m}_s{seed}"


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists)."""
    return json.loads(json.dumps(obj, default=str))


def _defaults() -> dict[str, Any]:
    """TrainConfig's defaults, read into records written before an option existed."""
    return _plain(field_defaults(TrainConfig))


def _shared(base: TrainConfig) -> dict[str, Any]:
    """The trials' shared settings as search_config.json records them (a resumed search must match)."""
    return {k: v for k, v in _plain(asdict(base)).items() if k not in _RUNTIME_FIELDS + _TRIAL_FIELDS}


def _identity(config: TrainConfig, data: dict) -> dict:
    """What makes a trial the same trial: its training options (less where and how it runs) and the data."""
    cfg = {k: v for k, v in _plain(asdict(config)).items()
           if k not in _RUNTIME_FIELDS and k not in ("train_store", "valid_store")}
    return {"train_config": cfg, "data": data}


def _same_identity(done: dict | None, identity: dict) -> bool:
    """Whether a finished trial's recorded identity is ``identity``.

    An option added after the trial ran is absent from its record; it ran with that option's
    default, so the record is read with the current defaults filled in.
    """
    if done is None or "identity" not in done:
        return False
    old = done["identity"]
    defaults = {k: v for k, v in _defaults().items() if k in identity["train_config"]}
    return {**old, "train_config": {**defaults, **old.get("train_config", {})}} == identity


def read_done(trial_dir: Path) -> dict | None:
    """The result of a finished trial, or None (unfinished or unreadable marker)."""
    f = Path(trial_dir) / DONE
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        logger.warning("%s: unreadable done marker; the trial will run again", f)
        return None


# -- work done on a Dask worker ---------------------------------------------------------------
def trial_threads(cores: int, device: str = "auto", workers: int | None = None) -> int:
    """torch threads of a trial given ``cores``: on CPU, its loader threads keep a core each.

    A trial trains with the local-thread loader (one thread unless ``workers``); torch threads on
    every core as well would oversubscribe them, as :func:`scanstream.training.run.resolve_runtime`
    avoids for single runs.
    """
    return threads_beside_loader(resolve_device(device), int(workers or 1), cores)


def run_trial(spec: dict, trainer: Callable[..., Any] = train) -> dict:
    """One (N, M, seed) training run; returns (and writes as ``done.json``) its result.

    ``spec``: {"key", "n", "m", "seed", "config" (the trial's TrainConfig, out_dir its
    directory), "data" (store hashes), "threads" (the trial's cores)}. A trial whose done.json
    exists with the same identity returns it without training. ``trainer(config,
    progress=False)`` trains (:func:`scanstream.training.loop.train`).
    """
    import torch

    config: TrainConfig = spec["config"]
    trial_dir = Path(config.out_dir)
    identity = _identity(config, spec["data"])
    done = read_done(trial_dir)
    if _same_identity(done, identity):
        return {**done, "resumed": True}
    trial_dir.mkdir(parents=True, exist_ok=True)
    threads = config.torch_threads
    if spec.get("threads") and not threads:
        threads = trial_threads(int(spec["threads"]), config.device, config.workers)
    config = replace(config, workers=config.workers or 1, torch_threads=threads)  # one loader thread per trial
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    result = trainer(config, progress=False)
    record = {
        "key": spec["key"],
        "n": spec["n"],
        "m": spec["m"],
        "seed": spec["seed"],
        "val_ap": float(result.metrics["val_ap"]),
        "val_loss": float(result.metrics.get("val_loss", math.nan)),
        "best_epoch": int(result.best_epoch),
        "epochs_run": int(result.metrics.get("epochs_run", len(result.history))),
        "checkpoint": os.path.relpath(result.checkpoint, trial_dir),
        "checkpoint_hash": checkpoint_hash(result.checkpoint),
        "seconds": round(time.perf_counter() - t0, 2),
        "identity": identity,
    }
    write_json(trial_dir / DONE, record)
    return {**record, "resumed": False}


def score_checkpoint(checkpoint: str, *, store_path: str, device: str, batch_size: int, threads: int | None,
                     scorer: Callable[..., Any] = score_store) -> np.ndarray:
    """Logits (float32, (n,)) of one checkpoint over a store (a Dask task); ``scorer`` is score_store's stand-in."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return np.asarray(scorer(open_store(store_path), [Path(checkpoint)], device=device, batch_size=batch_size), np.float32)


# -- pure core ----------------------------------------------------------------------------------
RESULT_COLUMNS = ("key", "n", "m", "seed", "val_ap", "val_loss", "best_epoch", "epochs_run", "checkpoint",
                  "checkpoint_hash", "seconds")


def results_table(records: Sequence[dict]) -> pa.Table:
    """One row per trial (columns :data:`RESULT_COLUMNS`), sorted by N, M, seed."""
    rows = sorted(records, key=lambda r: (r["n"], r["m"], r["seed"]))
    return pa.table({c: [r.get(c) for r in rows] for c in RESULT_COLUMNS})


def summarize(results: pa.Table) -> list[dict]:
    """Per (N, M): trials, mean and sample std (ddof=1) of VALID AP, mean best epoch."""
    groups: dict[tuple[int, int], list[int]] = {}
    ns, ms = results.column("n").to_pylist(), results.column("m").to_pylist()
    for i, key in enumerate(zip(ns, ms)):
        groups.setdefault(key, []).append(i)
    ap = np.asarray(results.column("val_ap").to_pylist(), np.float64)
    ep = np.asarray(results.column("best_epoch").to_pylist(), np.float64)
    out = []
    for (n, m), idx in sorted(groups.items()):
        v = ap[idx]
        out.append({
            "n": n, "m": m, "trials": len(idx),
            "val_ap_mean": float(v.mean()),
            "val_ap_std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "best_epoch_mean": float(ep[idx].mean()),
        })
    return out


def best_setting(summary: Sequence[dict]) -> tuple[int, int]:
    """(N, M) with the highest mean VALID AP (ties: the first in grid order)."""
    if not summary:
        raise InputError("no finished trials to choose a setting from")
    best = max(summary, key=lambda r: (r["val_ap_mean"], -r["n"], -r["m"]))
    return int(best["n"]), int(best["m"])


def heatmap_arrays(summary: Sequence[dict], ns: Sequence[int], ms: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """mean and std VALID AP as (len(ns), len(ms)) arrays, NaN where a setting has no trial."""
    mean = np.full((len(ns), len(ms)), np.nan)
    std = np.full_like(mean, np.nan)
    for r in summary:
        if r["n"] in ns and r["m"] in ms:
            i, j = list(ns).index(r["n"]), list(ms).index(r["m"])
            mean[i, j], std[i, j] = r["val_ap_mean"], r["val_ap_std"]
    return mean, std


# -- the edge: cluster, files -------------------------------------------------------------------
@dataclass(frozen=True)
class SearchResult:
    """What a search produced.

    Attributes
    ----------
    out : Path
    results : pyarrow.Table
        One row per finished trial of the grid.
    summary : list of dict
        Per (N, M) mean +- std VALID AP.
    best : (int, int)
        The chosen (N, M).
    best_checkpoints : list of Path
    trained, resumed : list of str
        Trial keys trained by this call / found finished and not rerun.
    test : dict or None
        TEST AP per model, mean +- std, ensemble AP (when a test store was given).
    heatmap : Path
    report : Path
    """

    out: Path
    results: pa.Table
    summary: list[dict]
    best: tuple[int, int]
    best_checkpoints: list[Path]
    trained: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    test: dict | None = None
    heatmap: Path | None = None
    report: Path | None = None


def _check_inputs(config: SearchConfig) -> dict[str, str | None]:
    hashes = {}
    for what, p in (("train", config.base.train_store), ("valid", config.base.valid_store), ("test", config.test_store)):
        if p is None:
            continue
        s = open_store(p)
        labels = s.labels
        if not (labels == 1).any() or not (labels == 0).any():
            raise InputError(f"{s.path}: the {what} store needs labelled alpha decays (1) and others (0)")
        hashes[what] = s.content_hash
    return hashes


def _check_config_file(out: Path, config: SearchConfig) -> None:
    """Refuse to resume a search whose shared settings differ (its trials would not compare)."""
    f = out / "search_config.json"
    shared = _shared(config.base)
    if f.exists():
        old = {**_defaults(), **json.loads(f.read_text()).get("shared", {})}  # options added since
        diff = {k: (old.get(k), v) for k, v in shared.items() if old.get(k) != v}
        if diff:
            raise ConfigError(
                f"{out}: an earlier search there used other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                "use a new --out or the same settings"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(f, _plain({"shared": shared, "config": asdict(config)}))


def _plan_trials(config: SearchConfig, out: Path, data: dict) -> tuple[list[dict], list[dict]]:
    """(specs of the trials to run, records of the finished ones); a finished trial of other settings is refused."""
    specs, resumed = [], []
    for n, m, s in config.trials():
        key = trial_key(n, m, s)
        tdir = out / "trials" / key
        trial = replace(config.base, n=n, m=m, seed=s, out_dir=str(tdir.resolve()), loader="local", scheduler=None,
                        torch_threads=config.threads or config.base.torch_threads)
        done = read_done(tdir)
        if done is not None:
            if not _same_identity(done, _identity(trial, data)):
                raise ConfigError(
                    f"{tdir}: finished with other settings or data than this search (see its {DONE}); use a new --out"
                )
            resumed.append(done)
            continue
        specs.append({"key": key, "n": n, "m": m, "seed": s, "config": trial, "data": data, "threads": config.threads})
    return specs, resumed


def _run_trials(client: Any, specs: list[dict], config: SearchConfig, *, resources: dict | None,
                trainer: Callable[..., Any], progress: bool) -> tuple[list[dict], list[str]]:
    """Every spec as a Dask task; (records of the trials that finished, one line per failed trial)."""
    share = max(1, (os.cpu_count() or 1) // worker_count(client))  # a trial's cores on this machine
    for spec in specs:
        spec["threads"] = config.threads or share
    records, failed = [], []
    bar = as_progress(progress)(len(specs), "search trials", "trial")
    tasks = run_tasks(client, partial(run_trial, trainer=trainer), specs, resources=resources,
                      keys=[f"trial-{spec['key']}" for spec in specs])
    for spec, rec, exc in tasks:
        if exc is not None:  # any trial failure is reported, the others are kept
            logger.error("trial %s failed: %s", spec["key"], exc)
            failed.append(f"{spec['key']}: {type(exc).__name__}: {exc}")
        else:
            records.append(rec)
            logger.info("trial %s: VALID AP %.4f (best epoch %s)", spec["key"], rec["val_ap"], rec["best_epoch"])
        bar.update(1)
    bar.close()
    return records, failed


def run_search(
    config: SearchConfig,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    processes: bool = True,
    progress: bool = True,
    trainer: Callable[..., Any] = train,
    scorer: Callable[..., Any] = score_store,
) -> SearchResult:
    """Run (or resume) the grid, gather the results, choose the best setting, measure it on TEST.

    Parameters
    ----------
    config : SearchConfig
    scheduler : str, optional
        Address of an existing Dask scheduler; default a LocalCluster.
    workers : int, optional
        LocalCluster workers (default: one per GPU, else 1).
    client : distributed.Client, optional
        Use this client instead (tests, notebooks); it is not closed.
    processes : bool
        LocalCluster workers as processes (default) or threads.
    trainer, scorer : callable
        ``trainer(TrainConfig, progress=False) -> TrainResult`` trains a trial and
        ``scorer(store, checkpoints, device=..., batch_size=...) -> logits`` scores TEST; they run on
        the workers, so must be picklable (module-level functions).

    Raises
    ------
    PipelineError
        Some trials failed (the others are kept; a rerun resumes).
    """
    out = Path(config.out_dir)
    hashes = _check_inputs(config)
    _check_config_file(out, config)
    specs, resumed = _plan_trials(config, out, {"train": hashes["train"], "valid": hashes["valid"]})
    logger.info("search %s: %d trials to run, %d already finished", out, len(specs), len(resumed))
    records, failed, test = list(resumed), [], None
    with contextlib.ExitStack() as stack:
        need_cluster = bool(specs) or config.test_store is not None
        if need_cluster and client is None:
            client = stack.enter_context(dask_client(scheduler, workers=workers, gpus=0 if scheduler else gpu_count(),
                                                     processes=processes))
        resources = task_resources(client) if need_cluster else None
        if specs:
            finished, failed = _run_trials(client, specs, config, resources=resources, trainer=trainer,
                                           progress=progress)
            records += finished
        results = results_table(records)
        _write_results(out, results)
        summary = summarize(results) if records else []
        if failed:
            raise PipelineError(f"{len(failed)} of {len(config.trials())} search trials failed (rerun to retry them): "
                                + "; ".join(failed[:3]))
        best = best_setting(summary)
        best_rows = [r for r in sorted(records, key=lambda r: r["seed"]) if (r["n"], r["m"]) == best]
        ckpts = [out / "trials" / r["key"] / r["checkpoint"] for r in best_rows]
        if config.test_store is not None:
            test = _score_test(client, resources, config, out, best_rows, ckpts, scorer=scorer, progress=progress)
    heat, report = _write_report(config, out, records, summary, best, test)
    trained = sorted(r["key"] for r in records if r.get("resumed") is False)
    return SearchResult(out, results, summary, best, ckpts, trained, sorted(r["key"] for r in resumed), test, heat,
                        report)


def _write_report(config: SearchConfig, out: Path, records: list[dict], summary: list[dict], best: tuple[int, int],
                  test: dict | None) -> tuple[Path, Path]:
    """heatmap.png (figure 3), report.md and metrics.json."""
    mean, std = heatmap_arrays(summary, config.ns, config.ms)
    heat = plot_search_heatmap(config.ns, config.ms, mean, std, out / "heatmap.png", best=best,
                               title=f"VALID AP, mean ± std over {config.seeds} seeds")
    report_metrics = {
        "best": {"n": best[0], "m": best[1]},
        "summary": summary,
        "trials": [{k: r.get(k) for k in RESULT_COLUMNS} for r in records],
        "test": test,
        "config": asdict(config),
        "figures": {"heatmap": heat.name},
    }
    report, _ = write_report(out, render_search(report_metrics), report_metrics)
    return heat, report


def _write_results(out: Path, results: pa.Table) -> None:
    """results.parquet, results.csv and summary.csv."""
    write_parquet(out / "results.parquet", results)
    with atomic_path(out / "results.csv") as tmp:
        pacsv.write_csv(results, tmp)
    summary = summarize(results) if results.num_rows else []
    with atomic_path(out / "summary.csv") as tmp:
        pacsv.write_csv(pa.Table.from_pylist(summary) if summary else pa.table({"n": pa.array([], pa.int64())}), tmp)


def _test_scores(client, resources, config: SearchConfig, store: CropStore, out: Path, rows: list[dict],
                 ckpts: list[Path], *, scorer: Callable[..., Any], progress: bool) -> pa.Table:
    """test_scores.parquet: each model's logits and the ensemble's (mean logit) on TEST; reused when its models match."""
    keys = [r["key"] for r in rows]
    cache = out / "test_scores.parquet"
    ident = {
        "store_hash": store.content_hash,
        "model_hashes": {**{r["key"]: [r["checkpoint_hash"]] for r in rows}, "ensemble": [r["checkpoint_hash"] for r in rows]},
    }
    if cache.exists():
        t = pq.read_table(cache)
        if json.loads((t.schema.metadata or {}).get(b"scanstream", b"{}")) == ident:
            logger.info("%s: TEST scores of these models already there; not scoring again", cache)
            return t
    score = partial(score_checkpoint, store_path=str(store.path), device=config.base.device,
                    batch_size=config.score_batch_size, threads=config.threads, scorer=scorer)
    key_of = {str(c): k for k, c in zip(keys, ckpts, strict=True)}
    bar = as_progress(progress)(len(ckpts), "scoring TEST", "model")
    scores = {}
    for ckpt, logits, exc in run_tasks(client, score, list(key_of), resources=resources,
                                       keys=[f"score-{k}" for k in keys]):
        if exc is not None:
            raise exc
        scores[key_of[ckpt]] = np.asarray(logits, np.float32)
        bar.update(1)
    bar.close()
    # the ensemble's score is the mean logit, what score_store computes for several checkpoints
    ens = np.mean(np.stack([scores[k].astype(np.float64) for k in keys]), axis=0).astype(np.float32)
    cols = {"object_id": store.table.column("object_id"), "label": store.table.column("label"),
            **{k: pa.array(scores[k], pa.float32()) for k in keys}, "ensemble": pa.array(ens, pa.float32())}
    table = pa.table(cols).replace_schema_metadata({b"scanstream": json.dumps(ident)})
    write_parquet(cache, table)
    return table


def _score_test(client, resources, config: SearchConfig, out: Path, rows: list[dict], ckpts: list[Path], *,
                scorer: Callable[..., Any], progress: bool) -> dict:
    """TEST AP of each best-setting model and of their ensemble (mean logit); cached in test_scores.parquet."""
    store = open_store(config.test_store)
    table = _test_scores(client, resources, config, store, out, rows, ckpts, scorer=scorer, progress=progress)
    keys = [r["key"] for r in rows]
    labels = store.labels
    known = labels >= 0
    scores = {k: table.column(k).to_numpy() for k in [*keys, "ensemble"]}
    y = labels[known]
    per_model = {k: mt.average_precision(y, scores[k][known]) for k in keys}
    return {
        "store": str(store.path),
        "objects": mt.class_counts(y),
        "ap_per_model": per_model,
        "ap": mt.mean_std(list(per_model.values())).to_dict(),
        "ap_ensemble": mt.average_precision(y, np.asarray(scores["ensemble"])[known]),
        "scores": "test_scores.parquet",
    }
