"""The public Python API: ``import scanstream`` is cheap and every exported name resolves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import scanstream


def test_import_scanstream_loads_neither_torch_nor_the_stages():
    code = "import sys, scanstream; print(sorted(m for m in ('torch', 'scanstream.store', 'duckdb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", [n for n in scanstream.__all__ if n != "__version__"])
def test_every_exported_name_resolves_to_a_documented_object(name):
    obj = getattr(scanstream, name)
    assert callable(obj) and (obj.__doc__ or "").strip(), f"scanstream.{name} has no docstring"
    assert name in dir(scanstream)


def test_all_lists_exactly_the_exports():
    assert sorted(scanstream.__all__) == sorted(["__version__", *scanstream._EXPORTS])


def test_no_export_is_shadowed_by_a_subpackage():
    """``import scanstream.ingest`` sets the attribute ``ingest``: an export of that name would vanish."""
    import pkgutil

    packages = {m.name for m in pkgutil.iter_modules(scanstream.__path__)}
    assert not packages & set(scanstream.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        scanstream.nope  # noqa: B018


def test_the_api_works_end_to_end_on_a_tiny_store(tmp_path):
    store = scanstream.simulate_store(tmp_path / "s.zarr", objects=6, alpha_fraction=0.5, sheet="S1", seed=1)
    assert scanstream.open_store(store.path).n == 6 and scanstream.validate_store(store.path) == []


ROOT = Path(__file__).resolve().parents[1]


SCRIPT_ENV = {"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}


@pytest.mark.slow
def test_the_readme_python_example_runs_as_a_script_file(tmp_path):
    """README's "From Python" block saved as example.py and run as ``python example.py``.

    The block has no ``__main__`` guard, as a user's first script rarely has one: a Dask worker
    process would import it again, so the workers are threads and one warning line says why.
    Only the model path is made absolute (the script runs in a scratch folder).
    """
    from scanstream.candidates.table import read_manifest

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- python-example -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, "README lost its Python example"
    script = tmp_path / "example.py"
    script.write_text(block.group(1).replace('"models/', f'"{ROOT}/models/'))
    run = subprocess.run([sys.executable, str(script)], check=False, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env=SCRIPT_ENV)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"{script}: no `if __name__ == \"__main__\":` guard" in run.stderr and "Nanny" not in run.stderr
    ap = float(re.search(r"AP (\d\.\d+)", run.stdout).group(1))
    assert 0.3 < ap <= 1.0, run.stdout  # the shipped model on a fresh simulated sheet, 30 alpha decays
    assert (tmp_path / "pr.png").stat().st_size > 1000
    # the table keeps its provenance: the threshold record the example passed, this run's id
    table = scanstream.read_candidates(tmp_path / "candidates")
    meta = json.loads(table.schema.metadata[b"scanstream"])
    manifest = read_manifest(tmp_path / "candidates")
    assert meta["run_id"] == manifest["run_id"] and meta["threshold"]["target"] == {"kind": "recall", "value": 0.9}
    assert meta["model_hashes"] == meta["threshold"]["model_hashes"]


@pytest.mark.parametrize(
    ("code", "unguarded"),
    [
        ("print(unguarded_script())", True),
        ("def f():\n    return unguarded_script()\nprint(f())", True),  # a function called at the top level
        ('if __name__ == "__main__":\n    print(unguarded_script())', False),
        ('def main():\n    print(unguarded_script())\nif "__main__" == __name__:\n    main()', False),
    ],
)
def test_unguarded_script_names_the_script_a_worker_process_would_rerun(tmp_path, code, unguarded):
    script = tmp_path / "user.py"
    script.write_text(f"from scanstream.executor import unguarded_script\n{code}\n")
    out = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True, env=SCRIPT_ENV).stdout
    assert out.strip() == (str(script) if unguarded else "None")


def test_unguarded_script_is_none_without_a_script_file():
    """``python -c`` (and a notebook) have no file for a worker to import again: processes stay."""
    code = "from scanstream.executor import unguarded_script; print(unguarded_script())"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=SCRIPT_ENV).stdout
    assert out.strip() == "None"


def test_a_packages_main_run_with_dash_m_keeps_processes(tmp_path):
    """``python -m scanstream VERB``: spawn never imports a package's ``__main__`` again, guard or not."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__main__.py").write_text("from scanstream.executor import unguarded_script\nprint(unguarded_script())\n")
    out = subprocess.run([sys.executable, "-m", "pkg"], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env=SCRIPT_ENV).stdout
    assert out.strip() == "None"


