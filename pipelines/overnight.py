#!/usr/bin/env python
"""The overnight run: classify every crop store that lands in an inbox; or its demo.

Usage::

    python pipelines/overnight.py --config pipelines/overnight.toml [--once]
    python pipelines/overnight.py --demo [--out demo-output] [--fresh] [--sheet-objects N] ...

With ``--config`` this is ``scanstream watch`` driven by the TOML file's [watch] table
(:mod:`scanstream.inference.watch`): every complete store in the inbox is classified into the candidate
table, and a morning summary per sheet is written to ``<out>.watch/morning/``.

``--demo`` (what ``make demo`` runs) is the whole job on simulated sheets, on a CPU, with the
sizes of the TOML file's [demo] table::

    1 simulate   a labelled VALID store (and TRAIN when training here), and one sheet at the natural
                 prevalence that is written to OUT/staging and moved into OUT/inbox when complete,
                 as a scanner would
    2 model      the shipped cascade (models/README.md) by default; with ``model = ""`` a small CPU
                 backbone trained here (mobilenet_v3_small at 112 px)
    3 threshold  calibrated on VALID at the target recall
    4 overnight  the watch, once, over OUT/inbox -> OUT/candidates (+ OUT/candidates.watch/morning/)
    5 morning    the summary and the top candidates printed; the former method's selection on the
                 same sheet; OUT/gallery/ (HTML + contact sheet); OUT/revisit.csv (the selected
                 candidates along a short stage path); then the simulation's truth for both

Each stage resumes: rerunning finds the finished stages' outputs and does not redo them
(``--fresh`` starts over). The simulated sheet's truth is used only at the very end, to say how
many of the selected candidates really are alpha decays.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from scanstream.config import from_dict, read_toml
from scanstream.errors import ConfigError, ScanstreamError

logger = logging.getLogger("scanstream.pipelines.overnight")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path(__file__).resolve().parent / "overnight.toml"
DEFAULT_DEMO_OUT = ROOT / "demo-output"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and settings of the demo (the [demo] table; flags override)."""

    seed: int = 0
    workers: int = 2
    train_objects: int = 1200
    train_alpha: float = 0.3
    valid_objects: int = 400
    valid_alpha: float = 0.25
    sheet_objects: int = 3000
    sheet_prevalence: str = "1:183"
    backbone: str = "mobilenet_v3_small"
    input_size: int = 112
    epochs: int = 6
    batch_size: int = 16
    lr: float = 1e-3
    lr_schedule: str = "constant"
    n: int = 2
    m: int = 12
    darkness_jitter: float = 0.0
    warmup_epochs: int = 1
    target_recall: float = 0.9
    gallery_top: int = 100
    model: str = ""  # a shipped checkpoint (path relative to the project root); "" trains one here


def load_demo_config(path: Path, **overrides: Any) -> DemoConfig:
    cfg = from_dict(DemoConfig, read_toml(path, section="demo", optional=True), where=f"{path} [demo]")
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    for name in ("train_objects", "valid_objects", "sheet_objects", "epochs", "batch_size", "workers", "gallery_top"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"demo {name} must be >= 1, got {getattr(cfg, name)}")
    from scanstream.training.config import parse_darkness, parse_lr_schedule, parse_m, parse_n

    try:
        parse_n(cfg.n)
        parse_m(cfg.m)
        parse_darkness(cfg.darkness_jitter)
        parse_lr_schedule(cfg.lr_schedule)
    except ScanstreamError as exc:
        raise ConfigError(f"{path}: [demo] {exc}") from None
    return cfg


