"""The model wrapper, the model registry and the factory.

Every model the workbench touches is a :class:`WorkbenchModel`: it takes images in [0, 1],
normalizes them itself (so ε is always in pixel units and a zero baseline is a black
image), and names the layers that probes may hook, ordered input → output and always
ending with ``"logits"``.

An architecture is a plain builder function registered in :data:`MODELS` (as in timm)::

    @MODELS.register("small_cnn")
    def small_cnn(num_classes: int, in_shape: tuple[int, int, int], width: int = 32) -> Built:
        ...

Its keyword arguments after ``num_classes`` and ``in_shape`` are the model's options
(:func:`model_options` reads them from the signature), and it returns a :class:`Built`:
the network plus the probe layers as dotted module paths. Any torchvision classification
model is available as ``"torchvision:<name>"`` (see :mod:`workbench.models.tv`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..config import Strict, check_label
from ..errors import UnknownNameError, WorkbenchError
from ..registry import Registry

#: Prefix that selects a torchvision classification model, e.g. ``"torchvision:resnet18"``.
TORCHVISION_PREFIX = "torchvision:"

#: Prefix that selects a timm model, e.g. ``"timm:resnet18"`` (optional extra).
TIMM_PREFIX = "timm:"

#: Names with a meaning of their own in layer specs; no model layer may use them.
RESERVED_LAYER_NAMES = ("all", "penultimate", "logits")


@dataclass(frozen=True)
class ModelFamily:
    """Models named ``<prefix><name>`` that another library builds (``torchvision:``,
    ``timm:``), registered in :data:`FAMILIES` by their own module: ``build(name, *,
    num_classes, in_shape, options) -> (Built, options)``, ``check_options(name, options)``,
    ``default_options(name)`` and, for ``workbench list models``, ``names()``."""

    build: Callable[..., tuple[Built, dict[str, Any]]]
    check_options: Callable[[str, dict[str, Any]], None]
    default_options: Callable[[str], dict[str, Any]] = lambda name: {}
    names: Callable[[], list[str]] = lambda: []


#: model families by prefix (tv.py: ``torchvision:``; timm_models.py: ``timm:``)
FAMILIES: Registry[ModelFamily] = Registry("model family")


def _family(name: str) -> tuple[ModelFamily, str] | None:
    """(family, name within it) of a prefixed model name, else None."""
    for prefix in FAMILIES.in_order():
        if name.startswith(prefix):
            return FAMILIES.get(prefix), name[len(prefix):]
    return None


@dataclass
class Built:
    """What a builder returns.

    ``layers`` maps probe-layer names (ordered input → output) to dotted module paths in
    ``net``; a layer's features are that module's output. ``penultimate`` is the layer
    whose output feeds the final classifier. ``inplace_safe`` is False when the network
    may modify a hooked output in place after the hook ran (torchvision code calls
    ``F.relu(x, inplace=True)`` in places), so :func:`~workbench.models.capture` must copy.
    """

    net: nn.Module
    layers: dict[str, str]
    penultimate: str
    inplace_safe: bool = True


Builder = Callable[..., Built]

#: The model registry: name -> builder function returning :class:`Built`.
MODELS: Registry[Builder] = Registry("model")


def _stats_buffer(values: Sequence[float] | float | None, default: float, channels: int | None,
                  what: str) -> torch.Tensor:
    """Per-channel mean or std as a (1, C, 1, 1) float32 tensor (C = 1 broadcasts)."""
    if values is None:
        values = [default]
    elif isinstance(values, (int, float)):
        values = [float(values)]
    vals = [float(v) for v in values]
    if channels is not None and len(vals) not in (1, channels):
        raise WorkbenchError(f"{what} has {len(vals)} values but the input has {channels} channels")
    if what == "std" and any(v <= 0 for v in vals):
        raise WorkbenchError(f"std must be positive, got {vals}")
    return torch.tensor(vals, dtype=torch.float32).view(1, -1, 1, 1)


class WorkbenchModel(nn.Module):
    """A classifier on images in [0, 1] with normalization inside and named probe layers.

    ``forward(x)`` takes x of shape (N, C, H, W) in [0, 1] and returns the logits
    ``net((x - mean) / std)`` of shape (N, num_classes). ``mean`` and ``std`` are (1, C, 1,
    1) buffers (saved in the state dict); by default mean 0 and std 1, i.e. no
    normalization. ``repeat_channels`` repeats a 1-channel input to that many channels
    after normalization (torchvision models on grey-scale data).

    Normally built by :func:`create_model`; wrap a hand-built network directly in tests::

        WorkbenchModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), {"flat": "0"}, "flat")
    """

    def __init__(
        self,
        net: nn.Module,
        layers: dict[str, str],
        penultimate: str,
        *,
        name: str = "custom",
        options: dict[str, Any] | None = None,
        in_shape: tuple[int, int, int] | None = None,
        num_classes: int | None = None,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        repeat_channels: int | None = None,
        inplace_safe: bool = True,
    ):
        super().__init__()
        self.net = net
        self.name = name
        self.options = dict(options or {})
        self.in_shape = tuple(in_shape) if in_shape is not None else None
        self.num_classes = num_classes
        self.repeat_channels = repeat_channels
        self.inplace_safe = inplace_safe
        channels = self.in_shape[0] if self.in_shape is not None else None
        self.register_buffer("mean", _stats_buffer(mean, 0.0, channels, "mean"))
        self.register_buffer("std", _stats_buffer(std, 1.0, channels, "std"))

        for layer, path in layers.items():
            if layer in RESERVED_LAYER_NAMES:
                raise ValueError(f"{name}: layer name {layer!r} is reserved")
            try:
                net.get_submodule(path)
            except AttributeError:
                raise ValueError(f"{name}: layer {layer!r} points to missing module {path!r}") from None
        if penultimate not in layers:
            raise ValueError(f"{name}: penultimate layer {penultimate!r} is not among {list(layers)}")
        self._layers = dict(layers)  # plain dict: no state, survives deepcopy
        self.penultimate = penultimate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        if self.repeat_channels is not None and z.shape[1] == 1:
            z = z.repeat(1, self.repeat_channels, 1, 1)
        return self.net(z)

    def layer_names(self) -> list[str]:
        """Probe layers, ordered input → output; the last is always ``"logits"``."""
        return [*self._layers, "logits"]

    def layer_paths(self) -> dict[str, str]:
        """Layer name -> dotted module path in ``net`` (``"logits"`` excluded)."""
        return dict(self._layers)

    def layer_module(self, name: str) -> nn.Module:
        """The module whose output is the layer's features (the wrapper itself for logits)."""
        if name == "logits":
            return self
        if name not in self._layers:
            raise UnknownNameError("layer", name, self.layer_names())
        return self.net.get_submodule(self._layers[name])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, options={self.options}, layers={self.layer_names()}"


