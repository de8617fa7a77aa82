"""The represent probe: inversion recovers what an invertible map hides, the judge is never
attacked nor changed, synthesis seeds are reproducible, and the runner's tables pair the
models' items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench.data import load_dataset
from workbench.models import WorkbenchModel
from workbench.represent import core
from workbench.represent import run as represent_run
from workbench.represent.judge import JudgeConfig, fit_judge
from workbench.represent.run import RepresentProbe, represent
from workbench.study import study_from_dict


def _targets(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(n, 1, 6, 6, generator=g)  # inside (0, 1): reachable


def _net(seed: int = 0) -> WorkbenchModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return WorkbenchModel(net, {"hidden": "2"}, "hidden", in_shape=(1, 8, 8), num_classes=10)


# ---------------------------------------------------------------- inversion


def test_inversion_through_the_identity_recovers_the_target():
    xt = _targets()
    seeds = core.noise_seeds(tuple(xt.shape), torch.Generator().manual_seed(1))
    got = core.invert(nn.Identity(), xt, seeds, phi=lambda x: x.flatten(1), steps=300, step_size=0.01)
    agree = core.image_agreement(got.x, xt)
    assert float(agree["nl2"].max()) < 0.01
    assert float(got.distance.max()) < 0.01
    assert float(agree["ssim"].min()) > 0.99
    # the seeds themselves are far: the search did the work
    assert float(core.image_agreement(seeds, xt)["nl2"].min()) > 0.2


def test_inversion_through_an_invertible_linear_map_recovers_the_target():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(36, 36, generator=g))
    a = q * torch.linspace(0.5, 2.0, 36)  # condition number 4
    xt = _targets()
    seeds = core.noise_seeds(tuple(xt.shape), torch.Generator().manual_seed(2))
    got = core.invert(nn.Identity(), xt, seeds, phi=lambda x: x.flatten(1) @ a.T, steps=1500, step_size=0.005)
    assert float(core.image_agreement(got.x, xt)["nl2"].max()) < 0.03


def test_image_agreement_of_identical_and_different_images():
    xt = _targets()
    same = core.image_agreement(xt, xt)
    torch.testing.assert_close(same["ssim"], torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(same["nl2"], torch.zeros(4))
    other = core.image_agreement(1 - xt, xt)
    assert float(other["ssim"].max()) < 0.5 and float(other["nl2"].min()) > 0.3


# ---------------------------------------------------------------- synthesis seeds


def test_synthesis_seeds_are_reproducible_and_follow_the_class_gaussians():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(50)
    x = (torch.rand(150, 1, 4, 4, generator=g) * 0.1 + y.float()[:, None, None, None] * 0.3).clamp(0, 1)
    gauss = core.fit_class_gaussians(x, y, 3)
    classes = torch.tensor([0, 1, 2, 2])
    a = core.class_gaussian_seeds(gauss, classes, torch.Generator().manual_seed(7))
    b = core.class_gaussian_seeds(gauss, classes, torch.Generator().manual_seed(7))
    c = core.class_gaussian_seeds(gauss, classes, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # each seed sits near its class's mean image
    means = x.reshape(3, 50, -1).mean(1)
    d = torch.cdist(a.flatten(1), means)
    assert torch.equal(d.argmin(1), classes)


# ---------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _cfg(**over) -> RepresentProbe:
    base = dict(inversion={"examples": 4, "steps": 20}, features={"features": 2, "seeds": 2, "steps": 10},
                synthesis={"per_class": 1, "steps": 10}, perceptual={"examples": 2, "steps": 5, "fool_examples": 8},
                gallery={"examples": 2, "lost": 2, "pool": 8, "steps": 3})
    return RepresentProbe.model_validate({**base, **over})


def test_the_judge_is_never_attacked_nor_changed(digits, monkeypatch):
    models = {"a": _net(0), "b": _net(1)}
    judge = fit_judge(JudgeConfig(), digits.train_x, digits.train_y)
    before = judge.parameters()
    assert before and all(v.size for v in before.values())
    seen: list[object] = []
    real = core.ascend

    def spy(objective, x, eps, steps, **kw):
        seen.append(kw.get("model"))
        return real(objective, x, eps, steps, **kw)

    monkeypatch.setattr(core, "ascend", spy)
    import importlib

    monkeypatch.setattr(importlib.import_module("workbench.attacks.pgd"), "ascend", spy)
    x, y = digits.test_x[:16], digits.test_y[:16]
    represent(models, [("mlp", "a", "b")], digits, x, y, torch.arange(16), _cfg(), seed=0, main_eps=0.1, judge=judge)
    assert seen, "no ascent ran"
    assert all(any(m is s for s in models.values()) for m in seen), "an ascent ran on something other than a studied model"
    after = judge.parameters()
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_runner_is_reproducible_and_pairs_the_models(digits):
    models = {"a": _net(0), "b": _net(1)}
    x, y = digits.test_x[:16], digits.test_y[:16]
    r1 = represent(models, [("mlp", "a", "b")], digits, x, y, torch.arange(16), _cfg(), seed=0, main_eps=0.1)
    r2 = represent(models, [("mlp", "a", "b")], digits, x, y, torch.arange(16), _cfg(), seed=0, main_eps=0.1)
    for k, v in r1.arrays.items():
        np.testing.assert_array_equal(v, r2.arrays[k], err_msg=k)
    np.testing.assert_array_equal(r1.arrays["synthesis.seeds"], r2.arrays["synthesis.seeds"])
    r3 = represent(models, [("mlp", "a", "b")], digits, x, y, torch.arange(16), _cfg(), seed=1, main_eps=0.1)
    assert not np.array_equal(r1.arrays["synthesis.seeds"], r3.arrays["synthesis.seeds"])
    pe = r1.per_example
    assert set(pe["task"]) == {"inversion", "features", "synthesis", "perceptual", "fool"}
    # the same items for both models (paired), and every paired task has a test
    for task in ("inversion", "synthesis", "perceptual", "fool"):
        a, b = pe[(pe.model == "a") & (pe.task == task)], pe[(pe.model == "b") & (pe.task == task)]
        assert list(a["item"]) == list(b["item"]) and list(a["target_class"]) == list(b["target_class"])
        assert task in set(r1.tests["task"])
    assert (pe[pe.task == "perceptual"]["target_class"] != pe[pe.task == "perceptual"]["source_class"]).all()
    s = r1.summary
    assert ((s["ci_low"] <= s["value"] + 1e-12) & (s["value"] <= s["ci_high"] + 1e-12)).all()
    assert r1.tests["p_value"].between(0, 1).all()
    # the gallery: the seeded examples, then those lost by the pair's second model
    assert list(r1.arrays["gallery.why"][:2]) == ["seeded", "seeded"]


def test_study_section_validates():
    s = study_from_dict({"name": "t", "architectures": ["mlp"], "recipes": ["standard"],
                         "probes": {"represent": {"synthesis": None, "judge": {"kind": "svm"}}}})
    assert s.probes.represent.synthesis is None and s.probes.represent.judge.kind == "svm"
    assert s.probes.represent.inversion.layer == "penultimate"


def test_arrays_round_trip(tmp_path):
    arr = {"models": np.array(["x/y", "z"]), "inversion.x.0": np.ones((2, 1, 3, 3), dtype=np.float32)}
    p = tmp_path / "represent.npz"
    p.write_bytes(represent_run.arrays_bytes(arr))
    back = represent_run.load_arrays(p)
    assert list(back["models"]) == ["x/y", "z"] and back["inversion.x.0"].shape == (2, 1, 3, 3)


# ---------------------------------------------------------------- derived data sets (Ilyas et al.)


def test_derived_sets_follow_the_paper(digits):
    from workbench.represent.derived import build_derived

    model = _net(0)
    x, y = digits.train_x[:12], digits.train_y[:12]
    xr, yr, tab = build_derived(model, x, y, "d_r", num_classes=10, seed=0, steps=5)
    assert torch.equal(yr, y) and xr.shape == x.shape and tab["distance"].notna().all()
    xd, yd, tab = build_derived(model, x, y, "d_det", num_classes=10, seed=0, eps=0.5, attack_steps=5)
    assert torch.equal(yd, (y + 1) % 10)
    assert float((xd - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5  # inside the ε-ball
    _, yrand, _ = build_derived(model, x, y, "d_rand", num_classes=10, seed=0, eps=0.5, attack_steps=5)
    _, yrand2, _ = build_derived(model, x, y, "d_rand", num_classes=10, seed=0, eps=0.5, attack_steps=5)
    assert torch.equal(yrand, yrand2) and not torch.equal(yrand, yd)


def _derived_study(source_eps: float) -> dict:
    src = {"name": "pgd_at", "eps": source_eps, "steps": 2}
    return {"name": "t", "seed": 0, "data": {"name": "digits", "limit_train": 96},
            "architectures": [{"name": "mlp", "options": {"hidden": [16]}}],
            "recipes": [src, {"name": "robust_features", "label": "d_r", "set": "d_r", "source": src, "steps": 3}],
            "train": {"epochs": 1, "batch_size": 32}}


def test_a_derived_set_is_reused_and_rebuilt_when_its_source_changes(tmp_path, caplog):
    import logging

    from workbench.runner import load_study_data, model_jobs
    from workbench.store import ModelStore
    from workbench.training import fit

    store = ModelStore(tmp_path / "store")
    results = tmp_path / "store" / "results"

    def train(study_dict):
        study = study_from_dict(study_dict)
        data = load_study_data(study, torch.device("cpu"))
        jobs = model_jobs(study, data)
        src_job, d_job = jobs
        # the source declared inside the recipe is the study's own pgd_at model (one key)
        assert d_job.dependencies()["source"].key() == src_job.key()
        store.quarantine(d_job.key())  # the model on the derived set trains anew (not --retrain: that rebuilds all)
        return fit(d_job, data, store, "cpu")

    def entries():
        return {p.name for p in results.iterdir() if p.is_dir()} if results.is_dir() else set()

    first = train(_derived_study(0.1))
    built = entries()
    assert len(built) == 1
    with caplog.at_level(logging.INFO, logger="workbench"):
        again = train(_derived_study(0.1))  # the model retrains, the set is read back
    assert entries() == built and "reused from the store" in caplog.text
    for k, v in first.model.state_dict().items():
        torch.testing.assert_close(v, again.model.state_dict()[k])
    train(_derived_study(0.2))  # another source model: another set
    assert len(entries()) == 2


def test_the_report_shows_samples_of_each_derived_set_equal_to_the_cached_set(tmp_path):
    """A shrunk studies/robust_features.yaml: the report draws the derived-set sample figure,
    and its images are rows of the set the store's cache holds (each beside its original)."""
    from pathlib import Path

    from workbench.represent.derived import derived_set
    from workbench.runner import load_study_data, model_jobs, run_study
    from workbench.study import load_study

    root = Path(__file__).resolve().parents[1]
    over = {
        "data.limit_train": 120, "train.epochs": 1, "train.batch_size": 32,
        "recipes": [{"name": "standard"},
                    {"name": "robust_features", "label": "d_nr", "set": "d_nr", "source": {"name": "standard"}, "steps": 3},
                    {"name": "robust_features", "label": "d_det", "set": "d_det", "source": {"name": "standard"},
                     "attack_eps": 1.0, "attack_steps": 3}],
        "pairs": [["small_cnn/standard", "small_cnn/d_det"]],
        "evaluation.examples": 20, "evaluation.attacks": [{"name": "pgd", "steps": 2}], "evaluation.eps_l2": [],
        "evaluation.soundness": {"enabled": False}, "probes": {}, "report.formats": ["png"],
    }
    study = load_study(root / "studies" / "robust_features.yaml", over)
    store = tmp_path / "store"
    run = run_study(study, tmp_path / "run", store=store, progress=False, threads=1, report=True)
    page = (run.path / "index.html").read_text(encoding="utf-8")
    assert "Samples of the derived training sets" in page and 'id="encode"' in page
    assert (run.path / "figures" / "derived_samples.png").stat().st_size > 1000

    with np.load(run.path / "arrays" / "training_samples.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert list(arrays["models"]) == ["small_cnn/d_nr", "small_cnn/d_det"]
    data = load_study_data(study, torch.device("cpu"))
    jobs = {j.id: j for j in model_jobs(study, data)}
    for j, mid in enumerate(arrays["models"]):
        job = jobs[str(mid)]
        cfg = job.spec.recipe
        xd, yd, reused = derived_set(store, job.dependencies()["source"].key(), _net(0), data.train_x, data.train_y,
                                     cfg.set, cfg.settings(), num_classes=10, seed=job.spec.seed,
                                     data_identity=job.data)
        assert reused  # read back from the cache, not rebuilt with the stand-in model
        idx = torch.from_numpy(arrays[f"index.{j}"])
        assert np.array_equal(arrays[f"x.{j}"], xd[idx].numpy())
        assert np.array_equal(arrays[f"label.{j}"], yd[idx].numpy())
        assert np.array_equal(arrays[f"original.{j}"], data.train_x[idx].numpy())
        assert np.array_equal(arrays[f"original_label.{j}"], data.train_y[idx].numpy())
        labels, counts = np.unique(arrays[f"label.{j}"], return_counts=True)
        assert len(labels) == 10 and (counts == 2).all()  # two per label
        assert not np.array_equal(arrays[f"x.{j}"], arrays[f"original.{j}"])
    assert np.array_equal(arrays["label.1"], (arrays["original_label.1"] + 1) % 10)  # d_det: the target label
