"""Tests for workbench.probes.lipschitz.

Hand-checkable cases first: for a linear feature map φ(x) = Wx every quantity has a closed
form (the L2 worst case is σ_max(W); the L∞ worst case is max over sign vectors s of
‖Ws‖₂, enumerable for small d; the logit estimate of f(x) = Wx is ‖W‖_{∞→1} = max_s ‖Ws‖₁).
Inputs sit in the middle of [0, 1] so the clip does not bind, except in the tests about
the clip. Then the ordering D(feat) ≥ D(loss) ≥ D(rand) on a small trained CNN, and the
study runner's table schema.
"""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.data import load_dataset
from workbench.errors import WorkbenchError
from workbench.models import WorkbenchModel, create_model
from workbench.probes import run_probes
from workbench.probes.lipschitz import lipschitz, logit_lipschitz, summarize, truncated_forward
from workbench.study import study_from_dict
from workbench.tables import TABLES


def linear_model(W: torch.Tensor, in_shape: tuple[int, int, int]) -> WorkbenchModel:
    """x (N, *in_shape) -> W·flatten(x); layer ``flat`` (= the logits) is Wx."""
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(W)
    return WorkbenchModel(nn.Sequential(nn.Flatten(), lin), {"flat": "1"}, "flat", in_shape=in_shape)


def signs(d: int) -> torch.Tensor:
    """All 2^d sign vectors, (2^d, d)."""
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)))


def mid_inputs(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Inputs in [0.45, 0.55]: a ball of radius ≤ 0.1 (L∞) stays inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return 0.45 + 0.1 * torch.rand(n, *shape, generator=g)


def row(df: pd.DataFrame, **where) -> pd.Series:
    sel = df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"expected one row for {where}, got {len(sel)}"
    return sel.iloc[0]


# --------------------------------------------------------------------------- linear maps


def test_l2_worst_case_reaches_the_largest_singular_value():
    # W = U diag(s) Vᵀ with a known spectrum: sup ‖Wδ‖₂/‖δ‖₂ = s₁ = 3 exactly, while a random
    # direction gets ≈ ‖W‖_F/√d (E‖Wu‖²/‖u‖² = ‖W‖²_F/d for an isotropic u).
    g = torch.Generator().manual_seed(0)
    d, m = 16, 8
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    s = torch.tensor([3.0, 1.5, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2])
    W = U @ torch.diag(s) @ V[:, :m].T
    model = linear_model(W, (1, 4, 4))
    x = mid_inputs(32, (1, 4, 4))
    y = torch.zeros(32, dtype=torch.long)
    df = lipschitz(model, x, y, "flat", 0.05, "l2", kinds=("feat", "rand"))
    feat, rand = row(df, kind="feat"), row(df, kind="rand")
    assert feat.n == 32
    # a lower bound that gets within 0.1% of the true constant, never above it
    assert 0.999 * 3.0 <= feat.q10 and feat.q90 <= 3.0 * (1 + 1e-5)
    fro = float(W.norm()) / math.sqrt(d)  # 0.965
    assert abs(rand["mean"] - fro) < 0.15 * fro
    assert rand.q90 < 0.6 * 3.0
    assert rand.over_random == pytest.approx(1.0) and feat.over_random == pytest.approx(feat["mean"] / rand["mean"])


def test_linf_worst_case_reaches_the_enumerated_maximum():
    # sup over the ε-box of ‖Wδ‖₂/‖δ‖∞ = max over the 64 sign vectors of ‖Ws‖₂ (a convex
    # function peaks at a vertex). Sign ascent can stop at a local vertex; restarts find it.
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 6, generator=g)
    exact = float((signs(6) @ W.T).norm(dim=1).max())
    model = linear_model(W, (1, 2, 3))
    x = mid_inputs(16, (1, 2, 3))
    y = torch.zeros(16, dtype=torch.long)
    df = lipschitz(model, x, y, "flat", 0.1, "linf", kinds=("feat", "rand"), feat_restarts=8)
    feat, rand = row(df, kind="feat"), row(df, kind="rand")
    assert feat.q10 == pytest.approx(exact, rel=1e-5) and feat.q90 == pytest.approx(exact, rel=1e-5)
    # a random vertex: E‖Ws‖² = ‖W‖²_F, so its mean ratio is at most ‖W‖_F (Jensen) < exact
    assert rand["mean"] <= float(W.norm()) + 1e-4 and rand["mean"] < 0.9 * exact


