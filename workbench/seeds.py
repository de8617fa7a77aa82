"""Seeds and seeded draws: every random stream of the workbench is derived here.

A study has one seed; each use (a data split, an epoch's order, an attack setting, a
probe's starts) gets its own stream from a stable hash of the seed and named parts, so
results do not depend on the order things run in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any JSON-able parts: independent streams from one study seed."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def purpose_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one named purpose, unrelated to ``seed + k`` (callers often pass
    seed + epoch). The data splits and batch streams use it; their results depend on it."""
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_generator(device: torch.device | str = "cpu", *parts: Any) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def seeded_subset(total: int, n: int | None, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of ``n`` of ``range(total)`` drawn by ``generator`` (all when ``n`` is
    None or at least ``total``, drawing nothing)."""
    if n is None or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=generator)[:n].sort().values
