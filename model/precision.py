"""The names of compute devices, dtypes and backbone runtimes: one vocabulary for the settings, the
command line and the code.

Devices: "auto" (a GPU when CUDA is present, else the CPU), "cpu", "cuda" or "cuda:N".
Dtypes: "float32", "bfloat16" and "float16", as torch spells them.
Runtimes: "auto", "torch" or "onnx" (model.runtime chooses). Checking a name needs no torch, so
the service's settings and the command line's help stay fast; torch is imported to turn a name into
a dtype.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from model.errors import ChextrievError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
RUNTIMES = ("auto", "torch", "onnx")
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> str:
    """`name` when it names a device ("auto", "cpu", "cuda", "cuda:N"); else a ChextrievError."""
    if not _DEVICE_NAME.fullmatch(name):
        raise ChextrievError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N")
    return name


def dtype_named(name: str) -> torch.dtype:
    """The torch dtype called `name` ("float32", "bfloat16", "float16"); else a ChextrievError."""
    if name not in DTYPES:
        raise ChextrievError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    import torch  # here, not at the top: see the module docstring

    return getattr(torch, name)
