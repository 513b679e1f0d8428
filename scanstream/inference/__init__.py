"""Inference: scoring crop stores with a trained ensemble, thresholds, classification, the overnight watch.

``engine`` (the ensemble and the per-range scoring task run on Dask workers), ``scoring``
(one store scored in this process; it calibrates the threshold records of
:mod:`scanstream.threshold`), ``classify`` (stores to Parquet candidate tables, resumable) and
``watch`` (an inbox of stores processed as they arrive). Each imports only the ones listed before it.
"""
