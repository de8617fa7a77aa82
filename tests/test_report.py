"""Reports and comparisons: figures from synthetic tables (exact schema), and the HTML of a
shrunk real run (sections, embedded figures, summary numbers, escaping, no external
references, with and without probes), comparisons, and every error path."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workbench.views import figures, resolve
from workbench.errors import RunFolderError, WorkbenchError
from workbench.report import figures as F
from workbench.report import summary_table, write_comparison, write_report
from workbench.report.compare import differences, run_names
from workbench.evaluation.soundness import VERDICT_HELD, VERDICT_OK, VERDICT_WARN
from workbench.results import load
from workbench.store import RunFolder
from workbench.evaluation.per_class import confusion_table, per_class_table
from workbench.stats import wilson_interval
from workbench.tables import TABLES
from conftest import CHEAP_CASCADE

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"
MODELS = ["small_cnn/standard", "small_cnn/pgd_at"]
LAYERS = ["conv1", "conv2", "fc1", "logits"]

# --------------------------------------------------------------------------- shrunk runs

#: quickstart shrunk to seconds: 5 epochs (PGD-AT just starts to pay off), 100 test examples, few steps
SHRUNK = {
    "train.epochs": 5,
    "train.monitor_examples": 64,
    "train.monitor_steps": 3,
    "architectures": ["small_cnn"],
    "recipes": ["standard", {"name": "pgd_at", "eps": 0.2, "steps": 3}],
    "evaluation.examples": 100,
    "evaluation.eps": [0.1, 0.2],
    "evaluation.eps_l2": [1.0],
    "evaluation.attacks": ["fgsm", {"name": "pgd", "steps": 5}, {"name": "pgd", "norm": "l2", "steps": 5}],
    "evaluation.worst_case": CHEAP_CASCADE,
}
#: every probe, at its cheapest
PROBES = {
    "examples": 32,
    "lipschitz": {"steps": 3, "eps": [0.2], "eps_l2": [1.0]},
    "linearity": {"eps": [0.1, 0.2], "steps": 3, "surface": {"grid": 5, "examples": 2}},
    "saliency": {"examples": 4, "ig_steps": 4, "smoothgrad_samples": 2},
    "cka": {},
    "linear_probe": {"eps": [0.2], "train_examples": 200, "C": [1.0], "max_iter": 100},
    "represent": {"inversion": {"examples": 4, "steps": 5}, "features": {"features": 2, "seeds": 1, "steps": 5},
                  "synthesis": {"per_class": 1, "steps": 5}, "perceptual": {"examples": 2, "steps": 5, "fool_examples": 16},
                  "gallery": {"examples": 2, "lost": 2, "pool": 16, "steps": 3}},
    "corruptions": {"corruptions": ["contrast", "fog"], "severities": [1, 2]},
    "threats": {"layers": "penultimate", "steps": 2, "train_examples": 60, "corruptions": ["contrast"],
                "spatial": {"max_angle": 10, "max_shift": 1, "angles": 3, "shifts": 3}},
}
SOUNDNESS = {"enabled": True, "examples": 50}


def probes_available() -> bool:
    return True  # both stages are part of the package: a failing import must fail the tests


def soundness_available() -> bool:
    return True


_RUNS: dict[str, dict[str, Path | float | bool]] = {}


def shrunk_runs(tmp_path_factory) -> dict:
    """Build once per test session (test_browser imports this): ``full`` (every probe that
    imports, soundness checks if present), ``plain`` (no probes, main ε 0.1, PNG only, models
    reused from the store) and their comparison. Reports are written by run_study itself."""
    if _RUNS:
        return _RUNS
    from workbench.runner import run_study
    from workbench.study import load_study

    base = tmp_path_factory.mktemp("runs")
    store = base / "store"  # explicit: module-scoped setup runs before the autouse env fixture
    full_over = dict(SHRUNK, **{"evaluation.soundness": SOUNDNESS if soundness_available() else {"enabled": False}})
    if probes_available():
        full_over["probes"] = PROBES
    plain_over = dict(SHRUNK, **{"evaluation.soundness.enabled": False, "probes": {}, "evaluation.main_eps": 0.1,
                                 "evaluation.examples": 60, "report.formats": ["png"]})
    full = run_study(load_study(QUICKSTART, full_over), base / "full", store=store, progress=False, threads=1, report=True)
    plain = run_study(load_study(QUICKSTART, plain_over), base / "plain", store=store, progress=False, threads=1,
                      report=True)
    t0 = time.perf_counter()
    compare = write_comparison([full.path, plain.path], base / "compare")
    _RUNS.update(full=full.path, plain=plain.path, compare=compare.parent, compare_seconds=time.perf_counter() - t0,
                 full_report_seconds=full.timings["report"], plain_report_seconds=plain.timings["report"],
                 probes=probes_available(), soundness=soundness_available())
    return _RUNS


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return shrunk_runs(tmp_path_factory)


# --------------------------------------------------------------------------- HTML parsing


class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.figures: list[dict] = []  # {"name", "img": attrs}
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tables: dict[str, list[list[dict]]] = {}  # table id -> rows of cells {"text", "sort"}
        self.headers: dict[str, list[str]] = {}
        self._table: str | None = None
        self._cell: dict | None = None
        self._figure: str | None = None
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for attr in ("src", "href", "action", "poster", "data", "srcset"):
            if attr in a:
                self.refs.append((tag, attr, a[attr] or ""))
        if tag == "figure":
            self._figure = a.get("data-figure")
        if tag == "img":
            self.figures.append({"name": self._figure, "img": a})
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
            self.headers[self._table] = []
        if self._table and tag == "tr":
            self.tables[self._table].append([])
        if self._table and tag in ("td", "th"):
            self._cell = {"tag": tag, "text": "", "sort": a.get("data-sort"), "cls": a.get("class", "")}
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if tag in ("td", "th") and self._cell is not None and self._table:
            if self._cell["tag"] == "th":
                self.headers[self._table].append(self._cell["text"].strip())
            else:
                self.tables[self._table][-1].append(self._cell)
            self._cell = None
        if tag == "figure":
            self._figure = None
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_script:
            self.scripts[-1] += data

    def rows(self, table_id: str) -> list[dict[str, dict]]:
        """Body rows of a table as {header: cell}."""
        heads = self.headers[table_id]
        return [dict(zip(heads, r)) for r in self.tables[table_id] if r]


def page_of(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def decode_png(uri: str) -> tuple[int, int]:
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes every pixel: a truncated PNG fails here
        return im.size


def assert_no_external_references(page: Page, text: str) -> None:
    for tag, attr, value in page.refs:
        assert not value.lower().startswith(("http:", "https:", "//", "ftp:")), (tag, attr, value)
        assert value.startswith(("data:image/png;base64,", "#", "figures/")), (tag, attr, value[:60])
    low = text.lower()
    assert "@import" not in low and "url(" not in low, "CSS must not load anything"
    assert "<link" not in low, "no external stylesheets, icons or preloads"


# --------------------------------------------------------------------------- synthetic tables


def synthetic_tables(models: list[str] = MODELS, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every table a run can write, with exactly the columns of workbench.tables and
    plausible numbers: enough to draw every figure without training anything."""
    rng = np.random.default_rng(seed)
    eps = [0.1, 0.2, 0.3]
    rows: dict[str, list[dict]] = {k: [] for k in TABLES}
    for i, m in enumerate(models):
        robust = i > 0
        rows["models"].append(dict(
            model=m, architecture="small_cnn", arch_name="small_cnn", recipe=m.split("/")[1], recipe_name=m.split("/")[1],
            train_eps=0.2 if robust else 0.0, train_norm="linf" if robust else "none", role="paired" if robust else "reference",
            key=f"key{i}", cached=False, resumed_from_epoch=None, epochs=3, train_seconds=1.0, stopped_early="",
            parameters=1000, seed=0))
        for s in (0, 1):  # as if the run had two seeds (the table's schema; values are illustrative)
            acc = 0.9 - 0.01 * s
            rows["replicates"].append(dict(
                architecture="small_cnn", recipe=m.split("/")[1], measure="clean", detail="", norm="none", eps=0.0,
                seed=s, model=f"{m}/s{s}", value=acc, ci_low=acc - 0.05, ci_high=acc + 0.04, n_seeds=2, mean=0.895,
                sd=0.00707))
        for ep in range(1, 4):
            rows["history"].append(dict(model=m, epoch=ep, lr=0.1, train_loss=1 / ep, train_acc=0.5 + ep / 10,
                                        val_acc=0.5 + ep / 10, val_robust_acc=0.1 * ep * (1 + i), seconds=0.1))
        for attack, method, norm, grid in (("clean", "clean", "none", [0.0]), ("fgsm", "fgsm", "linf", eps),
                                          ("pgd20-linf", "pgd", "linf", eps), ("pgd20-l2", "pgd", "l2", [0.5, 1.0, 2.0]),
                                          ("worst_case", "worst_case", "linf", eps)):
            for e in grid:
                acc = max(0.0, 0.95 - e * (1 if robust else 3) - (0.06 if method == "worst_case" else
                                                                    0.05 if method == "pgd" else 0))
                lo, hi = wilson_interval(round(100 * acc), 100)
                rows["robustness"].append(dict(model=m, attack=attack, method=method, norm=norm, loss="ce", steps=20,
                                               restarts=1, eps=e, n=100, accuracy=acc, ci_low=lo, ci_high=hi,
                                               adv_risk=1 - acc, seconds=0.1))
        for e in eps:
            f, p = 0.9 - e * (1 + 2 * (1 - i)), 0.85 - e * (1 + 2 * (1 - i))
            rows["fgsm_pgd_gap"].append(dict(model=m, eps=e, fgsm_acc=f, pgd_acc=p, gap=f - p))
            rows["logit_lipschitz"].append(dict(model=m, eps=e, protocol="search", steps=10, n=32,
                                                mean=300.0 / (1 + 10 * i), median=290.0, sem=3.0))
            for metric in ("gamma", "grad_alignment"):
                v = e * 10 / (1 + 5 * i) if metric == "gamma" else 1 - e
                rows["linearity"].append(dict(model=m, eps=e, metric=metric, n=32, mean=v, median=v, q10=0.5 * v,
                                              q90=1.5 * v, sem=0.01))
                for ex in range(3):
                    rows["linearity_per_example"].append(dict(model=m, eps=e, metric=metric, example=ex, index=ex,
                                                              value=v * (0.9 + 0.1 * ex)))
        for li, layer in enumerate(LAYERS):
            for norm, grid in (("linf", eps), ("l2", [1.0])):
                for e in grid:
                    for k, kind in enumerate(("rand", "loss", "feat")):
                        mean = (li + 1) * (k + 1) * (10 if not robust else 3)
                        rows["lipschitz"].append(dict(
                            model=m, layer=layer, layer_index=li, feature_dim=64, norm=norm, eps=e, kind=kind, n=32,
                            mean=float(mean), median=float(mean), q10=0.8 * mean, q90=1.2 * mean, sem=0.1,
                            rel_mean=0.1 * (li + 1), rel_median=0.1, over_random=float(k + 1)))
                        for ex in range(3):
                            rows["lipschitz_per_example"].append(dict(
                                model=m, layer=layer, layer_index=li, norm=norm, eps=e, kind=kind, example=ex, index=ex,
                                ratio=float(mean) * (0.9 + 0.1 * ex)))
            for e in (0.0, 0.2):
                rows["linear_probe"].append(dict(model=m, layer=layer, layer_index=li, feature_dim=64, eps=e,
                                                 accuracy=0.95 - e * (2 - i), val_accuracy=0.9, C=1.0,
                                                 train_examples=200))
        for ex in range(2):
            for a in np.linspace(-2, 2, 5):
                for b in np.linspace(-2, 2, 5):
                    rows["loss_surface"].append(dict(model=m, example=ex, eps=0.2, a=float(a), b=float(b),
                                                     loss=float(np.exp(a * (2 - i)) + 0.1 * b * b)))
            for direction in ("gradient", "random"):
                for t in np.linspace(-2, 2, 5):
                    rows["loss_slice"].append(dict(model=m, example=ex, eps=0.2, direction=direction, t=float(t),
                                                   loss=float(np.exp(t) if direction == "gradient" else 1.0)))
        for method in ("saliency", "integrated_gradients"):
            for ex in range(3):
                rows["saliency_metrics"].append(dict(model=m, method=method, example=ex, index=ex, gini=0.5 + 0.1 * i,
                                                     infidelity=float(rng.uniform(0.001, 0.01)),
                                                     sensitivity=float(rng.uniform(0.05, 0.2))))
        for check, status in (("monotone_in_eps", "pass"), ("large_eps_chance", "warn" if robust else "pass")):
            rows["soundness"].append(dict(model=m, check=check, status=status, value=0.3, threshold=0.11,
                                          p_value=0.001, detail=f"{check} on {m}"))
    ref = models[0]
    for m in models[1:]:
        pair = f"{ref}~{m}"
        rows["pairs"].append(dict(pair=pair, architecture="small_cnn", reference=ref, model=m))
        for method in ("saliency", "integrated_gradients"):
            for ex in range(3):
                rows["saliency_agreement"].append(dict(pair=pair, reference=ref, model=m, method=method, example=ex,
                                                       spearman=0.5))
        for src, dst in ((ref, m), (m, ref)):
            for e in eps:
                rows["transfer"].append(dict(architecture="small_cnn", source=src, target=dst, attack="fgsm", method="fgsm",
                                             norm="linf", loss="ce", steps=1, restarts=1, eps=e, n=100,
                                             accuracy=0.9 - e, adv_risk=0.3))
    combos = [(m, m) for m in models] + [(ref, m) for m in models[1:]]
    for a, b in combos:
        for kind in ("linear", "debiased"):
            for ia, la in enumerate(LAYERS):
                for ib, lb in enumerate(LAYERS):
                    rows["cka"].append(dict(model_a=a, model_b=b, layer_a=la, layer_b=lb, layer_a_index=ia,
                                            layer_b_index=ib, kind=kind, value=float(1 - abs(ia - ib) / 4)))
    for m in models:
        for e in (0.1, 0.2):
            for restart in (0, 1):
                for step in range(4):
                    rows["attack_curves"].append(dict(model=m, attack="pgd3-linf-r2", method="pgd", norm="linf", loss="ce",
                                                      eps=e, restart=restart, step=step, n=100, mean_loss=0.5 + step * e,
                                                      accuracy=0.9 - step * e))
            for ex in range(3):
                rows["per_example"].append(dict(model=m, attack="fgsm", norm="linf", eps=e, index=ex, label=ex,
                                                prediction=ex, correct=True, loss=0.1))
                rows["per_example"].append(dict(model=m, attack="worst_case", norm="linf", eps=e, index=ex, label=ex,
                                                prediction=(ex + 1) % 3 if ex else -1, correct=False, loss=0.4))
                rows["soundness_per_example"].append(dict(model=m, job="more_steps", attack="pgd40-linf", norm="linf",
                                                          eps=e, index=ex, correct=ex > 0, loss=0.2))
                rows["worst_case_per_example"].append(dict(model=m, attack="apgd-ce", norm="linf", eps=e, index=ex,
                                                           correct=ex > 1, loss=0.3))
            for attack in ("apgd-ce", "apgd-t"):
                rows["worst_case_cascade"].append(dict(model=m, norm="linf", eps=e, attack=attack,
                                                       targets=9 if attack == "apgd-t" else np.nan, status="ran",
                                                       candidates=3, broken=1, seconds=0.5))
    for m in models[1:]:
        rows["significance"].append(dict(reference=ref, model=m, measure="worst_case", norm="linf", eps=0.2, test="mcnemar",
                                         n=100, reference_value=0.3, model_value=0.7, difference=0.4, ci_low=0.3,
                                         ci_high=0.5, b=2, c=42, p_value=1e-10, p_holm=3e-10, significant=True))
    for i, m in enumerate(models + ["(seed)"]):
        for task, measure in (("inversion", "SSIM to target"), ("synthesis", "judge agrees with the class")):
            v = 0.3 + 0.2 * i
            rows["represent"].append(dict(model=m, task=task, measure=measure, n=10, value=v, ci_low=v - 0.1,
                                          ci_high=v + 0.1, interval="wilson"))
    for m in models:
        for item in range(3):
            rows["represent_per_example"].append(dict(
                model=m, task="synthesis", item=item, index=-1, source_class=item, target_class=item, seed=0,
                distance=np.nan, ssim=np.nan, nl2=np.nan, model_label=item, judge_label=item, judge_agrees=True,
                cosine=np.nan))
    rows["represent_tests"].append(dict(reference=ref, model=models[1], task="synthesis", measure="judge agrees",
                                        test="mcnemar", n=3, reference_value=1.0, model_value=1.0, difference=0.0,
                                        ci_low=0.0, ci_high=0.0, b=0, c=0, p_value=1.0, p_holm=1.0, significant=False))
    rows["represent_judge"].append(dict(judge="scikit-learn logistic on pixels", train_accuracy=1.0, test_accuracy=0.9,
                                        test_examples=10))
    for i, m in enumerate(models):  # common corruptions: clean, then two corruptions at two severities
        rows["corruptions"].append(dict(model=m, corruption="clean", severity=0, n=100, accuracy=0.95, ci_low=0.9,
                                        ci_high=0.98, error=0.05, distance=0.0))
        for name in ("fog", "contrast"):
            for s in (1, 5):
                acc = 0.9 - 0.1 * s - 0.05 * i
                rows["corruptions"].append(dict(model=m, corruption=name, severity=s, n=100, accuracy=acc,
                                                ci_low=acc - 0.05, ci_high=acc + 0.05, error=1 - acc, distance=0.5 * s))
            rows["corruption_errors"].append(dict(model=m, baseline=models[0], corruption=name, accuracy=0.6 - 0.05 * i,
                                                  ci_low=0.55, ci_high=0.65, ce=1 + 0.1 * i, relative_ce=1 + 0.2 * i,
                                                  max_rise=-0.4, rise_p=1.0))
        rows["corruption_errors"].append(dict(model=m, baseline=models[0], corruption="mean", accuracy=0.6 - 0.05 * i,
                                              ci_low=0.55, ci_high=0.65, ce=1 + 0.1 * i, relative_ce=1 + 0.2 * i,
                                              max_rise=-0.4, rise_p=np.nan))
        for li, layer in enumerate(("conv1", "fc1")):  # representations under two threat models
            for threat, budget in (("linf", 0.2), ("spatial", 1.0)):
                for kind, change in (("threat", 0.6 - 0.2 * i), ("random", 0.3)):
                    rows["threat_features"].append(dict(
                        model=m, threat=threat, budget=budget, layer=layer, layer_index=li, kind=kind, change=change,
                        ci_low=change - 0.02, ci_high=change + 0.02, vs_random=(0.6 - 0.2 * i) / 0.3, cka=0.8,
                        probe_accuracy=0.5 + 0.2 * i, probe_clean_accuracy=0.95))
    out = {k: pd.DataFrame(v, columns=list(TABLES[k][1])) for k, v in rows.items()}
    # derived from per_example by the per-class table step
    out["per_class"] = per_class_table(out["per_example"], ["cat", "dog", "ship"])
    out["adversarial_confusion"] = confusion_table(out["per_example"], 0.2, ["cat", "dog", "ship"])
    return out


