"""scanstream.training.search: the grid on Dask, results, heatmap, best setting, TEST scoring, resume.

Orchestration tests pass fast stand-ins for training and scoring to run_search (threads-only Dask
cluster, same process); one end-to-end test trains real tiny models on tiny stores.
"""

from __future__ import annotations

import json
import os
import types
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from scanstream.errors import ConfigError, InputError, PipelineError
from scanstream.executor import dask_client
from scanstream.training import search as sr
from scanstream.training.config import PAPER_MS, PAPER_NS, SearchConfig, TrainConfig, default_grid, parse_int_list


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    c = Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None)
    yield c
    c.close()


@pytest.fixture
def stores(store_factory):
    return {
        "train": store_factory("train.zarr", n=12, seed=1),
        "valid": store_factory("valid.zarr", n=12, seed=2),
        "test": store_factory("test.zarr", n=24, seed=3, alpha_fraction=0.3),
    }


def fake_ap(n, m, seed):
    return 0.5 + 0.02 * n + 0.001 * m + 0.003 * seed


#: What the stand-ins below were called with (reset by the ``fake`` fixture). Module-level functions
#: and state: Dask pickles a task's function, and a module-level one unpickles as itself.
CALLS: dict = {}


def fake_train(config, progress=True):
    """Stands in for scanstream.training.loop.train."""
    if config.n == 99:
        raise RuntimeError("boom")
    assert isinstance(config, TrainConfig) and config.loader == "local"
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck = out / "model.safetensors"
    ck.write_bytes(f"{config.n}-{config.m}-{config.seed}".encode())
    CALLS["train"].append((config.n, config.m, config.seed))
    CALLS.setdefault("schedules", []).append(config.lr_schedule)
    CALLS.setdefault("darkness", []).append(config.darkness_jitter)
    CALLS.setdefault("threads", []).append((config.workers, config.torch_threads))
    ap = fake_ap(config.n, config.m, config.seed)
    return types.SimpleNamespace(checkpoint=ck, history=[{"epoch": 0}], best_epoch=config.seed + 1,
                                 metrics={"val_ap": ap, "val_loss": 1 - ap, "epochs_run": 3})


def fake_score_store(store, checkpoints, *, device="auto", batch_size=64):
    """Stands in for scanstream.inference.scoring.score_store."""
    CALLS["score"].append([Path(c).read_bytes().decode() for c in checkpoints])
    seed = int(Path(checkpoints[0]).read_bytes().decode().split("-")[2])
    labels = store.labels
    rng = np.random.default_rng(seed)
    return (2.0 * (labels == 1) + rng.normal(0, 1, len(labels))).astype(np.float32)


#: run_search's collaborators replaced by the stand-ins (same process: a threads-only cluster)
FAKES = {"trainer": fake_train, "scorer": fake_score_store}


@pytest.fixture
def fake():
    """The calls of the stand-ins in :data:`FAKES`, recorded afresh for each test."""
    CALLS.clear()
    CALLS.update(train=[], score=[])
    return CALLS


#: keyword arguments of config() that are the trials' shared TrainConfig options
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


def config(stores, out, **kw):
    train = {"train_store": str(stores["train"].path), "valid_store": str(stores["valid"].path), "out_dir": str(out),
             "max_epochs": 2}
    train.update({k: kw.pop(k) for k in list(kw) if k in TRAIN_FIELDS})
    grid = {"ns": (1, 3), "ms": (5, 10), "seeds": 2, **kw}
    return SearchConfig(base=TrainConfig(**train), out_dir=str(out), **grid)


