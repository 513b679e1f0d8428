"""Running models over crop stores: the device engine and the Dask side of classify.

Three layers, each usable without the next:

- :class:`Ensemble` holds the loaded checkpoints on one device and turns uint8 crops into
  mean logits: crops go to the device as uint8 and are normalised there
  (:func:`scanstream.network.model.preprocess`), models run in channels_last, under bf16 autocast
  when asked. A ``*.onnx`` model written by :mod:`scanstream.inference.export` runs on the CPU in
  ONNX Runtime (:class:`~scanstream.inference.onnx_model.OnnxNetwork`) after the same preprocessing.
- :func:`score_range` walks a chunk-aligned range of a store, reading the next block in a
  background thread while the model runs on the current one, and checks what it read
  against the store's block digests (a missing shard file or a corrupt block fails the range
  by name instead of scoring zeros or garbage).
- :func:`run_task` is the Dask task: it finds the worker's models in a worker-local cache
  (keyed by checkpoint hash, loaded on first use, never shipped in the task graph), scores
  one range and writes its candidate parts. :func:`scanstream.executor.dask_client` starts a
  LocalCluster for the run (processes, one thread each; one worker per GPU with ``{"GPU": 1}``
  resources) or connects to an existing scheduler.

:func:`scanstream.inference.scoring.score_store` runs the first two layers over a whole store in
this process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from scanstream import store as st
from scanstream.candidates import table as cand
from scanstream.devices import TORCH_HINT, resolve_device, resolve_precision, torch
from scanstream.errors import CheckpointError, ConfigError, InputError, StoreError, TaskError
from scanstream.executor import local_cores, tune_malloc
from scanstream.inference.onnx_model import OnnxNetwork, load_onnx, onnx_session
from scanstream.inference.rows import ObjectInputs, prepared_key
from scanstream.network.arrays import preprocess_array
from scanstream.network.header import PREFILTER_PREFIX, ModelConfig, checkpoint_hash, read_header
from scanstream.picker.features import check_feature_rows
from scanstream.picker.learned import FeatureModel, inputs_and_logits

logger = logging.getLogger(__name__)


# -- checkpoints --------------------------------------------------------------------------
class TorchNetwork(NamedTuple):
    """The torch-only modules a ``*.safetensors`` checkpoint needs."""

    checkpoint: Any  # scanstream.network.checkpoint
    model: Any  # scanstream.network.model


def torch_network(path: str | os.PathLike) -> TorchNetwork:
    """:mod:`scanstream.network.checkpoint` and :mod:`~scanstream.network.model`, which need torch.

    Imported when a ``*.safetensors`` checkpoint is used, so that a machine classifying with ONNX
    exports runs without torch (the light install, docs/install.md). InputError without torch.
    """
    if torch is None:
        raise InputError(f"{path}: a .safetensors checkpoint needs torch, which is not installed: {TORCH_HINT}; "
                         "or classify with its ONNX export (scanstream export)")
    from scanstream.network import checkpoint, model
    return TorchNetwork(checkpoint, model)


def checkpoint_identity(path: str | os.PathLike) -> str:
    """The model file's hash after checking it is a scanstream checkpoint (tensors included) or ONNX export."""
    header = model_header(path)
    if Path(path).suffix != ".onnx":
        check_tensors(path, header)
    return checkpoint_hash(path)