def synthetic_represent_arrays(models: list[str] = MODELS, n: int = 3, classes: int = 3) -> dict[str, np.ndarray]:
    """What arrays/represent.npz holds (workbench.represent.run), with random images."""
    rng = np.random.default_rng(0)

    def img(*lead: int) -> np.ndarray:
        return rng.uniform(size=(*lead, 1, 8, 8)).astype(np.float32)

    out: dict[str, np.ndarray] = {"models": np.array(models), "inversion.targets": img(n), "inversion.seeds": img(n),
                                  "inversion.labels": np.arange(n), "synthesis.seeds": img(classes),
                                  "synthesis.classes": np.arange(classes), "perceptual.x": img(n),
                                  "perceptual.source": np.zeros(n, dtype=int),
                                  "perceptual.target": np.tile(np.arange(1, classes), (n, 1)),
                                  "gallery.x": img(n), "gallery.labels": np.arange(n),
                                  "gallery.why": np.array(["seeded"] * n), "gallery.eps": np.array(0.2)}
    for j, _ in enumerate(models):
        out |= {f"inversion.x.{j}": img(n), f"features.x.{j}": img(4), f"features.index.{j}": np.array([0, 0, 5, 5]),
                f"features.class.{j}": np.array([1, 1, 2, 2]), f"synthesis.x.{j}": img(classes),
                f"perceptual.adv.{j}": img(n, classes - 1), f"gallery.adv.{j}": img(n),
                f"gallery.pred.{j}": np.arange(n)}
    return out


