"""Saliency: maps of a linear model worked out by hand, the Gini index, Spearman agreement,
captum's metrics on cases with known answers, and the study runner (tables and arrays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench.data import DataSplits
from workbench.errors import RunFolderError, WorkbenchError
from workbench.models import WorkbenchModel, create_model
from workbench.probes.base import ProbeContext, probe_context
from workbench.probes.saliency import (
    attribution_metrics,
    common_correct,
    gini,
    load_saliency,
    run_saliency,
    saliency_maps,
    spearman,
)
from workbench.study import study_from_dict
from workbench.tables import TABLES


def _linear(seed: int = 0, classes: int = 3) -> tuple[WorkbenchModel, torch.Tensor, torch.Tensor]:
    """z = W·flatten(x) + b on 1×4×4 images; returns (model, W (K, 16), b (K,))."""
    torch.manual_seed(seed)
    lin = nn.Linear(16, classes)
    net = nn.Sequential(nn.Flatten(), lin)
    return WorkbenchModel(net, {"flat": "0"}, "flat", in_shape=(1, 4, 4)), lin.weight.detach(), lin.bias.detach()


def _inputs(n: int = 5, seed: int = 1, low: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return low + (1 - low) * torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


# ---------------------------------------------------------------- maps


def test_maps_of_a_linear_model_are_exact():
    model, w, b = _linear()
    x, y = _inputs()
    model.train()  # saliency_maps must switch to eval and come back
    maps = saliency_maps(model, x, y, ig_steps=8, smoothgrad_samples=4)
    assert model.training and all(p.requires_grad for p in model.parameters())
    grad = w[y].reshape(-1, 1, 4, 4)  # ∂z_y/∂x = W[y], whatever x is
    assert maps["saliency"].shape == x.shape
    torch.testing.assert_close(maps["saliency"], grad, atol=1e-6, rtol=0)
    # IG with the zero (black) baseline: x ⊙ W[y]; completeness: Σ = z_y(x) − z_y(0) = W[y]·x
    torch.testing.assert_close(maps["integrated_gradients"], x * grad, atol=1e-6, rtol=0)
    with torch.no_grad():
        z = model(x).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(maps["integrated_gradients"].sum(dim=(1, 2, 3)), z - b[y], atol=1e-5, rtol=0)
    # SmoothGrad averages gradients at noisy inputs: a linear model's gradient is constant
    torch.testing.assert_close(maps["smoothgrad"], grad, atol=1e-6, rtol=0)


def test_target_is_the_true_class():
    model, w, _ = _linear()
    x, _ = _inputs()
    for c in range(3):
        y = torch.full((len(x),), c)
        torch.testing.assert_close(saliency_maps(model, x, y, methods=("saliency",))["saliency"],
                                   w[c].reshape(1, 1, 4, 4).expand_as(x), atol=1e-6, rtol=0)


def _tanh_mlp() -> WorkbenchModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))
    return WorkbenchModel(net, {"hidden": "2"}, "hidden", in_shape=(1, 4, 4))


def test_smoothgrad_is_seeded_and_leaves_the_global_rng_alone():
    model = _tanh_mlp()
    x, y = _inputs()
    state = torch.get_rng_state()
    a = saliency_maps(model, x, y, methods=("smoothgrad",), smoothgrad_samples=4, seed=1)["smoothgrad"]
    assert torch.equal(torch.get_rng_state(), state)
    b = saliency_maps(model, x, y, methods=("smoothgrad",), smoothgrad_samples=4, seed=1)["smoothgrad"]
    c = saliency_maps(model, x, y, methods=("smoothgrad",), smoothgrad_samples=4, seed=2)["smoothgrad"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)  # the noise matters for a nonlinear model


def test_unknown_method_and_mismatched_labels_raise():
    model, _, _ = _linear()
    x, y = _inputs()
    with pytest.raises(WorkbenchError, match="valid methods"):
        saliency_maps(model, x, y, methods=("gradcam",))
    with pytest.raises(WorkbenchError):
        saliency_maps(model, x, y[:2])


# ---------------------------------------------------------------- Gini and Spearman


def test_gini_hand_values():
    d = 64
    assert gini(torch.full((1, d), 0.3)).item() == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(1, d)
    one_hot[0, 17] = -2.5  # sign is ignored: the index is taken of |φ|
    assert gini(one_hot).item() == pytest.approx((d - 1) / d, abs=1e-12)
    # sorted |v| = 0, 0, 1, 3, ‖·‖₁ = 4, weights (d − k + ½)/d = 3.5, 2.5, 1.5, 0.5 (/4):
    # G = 1 − 2·(1·1.5 + 3·0.5)/(4·4) = 1 − 6/16
    assert gini(torch.tensor([[3.0, 0.0, -1.0, 0.0]])).item() == pytest.approx(0.625, abs=1e-12)
    # per example over (N, C, H, W), invariant to a permutation of the pixels
    maps = torch.rand(3, 2, 4, 4)
    g = gini(maps)
    assert g.shape == (3,)
    assert g[1].item() == pytest.approx(gini(maps[1].flatten()[torch.randperm(32)]).item(), abs=1e-12)
    assert np.isnan(gini(torch.zeros(1, 5)).item())


def test_spearman_self_reverse_and_sign():
    a = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    assert spearman(a, a).item() == pytest.approx(1.0)
    assert spearman(a, a.flip(-1).flip(-2)).item() == pytest.approx(-1.0)
    assert spearman(a, -a).item() == pytest.approx(1.0)  # ranks of |φ|
    assert np.isnan(spearman(a, torch.ones_like(a)).item())


# ---------------------------------------------------------------- metrics


def test_metrics_on_a_linear_model():
    model, w, _ = _linear()
    x, y = _inputs(low=0.1)  # no zero pixel: IG's perturbation I/x is defined everywhere
    maps = saliency_maps(model, x, y, ig_steps=8, smoothgrad_samples=4)
    radius = 0.02
    met = attribution_metrics(model, x, y, maps, ig_steps=8, smoothgrad_samples=4, infidelity_samples=8,
                              sensitivity_radius=radius, sensitivity_samples=4)
    for m in maps:
        # z(x) − z(x − I) = Iᵀ W[y] exactly, which every map explains exactly
        assert met[m]["infidelity"].shape == (len(x),)
        assert met[m]["infidelity"].max().item() < 1e-8
    # a constant gradient does not move; IG = x ⊙ W[y] moves by u ⊙ W[y], ‖·‖ ≤ r‖W[y]‖
    assert met["saliency"]["sensitivity"].max().item() < 1e-6
    assert met["smoothgrad"]["sensitivity"].max().item() < 1e-6
    bound = radius * w[y].norm(dim=1) / (x.flatten(1) * w[y]).norm(dim=1)
    ig = met["integrated_gradients"]["sensitivity"].float()
    assert (ig > 0).all() and (ig <= bound * (1 + 1e-4)).all()


def test_infidelity_ranks_a_wrong_map_worse():
    model = _tanh_mlp()
    x, y = _inputs()
    maps = saliency_maps(model, x, y, methods=("saliency",))
    wrong = {"saliency": torch.randn(x.shape, generator=torch.Generator().manual_seed(0))}
    good = attribution_metrics(model, x, y, maps, infidelity_samples=16, sensitivity_samples=2)
    bad = attribution_metrics(model, x, y, wrong, infidelity_samples=16, sensitivity_samples=2)
    assert (good["saliency"]["infidelity"] < bad["saliency"]["infidelity"]).all()


def test_smoothgrad_sensitivity_measures_the_input_not_the_noise():
    # common random numbers: at a vanishing radius, SmoothGrad's map must not change,
    # although two different noise draws give different maps (previous test)
    model = _tanh_mlp()
    x, y = _inputs()
    maps = saliency_maps(model, x, y, methods=("smoothgrad",), smoothgrad_samples=4, seed=3)
    met = attribution_metrics(model, x, y, maps, smoothgrad_samples=4, infidelity_samples=2,
                              sensitivity_radius=1e-6, sensitivity_samples=3, seed=3)
    assert met["smoothgrad"]["sensitivity"].max().item() < 1e-3
    loose = attribution_metrics(model, x, y, maps, smoothgrad_samples=4, infidelity_samples=2,
                                sensitivity_radius=0.2, sensitivity_samples=3, seed=3)
    assert loose["smoothgrad"]["sensitivity"].min().item() > 1e-3


# ---------------------------------------------------------------- example set and runner


class _Lookup(nn.Module):
    """Predicts from a table: pixel (0, 0, 0) holds the example id."""

    def __init__(self, preds: list[int]):
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(preds), 3).float())

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].round().long()]


def test_common_correct_takes_the_first_examples_every_model_gets_right():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    a = _Lookup([0, 1, 2, 1, 1, 2, 0])   # wrong on 3
    b = _Lookup([0, 0, 2, 0, 1, 2, 0])   # wrong on 1
    x = torch.arange(7.0).reshape(7, 1, 1, 1).expand(7, 1, 2, 2).clone()
    assert common_correct({"a": a, "b": b}, x, y, k=3, batch_size=2).tolist() == [0, 2, 4]
    assert common_correct({"a": a, "b": b}, x, y, k=10).tolist() == [0, 2, 4, 5, 6]


def _toy_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c = a bright 3×3 block in the c-th third of an 8×8 image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.35 * torch.rand(n, 1, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 1:4, 2 * c + 1:2 * c + 4] += 0.6
    return x.clamp(0, 1), y


def _trained(steps: int, x: torch.Tensor, y: torch.Tensor) -> WorkbenchModel:
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, in_shape=(1, 8, 8), width=4, fc=8)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def toy_pair():
    """A well trained and a briefly trained model (same init): they agree on most examples."""
    x, y = _toy_images(96, seed=0)
    return _trained(60, x, y), _trained(8, x, y)


def _context(cfg: dict, pair) -> ProbeContext:
    study = study_from_dict({
        "name": "t", "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 8}}],
        "recipes": ["standard", {"name": "pgd_at", "eps": 0.1}], "probes": {"saliency": cfg},
    })
    x, y = _toy_images(40, seed=1)
    data = DataSplits("toy", x, y, x[:0], y[:0], x, y, ["a", "b", "c"], 3, (1, 8, 8), (0.5,), (0.25,))
    models = {"small_cnn/standard": pair[0], "small_cnn/pgd_at": pair[1]}
    return probe_context(study, models, data, device=torch.device("cpu"), seed=0, probe="saliency",
                         examples=(x, y, torch.arange(100, 140)), batch_size=32)


def test_runner_tables_and_saved_maps(tmp_path, toy_pair):
    ctx = _context({"examples": 6, "ig_steps": 4, "smoothgrad_samples": 4, "infidelity_samples": 4,
                            "sensitivity_samples": 2}, toy_pair)
    out = run_saliency(ctx)
    met, agr = out["saliency_metrics"], out["saliency_agreement"]
    assert list(met.columns) == list(TABLES["saliency_metrics"][1])
    assert list(agr.columns) == list(TABLES["saliency_agreement"][1])

    sel = common_correct(ctx.models, ctx.x, ctx.y, 6)
    assert len(sel) == 6 and sel[-1] > 5  # the nearby model is wrong somewhere in front
    assert len(met) == 2 * 3 * 6 and len(agr) == 3 * 6
    assert sorted(set(met["index"])) == (100 + sel).tolist()
    assert met[["gini", "infidelity", "sensitivity"]].notna().all().all()
    assert ((met.gini > 0) & (met.gini < 1)).all()
    assert set(agr.pair) == {"small_cnn/standard~small_cnn/pgd_at"}

    # the maps are an artifact the runner writes, not a file the probe writes
    assert list(ctx.artifacts) == ["arrays/saliency.npz"] and not list(tmp_path.iterdir())
    (tmp_path / "saliency.npz").write_bytes(ctx.artifacts["arrays/saliency.npz"])
    saved = load_saliency(tmp_path / "saliency.npz")
    assert saved["inputs"].shape == (6, 1, 8, 8) and saved["index"].tolist() == (100 + sel).tolist()
    np.testing.assert_array_equal(saved["labels"], ctx.y[sel].numpy())
    assert set(saved["maps"]) == {"saliency", "integrated_gradients", "smoothgrad"}
    assert set(saved["maps"]["saliency"]) == set(ctx.models)
    # the stored map is the model's input gradient on exactly those examples
    want = saliency_maps(ctx.models["small_cnn/pgd_at"], ctx.x[sel], ctx.y[sel], methods=("saliency",))["saliency"]
    np.testing.assert_allclose(saved["maps"]["saliency"]["small_cnn/pgd_at"], want.numpy(), atol=1e-6)
    # and the table's Gini is that of the stored map
    g = gini(torch.from_numpy(saved["maps"]["saliency"]["small_cnn/pgd_at"]))
    rows = met[(met.model == "small_cnn/pgd_at") & (met.method == "saliency")].sort_values("example")
    np.testing.assert_allclose(rows.gini.to_numpy(), g.numpy(), atol=1e-12)
    rho = spearman(torch.from_numpy(saved["maps"]["smoothgrad"]["small_cnn/standard"]),
                   torch.from_numpy(saved["maps"]["smoothgrad"]["small_cnn/pgd_at"]))
    np.testing.assert_allclose(agr[agr.method == "smoothgrad"].sort_values("example").spearman, rho.numpy(), atol=1e-12)


def test_runner_without_metrics(tmp_path, toy_pair):
    ctx = _context({"examples": 3, "methods": ["saliency"], "metrics": False}, toy_pair)
    out = run_saliency(ctx)
    met = out["saliency_metrics"]
    assert list(met.columns) == list(TABLES["saliency_metrics"][1])
    assert set(met.method) == {"saliency"} and len(met) == 2 * 3
    assert met.infidelity.isna().all() and met.gini.notna().all()
    with pytest.raises(RunFolderError):
        load_saliency(tmp_path)
