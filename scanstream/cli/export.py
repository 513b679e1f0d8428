"""``scanstream export``: a checkpoint as an ONNX model for the CPU (fp32, or int8 where it pays)."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.cli._common import print_json
from scanstream.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (checked against torch), optionally int8",
        description="Write CKPT's network as an ONNX model that classify and any ONNX Runtime user can run on "
        "the CPU. The file carries the checkpoint's identity and header, the input size, normalisation and head "
        "in its metadata. ONNX Runtime's logits are checked against torch's on crops of --check (default: seeded "
        "noise) before anything is written; a model beyond the tolerance is refused. --int8 quantises it "
        "(static, calibrated on --calibration) and writes it only if it measures at least 1.1x as fast as both "
        "fp32 paths and its Average Precision on --validation (default: the calibration store's labelled crops) is within "
        "0.005 of the checkpoint's; otherwise it fails with the measured numbers. Prints a JSON report.",
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="a scanstream checkpoint (*.safetensors)")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--batch", type=int, metavar="N",
                   help="fix the batch size (default: dynamic; classify needs a dynamic-batch model)")
    p.add_argument("--check", type=Path, metavar="STORE", help="crop store whose crops the logits check runs on")
    p.add_argument("--int8", action="store_true", help="write an int8 model, if it is faster and keeps its AP")
    p.add_argument("--calibration", type=Path, metavar="STORE", help="crop store to calibrate int8 on (with --int8)")
    p.add_argument("--validation", type=Path, metavar="STORE",
                   help="labelled crop store for the int8 AP check (default: --calibration)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scanstream import store as st
    from scanstream.inference.export import export_int8, export_onnx

    if args.int8:
        if args.calibration is None:
            raise InputError("--int8 needs --calibration STORE (crops to calibrate on)")
        if args.batch is not None:
            raise InputError("--int8 writes a dynamic-batch model; leave out --batch")
        calibration = st.open_store(args.calibration)
        validation = calibration if args.validation is None else st.open_store(args.validation)
        print_json(export_int8(args.checkpoint, args.out, calibration=calibration, validation=validation))
        return 0
    if args.calibration is not None or args.validation is not None:
        raise InputError("--calibration and --validation go with --int8")
    check = None if args.check is None else st.open_store(args.check)
    print_json(export_onnx(args.checkpoint, args.out, batch_size=args.batch, check=check))
    return 0
