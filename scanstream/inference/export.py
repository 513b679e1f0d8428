"""ONNX export of a checkpoint: a CPU path checked against torch before it is written.

:func:`export_onnx` writes a checkpoint's network as an ONNX graph that
:class:`scanstream.inference.engine.Ensemble` (and any ONNX Runtime user) can run. The file is
self-describing: its ``metadata_props`` hold the source checkpoint's hash and header (model
config, training config, data hash, metrics, the cascade's prefilter threshold and, for a fused
network, its feature model's arrays), the input layout and normalisation, the head, the
precision and the check made at export. The graph takes crops already preprocessed by
:func:`scanstream.network.model.preprocess` (float32 NCHW, ImageNet-normalised): the resize stays
in torch, where the engine shares it between models.

Before anything is written, ONNX Runtime's logits on check crops (from a store when given, else
seeded noise) must equal torch's within ``ATOL + RTOL * |torch logit|`` (:data:`ATOL`,
:data:`RTOL`); otherwise nothing is written. The file is written atomically and read back
through the engine's loader, so its metadata round trip is part of the check.

:func:`export_int8` adds a statically quantised (QDQ, per-channel int8 weights, uint8
activations calibrated on a store's crops) model, written only where it measures at least
:data:`INT8_MIN_SPEEDUP` times as fast as both fp32 paths (torch and ONNX Runtime, model-only,
interleaved rounds) and its Average Precision on a labelled validation store is within
:data:`INT8_MAX_AP_LOSS` of the fp32 checkpoint's. Measured on the 2-core AVX2 development machine
(``benchmarks/onnx_cpu.py``, 2026-12-01, four runs at 1 and 2 threads while other work loaded it
to 3-5), model-only: int8 ran resnet18 at 112 px 1.7-2.2x as fast as ONNX Runtime fp32, and
mobilenet_v3_small at 112 px 0.75-1.01x (its depthwise convolutions and hard-swish activations
gain little from int8 on AVX2 and pay for the quantise / dequantise steps); int8 is therefore
never a default, but offered per model after the measurement. The CPU recipe's trained
mobilenet_v3_small networks kept their AP in int8 (VALID: the shipped cascade 0.9517 -> 0.9502,
the pixels-only network 0.9473 -> 0.9447) but ran at 0.83x and 0.71x of ONNX Runtime fp32, so
neither was kept. ONNX Runtime fp32 ran 1.06-5.3x as
fast as torch fp32 in the same runs (torch's OpenMP team suffers most from a loaded machine).

The exporter is torch's TorchScript-based one (``dynamo=False``): it needs only ``onnx`` beside
torch, where the ``torch.export`` one also needs ``onnxscript``.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scanstream import store as st
from scanstream.atomic import atomic_path, write_bytes
from scanstream.errors import CheckpointError, InputError
from scanstream.inference.engine import Ensemble
from scanstream.inference.onnx_model import ONNX_FEATURE_MODEL_KEY, ONNX_METADATA_KEY, ONNX_VERSION, load_onnx
from scanstream.inference.scoring import score_store
from scanstream.metrics import average_precision
from scanstream.network.checkpoint import LoadedCheckpoint, load_checkpoint, read_header
from scanstream.network.model import HEAD_WIDTHS, IMAGENET_MEAN, IMAGENET_STD, preprocess
from scanstream.paths import remove_stale_temporaries
from scanstream.picker.learned import inputs_and_logits

logger = logging.getLogger(__name__)

#: ONNX opset of the exported graphs (ONNX Runtime 1.16 and later run it).
OPSET = 17
#: ONNX Runtime fp32 logits must equal torch's within ATOL + RTOL * |torch logit|. Measured on the
#: two trained mobilenet_v3_small checkpoints of the CPU recipe over 256 VALID crops each (logits
#: -19 to 8): at most 7.5e-6 and 2.1e-5 (batch norm folded into the convolutions, another
#: summation order), a tenth of the bound, which leaves room for other CPUs' kernels and is far
#: below any threshold's resolution.
ATOL = 1e-4
RTOL = 1e-4
#: Crops the export checks (from the check store, else seeded noise).
CHECK_CROPS = 32
#: An int8 model is written only if its VALID AP is at most this far below the fp32 checkpoint's.
INT8_MAX_AP_LOSS = 0.005
#: ... and only if it runs at least this many times as fast as the faster fp32 path. Repeated
#: measurements of one model on the shared 2-core machine differ by more than 10 % (int8 over
#: fp32 for mobilenet_v3_small at 112 px: 0.75 in one run, 1.01 in the next), so a smaller
#: margin would keep int8 on noise.
INT8_MIN_SPEEDUP = 1.1
#: Calibration crops for the int8 activation ranges.
CALIBRATION_CROPS = 256
INPUT_NAMES = ("pixels", "features")


def _onnx() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401 - the check needs it too
    except ImportError:
        raise InputError("ONNX export needs onnx and onnxruntime: pip install 'scanstream[onnx]'") from None
    return onnx


def graph_bytes(model: torch.nn.Module, *, input_size: int, inputs: int, batch_size: int | None = None, opset: int = OPSET) -> bytes:
    """The serialised ONNX graph of a :class:`~scanstream.network.model.Classifier` (no metadata).

    Inputs ``pixels`` float32 (B, 3, S, S) [and ``features`` float32 (B, inputs)], output
    ``logits`` float32 (B,); B is dynamic unless ``batch_size`` fixes it.
    """
    n = batch_size or 2
    args: tuple[torch.Tensor, ...] = (torch.zeros(n, 3, input_size, input_size),)
    names = list(INPUT_NAMES[: 2 if inputs else 1])
    if inputs:
        args += (torch.zeros(n, inputs),)
    dynamic = None if batch_size else {name: {0: "batch"} for name in [*names, "logits"]}
    buf = io.BytesIO()
    # torch < 2.5 has only the TorchScript exporter and no ``dynamo`` switch
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, buf, input_names=names, output_names=["logits"], dynamic_axes=dynamic,
                          opset_version=opset, do_constant_folding=True, **legacy)
    return buf.getvalue()


def stamp(graph: bytes, meta: Mapping[str, Any], feature_arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """``graph`` with scanstream's metadata in its ``metadata_props`` (replacing any there)."""
    onnx = _onnx()
    model = onnx.load_from_string(graph)
    del model.metadata_props[:]
    props = {ONNX_METADATA_KEY: json.dumps(dict(meta), sort_keys=True, default=str)}
    if feature_arrays is not None:  # floats as repr: an exact round trip
        props[ONNX_FEATURE_MODEL_KEY] = json.dumps({k: np.asarray(v).tolist() for k, v in feature_arrays.items()})
    onnx.helper.set_model_props(model, props)
    model.doc_string = f"scanstream {meta['model_config']['backbone']} at {meta['input_size']} px, {meta['precision']}"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_metadata(ck: LoadedCheckpoint, header: Mapping[str, Any], source: str | os.PathLike, *,
                    batch_size: int | None, opset: int = OPSET) -> dict[str, Any]:
    """What an exported file says about itself (the ``scanstream`` metadata_props JSON)."""
    cfg = ck.model_config
    return {
        "scanstream_onnx": ONNX_VERSION,
        "checkpoint": Path(source).name,
        "checkpoint_hash": ck.hash,
        **{k: header[k] for k in ("model_config", "train_config", "data_hash", "metrics")},
        "feature_model": header.get("feature_model"),
        "prefilter_threshold": ck.prefilter_threshold,
        "input_size": cfg.input_size,
        "batch": batch_size or "dynamic",
        "inputs": {
            "pixels": f"float32 (B, 3, {cfg.input_size}, {cfg.input_size}) NCHW",
            **({"features": f"float32 (B, {cfg.inputs}) scanstream.picker.learned.model_inputs"} if cfg.inputs else {}),
        },
        "output": "logits float32 (B,); positive = alpha decay",
        "preprocess": {
            "function": "scanstream.network.model.preprocess",
            "from": "uint8 (B, 224, 224, 3) crops",
            "resize": f"antialiased bilinear to {cfg.input_size} px",
            "scale": "1/255",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "head": {"widths": [*HEAD_WIDTHS, 1], "activation": "relu", "fused_inputs": cfg.inputs},
        "precision": "fp32",
        "exporter": f"torch {torch.__version__} TorchScript exporter, opset {opset}",
    }


def check_inputs(ck: LoadedCheckpoint, store: st.CropStore | None, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Check crops and the per-object inputs a fused network reads with them.

    From ``store``: ``n`` rows spread evenly over it (a cascade keeps those its prefilter
    passes, since only they reach the network, unless none does). Without one: seeded uniform
    noise crops and standard-normal per-object inputs.

    Returns
    -------
    crops : uint8 (k, 224, 224, 3)
    features : float32 (k, inputs) or None for a pixels-only network
    """
    k = ck.model_config.inputs
    if store is None:
        rng = np.random.default_rng(seed)
        crops = rng.integers(0, 256, (n, st.CROP_SIZE, st.CROP_SIZE, st.CHANNELS), dtype=np.uint8)
        return crops, (rng.standard_normal((n, k)).astype(np.float32) if k else None)
    rows = np.unique(np.linspace(0, store.n - 1, min(n, store.n)).astype(np.int64))
    feats = None
    if ck.feature_model is not None:
        inputs, logits = inputs_and_logits(store.table.take(rows), ck.feature_model, source=str(store.path))
        keep = logits >= ck.prefilter_threshold if ck.prefilter_threshold is not None else np.ones(len(rows), bool)
        keep = keep if keep.any() else np.ones(len(rows), bool)
        rows, feats = rows[keep], inputs[keep].astype(np.float32)
    return store.read_rows(rows), feats


def max_logit_difference(a: Callable[..., torch.Tensor], b: Callable[..., torch.Tensor], crops: np.ndarray,
                         features: np.ndarray | None, input_size: int, *,
                         tolerance: tuple[float, float] = (ATOL, RTOL)) -> tuple[float, bool]:
    """(max |a - b|, whether every |a - b| <= atol + rtol |a|) over the crops' logits; ``a`` the reference."""
    x = preprocess(torch.from_numpy(crops), input_size)
    f = None if features is None else torch.from_numpy(features)
    with torch.inference_mode():
        ref = a(x) if f is None else a(x, f)
        got = b(x) if f is None else b(x, f)
    diff = (ref.float() - got.float()).abs()
    atol, rtol = tolerance
    return float(diff.max()), bool((diff <= atol + rtol * ref.float().abs()).all())


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int | None = None,
    check: st.CropStore | None = None,
    check_crops: int = CHECK_CROPS,
    tolerance: tuple[float, float] = (ATOL, RTOL),
    opset: int = OPSET,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` (``*.onnx``), checked against torch first.

    Parameters
    ----------
    checkpoint : path-like
        A scanstream ``*.safetensors`` checkpoint.
    out : path-like
        The ``*.onnx`` file (replaced atomically, only once the check passed).
    batch_size : int, optional
        Fix the batch dimension (default dynamic; the engine needs dynamic).
    check : CropStore, optional
        Crops (and object rows, for a fused network) to check on; default seeded noise.
    check_crops : int
        How many crops the check runs.
    tolerance : (atol, rtol)
        ONNX Runtime's logit may differ from torch's by ``atol + rtol * |torch logit|``.

    Returns
    -------
    dict
        path, hash, checkpoint_hash, precision, checked crops, max_abs_diff (logits), tolerance.

    Raises
    ------
    CheckpointError
        ``checkpoint`` is not a scanstream checkpoint, or ONNX Runtime's logits differ from
        torch's beyond the tolerance (nothing is written then).
    """
    out = _check_out(out)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    header = read_header(checkpoint)
    ck = load_checkpoint(checkpoint)
    cfg = ck.model_config
    crops, feats = check_inputs(ck, check, check_crops)
    if batch_size:
        crops, feats = _fit_batch(crops, feats, batch_size)
    graph = graph_bytes(ck.model, input_size=cfg.input_size, inputs=cfg.inputs, batch_size=batch_size, opset=opset)
    meta = export_metadata(ck, header, checkpoint, batch_size=batch_size, opset=opset)
    meta["tolerance"] = {"atol": tolerance[0], "rtol": tolerance[1]}
    arrays = ck.feature_model.arrays() if ck.feature_model is not None else None
    with atomic_path(out) as tmp:
        tmp.write_bytes(stamp(graph, meta, arrays))
        onnx_net = _session_network(tmp)
        worst, within = max_logit_difference(ck.model, onnx_net, crops, feats, cfg.input_size, tolerance=tolerance)
        if not within:
            raise CheckpointError(
                f"{checkpoint}: ONNX Runtime logits differ from torch's by up to {worst:.3g} "
                f"(tolerance {tolerance[0]:g} + {tolerance[1]:g} |logit|); {out} not written"
            )
        meta["check"] = {"crops": len(crops), "source": str(check.path) if check is not None else "seeded noise",
                         "max_abs_diff": worst}
        tmp.write_bytes(stamp(graph, meta, arrays))
    loaded = load_onnx(out, threads=1)  # the engine's loader reads it back
    logger.info("exported %s to %s (max |logit difference| %.2g)", checkpoint, out, worst)
    return {"path": str(out), "hash": loaded.hash, "checkpoint_hash": ck.hash, "precision": "fp32",
            "batch": meta["batch"], **meta["check"], "tolerance": meta["tolerance"]}


def _check_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix != ".onnx":
        raise InputError(f"{out}: an exported model's file name must end in .onnx")
    if out.is_dir():
        raise InputError(f"{out}: is a directory; give the .onnx file to write")
    remove_stale_temporaries(out)  # a killed export's temporary file
    return out


def _fit_batch(crops: np.ndarray, feats: np.ndarray | None, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows repeated or cut to exactly ``batch_size`` (a fixed-batch graph takes no other)."""
    idx = np.arange(batch_size) % len(crops)
    return crops[idx], None if feats is None else feats[idx]


def _session_network(path: Path, threads: int | None = None) -> Callable[..., torch.Tensor]:
    """The file's network as the engine runs it (:func:`load_onnx`: its metadata is read back too)."""
    return load_onnx(path, threads=threads).model  # type: ignore[return-value]


# -- int8 ----------------------------------------------------------------------------------
def measure_rates(runners: Mapping[str, Callable[[], Any]], crops_per_call: int, *, rounds: int = 5,
                  min_seconds: float = 0.3) -> dict[str, float]:
    """Crops/s of each runner: the best of ``rounds`` interleaved timings of at least ``min_seconds``.

    Interleaving puts every runner through the same spells of a shared machine's load; the
    best round is the one least disturbed by it.
    """
    for run in runners.values():  # warm-up: allocations, kernel selection
        run()
    best = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, run in runners.items():
            calls, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < min_seconds or calls == 0:
                run()
                calls += 1
            best[name] = max(best[name], calls * crops_per_call / elapsed)
    return best


def model_rates(models: Mapping[str, Callable[..., torch.Tensor]], crops: np.ndarray, features: np.ndarray | None,
                input_size: int, *, batch_size: int = 64, **kw: Any) -> dict[str, float]:
    """Model-only crops/s (preprocessing excluded) of each model on one batch of ``crops``.

    A torch module runs channels_last, as the engine runs it; ONNX networks take NCHW.
    """
    crops, features = _fit_batch(crops, features, batch_size)
    x = preprocess(torch.from_numpy(crops), input_size)
    f = None if features is None else torch.from_numpy(features)

    def runner(model: Callable[..., torch.Tensor]) -> Callable[[], Any]:
        xm = x.contiguous(memory_format=torch.channels_last) if isinstance(model, torch.nn.Module) else x

        def run() -> Any:
            with torch.inference_mode():
                return model(xm) if f is None else model(xm, f)

        return run

    return measure_rates({name: runner(m) for name, m in models.items()}, batch_size, **kw)


def quantize_int8(fp32: Path, out: Path, crops: np.ndarray, features: np.ndarray | None, input_size: int) -> None:
    """Static QDQ quantisation of the ONNX file ``fp32`` into ``out``, calibrated on ``crops``.

    Per-channel int8 weights, uint8 activations with min-max ranges, ``reduce_range`` (7-bit
    weights: without VNNI, AVX2's u8 x s8 multiply-add saturates at full range). The graph is
    first folded and shape-inferred (onnxruntime's ``quant_pre_process``), which the quantiser
    needs to find the convolutions' folded biases.
    """
    _onnx()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x = preprocess(torch.from_numpy(crops), input_size).numpy()
    batches = [
        {INPUT_NAMES[0]: x[a : a + 16], **({INPUT_NAMES[1]: features[a : a + 16]} if features is not None else {})}
        for a in range(0, len(x), 16)
    ]

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    folded = out.with_name(out.stem + "-folded.onnx")
    quant_pre_process(str(fp32), str(folded), skip_symbolic_shape=True)
    quantize_static(str(folded), str(out), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def validation_ap(store: st.CropStore, model: str | os.PathLike, *, batch_size: int = 64) -> float:
    """Average Precision of ``model``'s scores over the labelled crops of ``store`` (CPU, fp32 torch)."""
    labels = store.table.column("label").to_numpy(zero_copy_only=False)
    lab = labels >= 0
    if not lab.any():
        raise InputError(f"{store.path}: no labelled crops to measure Average Precision on")
    scores = score_store(store, [model], device="cpu", batch_size=batch_size, precision="fp32")
    return average_precision(labels[lab], scores[lab])


def export_int8(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    calibration: st.CropStore,
    validation: st.CropStore,
    calibration_crops: int = CALIBRATION_CROPS,
    max_ap_loss: float = INT8_MAX_AP_LOSS,
    min_speedup: float = INT8_MIN_SPEEDUP,
    rate_seconds: float = 0.3,
) -> dict[str, Any]:
    """Write an int8 ONNX model of ``checkpoint`` only where it is faster and keeps its AP.

    The fp32 export (checked as in :func:`export_onnx`) is quantised (:func:`quantize_int8`,
    calibrated on ``calibration_crops`` crops spread over ``calibration``); then the torch fp32,
    ONNX fp32 and ONNX int8 networks are timed model-only on those crops, and the checkpoint and
    the int8 model score every labelled crop of ``validation`` through the engine.

    Returns
    -------
    dict
        path, hash, checkpoint_hash, ``crops_per_s`` (torch_fp32, onnx_fp32, onnx_int8),
        ``ap`` (fp32, int8, loss), and the calibration and validation stores.

    Raises
    ------
    InputError
        int8 is not ``min_speedup`` times as fast as the faster fp32 path, or loses more than
        ``max_ap_loss`` AP; the message gives the measured numbers and ``out`` is not written.
    """
    out = _check_out(out)
    ck = load_checkpoint(checkpoint)
    cfg = ck.model_config
    crops, feats = check_inputs(ck, calibration, calibration_crops)
    with tempfile.TemporaryDirectory(prefix="scanstream-export-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        done = export_onnx(checkpoint, fp32, check=calibration)
        quantize_int8(fp32, int8, crops, feats, cfg.input_size)
        meta = json.loads(_props(fp32)[ONNX_METADATA_KEY])
        arrays = ck.feature_model.arrays() if ck.feature_model is not None else None
        meta.update(precision="int8", tolerance=None, check=None, quantization={
            "method": "onnxruntime static QDQ, per-channel int8 weights (reduce_range), uint8 activations, min-max",
            "calibration": str(calibration.path), "calibration_crops": len(crops)})
        int8.write_bytes(stamp(int8.read_bytes(), meta, arrays))
        ens = Ensemble([checkpoint], device="cpu", precision="fp32")
        models = {"torch_fp32": ens.models[0], "onnx_fp32": _session_network(fp32), "onnx_int8": _session_network(int8)}
        rates = model_rates(models, crops, feats, cfg.input_size, min_seconds=rate_seconds)
        ap_fp32, ap_int8 = validation_ap(validation, checkpoint), validation_ap(validation, int8)
        report = {"crops_per_s": {k: round(v, 1) for k, v in rates.items()},
                  "ap": {"fp32": ap_fp32, "int8": ap_int8, "loss": ap_fp32 - ap_int8},
                  "validation": str(validation.path), "checkpoint_hash": done["checkpoint_hash"]}
        faster = rates["onnx_int8"] >= min_speedup * max(rates["torch_fp32"], rates["onnx_fp32"])
        if not faster or ap_fp32 - ap_int8 > max_ap_loss:
            why = [] if faster else [f"it is not {min_speedup:g}x as fast as fp32"]
            why += [] if ap_fp32 - ap_int8 <= max_ap_loss else [f"it loses {ap_fp32 - ap_int8:.4f} AP (more than {max_ap_loss:g})"]
            raise InputError(f"{checkpoint}: int8 not kept ({'; '.join(why)}), {out} not written; "
                             f"measured crops/s {report['crops_per_s']}, AP fp32 {ap_fp32:.4f} int8 {ap_int8:.4f}")
        meta["int8_gate"] = report
        write_bytes(out, stamp(int8.read_bytes(), meta, arrays))
    return {"path": str(out), "hash": load_onnx(out, threads=1).hash, "precision": "int8", **report}


def _props(path: Path) -> dict[str, str]:
    onnx = _onnx()
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
