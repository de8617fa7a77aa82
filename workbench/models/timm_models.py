"""Any timm model as ``"timm:<name>"`` (optional extra: ``pip install 'robustness-workbench[models]'``).

Built untrained (``pretrained=False``: timm would fetch weights from a hub) with the
study's ``num_classes``; other options pass through to ``timm.create_model``. Weights come
from a local file through a ``checkpoint`` source. Probe layers are timm's own
``feature_info`` stages plus the pooled features (:func:`~workbench.models.layers.auto_layers`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import UnknownNameError, WorkbenchError, install_hint
from .base import FAMILIES, TIMM_PREFIX, Built, ModelFamily
from .layers import auto_layers

_RESERVED = ("pretrained", "num_classes", "pretrained_cfg_overlay")


def _timm():
    try:
        # optional extra (timm): imported when a timm model is used
        import timm
    except ImportError:
        raise WorkbenchError(f"timm models need the timm package: {install_hint('models')}") from None
    return timm


def check_options(name: str, options: dict[str, Any]) -> None:
    timm = _timm()
    if name not in timm.list_models():
        close = timm.list_models(f"*{name}*")[:10]
        raise UnknownNameError("timm model", name, close or ["(see timm.list_models())"])
    bad = sorted(set(options) & set(_RESERVED))
    if bad:
        raise WorkbenchError(f"{TIMM_PREFIX}{name}: {', '.join(map(repr, bad))} cannot be set (the workbench sets them)")


def construct(name: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    timm = _timm()
    check_options(name, options)
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, **options)
    except TypeError as exc:
        raise WorkbenchError(f"invalid options {sorted(options)} for {TIMM_PREFIX}{name}: {exc}") from exc
    for m in net.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False  # in-place activations would overwrite captured features
    return net


def build(name: str, *, num_classes: int, in_shape: tuple[int, int, int], options: dict[str, Any]) -> tuple[Built, dict[str, Any]]:
    if in_shape[0] not in (1, 3):
        raise WorkbenchError(f"{TIMM_PREFIX}{name} takes 3-channel (or 1-channel, repeated) images, got {in_shape}")
    net = construct(name, num_classes, options)
    layers, pen = auto_layers(net, in_shape, repeat=3 if in_shape[0] == 1 else None)
    return Built(net, layers, pen, inplace_safe=False), dict(options)


# any timm model, as "timm:<name>" (timm itself is imported when one is built or checked)
FAMILIES.register(TIMM_PREFIX)(ModelFamily(build=build, check_options=check_options))
