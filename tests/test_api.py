"""The public Python API: ``import scanstream`` is cheap and every exported name resolves."""

from __future__ import annotations

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


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    """README's "From Python" block, run as written in a scratch folder (the model path made absolute)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- python-example -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, "README lost its Python example"
    code = block.group(1).replace('"models/', f'"{ROOT}/models/')
    run = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    ap = float(re.search(r"AP (\d\.\d+)", run.stdout).group(1))
    assert 0.3 < ap <= 1.0, run.stdout  # the shipped model on a fresh simulated sheet, 30 alpha decays
    assert (tmp_path / "pr.png").stat().st_size > 1000 and (tmp_path / "candidates" / "_manifest.parquet").exists()


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
