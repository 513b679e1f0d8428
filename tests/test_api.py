"""The public Python API: ``import scanstream`` is cheap and every exported name resolves."""

from __future__ import annotations

import subprocess
import sys

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


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        scanstream.nope  # noqa: B018


def test_the_api_works_end_to_end_on_a_tiny_store(tmp_path):
    store = scanstream.simulate_store(tmp_path / "s.zarr", objects=6, alpha_fraction=0.5, sheet="S1", seed=1)
    assert scanstream.open_store(store.path).n == 6 and scanstream.validate_store(store.path) == []
