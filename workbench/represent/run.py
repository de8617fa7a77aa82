"""The represent probe's work on a set of models, as one library function.

:func:`represent` takes the models, the pairs, the data, a probe example set and a
:class:`RepresentProbe` config, and returns the per-example table, the summary with
intervals, the paired tests and the images (a dict of numpy arrays). The probe
(:mod:`workbench.probes.represent`) is a thin wrapper around it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from ..attacks.pgd import pgd
from ..config import Eps, Norm, Strict
from ..models.capture import extract_features, resolve_layers
from ..seeds import derive_seed
from . import core
from .judge import JudgeConfig, PixelJudge, fit_judge
from .measures import SUMMARY_COLUMNS, mcnemar_row, mean_row, mean_test_row, proportion_row, tests_frame
from ..attacks.base import attack_mode
from ..errors import WorkbenchError

# --------------------------------------------------------------------------- configuration


class InversionConfig(Strict):
    examples: PositiveInt = Field(16, description="targets: the first probe examples")
    layer: str = Field("penultimate", description="layer whose representation is inverted")
    start: str = Field("noise", pattern="^(noise|image)$",
                       description="seed: noise N(0.5, 0.05²) or image (another target, the next one)")
    steps: PositiveInt = Field(200, description="L2-normalised gradient steps")
    step_size: PositiveFloat | None = Field(None, description="step (pixel units); default 0.01·√(values per image)")


class FeaturesConfig(Strict):
    features: PositiveInt = Field(10, description="coordinates of the layer visualised per model (seeded choice among the active ones)")
    seeds: PositiveInt = Field(2, description="noise seeds per feature")
    layer: str = Field("penultimate", description="layer whose coordinates are maximised")
    steps: PositiveInt = 200
    step_size: PositiveFloat | None = Field(None, description="default 0.01·√(values per image)")


class SynthesisConfig(Strict):
    per_class: PositiveInt = Field(4, description="seeds per class")
    steps: PositiveInt = 60
    step_size: PositiveFloat | None = Field(None, description="default: 2.5·eps/steps, at most 0.1·√(values per image)")
    eps: PositiveFloat | None = Field(None, description="L2 radius around the seed (default: unbounded, [0, 1] only)")
    downsample: PositiveInt | None = Field(None, description="side of the images the class Gaussians are fitted to (default: full size)")


class PerceptualConfig(Strict):
    examples: PositiveInt = Field(20, description="probe examples, each attacked towards every other class")
    eps: PositiveFloat = Field(2.0, description="L2 ε of the large-ε targeted attack (pixel units)")
    steps: PositiveInt = 60
    fool_examples: PositiveInt = Field(100, description="probe examples of the small-ε untargeted attack the judge scores")
    fool_eps: Eps | None = Field(None, description="its ε (default: the study's main ε)")
    fool_norm: Norm = "linf"
    fool_steps: PositiveInt = 20


class GalleryConfig(Strict):
    examples: PositiveInt = Field(4, description="seeded examples (the first probe examples)")
    lost: PositiveInt = Field(4, description="first examples each pair's robust model gets right but loses under attack")
    pool: PositiveInt = Field(64, description="probe examples searched for them")
    steps: PositiveInt = Field(20, description="PGD steps at the main ε (L∞)")


class RepresentProbe(Strict):
    """What the representations encode: inversion, feature visualisation, synthesis,
    perceptually aligned gradients (scored by a judge) and an evaluation gallery.
    Each part is off when set to null."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    inversion: InversionConfig | None = Field(default_factory=InversionConfig)
    features: FeaturesConfig | None = Field(default_factory=FeaturesConfig)
    synthesis: SynthesisConfig | None = Field(default_factory=SynthesisConfig)
    perceptual: PerceptualConfig | None = Field(default_factory=PerceptualConfig)
    gallery: GalleryConfig | None = Field(default_factory=GalleryConfig)


PER_EXAMPLE_COLUMNS = ["model", "task", "item", "index", "source_class", "target_class", "seed", "distance", "ssim", "nl2",
                       "model_label", "judge_label", "judge_agrees", "cosine"]

# --------------------------------------------------------------------------- result


@dataclass
class RepresentResult:
    per_example: pd.DataFrame
    summary: pd.DataFrame
    tests: pd.DataFrame
    judge: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _gen(seed: int, *parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, "represent", *parts))


def _predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    with attack_mode(model), torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]).cpu().numpy()


