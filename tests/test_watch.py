"""scanstream.inference.watch: the overnight mode processes each store exactly once and survives restarts."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures import draw_crops

from scanstream.candidates.table import part_files, read_candidates, read_manifest
from scanstream.cli import main
from scanstream.errors import ConfigError, InputError, WatchError
from scanstream.inference.watch import WatchConfig, load_watch_config, state_dir, watch
from scanstream.network.checkpoint import checkpoint_hash
from scanstream.review.morning import precision_for, sheet_range_energy, sheet_summary, summary_markdown
from scanstream.store import StoreWriter, open_store
from scanstream.threshold import check_models, load_threshold

ROOT = Path(__file__).resolve().parents[1]


def write_store(path: Path, n: int, *, sheet: str, seed: int, finalize: bool = True) -> Path:
    """A labelled store with small shards (64 crops), so classify splits it into n / 64 tasks."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    crops = draw_crops(labels, seed=seed)
    rows = [
        {"object_id": f"{sheet}-{i:05d}", "experiment": "E07", "module": 1, "plate": 3, "sheet": sheet,
         "x_mm": float(rng.uniform(0, 50)), "y_mm": float(rng.uniform(0, 50)), "z_mm": -0.1, "label": int(labels[i])}
        for i in range(n)
    ]
    w = StoreWriter(path, source={"stage": "test"}, chunk_crops=64, shard_crops=64)
    w.append(crops, rows)  # whole shards are committed as they fill
    if finalize:
        w.finalize()  # otherwise: committed but without the completion marker, a store still being written
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random-weight checkpoint and a threshold record calibrated for it."""
    import torch

    from scanstream.network.checkpoint import save_checkpoint
    from scanstream.network.model import ModelConfig, build_model
    from scanstream.threshold import build_threshold_record, write_threshold

    root = tmp_path_factory.mktemp("models")
    cfg = ModelConfig(backbone="mobilenet_v3_small", input_size=64)
    torch.manual_seed(0)
    h = save_checkpoint(root / "m.safetensors", build_model(cfg), model_config=cfg, train_config={}, data_hash="t",
                        metrics={})
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.2).astype(int)
    scores = rng.normal(0, 1, 400) + 2 * labels
    rec = build_threshold_record(labels, scores, target_kind="recall", target_value=0.8, model_hashes=[h],
                                 calibration_store={"path": "valid.zarr", "hash": "v"})
    write_threshold(rec, root / "threshold.json")
    toml = root / "overnight.toml"
    toml.write_text(
        '[watch]\nmodels = ["m.safetensors"]\nthreshold = "threshold.json"\nprevalence = "1:183"\n'
        'device = "cpu"\nworkers = 1\nprocesses = false\npoll_seconds = 0.2\nbatch_size = 32\n'
    )
    return root, rec


def wait_for(predicate, timeout=120.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = predicate()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def state(out: Path) -> dict:
    f = state_dir(out) / "state.json"
    try:
        return json.loads(f.read_text()) if f.exists() else {"stores": {}, "current": None}
    except ValueError:
        return {"stores": {}, "current": None}


def drop(store_dir: Path, inbox: Path) -> Path:
    """Move a finished store into the inbox in one rename, as a transfer script would."""
    dest = inbox / store_dir.name
    os.rename(store_dir, dest)
    return dest


def part_mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in part_files(out)}


@pytest.mark.slow
def test_two_stores_dropped_in_turn_each_processed_once(models, tmp_path):
    root, rec = models
    config = load_watch_config(root / "overnight.toml")
    inbox, out, staging = tmp_path / "inbox", tmp_path / "cands", tmp_path / "staging"
    inbox.mkdir()
    staging.mkdir()
    a = write_store(staging / "sheetA.zarr", 64, sheet="A", seed=1)
    b = write_store(staging / "sheetB.zarr", 128, sheet="B", seed=2)
    hash_a, hash_b = open_store(a).content_hash, open_store(b).content_hash
    # not a store, and a store still being written: both ignored / waited for
    (inbox / "notes.txt").write_text("x")
    write_store(inbox / "partial.zarr", 64, sheet="P", seed=3, finalize=False)

    stop = threading.Event()
    seen: list[str] = []
    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault("r", watch(inbox, out, config, stop=stop, progress=False,
                                                    on_store=lambda r: seen.append(r["hash"]))),
        daemon=True,
    )
    t.start()
    try:
        drop(a, inbox)
        wait_for(lambda: hash_a in state(out)["stores"], what="store A")
        drop(b, inbox)
        wait_for(lambda: hash_b in state(out)["stores"], what="store B")
        time.sleep(0.6)  # a few more polls: nothing is processed again
    finally:
        stop.set()
        t.join(60)
    rep = result["r"]
    assert seen == [hash_a, hash_b]
    assert [r["status"] for r in rep.processed] == ["done", "done"] and not rep.failed
    assert rep.waiting == [str(inbox / "partial.zarr")]

    table = read_candidates(out)
    ids = table.column("object_id").to_pylist()
    assert len(ids) == len(set(ids)) == 64 + 128
    assert read_manifest(out)["rows"] == 192
    st = state(out)
    assert set(st["stores"]) == {hash_a, hash_b} and st["current"] is None

    # the morning summary of each sheet
    sel = dict.fromkeys(("A", "B"), 0)
    for s, flag in zip(table.column("sheet").to_pylist(), table.column("selected").to_pylist(), strict=True):
        sel[s] += bool(flag)
    morning = state_dir(out) / "morning"
    prec = precision_for(rec, "1:183")
    for sheet, n in (("A", 64), ("B", 128)):
        s = json.loads((morning / f"{sheet}.json").read_text())
        assert (s["objects"], s["selected"]) == (n, sel[sheet])
        assert s["expected_true_alpha"]["value"] == pytest.approx(sel[sheet] * prec["value"])
        assert s["crops_per_s"] > 0 and s["seconds"] > 0
        assert len(s["top"]) == 10 and s["top"][0]["rank"] == 1
        md = (morning / f"{sheet}.md").read_text()
        assert f"| objects classified | {n} |" in md and "expected true alpha decays" in md
    assert "[A](A.md)" in (morning / "index.md").read_text()

    # --once afterwards: nothing new, nothing rewritten
    before = part_mtimes(out)
    again = watch(inbox, out, config, once=True, progress=False)
    assert again.processed == [] and again.skipped == 2
    assert part_mtimes(out) == before

    # the waiting store completes: the next pass picks it up
    w = StoreWriter(inbox / "partial.zarr", source={"stage": "test"})
    w.finalize()
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in part_files(out)}
    last = watch(inbox, out, config, once=True, progress=False)
    assert [r["name"] for r in last.processed] == ["partial.zarr"]
    assert read_candidates(out).num_rows == 256
    # only the new store's sheet was ranked and written: sheets A and B kept their files
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == files
    assert read_manifest(out)["sheets"]["P"]["rows"] == 64 and read_manifest(out)["rows"] == 256


@pytest.mark.slow
def test_restart_after_kill_mid_store(models, tmp_path):
    root, _ = models
    inbox, out = tmp_path / "inbox", tmp_path / "cands"
    inbox.mkdir()
    store = write_store(inbox / "b.zarr", 256, sheet="B", seed=5)  # 4 classify tasks of 64 crops
    h = open_store(store).content_hash
    cmd = [sys.executable, "-m", "scanstream", "watch", str(inbox), "--out", str(out),
           "--config", str(root / "overnight.toml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # kill it (no clean-up possible) while the store is in progress with some parts written
        wait_for(lambda: (state(out)["current"] or {}).get("hash") == h
                 and list(out.glob(f"sheet-B/part-{h[:12]}-*.parquet")), what="store in progress")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    st = state(out)
    assert h not in st["stores"] and st["current"]["hash"] == h, "the kill did not land mid-way through the store"
    written_before = {p.name for p in out.glob(f"sheet-B/part-{h[:12]}-*.parquet")}
    assert 0 < len(written_before) < 4
    assert read_manifest(out) is None

    # restart (--once): the store is finished from the parts already written, once
    config = load_watch_config(root / "overnight.toml")
    rep = watch(inbox, out, config, once=True, progress=False)
    assert [r["hash"] for r in rep.processed] == [h] and not rep.failed
    ids = read_candidates(out).column("object_id").to_pylist()
    assert len(ids) == len(set(ids)) == 256
    assert read_manifest(out)["rows"] == 256
    st = state(out)
    assert set(st["stores"]) == {h} and st["current"] is None
    assert json.loads((state_dir(out) / "morning" / "B.json").read_text())["objects"] == 256
    # and a further restart does nothing
    assert watch(inbox, out, config, once=True, progress=False).skipped == 1


def test_second_watcher_refused(models, tmp_path):
    from scanstream.inference.watch import _exclusive

    root, _ = models
    (tmp_path / "inbox").mkdir()
    config = load_watch_config(root / "overnight.toml")
    state_dir(tmp_path / "c").mkdir()
    with _exclusive(state_dir(tmp_path / "c") / "lock"), pytest.raises(WatchError, match="another watch"):
        watch(tmp_path / "inbox", tmp_path / "c", config, once=True, progress=False)


def test_failed_store_recorded_not_retried(models, tmp_path):
    root, _ = models
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    s = write_store(inbox / "bad.zarr", 64, sheet="X", seed=6)
    # corrupt the crops after completion: classify's digest check fails the task
    for f in (s / "crops").rglob("*"):
        if f.is_file() and f.name != "zarr.json":
            f.write_bytes(b"\0" * 100)
    config = load_watch_config(root / "overnight.toml")
    rep = watch(inbox, tmp_path / "c", config, once=True, progress=False)
    assert len(rep.failed) == 1 and rep.failed[0]["error"]
    again = watch(inbox, tmp_path / "c", config, once=True, progress=False)
    assert again.failed == [] and again.skipped == 1
    assert "Failed stores" in (state_dir(tmp_path / "c") / "morning" / "index.md").read_text()


def test_sheet_summary_arithmetic():
    rec = {"threshold": 1.5, "target": {"kind": "recall", "value": 0.9},
           "achieved": {"precision": 0.5, "precision_ci": [0.4, 0.6], "recall": 0.9, "recall_ci": [0.8, 0.95],
                        "false_positive_rate": 0.01, "false_positive_rate_ci": [0.005, 0.02]},
           "calibration_store": {"alpha": 100, "other": 1700}}
    recs = [
        {"path": "a", "hash": "h1", "finished": "t", "seconds": 10.0, "classify_seconds": 8.0,
         "sheets": {"S": {"objects": 800, "selected": 40}}},
        {"path": "b", "hash": "h2", "finished": "t", "seconds": 5.0, "classify_seconds": 2.0,
         "sheets": {"S": {"objects": 200, "selected": 10}, "T": {"objects": 5, "selected": 0}}},
    ]
    s = sheet_summary("S", recs, threshold=rec, prevalence=None)
    assert (s["objects"], s["selected"], s["seconds"], s["crops_per_s"]) == (1000, 50, 15.0, 100.0)
    assert s["expected_true_alpha"] == {"value": 25.0, "ci": [20.0, 30.0]}
    p = precision_for(rec, "1:183")
    pi = 1 / 184
    assert p["value"] == pytest.approx(0.9 * pi / (0.9 * pi + 0.01 * (1 - pi)))
    assert p["ci"][0] < p["value"] < p["ci"][1]
    assert sheet_summary("S", recs, threshold=None, prevalence=None)["expected_true_alpha"] is None


def test_config_errors(models, tmp_path):
    root, _ = models
    with pytest.raises(ConfigError, match="at least one checkpoint"):
        WatchConfig()
    bad = tmp_path / "bad.toml"
    bad.write_text('[watch]\nmodels = ["m"]\nmodles = 1\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))} \[watch\]: unknown key\(s\) \['modles'\]"):
        load_watch_config(bad)
    bad.write_text("[other]\n")
    with pytest.raises(ConfigError, match=r"no \[watch\] table"):
        load_watch_config(bad)
    bad.write_text("[watch\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_watch_config(bad)
    with pytest.raises(ConfigError, match="poll_seconds"):
        WatchConfig(models=("m",), poll_seconds=0)
    with pytest.raises(ConfigError, match="prevalence"):
        WatchConfig(models=("m",), prevalence="lots")
    (tmp_path / "inbox").mkdir()
    with pytest.raises(ConfigError, match="does not exist"):
        watch(tmp_path / "inbox", tmp_path / "c", WatchConfig(models=(str(tmp_path / "nope.safetensors"),)), once=True)
    cfg = load_watch_config(root / "overnight.toml", prevalence="1:50", models=None)
    assert cfg.prevalence == "1:50" and cfg.models == (str(root / "m.safetensors"),)


def test_inbox_errors(models, tmp_path):
    root, _ = models
    config = load_watch_config(root / "overnight.toml")
    with pytest.raises(WatchError, match="not a directory"):
        watch(tmp_path / "nope", tmp_path / "c", config, once=True)
    (tmp_path / "inbox").mkdir()
    with pytest.raises(WatchError, match="inside the inbox"):
        watch(tmp_path / "inbox", tmp_path / "inbox" / "c", config, once=True)


def test_cli_watch_needs_inbox(capsys):
    assert main(["watch", "--once"]) == 2
    assert "INBOX" in capsys.readouterr().err


def test_cli_watch_once(models, tmp_path, capsys):
    root, _ = models
    (tmp_path / "inbox").mkdir()
    write_store(tmp_path / "inbox" / "s.zarr", 64, sheet="C", seed=8)
    args = ["watch", str(tmp_path / "inbox"), "--out", str(tmp_path / "c"), "--config", str(root / "overnight.toml"), "--once"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "s.zarr: 64 objects" in out and "1 processed, 0 failed, 0 already done" in out
    assert main(args) == 0
    assert "0 processed, 0 failed, 1 already done" in capsys.readouterr().out


@pytest.fixture
def pipe(monkeypatch):
    """pipelines/overnight.py, imported as a module (its directory on the path for the import)."""
    monkeypatch.syspath_prepend(str(ROOT / "pipelines"))
    return importlib.import_module("overnight")


def test_committed_overnight_toml_loads(pipe):
    watch_cfg = load_watch_config(pipe.DEFAULT_CONFIG)
    assert watch_cfg.prevalence == "1:183"
    # README's overnight command runs as written: the files it names are shipped, and the record fits the model
    assert watch_cfg.models and all(Path(m).is_file() for m in watch_cfg.models)
    record = load_threshold(watch_cfg.threshold)
    check_models(record, [checkpoint_hash(m) for m in watch_cfg.models])
    demo = pipe.load_demo_config(pipe.DEFAULT_CONFIG)
    assert demo.backbone in ("mobilenet_v3_small", "resnet18") and demo.input_size == 112
    assert pipe.load_demo_config(pipe.DEFAULT_CONFIG, epochs=2).epochs == 2


def test_demo_uses_the_shipped_model(pipe):
    cfg = pipe.load_demo_config(pipe.DEFAULT_CONFIG)
    assert cfg.model and (pipe.ROOT / cfg.model).is_file() and (pipe.ROOT / cfg.model).parent.name == "models"


def test_demo_config_errors(pipe, tmp_path):
    bad = tmp_path / "o.toml"
    bad.write_text("[demo]\nepoch = 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        pipe.load_demo_config(bad)
    bad.write_text("[demo]\nsheet_objects = 0\n")
    with pytest.raises(ConfigError, match="sheet_objects"):
        pipe.load_demo_config(bad)
    for line, match in (("n = 9", "N"), ("m = 31", "M"), ('lr_schedule = "step"', "lr_schedule"),
                        ("darkness_jitter = 2", "darkness jitter")):
        bad.write_text(f"[demo]\n{line}\n")
        with pytest.raises((ConfigError, InputError), match=match):
            pipe.load_demo_config(bad)


def test_morning_summary_fits_the_sheet_density_when_asked(tmp_path):
    """The selected candidates' prong lengths give the sheet's density, into the JSON and the page."""
    from scanstream.candidates import table as cand
    from scanstream.simulate import simulate_table

    table = simulate_table(objects=300, alpha_fraction=0.7, sheet="RE1", seed=3, conditions={"density": 3.66})
    path = tmp_path / "objects.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    labels = table.column("label").to_numpy()
    part = cand.build_part(table, np.where(labels == 1, 1.0, -1.0).astype(np.float32), threshold=0.0, store=str(path), start=0)
    cand.write_parts(tmp_path / "cands", part, store_hash="h", start=0, metadata={})
    fit = sheet_range_energy(tmp_path / "cands", "RE1", [str(path)])
    assert fit["objects"] == int((labels == 1).sum()) and abs(fit["density"] - 3.66) < 0.1 and fit["density_err"] > 0
    page = summary_markdown({"sheet": "RE1", "objects": 300, "selected": fit["objects"], "threshold": 0.0, "seconds": 1.0,
                             "classify_seconds": 1.0, "crops_per_s": 300.0, "stores": [], "range_energy": fit})
    assert "fitted density (range-energy)" in page and f"{fit['density']:.3f}" in page
    assert "error" in sheet_range_energy(tmp_path / "cands", "OTHER", [str(path)])


def test_a_volume_in_the_inbox_is_picked_then_classified(models, tmp_path):
    """Micrographs in, candidates out: an ingested z-stack volume is picked into a store once, then classified."""
    root, _ = models
    sim, inbox = tmp_path / "sim", tmp_path / "inbox"
    inbox.mkdir()
    assert main(["simulate-volume", str(sim), "--fields", "1", "--seed", "3", "--objects-per-field", "4",
                 "--alpha-fraction", "0.75", "--field-px", "384", "--depth-um", "12", "--no-progress"]) == 0
    assert main(["ingest", str(sim), str(inbox / "S9.zarr"), "--format", "stack"]) == 0
    config = load_watch_config(root / "overnight.toml")
    rep = watch(inbox, tmp_path / "c", config, once=True, progress=False)
    picked = state_dir(tmp_path / "c") / "picked" / "S9.zarr"
    assert [r["status"] for r in rep.processed] == ["done"] and rep.processed[0]["path"] == str(picked.resolve())
    store = open_store(picked)
    assert store.n > 0 and set(store.table.column("sheet").to_pylist()) == {"S9"}
    again = watch(inbox, tmp_path / "c", config, once=True, progress=False)
    assert again.processed == [] and again.skipped == 1  # picked once, classified once