def test_grid_results_summary_best_and_test(stores, fake, client, tmp_path):
    cfg = config(stores, tmp_path / "s", test_store=str(stores["test"].path))
    res = sr.run_search(cfg, client=client, progress=False, **FAKES)
    assert sorted(fake["train"]) == sorted(cfg.trials()) and len(res.trained) == 8 and res.resumed == []
    assert res.results.num_rows == 8
    assert res.best == (3, 10)  # highest fake AP
    row = next(r for r in res.summary if (r["n"], r["m"]) == (1, 5))
    aps = [fake_ap(1, 5, s) for s in range(2)]
    assert row["val_ap_mean"] == pytest.approx(np.mean(aps)) and row["val_ap_std"] == pytest.approx(np.std(aps, ddof=1))
    assert row["trials"] == 2 and row["best_epoch_mean"] == pytest.approx(1.5)
    for f in ("results.csv", "results.parquet", "summary.csv", "heatmap.png", "report.md", "metrics.json",
              "test_scores.parquet", "search_config.json"):
        assert (res.out / f).exists(), f
    for n, m, s in cfg.trials():
        done = json.loads((res.out / "trials" / f"n{n}_m{m}_s{s}" / "done.json").read_text())
        assert done["val_ap"] == pytest.approx(fake_ap(n, m, s))
    # TEST: both best-setting models one by one, ensemble = mean logit
    from scanstream import metrics as mt

    y = stores["test"].labels
    per = [2.0 * (y == 1) + np.random.default_rng(s).normal(0, 1, len(y)) for s in range(2)]
    per = [p.astype(np.float32) for p in per]
    t = res.test
    assert t["ap_per_model"]["n3_m10_s0"] == pytest.approx(mt.average_precision(y, per[0]))
    assert t["ap"]["value"] == pytest.approx(np.mean([mt.average_precision(y, p) for p in per]))
    ens = np.mean(np.stack(per).astype(np.float64), axis=0).astype(np.float32)
    assert t["ap_ensemble"] == pytest.approx(mt.average_precision(y, ens))
    assert [c.parent.name for c in res.best_checkpoints] == ["n3_m10_s0", "n3_m10_s1"]
    md = res.report.read_text()
    assert "N = 3, M = 10" in md and "](heatmap.png)" in md


def test_resume_does_not_retrain_or_rescore(stores, fake, client, tmp_path):
    cfg = config(stores, tmp_path / "s", test_store=str(stores["test"].path))
    sr.run_search(cfg, client=client, progress=False, **FAKES)
    n_train, n_score = len(fake["train"]), len(fake["score"])
    res = sr.run_search(cfg, client=client, progress=False, **FAKES)
    assert len(fake["train"]) == n_train and len(fake["score"]) == n_score
    assert res.trained == [] and len(res.resumed) == 8 and res.results.num_rows == 8


def test_extending_the_grid_trains_only_new_trials(stores, fake, client, tmp_path):
    sr.run_search(config(stores, tmp_path / "s", ns=(1,)), client=client, progress=False, **FAKES)
    fake["train"].clear()
    res = sr.run_search(config(stores, tmp_path / "s", ns=(1, 3)), client=client, progress=False, **FAKES)
    assert sorted(fake["train"]) == [(3, 5, 0), (3, 5, 1), (3, 10, 0), (3, 10, 1)]
    assert len(res.resumed) == 4 and res.results.num_rows == 8


def test_an_interrupted_trial_is_rerun(stores, fake, client, tmp_path):
    cfg = config(stores, tmp_path / "s", ns=(1,), ms=(5,))
    sr.run_search(cfg, client=client, progress=False, **FAKES)
    (tmp_path / "s" / "trials" / "n1_m5_s1" / "done.json").unlink()  # killed before its marker
    fake["train"].clear()
    res = sr.run_search(cfg, client=client, progress=False, **FAKES)
    assert fake["train"] == [(1, 5, 1)] and res.trained == ["n1_m5_s1"]


def test_resume_with_other_settings_is_refused(stores, fake, client, tmp_path):
    sr.run_search(config(stores, tmp_path / "s", ns=(1,), ms=(5,)), client=client, progress=False, **FAKES)
    with pytest.raises(ConfigError, match="max_epochs: 2 -> 3"):
        sr.run_search(config(stores, tmp_path / "s", ns=(1,), ms=(5,), max_epochs=3), client=client, progress=False,
                      **FAKES)


@pytest.mark.parametrize("name, calls_key, default, other", [("lr_schedule", "schedules", "constant", "cosine"),
                                                          ("darkness_jitter", "darkness", 0.0, 0.3)])
