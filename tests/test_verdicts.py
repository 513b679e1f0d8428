"""scanstream.verdicts: the append-only verdicts table and `verdicts to-store`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scanstream.cli import main
from scanstream.errors import StoreExistsError
from scanstream.store import StoreWriter, open_store
from scanstream.verdicts import (
    VerdictError,
    VerdictLog,
    latest,
    parse_verdict,
    read_records,
    read_verdicts,
    verdicts_to_store,
)


def cand(store, i):
    row = store.table.slice(i, 1).to_pylist()[0]
    return {**row, "score": float(i), "store": str(store.path), "store_index": i}


@pytest.fixture
def reviewed(store_factory, tmp_path):
    store = store_factory("src.zarr", n=20, seed=2)
    log = VerdictLog(tmp_path / "v")
    h = store.content_hash
    log.append(cand(store, 0), "alpha", store_hash=h)
    log.append(cand(store, 1), "not_alpha", store_hash=h)
    log.append(cand(store, 2), "unsure", store_hash=h)
    log.append(cand(store, 3), "alpha", store_hash=h)
    log.append(cand(store, 3), "not alpha", store_hash=h)  # changed mind: latest wins
    return store, tmp_path / "v"


@pytest.mark.parametrize("value,expected", [("alpha", "alpha"), ("not-alpha", "not_alpha"), ("Not Alpha", "not_alpha"),
                                            ("unsure", "unsure")])
def test_parse_verdict(value, expected):
    assert parse_verdict(value) == expected


@pytest.mark.parametrize("value", ["", "yes", "alpha; DROP", "1"])
def test_parse_verdict_bad(value):
    with pytest.raises(VerdictError, match="verdict must be one of"):
        parse_verdict(value)


def test_latest_verdict_wins_across_sessions(reviewed):
    store, vdir = reviewed
    later = VerdictLog(vdir)  # a second session
    later.append(cand(store, 0), "unsure", store_hash=store.content_hash)
    assert len(list(vdir.glob("session-*.jsonl"))) == 2
    got = {r["object_id"]: r["verdict"] for r in read_verdicts(vdir)}
    ids = store.object_ids
    assert got == {ids[0]: "unsure", ids[1]: "not_alpha", ids[2]: "unsure", ids[3]: "not_alpha"}
    assert len(read_records(vdir)) == 6  # nothing rewritten: append-only


def test_latest_is_pure_and_ordered():
    recs = [
        {"object_id": "a", "verdict": "alpha", "time": "2", "session": "s", "seq": 1},
        {"object_id": "a", "verdict": "unsure", "time": "1", "session": "s", "seq": 9},
        {"object_id": "b", "verdict": "alpha", "time": "3", "session": "s", "seq": 2},
    ]
    assert [(r["object_id"], r["verdict"]) for r in latest(recs)] == [("a", "alpha"), ("b", "alpha")]


def test_withdrawn_verdict_restores_the_earlier_one(reviewed):
    store, vdir = reviewed
    log = VerdictLog(vdir)
    ids = store.object_ids
    first = log.append(cand(store, 5), "alpha", store_hash=store.content_hash)
    second = log.append(cand(store, 0), "not_alpha", store_hash=store.content_hash)
    log.withdraw(second)  # undo: the alpha verdict of the first session is current again
    got = {r["object_id"]: r["verdict"] for r in read_verdicts(vdir)}
    assert got[ids[0]] == "alpha" and got[ids[5]] == "alpha"
    log.withdraw(first)  # undo of the only verdict: the object has none
    assert ids[5] not in {r["object_id"] for r in read_verdicts(vdir)}
    assert len(read_records(vdir)) == 5  # the withdrawn records and the withdrawals are not records
    lines = [json.loads(x) for x in log.path.read_text().splitlines()]
    assert [ln.get("withdraws") for ln in lines] == [None, None, {"session": log.session, "seq": 2},
                                                      {"session": log.session, "seq": 1}]


def test_only_a_recorded_verdict_can_be_withdrawn(tmp_path, caplog):
    log = VerdictLog(tmp_path / "v")
    with pytest.raises(VerdictError, match="can be withdrawn"):
        log.withdraw({"object_id": "a", "verdict": "alpha"})
    log.path.write_text('{"object_id": "a", "withdraws": "everything"}\n')
    assert read_records(tmp_path / "v") == [] and "unreadable line" in caplog.text


def test_same_id_in_two_stores_kept_apart():
    recs = [
        {"object_id": "a", "verdict": "alpha", "store_hash": "h1", "time": "1"},
        {"object_id": "a", "verdict": "not_alpha", "store_hash": "h2", "time": "2"},
    ]
    assert len(latest(recs)) == 2


def test_torn_line_is_skipped(reviewed, caplog):
    _, vdir = reviewed
    f = next(vdir.glob("session-*.jsonl"))
    with open(f, "ab") as fh:  # a crash in the middle of writing a line
        fh.write(b'{"object_id": "x", "verd')
    assert len(read_records(vdir)) == 5
    assert "unreadable line" in caplog.text


def test_verdicts_table_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(VerdictError, match="directory"):
        VerdictLog(tmp_path / "f")
    with pytest.raises(VerdictError, match="no such verdicts table"):
        read_verdicts(tmp_path / "missing")


def test_to_store_labels_and_crops(reviewed, tmp_path):
    store, vdir = reviewed
    res = verdicts_to_store(vdir, [store.path], tmp_path / "new.zarr")
    assert (res.alpha, res.not_alpha, res.unsure_skipped, res.rows) == (1, 2, 1, 3)
    new = open_store(tmp_path / "new.zarr")
    ids = store.object_ids
    labels = dict(zip(new.object_ids, new.labels.tolist()))
    assert labels == {ids[0]: 1, ids[1]: 0, ids[3]: 0}
    for j, oid in enumerate(new.object_ids):
        i = ids.index(oid)
        assert np.array_equal(new.read(j, j + 1), store.read(i, i + 1))
        src = store.table.slice(i, 1).to_pylist()[0]
        row = new.table.slice(j, 1).to_pylist()[0]
        assert (row["x_mm"], row["y_mm"], row["sheet"], row["source_index"]) == (src["x_mm"], src["y_mm"], src["sheet"], i)
    assert new.attrs["source"]["stage"] == "verdicts"


def test_to_store_include_unsure(reviewed, tmp_path):
    store, vdir = reviewed
    res = verdicts_to_store(vdir, [store.path], tmp_path / "new.zarr", include_unsure=True)
    assert res.rows == 4
    assert sorted(open_store(tmp_path / "new.zarr").labels.tolist()) == [-1, 0, 0, 1]


def test_to_store_refuses_existing_then_overwrites(reviewed, tmp_path):
    store, vdir = reviewed
    verdicts_to_store(vdir, [store.path], tmp_path / "new.zarr")
    with pytest.raises(StoreExistsError, match="overwrite"):
        verdicts_to_store(vdir, [store.path], tmp_path / "new.zarr")
    VerdictLog(vdir).append(cand(store, 5), "alpha", store_hash=store.content_hash)
    assert verdicts_to_store(vdir, [store.path], tmp_path / "new.zarr", overwrite=True).rows == 4


def test_to_store_resumes_interrupted_write(reviewed, tmp_path):
    store, vdir = reviewed
    out = tmp_path / "new.zarr"
    # an interrupted earlier run: the store exists, left incomplete
    with pytest.raises(RuntimeError), StoreWriter(out, source={"stage": "verdicts"}) as w:
        w.append(store.read(0, 1), [{**store.table.slice(0, 1).to_pylist()[0], "label": 1}])
        raise RuntimeError("killed")
    assert not open_store(out, require_complete=False).complete
    res = verdicts_to_store(vdir, [store.path], out)
    new = open_store(out)
    assert res.rows == 3 and new.n == 3 and len(set(new.object_ids)) == 3


def test_to_store_object_not_in_stores(reviewed, store_factory, tmp_path):
    _, vdir = reviewed
    other = store_factory("other.zarr", n=8, seed=7, sheet="S7")
    with pytest.raises(VerdictError, match="in none of the stores"):
        verdicts_to_store(vdir, [other.path], tmp_path / "new.zarr")
    assert not (tmp_path / "new.zarr").exists()


def test_to_store_only_unsure(store_factory, tmp_path):
    store = store_factory("s.zarr", n=4)
    VerdictLog(tmp_path / "v").append(cand(store, 0), "unsure")
    with pytest.raises(VerdictError, match="only 'unsure'"):
        verdicts_to_store(tmp_path / "v", [store.path], tmp_path / "new.zarr")


def test_to_store_empty_table(store_factory, tmp_path):
    store = store_factory("s.zarr", n=4)
    (tmp_path / "v").mkdir()
    with pytest.raises(VerdictError, match="no verdicts"):
        verdicts_to_store(tmp_path / "v", [store.path], tmp_path / "new.zarr")


def test_cli_to_store_and_show(reviewed, tmp_path, capsys):
    store, vdir = reviewed
    out = tmp_path / "cli.zarr"
    assert main(["verdicts", "to-store", str(vdir), "--store", str(store.path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 labelled crops" in printed and "1 alpha, 2 not alpha" in printed and "1 unsure left out" in printed
    assert open_store(out).n == 3
    assert main(["verdicts", "show", str(vdir), "--format", "json"]) == 0
    assert sorted(r["verdict"] for r in json.loads(capsys.readouterr().out)) == ["alpha", "not_alpha", "not_alpha", "unsure"]


def test_cli_to_store_bad_input_one_line(tmp_path, capsys):
    assert main(["verdicts", "to-store", str(tmp_path / "nope"), "--store", str(tmp_path / "s.zarr"),
                 "--out", str(tmp_path / "o.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such verdicts table" in err
