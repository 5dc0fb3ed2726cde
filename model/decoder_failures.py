"""Turning the exceptions of third-party image decoders (PIL, pydicom) into typed image errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from model.errors import ImageError


@contextmanager
def decoder_failures(error_type: type[ImageError], problem: str) -> Iterator[None]:
    """Re-raise any decoder exception inside the block as `error_type("<problem>: <detail>")`.

    Typed image errors pass through unchanged and MemoryError is never disguised as bad input.
    """
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise error_type(f"{problem}: {error}") from error
