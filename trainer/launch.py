"""Where this process stands in a multi-process launch (torchrun).

torchrun (python -m torch.distributed.run) starts one process per GPU and tells each its place
through the environment: RANK (0..WORLD_SIZE-1 over all nodes), WORLD_SIZE and LOCAL_RANK (the
process's index on its node, which picks its GPU). A plain `python` run has none of them and is
rank 0 of 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from model.errors import ChextrievError


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
