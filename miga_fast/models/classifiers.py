"""Small image classifiers. Inputs are images in [0, 1]; any normalisation is inside
the model (normalisation belongs to the model, never to the attack)."""

from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """Two conv-conv-pool stages, global average pooling, a linear head. `features` is
    the last conv block (the Grad-CAM layer)."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(channels, width), _conv_bn(width, width), nn.MaxPool2d(2))
        self.features = nn.Sequential(_conv_bn(width, 2 * width), _conv_bn(2 * width, 2 * width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet of BasicBlocks: a stem, one or more blocks per stage (the first of each
    later stage strides 2), global average pooling, a linear head. `layer<k>` are the
    stages (hook points for attention masks and Grad-CAM)."""

    def __init__(self, channels: int = 3, classes: int = 10, widths=(32, 64, 128), blocks: int = 1):
        super().__init__()
        self.stem = _conv_bn(channels, widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stage = [BasicBlock(cin, w, stride=1 if i == 0 else 2)]
            stage += [BasicBlock(w, w) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return self.head(h)
