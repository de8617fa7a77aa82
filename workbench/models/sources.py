"""Model sources: where a model that is loaded, not trained, comes from; parsed once.

A source is a string or a mapping (docs/models.md has an example of each)::

    small_cnn | torchvision:resnet50 | timm:resnet18       # an architecture, untrained
    {arch: torchvision:resnet50, pretrained: true}          # torchvision's weights, from its cache folder
    {arch: preact_resnet18, checkpoint: runs/model.pt}      # any buildable architecture + a weight file
    {robustbench: Wong2020Fast, dataset: cifar10, threat_model: Linf, model_dir: ~/zoo}
    {python: "mypkg.nets:build", options: {width: 2}, checkpoint: w.safetensors}

:func:`load_source` builds the network, reads the weights (``weights_only=True`` or
safetensors: nothing in a file runs), fits them (:mod:`.checkpoint`), finds the probe
layers (:mod:`.layers`) and returns a :class:`LoadedModel`: a
:class:`~workbench.models.WorkbenchModel` taking inputs in [0, 1] plus its provenance
(source, file, sha256) and a key that changes whenever the weights or the declaration do.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.hub import get_dir

from ..errors import CheckpointError, WorkbenchError
from .base import Built, TIMM_PREFIX, TORCHVISION_PREFIX, WorkbenchModel, _build, check_model_options
from .checkpoint import fit_state_dict, load_into, read_weights, sha256_file
from .layers import auto_layers, named_layers
from ..codehash import user_code_hash
from .timm_models import _timm
from . import zoo
from ..config import content_hash


def expand(path: str) -> Path:
    return Path(os.path.expandvars(path)).expanduser()


class SourceConfig(BaseModel):
    """Where a loaded model comes from (exactly one of ``arch``, ``robustbench``, ``python``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str | None = Field(None, description="a buildable architecture: a built-in name, torchvision:NAME or timm:NAME")
    robustbench: str | None = Field(None, description="a RobustBench zoo entry, e.g. Wong2020Fast")
    python: str | None = Field(None, description="'package.module:factory' returning an nn.Module (user code)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder or factory")
    checkpoint: str | None = Field(None, description="weight file: .pt, .pth (weights_only) or .safetensors")
    state_dict_key: str | None = Field(None, description="entry of the file holding the weights (default: found)")
    pretrained: bool = Field(False, description="torchvision:NAME / timm:NAME: default weights from torch's / the "
                             "Hugging Face hub's cache folder (never downloaded)")
    dataset: str = Field("cifar10", description="robustbench: data set (cifar10, cifar100, imagenet)")
    threat_model: str = Field("Linf", description="robustbench: Linf, L2 or corruptions")
    model_dir: str = Field("models", description="robustbench: local zoo folder, <dir>/<dataset>/<threat>/<name>.pt")
    download: bool = Field(False, description="robustbench: fetch a missing file (needs internet); off: it must be there")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return parse_source_string(v)
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> SourceConfig:
        kinds = [k for k in ("arch", "robustbench", "python") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("a source names exactly one of arch (with checkpoint or pretrained), robustbench or python"
                             + (f"; got {', '.join(kinds)}" if kinds else ""))
        kind = kinds[0]
        if kind == "arch":
            try:
                check_model_options(self.arch, dict(self.options))
            except WorkbenchError as e:
                raise ValueError(e.message) from None
            if self.pretrained and not self.arch.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)):
                raise ValueError("pretrained: only torchvision:NAME and timm:NAME have weight caches the workbench "
                                 "reads; for others give a checkpoint file")
            if self.pretrained and self.checkpoint:
                raise ValueError("give pretrained or checkpoint, not both")
        if kind == "python" and (":" not in self.python or not all(self.python.split(":", 1))):
            raise ValueError(f"python source {self.python!r} is not 'package.module:factory'")
        if kind == "robustbench":
            if self.checkpoint or self.pretrained or self.options:
                raise ValueError("a robustbench source takes its weights from model_dir (no checkpoint/pretrained/options)")
        elif self.download:
            raise ValueError("download applies to robustbench sources only")
        if self.state_dict_key and not self.checkpoint:
            raise ValueError("state_dict_key needs a checkpoint")
        return self

    @property
    def kind(self) -> str:
        return "robustbench" if self.robustbench else "python" if self.python else "arch"

    def describe(self) -> str:
        """One short line, e.g. ``robustbench:cifar10/Linf/Wong2020Fast``."""
        if self.robustbench:
            return f"robustbench:{self.dataset}/{self.threat_model}/{self.robustbench}"
        if self.python:
            return f"python:{self.python}"
        return f"{self.arch}{' (pretrained)' if self.pretrained else ''}"


