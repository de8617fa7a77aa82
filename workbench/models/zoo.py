"""RobustBench zoo entries, built with the ``robustbench`` package's own architectures.

Optional extra (``pip install 'robustness-workbench[zoo]'``). Weights are read from a local model
folder in RobustBench's layout, ``<model_dir>/<dataset>/<threat_model>/<name>.pt``;
nothing is downloaded unless the source says ``download: true``, and a missing file
names the path it expects. The file is read with ``weights_only=True`` and its state
dict fitted as :func:`robustbench.utils.load_model` does (prefixes ``module.`` and
``model.`` removed where they prefix every key), but through the workbench's own checks.
Zoo models take inputs in [0, 1] and normalise inside where they need to, so the wrapper
adds no normalisation.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, UnknownNameError, WorkbenchError, install_hint
from .checkpoint import fit_state_dict, load_into, read_weights

#: robustbench entries whose file holds the weights under an entry of its own
_ENTRY = {"Kireev2021Effectiveness": "last", "Andriushchenko2020Understanding": "last"}


def _autoattack_alias() -> None:
    """robustbench 1.1.1 on PyPI depends on ``pyautoattack`` (AutoAttack repackaged, module
    ``pyautoattack``) but its package ``__init__`` imports ``autoattack`` (the name of the
    GitHub original): without this alias ``import robustbench`` fails. Registered only
    when no ``autoattack`` module exists; nothing else is touched."""
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    if importlib.util.find_spec("pyautoattack") is None:
        return
    # optional extra (pyautoattack): imported when used, with an install hint when missing
    import pyautoattack
    # optional extra (pyautoattack): imported when used, with an install hint when missing
    import pyautoattack.state

    sys.modules["autoattack"] = pyautoattack
    sys.modules["autoattack.state"] = pyautoattack.state


def _rb():
    _autoattack_alias()
    try:
        # optional extra (robustbench): imported when used, with an install hint when missing
        from robustbench.model_zoo import model_dicts
        # optional extra (robustbench): imported when used, with an install hint when missing
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as e:
        raise WorkbenchError(f"robustbench sources need the robustbench package: {install_hint('zoo')} ({e})") from None
    return model_dicts, BenchmarkDataset, ThreatModel


def entries(dataset: str, threat_model: str) -> dict:
    model_dicts, BenchmarkDataset, ThreatModel = _rb()
    try:
        ds, tm = BenchmarkDataset(dataset), ThreatModel(threat_model)
    except ValueError:
        raise WorkbenchError(
            f"unknown robustbench data set / threat model {dataset!r} / {threat_model!r}; data sets: "
            f"{', '.join(d.value for d in BenchmarkDataset)}; threat models: {', '.join(t.value for t in ThreatModel)}"
        ) from None
    if tm not in model_dicts[ds]:
        raise WorkbenchError(f"robustbench has no {threat_model!r} models for {dataset!r}")
    return model_dicts[ds][tm]


def check(name: str, dataset: str, threat_model: str) -> None:
    zoo = entries(dataset, threat_model)
    if name not in zoo:
        raise UnknownNameError(f"robustbench {dataset}/{threat_model} model", name, zoo)


def path_of(name: str, dataset: str, threat_model: str, model_dir: Path) -> Path:
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def build(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> nn.Module:
    """The entry's network with the architecture's initial weights (no file read)."""
    check(name, dataset, threat_model)
    entry = entries(dataset, threat_model)[name]
    if isinstance(entry.get("gdrive_id"), list):
        raise WorkbenchError(f"robustbench model {name} is an ensemble of several files, which is not supported")
    return entry["model"]()


def load(name: str, *, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: Path,
         download: bool = False) -> tuple[nn.Module, Path]:
    """(network with the zoo weights, the file they came from)."""
    net = build(name, dataset, threat_model)
    path = path_of(name, dataset, threat_model, model_dir)
    if not path.is_file():
        if not download:
            raise CheckpointError(
                f"robustbench model {name} ({dataset}, {threat_model}) is not in the local zoo; put its file there or set "
                "download: true (needs internet)", file=str(path))
        _download(name, dataset, threat_model, path)
    w = read_weights(path)
    fitted = fit_state_dict(w.obj, net, str(path), key=_ENTRY.get(name))
    load_into(net, fitted)
    return net.eval(), path


def _download(name: str, dataset: str, threat_model: str, path: Path) -> None:
    """Only on request: robustbench's own downloader (Google Drive or its mirror)."""
    # optional extra (robustbench): imported when used, with an install hint when missing
    from robustbench.utils import download_gdrive

    gdrive_id = entries(dataset, threat_model)[name].get("gdrive_id")
    if not gdrive_id:
        raise CheckpointError(f"robustbench lists no download for {name}", file=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_gdrive(gdrive_id, path)
    except Exception as e:  # noqa: BLE001 - network failures of any kind
        raise CheckpointError(f"download of robustbench model {name} failed ({str(e).strip()[:120]})",
                              file=str(path)) from None