def test_delta_is_measured_after_the_clip():
    # φ = identity (layer "flat" is the flattened input) at x = 1: the clip removes every
    # positive coordinate of δ. After the clip, ‖Δφ‖₂ = ‖δ‖₂, so D = 1 exactly in L2 for
    # every kind; measuring ‖δ‖ before the clip would give about 1/√2.
    d = 8
    torch.manual_seed(0)
    model = WorkbenchModel(nn.Sequential(nn.Flatten(), nn.Linear(d, 3)), {"flat": "0"}, "flat")
    x = torch.ones(32, 1, 2, 4)
    y = torch.zeros(32, dtype=torch.long)
    df = lipschitz(model, x, y, "flat", 0.3, "l2")
    for kind in ("loss", "feat", "rand"):
        r = row(df, kind=kind)
        assert r.n == 32 and r.q10 == pytest.approx(1.0, abs=1e-5) and r.q90 == pytest.approx(1.0, abs=1e-5), kind
        # relative change ‖δ‖₂ / ‖x‖₂ with ‖x‖₂ = √d: at most ε/√d, below it once clipped
        assert 0 < r.rel_mean <= 0.3 / math.sqrt(d) + 1e-6
    # L∞: the random vertex keeps its negative coordinates at −ε, so ‖δ‖∞ = ε and
    # D = ‖δ‖₂/ε = √(number of negative signs) ∈ [0, √d]; about half of them are negative
    r = row(lipschitz(model, x, y, "flat", 0.3, "linf", kinds=("rand",)), kind="rand")
    assert 1.0 <= r.q10 and r.q90 <= math.sqrt(d) and abs(r["mean"] - math.sqrt(d / 2)) < 0.5


def test_examples_whose_perturbation_clips_to_zero_are_excluded():
    # logits (Σx, 0) and label 1: cross-entropy grows with every pixel, so PGD pushes all
    # pixels up; at x = 1 the clip leaves δ = 0 and D is undefined (excluded from n), while
    # at x = 0.5 the attack moves freely. The feature search and random δ move everywhere.
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0] * 4, [0.0] * 4]))
    model = WorkbenchModel(nn.Sequential(nn.Flatten(), lin), {"flat": "0"}, "flat")
    x = torch.cat([torch.ones(6, 1, 2, 2), torch.full((10, 1, 2, 2), 0.5)])
    y = torch.ones(16, dtype=torch.long)
    df = lipschitz(model, x, y, "flat", 0.1, "linf")
    assert row(df, kind="loss").n == 10
    assert row(df, kind="feat").n == 16 and row(df, kind="rand").n == 16
    # the 10 that moved went to x + ε·1: D = ‖ε·1‖₂/ε = √4
    assert row(df, kind="loss")["mean"] == pytest.approx(2.0, rel=1e-5)


def test_logit_lipschitz_of_a_linear_map_is_its_inf_to_one_norm():
    # f(x) = u vᵀx: ‖f(x) − f(x')‖₁/‖x − x'‖∞ = ‖u‖₁ |vᵀδ|/‖δ‖∞ ≤ ‖u‖₁‖v‖₁ = 19.6, reached at
    # δ = ±ε·sign(v). The default search (one start, 10 steps) must reach it for every
    # example; a descent (the reference code's sign error) would end near vᵀδ = 0.
    u = torch.tensor([1.0, -2.0, 0.5])
    v = torch.tensor([0.3, -1.0, 2.0, 0.1, -0.7, 1.5])
    model = linear_model(torch.outer(u, v), (1, 2, 3))
    x = mid_inputs(32, (1, 2, 3))
    values = logit_lipschitz(model, x, 0.1)
    assert values.shape == (32,)
    assert torch.allclose(values, torch.full((32,), 19.6), rtol=1e-5)
    # a generic W: ‖W‖_{∞→1} by enumeration; a local search needs restarts, and never exceeds it
    W = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    exact = float((signs(6) @ W.T).abs().sum(dim=1).max())
    values = logit_lipschitz(linear_model(W, (1, 2, 3)), x, 0.1, restarts=8)
    assert float(values.max()) <= exact * (1 + 1e-5)
    assert summarize(values)["median"] == pytest.approx(exact, rel=1e-5)
    # Yang et al.'s own objective (the ratio) is a valid, weaker ascent: a lower bound too
    ratio = logit_lipschitz(linear_model(W, (1, 2, 3)), x, 0.1, restarts=8, ascend="ratio")
    assert float(ratio.max()) <= exact * (1 + 1e-5) and float(ratio.median()) > 0.8 * exact


