"""Scripts are code: every script in benchmarks/ and pipelines/ starts, the recipe runs through.

A refactor that moves a function a script imports breaks the script without breaking a library
test; these tests start each script (found by glob, so a new one is covered without an edit here)
with ``--help``, run the shipped recipe through all its stages on a tiny configuration, and keep
the module names that the Markdown pages cite importable.

``--help`` runs twice: every script in one subprocess that imports torch and dask once (seconds:
the quick loop), and each script in a process of its own (``slow``: a start each, tens of seconds
in all on two cores), which also catches what only a fresh interpreter shows.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from scanstream.network.checkpoint import checkpoint_hash
from scanstream.physics.picker import DEFAULT_PICKER, error_table, read_error_table, write_error_table
from scanstream.simulate.pickercal import reference_alphas, simulated_errors

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for d in ("benchmarks", "pipelines") for p in (ROOT / d).glob("*.py"))
#: A script's start imports torch and dask, seconds each; a loaded machine can take a minute.
START_TIMEOUT_S = 300


def run_script(script: str, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python script args...`` from the repository root, output captured."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


#: Runs each script named on its command line as ``__main__`` with ``--help`` in this one
#: interpreter; writes {script: [exit code, stdout, stderr]} as JSON to the first argument.
ONE_PROCESS_HELP = """
import contextlib, io, json, runpy, sys, traceback
from pathlib import Path
report, results = sys.argv[1], {}
for script in sys.argv[2:]:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv, sys.path[0] = [script, "--help"], str(Path(script).parent)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
    results[script] = [code, out.getvalue(), err.getvalue()]
