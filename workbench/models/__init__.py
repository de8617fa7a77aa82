"""Models: the registry, the [0, 1]-input wrapper, layer listing and feature capture.

>>> model = create_model("small_cnn", num_classes=10, in_shape=(1, 8, 8))
>>> model.layer_names()
['conv1', 'conv2', 'conv3', 'fc1', 'logits']
>>> with capture(model, "all") as cap:
...     logits = model(x)            # cap.feats["conv2"]: (N, D), differentiable

Registered: ``mlp``, ``small_cnn``, ``preact_resnet18``, ``preact_resnet34``,
``resnet18``, ``wide_resnet``; plus ``"torchvision:<name>"`` for any torchvision
classification model and ``"timm:<name>"`` for any timm model (optional extra).

Models from anywhere (docs/models.md)::

    model = load({"robustbench": "Wong2020Fast", "model_dir": "~/zoo"})   # ready, inputs in [0, 1]
    model = wrap(my_net, in_shape=(3, 32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
"""

from . import mlp, preact_resnet, resnet, small_cnn, timm_models, tv, wide_resnet  # noqa: F401  (register)
from .base import (
    MODELS,
    ArchitectureConfig,
    TORCHVISION_PREFIX,
    Built,
    WorkbenchModel,
    check_model_options,
    create_model,
    model_names,
    model_options,
)
from .capture import Capture, capture, extract_features, resolve_layers
from .sources import LoadedModel, SourceConfig, load, load_source, wrap

__all__ = [
    "MODELS",
    "ArchitectureConfig",
    "TORCHVISION_PREFIX",
    "Built",
    "Capture",
    "LoadedModel",
    "SourceConfig",
    "WorkbenchModel",
    "capture",
    "check_model_options",
    "create_model",
    "extract_features",
    "load",
    "load_source",
    "model_names",
    "model_options",
    "resolve_layers",
    "wrap",
]
