#!/usr/bin/env python
"""The shipped CPU recipe: feature model, cascade prefilter, fresh simulated pools, fused network.

Usage::

    python pipelines/recipe.py --config pipelines/recipe.toml --out OUT [--stages features,pool,train,...]

Stages (each resumes: finished outputs are found and kept):

    features  features-only sheets (no images); the feature model (boosted trees on the picker's
              features, ``scanstream.picker.learned``) fitted on all but the last
              ``calibration_sheets`` sheets, whose objects calibrate the prefilter threshold at
              ``prefilter_recall``: OUT/feature_model.safetensors
    pool      TRAIN and VALID pools: every object of many sheets (each of its own conditions)
              planned, its features computed, and only what the prefilter keeps rendered:
              OUT/train_pool.zarr, OUT/valid_pool.zarr
    train     the fused network (image + features) on the pools: OUT/run/model.safetensors, a
              cascade (objects the prefilter rejects are never shown to it)
    pixels    (with a [pixels] table) the pixels-only comparison: pools of every object of other
              sheets, no prefilter, the same network without the features: OUT/run_pixels/
    pickpool  (with a [pickpool] table) simulated volumes (their own seeds, conditions drawn wide)
              ingested and picked by ``scanstream pick``, every picked vertex labelled against the
              truth (``scanstream.simulate.pickpool``): OUT/pick_train.zarr, OUT/pick_valid.zarr
    finetune  (with a [finetune] table) the trained cascade fine-tuned on the pick pool beside a
              pool of the first ``sim_sheets`` TRAIN sheets (so that it keeps the scanner's features
              and learns ``pick``'s): OUT/finetune_sim_pool.zarr, OUT/run_pick/model.safetensors
    holdout   the held-out full-size sheet simulated (a name and seed no stage above used) and the
              comparison written by ``benchmarks/holdout.py``: OUT/holdout/

The held-out sheet is read only by the last stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from scanstream.config import check_keys, read_toml
from scanstream.errors import ConfigError, ScanstreamError
from scanstream.picker.learned import (
    calibrate_prefilter,
    fit_feature_model,
    load_feature_model,
    prefilter_threshold,
    save_feature_model,
)
from scanstream.simulate.dataset import iter_simulated, plan_sheet
from scanstream.simulate.pool import pool_sheets, simulate_pool
from scanstream.store import open_store

logger = logging.getLogger("scanstream.pipelines.recipe")
STAGES = ("features", "pool", "train", "pixels", "pickpool", "finetune", "holdout")
SECTIONS = {
    "features": {"sheets", "objects_per_sheet", "alpha_fraction", "calibration_sheets", "prefilter_recall"},
    "pool": {"train_sheets", "valid_sheets", "objects_per_sheet", "alpha_fraction"},
    "holdout": {"sheet", "seed", "objects", "alpha"},
    "pixels": {"sheets", "objects_per_sheet", "alpha_fraction"},
    "pickpool": {"train_first_seed", "train_volumes", "valid_first_seed", "valid_volumes", "fields", "objects_per_field",
                 "alpha_fraction", "draw"},
    "finetune": {"sim_sheets", "max_epochs", "lr"},
}
OPTIONAL = {"pixels", "pickpool", "finetune"}
#: keys a section may add to the ones it needs: the pools' condition draw (``nominal`` or ``wide``)
OPTIONAL_KEYS = {"pool": {"draw"}}


def load_config(path: Path) -> dict[str, Any]:
    cfg = read_toml(path)
    check_keys(cfg, {"seed", "workers", "train", *SECTIONS}, str(path))
    for name, keys in SECTIONS.items():
        if name in OPTIONAL and name not in cfg:
            continue
        missing, extra = keys - set(cfg.get(name, {})), set(cfg.get(name, {})) - keys - OPTIONAL_KEYS.get(name, set())
        if missing or extra:
            raise ConfigError(f"{path}: [{name}] needs exactly {sorted(keys)}; missing {sorted(missing)}, unknown {sorted(extra)}")
    return cfg


def features_table(prefix: str, sheets: range, cfg: dict, seed: int, workers: int) -> pa.Table:
    """Features-only tables of the named sheets, concatenated."""
    conds = pool_sheets(prefix, max(sheets) + 1, seed)
    parts = []
    for i in sheets:
        name = f"{prefix}{i:02d}"
        plans = plan_sheet(cfg["objects_per_sheet"], cfg["alpha_fraction"], name, seed)
        parts += [t for _, t in iter_simulated(plans, {name: conds[name]}, workers=workers, render=False, batch=2048)]
    return pa.concat_tables(parts)


def stage_features(cfg: dict, out: Path) -> Path:
    path = out / "feature_model.safetensors"
    if path.exists():
        logger.info("features: %s exists", path)
        return path
    f, seed, workers = cfg["features"], cfg["seed"], cfg["workers"]
    n_fit = f["sheets"] - f["calibration_sheets"]
    if n_fit < 1 or f["calibration_sheets"] < 1:
        raise ConfigError(f"[features] needs at least one fitting and one calibration sheet, got {f['sheets']} and {f['calibration_sheets']}")
    t0 = time.perf_counter()
    fit = features_table("RF", range(n_fit), f, seed, workers)
    cal = features_table("RF", range(n_fit, f["sheets"]), f, seed, workers)
    model = fit_feature_model(fit, seed=seed, source=f"RF00..RF{n_fit - 1:02d} seed {seed}")
    model = calibrate_prefilter(model, cal, recall=f["prefilter_recall"], source=f"RF{n_fit:02d}..RF{f['sheets'] - 1:02d} seed {seed}")
    save_feature_model(model, path)
    logger.info("features: %s in %.0f s; prefilter %s", path, time.perf_counter() - t0, json.dumps(model.info["prefilter"]))
    return path


def stage_pool(cfg: dict, out: Path, fm_path: Path) -> dict[str, Any]:
    p, rule = cfg["pool"], prefilter_rule(fm_path)
    counts = {}
    for role, prefix, sheets in (("train", "RT", p["train_sheets"]), ("valid", "RV", p["valid_sheets"])):
        counts[role] = kept_pool(cfg, out / f"{role}_pool.zarr", rule, prefix, sheets)
    return counts


def prefilter_rule(fm_path: Path) -> tuple[Any, dict[str, Any]]:
    """(keep rule, its identity): the feature model's prefilter, read once for every pool a stage draws."""
    from scanstream.network.checkpoint import checkpoint_hash

    fm = load_feature_model(fm_path)
    threshold = prefilter_threshold(fm)

    def keep(table: pa.Table):
        return fm.score_table(table) >= threshold

    return keep, {"feature_model": checkpoint_hash(fm_path), "prefilter_threshold": threshold}


