"""Convolutional backbones shared by the dense models: a lite trunk, a ResNet trunk, and a U-Net decoder.

`UNetBackbone` runs a trunk (``SIZES[size]``) to stride 16 and, when the size has one, a decoder back to stride
4; `levels` returns every level by name, so CAPS, HNDesc and SCFeat put their own heads on the same code and the
same checkpoint keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Named network sizes. "lite" is our CPU configuration (four stride-2 stages of 3x3
# convolutions, 1.19 M parameters); "resnet18" / "resnet34" are the CAPS design on a ResNet trunk (GroupNorm,
# from scratch, 3.6 M / 8.9 M parameters with this decoder).
SIZES: dict[str, dict[str, Any]] = {
    "lite": {"trunk": "lite", "channels": (32, 64, 128, 128), "decoder": (128, 64), "coarse_dim": 128, "fine_dim": 128},
    # SCFeat's CPU-speed trunk without a decoder: few channels where the resolution is high, as in XFeat (Potje et
    # al., CVPR 2024); its heads work at stride 8 (`scfeat.py`).
    "fast": {"trunk": "lite", "channels": (8, 24, 64, 128), "decoder": None},
    "resnet18": {
        "trunk": "resnet",
        "blocks": (2, 2, 2),
        "channels": (64, 64, 128, 256),
        "decoder": (128, 64),
        "coarse_dim": 128,
        "fine_dim": 128,
    },
    "resnet34": {
        "trunk": "resnet",
        "blocks": (3, 4, 6),
        "channels": (64, 64, 128, 256),
        "decoder": (128, 64),
        "coarse_dim": 128,
        "fine_dim": 128,
    },
}
# Grey input is the mean of ImageNet's RGB statistics, so one normalisation serves grey and RGB-trained trunks.
GREY_MEAN, GREY_STD = 0.449, 0.226


def conv_block(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv -> GroupNorm -> ELU; GroupNorm because CPU batches hold only a few image pairs."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.GroupNorm(min(32, c_out // 4), c_out),
        nn.ELU(inplace=True),
    )


class LiteTrunk(nn.Module):
    """Four stride-2 stages of 3x3 conv blocks: features at strides 4, 8 and 16.

    The first stage has one block, the others two: the second full-resolution-ish block cost 18 % of a CPU
    training step and its output is never sampled.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        c_in = 1
        self.stages = nn.ModuleList()
        for i, c in enumerate(channels):
            blocks = [conv_block(c_in, c, stride=2)] + ([conv_block(c, c)] if i > 0 else [])
            self.stages.append(nn.Sequential(*blocks))
            c_in = c
        self.out_channels = tuple(channels[1:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 4, 8, 16."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[1:]


class BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.GroupNorm(min(32, c_out // 4), c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.GroupNorm(min(32, c_out // 4), c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(min(32, c_out // 4), c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output."""
        return F.relu(self.body(x) + self.skip(x))


class ResNetTrunk(nn.Module):
    """ResNet stem + layer1..layer3 (CAPS drops layer4): features at strides 4, 8, 16."""

    def __init__(self, channels: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        stem, *widths = channels
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem, 7, 2, 3, bias=False),
            nn.GroupNorm(min(32, stem // 4), stem),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layers = nn.ModuleList()
        c_in = stem
        for i, (c, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            self.layers.append(
                nn.Sequential(*[BasicBlock(c_in if j == 0 else c, c, stride if j == 0 else 1) for j in range(n)])
            )
            c_in = c
        self.out_channels = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 4, 8, 16."""
        x = self.stem(x)
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class UNetBackbone(nn.Module):
    """The CAPS encoder-decoder without heads: a trunk (strides 4, 8, 16) and a U-Net decoder (strides 8, 4).

    CAPS and HNDesc put 1x1 heads on it (`CAPSNetwork`); SCFeat fuses its three levels (`scfeat.py`). The
    attribute names are the checkpoint keys, so a backbone trained by one method can start another.
    """

    def __init__(self, size: str = "lite") -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown backbone size {size!r}; known: {sorted(SIZES)}")
        conf = SIZES[size]
        self.size = size
        if conf["trunk"] == "lite":
            self.trunk: nn.Module = LiteTrunk(conf["channels"])
        else:
            self.trunk = ResNetTrunk(conf["channels"], conf["blocks"])
        c4, c8, c16 = self.trunk.out_channels
        self.decoder = conf["decoder"] is not None
        if self.decoder:
            d8, d4 = conf["decoder"]
            # U-Net decoder as in CAPS: upsample, 3x3 conv, concatenate the skip, 3x3 conv; at strides 8 and 4.
            self.up8, self.merge8 = conv_block(c16, d8), conv_block(d8 + c8, d8)
            self.up4, self.merge4 = conv_block(d8, d4), conv_block(d4 + c4, d4)

    def levels(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Trunk features ``"trunk4"``, ``"trunk8"``, ``"trunk16"`` and decoder maps ``"decoder8"``, ``"decoder4"``
        (sizes without a decoder give the trunk's only)."""
        if images.shape[1] != 1:
            raise ValueError(f"{type(self).__name__} takes grey images (B, 1, H, W), got {tuple(images.shape)}")
        x4, x8, x16 = self.trunk((images - GREY_MEAN) / GREY_STD)
        levels = {"trunk4": x4, "trunk8": x8, "trunk16": x16}
        if self.decoder:
            y8 = self.merge8(torch.cat([self.up8(resize_like(x16, x8)), x8], dim=1))
            y4 = self.merge4(torch.cat([self.up4(resize_like(y8, x4)), x4], dim=1))
            levels |= {"decoder8": y8, "decoder4": y4}
        return levels


def resize_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``like`` (``x`` itself when the sizes agree)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
