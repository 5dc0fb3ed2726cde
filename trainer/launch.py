"""Where this process stands in a multi-process launch (torchrun), and the device and dtype it uses.

torchrun (python -m torch.distributed.run) starts one process per GPU and tells each its place
through the environment: RANK (0..WORLD_SIZE-1 over all nodes), WORLD_SIZE and LOCAL_RANK (the
process's index on its node, which picks its GPU). A plain `python` run has none of them and is
rank 0 of 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from model.errors import ChextrievError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class LaunchPosition:
    """This process's rank among world_size processes, and its index on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launch_position(environ: Mapping[str, str] = os.environ) -> LaunchPosition:
    """The position torchrun gave this process through RANK, WORLD_SIZE and LOCAL_RANK (else 0 of 1)."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = environ.get(name, str(default))
        try:
            values[name] = int(text)
        except ValueError:
            raise ChextrievError(f"environment variable {name}={text!r} is not an integer") from None
    position = LaunchPosition(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if position.world_size < 1 or not 0 <= position.rank < position.world_size or position.local_rank < 0:
        raise ChextrievError(f"inconsistent launch environment: RANK={position.rank}, "
                             f"WORLD_SIZE={position.world_size}, LOCAL_RANK={position.local_rank}")
    return position


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """The torch device for "auto" (this rank's GPU when CUDA is present, else the CPU), "cpu" or "cuda"."""
    if choice not in DEVICE_CHOICES:
        raise ChextrievError(f"unknown device {choice!r}; expected one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ChextrievError("device 'cuda' was asked for, but CUDA is not available here")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ChextrievError(f"LOCAL_RANK {local_rank} needs GPU {local_rank}, but this node has {count}")
    return torch.device("cuda", local_rank)


PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for "fp32", or for "bf16"/"fp16", which only a CUDA device runs fast."""
    if precision not in PRECISIONS:
        raise ChextrievError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and device.type != "cuda":
        raise ChextrievError(f"precision {precision} needs a CUDA device; this run uses {device}")
    return PRECISIONS[precision]
