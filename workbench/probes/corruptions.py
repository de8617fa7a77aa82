"""Common-corruption robustness (Hendrycks & Dietterich 2019) of every model: the study section
``probes.corruptions``. The corruptions themselves are :mod:`workbench.evaluation.corruptions`.

Each probe example is corrupted by each corruption at each severity (or read from a user's
CIFAR-10-C folder of ``<corruption>.npy`` files), once, and every model is scored on the same
images. The errors are normalised by a declared baseline model's (Hendrycks & Dietterich):
CE_c = Σ_s err_{s,c} / Σ_s err^{base}_{s,c}, relative CE_c = Σ_s (err_{s,c} − err_clean) /
Σ_s (err^{base}_{s,c} − err^{base}_clean), and mCE the mean of CE_c over the corruptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from ..config import Strict
from ..errors import WorkbenchError
from ..evaluation.corruptions import CORRUPTIONS, NOT_MONOTONE, SEVERITIES, corrupt, frost_available
from ..evaluation.robustness import accuracy_interval, score
from ..evaluation.soundness import SoundnessConfig, tolerance
from ..evaluation.soundness import _row as soundness_row
from ..registry import TableSchema
from ..stages import TableStep, register_table_step
from ..stats import binomial_excess, discordant
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
            "max_rise": "largest rise of accuracy from a lower to a higher severity, clean counting as severity 0 "
            "(negative when accuracy falls at every step; should be ≤ 0 up to noise; mean: the largest over the "
            "corruptions)",
            "rise_p": "one-sided exact (McNemar) p-value of that rise on the same examples: is the accuracy at the "
            "higher severity larger than chance allows? (1 without a rise; empty for `mean`; the soundness check "
            "`monotonic_severity` reads it)",
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


def largest_rise(acc: Sequence[float]) -> tuple[float, int, int]:
    """(rise, i, j): the largest ``acc[j] − acc[i]`` over i < j (accuracies in severity order),
    the earliest such pair; negative when accuracy falls at every step, (0, 0, 0) for fewer
    than two accuracies."""
    best, low = None, 0
    for j in range(1, len(acc)):
        if best is None or acc[j] - acc[low] > best[0]:
            best = (float(acc[j] - acc[low]), low, j)
        if acc[j] < acc[low]:
            low = j
    return best if best is not None else (0.0, 0, 0)


def rise_test(lower: np.ndarray, higher: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p) on the same examples: b correct at the higher severity only, c at the lower
    only, p the one-sided exact binomial (McNemar) p-value P(X ≥ b), X ~ Bin(b + c, ½): under
    "accuracy does not rise" each discordant example goes either way at most with ½."""
    b, c = discordant(higher, lower)
    return b, c, binomial_excess(b, b + c, 0.5)


def severity_rise(d: pd.DataFrame, clean: float, correct: dict, mid: str, name: str) -> dict:
    """The largest rise of accuracy with severity of one model and corruption (rows ``d`` of the
    ``corruptions`` table), clean as severity 0: rise, the two severities, their accuracies,
    the discordant counts and the one-sided p-value."""
    d = d.sort_values("severity")
    sev = [0] + [int(s) for s in d["severity"]]
    acc = [clean] + [float(a) for a in d["accuracy"]]
    rise, i, j = largest_rise(acc)
    b, c, p = rise_test(correct[(mid, name if sev[i] else "clean", sev[i])], correct[(mid, name, sev[j])]) if rise > 0 \
        else (0, 0, 1.0)
    return {"rise": rise, "from": sev[i], "to": sev[j], "acc_from": acc[i], "acc_to": acc[j], "b": b, "c": c, "p": p}


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
            r = severity_rise(d, 1.0 - float(clean_err[mid]), correct, mid, name)
            rows.append({"model": mid, "baseline": baseline, "corruption": name, "accuracy": float(ex.mean()),
                         **_normal_interval(ex), "ce": ce, "relative_ce": rce, "max_rise": r["rise"], "rise_p": r["p"]})
            ces.append(ce)
            rces.append(rce)
        ex = np.mean(per_example, axis=0)
        mine = [r for r in rows if r["model"] == mid]
        rows.append({"model": mid, "baseline": baseline, "corruption": "mean", "accuracy": float(ex.mean()),
                     **_normal_interval(ex), "ce": _mean_defined(ces), "relative_ce": _mean_defined(rces),
                     "max_rise": float(max(r["max_rise"] for r in mine)), "rise_p": float("nan")})
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


