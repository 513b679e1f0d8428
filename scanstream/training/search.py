"""The RandAugment (N, M) grid search: every (N, M, seed) trial is one training run on Dask.

The paper (PHYSICS.md, "Grid search") trains four seeds at each N in {2, 4, 6, 8} and M in
{6, 12, 18, 24, 30} and keeps the setting with the best mean VALID Average Precision; its
four models are then measured on TEST one by one (mean +- std AP). Trials are independent,
so each is a Dask task running :func:`scanstream.training.loop.train` with ``loader="local"`` (the
data loader stays inside the task, no nested cluster). With GPUs every task asks for the
worker resource ``GPU=1``: a LocalCluster gets one worker per GPU declaring it, and on an
existing cluster (``scheduler``) the resource is asked for when its workers advertise it.

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
    DIR/report.md, metrics.json      the search report

The core (:func:`summarize`, :func:`best_setting`) is pure over the results table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scanstream.errors import ConfigError, InputError, PipelineError
from scanstream.executor import dask_client, gpu_count, task_resources, worker_count
from scanstream.progress import as_progress

logger = logging.getLogger(__name__)

PAPER_NS = (2, 4, 6, 8)
PAPER_MS = (6, 12, 18, 24, 30)
PAPER_SEEDS = 4
#: A grid a CPU finishes in minutes with a light backbone (2 x 2 settings, 2 seeds).
CPU_NS = (2, 6)
CPU_MS = (12, 24)
CPU_SEEDS = 2
MAX_MAGNITUDE = 30
DONE = "done.json"
#: TrainConfig fields a trial's identity does not depend on (where and how it runs).
_RUNTIME_FIELDS = ("out_dir", "device", "loader", "scheduler", "torch_threads")


def default_grid(gpu: bool) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(Ns, Ms, seeds): the paper's grid with GPUs, a small one on CPU."""
    return (PAPER_NS, PAPER_MS, PAPER_SEEDS) if gpu else (CPU_NS, CPU_MS, CPU_SEEDS)


def parse_int_list(text: str | Iterable[int], what: str) -> tuple[int, ...]:
    """``"2,4,6"`` (or a sequence of ints) -> (2, 4, 6); rejects empty lists and duplicates."""
    if isinstance(text, str):
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    else:
        values = tuple(int(v) for v in text)
    if not values:
        raise ConfigError(f"{what} is empty")
    if len(set(values)) != len(values):
        raise ConfigError(f"{what} has duplicates: {values}")
    return values


