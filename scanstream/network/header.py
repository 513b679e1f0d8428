"""What a model file says, read without torch: the network's configuration and the checkpoint header.

A scanning PC or Dask worker that only classifies with ONNX exports installs scanstream without
torch (docs/install.md). Everything such a machine needs to know about a model file lives here:
:class:`ModelConfig` (which network, which input size), the safetensors header of a checkpoint
(:func:`read_header`; its tensors are read by :mod:`scanstream.network.checkpoint`, with torch),
the file's identity (:func:`checkpoint_hash`) and :class:`LoadedCheckpoint`, what loading gives.
:mod:`scanstream.network.model` builds the torch network a :class:`ModelConfig` names.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scanstream.config import from_dict
from scanstream.errors import CheckpointError, InputError
from scanstream.picker.learned import EMBEDDED_PREFIX, FeatureModel

#: The backbones :mod:`scanstream.network.model` builds (torchvision's constructors, by name).
BACKBONES: tuple[str, ...] = ("resnet50", "resnet18", "mobilenet_v3_small")
#: The paper's hidden widths of the head (2048 -> 256 -> 32 -> 1 for ResNet50).
HEAD_WIDTHS = (256, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 448


@dataclass(frozen=True)
class ModelConfig:
    """What network to build.

    Attributes
    ----------
    backbone : str
        One of :data:`BACKBONES`.
    input_size : int
        Side of the square network input in pixels: 224 native (crops are 224 px), 112 for CPUs.
    pretrained : str
        ``"none"`` (random initialisation), ``"imagenet"`` (torchvision's cache) or a local
        weights file path.
    inputs : int
        Numbers per object the network reads beside the pixels: 0 (pixels only, the paper) or
        :data:`scanstream.picker.learned.N_MODEL_INPUTS` (the fused network: the picker's
        features and the feature model's logit, read from the store's object table).
    """

    backbone: str = "resnet50"
    input_size: int = 224
    pretrained: str = "none"
    inputs: int = 0

    def __post_init__(self) -> None:
        parse_backbone(self.backbone)
        parse_input_size(self.input_size)
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise InputError(f"pretrained must be 'none', 'imagenet' or a weights file path, got {self.pretrained!r}")
        if isinstance(self.inputs, bool) or not isinstance(self.inputs, int) or not 0 <= self.inputs <= 64:
            raise InputError(f"inputs (per-object numbers beside the pixels) must be an integer in 0..64, got {self.inputs!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a dict (checkpoint metadata); unknown keys are an error (ConfigError)."""
        return from_dict(cls, d, where="model config")


def parse_backbone(name: str) -> str:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return name


def parse_input_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise InputError(f"input size must be an integer in {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} px, got {size!r}")
    return size


CHECKPOINT_VERSION = 1
METADATA_KEY = "scanstream"
PREFILTER_PREFIX = EMBEDDED_PREFIX
#: A safetensors header larger than this is not one of ours (ours are a few tens of kB).
_MAX_HEADER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read back.

    Attributes
    ----------
    model : torch.nn.Module or OnnxNetwork
        The classifier, in eval mode, on the requested device (an ONNX export: run by onnxruntime).
    model_config : ModelConfig
    train_config : dict
        The resolved training configuration it was trained with.
    data_hash : str
        Identity of the training data (content hashes of the train and valid stores).
    metrics : dict
        Final metrics (VALID AP, loss, best epoch, ...).
    hash : str
        :func:`checkpoint_hash` of the file.
    feature_model : FeatureModel or None
        The fused network's feature model (tensors ``prefilter.*``): its logit is one of the
        network's inputs, and with ``prefilter_threshold`` it is the cascade's first stage.
    prefilter_threshold : float or None
        Objects whose feature-model logit is below this are never shown to the network
        (a cascade); None: every object is scored by the network.
    """

    model: Any  # a torch nn.Module, or an OnnxNetwork (scanstream.inference.onnx_model)
    model_config: ModelConfig
    train_config: dict
    data_hash: str
    metrics: dict
    hash: str
    feature_model: FeatureModel | None = None
    prefilter_threshold: float | None = None

    @property
    def reads_features(self) -> bool:
        """Whether scoring needs the picker's features from the store's object table."""
        return self.feature_model is not None


def checkpoint_hash(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes, first 16 hex characters."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
    return h.hexdigest()[:16]


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The scanstream metadata of a checkpoint, without reading its tensors.

    Raises
    ------
    CheckpointError
        ``path`` is missing, is not a safetensors file (a pickle or ``torch.save`` zip is named
        as such), or is a safetensors file without scanstream metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
        raw = f.read(n) if 0 < n <= min(_MAX_HEADER_BYTES, size - 8) else b""
    try:
        header = json.loads(raw.decode("utf-8")) if raw[:1] == b"{" else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if header is None:
        # Name the common impostors; their bytes are never interpreted.
        if head[:2] == b"PK":
            kind = "a zip archive (torch.save)"
        elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            kind = "a Python pickle"
        else:
            raise CheckpointError(f"{path}: not a safetensors checkpoint (no valid safetensors header)")
        raise CheckpointError(f"{path}: is {kind}, not a safetensors checkpoint; scanstream never unpickles model files")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (header is not a JSON object)")
    meta_raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if meta_raw is None:
        raise CheckpointError(f"{path}: a safetensors file but not a scanstream checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(meta_raw)
    except ValueError:
        raise CheckpointError(f"{path}: scanstream metadata is not valid JSON") from None
    version = meta.get("scanstream_checkpoint") if isinstance(meta, dict) else None
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported scanstream checkpoint version {version!r} (expected {CHECKPOINT_VERSION})")
    for key, kind in (("model_config", dict), ("train_config", dict), ("data_hash", str), ("metrics", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint metadata lacks {key!r} ({kind.__name__})")
    return meta
