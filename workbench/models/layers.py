"""Probe layers of any network: found automatically, or named by the user.

:func:`auto_layers` proposes candidates and keeps those that run exactly once in a trial
forward pass and return a tensor, in execution order:

- timm models: the modules of their ``feature_info`` (the stage outputs timm itself
  exposes), then ``global_pool`` when it is a module (the pooled features);
- otherwise the top-level blocks: the network's children that hold parameters or pool
  (torchvision and RobustBench ResNets: ``conv1`` … ``layer1`` … ``layer4``, ``avgpool``),
  descending through single-child wrappers, without the classifier (the last child with
  parameters, whose output is the logits).

The penultimate layer is the last one kept. :func:`named_layers` checks a user's list
(module paths) or mapping (name -> module path) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import WorkbenchError
from .base import RESERVED_LAYER_NAMES, WorkbenchModel


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _candidates(net: nn.Module) -> list[str]:
    info = getattr(net, "feature_info", None)
    if info is not None:
        mods = [i["module"] for i in (info.info if hasattr(info, "info") else info) if i.get("module")]
        mods = [m for m in mods if _submodule(net, m) is not None]
        if mods:
            if isinstance(getattr(net, "global_pool", None), nn.Module):
                mods.append("global_pool")
            return list(dict.fromkeys(mods))
    prefix, node = "", net
    while True:
        kids = list(node.named_children())
        with_params = [(n, m) for n, m in kids if _has_params(m)]
        if len(with_params) == 1 and len(kids) <= 2 and list(with_params[0][1].children()):
            # a wrapper (e.g. Sequential(normalize, model)): look inside the one real child
            prefix, node = f"{prefix}{with_params[0][0]}.", with_params[0][1]
            continue
        break
    if not with_params:
        return []
    classifier = with_params[-1][0]
    out = []
    for n, m in kids:
        if n == classifier:
            break
        if _has_params(m) or "pool" in type(m).__name__.lower():
            out.append(prefix + n)
    return out


def _submodule(net: nn.Module, path: str) -> nn.Module | None:
    try:
        return net.get_submodule(path)
    except AttributeError:
        return None


def _trial(net: nn.Module, paths: Sequence[str], in_shape: tuple[int, int, int], repeat: int | None) -> list[str]:
    """The paths among ``paths`` that ran once with a tensor output, in execution order."""
    calls: dict[str, int] = {}
    order: list[str] = []
    ok: set[str] = set()

    def hook_for(path: str):
        def hook(_m, _i, out):
            calls[path] = calls.get(path, 0) + 1
            if path not in order:
                order.append(path)
            if isinstance(out, torch.Tensor):
                ok.add(path)
        return hook

    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    c = repeat or in_shape[0]
    x = torch.zeros(1, c, *in_shape[1:], device=device)
    handles = [net.get_submodule(p).register_forward_hook(hook_for(p)) for p in paths]
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    except Exception as e:  # noqa: BLE001 - a network that rejects the data's shape
        raise WorkbenchError(f"{type(net).__name__} does not run on inputs of shape {tuple(x.shape)}: "
                             f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}") from None
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return [p for p in order if calls[p] == 1 and p in ok]


def auto_layers(net: nn.Module, in_shape: tuple[int, int, int], *, repeat: int | None = None) -> tuple[dict[str, str], str]:
    """(layer name -> module path, penultimate) for any classifier network."""
    paths = _trial(net, _candidates(net), in_shape, repeat)
    if not paths:
        raise WorkbenchError(f"no probe layers found in {type(net).__name__}; name them with `layers:` in the study")
    layers = {(p if p not in RESERVED_LAYER_NAMES else f"{p}_"): p for p in paths}
    return layers, list(layers)[-1]


def named_layers(net: nn.Module, spec: Sequence[str] | Mapping[str, str], penultimate: str | None = None,
                 *, what: str = "model") -> tuple[dict[str, str], str]:
    """A user's layers: module paths, or name -> module path; checked against ``net``."""
    layers = dict(spec) if isinstance(spec, Mapping) else {p: p for p in spec}
    if not layers:
        raise WorkbenchError(f"{what}: layers is empty")
    for name, path in layers.items():
        if name in RESERVED_LAYER_NAMES:
            raise WorkbenchError(f"{what}: layer name {name!r} is reserved ({', '.join(RESERVED_LAYER_NAMES)})")
        if _submodule(net, path) is None:
            tops = ", ".join(n for n, _ in list(net.named_children())[:12])
            raise WorkbenchError(f"{what}: layer {name!r}: no module {path!r} in {type(net).__name__} "
                                 f"(top-level modules: {tops}; `workbench list layers` shows the automatic ones)")
    pen = penultimate or list(layers)[-1]
    if pen not in layers:
        raise WorkbenchError(f"{what}: penultimate {pen!r} is not among the layers {list(layers)}")
    return layers, pen


def as_probe_model(model: nn.Module, x: torch.Tensor):
    """``model`` itself when it is a :class:`~workbench.models.base.WorkbenchModel`, else a
    plain classifier module wrapped as :func:`workbench.models.wrap` does for inputs shaped like
    ``x`` (layers found automatically, no normalisation: the module receives ``x`` as it is).
    Probes call this, so a notebook can pass any ``nn.Module``. Here rather than beside
    ``wrap`` so that a probe's code hash does not take in every model source."""
    if isinstance(model, WorkbenchModel):
        return model
    if not isinstance(model, nn.Module):
        raise WorkbenchError(f"expected a torch nn.Module, got {type(model).__name__}")
    in_shape = tuple(int(s) for s in x.shape[1:])
    try:
        layers, penultimate = auto_layers(model, in_shape)
    except WorkbenchError as e:
        raise WorkbenchError(f"{e.message}; name the layers yourself: workbench.models.wrap(net, in_shape={in_shape}, "
                             "layers=['module.path', ...]) (docs/models.md)") from None
    with torch.no_grad():
        dev = next(iter(model.parameters()), torch.empty(0)).device
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        num_classes = int(model(torch.zeros(1, *in_shape, device=dev)).shape[1])
        for m, mode in modes:
            m.training = mode
    return WorkbenchModel(model, layers, penultimate, name=type(model).__name__, in_shape=in_shape,
                          num_classes=num_classes, inplace_safe=False)
