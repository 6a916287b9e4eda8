"""A small convolutional backbone for the data sets that fit on a CPU: 8x8 digits, 32x32 shapes.

Stages of two conv-bn-relu blocks each, the width doubling and the resolution halving (max pool) from one
stage to the next. It returns the last feature map, the input of PICNN's interpreted layer.
"""
from __future__ import annotations

from torch import nn

__all__ = ["SmallConvNet"]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # bias=False: the batch norm that follows has its own shift.
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SmallConvNet(nn.Sequential):
    """images (B, in_channels, H, W) -> feature map (B, out_channels, H / 2^(stages-1), W / 2^(stages-1)).

    Args:
        in_channels: image channels (1 for digits, 3 for shapes).
        width: channels of the first stage; stage i has width * 2^i.
        stages: 2 suits 8x8 images (a 4x4 map), 3 suits 32x32 images (an 8x8 map).
    """

    def __init__(self, in_channels: int, width: int = 32, stages: int = 2):
        if stages < 1:
            raise ValueError(f"SmallConvNet: stages must be at least 1, got {stages}")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(stages):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            stage_width = width * 2 ** stage
            layers += [conv_bn_relu(channels, stage_width), conv_bn_relu(stage_width, stage_width)]
            channels = stage_width
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = channels