def synthetic_training_samples(models: list[str] = MODELS, classes: int = 3) -> dict[str, np.ndarray]:
    """What arrays/training_samples.npz holds (runner.training_arrays; robust_features' sample)."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {"models": np.array(models)}
    for j, _ in enumerate(models):
        lab = np.repeat(np.arange(classes), 2)
        out |= {f"index.{j}": np.arange(2 * classes), f"x.{j}": rng.uniform(size=(2 * classes, 1, 8, 8)),
                f"original.{j}": rng.uniform(size=(2 * classes, 1, 8, 8)), f"label.{j}": lab,
                f"original_label.{j}": (lab + j) % classes}
    return out


def synthetic_saliency(models: list[str] = MODELS, n: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {"inputs": rng.uniform(size=(n, 1, 8, 8)).astype(np.float32), "labels": np.arange(n),
            "index": np.arange(n),
            "maps": {meth: {m: rng.normal(size=(n, 1, 8, 8)).astype(np.float32) for m in models}
                     for meth in ("saliency", "smoothgrad")}}


def test_synthetic_tables_have_exactly_the_schema_columns():
    for name, df in synthetic_tables().items():
        assert list(df.columns) == list(TABLES[name][1]), name
        assert len(df), name


@pytest.mark.parametrize("spec", [s for s in figures() if s.name != "saliency"], ids=lambda s: s.name)
def test_every_figure_draws_from_its_tables_and_skips_without_them(spec):
    tables = synthetic_tables()
    if spec.arrays is not None:  # drawn from the run's arrays (and tables)
        arrays = synthetic_training_samples() if spec.arrays == "training_samples.npz" else synthetic_represent_arrays()
        fig = resolve(spec.draw)(arrays, tables)
        assert fig is not None and sum(len(ax.images) for ax in fig.axes) > 0, spec.name
        assert resolve(spec.draw)({"models": np.array(MODELS)}, tables) is None  # its part of the probe was not run
        return
    fig = resolve(spec.draw)(tables, main_eps=0.2)
    assert fig is not None and fig.axes, spec.name
    assert sum(len(ax.lines) + len(ax.images) + len(ax.patches) + len(ax.collections) for ax in fig.axes) > 0
    without = {k: v for k, v in tables.items() if k not in spec.needs}
    assert resolve(spec.draw)(without, main_eps=0.2) is None
    empty = {**tables, **{k: tables[k].iloc[0:0] for k in spec.needs}}  # a table with no rows = not run
    assert resolve(spec.draw)(empty, main_eps=0.2) is None


def test_derived_samples_label_each_original_on_its_tile_and_rule_between_models():
    """An original's own label (D_det, D_rand) sits on its tile, not in a row label listing
    them all (unreadable: it cannot be matched to a column); models are ruled apart."""
    from workbench.represent.figures import derived_samples

    arrays = synthetic_training_samples(classes=10)  # model j: original labels shifted by j
    fig = derived_samples(arrays, synthetic_tables())
    (ax,) = fig.axes
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert len(rows) == 2 * len(MODELS) and max(len(r) for r in rows) <= 40, rows
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in np.repeat(np.arange(10), 2)]
    # model 0's originals keep their label: no notes; every other model's: one per tile, its own label
    notes = [t.get_text() for t in ax.texts]
    expected = [str(int(c)) for j in range(1, len(MODELS)) for c in arrays[f"original_label.{j}"]]
    assert notes == expected
    assert len(ax.lines) == len(MODELS) - 1  # a rule between consecutive models


def test_saliency_grid_has_a_column_per_method_and_model():
    sal = synthetic_saliency()
    fig = F.saliency_grid(sal, synthetic_tables())
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "input" and len(labels) == 1 + 2 * len(MODELS)
    assert labels[1] == f"saliency\n{MODELS[0]}" and labels[2] == f"saliency\n{MODELS[1]}"
    assert len(ax.get_yticklabels()) == 3
    assert F.saliency_grid(None, {}) is None and F.saliency_grid({"maps": {}}, {}) is None


def test_loss_surface_shares_one_colour_scale_per_example():
    fig = F.loss_surface(synthetic_tables(), main_eps=0.2)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 * len(MODELS)  # 2 examples × 2 models
    for row in (images[:2], images[2:]):
        assert row[0].get_clim() == row[1].get_clim()


def test_helpers_choose_eps_as_documented():
    assert F.eps_label(8 / 255) == "8/255" and F.eps_label(0.2) == "0.2" and F.eps_label(0.05) == "0.05"
    assert F.closest([0.1, 0.2, 0.3], 0.26) == 0.3 and F.closest([0.25, 0.75], 0.5) == 0.25  # tie: the smaller
    assert F.middle([2.0, 0.5, 1.0]) == 1.0 and F.middle([0.5, 1.0]) == 1.0


def test_render_writes_the_study_formats(tmp_path):
    fig = F.training_curves(synthetic_tables())
    png, files = F.render(fig, "curves", tmp_path, ("png", "svg"))
    assert png.startswith(b"\x89PNG") and (tmp_path / "curves.png").read_bytes() == png
    assert (tmp_path / "curves.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert set(files) == {"png", "svg"}


# --------------------------------------------------------------------------- the real report


def expected_figures(runs) -> set[str]:
    names = {"accuracy_vs_eps", "training_curves", "per_class_accuracy", "adversarial_confusion",
             "attack_curves"}  # evaluation.curves is on by default and the study runs PGD
    if runs["probes"]:
        names |= {s.name for s in figures() if s.section in ("representations", "encode")} | {"fgsm_pgd_gap", "gallery"}
        names.discard("derived_samples")  # only a model trained on a derived set has one (test_represent)
    if runs["soundness"]:
        names.add("soundness")
    return names


@pytest.mark.slow
def test_report_has_every_section_and_embeds_every_figure(runs):
    path = runs["full"] / "index.html"
    page = page_of(path)
    assert {"summary", "robustness", "representations", "soundness", "provenance", "summary-table"} <= page.ids
    assert ("encode" in page.ids) == runs["probes"]  # the represent probe's section, only when it ran
    names = [f["name"] for f in page.figures]
    assert set(names) == expected_figures(runs) and len(names) == len(set(names))
    for f in page.figures:
        size = decode_png(f["img"]["src"])
        assert size == (int(f["img"]["width"]), int(f["img"]["height"])) and min(size) > 100, f["name"]
        for fmt in ("png", "svg"):
            assert (runs["full"] / "figures" / f"{f['name']}.{fmt}").stat().st_size > 1000
    text = path.read_text(encoding="utf-8")
    for spec in figures():
        if spec.name in names:
            assert spec.caption in html.unescape(text)  # the reading sentence is under the figure
    # provenance: resolved study, versions, commit, device, seed, timings, store keys
    res = load(runs["full"])
    assert res.environment["versions"]["torch"] in text and str(res.environment["seed"]) in text
    for key in res.models["key"]:
        assert key in text
    assert "timings" in text.lower() and "git commit" in text
    shown = re.search(r"<pre>(.*?)</pre>", text, re.S).group(1)
    assert yaml.safe_load(html.unescape(shown)) == yaml.safe_load((runs["full"] / "study.yaml").read_text())


@pytest.mark.slow
def test_summary_numbers_equal_the_tables(runs):
    res = load(runs["full"])
    rob = res.robustness
    page = page_of(runs["full"] / "index.html")
    rows = {r["model"]["text"]: r for r in page.rows("summary-table")}
    assert list(rows) == res.model_ids
    main = res.study.main_eps()
    assert main == 0.2
    for m in res.model_ids:
        clean = rob[(rob.model == m) & (rob.attack == "clean")].accuracy.item()
        assert rows[m]["clean accuracy (%)"]["text"] == f"{100 * clean:.1f}"
        assert float(rows[m]["clean accuracy (%)"]["sort"]) == clean
        for attack, eps, norm in (("fgsm", 0.2, "L∞"), ("pgd5-linf", 0.2, "L∞"), ("pgd5-l2", 1.0, "L2")):
            acc = rob[(rob.model == m) & (rob.attack == attack) & np.isclose(rob.eps, eps)].accuracy.item()
            cell = rows[m][f"{attack} (%) {norm} ε={eps:g}"]
            assert cell["text"] == f"{100 * acc:.1f}" and float(cell["sort"]) == acc
    lip_cols = [h for h in page.headers["summary-table"] if h.startswith("Lipschitz")]
    assert len(lip_cols) == 1
    if runs["probes"]:
        lip = res.lipschitz
        assert lip_cols[0] == "Lipschitz D at fc1 (δ_loss, L∞ ε=0.2)"  # small_cnn's penultimate layer
        for m in res.model_ids:
            want = lip[(lip.model == m) & (lip.layer == "fc1") & (lip.norm == "linf") & (lip.kind == "loss")
                       & np.isclose(lip.eps, 0.2)]["mean"].item()
            assert float(rows[m][lip_cols[0]]["sort"]) == want
    # the library view agrees with the page
    df = summary_table(res)
    assert df["clean accuracy (%)"].tolist() == [rob[(rob.model == m) & (rob.attack == "clean")].accuracy.item()
                                                  for m in res.model_ids]


@pytest.mark.slow
def test_report_without_probes_still_complete(runs):
    page = page_of(runs["plain"] / "index.html")
    # the evaluation's own figures (accuracy against ε, per class, ...) and the training curves; none of a probe
    from workbench.views import figures

    names = {f["name"] for f in page.figures}
    assert {"accuracy_vs_eps", "training_curves"} <= names
    assert not names & {s.name for s in figures() if s.section in ("representations", "encode")}
    text = (runs["plain"] / "index.html").read_text(encoding="utf-8")
    assert "No representation probes were run" in text and "checks were not run" in text
    assert 'id="encode"' not in text  # no represent probe: no section for it
    rows = page.rows("summary-table")
    lip = [h for h in page.headers["summary-table"] if h.startswith("Lipschitz")][0]
    assert all(r[lip]["text"] == "" and r["soundness"]["text"] == "" for r in rows)
    # main ε 0.1 comes from evaluation.main_eps; formats: PNG only
    assert "fgsm (%) L∞ ε=0.1" in page.headers["summary-table"]
    assert not list((runs["plain"] / "figures").glob("*.svg"))


@pytest.mark.slow
def test_no_external_references(runs):
    for path in (runs["full"] / "index.html", runs["plain"] / "index.html", runs["compare"] / "index.html"):
        text = path.read_text(encoding="utf-8")
        page = Page(text)
        assert_no_external_references(page, text)
        assert "Content-Security-Policy" in text and "default-src 'none'" in text
        assert len(page.scripts) == 1  # only the report's own (hashed) script


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_user_text_is_escaped(runs, tmp_path):
    run = _copy_run(runs["plain"], tmp_path / "evil")
    study = yaml.safe_load((run / "study.yaml").read_text())
    study["description"] = "<script>alert(1)</script> & more"
    (run / "study.yaml").write_text(yaml.safe_dump(study))
    models = load(run).model_ids
    weird = "x&<>\"'y"
    snd = pd.DataFrame([dict(model=m, check=weird, status="pass", value=1.0, threshold=2.0,
                             detail='<img src=x onerror="alert(2)">') for m in models], columns=list(TABLES["soundness"][1]))
    RunFolder(run).write_table("soundness", snd)
    text = write_report(run).read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text
    assert weird not in text and "x&amp;&lt;&gt;&#34;&#39;y" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in text
    page = Page(text)
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]
    assert [r["check"]["text"] for r in page.rows("soundness-table")] == [weird] * len(models)  # shown as text


@pytest.mark.slow
def test_soundness_verdicts_and_table(runs, tmp_path):
    run = _copy_run(runs["plain"], tmp_path / "checked")
    ref, robust = load(run).model_ids
    snd = pd.DataFrame([
        dict(model=ref, check="monotone_in_eps", status="pass", value=0.0, threshold=0.005, detail="ok"),
        dict(model=robust, check="monotone_in_eps", status="pass", value=0.0, threshold=0.005, detail="ok"),
        dict(model=robust, check="large_eps_chance", status="warn", value=0.42, threshold=0.11, detail="too high"),
    ], columns=list(TABLES["soundness"][1]))
    RunFolder(run).write_table("soundness", snd)
    page = page_of(write_report(run))
    verdict = {r["model"]["text"]: r["soundness"] for r in page.rows("summary-table")}
    assert verdict[ref]["text"] == VERDICT_OK and verdict[robust]["text"] == VERDICT_WARN
    assert "verdict-warn" in verdict[robust]["cls"]
    rows = page.rows("soundness-table")
    assert [(r["model"]["text"], r["check"]["text"], r["status"]["text"]) for r in rows] == [
        (ref, "monotone_in_eps", "pass"), (robust, "monotone_in_eps", "pass"), (robust, "large_eps_chance", "warn")]
    assert rows[2]["value"]["text"] == "0.42" and rows[2]["threshold"]["text"] == "0.11"
    assert "soundness" in {f["name"] for f in page.figures}
    # an attack comparison whose stronger attack the worst case holds: a warning, not of the worst case
    snd = snd.assign(check=[*snd["check"][:2], "more_steps"], worst_case_drop=[np.nan, np.nan, 0.0],
                     affects_worst_case=[False, False, False])
    RunFolder(run).write_table("soundness", snd)
    text = write_report(run).read_text(encoding="utf-8")
    verdict = {r["model"]["text"]: r["soundness"] for r in Page(text).rows("summary-table")}
    assert verdict[robust]["text"] == VERDICT_HELD and "verdict-ok" in verdict[robust]["cls"]
    assert "Single attacks overestimate, the worst case does not: " + robust in text
    assert "Robust accuracy may be overestimated" not in text


@pytest.mark.slow
def test_rewriting_a_report_drops_figures_no_longer_drawn(runs, tmp_path):
    run = _copy_run(runs["plain"], tmp_path / "stale")
    (run / "figures" / "cka.png").write_bytes(b"stale")
    write_report(run)
    assert not (run / "figures" / "cka.png").exists()


# --------------------------------------------------------------------------- comparison


@pytest.mark.slow
def test_comparison_joins_runs_and_computes_differences(runs):
    out = runs["compare"]
    page = page_of(out / "index.html")
    assert {f["name"] for f in page.figures} == ({"accuracy_vs_eps", "lipschitz_profiles", "measure_scatter"}
                                                 if runs["probes"] else {"accuracy_vs_eps"})
    # every model of every run in one table, worst case with its interval, below clean
    cross = pd.read_parquet(out / "tables" / "cross_model.parquet")
    assert len(cross) == 4 and set(cross.run) == {"full", "plain"}
    assert (cross["worst case"] <= cross["clean"]).all()
    assert (cross["worst ci_low"] <= cross["worst case"]).all() and (cross["worst case"] <= cross["worst ci_high"]).all()
    assert len(page.rows("cross-model-table")) == 4
    if runs["probes"]:
        full_rows = cross[cross.run == "full"]
        assert full_rows["lipschitz_penultimate"].notna().all() and full_rows["gamma"].notna().all()
    for f in page.figures:
        decode_png(f["img"]["src"])
    rob = pd.read_parquet(out / "tables" / "robustness.parquet")
    assert list(rob.columns)[0] == "run" and set(rob.run) == {"full", "plain"}
    full, plain = load(runs["full"]), load(runs["plain"])
    assert len(rob) == len(full.robustness) + len(plain.robustness)
    diff = differences([full, plain], ["full", "plain"])
    # plain's main ε is 0.1; full evaluated 0.1 too, so Δ is taken at 0.1 against full
    r = diff[(diff.run == "plain") & (diff.attack == "fgsm")].iloc[0]
    m = r["model"]
    a_plain = plain.robustness.query("model == @m and attack == 'fgsm'")
    a_full = full.robustness.query("model == @m and attack == 'fgsm'")
    want = 100 * (a_plain[np.isclose(a_plain.eps, 0.1)].accuracy.item() - a_full[np.isclose(a_full.eps, 0.1)].accuracy.item())
    assert r["eps"] == 0.1 and r["compared with"] == "full" and r["Δ accuracy (points)"] == pytest.approx(want)
    assert diff[diff.run == "full"]["Δ accuracy (points)"].isna().all()
    # the page shows the same table
    shown = [row for row in page.rows("differences-table") if row["run"]["text"] == "plain" and row["attack"]["text"] == "fgsm"]
    assert float(shown[0]["Δ accuracy (points)"]["sort"]) == pytest.approx(want)


def test_run_names_are_disambiguated(tmp_path):
    paths = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]
    assert run_names(paths) == ["a/run", "b/run", "c"]
    assert run_names([tmp_path / "x", tmp_path / "x"]) == ["x", "x-2"]


@pytest.mark.slow
def test_comparison_never_writes_into_a_run_folder(runs, tmp_path):
    before = (runs["plain"] / "index.html").read_bytes()
    with pytest.raises(RunFolderError, match="compared run folders") as e:
        write_comparison([runs["full"], runs["plain"]], runs["plain"])
    assert "\n" not in str(e.value)
    other = _copy_run(runs["plain"], tmp_path / "another-run")
    snapshot = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    with pytest.raises(RunFolderError, match="study.yaml"):
        write_comparison([runs["full"], runs["plain"]], other)
    assert (runs["plain"] / "index.html").read_bytes() == before
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == snapshot


# --------------------------------------------------------------------------- errors


def _malformed(tmp_path: Path, runs) -> dict[str, Path]:
    bad_table = _copy_run(runs["plain"], tmp_path / "bad-table")
    (bad_table / "tables" / "robustness.parquet").write_bytes(b"not parquet")
    no_study = _copy_run(runs["plain"], tmp_path / "no-study")
    (no_study / "study.yaml").unlink()
    return {"missing": tmp_path / "nonexistent", "bad-table": bad_table, "no-study": no_study}


@pytest.mark.slow
def test_report_and_compare_on_missing_or_malformed_run_folders(runs, tmp_path):
    for what, path in _malformed(tmp_path, runs).items():
        for call in (lambda: write_report(path), lambda: write_comparison([runs["full"], path], tmp_path / f"cmp-{what}")):
            with pytest.raises(RunFolderError) as e:
                call()
            msg = str(e.value)
            assert "\n" not in msg and str(path) in msg, (what, msg)
    assert not (tmp_path / "cmp-missing" / "index.html").exists()


def test_compare_needs_two_runs(tmp_path):
    with pytest.raises(WorkbenchError, match="at least two"):
        write_comparison([tmp_path], tmp_path / "out")


def test_cli_report_on_missing_folder_exits_2_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    missing = tmp_path / "nonexistent"
    result = CliRunner().invoke(app, ["report", str(missing)])
    assert result.exit_code == 2
    out = result.output.strip()
    assert out.count("\n") == 0 and out.startswith("error: ") and str(missing) in out
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    result = CliRunner().invoke(app, ["compare", str(missing), str(missing), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "Traceback" not in result.output


def _draw_registered(tables, *, main_eps):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, main_eps])
    return fig


def _column_registered(res):
    return "registered column", {m: 0.5 for m in res.model_ids}


@pytest.mark.slow
def test_the_report_draws_what_components_register(runs, tmp_path, monkeypatch):
    """A new component's figure and summary column appear with no edit to the report code."""
    from workbench.views import FIGURES, MEASURES, FigureSpec, Measure

    spec = FigureSpec("registered", "A registered figure", "Drawn because a component registered it.", "robustness",
                      f"{__name__}:_draw_registered", ("robustness",), order=5)
    monkeypatch.setitem(FIGURES._entries, spec.name, spec)
    monkeypatch.setitem(MEASURES._entries, "registered", Measure("registered", "x", f"{__name__}:_column_registered",
                                                                 summary=True))
    run = _copy_run(runs["plain"], tmp_path / "run")
    page = page_of(write_report(run))
    names = [f["name"] for f in page.figures]
    # placed by its order (5): after accuracy_vs_eps (0), before the figures of higher order
    assert names.index("accuracy_vs_eps") < names.index("registered") < names.index("training_curves")
    assert (run / "figures" / "registered.png").is_file()
    assert "registered column" in summary_table(load(run)).columns


