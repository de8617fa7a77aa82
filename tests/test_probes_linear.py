"""Linear probes: separable and random-label cases, C chosen on validation only, the
dimensionality reduction of wide layers, and the study runner's table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from workbench.data import DataSplits
from workbench.errors import WorkbenchError
from workbench.models import create_model
from workbench.probes.base import ProbeContext, probe_context
from workbench.probes.linear_probe import linear_probe, plan_reduction, run_linear_probe
from workbench.study import study_from_dict
from workbench.tables import TABLES


def _blobs(n_per: int, seed: int, d: int = 5, sep: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = sep * np.eye(3, d)
    x = np.concatenate([rng.standard_normal((n_per, d)) + m for m in means])
    return x, np.repeat(np.arange(3), n_per)


def test_separable_features_give_perfect_accuracy():
    (xtr, ytr), (xva, yva), (xte, yte) = _blobs(30, 0), _blobs(10, 1), _blobs(20, 2)
    res = linear_probe(torch.tensor(xtr), torch.tensor(ytr), xva, yva, {"clean": (xte, yte)}, C_grid=(0.1, 1.0))
    assert res.test_accuracy == {"clean": 1.0}
    assert res.val_accuracy == 1.0 and res.train_accuracy == 1.0
    assert res.converged and set(res.val_scores) == {0.1, 1.0}


def test_random_labels_give_chance_accuracy():
    rng = np.random.default_rng(0)
    xtr, ytr = rng.standard_normal((400, 10)), rng.integers(0, 2, 400)
    xva, yva = rng.standard_normal((200, 10)), rng.integers(0, 2, 200)
    xte, yte = rng.standard_normal((1000, 10)), rng.integers(0, 2, 1000)
    res = linear_probe(xtr, ytr, xva, yva, {"test": (xte, yte)})
    assert abs(res.test_accuracy["test"] - 0.5) < 0.06  # 3.8 standard errors of a coin at n = 1000


def test_C_is_chosen_on_validation_never_on_test():
    # Labels of the validation set are what the strongly regularised probe predicts, those
    # of the test set what the weakly regularised one predicts (same features): choosing
    # on validation picks the small C; choosing on test would pick the large one.
    rng = np.random.default_rng(0)
    xtr = rng.standard_normal((80, 30))
    ytr = (xtr[:, 0] + 0.8 * xtr[:, 1:].sum(axis=1) / np.sqrt(29) + 0.7 * rng.standard_normal(80) > 0).astype(int)
    xev = rng.standard_normal((300, 30))
    small, large = 1e-3, 100.0
    scaler = StandardScaler().fit(xtr)
    pred = {c: LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(xtr), ytr).predict(scaler.transform(xev))
            for c in (small, large)}
    disagree = float((pred[small] != pred[large]).mean())
    assert disagree > 0.05  # precondition: the two probes really differ

    res = linear_probe(xtr, ytr, xev, pred[small], {"test": (xev, pred[large])}, C_grid=(large, small), max_iter=2000)
    assert res.C == small
    assert res.val_accuracy > 0.98 and res.val_scores[small] > res.val_scores[large]
    assert res.test_accuracy["test"] < 1.0 - disagree / 2

    swapped = linear_probe(xtr, ytr, xev, pred[large], {"test": (xev, pred[small])}, C_grid=(small, large), max_iter=2000)
    assert swapped.C == large


def test_ties_pick_the_most_regularised_C():
    (xtr, ytr), (xva, yva) = _blobs(20, 0), _blobs(10, 1)
    res = linear_probe(xtr, ytr, xva, yva, {}, C_grid=(10.0, 0.1, 1.0))
    assert set(res.val_scores.values()) == {1.0} and res.C == 0.1


def test_bad_input_raises():
    x, y = _blobs(5, 0)
    with pytest.raises(WorkbenchError):
        linear_probe(x, y, x[:0], y[:0], {})
    with pytest.raises(WorkbenchError):
        linear_probe(x, np.zeros_like(y), x, y, {})
    with pytest.raises(WorkbenchError):
        linear_probe(x, y, x, y, {}, C_grid=(0.0,))
    with pytest.raises(WorkbenchError):
        linear_probe(x, y, x[:, :2], y, {})


# ---------------------------------------------------------------- reduction


def test_reduction_plans():
    assert plan_reduction((128,), 2048, 0).dim == 128  # narrow: untouched
    assert plan_reduction((64, 32, 32), None, 0).dim == 65536  # no limit
    wide = plan_reduction((64, 32, 32), 2048, 0)  # 2048/64 = 32 ≥ g² → g = 5
    assert wide.pool == (5, 5) and wide.dim == 64 * 25 and wide.projection is None
    tall = plan_reduction((16, 3, 40), 1024, 0)  # g = 8, capped by H = 3
    assert tall.pool == (3, 8) and tall.dim == 16 * 24
    vec = plan_reduction((3000,), 2048, 7)  # a wide vector: fixed random projection
    assert vec.pool is None and vec.dim == 2048
    assert torch.equal(vec.projection, plan_reduction((3000,), 2048, 7).projection)
    many = plan_reduction((4096, 2, 2), 2048, 0)  # more channels than the limit: pool, then project
    assert many.pool == (1, 1) and many.dim == 2048
    feats = torch.randn(2, 4096 * 4)
    assert many(feats).shape == (2, 2048)


def test_pooling_by_hand():
    red = plan_reduction((1, 4, 4), 4, 0)
    feats = torch.arange(16.0).reshape(1, 16)  # one example, NCHW flattening
    # 2×2 means of the quadrants of [[0..3], [4..7], [8..11], [12..15]]
    assert red(feats).tolist() == [[2.5, 4.5, 10.5, 12.5]]
    two = plan_reduction((2, 4, 4), 8, 0)
    maps = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), -3.0)]).reshape(1, 32)
    assert two(maps).tolist() == [[1.0] * 4 + [-3.0] * 4]  # channels stay apart


# ---------------------------------------------------------------- runner


def _toy_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c = a bright 3×3 block in the c-th third of an 8×8 image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.35 * torch.rand(n, 1, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 1:4, 2 * c + 1:2 * c + 4] += 0.6
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def toy_models():
    x, y = _toy_images(96, seed=0)
    out = {}
    for mid, steps in (("small_cnn/standard", 60), ("small_cnn/pgd_at", 0)):  # trained, untrained
        torch.manual_seed(0)
        model = create_model("small_cnn", num_classes=3, in_shape=(1, 8, 8), width=4, fc=8)
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        out[mid] = model.eval()
    return out


def _context(models, cfg: dict, *, val: bool = True) -> ProbeContext:
    study = study_from_dict({
        "name": "t", "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 8}}],
        "recipes": ["standard", {"name": "pgd_at", "eps": 0.1}], "evaluation": {"eps": [0.3]},
        "probes": {"linear_probe": cfg},
    })
    tx, ty = _toy_images(80, seed=1)
    vx, vy = _toy_images(30 if val else 0, seed=2)
    x, y = _toy_images(48, seed=3)
    data = DataSplits("toy", tx, ty, vx, vy, x, y, ["a", "b", "c"], 3, (1, 8, 8), (0.5,), (0.25,))
    return probe_context(study, models, data, device=torch.device("cpu"), seed=0, probe="linear_probe",
                         examples=(x, y, torch.arange(48)), batch_size=32)


def test_runner_table(toy_models):
    ctx = _context(toy_models, {"train_examples": 60, "C": [0.1, 1.0], "max_iter": 200, "steps": 5,
                                "max_features": 16})
    df = run_linear_probe(ctx)["linear_probe"]
    assert list(df.columns) == list(TABLES["linear_probe"][1])
    layers = ["conv1", "conv2", "conv3", "fc1", "logits"]
    assert len(df) == 2 * len(layers) * 2
    assert set(df.eps) == {0.0, 0.3} and set(df.train_examples) == {60}
    dims = df.drop_duplicates("layer").set_index("layer").feature_dim.to_dict()
    # conv1 is 4×8×8 = 256 wide: pooled to 4×2×2; conv3 is 8×2×2 = 32: to 8×1×1
    assert dims == {"conv1": 16, "conv2": 16, "conv3": 8, "fc1": 8, "logits": 3}
    assert df.layer_index.tolist()[:10:2] == [0, 1, 2, 3, 4]
    assert df.accuracy.between(0, 1).all() and df.C.isin([0.1, 1.0]).all()
    # the test features at ε > 0 are adversarial for the trained model: its logits lose
    # class information under PGD, which clean features at every ε would not show
    acc = df[(df.model == "small_cnn/standard") & (df.layer == "logits")].set_index("eps").accuracy
    assert acc[0.0] > 0.9 and acc[0.3] < acc[0.0] - 0.2


def test_runner_carves_validation_when_the_split_is_empty(toy_models):
    ctx = _context({"small_cnn/standard": toy_models["small_cnn/standard"]},
                   {"layers": "penultimate", "train_examples": 50, "C": [1.0], "max_iter": 200, "eps": [0.05]},
                   val=False)
    df = run_linear_probe(ctx)["linear_probe"]
    assert set(df.layer) == {"fc1"} and set(df.eps) == {0.0, 0.05}
    assert set(df.train_examples) == {40}  # 20% of 50 held out to choose C
    assert df.val_accuracy.notna().all()