def parse_source_string(text: str) -> dict[str, Any]:
    """``robustbench:NAME``, ``python:mod:fn`` or an architecture name."""
    text = text.strip()
    if text.startswith("robustbench:"):
        return {"robustbench": text[len("robustbench:"):]}
    if text.startswith("python:"):
        return {"python": text[len("python:"):]}
    return {"arch": text}


@dataclass
class LoadedModel:
    """A model loaded from its source, with provenance."""

    id: str
    model: WorkbenchModel
    source: str
    file: str
    sha256: str
    key: str
    layout: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _module_file(spec: str, mod_name: str) -> str | None:
    """Where a module's code is, without running it (a parent package's ``__init__`` runs);
    None for a module that is not there."""
    with _user_code(spec, None, f"finding {mod_name!r}"):
        try:
            found = importlib.util.find_spec(mod_name)
        except (ImportError, ValueError):
            found = None
    if found is None:
        raise WorkbenchError(f"python source {spec!r}: cannot import {mod_name!r} (no module named {mod_name!r}); "
                             "is it on PYTHONPATH?")
    return found.origin if found.origin not in (None, "built-in", "frozen") else None


@contextlib.contextmanager
def _user_code(spec: str, file: str | None, doing: str):
    """Run user code (importing or calling a ``python:`` source): whatever it raises, a
    ``SystemExit`` included (``sys.exit()``, argparse refusing the workbench's own
    arguments), becomes one :class:`WorkbenchError` naming the module's file and the line.
    ``sys.argv`` is just the module's file meanwhile, so a module that parses it at import
    sees no arguments rather than ``workbench run ...``; what it writes to stderr is held
    back and its last line quoted if it fails (shown as written if it does not)."""
    argv, err = sys.argv, io.StringIO()
    sys.argv = [file or spec]
    try:
        with contextlib.redirect_stderr(err):
            yield
    except WorkbenchError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - user code: anything it raises is reported, not a traceback
        said = [ln.strip() for ln in err.getvalue().splitlines() if ln.strip()]
        if isinstance(e, SystemExit):
            what = f"it called sys.exit({e.code!r})" + (f": {said[-1]}" if said else "")
        else:
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            what = f"{type(e).__name__}" + (f": {text[:200]}" if text else "")
        line = getattr(e, "lineno", None) if isinstance(e, SyntaxError) else None
        if line is None and file is not None:
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == file]
            line = frames[-1].lineno if frames else None
        where = f" (line {line})" if line else ""
        raise WorkbenchError(f"python source {spec!r}: {doing} failed{where}: {what}", file=file) from None
    else:
        if err.getvalue():
            sys.stderr.write(err.getvalue())
    finally:
        sys.argv = argv


def _python_factory(spec: str) -> tuple[Any, str]:
    """The factory and the hash of its code: its module and the user's modules it imports,
    transitively, as syntax (:func:`~workbench.codehash.user_code_hash`), so an edit that
    changes behaviour changes the model key and a comment edit does not."""
    mod_name, fn_name = spec.split(":", 1)
    file = _module_file(spec, mod_name)
    with _user_code(spec, file, "importing it"):
        mod = importlib.import_module(mod_name)
    file = file or getattr(mod, "__file__", None)
    fn = mod
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise WorkbenchError(f"python source {spec!r}: module {mod_name!r} has no {fn_name!r}", file=file)
    if not callable(fn):
        raise WorkbenchError(f"python source {spec!r}: {fn_name!r} is not callable", file=file)
    try:
        digest = user_code_hash(mod_name)
    except (KeyError, SyntaxError):  # no source file (a compiled module): its name stands for it
        digest = hashlib.sha256(spec.encode()).hexdigest()
    return fn, digest


