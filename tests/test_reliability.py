"""Reliability (issue 19): nothing half-done is served, no user file is deleted or read from
outside its source, damaged data is refused, and every bad input is one line and status 2.

Each test is one case of the issue's list; ``pytest -m reliability`` runs them alone.
``benchmarks/faults.py`` runs the wider campaign (more bad inputs, kill -9 of classify and
simulate) and prints the totals.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from fixtures import drop_table_digest, make_store
from PIL import Image

from scanstream.candidates import table as cand
from scanstream.candidates.query import CandidateFilter, query_candidates
from scanstream.cli import main, run_verb
from scanstream.errors import IncompleteTableError, IngestError, InputError, StoreError, StoreExistsError
from scanstream.ingest.images import IngestConfig, ingest
from scanstream.review.gallery import write_gallery
from scanstream.review.server import ReviewSession
from scanstream.store import StoreWriter, create_store, open_store
from scanstream.store.writer import _aside, _recover_swap
from scanstream.training.config import TrainConfig
from scanstream.training.run import check_config

pytestmark = pytest.mark.reliability


def one_line_error(capsys, rc: int, verb: str) -> str:
    """The stderr of a refused command: exactly one line, ``scanstream VERB: error: ...``, status 2."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"scanstream {verb}: error: "), err
    assert "Traceback" not in err
    return err


# -- 1. readers refuse a candidate table without its manifest -----------------------------------
@pytest.fixture
def table(tmp_path):
    """A candidate table of one store's 16 rows, parts written, not finalized; and the store."""
    store = make_store(tmp_path / "s.zarr", n=16)
    scores = np.linspace(-2, 2, store.n).astype(np.float32)
    part = cand.build_part(store.table, scores, threshold=0.0, store=str(store.path), start=0)
    out = tmp_path / "cands"
    cand.write_parts(out, part, store_hash=store.content_hash, start=0, metadata={"run_id": "t"})
    return out, store


def test_readers_refuse_a_table_without_its_manifest(table, tmp_path):
    out, store = table
    with pytest.raises(IncompleteTableError, match=r"cands: candidate table is incomplete: _manifest.parquet is missing"):
        query_candidates(out)
    with pytest.raises(IncompleteTableError, match="--allow-partial"):
        write_gallery(out, tmp_path / "g", stores=[store.path])
    with pytest.raises(IncompleteTableError):
        ReviewSession(out, tmp_path / "v", stores=[store.path])
    assert not (tmp_path / "g").exists() and not (tmp_path / "v").exists()
    assert query_candidates(out, allow_partial=True).num_rows == 16
    cand.finalize(out, stores={str(store.path): (store.content_hash, store.n)}, metadata={"run_id": "t"})
    assert query_candidates(out, CandidateFilter(top=3)).column("rank").to_pylist() == [1, 2, 3]


def test_query_cli_refuses_a_partial_table_and_labels_it_when_allowed(table, capsys):
    out, _ = table
    err = one_line_error(capsys, main(["query", str(out), "--top", "2"]), "query")
    assert str(out) in err and "_manifest.parquet" in err
    assert main(["query", str(out), "--top", "2", "--allow-partial"]) == 0
    captured = capsys.readouterr()
    assert "(2 rows)" in captured.out and "PARTIAL" in captured.err


def test_gallery_and_review_label_a_partial_table(table, tmp_path):
    out, store = table
    result = write_gallery(out, tmp_path / "g", stores=[store.path], allow_partial=True)
    assert result.partial and "PARTIAL" in (tmp_path / "g" / "index.html").read_text()
    session = ReviewSession(out, tmp_path / "v", stores=[store.path], allow_partial=True)
    assert session.partial and "PARTIAL" in session.page()


