"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

The CIFAR WRN-depth-width used by Madry et al. (WRN-34-10), TRADES (WRN-34-10) and
RobustBench (WRN-28-10), following the widely used xternalz/WideResNet-pytorch code:
a 3×3 stem conv with 16 channels, three groups of (depth − 4)/6 pre-activation blocks
with 16·w, 32·w, 64·w channels (strides 1, 2, 2), then BN-ReLU, global average pool and
a linear classifier, with He (fan-out) initialisation.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import WorkbenchError
from .base import MODELS, Built


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3×3-BN-ReLU-(dropout)-conv3×3 plus the shortcut.

    When the channel count changes, the activated input also feeds the 1×1 projection
    shortcut (as in the reference code); otherwise the shortcut is the identity.
    """

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if cin != cout or stride != 1:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + (self.shortcut(act) if self.shortcut is not None else x)


@MODELS.register("wide_resnet")
def wide_resnet(num_classes: int, in_shape: tuple[int, int, int], depth: int = 28, width: int = 10,
                dropout: float = 0.0) -> Built:
    """WRN-depth-width (Zagoruyko & Komodakis 2016); WRN-28-10 by default.

    ``depth`` must satisfy (depth − 4) % 6 == 0 (28, 34, 40, …; 10 for tests), ``width``
    multiplies the channels, ``dropout`` is the rate between the two convs of a block.
    Layers: ``stem``, ``block1`` … ``block3`` (group outputs: pre-activation residual
    sums), ``pool`` (penultimate: final BN-ReLU and global average pool), ``logits``.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise WorkbenchError(f"wide_resnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, …), got {depth}")
    if width < 1:
        raise WorkbenchError(f"wide_resnet width must be positive, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise WorkbenchError(f"wide_resnet dropout must be in [0, 1), got {dropout}")
    n = (depth - 4) // 6
    channels = [16, 16 * width, 32 * width, 64 * width]
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Conv2d(in_shape[0], channels[0], 3, stride=1, padding=1, bias=False)
    )
    for g in range(3):
        cin, cout, stride = channels[g], channels[g + 1], 1 if g == 0 else 2
        stages[f"block{g + 1}"] = nn.Sequential(
            *[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, dropout) for i in range(n)]
        )
    stages["pool"] = nn.Sequential(OrderedDict(
        bn=nn.BatchNorm2d(channels[3]), relu=nn.ReLU(),
        avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
    ))
    stages["fc"] = nn.Linear(channels[3], num_classes)
    net = nn.Sequential(stages)
    # Initialisation of the reference code: He normal (fan-out) convs, unit BN, zero biases.
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    layers = {name: name for name in stages if name != "fc"}
    return Built(net, layers, penultimate="pool")