class Clock:
    """Wall time per stage, printed as the demo goes."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}

    def stage(self, name: str, t_start: float, note: str = "") -> None:
        dt = time.perf_counter() - t_start
        self.stages[name] = round(dt, 1)
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {name}: {dt:.1f} s{'  ' + note if note else ''}", flush=True)


def _complete_store(path: Path) -> bool:
    from scanstream.store import is_store, open_store

    return is_store(path) and open_store(path, require_complete=False).complete


def stage_simulate(cfg: DemoConfig, out: Path) -> dict[str, Path]:
    from scanstream.simulate.conditions import draw_conditions
    from scanstream.simulate.dataset import simulate_store
    from scanstream.threshold import parse_prevalence

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    stores = {}
    # TRAIN and VALID: two sets of objects from one labelled sheet (same conditions), as in the
    # paper; the night's sheet below has conditions of its own
    lab = draw_conditions("DEMO-LAB", cfg.seed)
    labelled = [("train", cfg.train_objects, cfg.train_alpha, cfg.seed * 10 + 1)] if not cfg.model else []
    for name, n, alpha, seed in (
        *labelled,
        ("valid", cfg.valid_objects, cfg.valid_alpha, cfg.seed * 10 + 2),
    ):
        path = data / f"{name}.zarr"
        if not _complete_store(path):
            simulate_store(path, objects=n, alpha_fraction=alpha, sheet=f"LAB-{name.upper()}", seed=seed,
                           conditions=lab, workers=cfg.workers, overwrite=True, progress=True)
        stores[name] = path
    # the night's sheet: written in staging, moved into the inbox only when complete
    inbox, staging = out / "inbox", out / "staging"
    inbox.mkdir(exist_ok=True)
    sheet = inbox / "sheet-0042.zarr"
    if not _complete_store(sheet):
        staging.mkdir(exist_ok=True)
        tmp = staging / sheet.name
        simulate_store(tmp, objects=cfg.sheet_objects, alpha_fraction=parse_prevalence(cfg.sheet_prevalence),
                       sheet="0042", seed=cfg.seed * 10 + 3, workers=cfg.workers, overwrite=True, progress=True)
        shutil.rmtree(sheet, ignore_errors=True)
        os.replace(tmp, sheet)
    stores["sheet"] = sheet
    return stores


def shipped_model(cfg: DemoConfig, out: Path) -> tuple[Path, dict[str, Any]]:
    """The shipped checkpoint, copied to OUT/model/ (what a site would keep beside its config)."""
    from scanstream.network.checkpoint import checkpoint_hash, read_header

    src = (ROOT / cfg.model) if not Path(cfg.model).is_absolute() else Path(cfg.model)
    meta = read_header(src)
    ckpt = out / "model" / "model.safetensors"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if not ckpt.exists() or checkpoint_hash(ckpt) != checkpoint_hash(src):
        shutil.copyfile(src, ckpt)
    return ckpt, {**meta["metrics"], "shipped": str(src), "model_config": meta["model_config"],
                  "prefilter_threshold": meta.get("prefilter_threshold")}


def stage_train(cfg: DemoConfig, out: Path, stores: dict[str, Path]) -> tuple[Path, dict[str, Any]]:
    from scanstream.training.config import TrainConfig
    from scanstream.training.loop import train

    if cfg.model:
        return shipped_model(cfg, out)
    model_dir = out / "model"
    ckpt = model_dir / "model.safetensors"
    metrics_file = model_dir / "metrics.json"
    if ckpt.exists() and metrics_file.exists():
        return ckpt, json.loads(metrics_file.read_text())
    tc = TrainConfig(
        train_store=str(stores["train"]), valid_store=str(stores["valid"]), out_dir=str(model_dir),
        backbone=cfg.backbone, input_size=cfg.input_size, pretrained="none", seed=cfg.seed,
        max_epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, lr_schedule=cfg.lr_schedule,
        warmup_epochs=cfg.warmup_epochs, n=cfg.n, m=cfg.m, darkness_jitter=cfg.darkness_jitter,
        device="cpu", loader="local",
    )
    result = train(tc, progress=True)
    metrics = {**result.metrics, "history": result.history}
    metrics_file.write_text(json.dumps(metrics, indent=1, default=str) + "\n")
    return result.checkpoint, metrics


def stage_threshold(cfg: DemoConfig, out: Path, stores: dict[str, Path], ckpt: Path) -> dict[str, Any]:
    from scanstream.inference.engine import checkpoint_identity
    from scanstream.inference.scoring import calibrate_threshold
    from scanstream.threshold import load_threshold, write_threshold

    path = out / "model" / "threshold.json"
    if path.exists():
        rec = load_threshold(path)
        if rec["model_hashes"] == [checkpoint_identity(ckpt)]:
            return rec
    rec = calibrate_threshold(stores["valid"], [ckpt], target_recall=cfg.target_recall,
                              prevalences=("1:3", cfg.sheet_prevalence), device="cpu")
    write_threshold(rec, path)
    return rec


def write_watch_toml(cfg: DemoConfig, out: Path) -> Path:
    """The demo's own overnight.toml (what a site would keep next to its models)."""
    path = out / "overnight.toml"
    path.write_text(
        "# written by pipelines/overnight.py --demo; paths relative to this file\n"
        "[watch]\n"
        'inbox = "inbox"\nout = "candidates"\nmodels = ["model/model.safetensors"]\n'
        'threshold = "model/threshold.json"\n'
        f'prevalence = "{cfg.sheet_prevalence}"\n'
        'device = "cpu"\nworkers = 1\nbatch_size = 64\npoll_seconds = 60\ntop = 10\n'
        "# a thread worker starts in a second on a laptop; keep the default (processes) on a real node\n"
        "processes = false\n"
    )
    return path