# -- 2. --overwrite replaces only a crop store, and only once the new one is complete --------
def test_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path, capsys):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "chapter1.tex").write_text("years of work")
    crops = np.zeros((2, 224, 224, 3), np.uint8)
    rows = [{"object_id": f"o{i}"} for i in range(2)]
    with pytest.raises(StoreExistsError, match="not a scanstream crop store") as info:
        create_store(user, crops, rows, source={}, overwrite=True)
    assert (user / "chapter1.tex").read_text() == "years of work"
    with pytest.raises(StoreExistsError) as info:
        StoreWriter(user, source={})
    assert "--overwrite" not in str(info.value)  # the refusal does not invite deleting it
    rc = main(["simulate", str(user), "--objects", "2", "--alpha-fraction", "0.5", "--sheet", "A", "--overwrite"])
    assert "not a scanstream crop store" in one_line_error(capsys, rc, "simulate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


def test_overwrite_of_other_outputs_refuses_what_scanstream_did_not_write(tmp_path, capsys):
    """simulate --features-only and simulate-volume replace only their own outputs."""
    notes = tmp_path / "notes.parquet"
    notes.write_bytes(b"not a table")
    rc = main(["simulate", str(notes), "--objects", "4", "--alpha-fraction", "0.5", "--sheet", "A", "--features-only",
               "--overwrite"])
    assert "not a features-only table" in one_line_error(capsys, rc, "simulate")
    assert notes.read_bytes() == b"not a table"
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.png").write_bytes(b"meow")
    rc = main(["simulate-volume", str(photos), "--fields", "1", "--seed", "1", "--overwrite"])
    err = one_line_error(capsys, rc, "simulate-volume")
    assert "not a simulated volume" in err and "--overwrite" not in err
    assert sorted(q.name for q in photos.iterdir()) == ["cat.png"]


def test_a_failed_overwrite_keeps_the_old_store(tmp_path):
    old = make_store(tmp_path / "s.zarr", n=8)
    with pytest.raises(RuntimeError), StoreWriter(old.path, source={"stage": "new"}, overwrite=True) as w:
        w.append(np.ones((3, 224, 224, 3), np.uint8), [{"object_id": f"n{i}"} for i in range(3)])
        raise RuntimeError("killed")
    assert open_store(old.path).content_hash == old.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_a_swap_cut_between_its_two_renames_is_recovered(tmp_path):
    old = make_store(tmp_path / "s.zarr", n=8)
    os.replace(old.path, _aside(old.path))  # the old store moved aside, the new one never arrived
    _recover_swap(old.path)
    assert open_store(old.path).content_hash == old.content_hash


_REPLACER = """
import sys, numpy as np
from scanstream.store import StoreWriter
with StoreWriter(sys.argv[1], source={"stage": "new"}, overwrite=True, chunk_crops=4, shard_crops=8) as w:
    for i in range(10**6):
        w.append(np.full((8, 224, 224, 3), i % 255, np.uint8), [{"object_id": f"n{i}-{j}"} for j in range(8)])
        if i == 2:
            print("writing", flush=True)
"""


def test_kill_during_an_overwrite_leaves_the_old_store_then_the_rerun_replaces_it(tmp_path):
    path = tmp_path / "s.zarr"
    old = make_store(path, n=4).content_hash
    proc = subprocess.Popen([sys.executable, "-c", _REPLACER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGKILL)  # kill -9 while the replacement is being written beside
    proc.wait()
    assert (tmp_path / ".s.zarr.overwrite").exists()
    assert open_store(path).content_hash == old  # the old store, complete and untouched
    new = create_store(path, np.ones((2, 224, 224, 3), np.uint8), [{"object_id": "a"}, {"object_id": "b"}],
                       source={}, overwrite=True)
    assert new.object_ids == ["a", "b"] and sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


# -- 3. listing rows stay inside SRC ----------------------------------------------------------
def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((224, 224), value, np.uint8)).save(path)


def _listing(src: Path, files: list[str]) -> None:
    with (src / "listing.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "object_id", "x_mm", "y_mm", "z_mm"])
        w.writerows([name, f"o{i}", 1, 2, 0] for i, name in enumerate(files))


@pytest.mark.parametrize("row", ["../outside.png", "ABS"])
def test_listing_rows_outside_the_source_are_refused(tmp_path, row):
    src = tmp_path / "src"
    _png(src / "a.png", 10)
    _png(tmp_path / "outside.png", 20)
    row = str(tmp_path / "outside.png") if row == "ABS" else row
    _listing(src, ["a.png", row])
    with pytest.raises(IngestError, match=r"listing.csv:line 3: file .* lies outside the source folder"):
        ingest(src, tmp_path / "s.zarr", IngestConfig(format="images"))
    assert not (tmp_path / "s.zarr").exists()


def test_a_symlink_inside_the_source_is_the_users_choice(tmp_path):
    src = tmp_path / "src"
    _png(tmp_path / "elsewhere" / "b.png", 30)
    _png(src / "a.png", 10)
    (src / "linked").symlink_to(tmp_path / "elsewhere")
    _listing(src, ["a.png", "linked/b.png"])
    result = ingest(src, tmp_path / "s.zarr", IngestConfig(format="images"))
    assert result.objects == 2


# -- 4. every reader verifies what it reads -----------------------------------------------------
def _train_config(train, valid, out) -> TrainConfig:
    return TrainConfig(train_store=str(train), valid_store=str(valid), out_dir=str(out), backbone="mobilenet_v3_small",
                       input_size=32, loader="local")


def test_train_refuses_a_store_whose_shard_file_was_deleted(tmp_path):
    train, valid = make_store(tmp_path / "t.zarr", n=16), make_store(tmp_path / "v.zarr", n=16, seed=1)
    shards = [p for p in (train.path / "crops" / "c").rglob("*") if p.is_file()]
    assert len(shards) == 1
    shards[0].unlink()  # every crop now reads back as zeros
    with pytest.raises(StoreError, match=r"t.zarr: crops \[0, 16\) do not match the store's digests"):
        check_config(_train_config(train.path, valid.path, tmp_path / "run"))


def _edit_table(store, **columns) -> None:
    t = store.table
    for name, values in columns.items():
        t = t.set_column(t.schema.get_field_index(name), t.schema.field(name), pa.array(values, t.schema.field(name).type))
    pq.write_table(t, store.path / "objects.parquet")


@pytest.mark.parametrize("edit, match", [
    ("label5", r"labels outside -1/0/1: \[5\]"),
    ("duplicate", r"1 duplicate object id\(s\), e.g. 'S1-000-000000'"),
    ("sheet", "does not match the digest recorded when the store was completed"),
    ("no_sheet", "no 'sheet' column"),
    ("no_label", "no 'label' column"),
])
def test_an_edited_object_table_is_refused_on_open(tmp_path, capsys, edit, match):
    store = make_store(tmp_path / "s.zarr", n=8)
    ids, labels, sheets = store.object_ids, store.labels.tolist(), store.table.column("sheet").to_pylist()
    if edit == "label5":
        _edit_table(store, label=[5] + labels[1:])
    elif edit == "duplicate":
        _edit_table(store, object_id=[ids[0], ids[0], *ids[2:]])
    elif edit == "sheet":
        _edit_table(store, sheet=["S9"] + sheets[1:])
    else:
        pq.write_table(store.table.drop_columns([edit[3:]]), store.path / "objects.parquet")
        drop_table_digest(store.path)  # as a store written without the column would be
    with pytest.raises(StoreError, match=match):
        open_store(store.path)
    valid = make_store(tmp_path / "v.zarr", n=8, seed=1)
    with pytest.raises(StoreError, match=match):  # train refuses what classify refuses
        check_config(_train_config(store.path, valid.path, tmp_path / "run"))
    assert match.replace("\\", "")[:12] in one_line_error(capsys, main(["info", str(store.path)]), "info")


def test_crops_of_another_type_are_named_not_a_corrupt_shard(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr", n=4)
    group = zarr.open_group(str(store.path), mode="r+")
    del group["crops"]
    group.create_array("crops", shape=(4, 224, 224, 3), chunks=(4, 224, 224, 3), dtype="float32")
    with pytest.raises(StoreError, match=r"crops: crops are float32 \(4, 224, 224, 3\), expected uint8"):
        open_store(store.path)
    assert "corrupt" not in one_line_error(capsys, main(["info", str(store.path)]), "info")


# -- 5. every bad input is one line and status 2 ------------------------------------------------
@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s.zarr", n=8)


def test_malformed_zarr_json_is_named(store, capsys):
    (store.path / "zarr.json").write_text("{not json")
    err = one_line_error(capsys, main(["info", str(store.path)]), "info")
    assert "zarr.json" in err and "candidate table" not in err


@pytest.mark.parametrize("argv, verb, match", [
    (["simulate", "{tmp}/x.zarr", "--objects", "4", "--alpha-fraction", "0.5", "--sheet", "A", "--seed", "-1"],
     "simulate", "--seed must be >= 0, got -1"),
    (["simulate", "{tmp}/x.zarr", "--objects", "4", "--alpha-fraction", "0.5", "--sheet", "A", "--workers", "0"],
     "simulate", "--workers must be at least 1, got 0"),
    (["classify", "{tmp}/s.zarr", "--model", "m.safetensors", "--out", "{tmp}/c", "--workers", "-3"],
     "classify", "--workers must be at least 1, got -3"),
    (["ingest", "{tmp}", "{tmp}/i.zarr", "--format", "images", "--workers", "0"], "ingest", "--workers must be at least 1, got 0"),
    (["train", "{tmp}/s.zarr", "{tmp}/s.zarr", "--out", "{tmp}/r", "--workers", "0"],
     "train", "--workers must be at least 1, got 0"),
    (["train", "{tmp}/s.zarr", "{tmp}/s.zarr", "--out", "{tmp}/afile"],
     "train", "afile is a file"),
    (["train", "{tmp}/s.zarr", "{tmp}/s.zarr", "--out", "{tmp}/r", "--config", "{tmp}/bad.toml"],
     "train", "max_epochs: expected an integer, got 'ten'"),
    (["query", "{tmp}/s.zarr", "--out", "{tmp}/q.csv"], "query", "s.zarr: not a candidate table"),
    (["train", "{tmp}/s.zarr", "{tmp}/s.zarr", "--out", "{tmp}/r", "--loader", "local",
      "--pretrained", "{tmp}/trunc.safetensors"], "train", "trunc.safetensors: not a readable safetensors file"),
])
def test_bad_arguments_are_one_line(store, tmp_path, capsys, argv, verb, match):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.toml").write_text('[train]\nmax_epochs = "ten"\n')
    (tmp_path / "trunc.safetensors").write_bytes(b"\xff" * 64)
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert match in one_line_error(capsys, rc, verb)
    assert not (tmp_path / "r" / "config.json").exists() and not list(tmp_path.glob("**/.*.tmp-*"))


def test_a_truncated_checkpoint_is_one_line_and_leaves_no_run_record(store, tmp_path, capsys):
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\"")
    rc = main(["classify", str(store.path), "--model", str(tmp_path / "trunc.safetensors"), "--out", str(tmp_path / "c")])
    assert "trunc.safetensors" in one_line_error(capsys, rc, "classify")
    assert not (tmp_path / "c" / cand.RUN_FILE).exists()  # a rerun with the good model is not refused


def test_malformed_verdict_lines_are_skipped_not_a_traceback(store, tmp_path, capsys, caplog):
    v = tmp_path / "v"
    v.mkdir()
    good = f'{{"object_id": "{store.object_ids[0]}", "verdict": "alpha", "seq": 1, "time": "t"}}'
    bad = ['{"object_id": "x", "verdict": "alpha", "seq": "one"}', "[1, 2]", '"text"', '{"object_id": ["a"], "verdict": "alpha"}',
           '{"object_id": "y", "verdict": "alpha", "store_index": "3"}']
    (v / "session-1.jsonl").write_text("\n".join([*bad, good]) + "\n")
    assert main(["verdicts", "show", str(v)]) == 0
    assert "alpha 1" in capsys.readouterr().out and "skipped 5 unreadable line(s)" in caplog.text
    assert main(["verdicts", "to-store", str(v), "--store", str(store.path), "--out", str(tmp_path / "l.zarr")]) == 0
    assert open_store(tmp_path / "l.zarr").labels.tolist() == [1]


def test_json_output_to_a_directory_or_an_unwritable_place(store, tmp_path, capsys):
    from scanstream.atomic import write_json

    (tmp_path / "out").mkdir()

    def to_dir(args):
        write_json(tmp_path / "out", {"a": 1})

    def unwritable(args):
        write_json(Path("/proc/scanstream-test.json"), {"a": 1})

    err = one_line_error(capsys, run_verb(argparse.Namespace(verb="threshold", func=to_dir)), "threshold")
    assert f"{tmp_path / 'out'}: Is a directory" in err
    assert "scanstream-test.json" in one_line_error(capsys, run_verb(argparse.Namespace(verb="x", func=unwritable)), "x")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("exc, match", [
    (PermissionError(13, "Permission denied", "/data/.c.json.tmp-7"), "/data/c.json: Permission denied"),
    (OSError(28, "No space left on device", "/data/x"), "/data/x: No space left on device"),
])
def test_os_errors_are_one_line(capsys, exc, match):
    def fail(args):
        raise exc

    assert match in one_line_error(capsys, run_verb(argparse.Namespace(verb="classify", func=fail)), "classify")


def test_a_lost_dask_worker_is_one_line_suggesting_a_rerun(capsys):
    from distributed.comm.core import CommClosedError

    def fail(args):
        raise CommClosedError("in <TCP (closed) ConnectionPool.gather local=tcp://127.0.0.1:1>: Stream is closed")

    err = one_line_error(capsys, run_verb(argparse.Namespace(verb="classify", func=fail)), "classify")
    assert "CommClosedError" in err and "rerun the same command" in err


def test_a_bug_still_shows_its_traceback():
    def fail(args):
        raise ZeroDivisionError("a bug, not a bad input")

    with pytest.raises(ZeroDivisionError):
        run_verb(argparse.Namespace(verb="classify", func=fail))


def test_an_overwrite_elsewhere_touches_nothing_outside_the_output(tmp_path):
    keep = tmp_path / "neighbour.txt"
    keep.write_text("x")
    before = keep.stat().st_mtime_ns
    make_store(tmp_path / "s.zarr", n=4)
    create_store(tmp_path / "s.zarr", np.zeros((1, 224, 224, 3), np.uint8), [{"object_id": "z"}], source={}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neighbour.txt", "s.zarr"] and keep.stat().st_mtime_ns == before


# -- 3. (issue 26) a table is served only whole; no verb writes inside or over its inputs --------
@pytest.fixture
def whole(table):
    """The ``table`` fixture's table, finalized: complete, its manifest recording every part."""
    out, store = table
    cand.finalize(out, stores={str(store.path): (store.content_hash, store.n)}, metadata={"run_id": "t"})
    return out, store


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["deleted", "truncated", "added"])
@pytest.mark.parametrize("verb", ["query", "info", "gallery"])
def test_a_damaged_table_is_refused_by_every_reader_naming_the_part(whole, tmp_path, capsys, how, verb):
    out, _ = whole
    part = cand.part_files(out)[0]
    if how == "deleted":
        part.unlink()
    elif how == "truncated":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    else:
        part = part.with_name("part-000000000000-000000000999.parquet")
        part.write_bytes(cand.part_files(out)[0].read_bytes())
    argv = {"query": ["query", str(out)], "info": ["info", str(out)],
            "gallery": ["gallery", str(out), "--out", str(tmp_path / "g")]}[verb]
    err = one_line_error(capsys, main(argv), verb)
    assert part.name in err and "damaged" in err
    assert not (tmp_path / "g").exists()


def test_info_says_complete_only_when_checked_and_validate_compares_digests(whole, capsys):
    import json

    out, _ = whole
    assert main(["info", str(out)]) == 0 and json.loads(capsys.readouterr().out)["complete"] is True
    part = cand.part_files(out)[0]
    data = bytearray(part.read_bytes())
    data[8] ^= 0xFF  # inside the data; size and footer kept
    part.write_bytes(bytes(data))
    assert main(["info", str(out), "--deep"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["complete"] is False and part.name in report["problems"][0]


def test_a_truncated_part_of_a_partial_table_is_one_line_under_info(table, capsys):
    out, _ = table
    part = cand.part_files(out)[0]
    part.write_bytes(part.read_bytes()[:50])
    assert part.name in one_line_error(capsys, main(["info", str(out)]), "info")


@pytest.mark.parametrize("argv, verb", [
    (["classify", "{s}", "--model", "{m}", "--out", "{s}/cands"], "classify"),
    (["threshold", "{s}", "--model", "{m}", "--target-recall", "0.9", "--out", "{s}/thr.json"], "threshold"),
    (["export", "{m}", "--out", "{m}"], "export"),
    (["export", "{m}", "--check", "{s}", "--out", "{s}/m.onnx"], "export"),
    (["range-energy", "{t}", "--sheet", "S1", "--out", "{t}/re"], "range-energy"),
    (["query", "{t}", "--out", "{part}"], "query"),
    (["query", "{t}", "--out", "{t}/_manifest.parquet"], "query"),
    (["gallery", "{t}", "--out", "{t}/g"], "gallery"),
    (["gallery", "{t}", "--out", "{tmp}"], "gallery"),
    (["evaluate", "{t}", "--store", "{s}", "--out", "{t}/eval"], "evaluate"),
    (["train", "{s}", "{s}", "--out", "{s}/run"], "train"),
    (["ingest", "{tmp}", "{tmp}/i.zarr", "--format", "images"], "ingest"),
    (["review", "{t}", "--verdicts", "{t}/v", "--port", "0"], "review"),
    (["train", "{s}", "{s}", "--out", "{tmp}/r", "--config", "{tmp}/r/c.toml"], "train"),
])
def test_an_output_inside_or_over_an_input_is_refused_up_front(whole, tmp_path, capsys, argv, verb):
    out, store = whole
    (tmp_path / "m.safetensors").write_bytes(b"not read: refused before")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "c.toml").write_text("[train]\n")
    subs = {"{s}": str(store.path), "{m}": str(tmp_path / "m.safetensors"), "{t}": str(out),
            "{part}": str(cand.part_files(out)[0]), "{tmp}": str(tmp_path)}
    before = _snapshot(tmp_path)
    argv = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in argv]
    err = one_line_error(capsys, main(argv), verb)
    assert "write it elsewhere" in err
    assert _snapshot(tmp_path) == before  # nothing written, nothing replaced


def test_object_ids_shared_by_two_stores_of_one_run_are_refused(tmp_path, capsys):
    from fixtures import make_checkpoint

    a = make_store(tmp_path / "a.zarr", n=16)
    b = make_store(tmp_path / "b.zarr", n=12)  # the same sheet's ids S1-000-000000 ... again, other crops
    m = make_checkpoint(tmp_path / "m.safetensors", 0, a.read_rows(np.arange(4)))
    err = one_line_error(capsys, main(["classify", str(a.path), str(b.path), "--model", str(m), "--out",
                                       str(tmp_path / "c"), "--device", "cpu", "--workers", "1"]), "classify")
    assert "S1-000-000000" in err and "a.zarr" in err and "b.zarr" in err and "12 shared" in err
    assert not (tmp_path / "c").exists()


def test_a_store_added_to_a_table_with_its_ids_is_refused(whole, tmp_path):
    from scanstream.inference.classify import _open_run

    out, store = whole
    twin = make_store(tmp_path / "twin.zarr", n=10)  # ids of the table's store, other content
    cand.write_side(out, cand.RUN_FILE, {"run_id": "t", "identity": {}, "stores": {
        str(store.path.resolve()): {"hash": store.content_hash, "rows": store.n}}})
    with pytest.raises(InputError, match="S1-000-000000.*10 shared"):
        _open_run(out, {}, {str(twin.path.resolve()): twin})


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_review_server_answers_400_to_two_host_headers(whole, tmp_path, method):
    import http.client
    import threading

    from scanstream.review.server import make_server

    out, store = whole
    server = make_server(ReviewSession(out, tmp_path / "v", stores=[store.path]), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        con.putrequest(method, "/" if method == "GET" else "/api/verdict", skip_host=True)
        con.putheader("Host", f"127.0.0.1:{port}")  # valid, then foreign
        con.putheader("Host", "evil.example")
        con.putheader("Content-Length", "0")
        con.endheaders()
        assert con.getresponse().status == 400
    finally:
        server.shutdown()
        server.server_close()


# -- 4. (issue 26) the last tracebacks and misleading messages become one line ------------------
@pytest.mark.parametrize("verb", ["info", "train"])
def test_a_garbage_crops_zarr_json_is_named(store, tmp_path, capsys, verb):
    (store.path / "crops" / "zarr.json").write_bytes(b"\xff\xfe\x00 not json")
    argv = ["info", str(store.path)] if verb == "info" else \
        ["train", str(store.path), str(store.path), "--loader", "local", "--out", str(tmp_path / "r")]
    err = one_line_error(capsys, main(argv), verb)
    assert "crops/zarr.json: unreadable crops metadata" in err
    assert not (tmp_path / "r").exists()


def test_a_missing_object_table_is_named_missing(store, capsys):
    (store.path / "objects.parquet").unlink()
    err = one_line_error(capsys, main(["info", str(store.path)]), "info")
    assert "objects.parquet: the object table of this complete store is missing" in err


def test_a_count_no_memory_holds_is_one_line(tmp_path, capsys):
    argv = ["simulate", str(tmp_path / "h.parquet"), "--objects", "18446744073709551616", "--features-only",
            "--alpha-fraction", "0.5", "--sheet", "A"]
    assert "MemoryError" in one_line_error(capsys, main(argv), "simulate")
    assert not list(tmp_path.iterdir())


def test_a_prevalence_that_looks_like_an_option_is_checked_not_the_usage(store, tmp_path, capsys):
    argv = ["threshold", str(store.path), "--model", str(tmp_path / "m.safetensors"), "--target-recall", "0.9",
            "--prevalence", "-1:5", "--out", str(tmp_path / "t.json")]
    assert "prevalence '-1:5'" in one_line_error(capsys, main(argv), "threshold")


def test_a_sheet_name_no_file_name_holds_is_refused_at_creation(tmp_path, capsys):
    argv = ["simulate", str(tmp_path / "x.zarr"), "--objects", "4", "--alpha-fraction", "0.5", "--sheet", "S" * 300]
    assert "too long" in one_line_error(capsys, main(argv), "simulate")
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((224, 224), np.uint8)).save(src / "a.png")
    (src / "listing.csv").write_text(f"file,object_id,x_mm,y_mm,z_mm,sheet\na.png,a,0,0,0,{'S' * 300}\n")
    err = one_line_error(capsys, main(["ingest", str(src), str(tmp_path / "i.zarr"), "--format", "images"]), "ingest")
    assert "too long" in err and "line 2" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_refused_watch_leaves_nothing_behind(tmp_path, capsys):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "m.safetensors").write_bytes(b"\xff" * 64)  # not a checkpoint: refused at start
    argv = ["watch", str(tmp_path / "inbox"), "--out", str(tmp_path / "cands"), "--model",
            str(tmp_path / "m.safetensors"), "--once", "--workers", "1"]
    assert "m.safetensors" in one_line_error(capsys, main(argv), "watch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inbox", "m.safetensors"]


def test_a_rerun_removes_what_a_killed_writer_left_and_only_that(tmp_path):
    from scanstream.inference.export import _check_out
    from scanstream.paths import remove_stale_temporaries

    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = tmp_path / f".m.onnx.tmp-{dead.pid}"
    live = tmp_path / f".m.onnx.tmp-{os.getpid()}"
    killed.write_bytes(b"half an onnx file")
    live.write_bytes(b"being written")
    assert _check_out(tmp_path / "m.onnx") == tmp_path / "m.onnx"  # export's first step
    assert not killed.exists() and live.exists()
    assert remove_stale_temporaries(tmp_path / "m.onnx") == []


def test_a_checkpoint_whose_tensors_do_not_fit_its_architecture_is_refused_before_any_work(store, tmp_path, capsys):
    import json

    from fixtures import make_checkpoint
    from safetensors import safe_open
    from safetensors.torch import save_file

    from scanstream.network.model import ModelConfig, build_model

    good = make_checkpoint(tmp_path / "good.safetensors", 0, store.read_rows(np.arange(4)))
    with safe_open(str(good), "pt") as f:
        metadata = f.metadata()  # resnet18's metadata ...
    other = build_model(ModelConfig(backbone="mobilenet_v3_small", input_size=32)).state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "bad.safetensors"), metadata=metadata)
    assert json.loads(metadata["scanstream"])["model_config"]["backbone"] == "resnet18"  # ... mobilenet's tensors
    argv = ["classify", str(store.path), "--model", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "c"),
            "--device", "cpu", "--workers", "1"]
    err = one_line_error(capsys, main(argv), "classify")
    assert "bad.safetensors: tensors do not fit the resnet18" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("damage, match", [
    ("digests", "digests.json: unreadable block digests"),
    ("empty", "store has no objects; nothing to classify"),
])
def test_classify_refuses_a_store_it_could_only_fail_on_later(store, tmp_path, capsys, damage, match):
    from fixtures import make_checkpoint

    model = make_checkpoint(tmp_path / "m.safetensors", 0, store.read_rows(np.arange(4)))
    target = store.path
    if damage == "digests":
        (store.path / "digests.json").write_text("{oops")
    else:
        target = create_store(tmp_path / "empty.zarr", np.zeros((0, 224, 224, 3), np.uint8), [], source={"stage": "test"})
        target = target.path
    argv = ["classify", str(target), "--model", str(model), "--out", str(tmp_path / "c"), "--device", "cpu",
            "--workers", "1"]
    assert match in one_line_error(capsys, main(argv), "classify")
    assert not (tmp_path / "c").exists()
