"""scanstream: alpha-decay candidates from overall scanning of nuclear emulsion.

Vertex crops live in zarr crop stores (:mod:`scanstream.store`); the stages around them
(simulate, ingest, train, threshold, classify, evaluate, query, review) each live in a module
of their own. See README.md for the architecture.
"""

from __future__ import annotations

__version__ = "0.1.0"
