#!/usr/bin/env python
"""Reproduce the paper's study on simulated sheets, end to end, and report it beside the paper.

Stages (each resumes: a finished stage is not redone when the command is rerun)::

    1 simulate-dataset   TRAIN / VALID / TEST stores (the paper's Table 1 times --scale)
    2 former method      cuts chosen on TRAIN (scanstream.picker.cuts.choose_config), run on VALID and TEST
    3 search             the RandAugment (N, M) x seeds grid on Dask; best setting by mean VALID AP;
                         its models measured on TEST one by one and as an ensemble
    4 threshold          calibrated on VALID at the former method's recall
    5 classify           TEST with the best setting's ensemble and the threshold (candidate table)
    6 evaluate           AP, PR curves, Table 2, false positives by category
    7 report             OUT/report/: report.md + metrics.json + figures 2-5, next to the paper's numbers

Usage::

    python pipelines/reproduce_paper.py --config pipelines/reproduce_paper_cpu.toml [--scale X] [--out DIR]

The TOML file has the sections [dataset], [baseline], [search], [threshold], [classify]
(see the two presets). Unknown keys are errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scanstream.config import check_keys, from_dict, read_toml
from scanstream.errors import ConfigError, ScanstreamError

logger = logging.getLogger("scanstream.pipelines.reproduce_paper")


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSection:
    scale: float = 0.1
    seed: int = 0
    workers: int = 2


@dataclass(frozen=True)
class BaselineSection:
    low_percentile: float = 2.0
    high_percentile: float = 99.5


@dataclass(frozen=True)
class SearchSection:
    n: tuple[int, ...] = (2, 4, 6, 8)
    m: tuple[int, ...] = (6, 12, 18, 24, 30)
    seeds: int = 4
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
    workers: int | None = None
    threads: int | None = None
    scheduler: str | None = None


@dataclass(frozen=True)
class ThresholdSection:
    #: "former-valid": the former method's recall on VALID (no TEST label is used);
    #: "former-test": its recall on TEST (the paper's comparison point); or a number in (0, 1].
    target_recall: str | float = "former-valid"


@dataclass(frozen=True)
class ClassifySection:
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"


@dataclass(frozen=True)
class PipelineConfig:
    dataset: DatasetSection = field(default_factory=DatasetSection)
    baseline: BaselineSection = field(default_factory=BaselineSection)
    search: SearchSection = field(default_factory=SearchSection)
    threshold: ThresholdSection = field(default_factory=ThresholdSection)
    classify: ClassifySection = field(default_factory=ClassifySection)
    source: str = ""


_SECTIONS = {"dataset": DatasetSection, "baseline": BaselineSection, "search": SearchSection,
             "threshold": ThresholdSection, "classify": ClassifySection}


def _section(cls, values: Any, name: str, source: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    for key in ("n", "m"):
        v = values.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, int) for x in v)):
            raise ConfigError(f"{source}: [{name}] {key} must be a list of integers, got {v!r}")
    return from_dict(cls, values, where=f"{source} [{name}]")


def load_config(path: str | os.PathLike, *, scale: float | None = None) -> PipelineConfig:
    """Read a preset; ``scale`` overrides [dataset] scale."""
    p = Path(path)
    raw = read_toml(p)
    check_keys(raw, _SECTIONS, str(p), what="section")
    sections = {name: _section(cls, raw.get(name, {}), name, str(p)) for name, cls in _SECTIONS.items()}
    if scale is not None:
        sections["dataset"] = DatasetSection(**{**asdict(sections["dataset"]), "scale": scale})
    ds = sections["dataset"]
    if not 0 < ds.scale <= 10:
        raise ConfigError(f"{p}: [dataset] scale must be in (0, 10], got {ds.scale}")
    t = sections["threshold"].target_recall
    if isinstance(t, str) and t not in ("former-valid", "former-test"):
        raise ConfigError(f"{p}: [threshold] target_recall must be 'former-valid', 'former-test' or a number, got {t!r}")
    if not isinstance(t, str) and not 0 < float(t) <= 1:
        raise ConfigError(f"{p}: [threshold] target_recall must be in (0, 1], got {t}")
    return PipelineConfig(**sections, source=str(p))


# -- stages -------------------------------------------------------------------------------------
def _json_write(obj: Any, path: Path) -> None:
    from scanstream.evaluation.report import json_ready

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(json_ready(obj), indent=1) + "\n")
    os.replace(tmp, path)


def stage_dataset(cfg: PipelineConfig, out: Path) -> dict[str, Path]:
    from scanstream.simulate.dataset import simulate_dataset
    from scanstream.store import is_store, open_store

    data = out / "data"
    paths = {split: data / f"{split}.zarr" for split in ("train", "valid", "test")}
    ds = cfg.dataset

    def matches(p: Path) -> bool:
        if not (p.exists() and is_store(p)):
            return False
        s = open_store(p, require_complete=False)
        src = s.attrs.get("source", {})
        return s.complete and src.get("scale") == float(ds.scale) and src.get("seed") == int(ds.seed)

    if all(matches(p) for p in paths.values()):
        logger.info("dataset: %s already simulated (scale %s, seed %s)", data, ds.scale, ds.seed)
        return paths
    return simulate_dataset(data, scale=ds.scale, seed=ds.seed, workers=ds.workers, overwrite=True, progress=True)


def stage_former(cfg: PipelineConfig, out: Path, stores: dict[str, Path]) -> dict[str, Any]:
    from scanstream.picker import cuts as bl
    from scanstream.store import open_store

    d = out / "former"
    d.mkdir(parents=True, exist_ok=True)
    train = open_store(stores["train"])
    config = bl.choose_config(train.table, low_percentile=cfg.baseline.low_percentile,
                              high_percentile=cfg.baseline.high_percentile)
    result = {"config": config.to_dict(), "tables": {}, "summary": {}}
    # the learned former method: boosted trees on the same picker features, fitted on TRAIN
    # (seconds); evaluate reports it beside the cuts
    from scanstream.picker.learned import fit_feature_model, save_feature_model

    learned = fit_feature_model(train.table, seed=cfg.dataset.seed, source=str(stores["train"]))
    result["feature_model"] = str(save_feature_model(learned, d / "feature_model.safetensors"))
    for split in ("valid", "test"):
        s = open_store(stores[split])
        table = bl.run_baseline(s, config=config)  # cheap (features only): always recomputed
        path = bl.write_result(table, d / f"{split}.parquet", config=config)
        result["tables"][split] = path
        result["summary"][split] = bl.summarize(s.table, table)
    _json_write(result, d / "former.json")
    return result


def stage_search(cfg: PipelineConfig, out: Path, stores: dict[str, Path]):
    from scanstream.training.config import SearchConfig, config_from_dict
    from scanstream.training.search import run_search

    s = cfg.search
    # [search] holds the grid and its cluster; its other keys are the trials' shared TrainConfig options
    grid = ("n", "m", "seeds", "threads", "workers", "scheduler")
    base = config_from_dict({**{k: v for k, v in asdict(s).items() if k not in grid}, "train_store": str(stores["train"]),
                             "valid_store": str(stores["valid"]), "out_dir": str(out / "search")}, where=f"{cfg.source} [search]")
    config = SearchConfig(base=base, out_dir=str(out / "search"), ns=s.n, ms=s.m, seeds=s.seeds,
                          test_store=str(stores["test"]), threads=s.threads)
    return run_search(config, scheduler=s.scheduler, workers=s.workers)


def target_recall(cfg: PipelineConfig, former: dict[str, Any]) -> tuple[float, str]:
    t = cfg.threshold.target_recall
    if t == "former-valid":
        return float(former["summary"]["valid"]["recall"]["value"]), "the former method's recall on VALID"
    if t == "former-test":
        return float(former["summary"]["test"]["recall"]["value"]), "the former method's recall on TEST"
    return float(t), "the configured recall"


def stage_threshold(cfg: PipelineConfig, out: Path, stores: dict[str, Path], ckpts: list[Path], recall: float) -> Path:
    from scanstream.errors import ThresholdError
    from scanstream.inference.scoring import calibrate_threshold
    from scanstream.network.checkpoint import checkpoint_hash
    from scanstream.threshold import load_threshold, write_threshold

    path = out / "threshold.json"
    hashes = sorted(checkpoint_hash(c) for c in ckpts)
    if path.exists():
        try:
            rec = load_threshold(path)
        except ThresholdError:
            rec = None
        if rec and sorted(rec["model_hashes"]) == hashes and math.isclose(rec["target"]["value"], recall):
            logger.info("threshold: %s already calibrated for these models", path)
            return path
    rec = calibrate_threshold(stores["valid"], ckpts, target_recall=recall, device=cfg.classify.device,
                              batch_size=cfg.classify.batch_size, progress=True)
    return write_threshold(rec, path)


def stage_classify(cfg: PipelineConfig, out: Path, stores: dict[str, Path], ckpts: list[Path], threshold: Path) -> Path:
    from scanstream.candidates.table import read_manifest, read_metadata
    from scanstream.inference.classify import classify
    from scanstream.network.checkpoint import checkpoint_hash
    from scanstream.threshold import load_threshold

    cand = out / "candidates"
    hashes = sorted(checkpoint_hash(c) for c in ckpts)
    thr = load_threshold(threshold)["threshold"]
    if read_manifest(cand) is not None:
        meta = read_metadata(cand)
        if sorted(meta.get("model_hashes") or []) == hashes and (meta.get("threshold") or {}).get("threshold") == thr:
            logger.info("classify: %s already complete for these models and threshold", cand)
            return cand
        shutil.rmtree(cand)  # another run's table: replaced, never mixed
    res = classify([stores["test"]], ckpts, cand, threshold=threshold, workers=cfg.classify.workers,
                   device=cfg.classify.device, batch_size=cfg.classify.batch_size, progress=True)
    if res.failed:
        raise ScanstreamError(f"classify: {len(res.failed)} tasks failed: {res.failed[:3]}")
    return cand


def stage_evaluate(out: Path, stores: dict[str, Path], cand: Path, former: dict[str, Any], search_out: Path):
    import pyarrow.parquet as pq

    from scanstream.evaluation.evaluate import evaluate, scores_from_table

    singles = scores_from_table(pq.read_table(search_out / "test_scores.parquet"), exclude=("object_id", "label", "ensemble"))
    return evaluate([cand], [stores["test"]], out / "evaluation", baseline=former["tables"]["test"],
                    feature_model=former.get("feature_model"),
                    names=["ensemble"], extra_models=singles, spread_over=[s.name for s in singles],
                    title="Evaluation on simulated TEST")


def read_history(trial_dir: Path) -> list[dict]:
    """Per-epoch records of a training run (its history.csv), numbers as floats."""
    f = trial_dir / "history.csv"
    if not f.exists():
        return []
    with f.open() as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        rec = {}
        for k, v in r.items():
            try:
                rec[k] = float(v) if v not in ("", None) else None
            except ValueError:
                rec[k] = v
        out.append(rec)
    return out


def table1(stores: dict[str, Path]) -> dict[str, dict[str, int]]:
    from scanstream import metrics as mt
    from scanstream.store import open_store

    return {split.upper(): mt.class_counts(open_store(p).labels) for split, p in stores.items()}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (simulator, Dask workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(cfg: PipelineConfig, out: str | os.PathLike) -> Path:
    """All stages; returns the report directory."""
    from scanstream.evaluation import figures as fg
    from scanstream.evaluation.report import render_reproduction, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _json_write({"config": asdict(cfg)}, out / "pipeline_config.json")
    seconds: dict[str, float] = {}

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        logger.warning("stage %s ...", name)
        r = fn(*a)
        seconds[name] = round(time.perf_counter() - t0, 1)
        logger.warning("stage %s done in %.1f s", name, seconds[name])
        return r

    stores = timed("simulate", stage_dataset, cfg, out)
    former = timed("former method", stage_former, cfg, out, stores)
    search = timed("search", stage_search, cfg, out, stores)
    recall, recall_source = target_recall(cfg, former)
    threshold = timed("threshold", stage_threshold, cfg, out, stores, search.best_checkpoints, recall)
    cand = timed("classify", stage_classify, cfg, out, stores, search.best_checkpoints, threshold)
    evaluation = timed("evaluate", stage_evaluate, out, stores, cand, former, search.out)

    rep = out / "report"
    rep.mkdir(exist_ok=True)
    histories = {c.parent.name: read_history(c.parent) for c in search.best_checkpoints}
    figs = {}
    if any(histories.values()):
        figs["fig2"] = fg.plot_loss_curves(histories, rep / "fig2_loss_curves.png",
                                           title=f"Loss curves, N={search.best[0]} M={search.best[1]}").name
    for key, src in (("fig3", search.heatmap), ("fig4", evaluation.figures["score_distributions"]),
                     ("fig5", evaluation.figures["pr_curves"])):
        dst = rep / {"fig3": "fig3_heatmap.png", "fig4": "fig4_score_distributions.png", "fig5": "fig5_pr_curves.png"}[key]
        shutil.copyfile(src, dst)
        figs[key] = dst.name
    from scanstream.threshold import load_threshold

    metrics = {
        "config": asdict(cfg),
        "table1": table1(stores),
        "former": {"config": former["config"], "summary": former["summary"]},
        "search": {
            "best": {"n": search.best[0], "m": search.best[1]},
            "summary": search.summary,
            "best_trials": [{k: v for k, v in r.items()} for r in search.results.to_pylist()
                            if (r["n"], r["m"]) == search.best],
            "test": search.test,
        },
        "threshold": {"target_recall": recall, "source": recall_source, "record": load_threshold(threshold)},
        "evaluation": evaluation.metrics,
        "figures": figs,
        "seconds": seconds,
        "cpu_seconds": round(_cpu_seconds(), 1),
        "cpus": os.cpu_count(),
    }
    md = render_reproduction(metrics)
    write_report(rep, md, metrics)
    logger.warning("report: %s", rep / "report.md")
    return rep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", type=Path, required=True, help="TOML preset (pipelines/reproduce_paper*.toml)")
    parser.add_argument("--scale", type=float, help="override [dataset] scale (fraction of the paper's counts)")
    parser.add_argument("--out", type=Path, default=Path("reproduce-output"), help="output directory (default reproduce-output)")
    parser.add_argument("--docs", type=Path, help="also copy the report directory here (e.g. docs/reproduce)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO chatter drowns the stages
    try:
        cfg = load_config(args.config, scale=args.scale)
        rep = run(cfg, args.out)
        if args.docs:
            args.docs.mkdir(parents=True, exist_ok=True)
            for f in rep.iterdir():
                if f.suffix in (".md", ".json", ".png"):
                    shutil.copyfile(f, args.docs / f.name)
    except ScanstreamError as exc:
        print(f"reproduce_paper: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {rep / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