# --------------------------------------------------------------------------- the soundness check
# "accuracy non-increasing in severity" is a soundness check (a row of the soundness table and
# of each model's verdict) that runs after the probes, as a table step: the soundness stage runs
# before them, and this check reads only the tables written here.


def severity_check_rows(corruptions: pd.DataFrame, errors: pd.DataFrame, cfg: SoundnessConfig) -> list[dict]:
    """One ``monotonic_severity`` row per model: over the corruptions whose strength grows with
    severity (all but :data:`~workbench.evaluation.corruptions.NOT_MONOTONE`), the largest rise
    of accuracy with severity (clean as severity 0) with its one-sided exact paired p-value from
    ``errors`` (``rise_p``), Bonferroni-adjusted for the k corruptions. It warns when a rise is
    past the tolerance (``max(soundness.tolerance, 1/n)``) and its adjusted p is below
    ``soundness.level``; the row is the corruption that warns with the smallest p, else the
    largest rise."""
    rows = []
    for mid, dm in corruptions.groupby("model", sort=False):
        clean = dm[dm["corruption"] == "clean"]
        if clean.empty:
            continue
        n = int(clean["n"].iloc[0])
        tol = tolerance(cfg, n)
        errs = errors[(errors["model"] == mid) & (errors["corruption"] != "mean")].set_index("corruption")
        names = [c for c in dict.fromkeys(dm["corruption"]) if c != "clean" and c not in NOT_MONOTONE]
        left = sorted(set(dm["corruption"]) & set(NOT_MONOTONE))
        out = f" ({', '.join(left)} left out: severity is no order of strength there)" if left else ""
        k = len(names)
        cands = []
        for name in names:
            d = dm[dm["corruption"] == name].sort_values("severity")
            sev = [0] + [int(s) for s in d["severity"]]
            acc = [float(clean["accuracy"].iloc[0])] + [float(a) for a in d["accuracy"]]
            rise, i, j = largest_rise(acc)
            p = min(1.0, k * float(errs.loc[name, "rise_p"])) if name in errs.index else None
            detail = (f"{name}: accuracy rises from {100 * acc[i]:.1f}% at severity {sev[i]} to {100 * acc[j]:.1f}% at "
                      f"severity {sev[j]} (+{100 * rise:.1f} points, n={n}; tolerance {100 * tol:.1f} points). Worst of "
                      f"{k} corruptions{out}; p Bonferroni-adjusted ×{k}.")
            cands.append(soundness_row(mid, "monotonic_severity", rise, tol, detail, p=p, level=cfg.level))
        if not cands:
            continue
        warned = [r for r in cands if r["status"] == "warn"]
        row = min(warned, key=lambda r: r["p_value"]) if warned else max(cands, key=lambda r: r["value"])
        if row["value"] <= 0:
            row = soundness_row(mid, "monotonic_severity", 0.0, tol,
                                f"accuracy never rises with severity for any of the {k} corruptions{out} (n={n}; "
                                f"clean as severity 0; tolerance {100 * tol:.1f} points).", level=cfg.level)
        rows.append(row)
    return rows


class SeverityCheck(TableStep):
    """Adds the ``monotonic_severity`` row of each model to the ``soundness`` table when the
    soundness checks and the corruptions probe both ran (docs/methods.md, soundness)."""

    name = "monotonic_severity"
    facts = ("soundness",)
    order = 5.0  # after the worst case, before the paired tests (neither reads the soundness table)

    def run(self, tables, ctx):
        snd, cor, err = tables.get("soundness"), tables.get("corruptions"), tables.get("corruption_errors")
        if ctx.soundness is None or snd is None or cor is None or err is None or not len(cor):
            return {}
        rows = severity_check_rows(cor, err, ctx.soundness)
        if not rows:
            return {}
        # each model's row after its other checks
        parts = [snd[snd["model"] == m] for m in dict.fromkeys(snd["model"])]
        extra = pd.DataFrame(rows, columns=list(snd.columns))
        out = []
        for p in parts:
            m = p["model"].iloc[0]
            out += [p, extra[extra["model"] == m]]
        out.append(extra[~extra["model"].isin(snd["model"])])
        return {"soundness": pd.concat([d for d in out if len(d)], ignore_index=True)}


register_table_step(SeverityCheck())
