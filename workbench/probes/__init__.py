"""Representation probes: how the paired models' representations differ.

Each probe is one module with a notebook function (``lipschitz(model, x, y, ...)``,
``cka(X, Y)``, ...) and a study runner registered by name in :data:`PROBES`. A runner takes
a :class:`ProbeContext` and returns tidy DataFrames (one row per model × layer × setting),
which the run folder stores as tables. Formulas and pitfalls: docs/methods.md.
"""

from .base import PROBES, ProbeContext, probe_context, probe_examples, run_probe, run_probes
from . import cka as _cka, linear_probe as _linear_probe, linearity as _linearity, lipschitz as _lipschitz, saliency as _saliency  # noqa: F401,E501  (registration)
from .cka import cka, cka_matrix
from .linear_probe import linear_probe
from .linearity import gradient_alignment, local_linearity, loss_slices
from .lipschitz import lipschitz, logit_lipschitz
from .saliency import saliency_maps

__all__ = [
    "PROBES",
    "ProbeContext",
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
