"""Common-corruption robustness (Hendrycks & Dietterich 2019) of every model: the study section
``probes.corruptions``. The corruptions themselves are :mod:`workbench.evaluation.corruptions`.

Each probe example is corrupted by each corruption at each severity (or read from a user's
CIFAR-10-C folder of ``<corruption>.npy`` files), once, and every model is scored on the same
images. The errors are normalised by a declared baseline model's (Hendrycks & Dietterich):
CE_c = Σ_s err_{s,c} / Σ_s err^{base}_{s,c}, relative CE_c = Σ_s (err_{s,c} − err_clean) /
Σ_s (err^{base}_{s,c} − err^{base}_clean), and mCE the mean of CE_c over the corruptions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from ..config import Strict
from ..errors import WorkbenchError
from ..evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt, frost_available
from ..evaluation.robustness import accuracy_interval, score
from ..registry import TableSchema
from ..views import Measure, register_measure
from .base import PROBES, ProbeContext

CorruptionName = Literal[
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]
ALL = tuple(CORRUPTIONS)


class CorruptionsProbe(Strict):
    """Accuracy under the 15 common corruptions at 5 severities, and the corruption errors
    relative to a baseline model (Hendrycks & Dietterich 2019)."""

    corruptions: tuple[CorruptionName, ...] = Field(ALL, description="corruptions applied (default: all 15)")
    severities: tuple[Literal[1, 2, 3, 4, 5], ...] = Field(SEVERITIES, description="severities 1…5")
    baseline: str | None = Field(None, description="model id whose errors normalise CE and mCE (default: the first model)")
    folder: str | None = Field(
        None, description="a CIFAR-10-C folder (<corruption>.npy, 10,000 test images per severity in test order): "
        "read instead of corrupting (for CIFAR-10's test split)"
    )

    @field_validator("corruptions")
    @classmethod
    def _some(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("corruptions: name at least one, each once")
        return v

    @model_validator(mode="after")
    def _frost(self) -> CorruptionsProbe:
        if "frost" in self.corruptions and self.folder is None and not frost_available():
            raise ValueError("corruptions: frost needs the frost images of the imagecorruptions package: "
                             "pip install imagecorruptions (a core dependency of robustness-workbench), or leave frost out")
        return self


TABLES_CORRUPTIONS: dict[str, TableSchema] = {
    "corruptions": (
        "accuracy under each common corruption and severity (Hendrycks & Dietterich 2019): model × corruption × "
        "severity (clean: corruption `clean`, severity 0)",
        {
            "model": "model id",
            "corruption": "corruption name, or `clean`",
            "severity": "1…5 (0 for clean)",
            "n": "examples (the probe examples)",
            "accuracy": "accuracy on the corrupted images",
            "ci_low": "lower end of the 95% Wilson interval of the accuracy",
            "ci_high": "upper end of the 95% Wilson interval of the accuracy",
            "error": "1 − accuracy",
            "distance": "mean L2 distance of the corrupted images from the clean ones (pixel units)",
        },
    ),
    "corruption_errors": (
        "corruption errors relative to the baseline model: model × corruption, and the means over corruptions "
        "(corruption `mean`: mCE, relative mCE and the mean accuracy)",
        {
            "model": "model id",
            "baseline": "the baseline model id",
            "corruption": "corruption name, or `mean`",
            "accuracy": "mean accuracy over the severities (mean: over corruptions and severities)",
            "ci_low": "lower end of a 95% interval of that mean accuracy (normal, over examples)",
            "ci_high": "upper end of that interval",
            "ce": "CE = Σ_s err / Σ_s err of the baseline (mean: mCE, over the corruptions where it is defined)",
            "relative_ce": "Σ_s (err − clean err) / Σ_s of the same for the baseline, NaN where the baseline's is ≤ 0 "
            "(mean: relative mCE over the corruptions where it is defined)",
            "max_rise": "largest rise of accuracy from a lower to a higher severity (should be ≤ 0 up to noise)",
        },
    ),
}


def read_cifar10_c(folder: Path, name: str, severity: int, index: torch.Tensor) -> torch.Tensor:
    """Images ``index`` of CIFAR-10-C's ``<name>.npy`` at ``severity`` as (N, 3, 32, 32) in [0, 1]."""
    path = Path(folder) / f"{name}.npy"
    if not path.is_file():
        raise WorkbenchError(f"{path}: no such CIFAR-10-C file", field="probes.corruptions.folder")
    arr = np.load(path, mmap_mode="r")
    if arr.ndim != 4 or arr.shape[0] % 5:
        raise WorkbenchError(f"{path}: expected 5 severities of (N, 32, 32, 3) uint8 images, got shape {arr.shape}",
                             field="probes.corruptions.folder")
    per = arr.shape[0] // 5
    if arr.shape[1:] != (32, 32, 3) or len(index) and int(index.max()) >= per:
        raise WorkbenchError(f"{path}: holds {per} images of shape {arr.shape[1:]} per severity; the probe examples "
                             "need CIFAR-10's test split (10,000 images of 32×32×3, in test order)",
                             field="probes.corruptions.folder")
    rows = (severity - 1) * per + index.cpu().numpy()
    return torch.from_numpy(np.ascontiguousarray(arr[rows])).permute(0, 3, 1, 2).float() / 255.0


