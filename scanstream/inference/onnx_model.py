"""ONNX Runtime models: a scanstream export (:mod:`scanstream.inference.export`) loaded for the engine.

:func:`load_onnx` reads an ``*.onnx`` file written by ``scanstream export`` into a
:class:`~scanstream.network.checkpoint.LoadedCheckpoint` whose model is an :class:`OnnxNetwork`,
called like the torch classifier; the file's scanstream metadata (model and training configs, data
hash, metrics, a fused network's feature model) is checked on load. Protobuf only: nothing is
unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from scanstream.devices import torch
from scanstream.errors import CheckpointError, InputError
from scanstream.executor import local_cores
from scanstream.network.header import LoadedCheckpoint, ModelConfig, checkpoint_hash
from scanstream.picker.learned import FeatureModel

#: metadata_props keys of an export (:mod:`scanstream.inference.export`): the JSON of its scanstream
#: metadata (layout version ONNX_VERSION), and a fused network's feature model (JSON of its arrays).
ONNX_METADATA_KEY, ONNX_FEATURE_MODEL_KEY, ONNX_VERSION = "scanstream", "scanstream_feature_model", 1


def onnx_session(path: str | os.PathLike, *, threads: int, optimize: bool = True) -> Any:
    """An onnxruntime CPU session on ``path`` (protobuf, never unpickled), ``threads`` intra-op threads.

    One inter-op thread; the engine's thread policy (torch's thread count, :func:`scanstream.inference.engine._torch_threads`)
    sizes the intra-op team. Its threads do not spin between runs, when torch's preprocessing needs
    the cores (2 cores: mobilenet_v3_small at 112 px scored 531 crops/s in the engine, 405 spinning).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError(f"{path}: ONNX models need onnxruntime: pip install 'scanstream[onnx]'") from None
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such ONNX model file")
    opts, level = ort.SessionOptions(), ort.GraphOptimizationLevel
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        raise CheckpointError(f"{path}: not a readable ONNX model: {str(exc).splitlines()[0]}") from None
    props = session.get_modelmeta().custom_metadata_map
    try:
        meta = json.loads(props[ONNX_METADATA_KEY])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: an ONNX model but not a scanstream export (no '{ONNX_METADATA_KEY}' metadata)") from None
    if not isinstance(meta, dict) or meta.get("scanstream_onnx") != ONNX_VERSION:
        got = meta.get("scanstream_onnx") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: unsupported scanstream ONNX version {got!r} (expected {ONNX_VERSION})")
    for key, kind in (("model_config", dict), ("train_config", dict), ("data_hash", str), ("metrics", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: ONNX metadata lacks {key!r} ({kind.__name__})")
    return session, meta


class OnnxNetwork:
    """An exported network run by onnxruntime, called like the torch ``Classifier``: ``net(x)`` or
    ``net(x, f)``, float32 (B, 3, S, S) [and (B, inputs)] -> float32 (B,) logits; CPU torch tensors
    in, a tensor out, numpy arrays in (no torch needed), an array out."""

    def __init__(self, session: Any) -> None:
        self.session, self.input_names = session, [i.name for i in session.get_inputs()]

    def __call__(self, x: Any, f: Any = None) -> Any:
        feed = {self.input_names[0]: np.ascontiguousarray(np.asarray(x, dtype=np.float32))}
        if len(self.input_names) > 1:
            if f is None:
                raise InputError("this ONNX model is a fused network; it needs per-object inputs")
            feed[self.input_names[1]] = np.ascontiguousarray(np.asarray(f, dtype=np.float32))
        logits = self.session.run(None, feed)[0].reshape(-1)
        return torch.from_numpy(logits) if torch is not None and isinstance(x, torch.Tensor) else logits


def load_onnx(path: str | os.PathLike, *, threads: int | None = None) -> LoadedCheckpoint:
    """An export as a :class:`LoadedCheckpoint` whose ``model`` is an :class:`OnnxNetwork`; ``threads``
    intra-op threads (default torch's, set by the engine's thread policy; without torch, this process's
    cores). ``hash`` is the file's own
    (its scores differ from the checkpoint's within the export's tolerance, or more for int8)."""
    default = torch.get_num_threads() if torch is not None else local_cores()
    session, meta = onnx_session(path, threads=threads or default)
    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except (InputError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad model config in ONNX metadata: {exc}") from None
    if len(session.get_inputs()) != (2 if config.inputs else 1):
        raise CheckpointError(f"{path}: {len(session.get_inputs())} graph inputs for a model with inputs={config.inputs}")
    feature_model, pre = None, meta.get("prefilter_threshold")
    if config.inputs:  # its arrays as JSON lists (floats written as repr: exact round trip)
        arrays = json.loads(session.get_modelmeta().custom_metadata_map.get(ONNX_FEATURE_MODEL_KEY, "{}"))
        feature_model = FeatureModel.from_tensors(arrays, meta.get("feature_model") or {}, source=str(path))
    return LoadedCheckpoint(
        model=OnnxNetwork(session),  # type: ignore[arg-type]  # called like the torch module
        model_config=config, train_config=meta["train_config"], data_hash=meta["data_hash"], metrics=meta["metrics"],
        hash=checkpoint_hash(path), feature_model=feature_model, prefilter_threshold=None if pre is None else float(pre),
    )
