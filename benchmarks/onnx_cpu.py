"""CPU inference: torch fp32 against ONNX Runtime fp32 and int8, side by side in one run.

Prints one JSON document. For each model configuration (backbone at an input size), on the same
crops, batch size, thread count and machine:

- ``model_only_crops_per_s``: the network alone on already-normalised input
  (:func:`scanstream.inference.export.model_rates`): ``torch_fp32`` (channels_last, as the
  engine runs it), ``onnx_fp32`` (the checked export, :func:`export_onnx`) and ``onnx_int8``
  (:func:`quantize_int8`: static QDQ, calibrated on the same crops);
- ``engine_crops_per_s``: :meth:`scanstream.inference.engine.Ensemble.score` on uint8 crops
  (resize and normalisation included) for the torch checkpoint and the fp32 export;
- the ratios against torch fp32, and int8 against ONNX fp32.

Each figure is the best of ``--rounds`` interleaved timings of at least ``--seconds`` (every
path goes through the same spells of a shared machine's load); the JSON records the load
average before and after. Models are untrained (the compute of trained ones); crops are seeded
noise. Speed only: int8's accuracy is checked per model by ``scanstream export --int8``.

Usage::

    python benchmarks/onnx_cpu.py [--configs mobilenet_v3_small:112,resnet18:112]
        [--batch-size 64] [--threads N] [--seconds 0.5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from scanstream.inference.engine import Ensemble
from scanstream.inference.export import check_inputs, export_onnx, measure_rates, model_rates, quantize_int8
from scanstream.inference.onnx_model import load_onnx
from scanstream.network.checkpoint import load_checkpoint, save_checkpoint
from scanstream.network.model import ModelConfig, build_model


def measure(backbone: str, size: int, tmp: Path, *, batch_size: int, seconds: float, rounds: int) -> dict:
    cfg = ModelConfig(backbone, size)
    torch.manual_seed(0)
    ckpt = tmp / f"{backbone}-{size}.safetensors"
    save_checkpoint(ckpt, build_model(cfg).eval(), model_config=cfg, train_config={}, data_hash="bench", metrics={})
    fp32, int8 = tmp / f"{backbone}-{size}.onnx", tmp / f"{backbone}-{size}-int8.onnx"
    exported = export_onnx(ckpt, fp32)
    ck = load_checkpoint(ckpt)
    crops, _ = check_inputs(ck, None, batch_size)
    quantize_int8(fp32, int8, crops, None, size)
    torch_ens, onnx_ens = Ensemble([ckpt], device="cpu", precision="fp32"), Ensemble([fp32], device="cpu")
    models = {"torch_fp32": torch_ens.models[0], "onnx_fp32": onnx_ens.models[0],
              "onnx_int8": load_onnx(int8).model}
    rates = model_rates(models, crops, None, size, batch_size=batch_size, min_seconds=seconds, rounds=rounds)
    u8 = torch.from_numpy(crops)
    engine = measure_rates({"torch_fp32": lambda: torch_ens.score(u8), "onnx_fp32": lambda: onnx_ens.score(u8)},
                           batch_size, min_seconds=seconds, rounds=rounds)
    t, o, q = rates["torch_fp32"], rates["onnx_fp32"], rates["onnx_int8"]
    return {
        "backbone": backbone,
        "input_size": size,
        "model_only_crops_per_s": {k: round(v, 1) for k, v in rates.items()},
        "engine_crops_per_s": {k: round(v, 1) for k, v in engine.items()},
        "onnx_fp32_over_torch_fp32": round(o / t, 2),
        "onnx_int8_over_torch_fp32": round(q / t, 2),
        "onnx_int8_over_onnx_fp32": round(q / o, 2),
        "engine_onnx_over_torch": round(engine["onnx_fp32"] / engine["torch_fp32"], 2),
        "export_max_abs_logit_diff": exported["max_abs_diff"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="mobilenet_v3_small:112,resnet18:112", help="backbone:input_size, comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch and onnxruntime intra-op threads (default torch's: the cores)")
    p.add_argument("--seconds", type=float, default=0.5, help="least seconds per timing")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timings per path (best reported)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = [round(x, 2) for x in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="scanstream-onnx-bench-") as tmp:
        for item in args.configs.split(","):
            backbone, size = item.split(":")
            rows.append(measure(backbone, int(size), Path(tmp), batch_size=args.batch_size, seconds=args.seconds,
                                rounds=args.rounds))
    print(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "load_before": load,
                    "load_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "batch_size": args.batch_size,
        "results": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
