"""Shared type aliases (shapes in comments, units in names)."""

from __future__ import annotations

from typing import Literal

import torch

Tensor = torch.Tensor
#: images in [0, 1], shape (N, C, H, W)
Images = torch.Tensor
#: integer class labels, shape (N,)
Labels = torch.Tensor
Norm = Literal["linf", "l2"]
Precision = Literal["fp32", "bf16"]
