"""The shared facts of one run (:data:`workbench.stages.FACTS`): what a stage may be given
besides its own section, each computed once, on demand, with the JSON that stands for it
in the keys of the stages that declare it.

This is the one place that turns study fields outside a stage's own section into what a
stage reads (the main ε, the evaluation's ε grids, the evaluated and the probe examples),
so the key of every stage that declares a fact covers the fields it comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .stages import FACTS, Examples, index_digest
from .training.loop import data_identity
from .evaluation.robustness import evaluation_subset
from .probes.base import probe_examples
from .attacks.autoattack import package_version


class RunFacts:
    """The facts of ``study`` on ``data``: ``models`` (id -> module, in study order) may be
    left out to compute keys only; ``model_keys`` (id -> store key) stand for them in keys."""

    def __init__(self, study: Any, data: Any, device: torch.device, model_keys: Mapping[str, str],
                 models: Mapping[str, torch.nn.Module] | None = None):
        self.study, self.data, self.device = study, data, device
        self.model_keys = dict(model_keys)
        self.models = dict(models) if models is not None else None
        self._values: dict[str, Any] = {}
        self._makers: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
            # name: (make the value, the value's part of a key)
            "data": (lambda: self.data, self._data_key),
            "models": (self._models, lambda _: [{"id": i, "key": k} for i, k in self.model_keys.items()]),
            "pairs": (lambda: [tuple(p) for p in study.pairs()], lambda v: [list(p) for p in v]),
            "device": (lambda: self.device, lambda v: v.type),
            "seed": (lambda: int(study.seed), lambda v: v),
            "main_eps": (lambda: float(study.main_eps()), lambda v: v),
            "eval_eps": (lambda: tuple(float(e) for e in study.evaluation.eps), list),
            "eval_eps_l2": (lambda: tuple(float(e) for e in study.evaluation.eps_l2), list),
            "eval_examples": (self._eval_examples, lambda v: index_digest(v.index)),
            "probe_examples": (self._probe_examples, lambda v: index_digest(v.index)),
            "probe_batch_size": (lambda: int(study.probes.batch_size), lambda v: v),
            "packages": (self._packages, lambda v: v),
            "soundness": (self._soundness, lambda v: v.model_dump(mode="json") if v is not None else None),
        }
        assert set(self._makers) == set(FACTS), "every fact is made here"
        self._keys: dict[str, Any] = {}

    def value(self, name: str) -> Any:
        if name not in self._values:
            self._values[name] = self._makers[name][0]()
        return self._values[name]

    def key(self, name: str) -> Any:
        if name not in self._keys:
            make, key = self._makers[name]
            self._keys[name] = key(None) if name == "models" else key(self.value(name))
        return self._keys[name]

    # ------------------------------------------------------------------ the facts

    def _models(self) -> dict[str, torch.nn.Module]:
        if self.models is None:
            raise RuntimeError("these facts were made for keys only: no models")
        return self.models

    def _data_key(self, data: Any) -> dict[str, Any]:
        d = self.study.data
        return {
            **data_identity(d, data),
            "limit_test": d.limit_test,
            "sizes": {"train": len(data.train_y), "val": len(data.val_y), "test": len(data.test_y)},
            "num_classes": data.num_classes,
        }

    def _eval_examples(self) -> Examples:
        data = self.data
        idx = evaluation_subset(len(data.test_y), self.study.evaluation.examples, int(self.study.seed))
        y = data.test_y[idx.to(data.test_y.device)]
        if getattr(data, "streamed", False):  # the evaluation reads its batches from the files
            return Examples(idx, data.test_x.subset(idx), y)
        return Examples(idx, data.test_x[idx.to(data.test_x.device)], y)

    def _probe_examples(self) -> Examples:
        x, y, idx = probe_examples(self.data, self.study.probes.examples, int(self.study.seed))
        return Examples(idx, x, y)

    def _soundness(self) -> Any:
        cfg = getattr(self.study.evaluation, "soundness", None)
        return cfg if cfg is not None and cfg.enabled else None

    def _packages(self) -> dict[str, str | None]:
        return {"pyautoattack": package_version()}
