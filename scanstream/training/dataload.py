"""Batches of crops for training and validation, read by Dask workers (or local threads).

A crop store is chunked along n (64 crops a chunk, zstd): reading one crop decodes its whole
chunk, so random access per crop would decode ~64 times more than it uses. Loading is
therefore planned in *blocks*: every epoch the store's chunks are shuffled and grouped
(``block_crops`` crops per block, whole chunks), and each block's share of the epoch's
(over)sampled indices is shuffled within the block. A task reads its block's chunks as
chunk-aligned slices, resizes the rows it needs to the network's input size, gathers the
samples in plan order and, optionally, augments them. The main process keeps a window of
tasks in flight (``ahead``), consumes their results in plan order and cuts the stream into
mini-batches, so batch boundaries need not align with blocks. Everything is a function of
(seed, epoch): the same seed gives the same batches whatever the worker timing.

Executors are anything with ``submit(fn, *args, **kwargs) -> future`` whose futures have
``result()``: a :class:`distributed.Client` (``loader="dask"``; a LocalCluster of processes
with one thread each is started unless a scheduler address is given) or a
:class:`concurrent.futures.ThreadPoolExecutor` (``loader="local"``, used by grid-search
trials that already run inside Dask tasks). Tasks carry only the store path and index
arrays; each worker opens the store itself and keeps it open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scanstream.errors import InputError
from scanstream.executor import dask_client
from scanstream.training.augment import AugmentConfig, augment
from scanstream.training.config import DEFAULT_BLOCK_CROPS, LOADERS

logger = logging.getLogger(__name__)


_ARRAYS: dict[str, Any] = {}
_ARRAYS_LOCK = threading.Lock()


def _crops_array(store_path: str):
    """The store's ``crops`` array, opened once per process (workers keep it open)."""
    with _ARRAYS_LOCK:
        arr = _ARRAYS.get(store_path)
        if arr is None:
            import zarr

            arr = zarr.open_array(str(Path(store_path) / "crops"), mode="r")
            _ARRAYS[store_path] = arr
        return arr


