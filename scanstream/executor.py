"""Dask for every stage: one way to start or join a cluster, and the worker settings scanstream uses.

:func:`dask_client` is the only place a Dask client is made (training's loaders, the search,
classify and watch all use it): connect to an existing scheduler (one timeout,
:data:`CONNECT_TIMEOUT`; an unreachable one is a :class:`~scanstream.errors.SchedulerError`), or
start a LocalCluster for the run and close it afterwards. On GPUs the local cluster has one
worker per GPU, each seeing only its own device and offering the resource ``{"GPU": 1}``
(dask-cuda's ``LocalCUDACluster`` where it is installed, else an equivalent SpecCluster).
:func:`task_resources` says what a model task claims on a given cluster.

Dask workers and glibc malloc: settings for the workers scanstream starts, tuning for the rest.

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, a guard against memory
creep in dataframe workloads. With torch it makes glibc hand every freed tensor buffer back to
the kernel and fault it in again on the next step: on the 2-core development machine,
mobilenet_v3_small at 112 px trained at 44 images/s with it and at 75-126 images/s without,
most of the lost time spent in the kernel. Workers started by scanstream keep glibc's default
(or whatever the calling environment sets); the owner of an existing cluster configures its
workers (docs/classify.md). Where the workers are not ours, :func:`tune_malloc` (called by
every process that builds an inference ensemble) sets glibc's thresholds from inside.

Scripts without a ``__main__`` guard: Dask starts worker processes with ``spawn``, and each
new process imports the calling script again (as ``__mp_main__``). A script that calls
``scanstream.classify`` at its top level, unguarded, would run again in every worker (and
fail there, e.g. on the store it already wrote). :func:`unguarded_script` finds that case
before any worker starts, and :func:`local_cluster` then runs CPU workers as threads of this
process (one warning line saying so) and refuses GPU workers with a one-line
:class:`~scanstream.errors.SchedulerError`. A notebook, ``python -c`` and guarded scripts keep
worker processes.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask

from scanstream.errors import SchedulerError
from scanstream.progress import DASHBOARD_LOGGER

#: how long a client waits for an existing scheduler before giving up
CONNECT_TIMEOUT = "30s"

logger = logging.getLogger(__name__)

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


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` (either side first)."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)):
        return False
    sides = [node.test.left, *node.test.comparators]
    return (any(isinstance(n, ast.Name) and n.id == "__name__" for n in sides)
            and any(isinstance(n, ast.Constant) and n.value == "__main__" for n in sides))


def unguarded_script() -> str | None:
    """The script a spawned worker process would run again, or None when spawning is safe.

    That is the main module's file when the current call comes from its top-level code outside
    an ``if __name__ == "__main__":`` block (the main module's ``<module>`` frame on the stack
    gives the line). None for a notebook or ``python -c`` (no file), a package's ``__main__``
    (``python -m scanstream``: multiprocessing's spawn skips it), a guarded call, a Dask
    configured to ``fork``, or a file that cannot be read.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or dask.config.get("distributed.worker.multiprocessing-method", "spawn") == "fork":
        return None
    spec = getattr(main, "__spec__", None)
    if Path(path).stem == "__main__" or (spec is not None and spec.name.endswith("__main__")):
        return None  # a package's __main__ (``python -m scanstream``): spawn does not import it again
    line = None
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return None
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    guarded = any(_is_main_guard(n) and n.lineno <= line <= (n.end_lineno or n.lineno) for n in ast.walk(tree))
    return None if guarded else str(path)


def local_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA, or without torch: the light install)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def connect(address: str) -> Any:
    """A client of the existing scheduler at ``address``."""
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(f"cannot connect to Dask scheduler {address!r}: {exc}") from None


def _gpu_ids(n: int) -> list[str]:
    gpus = gpu_count()
    if n > gpus:
        raise SchedulerError(f"{n} GPU workers asked for on a machine with {gpus} GPU(s)")
    # keep a batch system's assignment: worker i gets the i-th GPU this process may use
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(gpus)]
    return ids[:n]