def test_option_reaches_trials_and_searches_written_before_it_existed_resume(stores, fake, client, tmp_path, name,
                                                                            calls_key, default, other):
    cfg = config(stores, tmp_path / "s", ns=(1,), ms=(5,))
    sr.run_search(cfg, client=client, progress=False, **FAKES)
    assert fake[calls_key] == [default, default]
    # a search written before the option existed (no such key anywhere) resumes without retraining
    for f in [tmp_path / "s" / "search_config.json", *(tmp_path / "s" / "trials").glob("*/done.json")]:
        d = json.loads(f.read_text())
        (d.get("shared") or d["identity"]["train_config"]).pop(name, None)
        f.write_text(json.dumps(d))
    fake["train"].clear()
    assert sr.run_search(cfg, client=client, progress=False, **FAKES).trained == [] and fake["train"] == []
    with pytest.raises(ConfigError, match=f"{name}: {default!r} -> {other!r}"):
        sr.run_search(config(stores, tmp_path / "s", ns=(1,), ms=(5,), **{name: other}), client=client,
                      progress=False, **FAKES)
    sr.run_search(config(stores, tmp_path / "c", ns=(1,), ms=(5,), **{name: other}), client=client, progress=False,
                  **FAKES)
    # two workers: the trials may finish in either order
    assert sorted(fake["train"]) == [(1, 5, 0), (1, 5, 1)] and fake[calls_key][-2:] == [other, other]


def test_failed_trial_reported_others_kept(stores, fake, client, tmp_path):
    cfg = config(stores, tmp_path / "s", ns=(1, 99), ms=(5,), seeds=1)
    with pytest.raises(PipelineError, match="1 of 2 search trials failed.*n99_m5_s0: RuntimeError: boom"):
        sr.run_search(cfg, client=client, progress=False, **FAKES)
    assert (tmp_path / "s" / "trials" / "n1_m5_s0" / "done.json").exists()
    assert (tmp_path / "s" / "results.csv").read_text().count("\n") == 2  # header + the finished trial


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"ms": (31,)}, "0..30"),
        ({"ms": (-1,)}, "0..30"),
        ({"ns": (-2,)}, ">= 0"),
        ({"ns": ()}, "empty"),
        ({"ns": (2, 2)}, "duplicates"),
        ({"seeds": 0}, "seeds"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"threads": 0}, "threads"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"darkness_jitter": 0.95}, "darkness jitter"),
    ],
)
def test_bad_config(tmp_path, kw, match):
    grid = {k: v for k, v in kw.items() if k not in TRAIN_FIELDS}
    base = TrainConfig(train_store="t", valid_store="v", out_dir=str(tmp_path),
                       **{k: v for k, v in kw.items() if k in TRAIN_FIELDS})
    with pytest.raises(ConfigError, match=match):
        SearchConfig(base=base, out_dir=str(tmp_path), **grid)


def test_parse_int_list():
    assert parse_int_list("2, 4,6", "--n") == (2, 4, 6)
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_int_list("2,x", "--n")


def test_missing_store_fails_before_any_trial(stores, fake, tmp_path):
    cfg = config(stores, tmp_path / "s", valid_store=str(tmp_path / "nope.zarr"))
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        sr.run_search(cfg, progress=False, **FAKES)
    assert fake["train"] == [] and not (tmp_path / "s").exists()


def test_unlabelled_store_refused(stores, store_factory, fake, tmp_path):
    unl = store_factory("unl.zarr", n=8, labelled=False)
    with pytest.raises(InputError, match="labelled alpha decays"):
        sr.run_search(config(stores, tmp_path / "s", valid_store=str(unl.path)), progress=False, **FAKES)


def test_pure_core():
    recs = [{"key": sr.trial_key(n, m, s), "n": n, "m": m, "seed": s, "val_ap": fake_ap(n, m, s), "best_epoch": 1}
            for n in (2, 4) for m in (6,) for s in range(3)]
    t = sr.results_table(recs)
    summ = sr.summarize(t)
    assert [(r["n"], r["m"], r["trials"]) for r in summ] == [(2, 6, 3), (4, 6, 3)]
    assert sr.best_setting(summ) == (4, 6)
    mean, _std = sr.heatmap_arrays(summ, [2, 4, 8], [6, 12])
    assert mean[1, 0] == pytest.approx(np.mean([fake_ap(4, 6, s) for s in range(3)]))
    assert np.isnan(mean[2, 0]) and np.isnan(mean[0, 1])
    with pytest.raises(InputError):
        sr.best_setting([])
    assert default_grid(True) == (PAPER_NS, PAPER_MS, 4)


