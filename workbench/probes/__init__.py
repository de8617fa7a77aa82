"""Representation probes: how the paired models' representations differ.

Each probe is one module with a notebook function (``lipschitz(model, x, y, ...)``,
``cka(X, Y)``, ...) and a study runner registered by name in :data:`PROBES`. A runner takes
a :class:`ProbeContext` and returns tidy DataFrames (one row per model × layer × setting),
which the run folder stores as tables. Registering a probe with its typed config and its
tables makes it a study section (``probes.<name>``) and a stage (``probe:<name>``). Formulas and pitfalls: docs/methods.md.
"""

# registration, in the order of the study's probes section and of their tables
from . import lipschitz as _lipschitz  # noqa: F401  isort: skip
from . import linearity as _linearity  # noqa: F401  isort: skip
from . import saliency as _saliency  # noqa: F401  isort: skip
from . import cka as _cka  # noqa: F401  isort: skip
from . import linear_probe as _linear_probe  # noqa: F401  isort: skip
from .base import PROBES, ProbeContext, ProbeStage, probe_context, probe_examples, run_probe, run_probes
from .cka import cka, cka_matrix
from .linear_probe import linear_probe
from .linearity import gradient_alignment, local_linearity, loss_slices
from .lipschitz import lipschitz, logit_lipschitz
from .saliency import saliency_maps
from ..registry import import_submodules  # isort: skip

import_submodules(__name__, __path__)  # any other probe module registers itself (after these)

__all__ = [
    "PROBES",
    "ProbeContext",
    "ProbeStage",
    "cka",
    "cka_matrix",
    "gradient_alignment",
    "linear_probe",
    "lipschitz",
    "local_linearity",
    "logit_lipschitz",
    "loss_slices",
    "probe_context",
    "probe_examples",
    "run_probe",
    "run_probes",
    "saliency_maps",
]
