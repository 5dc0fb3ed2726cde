"""How saliency drops are judged and drawn (one place for the figures; imports nothing heavy, so the
service's settings can name its defaults).

A region's similarity drop stands out only above the noise floor: the 99th percentile of how much
drops change when the same radiograph is embedded again after a 1-pixel shift or a JPEG re-encoding,
measured on the demo model and the 48 bundled radiographs (`chextriev bench saliency-noise`,
bench/results/saliency-noise.json: 0.130, rounded up to 0.2; the demo's embeddings are centred, which
spreads similarities over -1..1 and drops with them). Drops are drawn on a fixed scale from 0 to
`scale_max` (1.0, about the 97th percentile of the demo's drops), the same for every pair, never divided
by the pair's largest drop.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NOISE_FLOOR = 0.2
DEFAULT_SCALE_MAX = 1.0


@dataclass(frozen=True)
class SaliencyScale:
    """The noise floor a drop must exceed to stand out, and the drop at the top of the colour scale."""

    noise_floor: float = DEFAULT_NOISE_FLOOR
    scale_max: float = DEFAULT_SCALE_MAX

    def __post_init__(self) -> None:
        if not 0 <= self.noise_floor < self.scale_max:
            raise ValueError(f"the noise floor must be at least 0 and below the scale's top; got "
                             f"{self.noise_floor} and {self.scale_max}")