def _note_registered(res):
    return [f"A registered note about {len(res.model_ids)} models."]


@pytest.mark.slow
def test_a_component_adds_a_report_section_with_its_table_and_note(runs, tmp_path, monkeypatch):
    """A section, a table shown in it, a summary note, several summary columns and a threat model of
    compare, all registered by a (pretend) component: the report shows each with no edit to its code."""
    from workbench.report.cross_model import cross_model_table, threats
    from workbench.views import DETAILS, MEASURES, NOTES, REPORT_SECTIONS, Detail, Measure, Note, ReportSection

    monkeypatch.setitem(REPORT_SECTIONS._entries, "mine", ReportSection("mine", "My section", order=15,
                                                                       tables=("robustness",)))
    monkeypatch.setitem(DETAILS._entries, "mine", Detail("mine", "mine", "", "robustness", columns=("model", "attack"),
                                                          open=True, id="mine-table"))
    monkeypatch.setitem(NOTES._entries, "mine", Note("mine", f"{__name__}:_note_registered", order=1))
    monkeypatch.setitem(MEASURES._entries, "two", Measure(
        "two", "", f"{__name__}:_columns_registered", summary=True, many=True, order=0))
    monkeypatch.setitem(MEASURES._entries, "threat", Measure("threat", "my threat", f"{__name__}:_threat_registered",
                                                             threat=True))
    run = _copy_run(runs["plain"], tmp_path / "run")
    text = write_report(run).read_text(encoding="utf-8")
    page = Page(text)
    assert {"mine", "mine-table"} <= page.ids
    assert text.index('id="robustness"') < text.index('id="mine"') < text.index('id="representations"')
    n = len(load(run).model_ids)
    assert {r["attack"]["text"] for r in page.rows("mine-table")} >= {"clean"}
    assert f"A registered note about {n} models." in html.unescape(text)
    heads = page.headers["summary-table"]
    assert heads[2:4] == ["first", "second"]  # order 0: before the clean accuracy
    assert threats()["threat"] == "my threat"
    assert cross_model_table([load(run)], ["r"])["threat"].tolist() == [0.25] * n


