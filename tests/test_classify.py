"""classify and threshold end to end on a tiny model: Dask tasks, resume, failures, refusals, CLI.

One in-process Dask cluster (two single-thread workers) serves the whole module; the models
are resnet18 at 32 px with BatchNorm statistics taken from real crops, so their scores vary.
Stores have 16-crop chunks in 32-crop shards, so an 80-crop store is three tasks (the last a
partial shard).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from fixtures import draw_crops, make_checkpoint

from scanstream.candidates import table as cand
from scanstream.cli import main
from scanstream.devices import resolve_precision
from scanstream.errors import InputError, StoreError, ThresholdError
from scanstream.inference import engine as inference
from scanstream.inference.classify import classify
from scanstream.inference.scoring import calibrate_threshold, score_store
from scanstream.network.checkpoint import checkpoint_hash
from scanstream.store import StoreWriter, open_store, rows_to_table
from scanstream.threshold import (
    build_threshold_record,
    load_threshold,
    threshold_at_recall,
    write_threshold,
)

N = 80


def make_small_shard_store(path: Path, n: int = N, *, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    labels[:2] = [1, 0]
    rows = [
        {"object_id": f"{path.stem}-{i:04d}", "sheet": "S1" if i < n // 2 else "S2/b", "plate": 9,
         "x_mm": float(i), "y_mm": 0.0, "label": int(labels[i])}
        for i in range(n)
    ]
    with StoreWriter(path, source={"stage": "test"}, chunk_crops=16, shard_crops=32) as w:
        w.append(draw_crops(labels, seed=seed), rows)
    return open_store(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("classify")
    store = make_small_shard_store(root / "sheet.zarr")
    crops = store.read(0, 32)
    a = make_checkpoint(root / "a.safetensors", 1, crops)
    b = make_checkpoint(root / "b.safetensors", 2, crops)
    threads = torch.get_num_threads()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
    scores = {
        "a": score_store(store, [a], device="cpu", precision="fp32"),
        "b": score_store(store, [b], device="cpu", precision="fp32"),
        "ab": score_store(store, [a, b], device="cpu", precision="fp32"),
    }
    known = store.labels >= 0
    record = build_threshold_record(
        store.labels[known], scores["ab"][known], target_kind="recall", target_value=0.8,
        model_hashes=[checkpoint_hash(a), checkpoint_hash(b)],
        calibration_store={"path": str(store.path), "hash": store.content_hash}, score_precision="fp32",
    )
    thr = write_threshold(record, root / "thr.json")
    yield {"root": root, "store": store, "a": a, "b": b, "thr": thr, "scheduler": cluster.scheduler_address,
           "scores": scores}
    cluster.close()
    torch.set_num_threads(threads)


def run(env, out, stores=None, models=None, **kw):
    kw.setdefault("threshold", env["thr"])
    kw.setdefault("device", "cpu")
    kw.setdefault("precision", "fp32")
    return classify(
        stores or [env["store"].path], models or [env["a"], env["b"]], out,
        scheduler=env["scheduler"], progress=False, **kw,
    )


@pytest.fixture(scope="module")
def done(env):
    out = env["root"] / "cands"
    return run(env, out), out


def test_ensemble_score_is_mean_logit(env):
    sa, sb, sab = env["scores"]["a"], env["scores"]["b"], env["scores"]["ab"]
    assert sab.dtype == np.float32 and sab.shape == (N,)
    assert np.std(sa) > 0.01 and not np.allclose(sa, sb)
    np.testing.assert_allclose(sab, (sa + sb) / 2, rtol=1e-5, atol=1e-5)


def test_parallel_readers_keep_order_and_check_digests(env):
    ens = inference.Ensemble([env["a"]], device="cpu", precision="fp32")
    # batches of 20 over reads of 32 (two chunks): sub-batches of 20 and 12, three reads in flight
    got = inference.score_range(ens, env["store"], 0, 64, batch_size=20, readers=3)
    np.testing.assert_allclose(got, env["scores"]["a"][:64], rtol=1e-5, atol=1e-5)


def test_cpu_reads_between_blocks_keep_order(env):
    ens = inference.Ensemble([env["a"]], device="cpu", precision="fp32")
    # an unaligned start (first read ends on the chunk boundary), sub-batches of 20 within reads
    got = inference.score_range(ens, env["store"], 5, 70, batch_size=20)
    np.testing.assert_allclose(got, env["scores"]["a"][5:70], rtol=1e-5, atol=1e-5)


def test_calibrate_threshold_reaches_target_on_calibration_store(env):
    s = env["store"]
    rec = calibrate_threshold(s.path, [env["a"]], target_recall=0.8, device="cpu", precision="fp32")
    scores, y = env["scores"]["a"], s.labels
    assert rec["threshold"] == pytest.approx(threshold_at_recall(y, scores, 0.8), abs=1e-6)
    recall = ((scores >= rec["threshold"]) & (y == 1)).sum() / (y == 1).sum()
    assert recall >= 0.8 and rec["achieved"]["recall"] == pytest.approx(recall)
    assert rec["calibration_store"]["hash"] == s.content_hash
    assert rec["calibration_store"]["alpha"] == int((y == 1).sum())
    assert rec["score_precision"] == "fp32"
    assert rec["model_hashes"] == [checkpoint_hash(env["a"])]


def test_calibrate_threshold_refuses_unlabelled_store(env, store_factory):
    s = store_factory("unlabelled.zarr", n=8, labelled=False)
    with pytest.raises(ThresholdError, match="no crops labelled alpha"):
        calibrate_threshold(s.path, [env["a"]], target_recall=0.9, device="cpu")


def test_complete_table_has_one_row_per_crop(env, done):
    res, out = done
    assert res.complete and not res.failed and res.rows == N and res.processed == N and res.tasks == 3
    t = cand.read_candidates(out)
    s = env["store"]
    assert t.num_rows == N
    assert sorted(t.column("store_index").to_pylist()) == list(range(N))
    assert sorted(t.column("object_id").to_pylist()) == sorted(s.object_ids)
    assert set(t.column("store").to_pylist()) == {str(s.path.resolve())}
    # rows agree with the store's object table and with in-process scoring
    order = np.argsort(t.column("store_index").to_numpy())
    t = t.take(pa.array(order))
    assert t.column("object_id").to_pylist() == s.object_ids
    assert t.column("sheet").to_pylist() == s.table.column("sheet").to_pylist()
    expected = env["scores"]["ab"]
    np.testing.assert_allclose(t.column("score").to_numpy(), expected, rtol=1e-5, atol=1e-5)
    thr = load_threshold(env["thr"])["threshold"]
    assert t.column("selected").to_pylist() == (t.column("score").to_numpy() >= thr).tolist()
    assert res.selected == int((t.column("score").to_numpy() >= thr).sum())
    for sheet in ("S1", "S2/b"):
        sub = t.filter(pa.compute.equal(t.column("sheet"), sheet))
        ranks = sub.column("rank").to_numpy()
        assert sorted(ranks.tolist()) == list(range(1, sub.num_rows + 1))
        assert (np.diff(sub.column("score").to_numpy()[np.argsort(ranks)]) <= 0).all()
    assert {p.parent.name for p in cand.part_files(out)} == {"sheet-S1", "sheet-S2%2Fb"}


def test_threshold_record_in_schema_metadata_pyarrow_and_duckdb(env, done):
    _, out = done
    record = load_threshold(env["thr"])
    part = str(cand.part_files(out)[0])
    meta = json.loads(pq.read_schema(part).metadata[b"scanstream"])
    assert meta["threshold"] == record
    assert meta["model_hashes"] == sorted(record["model_hashes"])
    assert meta["store_hashes"] == {str(env["store"].path.resolve()): env["store"].content_hash}
    assert meta["version"] and meta["run_id"] and meta["time"]
    rows = duckdb.connect().execute("SELECT key, value FROM parquet_kv_metadata(?)", [part]).fetchall()
    assert json.loads(dict(rows)[b"scanstream"])["threshold"] == record
    assert cand.read_metadata(out) == meta
    manifest = cand.read_manifest(out)
    assert manifest["rows"] == N and manifest["run_id"] == meta["run_id"] and len(manifest["parts"]) == 4


def test_rerun_of_complete_table_scores_nothing(env, done):
    _, out = done
    res = run(env, out)
    assert res.complete and res.processed == 0 and res.tasks == 0 and res.rows == N


def test_resume_after_interruption_scores_only_missing_ranges(env):
    out = env["root"] / "resume"
    first = run(env, out)
    run_id = first.run_id
    # a run killed after its first task: later parts and the manifest are absent, a temporary
    # file of the task in flight is left behind
    for p in cand.part_files(out):
        if not p.name.endswith("-000000000000.parquet"):
            p.unlink()
    (out / cand.MANIFEST).unlink()
    (out / "sheet-S2%2Fb" / ".part-x-000000000064.parquet.tmp-999").write_bytes(b"half")
    res = run(env, out)
    assert res.complete and res.processed == N - 32 and res.tasks == 2 and res.run_id == run_id
    t = cand.read_candidates(out)
    assert t.num_rows == N and len(set(t.column("object_id").to_pylist())) == N
    assert not list(out.glob("**/.*tmp*"))


def test_models_load_once_per_worker_and_never_travel(env):
    before = inference.LOADS
    run(env, env["root"] / "loads", models=[env["b"]], threshold=None)
    assert inference.LOADS - before == 1  # three tasks, one process: one load
    spec = inference.TaskSpec(
        store="s.zarr", store_hash="h", start=0, stop=1024, checkpoints=(str(env["a"]),), model_hashes=("x",),
        out="o", threshold=0.0, metadata=json.dumps({"threshold": load_threshold(env["thr"])}),
    )
    assert len(pickle.dumps(spec)) < 8192  # paths and hashes, no weights


def test_no_threshold_leaves_selected_null_and_auto_asks_the_workers(env):
    res = run(env, env["root"] / "nothr", models=[env["b"]], threshold=None, device="auto", precision="auto")
    t = cand.read_candidates(res.out)
    assert res.complete and t.column("selected").null_count == N
    meta = cand.read_metadata(res.out)
    assert meta["threshold"] is None
    # the workers have no GPU here: auto means the CPU, in the precision auto picks for this CPU
    assert meta["device"] == "cpu" and meta["score_precision"] == resolve_precision("auto", "cpu")


def test_gpu_tasks_refused_when_no_worker_offers_a_gpu(env):
    from distributed import Client

    from scanstream.inference.classify import _Job, _submit

    job = _Job(env["root"], {}, (), (), None, batch_size=8, verify=True, crops_per_task=None)
    with Client(env["scheduler"]) as client, pytest.raises(InputError, match="--resources GPU=1"):
        _submit(client, [object()], job, {}, torch.device("cuda"), "bf16", False)


def _broken_copy(env, name):
    path = env["root"] / name
    shutil.copytree(env["store"].path, path)
    return path


def test_missing_shard_fails_only_its_task_and_rerun_completes(env):
    path = _broken_copy(env, "missing.zarr")
    shard = path / "crops" / "c" / "1" / "0" / "0" / "0"
    keep = shard.read_bytes()
    shard.unlink()
    out = env["root"] / "missing-out"
    res = run(env, out, stores=[path])
    assert not res.complete and len(res.failed) == 1
    assert str(path.resolve()) in res.failed[0] and "[32, 64)" in res.failed[0] and "missing shard" in res.failed[0]
    assert res.processed == N - 32 and not (out / cand.MANIFEST).exists()
    shard.write_bytes(keep)  # repair
    res = run(env, out, stores=[path])
    assert res.complete and res.processed == 32 and res.rows == N


def test_corrupt_shard_fails_by_name(env):
    path = _broken_copy(env, "corrupt.zarr")
    shard = path / "crops" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    res = run(env, env["root"] / "corrupt-out", stores=[path])
    assert len(res.failed) == 1 and "[0, 32)" in res.failed[0] and str(path.resolve()) in res.failed[0]
    assert res.processed == N - 32


@pytest.mark.parametrize("digests", ["fast", "blake2b only"])  # a store of this release, one of an earlier one
def test_corrupt_last_partial_shard_is_caught(env, digests):
    path = _broken_copy(env, f"tail-{digests}.zarr".replace(" ", "-"))
    if digests != "fast":
        saved = json.loads((path / "digests.json").read_text())
        saved.pop("fast"), saved.pop("fast_blocks")
        (path / "digests.json").write_text(json.dumps(saved))
    store = open_store(path)
    arr = zarr.open_array(str(path / "crops"), mode="r+")
    arr[70] = np.clip(store.read(70, 71)[0].astype(int) + 1, 0, 255).astype(np.uint8)  # valid zstd, wrong pixels
    res = run(env, env["root"] / f"tail-out-{len(digests)}", stores=[path])
    assert len(res.failed) == 1 and "[64, 80)" in res.failed[0] and "digest" in res.failed[0]
    assert res.processed == N - 16


def test_refuses_threshold_of_other_models(env):
    with pytest.raises(ThresholdError, match="calibrated for models"):
        run(env, env["root"] / "x1", models=[env["a"]])
    assert not (env["root"] / "x1").exists()


def test_refuses_store_with_other_crop_shape(env):
    path = env["root"] / "small.zarr"
    g = zarr.open_group(str(path), mode="w")
    g.create_array("crops", shape=(4, 112, 112, 3), chunks=(4, 112, 112, 3), dtype="uint8")
    g.attrs.update({"scanstream_schema": 1, "complete": True, "content_hash": "c" * 32, "chunk_crops": 4})
    pq.write_table(rows_to_table([{"object_id": f"o{i}"} for i in range(4)]), path / "objects.parquet")
    with pytest.raises(StoreError, match=r"small.zarr: crops are uint8 \(112, 112, 3\), but the models take"):
        run(env, env["root"] / "x2", stores=[path])


def test_refuses_out_holding_another_runs_table(env, done):
    _, out = done
    with pytest.raises(InputError, match="holds a candidate table made with other model_hashes"):
        run(env, out, models=[env["b"]], threshold=None)


def test_refuses_same_checkpoint_twice(env):
    with pytest.raises(InputError, match="same checkpoint is given twice"):
        run(env, env["root"] / "x3", models=[env["a"], env["a"]], threshold=None)


def test_refuses_copy_of_a_store(env, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(env["store"].path, copy)
    with pytest.raises(InputError, match="same content as"):
        run(env, tmp_path / "o", stores=[env["store"].path, copy])


def test_adding_a_store_extends_a_complete_table_and_reranks(env, store_factory):
    other = store_factory("other.zarr", n=40, sheet="S1", seed=3)
    out = env["root"] / "two"
    first = run(env, out, stores=[other.path])
    assert first.complete and first.rows == 40
    res = run(env, out, stores=[env["store"].path])  # only the new store on the command line
    assert res.complete and res.processed == N and res.rows == N + 40 and res.run_id != first.run_id
    t = cand.read_candidates(out)
    assert t.num_rows == N + 40 and len(set(zip(t.column("store").to_pylist(), t.column("store_index").to_pylist()))) == N + 40
    s1 = t.filter(pa.compute.equal(t.column("sheet"), "S1"))
    assert sorted(s1.column("rank").to_pylist()) == list(range(1, N // 2 + 40 + 1))  # ranked across stores
    assert set(cand.read_manifest(out)["stores"]) == {str(other.path.resolve()),
                                                                            str(env["store"].path.resolve())}



def test_adding_a_store_of_another_sheet_leaves_the_other_sheets_files_alone(env, store_factory):
    out = env["root"] / "incremental"
    assert run(env, out).complete
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cand.part_files(out)}
    other = store_factory("s9.zarr", n=40, sheet="S9", seed=4)
    res = run(env, out, stores=[other.path])
    assert res.complete and res.rows == N + 40
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cand.part_files(out) if p in before} == before
    s9 = [p for p in cand.part_files(out) if p.parent.name == "sheet-S9"]
    assert s9 and sorted(pa.concat_tables([pq.read_table(p) for p in s9]).column("rank").to_pylist()) == list(range(1, 41))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # staging and old sheets gone
    assert "staging" not in cand.read_side(out, cand.RUN_FILE)

@pytest.mark.slow
def test_cli_threshold_and_classify(env, capsys):
    root = env["root"]
    thr = root / "cli-thr.json"
    rc = main(["threshold", str(env["store"].path), "--model", str(env["b"]),
               "--target-precision", "0.5", "--prevalence", "1:183", "--device", "cpu", "--precision", "fp32",
               "--out", str(thr)])
    assert rc == 0
    rec = json.loads(thr.read_text())
    assert rec["target"] == {"kind": "precision", "value": 0.5}
    assert [p["prevalence"] for p in rec["prevalence_projection"]] == ["1:183"]
    assert "at prevalence 1:183" in capsys.readouterr().out
    rc = main(["classify", str(env["store"].path), "--model", str(env["b"]), "--threshold", str(thr),
               "--out", str(root / "cli-out"), "--scheduler", env["scheduler"], "--device", "cpu",
               "--precision", "fp32", "--batch-size", "20", "--crops-per-task", "40"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["complete"] and summary["rows"] == N and summary["tasks_now"] == 2  # 40 -> whole shards of 32: 64
    assert summary["selected"] == int((env["scores"]["b"] >= rec["threshold"]).sum())
    assert "Dask dashboard: http" in captured.err


def test_cli_exit_codes_on_failure_and_refusal(env, capsys):
    path = _broken_copy(env, "cli-missing.zarr")
    (path / "crops" / "c" / "2" / "0" / "0" / "0").unlink()
    rc = main(["classify", str(path), "--model", str(env["a"]), str(env["b"]), "--threshold", str(env["thr"]),
               "--out", str(env["root"] / "cli-fail"), "--scheduler", env["scheduler"], "--precision", "fp32"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 task(s) failed" in err and "[64, 80)" in err and "rerun the same command" in err
    rc = main(["classify", str(env["store"].path), "--model", str(env["a"]), "--threshold", str(env["thr"]),
               "--out", str(env["root"] / "cli-refuse"), "--scheduler", env["scheduler"]])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("scanstream classify: error:") and "calibrated for models" in err
    assert len(err.strip().splitlines()) == 1