Path(report).write_text(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps_in_one_process(tmp_path_factory) -> dict[str, list]:
    report = tmp_path_factory.mktemp("help") / "help.json"
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS_HELP, str(report), *(str(ROOT / s) for s in SCRIPTS)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S * 2)
    assert done.returncode == 0, done.stderr[-3000:]
    return {Path(k).relative_to(ROOT).as_posix(): v for k, v in json.loads(report.read_text()).items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_parses_help(script, helps_in_one_process):
    code, out, err = helps_in_one_process[script]
    assert code == 0, f"{script} --help exited {code}:\n{err[-2000:]}"
    assert out.startswith(f"usage: {Path(script).name}"), out[:300]


@pytest.fixture(scope="module")
def helps(request) -> dict[str, Future]:
    """``--help`` of every script selected in this session, started together (one per core)."""
    selected = [item.callspec.params["script"] for item in request.session.items
                if item.originalname == "test_every_script_starts" and hasattr(item, "callspec")]
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    futures = {script: pool.submit(run_script, script, "--help") for script in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_the_glob_finds_the_scripts():
    assert {"benchmarks/holdout.py", "benchmarks/faults.py", "pipelines/recipe.py", "pipelines/overnight.py"} <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_starts(script, helps):
    done = helps[script].result()
    assert done.returncode == 0, f"{script} --help exited {done.returncode}:\n{done.stderr[-2000:]}"
    assert done.stdout.startswith(f"usage: {Path(script).name}"), done.stdout[:300]


def printed_json(done: subprocess.CompletedProcess) -> dict:
    """The one JSON document a benchmark prints, once it exited 0."""
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_simulate_benchmark_runs_tiny():
    doc = printed_json(run_script("benchmarks/simulate.py", "--crops", "16", "--features", "200"))
    assert (doc["crops"], doc["features"]) == (16, 200)
    assert doc["render_crops_per_s_1_worker"] > 0 and doc["features_objects_per_s_2_workers"] > 0


@pytest.mark.slow
def test_picker_errors_benchmark_runs_tiny(tmp_path):
    table = tmp_path / "errors.md"
    doc = printed_json(run_script("benchmarks/picker_errors.py", "--work", str(tmp_path), "--tuning-seeds", "1",
                                  "--held-out-seeds", "2", "--fields", "1", "--objects-per-field", "2",
                                  "--field-px", "128", "--depth-um", "12", "--markdown", str(table),
                                  "--table", str(tmp_path / "t.json")))
    assert doc["tuning"]["seeds"] == [1] and doc["held_out"]["seeds"] == [2] and doc["held_out"]["fields"] == 1
    assert table.read_text().startswith("| measure | tuning seeds 1 | held-out seeds 2 |")
    errors = read_error_table(tmp_path / "t.json")
    assert errors["groups"]["held_out"]["fields"] == 1 and errors["measured"]["command"][0] == "benchmarks/picker_errors.py"


def test_picker_model_benchmark_runs_tiny(tmp_path):
    groups = {"tuning": simulated_errors(replace(DEFAULT_PICKER, p_black=0.9), reference_alphas(60, seed=4), seed=4)}
    write_error_table(tmp_path / "t.json", error_table(groups, measured={}))
    doc = printed_json(run_script("benchmarks/picker_model.py", "--table", str(tmp_path / "t.json"), "--objects", "40",
                                  "--calibration-objects", "60", "--markdown", str(tmp_path / "t.md")))
    assert doc["calibrated_parameters"]["p_black"] < 0.97 and doc["measured"]["prongs_true"] == groups["tuning"]["prongs"]["true"]
    assert (tmp_path / "t.md").read_text().startswith("| measure | measured (table) |")


@pytest.mark.slow
def test_pick_speed_benchmark_runs_tiny(tmp_path):
    sim, vol = tmp_path / "sim", tmp_path / "v.zarr"
    for argv in (["simulate-volume", str(sim), "--fields", "1", "--seed", "3", "--objects-per-field", "2",
                  "--field-px", "128", "--depth-um", "12", "--no-progress"],
                 ["ingest", str(sim), str(vol), "--format", "stack", "--no-progress"]):
        subprocess.run([sys.executable, "-m", "scanstream", *argv], check=True, capture_output=True)
    doc = printed_json(run_script("benchmarks/pick_speed.py", "--volume", str(vol), "--workers", "1"))
    assert doc["volume"]["fields"] == 1 and [r["workers"] for r in doc["picking"]] == [1]
    doc = printed_json(run_script("benchmarks/pick_speed.py", "--volume", str(vol), "--stages", "1", "--passes", "1"))
    cost = doc["cpu_seconds_a_field"]
    assert doc["fields"] == 1 and {"read", "dark_masks", "detect", "crops_and_rows"} <= set(cost)
    assert cost["dark_masks"] <= cost["detect"]


def test_edge_picks_benchmark_runs_tiny(tmp_path):
    doc = printed_json(run_script("benchmarks/edge_picks.py", "--work", str(tmp_path), "--seeds", "1", "--overlaps",
                                  "none,10", "--fields", "4", "--objects-per-field", "2", "--field-px", "128",
                                  "--depth-um", "12"))
    assert set(doc["overlaps"]) == {"none", "10"} and doc["overlaps"]["10"]["fields"] == 4
    assert sum(c["alpha_decays"] for c in doc["overlaps"]["10"]["with_rule"].values()) >= 1


@pytest.mark.slow
def test_store_io_benchmark_runs_tiny_and_leaves_its_folder_empty(tmp_path):
    scratch = tmp_path / "not" / "yet"
    doc = printed_json(run_script("benchmarks/store_io.py", "--n", "64", "--configs", "16:64", "--repeat", "1",
                                  "--dir", str(scratch)))
    assert doc["crops"] == 64
    assert [(r["chunk"], r["shard"]) for r in doc["configs"]] == [(16, 64)]
    assert doc["configs"][0]["write_crops_per_s"] > 0 and doc["configs"][0]["files_here"] >= 1
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_cli_startup_benchmark_runs_tiny():
    doc = printed_json(run_script("benchmarks/cli_startup.py", "--runs", "1"))
    assert set(doc["ratio_to_import_numpy"]) == {"help", "info", "query"}
    assert all(t > 0 for t in doc["median_s"].values()) and doc["runs"] == 1


@pytest.mark.gpu
def test_classify_throughput_runs_tiny_on_a_gpu(tmp_path):
    doc = printed_json(run_script("benchmarks/classify_throughput.py", "--n", "64", "--batch-size", "32",
                                  "--configs", "mobilenet_v3_small:112:bf16", "--device", "cuda", "--tmp", str(tmp_path)))
    assert doc["machine"]["device"].startswith("cuda") and doc["machine"]["gpu"]
    (row,) = doc["results"]
    assert (row["backbone"], row["precision"]) == ("mobilenet_v3_small", "bf16")
    assert row["a_forward_crops_per_s"] > 0 and row["b_warm_crops_per_s"] > 0


TINY_RECIPE = """\
seed = 0
workers = 1

[features]
sheets = 2
objects_per_sheet = 300
alpha_fraction = 0.2
calibration_sheets = 1
prefilter_recall = 0.99

[pool]
train_sheets = 1
valid_sheets = 1
objects_per_sheet = 200
alpha_fraction = 0.2
draw = "wide"

[train]
backbone = "mobilenet_v3_small"
input_size = 32
max_epochs = 1
batch_size = 16
loader = "local"

[pixels]
sheets = 1
objects_per_sheet = 100
alpha_fraction = 0.3

[pickpool]
train_first_seed = 9301
train_volumes = 1
valid_first_seed = 9401
valid_volumes = 1
fields = 1
objects_per_field = 6
alpha_fraction = 0.5
draw = "wide"

[finetune]
sim_sheets = 1
max_epochs = 1
lr = 5e-4

[holdout]
sheet = "TINYHOLD"
seed = 7
objects = 300
alpha = 30
"""


@pytest.mark.slow
def test_the_recipe_runs_through_every_stage(tmp_path):
    """features, pool, train, pixels, pickpool, finetune and holdout (benchmarks/holdout.py in its
    own process) on a few hundred objects: holdout.json names every input by hash and by a path that holds on
    another machine."""
    config, out = tmp_path / "tiny.toml", tmp_path / "out"
    config.write_text(TINY_RECIPE)
    done = run_script("pipelines/recipe.py", "--config", str(config), "--out", str(out), timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("feature_model.safetensors", "train_pool.zarr", "valid_pool.zarr", "run/model.safetensors",
                 "run_pixels/model.safetensors", "pick_train.zarr", "pick_valid.zarr", "finetune_sim_pool.zarr",
                 "finetune_train.zarr",
                 "run_pick/model.safetensors", "holdout.zarr", "holdout/pr_holdout.png", "holdout/scores.parquet"):
        assert (out / name).exists(), name
    text = (out / "holdout" / "holdout.json").read_text()
    assert str(tmp_path) not in text
    doc = json.loads(text)
    assert (doc["objects"], doc["alpha"], doc["store"]) == (300, 30, "../holdout.zarr")
    assert doc["learned"]["path"] == "../feature_model.safetensors"
    assert doc["learned"]["file_hash"] == checkpoint_hash(out / "feature_model.safetensors")
    for name, run in (("cascade", "run"), ("cascade-pick", "run_pick"), ("pixels-only", "run_pixels")):
        ckpt = out / run / "model.safetensors"
        assert doc["models"][name]["checkpoints"] == [{"path": f"../{run}/model.safetensors", "hash": checkpoint_hash(ckpt)}]
    assert doc["models"]["cascade"]["cascade"]["objects"] == 300
    assert doc["models"]["pixels-only"]["cascade"] is None


def test_the_recipe_refuses_a_held_out_sheet_it_trains_on(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(TINY_RECIPE.replace('sheet = "TINYHOLD"', 'sheet = "RT00"'))
    done = run_script("pipelines/recipe.py", "--config", str(config), "--out", str(tmp_path / "out"),
                      "--stages", "holdout")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: [holdout] sheet 'RT00' is one the recipe trains on; name another"]


#: ``scanstream.a.b`` in prose or code; a trailing ``.py`` or ``.md`` is part of a file name.
_DOTTED = re.compile(r"\bscanstream(?:\.[A-Za-z_]\w*)+")


def cited_names(text: str) -> set[str]:
    """The dotted ``scanstream.*`` names a Markdown text mentions (file names dropped)."""
    names = set()
    for name in _DOTTED.findall(text):
        if name.rsplit(".", 1)[-1] in {"py", "md", "toml", "json", "zarr", "safetensors"}:
            name = name.rsplit(".", 1)[0]
        if name != "scanstream":
            names.add(name)
    return names


def resolves(name: str) -> bool:
    """Whether ``name`` is a module, or a module followed by attributes that exist."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_cited_names_are_found_and_resolved():
    assert cited_names("see `scanstream.network.checkpoint` and scanstream/atomic.py, scanstream.py") == {
        "scanstream.network.checkpoint"}
    assert resolves("scanstream.network.checkpoint.read_header")
    assert not resolves("scanstream.checkpoint")
    assert not resolves("scanstream.network.checkpoint.no_such_function")


def test_module_names_in_the_docs_exist():
    """Every ``scanstream.xxx`` that README.md, models/README.md and docs/*.md mention imports."""
    pages = [ROOT / "README.md", ROOT / "models" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = [f"{page.relative_to(ROOT)}: {name}" for page in pages
               for name in sorted(cited_names(page.read_text(encoding="utf-8"))) if not resolves(name)]
    assert not missing, "names that do not import:\n" + "\n".join(missing)


@pytest.mark.slow
def test_store_coordinates_benchmark_runs_tiny_and_leaves_its_folder_empty(tmp_path):
    doc = printed_json(run_script("benchmarks/store_coordinates.py", "--n", "50", "--repeat", "1", "--dir", str(tmp_path)))
    (size,) = doc["sizes"]
    assert size["objects"] == 50 and size["write_coordinates_s"] > 0 and size["object_array_bytes"] > 0
    assert list(tmp_path.iterdir()) == []
