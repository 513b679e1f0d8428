"""Dask workers and glibc malloc: settings for the workers scanstream starts, tuning for the rest.

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, a guard against memory
creep in dataframe workloads. With torch it makes glibc hand every freed tensor buffer back to
the kernel and fault it in again on the next step: on the 2-core development machine,
mobilenet_v3_small at 112 px trained at 44 images/s with it and at 75-126 images/s without,
most of the lost time spent in the kernel. Workers started by scanstream keep glibc's default
(or whatever the calling environment sets); the owner of an existing cluster configures its
workers (docs/classify.md). Where the workers are not ours, :func:`tune_malloc` (called by
every process that builds an inference ensemble) sets glibc's thresholds from inside.
"""

from __future__ import annotations

from typing import Any

import dask

NANNY_ENVIRON: dict[str, Any] = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def worker_settings() -> Any:
    """Context manager: start LocalCluster / Nanny workers inside it."""
    return dask.config.set(NANNY_ENVIRON)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Keep large tensors in glibc's heap instead of fresh ``mmap`` pages (once per process).

    Dask's Nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes
    glibc's mmap threshold at 128 kB: every activation of a CNN is then a new mapping whose
    pages fault in on first touch, and the forward pass slows down (measured on this project's
    machine: resnet18 at 112 px, 205,000 minor faults per 96 crops instead of 41,000, and
    0.5 s of system time). Raising the mmap threshold to 32 MB and the trim threshold to
    512 MB brings the faults to about 3,500. No-op off glibc. Returns whether it applied.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20) == 1
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = bool(ok)
    return _MALLOC_TUNED
