"""CKA: exact agreement with the textbook formulas, its invariances, the debiased minibatch
estimator and the study runner's table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from workbench.data import DataSplits
from workbench.errors import WorkbenchError
from workbench.models import create_model, extract_features
from workbench.probes.base import ProbeContext, probe_context
from workbench.probes.cka import bootstrap_cka, centered_gram, cka, cka_matrix, hsic_unbiased, minibatches, run_cka
from workbench.study import study_from_dict
from workbench.tables import TABLES


def _pair(n: int, d1: int, d2: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related representations: Y is a noisy linear map of X (CKA well inside (0, 1))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d1, generator=g, dtype=torch.float64) + 2.0  # off-centre on purpose
    y = x @ torch.randn(d1, d2, generator=g, dtype=torch.float64) + torch.randn(n, d2, generator=g, dtype=torch.float64)
    return x, y


# ---------------------------------------------------------------- naive reference formulas


def naive_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 eq. (1)-(3): HSIC(K, L) = tr(KHLH)/(n−1)², H = I − 11ᵀ/n."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def naive_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012 as a U-statistic: the mean over ordered distinct (i, j, q, r) of
    k_ij l_ij + k_ij l_qr − 2 k_ij l_iq (no closed form involved)."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def test_linear_cka_equals_the_hsic_formula():
    x, y = _pair(12, 5, 7)
    want = naive_linear_cka(x.numpy(), y.numpy())
    assert 0.2 < want < 0.99  # a non-trivial case
    assert cka(x, y) == pytest.approx(want, abs=1e-12)
    assert cka(x.float(), y.float()) == pytest.approx(want, abs=1e-6)  # float32 input, float64 inside


def test_unbiased_hsic_equals_the_u_statistic():
    x, y = _pair(7, 3, 4, seed=1)
    k, l = (x @ x.T).numpy(), (y @ y.T).numpy()
    assert float(hsic_unbiased(torch.from_numpy(k), torch.from_numpy(l))) == pytest.approx(
        naive_unbiased_hsic(k, l), rel=1e-10
    )
    # the estimator ignores a shift of the features, so centred Gram matrices are as good
    assert float(hsic_unbiased(centered_gram(x), centered_gram(y))) == pytest.approx(naive_unbiased_hsic(k, l), rel=1e-10)
    want = naive_unbiased_hsic(k, l) / np.sqrt(naive_unbiased_hsic(k, k) * naive_unbiased_hsic(l, l))
    assert cka(x, y, "debiased") == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("kind", ["linear", "debiased"])
def test_self_similarity_and_symmetry(kind):
    x, y = _pair(30, 6, 9)
    assert cka(x, x, kind) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, y, kind) == pytest.approx(cka(y, x, kind), abs=1e-12)


@pytest.mark.parametrize("kind", ["linear", "debiased"])
def test_invariant_to_orthogonal_maps_isotropic_scaling_and_shifts(kind):
    x, y = _pair(40, 6, 5)
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    base = cka(x, y, kind)
    assert cka(x @ q, y, kind) == pytest.approx(base, abs=1e-10)
    assert cka(3.7 * x, 0.01 * y, kind) == pytest.approx(base, abs=1e-10)
    assert cka(x + 5.0, y - 1.0, kind) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("kind", ["linear", "debiased"])
def test_not_invariant_to_anisotropic_scaling(kind):
    # CKA is invariant to orthogonal maps and isotropic scaling only, not to any
    # invertible linear map; stretching the columns unevenly must change it
    x, y = _pair(40, 6, 5)
    s = torch.linspace(1.0, 10.0, 6, dtype=torch.float64)
    assert abs(cka(x * s, y, kind) - cka(x, y, kind)) > 0.05


def test_gram_path_equals_feature_path():
    x, y = _pair(15, 40, 25)  # wider than n: "auto" takes the Gram path
    feat = cka(x, y, via="features")
    assert cka(x, y, via="gram") == pytest.approx(feat, abs=1e-12)
    assert cka(x, y) == pytest.approx(feat, abs=1e-12)
    assert feat == pytest.approx(naive_linear_cka(x.numpy(), y.numpy()), abs=1e-12)


def test_debiased_minibatch_equals_full_when_one_batch_and_sums_batches():
    x, y = _pair(50, 8, 6)
    full = cka(x, y, "debiased")
    assert cka(x, y, "debiased", batch_size=50) == pytest.approx(full, abs=1e-14)
    assert cka(x, y, "debiased", batch_size=500) == pytest.approx(full, abs=1e-14)
    # batched: Σ_b HSIC over blocks of rows (50 = 16 + 16 + 18: the last 2 rows join the 3rd block)
    assert [(b.start, b.stop) for b in minibatches(50, 16)] == [(0, 16), (16, 32), (32, 50)]
    k, l = centered_gram(x), centered_gram(y)
    blocks = [slice(0, 16), slice(16, 32), slice(32, 50)]
    kl = sum(float(hsic_unbiased(k[b, b], l[b, b])) for b in blocks)
    kk = sum(float(hsic_unbiased(k[b, b], k[b, b])) for b in blocks)
    ll = sum(float(hsic_unbiased(l[b, b], l[b, b])) for b in blocks)
    assert cka(x, y, "debiased", batch_size=16) == pytest.approx(kl / np.sqrt(kk * ll), rel=1e-12)


def test_debiased_minibatch_close_to_full_on_larger_n():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(512, 16, generator=g)
    x = z @ torch.randn(16, 40, generator=g) + torch.randn(512, 40, generator=g)
    y = torch.tanh(z @ torch.randn(16, 30, generator=g)) + 0.5 * torch.randn(512, 30, generator=g)
    full = cka(x, y, "debiased")
    for b in (64, 128, 256):
        assert cka(x, y, "debiased", batch_size=b) == pytest.approx(full, abs=0.03)


def test_debiased_removes_the_high_dimensional_bias():
    # independent 1000-d features of 64 examples: the plug-in linear CKA is far from 0
    # (Nguyen et al. 2021), the unbiased estimate is near 0
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1000, generator=g), torch.randn(64, 1000, generator=g)
    assert cka(x, y) > 0.5
    assert abs(cka(x, y, "debiased")) < 0.05


def test_constant_features_give_nan_and_bad_input_raises():
    x, _ = _pair(10, 4, 4)
    assert np.isnan(cka(x, torch.ones(10, 3)))
    with pytest.raises(WorkbenchError):
        cka(x, x[:9])
    with pytest.raises(WorkbenchError):
        cka(x, x, "rbf")  # type: ignore[arg-type]
    with pytest.raises(WorkbenchError):
        cka(x, x, "debiased", batch_size=3)
    with pytest.raises(WorkbenchError):
        cka(x[:3], x[:3], "debiased")


def test_cka_matrix_labels_and_values():
    x, y = _pair(20, 5, 6)
    z = torch.randn(20, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    a, b = {"l1": x, "l2": y}, {"m1": y, "m2": z, "m3": x}

    def naive(fa, fb, kind):  # the reference formulas above, not cka()
        if kind == "linear":
            return naive_linear_cka(fa.numpy(), fb.numpy())
        k, l = (fa @ fa.T).numpy(), (fb @ fb.T).numpy()
        return naive_unbiased_hsic(k, l) / np.sqrt(naive_unbiased_hsic(k, k) * naive_unbiased_hsic(l, l))

    for kind in ("linear", "debiased"):
        mat = cka_matrix(a, b, kind)
        assert list(mat.index) == ["l1", "l2"] and list(mat.columns) == ["m1", "m2", "m3"]
        for la, fa in a.items():
            for lb, fb in b.items():
                assert mat.loc[la, lb] == pytest.approx(naive(fa, fb, kind), rel=1e-9, abs=1e-12)
    assert cka_matrix(a, b).loc["l2", "m1"] == pytest.approx(1.0)


# ---------------------------------------------------------------- runner


def _context(tmp_path, cfg: dict) -> ProbeContext:
    study = study_from_dict({
        "name": "t", "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 8}}],
        "recipes": ["standard", {"name": "pgd_at", "eps": 0.1}], "probes": {"cka": cfg},
    })
    models = {}
    for seed, mid in enumerate(("small_cnn/standard", "small_cnn/pgd_at")):
        torch.manual_seed(seed)
        models[mid] = create_model("small_cnn", num_classes=3, in_shape=(1, 8, 8), width=4, fc=8).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)
    data = DataSplits("toy", x, y, x[:0], y[:0], x, y, ["a", "b", "c"], 3, (1, 8, 8), (0.5,), (0.25,))
    return probe_context(study, models, data, device=torch.device("cpu"), seed=0, probe="cka",
                         examples=(x, y, torch.arange(24)), batch_size=10)


def test_runner_table_schema_and_values(tmp_path):
    ctx = _context(tmp_path, {"batch_size": 8})
    df = run_cka(ctx)["cka"]
    assert list(df.columns) == list(TABLES["cka"][1])
    layers = ctx.models["small_cnn/standard"].layer_names()
    combos = {("small_cnn/standard", "small_cnn/pgd_at"), ("small_cnn/standard", "small_cnn/standard"),
              ("small_cnn/pgd_at", "small_cnn/pgd_at")}
    assert set(zip(df.model_a, df.model_b)) == combos
    assert len(df) == len(combos) * 2 * len(layers) ** 2
    # the diagonal of a model with itself is 1 (both kinds); indices follow layer order
    self_rows = df[(df.model_a == df.model_b) & (df.layer_a == df.layer_b)]
    assert np.allclose(self_rows.value, 1.0)
    assert all(layers[i] == n for i, n in zip(df.layer_a_index, df.layer_a))
    # linear values equal Kornblith et al.'s formula on the extracted features (row order does not matter)
    fa = extract_features(ctx.models["small_cnn/standard"], ctx.x, "all")
    fb = extract_features(ctx.models["small_cnn/pgd_at"], ctx.x, "all")
    row = df[(df.model_a == "small_cnn/standard") & (df.model_b == "small_cnn/pgd_at") & (df.kind == "linear")
             & (df.layer_a == "conv2") & (df.layer_b == "fc1")]
    want = naive_linear_cka(fa["conv2"].double().numpy(), fb["fc1"].double().numpy())
    assert float(row.value.iloc[0]) == pytest.approx(want, abs=1e-6)


def test_runner_respects_layers_and_kinds(tmp_path):
    ctx = _context(tmp_path, {"layers": ["conv3", "penultimate"], "kinds": ["debiased"]})
    df = run_cka(ctx)["cka"]
    assert set(df.kind) == {"debiased"}
    assert set(df.layer_a) == {"conv3", "fc1"} and set(df.layer_a_index) == {2, 3}


# ---------------------------------------------------------------- bootstrap intervals


def _naive_bootstrap(feats: dict, combos, kind: str, batch_size, samples: int, seed: int) -> dict:
    """Resample the examples (rows) of every feature matrix with the same indices, then the
    plain estimator on the resampled features, with the Gram entries of two copies of one
    example zeroed (the rule bootstrap_cka documents; features centred by the full mean)."""
    n = next(iter(next(iter(feats.values())).values())).shape[0]
    vals = {c: [] for c in combos}
    for idx in np.random.default_rng(seed).integers(0, n, (samples, n)):
        for a, b in combos:
            mat = np.empty((len(feats[a]), len(feats[b])))
            for i, fa in enumerate(feats[a].values()):
                for j, fb in enumerate(feats[b].values()):
                    xa, xb = (fa - fa.mean(0))[idx], (fb - fb.mean(0))[idx]
                    copies = torch.as_tensor(idx[:, None] == idx[None, :]) & ~torch.eye(n, dtype=torch.bool)
                    k, l = (xa @ xa.T) * ~copies, (xb @ xb.T) * ~copies
                    if kind == "linear":
                        h = torch.eye(n, dtype=torch.float64) - 1.0 / n
                        hk, hl = h @ k @ h, h @ l @ h  # Kornblith et al.: tr(KHLH) / √(tr(KHKH) tr(LHLH))
                        mat[i, j] = float(torch.trace(hk @ hl) / torch.sqrt(torch.trace(hk @ hk) * torch.trace(hl @ hl)))
                        continue
                    num = den_a = den_b = 0.0
                    for s in minibatches(n, batch_size):
                        num += float(hsic_unbiased(k[s, s], l[s, s]))
                        den_a += float(hsic_unbiased(k[s, s], k[s, s]))
                        den_b += float(hsic_unbiased(l[s, s], l[s, s]))
                    mat[i, j] = num / np.sqrt(den_a * den_b)
            vals[(a, b)].append(mat)
    return {c: (np.quantile(v, 0.025, axis=0), np.quantile(v, 0.975, axis=0)) for c, v in vals.items()}


@pytest.mark.parametrize("kind,batch_size", [("linear", None), ("debiased", None), ("debiased", 7)])
def test_bootstrap_equals_the_naive_resampling(kind, batch_size):
    x, y = _pair(16, 3, 5)
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    feats = {"A": {"l1": x, "l2": z}, "B": {"m1": y, "m2": y[:, :2] + z[:, :2]}}
    grams = {m: {k: centered_gram(v) for k, v in f.items()} for m, f in feats.items()}
    combos = [("A", "B"), ("A", "A")]
    got = bootstrap_cka(grams, combos, [kind], batch_size, samples=40, seed=5, chunk=15)  # chunks of 15, 15, 10
    want = _naive_bootstrap(feats, combos, kind, batch_size, 40, 5)
    for c in combos:
        assert got[(*c, kind)][0].shape == (2, 2)
        np.testing.assert_allclose(got[(*c, kind)][0], want[c][0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(got[(*c, kind)][1], want[c][1], rtol=0, atol=1e-10)
    lo, hi = got[("A", "A", kind)]
    assert np.allclose(np.diag(lo), 1.0) and np.allclose(np.diag(hi), 1.0)  # a layer with itself


def _related(n: int, d: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two representations sharing a 3-dimensional signal, each with isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x = z @ torch.randn(3, d, generator=g, dtype=torch.float64) + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = z @ torch.randn(3, d, generator=g, dtype=torch.float64) + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y


def _interval(x, y, kind, samples=200):
    grams = {"A": {"x": centered_gram(x)}, "B": {"y": centered_gram(y)}}
    lo, hi = bootstrap_cka(grams, [("A", "B")], [kind], samples=samples, seed=0)[("A", "B", kind)]
    return float(lo[0, 0]), float(hi[0, 0])


@pytest.mark.parametrize("kind", ["linear", "debiased"])
def test_bootstrap_interval_covers_the_value_when_features_are_wide(kind):
    # d ≫ n: left in, the Gram entries of resampled copies push the interval above the point
    # value (linear: [0.966, 0.981] around 0.960 here), for both estimators
    for seed in range(3):
        x, y = _related(40, 500, 3.0, seed)
        lo, hi = _interval(x, y, kind)
        assert lo < cka(x, y, kind) < hi, (seed, lo, cka(x, y, kind), hi)


@pytest.mark.parametrize("kind", ["linear", "debiased"])
def test_bootstrap_interval_shrinks_with_n(kind):
    x, y = _related(640, 20, 1.5)
    small, large = _interval(x[:40], y[:40], kind), _interval(x, y, kind)
    assert small[0] < cka(x[:40], y[:40], kind) < small[1] and large[0] < cka(x, y, kind) < large[1]
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])  # ≈ 1/4 in theory (√(40/640))


def test_bootstrap_seeded_and_runner_columns(tmp_path):
    x, y = _pair(20, 3, 4)
    grams = {"A": {"x": centered_gram(x)}, "B": {"y": centered_gram(y)}}
    one = bootstrap_cka(grams, [("A", "B")], samples=30, seed=1)
    two = bootstrap_cka(grams, [("A", "B")], samples=30, seed=1)
    other = bootstrap_cka(grams, [("A", "B")], samples=30, seed=2)
    for key in one:
        assert np.array_equal(one[key][0], two[key][0]) and np.array_equal(one[key][1], two[key][1])
    assert not np.array_equal(one[("A", "B", "linear")][0], other[("A", "B", "linear")][0])
    ctx = _context(tmp_path, {"batch_size": 8, "bootstrap": 50})
    df = run_cka(ctx)["cka"]
    again = run_cka(ctx)["cka"]
    assert df[["ci_low", "ci_high"]].equals(again[["ci_low", "ci_high"]])
    finite = df[np.isfinite(df.ci_low)]
    assert len(finite) > 0.9 * len(df)
    assert (finite.ci_low <= finite.ci_high).all()
    off = finite[finite.model_a != finite.model_b]
    assert ((off.ci_low <= off.value + 1e-9) & (off.value <= off.ci_high + 1e-9)).mean() > 0.8
    none = run_cka(_context(tmp_path, {"batch_size": 8, "bootstrap": 0}))["cka"]
    assert none.ci_low.isna().all() and np.allclose(none.value, run_cka(ctx)["cka"].value)