def resize_crops(crops: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (k, H, W, 3) -> uint8 (k, size, size, 3), antialiased bilinear as :func:`preprocess`.

    Resizing is done in float and rounded, so the network sees what
    :func:`scanstream.network.model.preprocess` would produce from the full crop to within 0.5/255.
    """
    x = torch.as_tensor(crops)
    if x.shape[1] == size and x.shape[2] == size:
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@dataclass(frozen=True)
class BlockTask:
    """One unit of loading work.

    Attributes
    ----------
    chunks : tuple of int
        Chunk numbers to read (each a chunk-aligned slice of ``chunk_crops`` crops).
    indices : numpy.ndarray
        int64 (k,): absolute crop indices to emit, in order (repeats allowed), all inside
        ``chunks``.
    seed : int
        Augmentation seed of this block.
    """

    chunks: tuple[int, ...]
    indices: np.ndarray
    seed: int = 0


def _block_seed(seed: int, epoch: int, block: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, block, 0xB10C]).generate_state(1)[0])


def _chunks_per_block(chunk_crops: int, block_crops: int) -> int:
    if chunk_crops < 1 or block_crops < 1:
        raise InputError(f"chunk and block sizes must be >= 1, got {chunk_crops}, {block_crops}")
    return max(1, -(-block_crops // chunk_crops))


def plan_train_epoch(
    sample_indices: np.ndarray, *, n: int, chunk_crops: int, block_crops: int = DEFAULT_BLOCK_CROPS, seed: int = 0, epoch: int = 0
) -> list[BlockTask]:
    """Group an epoch's sampled indices into blocks of shuffled chunks.

    Parameters
    ----------
    sample_indices : numpy.ndarray
        int (s,) crop indices drawn for the epoch (with repeats), each in 0..n-1.
    n : int
        Crops in the store.
    chunk_crops, block_crops : int
        The store's chunk length and the crops a block spans (rounded up to whole chunks).

    Returns
    -------
    list of BlockTask
        Blocks in a random order; together they emit every sampled index exactly as often as
        drawn. Blocks that drew nothing are left out.
    """
    sample_indices = np.asarray(sample_indices, dtype=np.int64)
    if sample_indices.size and (sample_indices.min() < 0 or sample_indices.max() >= n):
        raise InputError(f"sample indices outside 0..{n - 1}")
    rng = np.random.default_rng([seed, epoch, 0xC4A])
    n_chunks = -(-n // chunk_crops)
    per_block = _chunks_per_block(chunk_crops, block_crops)
    order = rng.permutation(n_chunks)
    block_of_chunk = np.empty(n_chunks, dtype=np.int64)
    block_of_chunk[order] = np.arange(n_chunks) // per_block
    sample_block = block_of_chunk[sample_indices // chunk_crops]
    tasks = []
    for b in range(-(-n_chunks // per_block)):
        idx = sample_indices[sample_block == b]
        if idx.size == 0:
            continue
        # only the chunks that drew samples are read (epochs shorter than the store read less)
        chunks = tuple(int(c) for c in np.unique(idx // chunk_crops))
        tasks.append(BlockTask(chunks=chunks, indices=idx[rng.permutation(idx.size)], seed=_block_seed(seed, epoch, b)))
    return tasks


def plan_sequential(n: int, *, chunk_crops: int, block_crops: int = DEFAULT_BLOCK_CROPS) -> list[BlockTask]:
    """Every crop once, in store order, in chunk-aligned blocks (validation)."""
    per_block = _chunks_per_block(chunk_crops, block_crops)
    n_chunks = -(-n // chunk_crops)
    tasks = []
    for first in range(0, n_chunks, per_block):
        chunks = tuple(range(first, min(first + per_block, n_chunks)))
        start, stop = chunks[0] * chunk_crops, min((chunks[-1] + 1) * chunk_crops, n)
        tasks.append(BlockTask(chunks=chunks, indices=np.arange(start, stop, dtype=np.int64)))
    return tasks


def load_block(
    store_path: str,
    chunks: Sequence[int],
    indices: np.ndarray,
    *,
    chunk_crops: int,
    size: int,
    augment_config: AugmentConfig | None = None,
    seed: int = 0,
    torch_threads: int | None = None,
) -> np.ndarray:
    """Read a block's chunks and return its samples, resized (and augmented), in order.

    Runs on a Dask worker or a local thread. Opens the store by path (kept open per process).

    Parameters
    ----------
    store_path : str
        The ``NAME.zarr`` directory (readable from the worker).
    chunks : sequence of int
        Chunk numbers to read, each as the slice ``[c * chunk_crops, (c + 1) * chunk_crops)``.
    indices : numpy.ndarray
        int64 (k,) absolute crop indices to emit, all inside ``chunks``.
    size : int
        Output side in pixels.
    augment_config : AugmentConfig, optional
        Flips + RandAugment applied here (per image, seeded by ``seed``); None: no augmentation.
    torch_threads : int, optional
        Set torch's thread count first (Dask worker processes: 1, to avoid oversubscription).

    Returns
    -------
    numpy.ndarray
        uint8 (k, size, size, 3).
    """
    if torch_threads is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    arr = _crops_array(store_path)
    n = arr.shape[0]
    parts, offsets, pos = [], {}, 0
    for c in chunks:
        start, stop = c * chunk_crops, min((c + 1) * chunk_crops, n)
        parts.append(np.asarray(arr[start:stop]))
        offsets[c] = pos - start
        pos += stop - start
    block = np.concatenate(parts) if len(parts) > 1 else parts[0]
    indices = np.asarray(indices, dtype=np.int64)
    local = indices + np.array([offsets.get(int(c), -(10**12)) for c in indices // chunk_crops], dtype=np.int64)
    if indices.size and (local.min() < 0 or local.max() >= len(block)):
        raise InputError(f"{store_path}: block indices fall outside chunks {list(chunks)}")
    # Resize only the distinct rows used (oversampling repeats positives many times).
    uniq, inverse = np.unique(local, return_inverse=True)
    small = resize_crops(block[uniq], size)
    out = small[torch.from_numpy(inverse.reshape(-1))]
    if augment_config is not None and out.shape[0]:
        out = augment(out, augment_config, torch.Generator().manual_seed(seed))
    return out.numpy()


class BlockStream:
    """Iterate ``(indices, crops)`` of planned blocks in order, keeping ``ahead`` tasks in flight.

    Parameters
    ----------
    executor
        ``submit(fn, *args, **kwargs) -> future`` (dask Client or ThreadPoolExecutor).
    store_path : str
    tasks : list of BlockTask
    ahead : int
        Tasks submitted before their turn (>= 1).
    **load_kwargs
        Passed to :func:`load_block` (chunk_crops, size, augment_config, torch_threads).
    """

    def __init__(self, executor: Any, store_path: str, tasks: list[BlockTask], *, ahead: int = 3, **load_kwargs: Any) -> None:
        self.executor = executor
        self.store_path = store_path
        self.tasks = tasks
        self.ahead = max(1, ahead)
        self.load_kwargs = load_kwargs
        self._is_dask = type(executor).__module__.startswith("distributed")
        self._pending: deque | None = None
        self._it: Iterator[BlockTask] | None = None

    def _submit(self, task: BlockTask):
        kw = dict(self.load_kwargs, seed=task.seed)
        if self._is_dask:
            kw["pure"] = False
        return self.executor.submit(load_block, self.store_path, task.chunks, task.indices, **kw)

    def start(self) -> BlockStream:
        """Submit the first ``ahead`` tasks now (e.g. the next epoch's, while validation runs)."""
        if self._pending is None:
            self._it = iter(self.tasks)
            self._pending = deque()
            for task in self._it:
                self._pending.append((task, self._submit(task)))
                if len(self._pending) >= self.ahead:
                    break
        return self

    def wait_ready(self) -> BlockStream:
        """Block until the tasks submitted so far have finished (benchmarks)."""
        for _, fut in self._pending or ():
            fut.result()
        return self

    def cancel(self) -> None:
        """Cancel tasks submitted but not consumed."""
        for _, fut in self._pending or ():
            fut.cancel()
        self._pending = deque()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self.start()
        pending, it = self._pending, self._it
        try:
            while pending:
                task, fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, self._submit(nxt)))
                yield task.indices, fut.result()
        finally:
            self.cancel()