def local_cluster(workers: int | None = None, *, gpus: int = 0, processes: bool = True,
                  silence_logs: int = logging.WARNING) -> Any:
    """A LocalCluster for one run: ``gpus`` workers, one per GPU, or ``workers`` CPU workers.

    Every worker has one thread (torch does the parallel work inside a task) and a free
    dashboard port; workers keep glibc's malloc defaults (:func:`worker_settings`). Called from
    a script's unguarded top level (:func:`unguarded_script`), CPU workers are threads of this
    process and GPU workers are refused, since a worker process would run the script again.
    """
    if workers is not None and workers < 1:
        raise SchedulerError(f"workers must be >= 1, got {workers}")
    script = unguarded_script() if processes or gpus else None
    if script is not None:
        if gpus:
            raise SchedulerError(f"{script}: GPU workers are processes, which would run this script again; "
                                 'put its calls under `if __name__ == "__main__":`')
        logger.warning('%s: no `if __name__ == "__main__":` guard around this call, so the Dask workers are '
                       "threads of this process (a worker process would run the script again)", script)
        processes = False
    with worker_settings():
        if gpus:
            ids = _gpu_ids(workers or gpus)
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                return _gpu_spec_cluster(ids, silence_logs)
            return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(ids), threads_per_worker=1,
                                    resources={"GPU": 1}, dashboard_address=":0", silence_logs=silence_logs)
        from distributed import LocalCluster

        # ":0": a free port for the dashboard (None would take the default 8787, often in use)
        return LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=processes,
                            dashboard_address=":0", silence_logs=silence_logs)


def _gpu_spec_cluster(ids: list[str], silence_logs: int) -> Any:
    from distributed import Nanny, Scheduler, SpecCluster

    worker = {
        i: {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": gpu}}}
        for i, gpu in enumerate(ids)
    }
    return SpecCluster(workers=worker, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                       silence_logs=silence_logs)


@contextmanager
def dask_client(scheduler: str | None = None, *, workers: int | None = None, gpus: int = 0,
                processes: bool = True) -> Iterator[Any]:
    """A Dask client for a run: to ``scheduler`` if given, else to a LocalCluster closed afterwards.

    The dashboard link is logged at INFO on :data:`DASHBOARD_LOGGER`, which the CLI prints for
    every verb that starts or joins a cluster.
    """
    if scheduler:
        client = connect(scheduler)
        with client:
            _announce(client)
            yield client
        return
    from distributed import Client

    with local_cluster(workers, gpus=gpus, processes=processes) as cluster, Client(cluster) as client:
        _announce(client)
        yield client


def _announce(client: Any) -> None:
    logging.getLogger(DASHBOARD_LOGGER).info("Dask dashboard: %s", client.dashboard_link)


def worker_count(client: Any) -> int:
    """Workers of the cluster behind ``client`` (at least 1)."""
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))


def task_resources(client: Any, *, gpu: bool | None = None) -> dict[str, int] | None:
    """What a model task claims: ``{"GPU": 1}`` on clusters whose workers offer GPUs, else nothing.

    ``gpu`` overrides the look at the workers (a CPU run on a GPU cluster claims nothing).
    """
    if gpu is None:
        infos = client.scheduler_info(n_workers=-1)["workers"].values()
        gpu = any("GPU" in (w.get("resources") or {}) for w in infos)
    return {"GPU": 1} if gpu else None


def host_threads(client: Any) -> tuple[tuple[str, int], ...]:
    """Torch threads per task on each worker host: the host's cores over its Dask threads."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(local_cores)
    per_host: dict[str, list[int]] = {}
    host_cores: dict[str, int] = {}
    for addr, w in info.items():
        host = addr.rsplit(":", 1)[0].split("://")[-1]
        per_host.setdefault(host, []).append(int(w.get("nthreads", 1)))
        host_cores[host] = int(cores.get(addr, 1))
    return tuple(sorted((h, max(1, host_cores[h] // max(1, sum(n)))) for h, n in per_host.items()))


def run_tasks(client: Any, fn: Any, items: Sequence[Any], *, resources: dict[str, int] | None = None,
              keys: Sequence[str] | None = None) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Run ``fn(item)`` on the cluster for every item; yield ``(item, result, None)`` or ``(item, None, error)``.

    Results come in completion order. Tasks are impure (never deduplicated by Dask) and not
    retried: a failing task is reported once, the others go on, and the caller decides (the
    stages rerun only what failed). ``keys`` names the tasks on the dashboard.
    """
    from distributed import as_completed

    if not items:
        return
    kw: dict[str, Any] = {"pure": False, "resources": resources, "retries": 0}
    if keys is not None:
        kw["key"] = [f"{k}-{os.urandom(4).hex()}" for k in keys]
    futures = client.map(fn, list(items), **kw)
    item_of = {f.key: item for f, item in zip(futures, items, strict=True)}
    for fut in as_completed(futures):
        item = item_of[fut.key]
        if fut.status == "error":
            yield item, None, fut.exception()
        else:
            yield item, fut.result(), None
