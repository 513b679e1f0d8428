"""Fault campaign (issue 19): bad inputs, kill -9 with rerun, damaged data; prints JSON totals.

Three parts, all in a scratch directory:

- **bad inputs**: each case builds a bad input and runs ``scanstream VERB ...`` in this process
  (``scanstream.cli.main``). A case is *clear* when the command exits with status 2, its last
  stderr line is ``scanstream VERB: error: ...`` and no traceback escaped. Cases whose correct
  answer is to carry on (a torn verdict line is skipped with a warning) count as clear when the
  command exits 0 without a traceback.
- **kill points**: ``classify`` (a store in many tasks) and ``simulate`` (fresh and ``--overwrite``)
  run as subprocesses and are killed with SIGKILL at points chosen by what is on disk (the run
  record written, the first part, half the parts, every part); then the same command is rerun
  and its result compared with an uninterrupted run's: the candidate table row for row (rows
  lost, rows duplicated, scores equal), the store by content hash. During an ``--overwrite`` the
  old store must open complete after the kill. A point is *survived* when the rerun's result is
  identical and nothing was lost or duplicated. A command that finishes before its point (a fast
  machine; raise ``--sim-objects``) is listed as not reached and counted in neither total.
- **files outside the output touched**: every file under the scratch directory outside the
  outputs of the command is fingerprinted (size, mtime, content hash) before and after each
  kill scenario; new, changed or removed ones are counted.

Usage::

    python benchmarks/faults.py [--dir DIR] [--objects 640] [--sim-objects 2000]

Measured figures are printed, never asserted (``tests/test_reliability.py`` holds the
regression tests).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures import drop_table_digest, make_store

from scanstream.candidates import table as cand
from scanstream.cli import main
from scanstream.network.checkpoint import save_checkpoint
from scanstream.network.model import ModelConfig, build_model
from scanstream.store import create_store, open_store

SCANSTREAM = str(Path(sys.executable).parent / "scanstream")


# -- set-up ---------------------------------------------------------------------------------
def make_model(path: Path) -> Path:
    cfg = ModelConfig(backbone="mobilenet_v3_small", input_size=32)
    save_checkpoint(path, build_model(cfg).eval(), model_config=cfg, train_config={}, data_hash="faults", metrics={})
    return path


def edited_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    t = pq.read_table(dst / "objects.parquet")
    pq.write_table(edit(t), dst / "objects.parquet")
    return dst


def set_column(t: pa.Table, name: str, values: list) -> pa.Table:
    i = t.schema.get_field_index(name)
    return t.set_column(i, t.schema.field(name), pa.array(values, t.schema.field(name).type))


def partial_table(root: Path, store) -> Path:
    out = root / "partial"
    scores = np.linspace(-1, 1, store.n).astype(np.float32)
    part = cand.build_part(store.table, scores, threshold=0.0, store=str(store.path), start=0)
    cand.write_parts(out, part, store_hash=store.content_hash, start=0, metadata={"run_id": "x"})
    return out


def bad_input_cases(root: Path) -> list[tuple[str, list[str], tuple[int, ...]]]:
    """(name, argv, accepted exit statuses) of every bad input tried."""
    s = make_store(root / "s.zarr", n=16)
    v = make_store(root / "v.zarr", n=16, seed=1)
    model = make_model(root / "m.safetensors")
    (root / "trunc.safetensors").write_bytes(model.read_bytes()[:4000])
    (root / "afile").write_text("x")
    (root / "adir").mkdir()
    user = root / "userdir"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    (root / "ds_user").mkdir()
    shutil.copytree(user, root / "ds_user" / "train.zarr")
    ids, labels = s.object_ids, s.labels.tolist()
    damaged = {
        "label5": edited_copy(s.path, root / "label5.zarr", lambda t: set_column(t, "label", [5] + labels[1:])),
        "dup": edited_copy(s.path, root / "dup.zarr", lambda t: set_column(t, "object_id", [ids[0], *ids[:-1]])),
        "moved": edited_copy(s.path, root / "moved.zarr",
                             lambda t: set_column(t, "sheet", ["S9"] + t.column("sheet").to_pylist()[1:])),
        "nosheet": edited_copy(s.path, root / "nosheet.zarr", lambda t: t.drop_columns(["sheet"])),
        "nolabel": edited_copy(s.path, root / "nolabel.zarr", lambda t: t.drop_columns(["label"])),
    }
    for k in ("nosheet", "nolabel"):
        drop_table_digest(damaged[k])
    shutil.copytree(s.path, root / "noshard.zarr")
    for f in (root / "noshard.zarr" / "crops" / "c").rglob("*"):
        if f.is_file():
            f.unlink()
    shutil.copytree(s.path, root / "float.zarr")
    group = zarr.open_group(str(root / "float.zarr"), mode="r+")
    del group["crops"]
    group.create_array("crops", shape=(16, 224, 224, 3), chunks=(16, 224, 224, 3), dtype="float32")
    shutil.copytree(s.path, root / "badjson.zarr")
    (root / "badjson.zarr" / "zarr.json").write_text("{not json")
    src = root / "src"
    src.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((224, 224), np.uint8)).save(root / "outside.png")
    Image.fromarray(np.zeros((224, 224), np.uint8)).save(src / "a.png")
    for name, row in (("up", "../outside.png"), ("abs", str(root / "outside.png"))):
        d = root / f"src_{name}"
        shutil.copytree(src, d)
        (d / "listing.csv").write_text(f"file,object_id,x_mm,y_mm,z_mm\na.png,a,0,0,0\n{row},b,0,0,0\n")
    (root / "bad.toml").write_text('[train]\nmax_epochs = "ten"\n')
    (root / "bad2.toml").write_text("[train]\nlr = [1, 2]\n")
    (root / "watch.toml").write_text('workers = "two"\n')
    (root / "inbox").mkdir()
    vd = root / "verdicts"
    vd.mkdir()
    (vd / "session-1.jsonl").write_text(
        '{"object_id": "x", "verdict": "alpha", "seq": "one"}\n[1]\n'
        f'{{"object_id": "{ids[0]}", "verdict": "alpha", "seq": 1, "time": "t"}}\n')
    vbad = root / "verdicts_bad"
    vbad.mkdir()
    (vbad / "session-1.jsonl").write_text('{"object_id": "x", "verdict": "alpha", "seq": "one"}\n')
    partial = partial_table(root, s)
    r, S, V, M = str(root), str(s.path), str(v.path), str(model)
    train = ["train", S, V, "--loader", "local", "--out", f"{r}/run"]
    thr = ["threshold", S, "--model", M, "--target-recall", "0.9"]
    sim = ["simulate", f"{r}/sim.zarr", "--objects", "4", "--alpha-fraction", "0.5", "--sheet", "A"]
    cls = ["classify", "--model", M, "--workers", "1", "--device", "cpu"]
    cases = [
        ("query a partial table", ["query", str(partial)], (2,)),
        ("gallery of a partial table", ["gallery", str(partial), "--out", f"{r}/g"], (2,)),
        ("review of a partial table", ["review", str(partial), "--port", "0"], (2,)),
        ("simulate --overwrite onto a user folder", [*sim[:1], str(user), *sim[2:], "--overwrite"], (2,)),
        ("simulate onto a user folder", [*sim[:1], str(user), *sim[2:]], (2,)),
        ("simulate-dataset --overwrite onto a user folder",
         ["simulate-dataset", f"{r}/ds_user", "--scale", "0.001", "--overwrite"], (2,)),
        ("verdicts to-store --overwrite onto a user folder",
         ["verdicts", "to-store", str(vd), "--store", S, "--out", str(user), "--overwrite"], (2,)),
        ("ingest a row ../outside.png", ["ingest", f"{r}/src_up", f"{r}/i1.zarr", "--format", "images"], (2,)),
        ("ingest a row with an absolute path outside", ["ingest", f"{r}/src_abs", f"{r}/i2.zarr", "--format", "images"],
         (2,)),
        ("train on a store whose shard file was deleted", ["train", f"{r}/noshard.zarr", *train[2:]], (2,)),
        ("train on labels 5", ["train", str(damaged["label5"]), *train[2:]], (2,)),
        ("classify a table with a duplicated id", [*cls, str(damaged["dup"]), "--out", f"{r}/c_dup"], (2,)),
        ("classify a table with a row moved to another sheet", [*cls, str(damaged["moved"]), "--out", f"{r}/c_mv"],
         (2,)),
        ("info on a table with a duplicated id", ["info", str(damaged["dup"])], (2,)),
    ]
    for k in ("nosheet", "nolabel"):
        cases += [
            (f"classify a store without {k[2:]}", [*cls, str(damaged[k]), "--out", f"{r}/c_{k}"], (2,)),
            (f"train on a store without {k[2:]}", ["train", str(damaged[k]), *train[2:]], (2,)),
            (f"threshold on a store without {k[2:]}", ["threshold", str(damaged[k]), "--model", M,
                                                      "--target-recall", "0.9", "--out", f"{r}/t_{k}.json"], (2,)),
            (f"info on a store without {k[2:]}", ["info", str(damaged[k])], (2,)),
        ]
    cases += [
        ("classify a truncated safetensors", [*cls, S, "--model", f"{r}/trunc.safetensors", "--out", f"{r}/c_tr"], (2,)),
        ("threshold with a truncated safetensors", ["threshold", S, "--model", f"{r}/trunc.safetensors", *thr[4:],
                                                    "--out", f"{r}/t.json"], (2,)),
        ("train --pretrained a truncated safetensors", [*train, "--pretrained", f"{r}/trunc.safetensors"], (2,)),
        ("classify float32 crops", [*cls, f"{r}/float.zarr", "--out", f"{r}/c_fl"], (2,)),
        ("info on a malformed zarr.json", ["info", f"{r}/badjson.zarr"], (2,)),
        ("classify a malformed zarr.json", [*cls, f"{r}/badjson.zarr", "--out", f"{r}/c_bj"], (2,)),
        ("classify --out a file", [*cls, S, "--out", f"{r}/afile"], (2,)),
        ("train --out a file", [*train[:-1], f"{r}/afile"], (2,)),
        ("gallery --out a file", ["gallery", str(partial), "--allow-partial", "--out", f"{r}/afile"], (2,)),
        ("simulate-dataset into a file", ["simulate-dataset", f"{r}/afile", "--scale", "0.001"], (2,)),
        ("threshold --out a directory", [*thr, "--out", f"{r}/adir"], (2,)),
        ("threshold --out an unwritable place", [*thr, "--out", "/proc/faults.json"], (2,)),
        ("query --out a directory", ["query", str(partial), "--allow-partial", "--out", f"{r}/adir"], (2,)),
        ("query --out an unwritable place", ["query", str(partial), "--allow-partial", "--out", "/proc/faults.csv"], (2,)),
        ("simulate --seed -1", [*sim, "--seed", "-1"], (2,)),
        ("simulate-dataset --seed -1", ["simulate-dataset", f"{r}/ds", "--scale", "0.001", "--seed", "-1"], (2,)),
        ("train --seed -1", [*train, "--seed", "-1"], (2,)),
        ("train: a TOML string for an integer", [*train, "--config", f"{r}/bad.toml"], (2,)),
        ("train: a TOML list for a number", [*train, "--config", f"{r}/bad2.toml"], (2,)),
        ("watch: a TOML string for an integer", ["watch", f"{r}/inbox", "--out", f"{r}/w", "--once", "--config",
                                                 f"{r}/watch.toml"], (2,)),
        ("verdicts show with malformed lines", ["verdicts", "show", str(vd)], (0,)),
        ("verdicts to-store with only malformed lines", ["verdicts", "to-store", str(vbad), "--store", S, "--out",
                                                         f"{r}/vs.zarr"], (2,)),
    ]
    for verb_args in (sim, [*cls, S, "--out", f"{r}/c_w"], ["ingest", str(src), f"{r}/i3.zarr", "--format", "images"],
                      train, ["search", S, V, "--out", f"{r}/search"],
                      ["watch", f"{r}/inbox", "--out", f"{r}/w2", "--once"]):
        for n in ("0", "-3"):
            cases.append((f"{verb_args[0]} --workers {n}", [*verb_args, "--workers", n], (2,)))
    return cases + integrity_cases(root, s, model)


def complete_table(root: Path, store, name: str) -> Path:
    """A finalized candidate table of ``store`` (its manifest recording every part)."""
    out = partial_table(root / f"{name}_src", store)
    cand.finalize(out, stores={str(store.path): (store.content_hash, store.n)}, metadata={"run_id": "x"})
    shutil.move(str(out), str(root / name))
    return root / name


def integrity_cases(root: Path, s, model: Path) -> list[tuple[str, list[str], tuple[int, ...]]]:
    """Issue 26's cases: damaged tables, outputs inside inputs, shared ids, picker features, the last tracebacks."""
    r, S, M = str(root), str(s.path), str(model)
    tables = {k: complete_table(root, s, f"t_{k}") for k in ("ok", "deleted", "truncated", "added", "replaced")}
    cand.part_files(tables["deleted"])[0].unlink()
    part = cand.part_files(tables["truncated"])[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    part = cand.part_files(tables["added"])[0]
    shutil.copy(part, part.with_name("part-000000000000-000000000999.parquet"))
    part = cand.part_files(tables["replaced"])[0]
    pq.write_table(pq.read_table(part).replace_schema_metadata({b"scanstream": b'{"run_id": "other"}'}), part)
    T = str(tables["ok"])
    twin = make_store(root / "twin.zarr", n=12)  # the ids of s.zarr's first 12 objects, other crops
    shutil.copytree(s.path, root / "garbage.zarr")
    (root / "garbage.zarr" / "crops" / "zarr.json").write_bytes(b"\xff\xfe\x00 not json")
    shutil.copytree(s.path, root / "baddigests.zarr")
    (root / "baddigests.zarr" / "digests.json").write_text("{oops")
    create_store(root / "empty.zarr", np.zeros((0, 224, 224, 3), np.uint8), [], source={"stage": "faults"})
    shutil.copytree(s.path, root / "noobjects.zarr")
    (root / "noobjects.zarr" / "objects.parquet").unlink()
    from PIL import Image

    listings = {"negmult": "-5,", "nolengths": "3,", "badlength": "2,30;-4", "count": "3,30;20"}
    for k, row in listings.items():
        d = root / f"src_{k}"
        d.mkdir()
        Image.fromarray(np.zeros((224, 224), np.uint8)).save(d / "a.png")
        (d / "listing.csv").write_text(f"file,object_id,x_mm,y_mm,z_mm,multiplicity,track_lengths\na.png,a,0,0,0,{row}\n")
    mult_only = root / "src_multonly"
    mult_only.mkdir()
    Image.fromarray(np.zeros((224, 224), np.uint8)).save(mult_only / "a.png")
    (mult_only / "listing.csv").write_text("file,object_id,x_mm,y_mm,z_mm,multiplicity\na.png,a,0,0,0,4\n")
    with contextlib.redirect_stdout(io.StringIO()):  # stdout is the report
        main(["ingest", str(mult_only), f"{r}/multonly.zarr", "--format", "images", "--no-progress"])
    shipped = str(Path(__file__).resolve().parents[1] / "models" / "scanstream-cpu-cascade.safetensors")
    cls = ["classify", "--model", M, "--workers", "1", "--device", "cpu"]
    cases = [(f"query a table with a part {k}", ["query", str(t)], (2,)) for k, t in tables.items() if k != "ok"]
    cases += [(f"info on a table with a part {k}", ["info", str(t)], (2,)) for k, t in tables.items() if k != "ok"]
    cases += [
        ("gallery of a table with a part deleted", ["gallery", str(tables["deleted"]), "--out", f"{r}/g_del"], (2,)),
        ("classify --out inside its store", [*cls, S, "--out", f"{S}/cands"], (2,)),
        ("threshold --out inside its store", ["threshold", S, "--model", M, "--target-recall", "0.9", "--out",
                                              f"{S}/thr.json"], (2,)),
        ("export --out over its checkpoint", ["export", M, "--out", M], (2,)),
        ("export --out inside its --check store", ["export", M, "--check", S, "--out", f"{S}/m.onnx"], (2,)),
        ("range-energy --out inside the candidate table", ["range-energy", T, "--sheet", "S1", "--out", f"{T}/re"],
         (2,)),
        ("query --out over a part of its table", ["query", T, "--out", str(cand.part_files(T)[0])], (2,)),
        ("query --out over its table's manifest", ["query", T, "--out", f"{T}/_manifest.parquet"], (2,)),
        ("gallery --out around its table", ["gallery", T, "--out", r], (2,)),
        ("classify two stores sharing object ids", [*cls, S, str(twin.path), "--out", f"{r}/c_twin"], (2,)),
        ("info on a garbage crops/zarr.json", ["info", f"{r}/garbage.zarr"], (2,)),
        ("classify a garbage crops/zarr.json", [*cls, f"{r}/garbage.zarr", "--out", f"{r}/c_garbage"], (2,)),
        ("info on a store without objects.parquet", ["info", f"{r}/noobjects.zarr"], (2,)),
        ("classify a malformed digests.json", [*cls, f"{r}/baddigests.zarr", "--out", f"{r}/c_digests"], (2,)),
        ("classify a store of 0 objects", [*cls, f"{r}/empty.zarr", "--out", f"{r}/c_empty"], (2,)),
        ("simulate 2**64 objects", ["simulate", f"{r}/huge.parquet", "--objects", "18446744073709551616",
                                    "--features-only", "--alpha-fraction", "0.5", "--sheet", "A"], (2,)),
        ("threshold --prevalence -1:5", ["threshold", S, "--model", M, "--target-recall", "0.9", "--prevalence",
                                         "-1:5", "--out", f"{r}/t_prev.json"], (2,)),
        ("simulate a 300-character sheet name", ["simulate", f"{r}/long.zarr", "--objects", "4", "--alpha-fraction",
                                                 "0.5", "--sheet", "S" * 300], (2,)),
        ("classify with the shipped cascade a store with multiplicity and no lengths",
         ["classify", f"{r}/multonly.zarr", "--model", shipped, "--workers", "1", "--device", "cpu", "--out",
          f"{r}/c_multonly"], (2,)),
    ]
    cases += [(f"ingest a listing row {k}", ["ingest", f"{r}/src_{k}", f"{r}/i_{k}.zarr", "--format", "images"], (2,))
              for k in listings]
    return cases


def run_case(argv: list[str], accepted: tuple[int, ...]) -> dict:
    err = io.StringIO()
    tb = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - a traceback is exactly what is counted
            rc, tb = 1, traceback.format_exc(limit=1)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    clear = tb is None and "Traceback" not in err.getvalue() and rc in accepted and (
        rc == 0 or last.startswith(f"scanstream {argv[0]}: error: "))
    return {"rc": rc, "clear": clear, "stderr_lines": len(lines), "last": last[:300], "traceback": tb}


# -- kill points ----------------------------------------------------------------------------
def fingerprint(root: Path, outputs: list[Path]) -> dict[str, tuple]:
    outs = [str(o) for o in outputs]
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if any(dirpath == o or dirpath.startswith(o + os.sep) or os.path.basename(dirpath).startswith(
                "." + os.path.basename(o)) for o in outs):
            dirnames[:] = []
            continue
        for name in filenames:
            p = os.path.join(dirpath, name)
            if any(p == o or os.path.basename(p).startswith("." + os.path.basename(o)) for o in outs):
                continue
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns, hashlib.sha256(Path(p).read_bytes()).hexdigest())
    return out