def corruption_accuracy(models: dict, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, corruptions, severities,
                        *, seed: int, batch_size: int = 500, folder: str | None = None, progress=None):
    """(rows of the ``corruptions`` table, per model (corruption, severity) -> per-example correctness)."""
    rows, correct = [], {}
    for mid, model in models.items():
        c, _ = score(model, x, y, batch_size)
        correct[(mid, "clean", 0)] = c.cpu().numpy()
        rows.append(_row(mid, "clean", 0, c, 0.0))
    for name in corruptions:
        for s in severities:
            if folder is not None:
                xc = read_cifar10_c(Path(folder), name, s, index).to(x.device)
            else:
                xc = corrupt(x, name, s, seed, index)
            dist = float((xc - x).flatten(1).norm(dim=1).mean())
            for mid, model in models.items():
                c, _ = score(model, xc, y, batch_size)
                correct[(mid, name, s)] = c.cpu().numpy()
                rows.append(_row(mid, name, s, c, dist))
            if progress is not None:
                progress(1)
    return pd.DataFrame(rows), correct


def _row(mid, name, severity, c: torch.Tensor, dist: float) -> dict:
    n = int(len(c))
    k = int(c.sum())
    return {"model": mid, "corruption": name, "severity": int(severity), "n": n,
            "accuracy": k / n if n else float("nan"), **accuracy_interval(k, n),
            "error": 1 - k / n if n else float("nan"), "distance": dist}


def corruption_errors(table: pd.DataFrame, correct: dict, baseline: str) -> pd.DataFrame:
    """The ``corruption_errors`` table from the ``corruptions`` table (see the module doc)."""
    rows = []
    t = table[table["corruption"] != "clean"]
    clean_err = table[table["corruption"] == "clean"].set_index("model")["error"]
    base = t[t["model"] == baseline]
    for mid, dm in t.groupby("model", sort=False):
        ces, rces, per_example = [], [], []
        for name, d in dm.groupby("corruption", sort=False):
            b = base[base["corruption"] == name]
            err, berr = float(d["error"].sum()), float(b["error"].sum())
            ce = err / berr if berr > 0 else float("nan")
            rel_b = float((b["error"] - clean_err[baseline]).sum())
            rce = float((d["error"] - clean_err[mid]).sum()) / rel_b if rel_b > 0 else float("nan")
            ex = np.mean([correct[(mid, name, int(s))] for s in d["severity"]], axis=0)
            per_example.append(ex)
            acc = d.sort_values("severity")["accuracy"].to_numpy()
            rise = max((acc[j] - acc[:j].min() for j in range(1, len(acc))), default=0.0)
            rows.append({"model": mid, "baseline": baseline, "corruption": name, "accuracy": float(ex.mean()),
                         **_normal_interval(ex), "ce": ce, "relative_ce": rce, "max_rise": float(rise)})
            ces.append(ce)
            rces.append(rce)
        ex = np.mean(per_example, axis=0)
        rows.append({"model": mid, "baseline": baseline, "corruption": "mean", "accuracy": float(ex.mean()),
                     **_normal_interval(ex), "ce": _mean_defined(ces), "relative_ce": _mean_defined(rces),
                     "max_rise": float(max(r["max_rise"] for r in rows if r["model"] == mid))})
    return pd.DataFrame(rows, columns=list(TABLES_CORRUPTIONS["corruption_errors"][1]))


def _mean_defined(values: list[float]) -> float:
    """The mean over the corruptions where the ratio is defined (a baseline with no error, or no
    error above its clean error, leaves it undefined); NaN when it is defined for none."""
    v = np.asarray(values, dtype=float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def _normal_interval(per_example: np.ndarray) -> dict[str, float]:
    """95% normal interval of a mean over independent examples (each a mean over corrupted copies)."""
    n = len(per_example)
    if n < 2:
        return {"ci_low": float("nan"), "ci_high": float("nan")}
    half = 1.959963984540054 * float(np.std(per_example, ddof=1)) / np.sqrt(n)
    m = float(per_example.mean())
    return {"ci_low": max(m - half, 0.0), "ci_high": min(m + half, 1.0)}


@PROBES.register("corruptions", config=CorruptionsProbe, tables=TABLES_CORRUPTIONS)
def run_corruptions(ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Every model on the probe examples under each corruption and severity; CE and mCE
    relative to ``cfg.baseline`` (default: the study's first model)."""
    cfg: CorruptionsProbe = ctx.cfg
    baseline = cfg.baseline or next(iter(ctx.models))
    if baseline not in ctx.models:
        raise WorkbenchError(f"baseline {baseline!r} is not a model of the study; models: {', '.join(ctx.models)}",
                             field="probes.corruptions.baseline")
    n = len(cfg.corruptions) * len(cfg.severities)
    with ctx.progress.task("corruptions", n) as advance:
        table, correct = corruption_accuracy(
            ctx.models, ctx.x, ctx.y, ctx.index, cfg.corruptions, cfg.severities, seed=ctx.seed_for("corruptions"),
            batch_size=ctx.batch_size, folder=cfg.folder, progress=advance)
    return {"corruptions": table, "corruption_errors": corruption_errors(table, correct, baseline)}


# a threat model of workbench compare: each model's mean accuracy under the corruptions
register_measure(Measure("corruptions", "common corruptions (mean accuracy)", "workbench.probes.views:corruption_accuracy",
                         threat=True, format="pct", order=20))