def _yang_reference(model, x, eps, noise, steps=10, step_size=0.003):
    """Yang et al.'s estimate_local_lip_v2 (top norm 1, bottom ∞), restated from their public
    code (lolip/utils.py) with the start noise given: plain SGD-free loop, last iterate."""
    def local_lip(xp):
        top = (model(x) - model(xp)).flatten(1).norm(p=1, dim=1)
        return top / (x - xp + 1e-6).flatten(1).norm(p=float("inf"), dim=1)

    x_adv = x + 0.001 * noise
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = -local_lip(x_adv).mean()
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * g.sign()
        x_adv = torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0, 1)
    with torch.no_grad():
        return local_lip(x_adv)


def test_yang2020_protocol_reproduces_their_code_step_for_step():
    from workbench.probes.lipschitz import logit_lipschitz_yang2020
    from workbench.seeds import seeded_generator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    model = WorkbenchModel(net, {"out": "3"}, "out", in_shape=(1, 3, 4))
    x = torch.rand(20, 1, 3, 4, generator=torch.Generator().manual_seed(2))  # some pixels near 0 and 1
    for eps in (0.01, 0.1):
        ours = logit_lipschitz_yang2020(model, x, eps, batch_size=8, seed=3)
        want = []
        for start in range(0, 20, 8):  # the same seeded start noise, batch by batch
            xb = x[start:start + 8]
            noise = torch.randn(xb.shape, generator=seeded_generator("cpu", 3, "logit-lipschitz-yang2020", start, eps))
            want.append(_yang_reference(net, xb, eps, noise))
        torch.testing.assert_close(ours, torch.cat(want), rtol=1e-5, atol=1e-6)
    # its descent ends far below the workbench's search (which keeps the best iterate)
    search = logit_lipschitz(model, x, 0.1, seed=3)
    assert float(search.mean()) > float(ours.mean())


def test_summarize_excludes_nan_and_matches_numpy():
    s = summarize(torch.tensor([1.0, 2.0, float("nan"), 3.0, 4.0]))
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5
    assert s["q10"] == pytest.approx(1.3) and s["q90"] == pytest.approx(3.7)
    assert s["sem"] == pytest.approx(math.sqrt(5 / 3) / 2)
    assert summarize([float("nan")])["n"] == 0 and math.isnan(summarize([])["mean"])


def test_truncated_forward_stops_at_the_layer_and_matches_capture():
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_shape=(1, 8, 8), width=4, fc=8).eval()
    ran = []
    model.net.fc.register_forward_hook(lambda *a: ran.append("fc"))
    x = torch.rand(3, 1, 8, 8)
    with truncated_forward(model, "conv2") as f:
        feats = f(x)
    assert ran == []  # the layers above conv2 never ran
    assert feats.shape == (3, 4 * 4 * 4)
    assert torch.equal(feats, model.net.conv2(model.net.conv1(x)).flatten(1))
    with truncated_forward(model, "logits") as f:
        assert torch.equal(f(x), model(x))  # two full passes
    model(x)  # hooks removed: a normal forward runs to the end
    assert ran == ["fc", "fc", "fc"]


