"""Any torchvision classification model as ``"torchvision:<name>"``.

The model is built untrained (``weights=None``) with the study's ``num_classes``; other
options pass through to the torchvision builder (e.g. ``dropout`` for VGG). Adaptations:

- every ``inplace=True`` module is switched to out-of-place (in-place activations would
  overwrite captured features); torchvision code also calls ``F.relu(x, inplace=True)``
  in places, so capture copies features of these models (``Built.inplace_safe=False``);
- a 1-channel input is repeated to 3 channels inside the wrapper, after normalization;
- GoogLeNet and Inception-v3 are built without auxiliary classifiers, so the forward
  returns plain logits in training mode too.

Layers are the network's top-level children, in registration order (execution order for
torchvision classifiers), that have parameters or are pooling layers, excluding the
classifier (the last child with parameters, whose output is the logits). For ResNets:
``conv1``, ``bn1``, ``maxpool``, ``layer1`` … ``layer4``, ``avgpool`` (penultimate),
``logits``. The penultimate layer is the last of these before the classifier: the
pooled features for ResNets, VGG and EfficientNet; for models that pool inside their
forward (MobileNetV2, ViT) it is the last feature map (ViT: all tokens).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ..errors import UnknownNameError, WorkbenchError
from .base import FAMILIES, MODELS, TORCHVISION_PREFIX, Built, ModelFamily

#: Options the workbench fixes itself.
_RESERVED = ("weights", "num_classes", "progress")

#: Workbench defaults for a few models (see the module docstring); overridable.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


@functools.lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    # torchvision takes seconds to import; only image decoding and its models need it
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models (not detection, segmentation, …)."""
    return list(_names())


def default_options(name: str) -> dict[str, Any]:
    _check_name(name)
    return dict(_DEFAULTS.get(name, {}))


def _check_name(name: str) -> None:
    if name not in _names():
        raise UnknownNameError("model", TORCHVISION_PREFIX + name,
                               [*MODELS.names(), TORCHVISION_PREFIX + "<name>"])


def _construct(name: str, options: dict[str, Any], **fixed: Any) -> nn.Module:
    # torchvision takes seconds to import; only image decoding and its models need it
    import torchvision

    bad = sorted(set(options) & set(_RESERVED))
    if bad:
        raise WorkbenchError(f"{TORCHVISION_PREFIX}{name}: {', '.join(map(repr, bad))} "
                             f"cannot be set (the workbench sets {', '.join(_RESERVED)})")
    builder = torchvision.models.get_model_builder(name)
    kwargs = {**_DEFAULTS.get(name, {}), **options}
    try:
        return builder(weights=None, **fixed, **kwargs)
    except TypeError as exc:  # an unexpected keyword argument, typically
        raise WorkbenchError(
            f"invalid options {sorted(options)} for {TORCHVISION_PREFIX}{name}: {exc}; "
            "options are the keyword arguments of the torchvision model class"
        ) from exc


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise for an unknown name or options the torchvision builder rejects.

    Builds the model on the meta device: no memory, no initialisation cost worth noting.
    """
    _check_name(name)
    if not options:
        return
    try:
        with torch.device("meta"):
            _construct(name, options)
    except WorkbenchError:
        raise
    except ValueError as exc:  # torchvision's own argument checks
        raise WorkbenchError(f"invalid options for {TORCHVISION_PREFIX}{name}: {exc}") from exc
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: the real build will tell
        pass


def build(name: str, *, num_classes: int, in_shape: tuple[int, int, int],
          options: dict[str, Any]) -> tuple[Built, dict[str, Any]]:
    """Build ``torchvision:<name>``; returns the :class:`Built` and the resolved options."""
    _check_name(name)
    if in_shape[0] not in (1, 3):
        raise WorkbenchError(f"{TORCHVISION_PREFIX}{name} takes 3-channel (or 1-channel, repeated) "
                             f"images, got in_shape {in_shape}")
    net = _construct(name, options, num_classes=num_classes)
    for m in net.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    children = list(net.named_children())
    with_params = [n for n, m in children if any(True for _ in m.parameters())]
    if not with_params:
        raise WorkbenchError(f"{TORCHVISION_PREFIX}{name}: no classifier found among its children")
    classifier = with_params[-1]
    layers: dict[str, str] = {}
    for n, m in children:
        if n == classifier:
            break
        if n in with_params or "pool" in type(m).__name__.lower():
            layers[n] = n
    if not layers:
        raise WorkbenchError(f"{TORCHVISION_PREFIX}{name}: no feature layers before the classifier {classifier!r}")
    resolved = {**_DEFAULTS.get(name, {}), **options}
    return Built(net, layers, penultimate=list(layers)[-1], inplace_safe=False), resolved


# every torchvision classifier, as "torchvision:<name>"
FAMILIES.register(TORCHVISION_PREFIX)(ModelFamily(
    build=build, check_options=check_options, default_options=default_options, names=torchvision_names))