def touched(before: dict, after: dict) -> int:
    return sum(1 for k in set(before) | set(after) if before.get(k) != after.get(k))


def kill_when(argv: list[str], ready, timeout: float = 300) -> str:
    """Start ``argv``, SIGKILL it as soon as ``ready()`` is true; what happened."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed"
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        return "timeout"
    return f"finished before the point (rc {proc.returncode})"


def table_rows(out: Path) -> pa.Table:
    parts = cand.part_files(out)
    return pa.concat_tables([pq.read_table(p, columns=["object_id", "score", "rank"]) for p in parts])


def compare_tables(ref: pa.Table, got: pa.Table) -> dict:
    ids = got.column("object_id").to_pylist()
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    ref_ids = ref.column("object_id").to_pylist()
    lost = sum(1 for i in ref_ids if i not in counts)
    dup = sum(c - 1 for c in counts.values() if c > 1)
    key = ["object_id"]
    same = lost == 0 and dup == 0 and ref.sort_by([(k, "ascending") for k in key]).equals(
        got.sort_by([(k, "ascending") for k in key]))
    return {"rows_lost": lost, "rows_duplicated": dup, "identical": bool(same)}


def classify_kills(root: Path, objects: int) -> list[dict]:
    store = make_store(root / "k.zarr", n=objects, seed=5)
    model = make_model(root / "km.safetensors")
    base = [SCANSTREAM, "classify", str(store.path), "--model", str(model), "--workers", "1", "--device", "cpu",
            "--precision", "fp32", "--crops-per-task", "64", "--out"]
    ref_out = root / "k_ref"
    subprocess.run([*base, str(ref_out)], check=True, capture_output=True)
    ref = table_rows(ref_out)
    n_parts = len(cand.part_files(ref_out))
    points = {
        "run record written": lambda out: (out / cand.RUN_FILE).exists(),
        "first part": lambda out: len(cand.part_files(out)) >= 1,
        "half the parts": lambda out: len(cand.part_files(out)) >= n_parts // 2,
        "every part, before the manifest": lambda out: len(cand.part_files(out)) >= n_parts,
    }
    results = []
    for i, (name, ready) in enumerate(points.items()):
        out = root / f"k_out{i}"
        before = fingerprint(root, [out])
        what = kill_when([*base, str(out)], lambda out=out, ready=ready: ready(out))
        rerun = subprocess.run([*base, str(out)], check=False, capture_output=True, text=True)
        res = {"command": "classify", "point": name, "kill": what, "rerun_rc": rerun.returncode}
        res.update(compare_tables(ref, table_rows(out)) if rerun.returncode == 0 else
                   {"rows_lost": None, "rows_duplicated": None, "identical": False, "stderr": rerun.stderr[-300:]})
        res["complete"] = cand.read_manifest(out) is not None
        res["files_outside_touched"] = touched(before, fingerprint(root, [out]))
        res["survived"] = bool(what == "killed" and res["identical"] and res["complete"])
        results.append(res)
    return results


def simulate_kills(root: Path, objects: int) -> list[dict]:
    base = [SCANSTREAM, "simulate", "--objects", str(objects), "--alpha-fraction", "0.2", "--sheet", "F", "--seed", "3"]

    def sim(path: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([base[0], base[1], str(path), *base[2:], *extra], check=False, capture_output=True,
                              text=True)

    sim(root / "sref.zarr").check_returncode()
    ref_hash = open_store(root / "sref.zarr").content_hash
    results = []
    for i, delay in enumerate((2.0, 6.0)):  # seconds after the store directory appears
        path = root / f"sfresh{i}.zarr"
        before = fingerprint(root, [path])
        t_seen: list[float] = []

        def ready(path=path, delay=delay, t_seen=t_seen) -> bool:
            if path.exists() and not t_seen:
                t_seen.append(time.monotonic())
            return bool(t_seen) and time.monotonic() - t_seen[0] >= delay

        what = kill_when([base[0], base[1], str(path), *base[2:]], ready)
        rerun = sim(path)
        h = open_store(path).content_hash if rerun.returncode == 0 else None
        results.append({"command": "simulate", "point": f"fresh store, {delay:.0f} s into the write", "kill": what,
                        "rerun_rc": rerun.returncode, "identical": h == ref_hash,
                        "files_outside_touched": touched(before, fingerprint(root, [path])),
                        "survived": what == "killed" and h == ref_hash})
    for i, delay in enumerate((0.0, 4.0)):  # seconds after the replacement appears beside the old store
        path = root / f"sover{i}.zarr"
        old = make_store(path, n=8, seed=9).content_hash
        beside = root / f".{path.name}.overwrite"
        before = fingerprint(root, [path])
        t_seen = []

        def ready(beside=beside, delay=delay, t_seen=t_seen) -> bool:
            if beside.exists() and not t_seen:
                t_seen.append(time.monotonic())
            return bool(t_seen) and time.monotonic() - t_seen[0] >= delay

        what = kill_when([base[0], base[1], str(path), *base[2:], "--overwrite"], ready)
        try:
            old_kept = open_store(path).content_hash == old
        except Exception:  # noqa: BLE001 - nothing openable is the failure being counted
            old_kept = False
        rerun = sim(path, "--overwrite")
        h = open_store(path).content_hash if rerun.returncode == 0 else None
        results.append({"command": "simulate --overwrite", "point": f"{delay:.0f} s into writing the replacement",
                        "kill": what, "old_store_intact_after_kill": old_kept, "rerun_rc": rerun.returncode,
                        "identical": h == ref_hash, "leftovers": sorted(p.name for p in root.glob(f".{path.name}*")),
                        "files_outside_touched": touched(before, fingerprint(root, [path])),
                        "survived": what == "killed" and old_kept and h == ref_hash})
    return results


def main_(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="scratch directory (default: a new temporary one, removed after)")
    ap.add_argument("--objects", type=int, default=640, help="crops in the classify kill store (tasks of 64)")
    ap.add_argument("--sim-objects", type=int, default=2000,
                    help="objects of the simulate kill runs (enough to outlast the 6 s point on an idle 2-core machine)")
    ap.add_argument("--skip-kills", action="store_true", help="bad inputs only")
    args = ap.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="scanstream-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bad_root = root / "bad"
    bad_root.mkdir()
    cases = bad_input_cases(bad_root)
    before = fingerprint(bad_root, [])
    bad = []
    for name, cmd, accepted in cases:
        bad.append({"case": name, "argv": cmd[:2], **run_case(cmd, accepted)})
    changed = sorted(k for k, v in fingerprint(bad_root, []).items() if before.get(k) != v)
    kills: list[dict] = []
    if not args.skip_kills:
        for sub in ("kc", "ks"):
            (root / sub).mkdir()
        kills = classify_kills(root / "kc", args.objects) + simulate_kills(root / "ks", args.sim_objects)
    report = {
        "bad_inputs_tried": len(bad),
        "clear_one_line_errors": sum(b["clear"] for b in bad),
        "unclear": [b for b in bad if not b["clear"]],
        "cases": [f"{b['case']}: {b['last']}" for b in bad],
        "files_written_by_refused_bad_inputs": changed,
        "kill_points": sum(k["kill"] == "killed" for k in kills),
        "kill_points_survived": sum(k["survived"] for k in kills),
        # a command that finished before its point was never killed there: not a failure, not a test
        "kill_points_not_reached": [f"{k['command']}: {k['point']}" for k in kills if k["kill"] != "killed"],
        "rows_lost": sum(k.get("rows_lost") or 0 for k in kills),
        "rows_duplicated": sum(k.get("rows_duplicated") or 0 for k in kills),
        "files_outside_output_touched": sum(k["files_outside_touched"] for k in kills),
        "kills": kills,
        "seconds": round(time.perf_counter() - t0, 1),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=1, default=str))
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main_())