def _torchvision_cache_file(name: str) -> Path:
    # torchvision takes seconds to import; only image decoding and its models need it
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    return Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _timm_cache_file(name: str) -> Path:
    """timm's default weights in the Hugging Face hub cache (``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), as timm itself stores them."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise WorkbenchError(f"timm:{name} has no hub weights to look for; give its weight file as checkpoint")
    if os.environ.get("HF_HUB_CACHE"):
        cache = Path(os.environ["HF_HUB_CACHE"])
    elif os.environ.get("HF_HOME"):
        cache = Path(os.environ["HF_HOME"]) / "hub"
    else:
        cache = Path("~/.cache/huggingface/hub").expanduser()
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hits = sorted((repo / "snapshots").glob(f"*/{fname}"))
        if hits:
            return hits[-1]
    return repo / "snapshots" / "<revision>" / "model.safetensors"


def _build_net(src: SourceConfig, num_classes: int, in_shape: tuple[int, int, int]) -> tuple[nn.Module, dict[str, Any]]:
    """(network, extra provenance) for arch and python sources, weights not yet loaded."""
    if src.python:
        fn, digest = _python_factory(src.python)
        module = inspect.getmodule(fn)
        file = getattr(module, "__file__", None) if module is not None else None
        with _user_code(src.python, file, f"calling it with options {dict(src.options)}"):
            net = fn(**dict(src.options))
        if isinstance(net, WorkbenchModel):
            return net, {"code_sha256": digest}
        if isinstance(net, Built):
            return net, {"code_sha256": digest}
        if not isinstance(net, nn.Module):
            raise WorkbenchError(f"python source {src.python!r} returned {type(net).__name__}, not an nn.Module")
        return net, {"code_sha256": digest}
    built, resolved = _build(src.arch, num_classes, in_shape, dict(src.options))
    return built, {"options": resolved}


def _checkpoint_file(src: SourceConfig) -> Path | None:
    if src.checkpoint:
        return expand(src.checkpoint)
    if src.pretrained:
        if src.arch.startswith(TIMM_PREFIX):
            path, cache = _timm_cache_file(src.arch[len(TIMM_PREFIX):]), "the Hugging Face hub cache"
        else:
            path, cache = _torchvision_cache_file(src.arch[len(TORCHVISION_PREFIX):]), "torch's cache"
        if not path.is_file():
            raise CheckpointError(
                f"pretrained weights of {src.arch} are not in {cache}; nothing is downloaded: put the file there "
                "(or give its path as checkpoint)", file=str(path))
        return path
    return None


def load_source(
    src: SourceConfig | str | Mapping[str, Any],
    *,
    num_classes: int,
    in_shape: Sequence[int],
    id: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layers: Sequence[str] | Mapping[str, str] | None = None,
    penultimate: str | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Build and load a model from its source; see the module docstring."""
    if not isinstance(src, SourceConfig):
        try:
            src = SourceConfig.model_validate(src)
        except Exception as e:  # noqa: BLE001 - pydantic's ValidationError: its first message is the user's
            errs = getattr(e, "errors", None)
            msg = errs()[0]["msg"].removeprefix("Value error, ") if callable(errs) else str(e)
            raise WorkbenchError(f"invalid model source {src!r}: {msg}") from None
    in_shape = tuple(int(s) for s in in_shape)
    what = id or src.describe()
    extra: dict[str, Any] = {}
    file_mean = file_std = None
    layout = ""
    if src.robustbench:
        net, path = zoo.load(src.robustbench, dataset=src.dataset, threat_model=src.threat_model,
                             model_dir=expand(src.model_dir), download=src.download)
        digest = sha256_file(path)
        layout = "robustbench zoo"
        repeat = None
    else:
        net, extra = _build_net(src, num_classes, in_shape)
        path = _checkpoint_file(src)
        digest = ""
        target = net.net if isinstance(net, WorkbenchModel) else net.net if isinstance(net, Built) else net
        if path is not None:
            w = read_weights(path)
            fitted = fit_state_dict(w.obj, target, str(path), key=src.state_dict_key)
            load_into(target, fitted)
            digest, layout = w.sha256, fitted.layout
            file_mean, file_std = fitted.mean, fitted.std
        repeat = 3 if (src.arch or "").startswith((TORCHVISION_PREFIX, TIMM_PREFIX)) and in_shape[0] == 1 else None
    if file_mean is not None and (mean is not None or std is not None):
        if list(map(float, mean or [])) != file_mean or list(map(float, std or [])) != file_std:
            raise WorkbenchError(
                f"{what}: the checkpoint carries its own normalisation (mean {_short(file_mean)}, std {_short(file_std)}); "
                "leave mean/std out of the study so it is applied once")
    mean = file_mean if file_mean is not None else mean
    std = file_std if file_std is not None else std

    if isinstance(net, WorkbenchModel):
        if mean is not None or std is not None or layers is not None:
            raise WorkbenchError(f"{what}: the factory returned a WorkbenchModel, which sets its own mean/std and layers")
        model = net
    else:
        inner = net.net if isinstance(net, Built) else net
        if layers is not None:
            lay, pen = named_layers(inner, layers, penultimate, what=what)
        elif isinstance(net, Built):
            lay, pen = net.layers, penultimate or net.penultimate
        else:
            lay, pen = auto_layers(inner, in_shape, repeat=repeat)
            pen = penultimate or pen
        for m in inner.modules():
            if getattr(m, "inplace", False) is True:
                m.inplace = False  # in-place activations would overwrite captured features
        model = WorkbenchModel(inner, lay, pen, name=src.describe(), options=dict(src.options), in_shape=in_shape,
                               num_classes=num_classes, mean=mean, std=std, repeat_channels=repeat,
                               inplace_safe=False)
    model.eval()
    _check_output(model, in_shape, num_classes, what, path)
    model.to(device)
    key = content_hash({
        "loaded": src.model_dump(mode="json", exclude={"download", "model_dir"} if src.robustbench else {"download"}),
        "weights_sha256": digest, "mean": list(map(float, mean)) if mean is not None else None,
        "std": list(map(float, std)) if std is not None else None,
        "layers": model.layer_paths(), "penultimate": model.penultimate, "in_shape": in_shape,
        "num_classes": num_classes, **extra,
    })[:20]
    return LoadedModel(id=id or src.describe(), model=model, source=src.describe(), file=str(path or ""),
                       sha256=digest, key=key, layout=layout, meta=extra)