def rebatch(stream: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int, *, drop_last: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cut a stream of ``(indices (k,), crops (k, ...))`` pieces into batches of ``batch_size``."""
    buf_i: list[np.ndarray] = []
    buf_c: list[np.ndarray] = []
    have = 0
    for idx, crops in stream:
        buf_i.append(idx)
        buf_c.append(crops)
        have += len(idx)
        if have < batch_size:
            continue
        all_i = np.concatenate(buf_i)
        all_c = np.concatenate(buf_c) if len(buf_c) > 1 else buf_c[0]
        full = (have // batch_size) * batch_size
        for s in range(0, full, batch_size):
            yield all_i[s : s + batch_size], all_c[s : s + batch_size]
        buf_i, buf_c, have = ([all_i[full:]], [all_c[full:]], have - full) if have > full else ([], [], 0)
    if have and not drop_last:
        yield np.concatenate(buf_i), np.concatenate(buf_c)


def default_workers(device: torch.device) -> int:
    """Loader workers: a few for a GPU (it consumes batches fast), one per 4 cores on CPU."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cores - 2))
    return max(1, cores // 4)


def threads_beside_loader(device: torch.device, workers: int, cores: int) -> int:
    """Torch threads on ``cores`` cores that also run ``workers`` loader threads or processes.

    On the CPU the loader gets its cores and torch the rest: torch threads on every core as
    well would oversubscribe them. A GPU step leaves the host's cores mostly idle.
    """
    return cores if device.type == "cuda" else max(1, cores - workers)


@contextlib.contextmanager
def open_executor(loader: str, *, scheduler: str | None = None, workers: int = 1) -> Iterator[Any]:
    """An executor for :class:`BlockStream`; closes any cluster it started.

    ``loader="dask"``: connect to ``scheduler`` if given, else start a LocalCluster of
    ``workers`` processes with one thread each. ``loader="local"``: a thread pool of
    ``workers`` threads, no Dask.
    """
    if loader not in LOADERS:
        raise InputError(f"unknown loader {loader!r}; choose one of {', '.join(LOADERS)}")
    if loader == "local":
        if scheduler:
            raise InputError("--scheduler needs --loader dask")
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="scanstream-load") as pool:
            yield pool
        return
    with dask_client(scheduler, workers=max(1, workers)) as client:
        yield client
