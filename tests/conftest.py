"""Pytest fixtures shared by the test modules; the helpers behind them live in ``fixtures.py``."""

from __future__ import annotations

import pytest
from fixtures import make_store


@pytest.fixture
def store_factory(tmp_path):
    """Call ``store_factory(name, n=64, alpha_fraction=0.25, seed=0, sheet='S1', labelled=True)``."""

    def factory(name: str = "s.zarr", **kw):
        return make_store(tmp_path / name, **kw)

    return factory
