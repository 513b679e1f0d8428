"""Settings of the Dask workers scanstream starts itself (LocalCluster, one worker per GPU).

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, a guard against memory
creep in dataframe workloads. With torch it makes glibc hand every freed tensor buffer back to
the kernel and fault it in again on the next step: on the 2-core development machine,
mobilenet_v3_small at 112 px trained at 44 images/s with it and at 75-126 images/s without,
most of the lost time spent in the kernel. Workers started by scanstream keep glibc's default
(or whatever the calling environment sets); the owner of an existing cluster configures its
workers (docs/classify.md).
"""

from __future__ import annotations

from typing import Any

import dask

NANNY_ENVIRON: dict[str, Any] = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def worker_settings() -> Any:
    """Context manager: start LocalCluster / Nanny workers inside it."""
    return dask.config.set(NANNY_ENVIRON)
