"""Pre-activation ResNets for CIFAR-sized inputs.

He et al. 2016, "Identity Mappings in Deep Residual Networks", in the CIFAR form used by
Madry et al.'s robustness code and Wong et al. 2020 ("Fast is better than free"): a 3×3
stem conv with 64 channels and no max-pool, four stages of pre-activation basic blocks
(BN-ReLU-conv ×2, strides 1, 2, 2, 2), then BN-ReLU, global average pool and a linear
classifier. Parameter names differ from those repositories (stem, pool.bn, fc), but the
parameters come in the same order, so a state dict maps across one to one.

The basic block is the reference ``PreActBlock`` of locuslab/fast_adversarial (and
kuangliu's pytorch-cifar): a projection shortcut takes the block *input* ``x``. Taking the
activated ``relu(bn1(x))`` instead is the reference's Bottleneck; an earlier version of this
file did that in the basic block, which overfit catastrophically under FGSM-RS where the
reference does not, and computes something else on a reference checkpoint.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import WorkbenchError
from .base import MODELS, Built


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3 plus the shortcut; the output is not activated."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut  # not `+=`: never modify a tensor a hook may hold


def _head(channels: int) -> nn.Sequential:
    """Final BN-ReLU and global average pool: the penultimate features, (N, channels)."""
    return nn.Sequential(OrderedDict(
        bn=nn.BatchNorm2d(channels), relu=nn.ReLU(),
        avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
    ))


def preact_resnet(num_classes: int, in_shape: tuple[int, int, int], blocks: Sequence[int],
                  width: int) -> Built:
    """A pre-activation ResNet with ``blocks`` per stage and ``width`` stem channels."""
    if width < 1:
        raise WorkbenchError(f"width must be positive, got {width}")
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Conv2d(in_shape[0], width, 3, stride=1, padding=1, bias=False)
    )
    cin = width
    for i, n in enumerate(blocks):
        cout = width * 2**i
        stride = 1 if i == 0 else 2
        stages[f"layer{i + 1}"] = nn.Sequential(
            *[PreActBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(n)]
        )
        cin = cout
    stages["pool"] = _head(cin)
    stages["fc"] = nn.Linear(cin, num_classes)
    layers = {name: name for name in stages if name != "fc"}
    return Built(nn.Sequential(stages), layers, penultimate="pool")


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int, in_shape: tuple[int, int, int], width: int = 64) -> Built:
    """PreAct ResNet-18, CIFAR stem: exactly the PreActResNet18 of Wong et al. 2020's fast AT code.

    Layers: ``stem``, ``layer1`` … ``layer4`` (stage outputs: pre-activation residual
    sums, as the architecture has no nonlinearity there), ``pool`` (penultimate: final
    BN-ReLU and global average pool), ``logits``. ``width`` (stem channels, 64 in the
    paper) exists to make tiny test models.
    """
    return preact_resnet(num_classes, in_shape, (2, 2, 2, 2), width)


@MODELS.register("preact_resnet34")
def preact_resnet34(num_classes: int, in_shape: tuple[int, int, int], width: int = 64) -> Built:
    """PreAct ResNet-34, CIFAR stem, with the reference PreActBlock; layers as for ``preact_resnet18``."""
    return preact_resnet(num_classes, in_shape, (3, 4, 6, 3), width)