def test_gpu_workers_from_an_unguarded_script_are_refused_in_one_line(tmp_path):
    script = tmp_path / "user.py"
    script.write_text("from scanstream.errors import SchedulerError\nfrom scanstream.executor import local_cluster\n"
                      "try:\n    local_cluster(gpus=1)\nexcept SchedulerError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True, env=SCRIPT_ENV).stdout
    assert out.strip() == (f"{script}: GPU workers are processes, which would run this script again; "
                           'put its calls under `if __name__ == "__main__":`')


def test_an_unguarded_script_gets_thread_workers_that_run_tasks(tmp_path):
    """The case README's example meets: a LocalCluster asked for processes, from an unguarded script."""
    script = tmp_path / "user.py"
    script.write_text("from scanstream.executor import dask_client, run_tasks\n"
                      "with dask_client(workers=2) as client:\n"
                      "    print(sorted(r for _, r, _ in run_tasks(client, abs, [-1, -2, -3])))\n"
                      "    print(all(w.startswith('inproc://') for w in client.scheduler_info()['workers']))\n")
    run = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True, env=SCRIPT_ENV,
                         timeout=300)
    assert run.stdout.split() == ["[1,", "2,", "3]", "True"]
    assert run.stderr.count("guard around this call") == 1


def test_read_candidates_reads_finished_tables_only(tmp_path):
    from fixtures import make_store
    from test_query import candidates_from_store

    from scanstream.candidates.table import MANIFEST
    from scanstream.errors import IncompleteTableError, InputError

    store = make_store(tmp_path / "s.zarr", n=12)
    table_dir = candidates_from_store(store, tmp_path / "cands", seed=2)
    table = scanstream.read_candidates(table_dir)
    assert table.num_rows == 12 and {"object_id", "score", "sheet"} <= set(table.column_names)
    assert scanstream.read_candidates(table_dir, columns=["score"]).column_names == ["score"]
    with pytest.raises(InputError, match="to must be one of"):
        scanstream.read_candidates(table_dir, to="excel")
    (table_dir / MANIFEST).unlink()
    with pytest.raises(IncompleteTableError):
        scanstream.read_candidates(table_dir)
    assert scanstream.read_candidates(table_dir, partial=True).num_rows == 12


@pytest.mark.parametrize("to", ["pandas", "polars"])
def test_read_candidates_to_a_dataframe_library(tmp_path, to):
    from fixtures import make_store
    from test_query import candidates_from_store

    from scanstream.errors import InputError

    table_dir = candidates_from_store(make_store(tmp_path / "s.zarr", n=6), tmp_path / "cands")
    try:
        __import__(to)
    except ModuleNotFoundError:
        with pytest.raises(InputError, match=f"needs {to}, which is not installed"):
            scanstream.read_candidates(table_dir, to=to)
    else:
        assert len(scanstream.read_candidates(table_dir, to=to)) == 6


@pytest.mark.parametrize("to", ["arrow", "pandas", "polars"])
def test_read_candidates_keeps_the_tables_metadata(tmp_path, to):
    """The threshold record, model hashes and run id reach the caller: Arrow schema, pandas attrs."""
    import json

    from fixtures import make_store
    from test_query import candidates_from_store

    from scanstream.candidates.table import read_metadata

    pytest.importorskip(to if to != "arrow" else "pyarrow")
    table_dir = candidates_from_store(make_store(tmp_path / "s.zarr", n=6), tmp_path / "cands", threshold=0.5)
    expected = read_metadata(table_dir)
    assert expected["threshold"]["threshold"] == 0.5 and expected["run_id"] == "r" and expected["model_hashes"]
    got = scanstream.read_candidates(table_dir, to=to)
    if to == "arrow":
        assert json.loads(got.schema.metadata[b"scanstream"]) == expected
        # the same record query --out writes (which adds the query)
        queried = scanstream.query_candidates(table_dir)
        assert {k: v for k, v in json.loads(queried.schema.metadata[b"scanstream"]).items() if k != "query"} == expected
    elif to == "pandas":
        assert got.attrs["scanstream"] == expected
        assert got[got["score"] > 0].attrs["scanstream"] == expected  # pandas carries attrs through a filter
    else:
        assert scanstream.read_candidates_metadata(table_dir) == expected  # polars has no table metadata
    assert len(got) == 6


def test_read_candidates_without_metadata_gives_none(tmp_path):
    """Parts written without the ``scanstream`` key: no metadata, and nothing invented."""
    import pyarrow.parquet as pq
    from fixtures import make_store
    from test_query import candidates_from_store

    from scanstream.candidates import table as cand

    table_dir = candidates_from_store(make_store(tmp_path / "s.zarr", n=4), tmp_path / "cands")
    for part in table_dir.glob("sheet-*/*.parquet"):
        pq.write_table(pq.read_table(part).replace_schema_metadata(None), part)
    cand.write_side(table_dir, cand.MANIFEST, {"complete": True})
    got = scanstream.read_candidates(table_dir, to="pandas")
    assert "scanstream" not in got.attrs and len(got) == 4
    assert scanstream.read_candidates(table_dir).schema.metadata is None
