"""scanstream: alpha-decay candidates from overall scanning of nuclear emulsion.

The verbs' library functions, one import away (``import scanstream as ss``)::

    store = ss.open_store("sheet.zarr")                       # a crop store
    result = ss.classify(["sheet.zarr"], ["model.safetensors"], out="candidates")
    table = ss.read_candidates("candidates")                  # pyarrow; to="pandas" or "polars"

Names load on first use (PEP 562), so ``import scanstream`` stays cheap and torch is imported
only by what needs it. The stage packages (``scanstream.store``, ``.ingest``, ``.simulate``,
``.picker``, ``.training``, ``.inference``, ``.candidates``, ``.evaluation``, ``.review``,
``.rangeenergy``) hold the rest; docs/architecture.md, "The code", maps them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> "module:attribute"
_EXPORTS = {
    # stores
    "open_store": "scanstream.store:open_store",
    "create_store": "scanstream.store:create_store",
    "StoreWriter": "scanstream.store:StoreWriter",
    "CropStore": "scanstream.store:CropStore",
    "validate_store": "scanstream.store:validate_store",
    "open_volume": "scanstream.store:open_volume",
    "open_dataset": "scanstream.store:open_dataset",
    # scanner output and simulation
    "ingest_images": "scanstream.ingest.images:ingest",  # not "ingest": that name is the ingest package
    "ingest_stacks": "scanstream.ingest.stacks:ingest_stacks",
    "simulate_store": "scanstream.simulate:simulate_store",
    "simulate_dataset": "scanstream.simulate:simulate_dataset",
    # the former method
    "run_baseline": "scanstream.picker.cuts:run_baseline",
    # training
    "TrainConfig": "scanstream.training.config:TrainConfig",
    "SearchConfig": "scanstream.training.config:SearchConfig",
    "train": "scanstream.training.loop:train",
    "run_search": "scanstream.training.search:run_search",
    "load_checkpoint": "scanstream.network.checkpoint:load_checkpoint",
    # inference
    "score_store": "scanstream.inference.scoring:score_store",
    "calibrate_threshold": "scanstream.inference.scoring:calibrate_threshold",
    "load_threshold": "scanstream.threshold:load_threshold",
    "classify": "scanstream.inference.classify:classify",
    "watch": "scanstream.inference.watch:watch",
    # the morning
    "query_candidates": "scanstream.candidates.query:query_candidates",
    "read_candidates": "scanstream.candidates.table:read_candidates",
    "read_candidates_metadata": "scanstream.candidates.table:read_metadata",
    "evaluate": "scanstream.evaluation.evaluate:evaluate",
    "fit_sheet": "scanstream.rangeenergy:fit_sheet",
}

__all__ = [
    "CropStore",
    "SearchConfig",
    "StoreWriter",
    "TrainConfig",
    "__version__",
    "calibrate_threshold",
    "classify",
    "create_store",
    "evaluate",
    "fit_sheet",
    "ingest_images",
    "ingest_stacks",
    "load_checkpoint",
    "load_threshold",
    "open_dataset",
    "open_store",
    "open_volume",
    "query_candidates",
    "read_candidates",
    "read_candidates_metadata",
    "run_baseline",
    "run_search",
    "score_store",
    "simulate_dataset",
    "simulate_store",
    "train",
    "validate_store",
    "watch",
]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'scanstream' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
