"""One place that knows every registry, for ``workbench list`` and the docs."""

from __future__ import annotations

import fnmatch
import importlib.util
import warnings

from . import components  # noqa: F401  (imports, and so registers, every component)
from .attacks import ATTACKS, LOSSES
from .data import DATASETS
from .errors import install_hint
from .executors import EXECUTORS
from .models import MODELS, model_names
from .models.base import TIMM_PREFIX
from .probes import PROBES
from .registry import Registry
from .stages import STAGES
from .training import RECIPES

#: ``workbench list <kind>`` -> its registry (``models`` adds the torchvision and timm families)
REGISTRIES: dict[str, Registry] = {"datasets": DATASETS, "recipes": RECIPES, "attacks": ATTACKS, "losses": LOSSES,
                                   "probes": PROBES, "stages": STAGES, "executors": EXECUTORS, "models": MODELS}


def listing(kind: str, pattern: str = "*") -> list[tuple[str, str]]:
    """(name, one-line description) of every entry of ``kind`` matching ``pattern``."""
    if kind not in REGISTRIES:
        raise ValueError(kind)
    reg = REGISTRIES[kind]
    out = [(n, reg.describe(n)) for n in reg.names(pattern)]
    if kind == "models":
        tv = [n for n in model_names() if n.startswith("torchvision:") and fnmatch.fnmatch(n, pattern)]
        if tv:
            out.append((f"torchvision:<name>", f"any of {len(tv)} torchvision classifiers, e.g. {', '.join(tv[:4])}"))
        if fnmatch.fnmatch("timm:", pattern.split("*")[0] + "*") or pattern.startswith("timm:"):
            out.extend(_timm_listing(pattern))
    return out


def _timm_listing(pattern: str) -> list[tuple[str, str]]:
    """The ``timm:<name>`` entry: how many timm models match, or how to install timm."""
    if importlib.util.find_spec("timm") is None:
        return [("timm:<name>", f"any timm model; timm is not installed: {install_hint('models')}")]
    with warnings.catch_warnings():  # timm's import warns about torch.jit deprecations
        warnings.simplefilter("ignore")
        # optional extra (timm): imported when a timm model is used
        import timm

    sub = pattern[len(TIMM_PREFIX):] if pattern.startswith(TIMM_PREFIX) else "*"
    names = timm.list_models(sub or "*")
    if not names:
        return []
    return [("timm:<name>", f"any of {len(names)} timm models{' matching ' + repr(sub) if sub != '*' else ''}, "
             f"e.g. {', '.join(TIMM_PREFIX + n for n in names[:4])}")]
