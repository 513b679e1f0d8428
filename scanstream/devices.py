"""Devices and numeric precision: the one place their names are parsed and ``auto`` is decided.

``auto`` device: CUDA when this process sees a GPU, else the CPU. ``auto`` precision: bf16
where the device computes it natively (CUDA with bf16, CPUs with AVX-512 BF16 or AMX), else
fp32; on CPUs without those instructions bf16 autocast is emulated and measured 3-6x slower
(docs/classify.md). Training's ``precision`` option uses the same words and the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanstream.errors import InputError

try:
    import torch
except ImportError:  # the light install (docs/install.md): the CPU only, ONNX models only
    torch = None

PRECISIONS = ("auto", "fp32", "bf16")
#: What to install for torch (training, export, .safetensors checkpoints, GPUs).
TORCH_HINT = "pip install 'scanstream[torch]' (docs/install.md)"


@dataclass(frozen=True)
class HostCPU:
    """The device where torch is not installed: the CPU, read as ``torch.device("cpu")`` reads."""

    type: str = "cpu"

    def __str__(self) -> str:
        return "cpu"


def parse_device(device: str | Any = "auto", *, cuda: bool | None = None) -> Any:
    """A torch device from ``auto``, ``cpu`` or ``cuda[:N]`` (:class:`HostCPU` where torch is not installed).

    ``cuda`` says whether CUDA is available where the device will be used (default: here);
    classify passes what its Dask workers report.
    """
    if torch is None:
        if str(device) not in ("auto", "cpu"):
            raise InputError(f"device {str(device)!r} needs torch, which is not installed: {TORCH_HINT}")
        return HostCPU()
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if cuda else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise InputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not cuda:
        raise InputError(f"device {str(device)!r} asked for but CUDA is not available; use --device cpu")
    return dev


def resolve_device(device: str | Any = "auto") -> Any:
    """``"auto"`` -> ``cuda`` when available here, else ``cpu``; anything else as torch reads it."""
    return parse_device(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU advertises AVX-512 BF16 or AMX (Linux ``/proc/cpuinfo``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: Any) -> bool:
    """Whether ``device`` (here) computes bf16 natively."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


def resolve_precision(precision: str, device: str | Any = "auto", *, native: bool | None = None) -> str:
    """``"fp32"`` or ``"bf16"``; ``"auto"`` is bf16 where the device computes it natively.

    ``native`` overrides the check made here (classify passes what its workers report).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    given = torch is not None and isinstance(device, torch.device) or isinstance(device, HostCPU)
    dev = device if given and native is not None else parse_device(device)
    if precision != "auto":
        return precision
    fast = native_bf16(dev) if native is None else native
    return "bf16" if fast else "fp32"