def stage_overnight(out: Path, toml: Path) -> Any:
    from scanstream.inference.watch import load_watch_config, watch

    config = load_watch_config(toml)

    def line(r: dict) -> None:
        if r["status"] == "done":
            print(f"  {r['name']}: {r['objects']} objects, {r['selected']} selected, {r['seconds']:.1f} s "
                  f"({r['crops_per_s']:.0f} crops/s in classification)", flush=True)
        else:
            print(f"  {r['name']}: FAILED: {r['error']}", flush=True)

    rep = watch(Path(config.inbox), Path(config.out), config, once=True, progress=True, on_store=line)
    if rep.failed:
        raise ScanstreamError(f"the overnight run failed on {[r['path'] for r in rep.failed]}")
    return rep


def stage_morning(cfg: DemoConfig, out: Path, sheet_store: Path) -> dict[str, Any]:
    from scanstream.candidates.query import CandidateFilter, format_text, query_candidates, write_result
    from scanstream.candidates.revisit import revisit_table
    from scanstream.inference.watch import state_dir
    from scanstream.picker.cuts import run_baseline
    from scanstream.review.gallery import write_gallery
    from scanstream.store import open_store

    cands = out / "candidates"
    morning = state_dir(cands) / "morning"
    summary = json.loads((morning / "0042.json").read_text())
    print()
    print((morning / "0042.md").read_text().split("\n## ")[0].rstrip())
    top = query_candidates(cands, CandidateFilter(top=10))
    print(f"\nTop 10 candidates (scanstream query {cands} --top 10):")
    print(format_text(top.select(["rank", "object_id", "score", "probability", "selected", "x_mm", "y_mm", "z_mm"])))

    gallery = write_gallery(cands, out / "gallery", stores=[sheet_store],
                            filters=CandidateFilter(selected=True, top=cfg.gallery_top))
    selected = query_candidates(cands, CandidateFilter(selected=True))
    revisit = revisit_table(selected)
    write_result(revisit, "csv", out / "revisit.csv")

    store = open_store(sheet_store)
    cuts = run_baseline(store).column("selected").to_numpy(zero_copy_only=False).astype(bool)
    print(f"\nThe former method (multiplicity and prong-length cuts) on the same sheet selects {int(cuts.sum())} "
          f"of {store.n} objects; the network selected {selected.num_rows}.")
    # the simulation's truth, which the pipeline never used: how good was the expectation?
    truth = dict(zip(store.object_ids, store.labels.tolist(), strict=True))
    sel_ids = selected.column("object_id").to_pylist()
    true_alpha = sum(truth[i] == 1 for i in sel_ids)
    all_alpha = sum(v == 1 for v in truth.values())
    cuts_alpha = int((store.labels[cuts] == 1).sum())
    exp = summary.get("expected_true_alpha") or {}
    print(f"\nSimulation truth: {true_alpha} of the {len(sel_ids)} selected are alpha decays "
          f"(expected {exp.get('value', float('nan')):.1f}, interval "
          f"[{(exp.get('ci') or [float('nan')] * 2)[0]:.1f}, {(exp.get('ci') or [float('nan')] * 2)[1]:.1f}]); "
          f"the sheet holds {all_alpha}, so recall on it is {true_alpha / max(all_alpha, 1):.2f}. "
          f"The former method's {int(cuts.sum())} hold {cuts_alpha}{_at_cuts_recall(cands, truth, cuts_alpha)}.")
    return {
        "summary": summary, "gallery": str(gallery.html), "contact_sheet": str(gallery.contact_sheet),
        "revisit": str(out / "revisit.csv"), "revisit_rows": revisit.num_rows,
        "truth": {"selected_true_alpha": true_alpha, "selected": len(sel_ids), "sheet_alpha": all_alpha,
                  "cuts_selected": int(cuts.sum()), "cuts_true_alpha": cuts_alpha},
    }


def _at_cuts_recall(cands: Path, truth: dict[str, int], cuts_alpha: int) -> str:
    """'; the network needs N candidates for as many' (from the ranked table and the truth)."""
    from scanstream.candidates.query import CandidateFilter, query_candidates

    if cuts_alpha == 0:
        return ""
    ranked = query_candidates(cands, CandidateFilter()).column("object_id").to_pylist()
    found = 0
    for n, oid in enumerate(ranked, 1):
        found += truth[oid] == 1
        if found == cuts_alpha:
            return f"; the network's ranking reaches as many within its top {n}"
    return ""