# --------------------------------------------------------------------------- factory


def _builder_params(builder: Builder) -> tuple[dict[str, Any], bool]:
    """(option -> default, accepts **kwargs) from a builder's signature."""
    options: dict[str, Any] = {}
    var_kw = False
    for i, (pname, p) in enumerate(inspect.signature(builder).parameters.items()):
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif i >= 2 and p.kind is not inspect.Parameter.VAR_POSITIONAL:
            # the first two are num_classes and in_shape, given by create_model
            options[pname] = None if p.default is inspect.Parameter.empty else p.default
    return options, var_kw


def model_names() -> list[str]:
    """Registered names, then each family's (``"torchvision:<name>"`` for every torchvision classifier)."""
    return MODELS.names() + [prefix + n for prefix in FAMILIES.in_order() for n in FAMILIES.get(prefix).names()]


def model_options(name: str) -> dict[str, Any]:
    """Option name -> default value for a model (torchvision: only workbench defaults)."""
    fam = _family(name)
    if fam is not None:
        return fam[0].default_options(fam[1])
    return _builder_params(MODELS.get(name))[0]


def check_model_options(
    name: str,
    options: dict[str, Any],
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, int, int] | None = None,
) -> None:
    """Validate a model's options before any work starts.

    Raises :class:`UnknownNameError` for an unknown model and :class:`WorkbenchError`
    naming each unknown option and listing the valid ones. Torchvision models take their
    class's keyword arguments, checked by building the model on the meta device. When
    ``num_classes`` and ``in_shape`` are given, the values are checked too (e.g. a
    wide_resnet depth that is not 6n + 4), by building the model on the meta device:
    no memory and next to no time.
    """
    fam = _family(name)
    if fam is not None:
        fam[0].check_options(fam[1], options)
    else:
        valid, var_kw = _builder_params(MODELS.get(name))
        unknown = sorted(set(options) - set(valid))
        if unknown and not var_kw:
            raise WorkbenchError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"for model {name!r}; valid options: {', '.join(valid) or '(none)'}"
            )
    if num_classes is not None and in_shape is not None:
        with torch.device("meta"):
            _build(name, num_classes, tuple(in_shape), options)