def _columns_registered(res):
    return [("first", {m: 0.1 for m in res.model_ids}, "pct"), ("second", {m: "x" for m in res.model_ids}, "text")]


def _threat_registered(res):
    return {m: 0.25 for m in res.model_ids}


def test_the_report_code_names_no_component():
    """html.py and cross_model.py draw what the components register: no probe, check or table step is
    named there (a probe's section, column, note or measure lives with the probe)."""
    import ast
    from pathlib import Path

    import workbench.components  # noqa: F401
    from workbench.probes import PROBES
    from workbench.stages import STAGES, TABLE_STEPS

    names = set(PROBES.in_order()) | set(PROBES.tables())
    names |= {"soundness", "significance", "replicates", "transfer", "worst_case_cascade", "encode", "corruption_errors"}
    names |= {s for s in STAGES.in_order() if s != "evaluate"} | set(TABLE_STEPS.in_order())
    root = Path(workbench.components.__file__).parent / "report"
    # compare is built around the L∞ worst case (what every measure is correlated with) and whether it
    # differs significantly from the pair's reference: those two it may name
    for name, allowed in (("html.py", set()), ("cross_model.py", {"worst_case", "significance"})):
        strings = {n.value for n in ast.walk(ast.parse((root / name).read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not strings & (names - allowed), f"report/{name} names {sorted(strings & (names - allowed))}"