def run_demo(cfg: DemoConfig, out: Path, *, fresh: bool = False) -> dict[str, Any]:
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = out.resolve()
    record = out / "demo_config.json"
    if fresh and out.exists():
        shutil.rmtree(out)
    if record.exists() and json.loads(record.read_text()) != asdict(cfg):
        raise ConfigError(f"{out} holds a demo made with other settings ({record}); rerun with --fresh")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    clock = Clock()
    print(f"scanstream demo: outputs in {out}", flush=True)

    t = time.perf_counter()
    stores = stage_simulate(cfg, out)
    made = ("" if cfg.model else f"TRAIN {cfg.train_objects}, ") + f"VALID {cfg.valid_objects}, sheet {cfg.sheet_objects}"
    clock.stage("1 simulate", t, f"{made} objects ({cfg.sheet_prevalence}) -> {out / 'inbox'}")
    t = time.perf_counter()
    ckpt, metrics = stage_train(cfg, out, stores)
    if cfg.model:
        mc = metrics["model_config"]
        clock.stage("2 model", t, f"shipped {cfg.model}: {mc['backbone']} at {mc['input_size']} px"
                    f"{' + picker features, cascade' if mc.get('inputs') else ''}; its own VALID AP "
                    f"{metrics.get('val_ap', float('nan')):.3f} (models/README.md)")
    else:
        clock.stage("2 train", t, f"{cfg.backbone} at {cfg.input_size} px, {metrics.get('epochs_run')} epochs, "
                    f"VALID AP {metrics.get('val_ap', float('nan')):.3f} (best epoch {metrics.get('best_epoch')})")
    t = time.perf_counter()
    rec = stage_threshold(cfg, out, stores, ckpt)
    a = rec["achieved"]
    clock.stage("3 threshold", t, f"logit {rec['threshold']:.3f}: recall {a['recall']:.3f}, precision "
                f"{a['precision']:.3f} on VALID ({cfg.valid_alpha:g} alpha)")
    t = time.perf_counter()
    rep = stage_overnight(out, write_watch_toml(cfg, out))
    clock.stage("4 overnight", t, f"{len(rep.processed)} store(s) classified, {rep.skipped} already done")
    t = time.perf_counter()
    morning = stage_morning(cfg, out, stores["sheet"])
    clock.stage("5 morning", t, "gallery, revisit list")

    total = time.perf_counter() - clock.t0
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    result = {"seconds": round(total, 1), "cpu_seconds": round(cpu, 1), "cores": os.cpu_count(), "stages": clock.stages,
              "config": asdict(cfg), **morning}
    (out / "demo_result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"""
Demo finished in {total:.0f} s ({cpu:.0f} CPU-seconds on {os.cpu_count()} cores). Outputs in {out}/:
  morning summary   {out / 'candidates.watch' / 'morning' / 'index.md'}
  gallery           {morning['gallery']}
  contact sheet     {morning['contact_sheet']}
  revisit list      {morning['revisit']} ({morning['revisit_rows']} stops)
  candidate table   {out / 'candidates'}
  model, threshold  {out / 'model'}
Next:
  scanstream query {out / 'candidates'} --selected --top 20
  scanstream review {out / 'candidates'} --selected      # http://127.0.0.1:8765/ : keys a alpha, o other, u undo, n next unreviewed
  scanstream verdicts to-store {out / 'candidates.verdicts'} --store {stores['sheet']} --out reviewed.zarr""")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML file ([watch] and [demo] tables)")
    parser.add_argument("--once", action="store_true", help="overnight mode: process what is in the inbox, then exit")
    parser.add_argument("--demo", action="store_true", help="run the demo on simulated sheets instead")
    parser.add_argument("--out", type=Path, default=DEFAULT_DEMO_OUT, help="demo output directory (default demo-output/)")
    parser.add_argument("--fresh", action="store_true", help="demo: remove earlier demo outputs first")
    for f in fields(DemoConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        parser.add_argument(flag, type=kind, default=None, help=f"demo: override [demo] {f.name}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # Dask's own INFO lines (cluster start and stop) are noise here
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith("distributed"))
    try:
        if args.demo:
            overrides = {f.name: getattr(args, f.name) for f in fields(DemoConfig)}
            run_demo(load_demo_config(args.config, **overrides), args.out, fresh=args.fresh)
            return 0
        from scanstream.cli import main as cli_main

        return cli_main(["watch", "--config", str(args.config)] + (["--once"] if args.once else []))
    except ScanstreamError as exc:
        print(f"overnight: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("overnight: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
