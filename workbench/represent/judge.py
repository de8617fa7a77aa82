"""The judge: a classifier that is not one of the studied models and is never attacked.

It scores images made by the studied models (feature visualisations, synthesised images,
large-ε targeted examples): does it see the class the model was pushed towards? Built
here from scikit-learn on raw pixels, fitted on the training split; a judge only ever
*predicts* (:meth:`PixelJudge.predict` takes images and returns labels as numpy, no
autograd graph, no torch module), so no attack can be run through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from ..config import Strict
from ..seeds import seeded_generator, seeded_subset


class JudgeConfig(Strict):
    """Which judge scores the images (docs/methods.md, "Robust representations")."""

    kind: Literal["logistic", "svm"] = Field(
        "logistic", description="scikit-learn on pixels: logistic regression or an RBF SVM, fitted on the training split")
    C: PositiveFloat = Field(1.0, description="inverse regularisation strength")
    max_train: PositiveInt | None = Field(10000, description="training images it is fitted on (a seeded subset; null: all)")


@dataclass
class PixelJudge:
    """A fitted scikit-learn classifier on flattened pixels in [0, 1]."""

    estimator: Any
    kind: str
    train_accuracy: float

    def predict(self, x: torch.Tensor) -> np.ndarray:
        """Labels of images ``x`` (N, C, H, W) in [0, 1], as int64 numpy."""
        flat = x.detach().float().cpu().reshape(len(x), -1).numpy()
        return self.estimator.predict(flat).astype(np.int64)

    def parameters(self) -> dict[str, np.ndarray]:
        """Its fitted arrays (``coef_``, ``support_vectors_``, ...), for checks that it never changes."""
        return {k: np.array(v, copy=True) for k, v in vars(self.estimator).items()
                if k.endswith("_") and isinstance(v, np.ndarray)}


def fit_judge(cfg: JudgeConfig, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0) -> PixelJudge:
    """Fit the judge of ``cfg`` on training images ``x`` and labels ``y`` (deterministic:
    a seeded subset, and solvers without randomness)."""
    # scikit-learn takes seconds to import; only this step needs it
    from sklearn.linear_model import LogisticRegression
    # scikit-learn takes seconds to import; only this step needs it
    from sklearn.svm import SVC

    idx = seeded_subset(len(y), cfg.max_train, seeded_generator("cpu", seed, "judge-train"))
    flat = x[idx.to(x.device)].detach().float().cpu().reshape(len(idx), -1).numpy()
    labels = y[idx.to(y.device)].cpu().numpy()
    if cfg.kind == "logistic":
        est = LogisticRegression(C=cfg.C, max_iter=2000)
    else:
        est = SVC(C=cfg.C, kernel="rbf", gamma="scale")
    est.fit(flat, labels)
    return PixelJudge(est, cfg.kind, float((est.predict(flat) == labels).mean()))
