"""One place that knows every registry, for ``workbench list`` and the docs."""

from __future__ import annotations

import fnmatch
import importlib.util
import warnings


def listing(kind: str, pattern: str = "*") -> list[tuple[str, str]]:
    """(name, one-line description) of every entry of ``kind`` matching ``pattern``."""
    if kind == "datasets":
        from .data import DATASETS as reg
    elif kind == "recipes":
        from .training import RECIPES as reg
    elif kind == "attacks":
        from .attacks import ATTACKS as reg
    elif kind == "losses":
        from .attacks import LOSSES as reg
    elif kind == "probes":
        from .probes import PROBES as reg
    elif kind == "stages":
        from . import study as _study  # noqa: F401  (registers every stage)
        from .stages import STAGES as reg
    elif kind == "executors":
        from .executors import EXECUTORS as reg
    elif kind == "models":
        from .models import MODELS, model_names

        out = [(n, MODELS.describe(n)) for n in MODELS.names(pattern)]
        tv = [n for n in model_names() if n.startswith("torchvision:") and fnmatch.fnmatch(n, pattern)]
        if tv:
            out.append((f"torchvision:<name>", f"any of {len(tv)} torchvision classifiers, e.g. {', '.join(tv[:4])}"))
        if fnmatch.fnmatch("timm:", pattern.split("*")[0] + "*") or pattern.startswith("timm:"):
            out.extend(_timm_listing(pattern))
        return out
    else:
        raise ValueError(kind)
    return [(n, reg.describe(n)) for n in reg.names(pattern)]


def _timm_listing(pattern: str) -> list[tuple[str, str]]:
    """The ``timm:<name>`` entry: how many timm models match, or how to install timm."""
    from .errors import install_hint
    from .models.base import TIMM_PREFIX

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
