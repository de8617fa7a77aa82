"""Paired tests of the representation measures (table ``significance``) on real probe runs:
the per-example Lipschitz ratios and linearity values the probes keep, and the rows the
significance table makes of them."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.data import DataSplits
from workbench.models import create_model
from workbench.probes.base import ProbeContext, probe_context
from workbench.probes.linearity import run_linearity
from workbench.probes.lipschitz import run_lipschitz
from workbench.significance import describe, significance_table
from workbench.study import study_from_dict
from workbench.tables import TABLES

REF, OTHER = "small_cnn/standard", "small_cnn/pgd_at"


def _scaled_features(model, factor: float):
    """The same function with the penultimate features (fc1, after its ReLU) ×factor: fc1's
    weights and bias ×factor, the classifier's weights ÷factor (ReLU is positively homogeneous)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.net.fc1[0].weight.mul_(factor)
        m.net.fc1[0].bias.mul_(factor)
        m.net.fc.weight.div_(factor)
    return m


def _tables(second: str) -> dict[str, pd.DataFrame]:
    study = study_from_dict({
        "name": "t", "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 8}}],
        "recipes": ["standard", {"name": "pgd_at", "eps": 0.1}],
        "evaluation": {"eps": [0.1], "eps_l2": [0.5]},
        "probes": {"lipschitz": {"steps": 3, "logit_lipschitz": False}, "linearity": {"steps": 3, "pgd_steps": 2,
                   "surface": {"grid": 3, "examples": 1, "refine": 1}}},
    })
    torch.manual_seed(0)
    base = create_model("small_cnn", num_classes=3, in_shape=(1, 8, 8), width=4, fc=8).eval()
    other = copy.deepcopy(base) if second == "identical" else _scaled_features(base, 3.0)
    models = {REF: base, OTHER: other}
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 1, 8, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    data = DataSplits("toy", x, y, x[:0], y[:0], x, y, ["a", "b", "c"], 3, (1, 8, 8), (0.5,), (0.25,))
    index = torch.arange(100, 160)  # positions in a test split, not 0..n-1
    tables = {}
    for name, run in (("lipschitz", run_lipschitz), ("linearity", run_linearity)):
        ctx = probe_context(study, models, data, device=torch.device("cpu"), seed=0, probe=name,
                            examples=(x, y, index), batch_size=32)
        tables.update(run(ctx))
    return tables


@pytest.fixture(scope="module")
def identical():
    return _tables("identical")


@pytest.fixture(scope="module")
def scaled():
    return _tables("scaled")


def test_per_example_tables_match_the_summaries(identical):
    lpe, lin_pe = identical["lipschitz_per_example"], identical["linearity_per_example"]
    assert list(lpe.columns) == list(TABLES["lipschitz_per_example"][1])
    assert list(lin_pe.columns) == list(TABLES["linearity_per_example"][1])
    assert set(lpe["index"]) == set(range(100, 160))
    # every summary row is the mean of its per-example values
    lip = identical["lipschitz"]
    for _, r in lip.sample(10, random_state=0).iterrows():
        d = lpe[(lpe.model == r.model) & (lpe.layer == r.layer) & (lpe.norm == r.norm) & np.isclose(lpe.eps, r.eps)
                & (lpe.kind == r.kind)]
        assert len(d) == 60 and d["ratio"].mean() == pytest.approx(r["mean"], rel=1e-6)
    for _, r in identical["linearity"].iterrows():
        d = lin_pe[(lin_pe.model == r.model) & (lin_pe.metric == r.metric) & np.isclose(lin_pe.eps, r.eps)]
        assert d["value"].dropna().mean() == pytest.approx(r["mean"], rel=1e-6) and d["value"].notna().sum() == r["n"]


def test_identical_models_differ_in_nothing(identical):
    sig = significance_table(identical, [("small_cnn", REF, OTHER)])
    rep = sig[sig.test == "sign_flip"]
    # penultimate layer (fc1) only, every norm × ε × kind; γ and gradient alignment per ε
    lip = rep[rep.measure.str.startswith("lipschitz")]
    assert set(lip.measure) == {"lipschitz loss (fc1)", "lipschitz feat (fc1)", "lipschitz rand (fc1)"}
    assert set(zip(lip.norm, lip.eps)) == {("linf", 0.1), ("l2", 0.5)}
    assert set(rep.measure) - set(lip.measure) == {"local linearity γ (lower bound)", "gradient alignment"}
    assert (rep.n == 60).all()
    assert (rep.difference == 0).all() and not rep.significant.any() and (rep.p_value == 1).all()


def test_scaled_up_features_give_a_significant_lipschitz_difference(scaled):
    sig = significance_table(scaled, [("small_cnn", REF, OTHER)])
    lip = sig[sig.measure.str.startswith("lipschitz")]
    assert len(lip) == 6 and lip.significant.all()
    ratio = lip.model_value / lip.reference_value
    assert np.allclose(ratio, 3.0, rtol=0.05)  # the same function, features ×3
    assert (lip.ci_low > 0).all()
    # the function is unchanged, so its loss geometry is too
    lin = sig[sig.measure.isin(["local linearity γ (lower bound)", "gradient alignment"])]
    assert len(lin) == 2 and not lin.significant.any()
    text = " ".join(describe(sig))
    assert "lipschitz loss (fc1) (linf ε=0.1)" in text and OTHER in text


def test_seeded_reruns_are_identical(scaled):
    a = significance_table(scaled, [("small_cnn", REF, OTHER)], seed=0)
    b = significance_table(scaled, [("small_cnn", REF, OTHER)], seed=0)
    c = significance_table(scaled, [("small_cnn", REF, OTHER)], seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(a.ci_low.to_numpy(), c.ci_low.to_numpy())
    again = _tables("scaled")
    for name in ("lipschitz_per_example", "linearity_per_example"):
        pd.testing.assert_frame_equal(again[name], scaled[name])


def test_large_differences_stay_significant_across_many_rows():
    # 60 settings, each a clear difference: the sign-flip p-value's floor (1/(1 + sign vectors)) times
    # Holm's 60 must stay below 0.05, which 1,000 resamples would not allow (0.001 × 60)
    rng = np.random.default_rng(0)
    frames = []
    for k in range(60):
        base = rng.lognormal(0, 0.3, 80)
        for model, ratio in ((REF, base), (OTHER, base * 1.5)):
            frames.append(pd.DataFrame({"model": model, "layer": "fc1", "layer_index": 3, "norm": "linf",
                                        "eps": 0.01 * (k + 1), "kind": "loss", "example": range(80),
                                        "index": range(80), "ratio": ratio}))
    sig = significance_table({"lipschitz_per_example": pd.concat(frames)}, [("small_cnn", REF, OTHER)])
    assert len(sig) == 60 and sig.significant.all()
