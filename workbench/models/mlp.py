"""Multi-layer perceptron on flattened images (works for any input shape)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..errors import WorkbenchError
from .base import MODELS, Built


@MODELS.register("mlp")
def mlp(num_classes: int, in_shape: tuple[int, int, int], hidden: Sequence[int] = (256, 256)) -> Built:
    """MLP: flatten, then Linear-ReLU per entry of ``hidden``, then a linear classifier.

    Layers: ``fc1`` … ``fcK`` (after each ReLU; the last is the penultimate), ``logits``.
    With ``hidden=()`` the model is linear and its only layer is ``flatten`` (the input).
    """
    sizes = [int(h) for h in hidden]
    if any(h < 1 for h in sizes):
        raise WorkbenchError(f"mlp hidden sizes must be positive, got {list(hidden)}")
    blocks: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    layers = {}
    width = math.prod(in_shape)
    for i, h in enumerate(sizes, 1):
        # One ReLU module per block: a hook on a shared module would fire several times.
        blocks[f"fc{i}"] = nn.Sequential(nn.Linear(width, h), nn.ReLU())
        layers[f"fc{i}"] = f"fc{i}"
        width = h
    blocks["fc"] = nn.Linear(width, num_classes)
    if not layers:
        layers["flatten"] = "flatten"
    return Built(nn.Sequential(blocks), layers, penultimate=list(layers)[-1])
