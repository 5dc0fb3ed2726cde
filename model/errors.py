"""Typed errors raised by the model package; each carries a message fit to show a client."""

from __future__ import annotations

from dataclasses import dataclass


class ChextrievError(Exception):
    """Base class of every error this package raises on bad input."""


class ImageError(ChextrievError):
    """An image could not be turned into a grey float image."""


class UnsupportedImageError(ImageError):
    """The bytes are not a DICOM, PNG or JPEG image, or use a variant we do not decode."""


class CorruptImageError(ImageError):
    """The bytes claim a supported format but cannot be decoded (truncated, damaged)."""


class ImageTooLargeError(ImageError):
    """The file or its pixel count exceeds the configured limits."""


@dataclass(frozen=True)
class RegionProblem:
    """One problem with one region box: `region` is the region name (or the key as sent)."""

    region: str
    problem: str


class RegionError(ChextrievError):
    """The region boxes sent with an image are invalid; `problems` lists every one."""

    def __init__(self, problems: list[RegionProblem]):
        self.problems = list(problems)
        summary = "; ".join(f"{p.region}: {p.problem}" for p in self.problems)
        super().__init__(f"invalid region boxes: {summary}")


class CheckpointError(ChextrievError):
    """A model checkpoint is missing, corrupt or does not match its configuration."""


class MetricsInputError(ChextrievError, ValueError):
    """Arrays handed to the retrieval metrics have the wrong shape, type or values."""
