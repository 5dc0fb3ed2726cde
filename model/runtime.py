"""Which runtime runs the frozen backbone: PyTorch, or ONNX Runtime on the CPU (model.onnx_backbone)."""

from __future__ import annotations

import torch

from model.errors import ChextrievError
from model.precision import RUNTIMES


def choose_runtime(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """"torch" or "onnx" for the runtime `name`: "auto" is ONNX Runtime for float32 on the CPU, where it
    measured fastest (`chextriev bench embed`), and PyTorch elsewhere; "onnx" needs float32 on the CPU."""
    if name not in RUNTIMES:
        raise ChextrievError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES)}")
    onnx_fits = device.type == "cpu" and dtype == torch.float32
    if name == "onnx" and not onnx_fits:
        raise ChextrievError(f"the onnx runtime runs float32 on the CPU only, not {dtype} on {device}")
    if name == "auto":
        return "onnx" if onnx_fits else "torch"
    return name