@dataclass(frozen=True)
class SearchConfig:
    """A grid search.

    Attributes
    ----------
    train_store, valid_store : str
        Labelled crop stores; VALID AP picks the setting.
    out_dir : str
    ns, ms : tuple of int
        RandAugment operation counts N (>= 0) and magnitudes M (0..30).
    seeds : int
        Training runs per setting (seeds 0 .. seeds-1).
    test_store : str or None
        Labelled store on which the best setting's models are measured.
    backbone, input_size, pretrained, max_epochs, batch_size, lr, lr_schedule, warmup_epochs, epoch_size,
    darkness_jitter, pos_weight, unfreeze :
        Passed to every trial's :class:`scanstream.training.loop.TrainConfig`.
    device : str
        Device of each trial ("auto": a GPU when the worker has one).
    threads : int or None
        torch threads per trial (default: the trial's share of the machine's cores, less one for
        its loader thread on CPU).
    score_batch_size : int
        Batch size when scoring TEST.
    """

    train_store: str
    valid_store: str
    out_dir: str
    ns: tuple[int, ...] = PAPER_NS
    ms: tuple[int, ...] = PAPER_MS
    seeds: int = PAPER_SEEDS
    test_store: str | None = None
    backbone: str = "resnet50"
    input_size: int = 224
    pretrained: str = "none"
    max_epochs: int = 100
    batch_size: int = 96
    lr: float = 3e-4
    lr_schedule: str = "constant"
    warmup_epochs: int = 5
    epoch_size: int | None = None
    darkness_jitter: float = 0.0
    pos_weight: bool = False
    unfreeze: bool = False
    device: str = "auto"
    threads: int | None = None
    score_batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "ns", parse_int_list(self.ns, "N values"))
        object.__setattr__(self, "ms", parse_int_list(self.ms, "M values"))
        for n in self.ns:
            if n < 0:
                raise ConfigError(f"N (RandAugment operations) must be >= 0, got {n}")
        for m in self.ms:
            if not 0 <= m <= MAX_MAGNITUDE:
                raise ConfigError(f"M (RandAugment magnitude) must be in 0..{MAX_MAGNITUDE}, got {m}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        from scanstream.training.augment import parse_darkness
        from scanstream.training.loop import parse_lr_schedule

        parse_lr_schedule(self.lr_schedule)
        try:
            parse_darkness(self.darkness_jitter)
        except InputError as exc:
            raise ConfigError(str(exc)) from None
        if self.max_epochs < 1:
            raise ConfigError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")

    def trials(self) -> list[tuple[int, int, int]]:
        """(N, M, seed) of every trial, in grid order."""
        return [(n, m, s) for n in self.ns for m in self.ms for s in range(self.seeds)]

    def train_options(self) -> dict[str, Any]:
        """TrainConfig fields shared by every trial."""
        return {
            "train_store": str(self.train_store),
            "valid_store": str(self.valid_store),
            "backbone": self.backbone,
            "input_size": self.input_size,
            "pretrained": self.pretrained,
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "lr_schedule": self.lr_schedule,
            "warmup_epochs": self.warmup_epochs,
            "epoch_size": self.epoch_size,
            "darkness_jitter": self.darkness_jitter,
            "pos_weight": self.pos_weight,
            "unfreeze": self.unfreeze,
            "device": self.device,
            "loader": "local",
        }


def _shared_defaults() -> dict[str, Any]:
    """Defaults of the search settings, read into records written before a setting existed."""
    from scanstream.training.loop import field_defaults

    return field_defaults(SearchConfig)


def trial_key(n: int, m: int, seed: int) -> str:
    return f"n{n}_m{m}_s{seed}"


def _identity(train_config: dict, data: dict) -> dict:
    cfg = {k: v for k, v in train_config.items() if k not in _RUNTIME_FIELDS}
    cfg.pop("train_store", None)
    cfg.pop("valid_store", None)
    return {"train_config": cfg, "data": data}


def _same_identity(done: dict | None, train_config: dict, data: dict) -> bool:
    """Whether a finished trial's recorded identity is this trial's.

    A field added to the search settings after the trial ran is absent from its record; it
    ran with that field's default, so the record is read with the current defaults filled in.
    """
    if done is None or "identity" not in done:
        return False
    old, new = done["identity"], _identity(train_config, data)
    defaults = {k: v for k, v in _shared_defaults().items() if k in new["train_config"]}
    return {**old, "train_config": {**defaults, **old.get("train_config", {})}} == new


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


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
def trial_threads(cores: int, train_config: dict[str, Any]) -> int:
    """torch threads of a trial given ``cores``: on CPU, one core is left to its loader thread.

    A trial trains with the local-thread loader; torch threads on every core as well would
    oversubscribe them, as :func:`scanstream.training.loop.resolve_runtime` avoids for single runs.
    """
    from scanstream.devices import resolve_device
    from scanstream.training.dataload import threads_beside_loader

    device = resolve_device(train_config.get("device", "auto"))
    return threads_beside_loader(device, int(train_config.get("workers") or 1), cores)


def run_trial(spec: dict) -> dict:
    """One (N, M, seed) training run; returns (and writes as ``done.json``) its result.

    ``spec``: {"key", "n", "m", "seed", "dir", "train_config" (TrainConfig fields),
    "data" (store hashes), "threads"}. A trial whose done.json exists with the same identity
    returns it without training.
    """
    import torch

    from scanstream.training.checkpoint import checkpoint_hash
    from scanstream.training.loop import TrainConfig, train

    trial_dir = Path(spec["dir"])
    done = read_done(trial_dir)
    if _same_identity(done, spec["train_config"], spec["data"]):
        return {**done, "resumed": True}
    trial_dir.mkdir(parents=True, exist_ok=True)
    tc = dict(spec["train_config"])
    tc["workers"] = tc.get("workers") or 1  # one loader thread per trial
    if spec.get("threads") and not tc.get("torch_threads"):
        tc["torch_threads"] = trial_threads(int(spec["threads"]), tc)
    if tc.get("torch_threads"):
        torch.set_num_threads(int(tc["torch_threads"]))
    t0 = time.perf_counter()
    result = train(TrainConfig(**tc, out_dir=str(trial_dir)), progress=False)
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
        "identity": _identity(spec["train_config"], spec["data"]),
    }
    _write_json(record, trial_dir / DONE)
    return {**record, "resumed": False}