def test_user_errors():
    model = linear_model(torch.eye(4), (1, 2, 2))
    x, y = torch.full((2, 1, 2, 2), 0.5), torch.zeros(2, dtype=torch.long)
    with pytest.raises(WorkbenchError, match="kind"):
        lipschitz(model, x, y, eps=0.1, kinds=("loss", "magic"))
    with pytest.raises(WorkbenchError, match="norm"):
        lipschitz(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(WorkbenchError, match="positive"):
        lipschitz(model, x, y, eps=[0.1, 0.0])
    with pytest.raises(WorkbenchError, match="layer"):
        lipschitz(model, x, y, layers="conv9", eps=0.1)
    with pytest.raises(WorkbenchError, match="start"):
        lipschitz(model, x, y, eps=0.1, kinds=("feat",), feat_restarts=0)
    with pytest.raises(WorkbenchError, match="positive"):
        logit_lipschitz(model, x, 0.0)


# --------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="module")
def trained_cnn():
    """A small CNN trained normally on digits for a few epochs (~3 s on one core)."""
    torch.set_num_threads(1)
    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_shape=data.in_shape, width=8, fc=32,
                         mean=data.mean, std=data.std)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        perm = torch.randperm(len(data.train_y), generator=g)
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(model(data.train_x[b]), data.train_y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    accuracy = (model(data.test_x).argmax(1) == data.test_y).float().mean()
    assert accuracy > 0.9, "the fixture's model did not learn"
    return model, data.test_x[:64], data.test_y[:64]


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_feature_search_beats_the_loss_attack_which_beats_random(trained_cnn, norm, eps):
    # docs/methods.md: D(feat) ≥ D(loss) ≥ D(rand) at every layer. The feature search here starts
    # only from random points (feat_from_loss=False), so feat ≥ loss is a real test of its
    # strength, not a consequence of starting at δ_loss.
    model, x, y = trained_cnn
    df = lipschitz(model, x, y, "all", eps, norm, feat_from_loss=False)
    means = df.pivot_table(index="layer", columns="kind", values="mean")
    assert list(df.layer.unique()) == model.layer_names()
    assert (means["feat"] >= means["loss"]).all(), means
    assert (means["loss"] >= means["rand"]).all(), means
    assert (df.n == len(x)).all()
    # with the PGD-CE start added (the default), the search can only improve, example by example
    both = lipschitz(model, x, y, "all", eps, norm, kinds=("feat",))
    assert (both["mean"].to_numpy() >= df[df.kind == "feat"]["mean"].to_numpy() - 1e-4).all()


def test_same_seed_same_table_and_batching_covers_every_example(trained_cnn):
    model, x, y = trained_cnn
    a = lipschitz(model, x[:20], y[:20], ["conv1", "penultimate"], [0.05, 0.1], batch_size=8, seed=3)
    b = lipschitz(model, x[:20], y[:20], ["conv1", "penultimate"], [0.05, 0.1], batch_size=8, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert (a.n == 20).all() and list(a.columns) == list(TABLES["lipschitz"][1])
    assert set(a.layer) == {"conv1", "fc1"} and a.feature_dim[a.layer == "fc1"].eq(32).all()


# --------------------------------------------------------------------------- study runner


def test_runner_tables_have_exactly_the_schema_columns(trained_cnn):
    model, _, _ = trained_cnn
    data = load_dataset("digits", seed=0)
    study = study_from_dict({
        "name": "t", "architectures": ["small_cnn"], "recipes": ["standard", {"name": "pgd_at", "eps": 0.1}],
        "evaluation": {"eps": [0.1], "eps_l2": []},
        "probes": {"examples": 12, "lipschitz": {"layers": ["conv1", "logits"], "steps": 3}},
    })
    models = {"small_cnn/standard": model, "small_cnn/pgd_at": model}
    tables = run_probes(study, models, data, None, device=torch.device("cpu"))
    assert set(tables) == {"lipschitz", "lipschitz_per_example", "logit_lipschitz"}
    for name, df in tables.items():
        assert list(df.columns) == list(TABLES[name][1]), name
    lip = tables["lipschitz"]
    # the L2 grid is empty, so only L∞ rows: 2 models × 2 layers × 1 ε × 3 kinds
    assert len(lip) == 12 and set(lip.norm) == {"linf"} and set(lip.model) == set(models)
    assert (lip.n == 12).all()
    # both "models" are the same network and see the same random numbers: identical rows
    a, b = (lip[lip.model == m].drop(columns="model").reset_index(drop=True) for m in models)
    pd.testing.assert_frame_equal(a, b)
    ll = tables["logit_lipschitz"]
    assert len(ll) == 2 and (ll.steps == 3).all() and (ll.n == 12).all() and (ll["mean"] > 0).all()

    off = study_from_dict({**study.to_dict(), "probes": {"examples": 12, "lipschitz": {
        "layers": "conv1", "kinds": ["rand"], "logit_lipschitz": False, "eps_l2": [0.5]}}})
    tables = run_probes(off, models, data, None, device=torch.device("cpu"))
    assert set(tables) == {"lipschitz", "lipschitz_per_example"}
    assert set(tables["lipschitz"].norm) == {"linf", "l2"} and set(tables["lipschitz"].kind) == {"rand"}
