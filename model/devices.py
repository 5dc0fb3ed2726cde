"""Choosing the torch device a process computes on, from a device name (model.precision)."""

from __future__ import annotations

import torch

from model.errors import ChextrievError
from model.precision import check_device_name


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """The device for `name`: "auto" is this rank's GPU when CUDA is present, else the CPU; "cuda" is
    GPU `local_rank` (the process's index on its node under torchrun); "cuda:N" is GPU N."""
    check_device_name(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ChextrievError(f"device {name!r} was asked for, but CUDA is not available here")
    index = int(name.split(":", 1)[1]) if ":" in name else local_rank
    count = torch.cuda.device_count()
    if index >= count:
        raise ChextrievError(f"device {name!r} needs GPU {index}, but this machine has {count}")
    return torch.device("cuda", index)