def score_checkpoint(store_path: str, checkpoint: str, device: str, batch_size: int, threads: int | None) -> np.ndarray:
    """Logits (float32, (n,)) of one checkpoint over a store (a Dask task)."""
    import torch

    from scanstream.inference.classify import score_store
    from scanstream.store import open_store

    if threads:
        torch.set_num_threads(int(threads))
    return np.asarray(score_store(open_store(store_path), [Path(checkpoint)], device=device, batch_size=batch_size), np.float32)


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
    from scanstream.store import open_store

    hashes = {}
    for what, p in (("train", config.train_store), ("valid", config.valid_store), ("test", config.test_store)):
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
    shared = {k: v for k, v in asdict(config).items() if k not in ("out_dir", "ns", "ms", "seeds", "test_store", "device",
                                                                    "threads", "score_batch_size")}
    if f.exists():
        old = {**_shared_defaults(), **json.loads(f.read_text()).get("shared", {})}  # fields added since
        diff = {k: (old.get(k), v) for k, v in shared.items() if old.get(k) != v}
        if diff:
            raise ConfigError(
                f"{out}: an earlier search there used other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                "use a new --out or the same settings"
            )
    out.mkdir(parents=True, exist_ok=True)
    _write_json({"shared": shared, "config": asdict(config)}, f)


