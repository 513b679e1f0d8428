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


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests are skipped where torch sees no CUDA device."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch  # only when a GPU test is collected: a run of CPU tests does not pay for it

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA: torch sees no GPU")
        for item in gpu:
            item.add_marker(skip)