@pytest.mark.slow
def test_real_tiny_search_end_to_end_then_resume(store_factory, client, tmp_path, capsys):
    """Real training runs (tiny stores, tiny network, 2 epochs); a rerun retrains nothing."""
    from scanstream import metrics as mt
    from scanstream.cli import main
    from scanstream.inference.scoring import score_store
    from scanstream.store import open_store

    tr = store_factory("tr.zarr", n=32, seed=1, alpha_fraction=0.4)
    va = store_factory("va.zarr", n=16, seed=2, alpha_fraction=0.4)
    te = store_factory("te.zarr", n=16, seed=3, alpha_fraction=0.3)
    out = tmp_path / "search"
    base = TrainConfig(train_store=str(tr.path), valid_store=str(va.path), out_dir=str(out), backbone="mobilenet_v3_small",
                       input_size=32, max_epochs=2, batch_size=16, warmup_epochs=0, device="cpu")
    cfg = SearchConfig(base=base, out_dir=str(out), ns=(1, 2), ms=(6,), seeds=2, test_store=str(te.path), threads=1)
    res = sr.run_search(cfg, client=client, progress=False)
    assert res.results.num_rows == 4 and len(res.trained) == 4
    assert [(r["n"], r["m"], r["trials"]) for r in res.summary] == [(1, 6, 2), (2, 6, 2)]
    for r in res.results.to_pylist():
        assert 0 <= r["val_ap"] <= 1 and 0 <= r["best_epoch"] < 2
        assert (out / "trials" / r["key"] / r["checkpoint"]).exists()
    mean, std = sr.heatmap_arrays(res.summary, cfg.ns, cfg.ms)
    assert mean.shape == (2, 1) and np.all(np.isfinite(mean)) and np.all(np.isfinite(std))
    assert res.heatmap.exists()
    # TEST: single models and the ensemble as score_store scores them
    y = open_store(te.path).labels
    ens = score_store(open_store(te.path), res.best_checkpoints, device="cpu")
    assert res.test["ap_ensemble"] == pytest.approx(mt.average_precision(y, ens), abs=1e-6)
    single = score_store(open_store(te.path), res.best_checkpoints[:1], device="cpu")
    assert res.test["ap_per_model"][res.best_checkpoints[0].parent.name] == pytest.approx(mt.average_precision(y, single))

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/*")}
    res2 = sr.run_search(cfg, client=client, progress=False)
    assert res2.trained == [] and len(res2.resumed) == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/*")} == stamps
    assert res2.results.to_pylist() == res.results.to_pylist()

    # the verb resumes the same search (every trial finished: no cluster, no training)
    rc = main(["search", str(tr.path), str(va.path), "--out", str(out), "--n", "1,2", "--m", "6",
               "--seeds", "2", "--backbone", "mobilenet_v3_small", "--input-size", "32", "--max-epochs", "2",
               "--batch-size", "16", "--warmup-epochs", "0", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and "0 trained, 4 already finished" in text and "best: N=" in text


def test_cpu_trial_leaves_a_core_to_its_loader():
    assert sr.trial_threads(2, device="cpu") == 1
    assert sr.trial_threads(8, device="cpu", workers=2) == 6
    assert sr.trial_threads(1, device="cpu") == 1


def test_trial_threads_default_and_explicit(stores, tmp_path, fake, client):
    share = max(1, (os.cpu_count() or 1) // len(client.scheduler_info(n_workers=-1)["workers"]))
    sr.run_search(config(stores, tmp_path / "a", device="cpu"), client=client, progress=False, **FAKES)
    assert fake["threads"] and all(t == (1, max(1, share - 1)) for t in fake["threads"])
    fake["threads"].clear()
    sr.run_search(config(stores, tmp_path / "b", device="cpu", threads=3), client=client, progress=False, **FAKES)
    assert fake["threads"] and all(t == (1, 3) for t in fake["threads"])


@pytest.mark.slow
def test_started_workers_keep_glibcs_malloc_trim_default(monkeypatch):
    # Dask's nanny default (65536) made torch steps fault every buffer back in (scanstream.executor)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask_client(None, workers=1) as client:
        env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert list(env.values()) == [None]