def run_search(
    config: SearchConfig,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    processes: bool = True,
    progress: bool = True,
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

    Raises
    ------
    PipelineError
        Some trials failed (the others are kept; a rerun resumes).
    """
    from distributed import as_completed

    out = Path(config.out_dir)
    hashes = _check_inputs(config)
    _check_config_file(out, config)
    data = {"train": hashes["train"], "valid": hashes["valid"]}
    base = config.train_options()
    specs, resumed_records = [], []
    for n, m, s in config.trials():
        key = trial_key(n, m, s)
        tdir = out / "trials" / key
        tc = {**base, "n": n, "m": m, "seed": s}
        done = read_done(tdir)
        if done is not None:
            if not _same_identity(done, tc, data):
                raise ConfigError(
                    f"{tdir}: finished with other settings or data than this search (see its {DONE}); use a new --out"
                )
            resumed_records.append(done)
            continue
        specs.append({"key": key, "n": n, "m": m, "seed": s, "dir": str(tdir.resolve()), "train_config": tc,
                      "data": data, "threads": config.threads})
    logger.info("search %s: %d trials to run, %d already finished", out, len(specs), len(resumed_records))

    records = list(resumed_records)
    trained: list[str] = []
    failed: list[str] = []
    own_client = client is None
    need_cluster = bool(specs) or config.test_store is not None
    resources = None
    stack = contextlib.ExitStack()
    if need_cluster and own_client:
        client = stack.enter_context(dask_client(scheduler, workers=workers, gpus=0 if scheduler else gpu_count(),
                                                 processes=processes))
    if need_cluster:
        n_workers, resources = worker_count(client), task_resources(client)
    try:
        if specs:
            share = max(1, (os.cpu_count() or 1) // n_workers)  # a trial's cores on this machine
            futures = {}
            for spec in specs:
                spec["threads"] = config.threads or share
                spec["train_config"]["torch_threads"] = config.threads
                fut = client.submit(run_trial, spec, key=f"trial-{spec['key']}-{os.urandom(4).hex()}",
                                    resources=resources, pure=False)
                futures[fut] = spec["key"]
            bar = as_progress(progress)(len(specs), "search trials", "trial")
            for fut in as_completed(futures):
                key = futures[fut]
                try:
                    rec = fut.result()
                except Exception as exc:  # noqa: BLE001 - any trial failure is reported, the others are kept
                    logger.error("trial %s failed: %s", key, exc)
                    failed.append(f"{key}: {type(exc).__name__}: {exc}")
                else:
                    records.append(rec)
                    if not rec.get("resumed"):
                        trained.append(key)
                    logger.info("trial %s: VALID AP %.4f (best epoch %s)", key, rec["val_ap"], rec["best_epoch"])
                bar.update(1)
            bar.close()
        results = results_table(records)
        _write_results(out, results)
        summary = summarize(results) if records else []
        if failed:
            raise PipelineError(f"{len(failed)} of {len(config.trials())} search trials failed (rerun to retry them): "
                                + "; ".join(failed[:3]))
        best = best_setting(summary)
        best_rows = [r for r in sorted(records, key=lambda r: r["seed"]) if (r["n"], r["m"]) == best]
        ckpts = [out / "trials" / r["key"] / r["checkpoint"] for r in best_rows]
        test = None
        if config.test_store is not None:
            test = _score_test(client, resources, config, out, best_rows, ckpts, progress=progress)
    finally:
        stack.close()

    from scanstream.evaluation import figures as fg
    from scanstream.evaluation.report import write_report

    mean, std = heatmap_arrays(summary, config.ns, config.ms)
    heat = fg.plot_search_heatmap(config.ns, config.ms, mean, std, out / "heatmap.png", best=best,
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
    return SearchResult(out, results, summary, best, ckpts, sorted(trained),
                        sorted(r["key"] for r in resumed_records), test, heat, report)


def _write_results(out: Path, results: pa.Table) -> None:
    for name, writer in (("results.parquet", lambda t, p: pq.write_table(t, p)), ("results.csv", pacsv.write_csv)):
        path = out / name
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        writer(results, tmp)
        os.replace(tmp, path)
    summary = summarize(results) if results.num_rows else []
    tmp = out / f".summary.csv.tmp-{os.getpid()}"
    pacsv.write_csv(pa.Table.from_pylist(summary) if summary else pa.table({"n": pa.array([], pa.int64())}), tmp)
    os.replace(tmp, out / "summary.csv")


def _score_test(client, resources, config: SearchConfig, out: Path, rows: list[dict], ckpts: list[Path], *, progress: bool) -> dict:
    """TEST AP of each best-setting model and of their ensemble (mean logit); cached in test_scores.parquet."""
    from scanstream.evaluation import metrics as mt
    from scanstream.store import open_store

    store = open_store(config.test_store)
    labels = store.labels
    known = labels >= 0
    keys = [r["key"] for r in rows]
    cache = out / "test_scores.parquet"
    ident = {
        "store_hash": store.content_hash,
        "model_hashes": {**{r["key"]: [r["checkpoint_hash"]] for r in rows}, "ensemble": [r["checkpoint_hash"] for r in rows]},
    }
    table = None
    if cache.exists():
        t = pq.read_table(cache)
        if json.loads((t.schema.metadata or {}).get(b"scanstream", b"{}")) == ident:
            table = t
            logger.info("%s: TEST scores of these models already there; not scoring again", cache)
    if table is None:
        futs = [client.submit(score_checkpoint, str(store.path), str(c), config.device, config.score_batch_size,
                              config.threads, resources=resources, pure=False) for c in ckpts]
        bar = as_progress(progress)(len(futs), "scoring TEST", "model")
        scores = {}
        for k, f in zip(keys, futs, strict=True):
            scores[k] = np.asarray(f.result(), np.float32)
            bar.update(1)
        bar.close()
        # the ensemble's score is the mean logit, what score_store computes for several checkpoints
        ens = np.mean(np.stack([scores[k].astype(np.float64) for k in keys]), axis=0).astype(np.float32)
        cols = {"object_id": store.table.column("object_id"), "label": store.table.column("label"),
                **{k: pa.array(scores[k], pa.float32()) for k in keys}, "ensemble": pa.array(ens, pa.float32())}
        table = pa.table(cols).replace_schema_metadata({b"scanstream": json.dumps(ident)})
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, cache)
    scores = {k: table.column(k).to_numpy() for k in [*keys, "ensemble"]}
    ens = scores["ensemble"]
    y = labels[known]
    per_model = {k: mt.average_precision(y, scores[k][known]) for k in keys}
    return {
        "store": str(store.path),
        "objects": mt.class_counts(y),
        "ap_per_model": per_model,
        "ap": mt.mean_std(list(per_model.values())).to_dict(),
        "ap_ensemble": mt.average_precision(y, np.asarray(ens)[known]),
        "scores": cache.name,
    }


def render_search(m: dict) -> str:
    """report.md of a search."""
    from scanstream.evaluation.report import md_table, pm

    cfg = m["config"]
    lines = ["# RandAugment grid search\n",
             (f"Grid N {cfg['ns']} x M {cfg['ms']}, {cfg['seeds']} seeds; backbone {cfg['backbone']} at "
             f"{cfg['input_size']} px, at most {cfg['max_epochs']} epochs. VALID AP, mean ± sample std over seeds:\n"),
             f"![VALID AP heatmap]({m['figures']['heatmap']})\n"]
    rows = [[r["n"], r["m"], r["trials"], pm({"value": r["val_ap_mean"], "error": r["val_ap_std"]}),
             f"{r['best_epoch_mean']:.1f}"] for r in m["summary"]]
    lines.append(md_table(["N", "M", "trials", "VALID AP", "mean best epoch"], rows))
    lines.append(f"Best setting: **N = {m['best']['n']}, M = {m['best']['m']}** (highest mean VALID AP).\n")
    if m.get("test"):
        t = m["test"]
        lines.append(f"## Best setting on TEST ({t['objects']['alpha']} alpha decays, {t['objects']['other']} others)\n")
        lines.append(md_table(["model", "TEST AP"], [[k, f"{v:.3f}"] for k, v in t["ap_per_model"].items()]
                              + [["mean ± std over models", pm(t["ap"])], ["ensemble (mean logit)", f"{t['ap_ensemble']:.3f}"]]))
    return "\n".join(lines)