def _build(name: str, num_classes: int, in_shape: tuple[int, int, int],
           options: dict[str, Any]) -> tuple[Built, dict[str, Any]]:
    """(Built, resolved options); a builder's TypeError/ValueError is the user's options."""
    fam = _family(name)
    if fam is not None:
        return fam[0].build(fam[1], num_classes=num_classes, in_shape=in_shape, options=options)
    builder = MODELS.get(name)
    try:
        built = builder(num_classes, in_shape, **options)
    except (TypeError, ValueError) as exc:
        raise WorkbenchError(f"invalid options {options} for model {name!r}: {exc}") from exc
    return built, {**_builder_params(builder)[0], **options}


def create_model(
    name: str,
    *,
    num_classes: int,
    in_shape: tuple[int, int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> WorkbenchModel:
    """Build a registered (or ``"torchvision:<name>"``) model on the default device (CPU).

    ``in_shape`` is (C, H, W) of the [0, 1] input; ``mean``/``std`` are per-channel
    normalization constants in the same units (defaults 0 and 1). Weights are initialised
    from torch's global RNG, so ``torch.manual_seed(s)`` just before this call makes
    paired models start from identical weights.
    """
    in_shape = tuple(int(s) for s in in_shape)  # type: ignore[assignment]
    if len(in_shape) != 3:
        raise WorkbenchError(f"in_shape must be (C, H, W), got {in_shape}")
    check_model_options(name, options)
    built, resolved = _build(name, num_classes, in_shape, options)
    # torchvision networks expect RGB: grey input is repeated after normalization.
    repeat = 3 if name.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)) and in_shape[0] == 1 else None
    return WorkbenchModel(
        built.net, built.layers, built.penultimate, name=name, options=resolved,
        in_shape=in_shape, num_classes=num_classes, mean=mean, std=std,
        repeat_channels=repeat, inplace_safe=built.inplace_safe,
    )


# --------------------------------------------------------------------------- the study's architectures


class ArchitectureConfig(Strict):
    name: str = Field(description="model name (workbench list models), or torchvision:<name>")
    label: str | None = Field(None, description="name of this architecture in tables (default: name)")
    options: dict[str, Any] = Field(default_factory=dict, description="builder options, e.g. depth/width")

    @field_validator("label")
    @classmethod
    def _label(cls, v):
        return check_label(v)

    @model_validator(mode="after")
    def _known(self) -> ArchitectureConfig:
        try:
            check_model_options(self.name, dict(self.options))
        except WorkbenchError as e:
            raise ValueError(e.message) from None
        return self

    @property
    def id(self) -> str:
        return self.label or self.name.replace("torchvision:", "tv-").replace("timm:", "timm-")