def check_tensors(path: str | os.PathLike, header: dict[str, Any]) -> None:
    """Refuse a checkpoint whose tensors do not fit the network its metadata names, before any work.

    Names and shapes in the safetensors header are compared with the network built from the
    ``model_config`` of ``header`` (the checkpoint's, :func:`read_header`); no weight is read
    (the workers load them later).

    Raises
    ------
    CheckpointError
        Naming the first tensor missing, unexpected or of another shape.
    """
    from safetensors import SafetensorError, safe_open

    try:
        cfg = ModelConfig.from_dict(header["model_config"])
    except (InputError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad model config in checkpoint: {exc}") from None
    net = torch_network(path).model.build_model(ModelConfig(backbone=cfg.backbone, input_size=cfg.input_size, inputs=cfg.inputs))
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    try:
        with safe_open(str(path), "pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in list(f.keys()) if not k.startswith(PREFILTER_PREFIX)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors tensors: {exc}") from None
    problems = [f"missing {k}" for k in want if k not in have]
    problems += [f"unexpected {k}" for k in have if k not in want]
    problems += [f"{k} is {list(have[k])}, expected {list(want[k])}" for k in want if k in have and have[k] != want[k]]
    if problems:
        raise CheckpointError(f"{path}: tensors do not fit the {cfg.backbone} its metadata names "
                              f"({len(problems)} problem(s), first: {problems[0]})")


def model_header(path: str | os.PathLike) -> dict[str, Any]:
    """A model file's scanstream metadata (``model_config``, ...): an ``*.onnx`` export's (see
    :mod:`scanstream.inference.export`), or else the safetensors checkpoint's header."""
    return onnx_session(path, threads=1, optimize=False)[1] if Path(path).suffix == ".onnx" else read_header(path)


def check_features(checkpoints: Sequence[str | os.PathLike], stores: Sequence[st.CropStore]) -> None:
    """Refuse, before any work, a store whose object table lacks what a model reads.

    A fused network or cascade (checkpoint ``model_config.inputs > 0``) reads the picker's
    multiplicity and prong lengths from the store's object table.

    Raises
    ------
    InputError
        Names the store, the checkpoint and what is missing.
    """
    fused = [c for c in checkpoints if model_header(c)["model_config"].get("inputs", 0)]
    if not fused:
        return
    for store in stores:
        try:
            check_feature_rows(store.table, source=str(store.path))
        except InputError as exc:
            raise InputError(f"{exc} (model {fused[0]} is a fused network)") from None


# -- the device engine --------------------------------------------------------------------
class Ensemble:
    """Checkpoints loaded on one device; :meth:`score` gives the mean logit per crop.

    Parameters
    ----------
    checkpoints : sequence of path-like
        ``*.safetensors`` scanstream checkpoints, or ``*.onnx`` exports of them
        (:mod:`scanstream.inference.export`), which run on the CPU in onnxruntime with torch's
        thread count as intra-op threads, in the precision they were exported in.
    device : str or torch.device
    precision : {"auto", "fp32", "bf16"}
        For the torch checkpoints.
    expected_hashes : sequence of str, optional
        The hashes the caller planned with; a file that changed since is refused.
    arrays : bool, optional
        Score exports in numpy and onnxruntime, without torch (:func:`~scanstream.network.arrays.preprocess_array`
        prepares the input); default: where torch is not installed. Exports only.

    Building one tunes the process's malloc for large tensors (:func:`tune_malloc`).
    """

    def __init__(
        self,
        checkpoints: Sequence[str | os.PathLike],
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        expected_hashes: Sequence[str] | None = None,
        arrays: bool | None = None,
    ) -> None:
        if not checkpoints:
            raise InputError("no model checkpoints given")
        tune_malloc()
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.models: list[torch.nn.Module | OnnxNetwork] = []
        self.input_sizes: list[int] = []
        self.hashes: list[str] = []
        self.feature_models: list[FeatureModel | None] = []
        self.prefilters: list[float | None] = []
        for i, path in enumerate(checkpoints):
            onnx = Path(path).suffix == ".onnx"
            if onnx and self.device.type != "cpu":
                raise InputError(f"{path}: ONNX models run on the CPU; on {self.device} use the .safetensors checkpoint")
            ck = load_onnx(path) if onnx else torch_network(path).checkpoint.load_checkpoint(path, device=self.device)
            if onnx and not all(isinstance(inp.shape[0], str) for inp in ck.model.session.get_inputs()):
                raise InputError(f"{path}: a fixed-batch ONNX export; the engine needs a dynamic batch (export without --batch)")
            if expected_hashes is not None and ck.hash != expected_hashes[i]:
                raise CheckpointError(f"{path}: checkpoint changed since the run was planned ({ck.hash} != {expected_hashes[i]})")
            self.models.append(ck.model if onnx else ck.model.to(memory_format=torch.channels_last).eval())
            self.input_sizes.append(ck.model_config.input_size)
            self.hashes.append(ck.hash)
            self.feature_models.append(ck.feature_model)
            self.prefilters.append(ck.prefilter_threshold)
        self.arrays = torch is None if arrays is None else arrays
        if self.arrays and not all(isinstance(m, OnnxNetwork) for m in self.models):  # (never without torch)
            raise InputError("scoring without torch takes ONNX exports only (scanstream export)")

    @property
    def reads_features(self) -> bool:
        """Whether some model reads the picker's features (the store's table must carry them)."""
        return any(fm is not None for fm in self.feature_models)

    def object_inputs(self, table: pa.Table, *, source: str = "object table") -> list[ObjectInputs | None]:
        """Per model, what it reads from the object table's rows besides the crops (None: nothing).

        Raises
        ------
        InputError
            A model reads the picker's features and ``table`` lacks them (names ``source``).
        """
        return [
            None if fm is None else ObjectInputs(*inputs_and_logits(table, fm, source=source), pre)
            for fm, pre in zip(self.feature_models, self.prefilters, strict=True)
        ]

    def score(self, crops: torch.Tensor | np.ndarray, objects: Sequence[ObjectInputs | None] | None = None) -> np.ndarray:
        """Mean logit over the ensemble.

        Parameters
        ----------
        crops : uint8 (B, 224, 224, 3), NHWC, tensor (any device) or ndarray
        objects : list, optional
            :meth:`object_inputs` of these B rows (sliced with :meth:`ObjectInputs.rows`);
            required when some model reads the picker's features. A cascade's model runs only
            on the rows its prefilter keeps; the others get the feature model's logit.

        Returns
        -------
        ndarray, float32 (B,)
        """
        if objects is None:
            if self.reads_features:
                raise InputError("these models read the picker's features; pass the rows' object inputs")
            objects = [None] * len(self.models)
        if self.arrays:
            return self._score_arrays(np.asarray(crops), objects)
        with torch.inference_mode():
            return self._score_tensors(torch.as_tensor(crops).to(self.device, non_blocking=True), objects)

    def _score_arrays(self, crops: np.ndarray, objects: Sequence[ObjectInputs | None]) -> np.ndarray:
        """:meth:`score` of an ensemble of ONNX exports: numpy and onnxruntime, no torch."""
        total = np.zeros(len(crops), np.float32)
        prepared: dict[tuple[int, bytes], np.ndarray] = {}
        for model, size, obj in zip(self.models, self.input_sizes, objects, strict=True):
            keep = None if obj is None else obj.kept()
            if keep is not None and not keep.any():  # the prefilter rejects every row: no image work
                total += obj.logits.astype(np.float32)
                continue
            key = prepared_key(size, keep)
            if key not in prepared:  # models sharing an input size (and rows) share its preprocessing
                prepared[key] = preprocess_array(crops if keep is None else crops[keep], size)
            if obj is None:
                total += model(prepared[key])
                continue
            out, sel = obj.logits.astype(np.float32), np.ones(len(crops), bool) if keep is None else keep
            out[sel] = model(prepared[key], obj.inputs[sel])
            total += out
        return total / np.float32(len(self.models))

    def _score_tensors(self, x: torch.Tensor, objects: Sequence[ObjectInputs | None]) -> np.ndarray:
        """:meth:`score` with torch (any device); exports in the ensemble get the same prepared input."""
        from scanstream.network.model import preprocess  # torch is here: the torch checkpoints loaded

        total = torch.zeros(x.shape[0], dtype=torch.float32, device=self.device)
        prepared: dict[tuple[int, bytes], torch.Tensor] = {}
        bf16 = self.precision == "bf16"
        for model, size, obj in zip(self.models, self.input_sizes, objects, strict=True):
            keep = None if obj is None else obj.kept()
            if keep is not None and not keep.any():  # the prefilter rejects every row: no image work
                total += torch.from_numpy(obj.logits.astype(np.float32)).to(self.device)
                continue
            nchw = isinstance(model, OnnxNetwork)  # onnxruntime takes contiguous NCHW
            key = (*prepared_key(size, keep), nchw)
            if key not in prepared:  # models sharing an input size (and rows) share its preprocessing
                rows = x if keep is None else x[torch.from_numpy(keep).to(x.device)]
                prepared[key] = preprocess(rows, size).contiguous(memory_format=torch.contiguous_format if nchw else torch.channels_last)
            if obj is None:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    total += torch.as_tensor(model(prepared[key])).float()
                continue
            out = torch.from_numpy(obj.logits.astype(np.float32)).to(self.device)
            sel = torch.ones(x.shape[0], dtype=torch.bool) if keep is None else torch.from_numpy(keep)
            if bool(sel.any()):
                f = torch.from_numpy(obj.inputs[sel.numpy()]).to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out[sel.to(self.device)] = torch.as_tensor(model(prepared[key], f)).float()
            total += out
        return (total / len(self.models)).cpu().numpy().astype(np.float32)


# -- reading a store range ----------------------------------------------------------------
def check_crops(store: st.CropStore) -> None:
    """Refuse a store whose crops are not what the models take: uint8 (n, 224, 224, 3)."""
    want = (st.CROP_SIZE, st.CROP_SIZE, st.CHANNELS)
    if store.crops.dtype != np.uint8 or tuple(store.crops.shape[1:]) != want:
        raise StoreError(
            f"{store.path}: crops are {store.crops.dtype} {tuple(store.crops.shape[1:])}, "
            f"but the models take uint8 {want} crops"
        )


def missing_shards(store: st.CropStore, start: int, stop: int) -> list[Path]:
    """Shard (or chunk) files of crops ``start:stop`` absent on disk (zarr would read zeros)."""
    grid = (store.crops.shards or store.crops.chunks)[0]
    enc = store.crops.metadata.chunk_key_encoding
    out = []
    for i in range(start // grid, -(-stop // grid)):
        f = store.path / "crops" / enc.encode_chunk_key((i, 0, 0, 0))
        if not f.exists():
            out.append(f)
    return out


def score_range(
    ensemble: Ensemble,
    store: st.CropStore,
    start: int,
    stop: int,
    *,
    batch_size: int = 64,
    verify: bool = True,
    readers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Mean logits of crops ``start:stop`` of ``store``, reading ahead while the model runs.

    Reads go in whole chunks (at least ``batch_size`` crops). On CUDA they run on ``readers``
    background threads (default up to 4: one thread decompressing zstd cannot keep a GPU busy),
    which also pin the crops, and the next reads are in flight while the model runs on the
    current block. On the CPU, whose cores belong to the model, blocks are read and checked
    between blocks unless ``readers`` asks for background threads. ``verify`` checks the crops,
    in order on one more thread, against the store's block digests when the range is
    block-aligned (classify's tasks are); missing shard files are always refused.

    Returns
    -------
    ndarray, float32 (stop - start,)

    Raises
    ------
    StoreError
        A missing shard file, or crops that do not match their digest.
    """
    _check_range(store, start, stop)
    objects = None
    if ensemble.reads_features:
        objects = ensemble.object_inputs(store.table.slice(start, stop - start), source=str(store.path))
    step = cascade_step(objects, batch_size)
    reads = read_plan(store, start, stop, step)
    verifier = st.BlockVerifier(store) if verify else None
    if verifier is not None and not verifier.aligned(start, stop):
        verifier = None
    out = np.empty(stop - start, np.float32)
    score_block = _block_scorer(ensemble, objects, start, out, batch_size=step, on_batch=on_batch)
    pin = ensemble.device.type == "cuda"
    if pin or readers is not None:
        n_readers = readers or (min(4, local_cores()) if pin else 1)
        _score_reading_ahead(store, reads, verifier, score_block, readers=n_readers, pin=pin)
        return out
    # CPU: the model's threads own the cores, and a read or digest thread running beside them
    # stalls their whole team (measured: resnet50 scored 12 % slower with a reader thread
    # than the bare forward pass); reading and checking a block between blocks costs ~1 %.
    for a, b in reads:
        raw = store.read(a, b)
        if verifier is not None:
            verifier.feed(a, raw)
        score_block(a, b, raw)
    return out


def _check_range(store: st.CropStore, start: int, stop: int) -> None:
    """Refuse a range outside the store, or one whose shard files are missing (zarr would read zeros)."""
    if not (0 <= start <= stop <= store.n):
        raise InputError(f"{store.path}: crop range [{start}, {stop}) outside 0..{store.n}")
    absent = missing_shards(store, start, stop)
    if absent:
        raise StoreError(f"{store.path}: missing shard file {absent[0]} for crops [{start}, {stop})")


def read_plan(store: st.CropStore, start: int, stop: int, batch_size: int) -> deque[tuple[int, int]]:
    """The reads of crops ``start:stop``: whole chunks, at least ``batch_size`` crops each.

    The first read ends on a chunk boundary so that later reads stay chunk-aligned.
    """
    chunk = store.chunk_crops
    step = max(chunk, -(-batch_size // chunk) * chunk)
    bounds = list(range(start, stop, step)) if start % chunk == 0 else [start, *range(-(-start // chunk) * chunk, stop, step)]
    return deque((a, min(b, stop)) for a, b in zip(bounds, [*bounds[1:], stop], strict=True) if a < min(b, stop))


def cascade_step(objects: Sequence[ObjectInputs | None] | None, batch_size: int, *, most: int = 16) -> int:
    """Crops per :meth:`Ensemble.score` call: more for a cascade, so its network still sees full batches.

    A cascade's network runs only on the rows its prefilter keeps (about 12 % of a sheet for the
    shipped one), so ``batch_size`` crops would give it batches of a few rows, where a CPU runs
    far below its rate. The crops per call are ``batch_size`` over the kept fraction of the
    range (the lowest over the ensemble's models; a pixels-only model keeps every row), at most
    ``most`` times ``batch_size``.
    """
    if not objects or any(o is None or o.prefilter is None for o in objects):
        return batch_size
    kept = min(float(np.mean(o.logits >= o.prefilter)) if len(o.logits) else 1.0 for o in objects)
    return int(min(most * batch_size, max(batch_size, -(-batch_size // max(kept, 1.0 / most)))))


def _block_scorer(
    ensemble: Ensemble,
    objects: Sequence[ObjectInputs | None] | None,
    start: int,
    out: np.ndarray,
    *,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> Callable[[int, int, torch.Tensor], None]:
    """``score_block(a, b, crops)``: the mean logits of crops ``a:b`` into ``out``, ``batch_size`` at a time."""

    def score_block(a: int, b: int, crops: torch.Tensor) -> None:
        for j in range(0, b - a, batch_size):
            k = min(j + batch_size, b - a)
            lo, hi = a - start + j, a - start + k
            rows = None if objects is None else [None if o is None else o.rows(lo, hi) for o in objects]
            out[lo:hi] = ensemble.score(crops[j:k], rows)
        if on_batch is not None:
            on_batch(b - a)

    return score_block


def _score_reading_ahead(
    store: st.CropStore,
    reads: deque[tuple[int, int]],
    verifier: st.BlockVerifier | None,
    score_block: Callable[[int, int, torch.Tensor], None],
    *,
    readers: int,
    pin: bool,
) -> None:
    """Score the blocks of ``reads`` in order while ``readers`` threads read the next ones.

    On CUDA the readers pin the crops and one more read is in flight; the digest checks run in
    order on one more thread, and the first failing check ends the range.
    """
    depth = readers + 1 if pin else readers  # reads in flight besides the block being scored

    def read(a: int, b: int) -> tuple[np.ndarray, torch.Tensor | np.ndarray]:
        crops = store.read(a, b)
        return crops, (torch.from_numpy(crops).pin_memory() if pin else crops)

    with (
        ThreadPoolExecutor(readers, thread_name_prefix="scanstream-read") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="scanstream-verify") as check,
    ):
        inflight: deque[tuple[int, int, Future]] = deque()
        checks: list[Future] = []

        def top_up() -> None:
            while reads and len(inflight) < depth:
                a, b = reads.popleft()
                inflight.append((a, b, pool.submit(read, a, b)))

        top_up()
        while inflight:
            a, b, fut = inflight.popleft()
            raw, crops = fut.result()
            top_up()
            if verifier is not None:
                checks.append(check.submit(verifier.feed, a, raw))
                for c in checks:
                    if c.done() and c.exception() is not None:
                        raise c.exception()  # fail fast: the range is lost anyway
            score_block(a, b, crops)
        for c in checks:
            c.result()


# -- the Dask task ------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """Everything one classify task needs; small, so the graph stays small (no models in it)."""

    store: str
    store_hash: str
    start: int
    stop: int
    checkpoints: tuple[str, ...]
    model_hashes: tuple[str, ...]
    out: str
    threshold: float | None
    metadata: str  # JSON of the parts' schema metadata
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 64
    verify: bool = True
    host_threads: tuple[tuple[str, int], ...] = ()  # host -> torch threads per task there


_CACHE_LOCK = threading.Lock()
_ENSEMBLES: dict[tuple, Ensemble] = {}
_STORES: dict[tuple[str, str], st.CropStore] = {}
_MAX_CACHED = 2
#: Ensembles this process has loaded (each worker process loads once per set of models).
LOADS = 0


def worker_ensemble(spec: TaskSpec) -> Ensemble:
    """This process's ensemble for the spec's models, loaded once and kept (keyed by hash)."""
    global LOADS
    key = (spec.model_hashes, spec.device, spec.precision)
    with _CACHE_LOCK:
        ens = _ENSEMBLES.get(key)
        if ens is None:
            t0 = time.perf_counter()
            ens = Ensemble(spec.checkpoints, device=spec.device, precision=spec.precision, expected_hashes=spec.model_hashes)
            while len(_ENSEMBLES) >= _MAX_CACHED:
                _ENSEMBLES.pop(next(iter(_ENSEMBLES)))
            _ENSEMBLES[key] = ens
            LOADS += 1
            logger.info("loaded %d model(s) on %s in %.1f s", len(ens.models), ens.device, time.perf_counter() - t0)
        return ens


def worker_store(path: str, content_hash: str) -> st.CropStore:
    """This process's open store (object table read once), checked against the planned hash."""
    key = (path, content_hash)
    with _CACHE_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = st.open_store(path)
            if store.content_hash != content_hash:
                raise StoreError(f"{path}: store changed since the run was planned ({store.content_hash} != {content_hash})")
            while len(_STORES) >= 8:
                _STORES.pop(next(iter(_STORES)))
            _STORES[key] = store
        return store


def _torch_threads(spec: TaskSpec) -> int | None:
    if not spec.host_threads:
        return None
    try:
        from distributed import get_worker

        host = get_worker().address.rsplit(":", 1)[0].split("://")[-1]
    except (ImportError, ValueError):
        return None
    return dict(spec.host_threads).get(host)


def run_task(spec: TaskSpec) -> dict[str, Any]:
    """Score one range of one store and write its candidate parts (the Dask task).

    Returns
    -------
    dict
        store, start, stop, rows, selected, seconds, parts (paths written).

    Raises
    ------
    TaskError
        Anything failed; the message names the store path and the crop range.
    """
    t0 = time.perf_counter()
    try:
        threads = _torch_threads(spec)
        if threads and torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        store = worker_store(spec.store, spec.store_hash)
        ens = worker_ensemble(spec)
        scores = score_range(ens, store, spec.start, spec.stop, batch_size=spec.batch_size, verify=spec.verify)
        rows = store.table.slice(spec.start, spec.stop - spec.start)
        table = cand.build_part(rows, scores, threshold=spec.threshold, store=spec.store, start=spec.start)
        paths = cand.write_parts(
            spec.out, table, store_hash=spec.store_hash, start=spec.start, metadata=json.loads(spec.metadata)
        )
    except Exception as exc:  # noqa: BLE001 - every failure is mapped back to its range
        raise TaskError(f"{spec.store}: crops [{spec.start}, {spec.stop}): {type(exc).__name__}: {exc}") from None
    selected = int((scores >= spec.threshold).sum()) if spec.threshold is not None else 0
    return {
        "store": spec.store,
        "start": spec.start,
        "stop": spec.stop,
        "rows": len(scores),
        "selected": selected,
        "seconds": time.perf_counter() - t0,
        "parts": [str(p) for p in paths],
    }
