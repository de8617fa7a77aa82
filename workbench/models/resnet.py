"""ResNet-18 with a CIFAR stem (He et al. 2016, "Deep Residual Learning for Image Recognition").

The CIFAR variant common in adversarial-robustness code (e.g. kuangliu/pytorch-cifar, used
by many AT papers): a 3×3 stride-1 stem conv with no max-pool, four stages of
post-activation basic blocks (conv-BN-ReLU-conv-BN, add, ReLU; strides 1, 2, 2, 2),
global average pool and a linear classifier.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import WorkbenchError
from .base import MODELS, Built


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        # A separate module for the block's output nonlinearity, so it is visible and
        # never shared (hooks on a shared module fire more than once per pass).
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_shape: tuple[int, int, int], width: int = 64) -> Built:
    """ResNet-18 (He et al. 2016) with a CIFAR stem (3×3 conv, stride 1, no max-pool).

    Layers: ``stem`` (after its ReLU), ``layer1`` … ``layer4`` (after each stage's last
    ReLU), ``pool`` (penultimate: global average pool), ``logits``. ``width`` (stem
    channels, 64 in the paper) exists to make tiny test models.
    """
    if width < 1:
        raise WorkbenchError(f"width must be positive, got {width}")
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(
            nn.Conv2d(in_shape[0], width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(),
        )
    )
    cin = width
    for i in range(4):
        cout = width * 2**i
        stride = 1 if i == 0 else 2
        stages[f"layer{i + 1}"] = nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
        cin = cout
    stages["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    stages["fc"] = nn.Linear(cin, num_classes)
    layers = {name: name for name in stages if name != "fc"}
    return Built(nn.Sequential(stages), layers, penultimate="pool")