def _short(v: Sequence[float]) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"


def _check_output(model: WorkbenchModel, in_shape: tuple[int, ...], num_classes: int, what: str, path) -> None:
    with torch.no_grad():
        dev = next(iter(model.parameters()), model.mean).device
        out = model(torch.zeros(1, *in_shape, device=dev))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise WorkbenchError(f"{what}: the network returns {shape} for one input, but the data has {num_classes} "
                             "classes (logits of shape (1, {0}) expected)".format(num_classes),
                             file=str(path) if path else None)


def wrap(net: nn.Module, *, in_shape: Sequence[int], num_classes: int | None = None,
         layers: Sequence[str] | Mapping[str, str] | None = None, penultimate: str | None = None,
         mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
         name: str = "custom") -> WorkbenchModel:
    """Wrap any classifier ``nn.Module`` (taking normalised inputs) for the attacks and probes.

    The result takes inputs in [0, 1] and normalises them with ``mean``/``std``; layers are
    found automatically unless given (module paths, or name -> module path).
    """
    in_shape = tuple(int(s) for s in in_shape)
    if layers is not None:
        lay, pen = named_layers(net, layers, penultimate, what=name)
    else:
        lay, pen = auto_layers(net, in_shape)
        pen = penultimate or pen
    if num_classes is None:
        with torch.no_grad():
            dev = next(iter(net.parameters()), torch.empty(0)).device
            modes = [(m, m.training) for m in net.modules()]
            net.eval()
            num_classes = int(net(torch.zeros(1, *in_shape, device=dev)).shape[1])
            for m, mode in modes:
                m.training = mode
    return WorkbenchModel(net, lay, pen, name=name, in_shape=in_shape, num_classes=num_classes, mean=mean, std=std,
                          inplace_safe=False)


def load(source: SourceConfig | str | Mapping[str, Any], *, num_classes: int = 10, in_shape: Sequence[int] = (3, 32, 32),
         **kw: Any) -> WorkbenchModel:
    """Notebook API: a ready model (eval mode, inputs in [0, 1]) from any source.

    >>> m = load({"robustbench": "Wong2020Fast", "model_dir": "~/zoo"})
    >>> m = load({"arch": "torchvision:resnet50", "pretrained": True}, num_classes=1000, in_shape=(3, 224, 224),
    ...          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    """
    return load_source(source, num_classes=num_classes, in_shape=in_shape, **kw).model


def check_study_sources(study: Any) -> None:
    """Import the module of every ``python:`` source of the study (what ``workbench validate``
    checks): a module that is missing, or fails as it is imported, is one error naming
    ``models[i] (<id>)``. The factories are not called (that builds the networks)."""
    for i, decl in enumerate(study.loaded):
        src = decl.source if isinstance(decl.source, SourceConfig) else SourceConfig.model_validate(decl.source)
        if not src.python:
            continue
        try:
            _python_factory(src.python)
        except WorkbenchError as e:
            if e.field is None:
                e.field = f"models[{i}] ({decl.id})"
                e.args = (e.one_line(),)
            raise


def load_study_models(study: Any, data: Any, device: torch.device | str = "cpu", *, progress: Any = None) -> dict[str, LoadedModel]:
    """Every ``models:`` entry of a study, loaded for its data (classes and input shape)."""
    log = logging.getLogger("workbench")
    out: dict[str, LoadedModel] = {}
    for i, decl in enumerate(study.loaded):
        try:
            lm = load_source(decl.source, num_classes=data.num_classes, in_shape=data.in_shape, id=decl.id,
                             mean=decl.mean, std=decl.std, layers=decl.layers, penultimate=decl.penultimate,
                             device=device)
        except WorkbenchError as e:
            if e.field is None:
                e.field = f"models[{i}] ({decl.id})"
                e.args = (e.one_line(),)
            raise
        log.info("loaded %s from %s%s (%s)", decl.id, lm.source, f", {lm.file}" if lm.file else "", lm.layout or "no weights")
        out[decl.id] = lm
    return out
