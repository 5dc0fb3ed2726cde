"""Image preprocessing constants shared by cropping, the embedder and model fingerprints."""

from __future__ import annotations

from model.region_crops import SINGLE, RegionCrops

CROP_SIZE = 224
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Parts of a region box outside the image are filled with this grey value (before normalisation).
PAD_VALUE = 0.0

# Limits applied before an upload is decoded.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_SIDE = 16_384


def preprocessing_config(region_crops: RegionCrops = SINGLE) -> dict:
    """The preprocessing settings that change embeddings, with the crop scheme `region_crops`
    (model.region_crops); hashed into model fingerprints."""
    settings = {
        "crop_size": CROP_SIZE,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "pad_value": PAD_VALUE,
        "resize": "bilinear-antialias-no-aspect",
        "grey_to_rgb": "replicate",
    }
    # The single crop is recorded by its absence: checkpoints and caches made before crop schemes
    # existed keep their settings and fingerprints.
    return settings if region_crops == SINGLE else {**settings, "region_crops": region_crops.config()}
