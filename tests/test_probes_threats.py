"""probes.threats: representations under L∞, L1, spatial and corruption threat models."""

from __future__ import annotations

import torch

from workbench.data import DataSplits
from workbench.probes.base import probe_context
from workbench.probes.threats import run_threats
from workbench.study import study_from_dict
from workbench.tables import TABLES

from test_probes_linear import _toy_images, toy_models  # noqa: F401  (the fixture)


def test_threat_features_table(toy_models):  # noqa: F811
    cfg = {"layers": ["conv1", "logits"], "l1_eps": 2.0, "steps": 5, "spatial": {"max_angle": 20, "max_shift": 1,
           "angles": 5, "shifts": 3}, "corruptions": ["contrast"], "severity": 5, "train_examples": 60,
           "max_features": 16}
    study = study_from_dict({
        "name": "t", "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 8}}],
        "recipes": ["standard", {"name": "pgd_at", "eps": 0.1}], "evaluation": {"eps": [0.3]},
        "probes": {"threats": cfg},
    })
    tx, ty = _toy_images(80, seed=1)
    vx, vy = _toy_images(30, seed=2)
    x, y = _toy_images(40, seed=3)
    data = DataSplits("toy", tx, ty, vx, vy, x, y, ["a", "b", "c"], 3, (1, 8, 8), (0.5,), (0.25,))
    ctx = probe_context(study, toy_models, data, device=torch.device("cpu"), seed=0, probe="threats",
                        examples=(x, y, torch.arange(40)), batch_size=32)
    df = run_threats(ctx)["threat_features"]
    assert list(df.columns) == list(TABLES["threat_features"][1])
    assert set(df.threat) == {"linf", "l1", "spatial", "corruption:contrast"}
    assert len(df) == 2 * 4 * 2 * 2  # models × threats × layers × kinds
    assert set(df[df.threat == "linf"].budget) == {0.1}  # the main ε of the study
    # PGD moves the standard model's logits more than a random δ of the same L∞ size does
    d = df[(df.model == "small_cnn/standard") & (df.threat == "linf") & (df.layer == "logits")].set_index("kind")
    assert d.loc["threat", "change"] > d.loc["random", "change"] and d.loc["threat", "vs_random"] > 1
    assert d.loc["threat", "probe_accuracy"] < d.loc["threat", "probe_clean_accuracy"]
    assert df.cka.between(0, 1 + 1e-9).all() and df.probe_accuracy.between(0, 1).all()
    # a random perturbation of the same size moves representations less than the spatial worst case
    s = df[(df.threat == "spatial") & (df.layer == "logits") & (df.model == "small_cnn/standard")].set_index("kind")
    assert s.loc["threat", "probe_accuracy"] <= s.loc["random", "probe_accuracy"]