def _rows(model: str, task: str, **cols: Any) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    d = {c: cols.get(c, [np.nan] * n) for c in PER_EXAMPLE_COLUMNS[2:]}
    df = pd.DataFrame(d)
    df.insert(0, "task", task)
    df.insert(0, "model", model)
    return df


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def represent(
    models: Mapping[str, torch.nn.Module],
    pairs: Sequence[tuple[str, str, str]],
    data: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    cfg: RepresentProbe,
    *,
    seed: int = 0,
    main_eps: float = 0.0,
    judge: PixelJudge | None = None,
    batch_size: int = 256,
) -> RepresentResult:
    """Every enabled part of ``cfg`` on every model; ``x, y, index`` are the probe examples
    (test images shared by the models), ``data`` the study's splits (the judge and the
    synthesis Gaussians are fitted on its training split). The same targets, seeds and
    classes serve every model, so the measures are paired between the models of a pair."""
    if getattr(data, "streamed", False):
        raise WorkbenchError("the represent probe fits its judge on the training images in memory; "
                             "set data.stream: false", field="probes.represent")
    device = x.device
    judge = judge if judge is not None else fit_judge(cfg.judge, data.train_x, data.train_y, seed=seed)
    num_classes = int(data.num_classes)
    ids = list(models)
    parts: list[pd.DataFrame] = []
    summary: list[dict] = []
    tests: list[dict | None] = []
    arrays: dict[str, np.ndarray] = {"models": np.array(ids)}
    yn, idx_n = y.cpu().numpy(), index.cpu().numpy()
    means = core.class_means(data.train_x, data.train_y, num_classes)

    def jrows(task: str, measure: str, ok_col: str = "judge_agrees") -> None:
        got = pd.concat([p for p in parts if p["task"].iloc[0] == task and p["model"].iloc[0] in ids], ignore_index=True)
        for m in ids:
            summary.append(proportion_row(m, task, measure, got[got["model"] == m][ok_col].to_numpy(bool)))
        for _, a, b in pairs:
            tests.append(mcnemar_row(got, a, b, task, measure, ok_col))

    def vrows(task: str, measure: str, col: str) -> None:
        got = pd.concat([p for p in parts if p["task"].iloc[0] == task and p["model"].iloc[0] in ids], ignore_index=True)
        for m in ids:
            summary.append(mean_row(m, task, measure, got[got["model"] == m][col].to_numpy(float),
                                    derive_seed(seed, "represent-ci", task, col, m)))
        for _, a, b in pairs:
            tests.append(mean_test_row(got, a, b, task, measure, col, derive_seed(seed, "represent-test", task, col)))

    # ---- inversion
    inv = cfg.inversion
    if inv is not None:
        n = min(inv.examples, len(x))
        xt, yt = x[:n], y[:n]
        seeds = (core.noise_seeds(tuple(xt.shape), _gen(seed, "inversion"), device=device) if inv.start == "noise"
                 else xt.roll(1, 0).clone())
        arrays["inversion.targets"], arrays["inversion.seeds"] = _np(xt), _np(seeds)
        arrays["inversion.labels"] = yn[:n]
        base = core.image_agreement(seeds, xt)
        summary.append(mean_row("(seed)", "inversion", "SSIM to target", base["ssim"].numpy(), seed))
        for j, m in enumerate(ids):
            got = core.invert(models[m], xt, seeds, layer=inv.layer, steps=inv.steps, step_size=inv.step_size)
            agree = core.image_agreement(got.x, xt)
            jl = judge.predict(got.x)
            arrays[f"inversion.x.{j}"] = _np(got.x)
            parts.append(_rows(m, "inversion", item=np.arange(n), index=idx_n[:n], source_class=yn[:n],
                               target_class=yn[:n], seed=np.arange(n), distance=_np(got.distance),
                               ssim=agree["ssim"].numpy(), nl2=agree["nl2"].numpy(), model_label=_predict(models[m], got.x),
                               judge_label=jl, judge_agrees=jl == yn[:n]))
        vrows("inversion", "representation distance", "distance")
        vrows("inversion", "SSIM to target", "ssim")
        vrows("inversion", "normalised L2 to target", "nl2")
        jrows("inversion", "judge agrees with the target's class")

    # ---- feature visualisation
    fv = cfg.features
    if fv is not None:
        for j, m in enumerate(ids):
            model = models[m]
            layer = resolve_layers(model, fv.layer)[-1] if hasattr(model, "layer_names") else "logits"
            feats = extract_features(model, x, layer, batch_size=batch_size)[layer]
            active = torch.nonzero(feats.std(0) > 0).flatten()
            pick = active[torch.randperm(len(active), generator=_gen(seed, "features", m))[:fv.features]].sort().values
            # the class whose probe images activate the feature most, on average
            cls_mean = torch.stack([feats[torch.as_tensor(yn) == c].mean(0) if (yn == c).any()
                                    else torch.full((feats.shape[1],), -math.inf) for c in range(num_classes)])
            best = cls_mean[:, pick].argmax(0).numpy()
            k = len(pick)
            fidx = pick.repeat_interleave(fv.seeds)
            # the same seeds for every model: rank r, seed s
            seeds = core.noise_seeds((k * fv.seeds, *x.shape[1:]), _gen(seed, "features"), device=device)
            vis = core.visualise_features(model, fidx, seeds, layer=layer, steps=fv.steps, step_size=fv.step_size)
            jl = judge.predict(vis)
            cls = np.repeat(best, fv.seeds)
            arrays[f"features.x.{j}"], arrays[f"features.index.{j}"], arrays[f"features.class.{j}"] = (
                _np(vis), fidx.numpy(), cls)
            parts.append(_rows(m, "features", item=np.arange(k * fv.seeds), index=fidx.numpy(), source_class=cls,
                               target_class=cls, seed=np.tile(np.arange(fv.seeds), k),
                               model_label=_predict(model, vis), judge_label=jl, judge_agrees=jl == cls))
        got = pd.concat([p for p in parts if p["task"].iloc[0] == "features"], ignore_index=True)
        for m in ids:
            summary.append(proportion_row(m, "features", "judge agrees with the feature's top class",
                                          got[got["model"] == m]["judge_agrees"].to_numpy(bool)))
        # a model's coordinate k has nothing to do with another's: no paired test

    # ---- synthesis
    sy = cfg.synthesis
    if sy is not None:
        g = core.fit_class_gaussians(data.train_x, data.train_y, num_classes, size=sy.downsample)
        classes = torch.arange(num_classes).repeat_interleave(sy.per_class)
        seeds = core.class_gaussian_seeds(g, classes, _gen(seed, "synthesis"), device=device)
        cn = classes.numpy()
        arrays["synthesis.seeds"], arrays["synthesis.classes"] = _np(seeds), cn
        jl0 = judge.predict(seeds)
        summary.append(proportion_row("(seed)", "synthesis", "judge agrees with the class", jl0 == cn))
        for j, m in enumerate(ids):
            out = core.synthesise(models[m], seeds, classes.to(device), steps=sy.steps, step_size=sy.step_size,
                                  eps=sy.eps or core.UNBOUNDED)
            jl = judge.predict(out)
            arrays[f"synthesis.x.{j}"] = _np(out)
            parts.append(_rows(m, "synthesis", item=np.arange(len(cn)), index=np.full(len(cn), -1), source_class=cn,
                               target_class=cn, seed=np.tile(np.arange(sy.per_class), num_classes),
                               model_label=_predict(models[m], out), judge_label=jl, judge_agrees=jl == cn))
        jrows("synthesis", "judge agrees with the class")

    # ---- perceptually aligned gradients and the judge's own fooling
    pg = cfg.perceptual
    if pg is not None:
        n = min(pg.examples, len(x))
        src = torch.arange(n).repeat_interleave(num_classes - 1)
        offs = torch.arange(1, num_classes).repeat(n)
        tgt = (y[:n].cpu()[src] + offs) % num_classes
        xs = x[:n][src.to(device)]
        arrays["perceptual.x"], arrays["perceptual.source"], arrays["perceptual.target"] = (
            _np(x[:n]), yn[:n], tgt.numpy().reshape(n, num_classes - 1))
        sn, tn = yn[:n][src.numpy()], tgt.numpy()
        for j, m in enumerate(ids):
            adv = core.targeted_l2(models[m], xs, tgt.to(device), eps=pg.eps, steps=pg.steps)
            jl = judge.predict(adv)
            cos = core.class_mean_cosine(adv - xs, means, torch.as_tensor(sn), tgt).numpy()
            arrays[f"perceptual.adv.{j}"] = _np(adv).reshape(n, num_classes - 1, *x.shape[1:])
            parts.append(_rows(m, "perceptual", item=np.arange(len(tn)), index=idx_n[:n][src.numpy()], source_class=sn,
                               target_class=tn, seed=np.zeros(len(tn)), model_label=_predict(models[m], adv),
                               judge_label=jl, judge_agrees=jl == tn, cosine=cos,
                               nl2=(adv - xs).flatten(1).norm(dim=1).cpu().numpy()))
        jrows("perceptual", f"judge agrees with the target class (L2 ε={pg.eps:g})")
        vrows("perceptual", "cos(δ, μ_target − μ_source)", "cosine")
        fe = pg.fool_eps if pg.fool_eps is not None else main_eps
        if fe and fe > 0:
            nf = min(pg.fool_examples, len(x))
            xf, yf = x[:nf], y[:nf]
            jc = judge.predict(xf)
            fool_measure = f"judge accuracy on the model's adversarial examples ({pg.fool_norm} ε={float(fe):g})"
            # the clean images' row shares the measure: the baseline the attacks lower it from
            summary.append(proportion_row("(clean)", "fool", fool_measure, jc == yn[:nf]))
            for j, m in enumerate(ids):
                adv = pgd(models[m], xf, yf, float(fe), steps=pg.fool_steps, norm=pg.fool_norm,
                          generator=_gen(seed, "fool", m))
                jl = judge.predict(adv)
                ml = _predict(models[m], adv)
                parts.append(_rows(m, "fool", item=np.arange(nf), index=idx_n[:nf], source_class=yn[:nf],
                                   target_class=yn[:nf], seed=np.zeros(nf), model_label=ml, judge_label=jl,
                                   judge_agrees=jl == yn[:nf]))
                summary.append(proportion_row(m, "fool", f"model accuracy ({pg.fool_norm} ε={float(fe):g})", ml == yn[:nf]))
            jrows("fool", fool_measure)

    # ---- gallery: clean, adversarial and amplified perturbation per model at the main ε
    ga = cfg.gallery
    if ga is not None and main_eps > 0:
        npool = min(max(ga.pool, ga.examples), len(x))
        xp, yp = x[:npool], y[:npool]
        advs, correct_clean, correct_adv = {}, {}, {}
        for m in ids:
            advs[m] = pgd(models[m], xp, yp, float(main_eps), steps=ga.steps, generator=_gen(seed, "gallery", m))
            correct_clean[m] = _predict(models[m], xp) == yn[:npool]
            correct_adv[m] = _predict(models[m], advs[m]) == yn[:npool]
        chosen = list(range(min(ga.examples, npool)))
        why = ["seeded"] * len(chosen)
        for _, a, b in pairs:
            lost = np.flatnonzero(correct_clean[b] & ~correct_adv[b])[:ga.lost]
            chosen += [int(i) for i in lost]
            why += [f"lost by {b}"] * len(lost)
        sel = torch.as_tensor(chosen, dtype=torch.long)
        arrays["gallery.x"], arrays["gallery.labels"], arrays["gallery.why"] = (
            _np(xp[sel.to(device)]), yn[:npool][sel.numpy()], np.array(why))
        arrays["gallery.eps"] = np.array(float(main_eps))
        for j, m in enumerate(ids):
            arrays[f"gallery.adv.{j}"] = _np(advs[m][sel.to(device)])
            arrays[f"gallery.pred.{j}"] = _predict(models[m], advs[m][sel.to(device)])

    per_example = (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PER_EXAMPLE_COLUMNS))
    judge_table = pd.DataFrame([{"judge": f"scikit-learn {judge.kind} on pixels", "train_accuracy": judge.train_accuracy,
                                 "test_accuracy": float((judge.predict(data.test_x) == data.test_y.cpu().numpy()).mean()),
                                 "test_examples": int(len(data.test_y))}])
    return RepresentResult(per_example, pd.DataFrame(summary, columns=SUMMARY_COLUMNS), tests_frame(tests),
                           judge_table, arrays)


# --------------------------------------------------------------------------- arrays

ARRAY_FILE = "represent.npz"


def arrays_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k.replace("/", "|"): np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """``arrays/represent.npz`` of a run (or the file itself) as a dict of numpy arrays."""
    p = Path(path)
    if p.is_dir():
        p = p / "arrays" / ARRAY_FILE
    with np.load(p, allow_pickle=False) as z:
        return {k.replace("|", "/"): z[k] for k in z.files}


def describe(result: RepresentResult) -> str:  # pragma: no cover - notebook helper
    return json.dumps(result.summary.to_dict(orient="records"), indent=1, default=str)
