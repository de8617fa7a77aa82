"""Layer selection and feature capture with forward hooks.

:func:`capture` hooks every requested layer at once, so one forward pass yields all
features; they stay in the autograd graph, which is what feature-space attacks need
(PGD that maximises ‖φ_l(x+δ) − φ_l(x)‖₂ differentiates through them).
:func:`extract_features` is the no-grad, batched, eval-mode version for probes such as
CKA and linear probes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UnknownNameError, WorkbenchError
from ..state import eval_mode
from .base import WorkbenchModel
from .layers import as_probe_model


def resolve_layers(model: WorkbenchModel, spec: str | Sequence[str]) -> list[str]:
    """Turn a layer spec into layer names, in model order, without duplicates.

    Each item is an exact layer name, an fnmatch pattern (``"layer*"``), ``"all"``,
    ``"penultimate"`` or ``"logits"``. An item that matches nothing raises
    :class:`UnknownNameError` (kind ``"layer"``) listing the model's layers.
    """
    if not isinstance(model, WorkbenchModel):
        raise WorkbenchError(f"{type(model).__name__} has no named probe layers: wrap it first, "
                             "model = workbench.models.wrap(net, in_shape=(C, H, W)) (docs/models.md)")
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise WorkbenchError(f"no layers requested for model {model.name!r}")
    order = model.layer_names()
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            hits = order
        elif item == "penultimate":
            hits = [model.penultimate]
        else:
            hits = [n for n in order if fnmatch.fnmatchcase(n, item)]
        if not hits:
            raise UnknownNameError("layer", item, [*order, "all", "penultimate"])
        chosen.update(hits)
    return [n for n in order if n in chosen]


class Capture:
    """Features of the latest forward pass: ``feats[layer]`` is (N, D), in the graph.

    ``feats`` is a new dict at every forward of the model, so a reference taken after
    one pass is not overwritten by the next.
    """

    def __init__(self, layers: list[str]):
        self.layers = layers
        self.feats: dict[str, torch.Tensor] = {}

    def __getitem__(self, layer: str) -> torch.Tensor:
        return self.feats[layer]


def _flat(layer: str, out: object, copy: bool) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise WorkbenchError(f"layer {layer!r} returns {type(out).__name__}, not a tensor")
    t = out.reshape(out.shape[0], -1)  # (N, C·H·W) in NCHW order, whatever the memory format
    if t.dtype != torch.float32:
        return t.float()  # a copy already (bf16 autocast); probes compute in float32
    # A later in-place op in the network would silently change a view; clone is differentiable.
    return t.clone() if copy else t


@contextmanager
def capture(model: WorkbenchModel, layers: str | Sequence[str]) -> Iterator[Capture]:
    """Hook ``layers`` (any :func:`resolve_layers` spec) for the duration of the block.

    >>> with capture(model, "all") as cap:
    ...     logits = model(x)
    ...     cap.feats["layer3"]          # (N, D) float32, not detached

    The features are taken inside the forward pass, so they obey whatever mode and grad
    setting the caller uses. If a hooked module ran more than once in a pass, the last
    call wins (no registered model reuses a hooked module). Hooks are removed on exit,
    also when the block raises.
    """
    names = resolve_layers(model, layers)
    cap = Capture(names)
    copy = not getattr(model, "inplace_safe", True)

    def reset(_module: nn.Module, _inputs: object) -> None:
        cap.feats = {}

    def hook_for(layer: str):
        def hook(_module: nn.Module, _inputs: object, out: object) -> None:
            cap.feats[layer] = _flat(layer, out, copy)

        return hook

    # The reset pre-hook goes on first so it runs before anything else in a forward pass.
    handles = [model.register_forward_pre_hook(reset)]
    try:
        for name in names:
            handles.append(model.layer_module(name).register_forward_hook(hook_for(name)))
        yield cap
    finally:
        for h in handles:
            h.remove()


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def extract_features(
    model: WorkbenchModel,
    x: torch.Tensor,
    layers: str | Sequence[str],
    *,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Features of ``x`` (N, C, H, W) in [0, 1] at ``layers``, as float32 (N, D) CPU tensors.

    Runs in eval mode (each module's previous mode is restored afterwards) without
    gradients, in batches of ``batch_size`` on the model's device.
    """
    if len(x) == 0:
        raise WorkbenchError("extract_features got no examples")
    model = as_probe_model(model, x)
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be positive, got {batch_size}")
    device = _device(model)
    parts: dict[str, list[torch.Tensor]] = {}
    with eval_mode(model):
        with torch.no_grad(), capture(model, layers) as cap:
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size].to(device))
                for name in cap.layers:
                    parts.setdefault(name, []).append(cap.feats[name].float().cpu())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}