def kept_pool(cfg: dict, path: Path, rule: tuple[Any, dict[str, Any]], prefix: str, sheets: int) -> dict[str, int]:
    """A pool of ``sheets`` sheets named ``prefix``00.. (``[pool]``'s sizes and draw), only what ``rule`` keeps."""
    p, (keep, identity) = cfg["pool"], rule
    store, c = simulate_pool(
        path, prefix=prefix, sheets=sheets, objects_per_sheet=p["objects_per_sheet"], alpha_fraction=p["alpha_fraction"],
        seed=cfg["seed"], keep=keep, keep_identity=identity, workers=cfg["workers"], progress=True,
        draw=p.get("draw", "nominal"),
    )
    logger.info("pool %s: %s (%d crops) %s", path.name, store.path, store.n, json.dumps(c))
    return c


def stage_pixels(cfg: dict, out: Path) -> Path:
    """The pixels-only comparison: the same network and schedule without the picker's features,
    trained on pools of every object (no prefilter) of sheets of their own (RP.., RQ..)."""
    if "pixels" not in cfg:
        raise ConfigError("stage pixels needs a [pixels] table in the recipe config")
    p, seed = cfg["pixels"], cfg["seed"]
    for role, prefix, sheets in (("train", "RP", p["sheets"]), ("valid", "RQ", max(1, p["sheets"] // 4))):
        store, c = simulate_pool(out / f"{role}_pixels.zarr", prefix=prefix, sheets=sheets, objects_per_sheet=p["objects_per_sheet"],
                                 alpha_fraction=p["alpha_fraction"], seed=seed, workers=cfg["workers"], progress=True)
        logger.info("pixels pool %s: %s (%d crops) %s", role, store.path, store.n, json.dumps(c))
    return stage_train(cfg, out, None, run="run_pixels", pools=("train_pixels.zarr", "valid_pixels.zarr"))


def stage_train(cfg: dict, out: Path, fm_path: Path | None, *, run: str = "run",
                pools: tuple[str, str] = ("train_pool.zarr", "valid_pool.zarr")) -> Path:
    from scanstream.training.config import config_from_dict
    from scanstream.training.loop import train

    d = {**cfg["train"], "seed": cfg["train"].get("seed", cfg["seed"])}
    config = config_from_dict({
        **d, "train_store": str(out / pools[0]), "valid_store": str(out / pools[1]),
        "out_dir": str(out / run), "feature_model": None if fm_path is None else str(fm_path),
    })
    t0 = time.perf_counter()
    result = train(config, progress=False)
    logger.info("train: %s in %.0f s; %s", result.checkpoint, time.perf_counter() - t0, json.dumps(result.metrics))
    return result.checkpoint


def stage_pickpool(cfg: dict, out: Path) -> dict[str, Any]:
    """The pick pool's TRAIN and VALID stores (module docstring); their counts by source."""
    from scanstream.simulate.pickpool import AMBIGUOUS, merge_stores, pick_pool

    if "pickpool" not in cfg:
        raise ConfigError("stage pickpool needs a [pickpool] table in the recipe config")
    p = cfg["pickpool"]
    kw = {"fields": p["fields"], "objects_per_field": p["objects_per_field"], "alpha_fraction": p["alpha_fraction"],
          "draw": p["draw"], "workers": cfg["workers"]}
    counts = {}
    for role, first, n, drop in (("train", p["train_first_seed"], p["train_volumes"], AMBIGUOUS),
                                 ("valid", p["valid_first_seed"], p["valid_volumes"], ())):
        seeds = list(range(first, first + n))
        per_seed = pick_pool(out / "pick_volumes", seeds, **kw)
        parts = [(open_store(c["store"]), None) for c in per_seed]
        store = merge_stores(out / f"pick_{role}.zarr", parts, drop=drop,
                             source={"stage": "pickpool", "role": role, "seeds": seeds, "dropped": list(drop)})
        counts[role] = {"crops": store.n, "alpha": int((store.labels == 1).sum()), "volumes": per_seed}
        logger.info("pickpool %s: %s (%d crops, %d alpha)", role, store.path, store.n, counts[role]["alpha"])
    return counts


def stage_finetune(cfg: dict, out: Path, base: Path, fm_path: Path) -> Path:
    """The cascade ``base`` fine-tuned on the pick pool beside a pool of the first ``sim_sheets`` TRAIN sheets."""
    from scanstream.simulate.pickpool import merge_stores
    from scanstream.training.config import config_from_dict
    from scanstream.training.loop import train
    from scanstream.training.recipes import RECIPES, pretrained_options

    if "finetune" not in cfg:
        raise ConfigError("stage finetune needs a [finetune] table in the recipe config")
    f = cfg["finetune"]
    sim_path = out / "finetune_sim_pool.zarr"  # the pool's first sheets RT00.., the same objects, a pool of their own
    kept_pool(cfg, sim_path, prefilter_rule(fm_path), "RT", f["sim_sheets"])
    pick, sim = open_store(out / "pick_train.zarr"), open_store(sim_path)
    mixed = merge_stores(out / "finetune_train.zarr", [(pick, None), (sim, None)],
                         source={"stage": "finetune", "pick": pick.path.name, "sim": sim.path.name})
    logger.info("finetune: TRAIN %s: %d pick-pool crops + %d of %s", mixed.path, pick.n, sim.n, sim.path)
    config = config_from_dict({
        **RECIPES["finetune"], **pretrained_options(str(base)), "pretrained": str(base), "seed": cfg["seed"],
        "max_epochs": f["max_epochs"], "lr": f["lr"], "train_store": str(mixed.path),
        "valid_store": str(out / "pick_valid.zarr"), "out_dir": str(out / "run_pick"),
    })
    t0 = time.perf_counter()
    result = train(config, progress=False)
    logger.info("finetune: %s in %.0f s; %s", result.checkpoint, time.perf_counter() - t0, json.dumps(result.metrics))
    return result.checkpoint


def stage_holdout(cfg: dict, out: Path, fm_path: Path, models: list[str]) -> Path:
    import subprocess

    from scanstream.simulate.dataset import simulate_store
    from scanstream.store import is_store, open_store

    h = cfg["holdout"]
    used = {f"RF{i:02d}" for i in range(cfg["features"]["sheets"])} | set(pool_sheets("RT", cfg["pool"]["train_sheets"], cfg["seed"]))
    used |= set(pool_sheets("RV", cfg["pool"]["valid_sheets"], cfg["seed"]))  # names only: the draw does not change them
    if "pixels" in cfg:
        used |= set(pool_sheets("RP", cfg["pixels"]["sheets"], cfg["seed"]))
        used |= set(pool_sheets("RQ", max(1, cfg["pixels"]["sheets"] // 4), cfg["seed"]))
    if h["sheet"] in used:
        raise ConfigError(f"[holdout] sheet {h['sheet']!r} is one the recipe trains on; name another")
    path = out / "holdout.zarr"
    if not (is_store(path) and open_store(path, require_complete=False).complete):
        simulate_store(path, objects=h["objects"], alpha_fraction=h["alpha"] / h["objects"], sheet=h["sheet"], seed=h["seed"],
                       workers=cfg["workers"], progress=True)
    cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "benchmarks" / "holdout.py"), "--store", str(path),
           "--feature-model", str(fm_path), "--out", str(out / "holdout")]
    for m in models:
        cmd += ["--model", m]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out / "holdout" / "holdout.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path(__file__).with_name("recipe.toml"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: every stage whose "
                    "table the config has)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=CKPT[,CKPT]",
                    help="more models for the held-out comparison (e.g. a pixels-only network)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        stages = ([s for s in args.stages.split(",") if s] if args.stages is not None
                  else [s for s in STAGES if s not in OPTIONAL or s in cfg])
        bad = set(stages) - set(STAGES)
        if bad:
            raise ConfigError(f"unknown stages {sorted(bad)}; choose from {', '.join(STAGES)}")
        args.out.mkdir(parents=True, exist_ok=True)
        fm_path = stage_features(cfg, args.out) if "features" in stages else args.out / "feature_model.safetensors"
        if "pool" in stages:
            stage_pool(cfg, args.out, fm_path)
        ckpt = stage_train(cfg, args.out, fm_path) if "train" in stages else args.out / "run" / "model.safetensors"
        pixels = stage_pixels(cfg, args.out) if "pixels" in stages else args.out / "run_pixels" / "model.safetensors"
        if "pickpool" in stages:
            stage_pickpool(cfg, args.out)
        pick = stage_finetune(cfg, args.out, ckpt, fm_path) if "finetune" in stages else args.out / "run_pick" / "model.safetensors"
        if "holdout" in stages:
            models = [f"cascade={ckpt}"] + ([f"cascade-pick={pick}"] if pick.exists() else [])
            models += [f"pixels-only={pixels}"] if pixels.exists() else []
            report = stage_holdout(cfg, args.out, fm_path, [*models, *args.compare])
            logger.info("holdout: %s", report)
    except ScanstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
