"""Loaded models in studies: a trained pair next to two loaded models of other architectures
runs end to end (every table, the report, pairs as declared); the shipped zoo and ImageNet
studies validate and run shrunk on checkpoints made here."""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.views import figures
from workbench.data import load_dataset
from workbench.errors import StudyError
from workbench.models import create_model
from workbench.results import load
from workbench.runner import run_study
from workbench.study import load_study, study_from_dict
from workbench.tables import OPEN, TABLES

from test_report import PROBES
from test_sources import AttackerModel, robustbench_file, robustness_checkpoint
from conftest import CHEAP_CASCADE

ROOT = Path(__file__).resolve().parents[1]

USER_CNN = '''
from torch import nn


def tiny_cnn(width=8):
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
    )
'''


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> None:
    """A quick fit so the loaded models classify digits (saliency needs common correct examples)."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(y), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """small_cnn trained two ways + an mlp in the robustness AttackerModel layout + a user's CNN
    from .safetensors; pairs declared across architectures."""
    from safetensors.torch import save_file

    base = tmp_path_factory.mktemp("mixed")
    pkg = base / "code" / "mixed_user_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(USER_CNN))
    sys.path.insert(0, str(base / "code"))
    try:
        data = load_dataset("digits", seed=0)
        torch.manual_seed(0)
        mlp = create_model("mlp", num_classes=10, in_shape=data.in_shape, hidden=(64,)).net
        am = AttackerModel(mlp, list(data.mean), list(data.std))
        _train(am, data.train_x, data.train_y)
        torch.save({"model": {f"module.{k}": v for k, v in am.state_dict().items()}, "epoch": 1}, base / "mlp.pt")
        from mixed_user_pkg.nets import tiny_cnn

        torch.manual_seed(0)
        cnn = tiny_cnn(width=8)  # a network taking normalised inputs: the study declares mean/std
        mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
        _train(cnn, (data.train_x - mean) / std, data.train_y, steps=300)
        save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(base / "cnn.safetensors"))

        over = {
            "train.epochs": 2, "train.monitor_examples": 64, "train.monitor_steps": 2,
            "architectures": ["small_cnn"], "recipes": ["standard", {"name": "pgd_at", "eps": 0.2, "steps": 2}],
            "models": [
                {"id": "mlp-robustness", "source": {"arch": "mlp", "options": {"hidden": [64]},
                                                   "checkpoint": str(base / "mlp.pt")}},
                {"id": "user-cnn", "source": {"python": "mixed_user_pkg.nets:tiny_cnn", "options": {"width": 8},
                                              "checkpoint": str(base / "cnn.safetensors")},
                 "mean": list(data.mean), "std": list(data.std), "layers": {"conv1": "1", "conv2": "3", "pool": "4"}},
            ],
            "pairs": [["small_cnn/standard", "small_cnn/pgd_at"], ["small_cnn/standard", "mlp-robustness"],
                      ["mlp-robustness", "user-cnn"]],
            "evaluation.examples": 60, "evaluation.eps": [0.1, 0.2], "evaluation.eps_l2": [1.0],
            "evaluation.attacks": ["fgsm", {"name": "pgd", "steps": 3}, {"name": "pgd", "norm": "l2", "steps": 3}],
            "evaluation.soundness": {"enabled": True, "examples": 30}, "evaluation.worst_case": CHEAP_CASCADE,
            "probes": PROBES,
        }
        study = load_study(ROOT / "studies" / "quickstart.yaml", over)
        run = run_study(study, base / "run", store=base / "store", progress=False, threads=1, report=True)
        rerun = run_study(study, base / "rerun", store=base / "store", progress=False, threads=1, report=False)
        yield {"base": base, "run": run, "rerun": rerun, "am": am, "cnn": cnn, "data": data}
    finally:
        sys.path.remove(str(base / "code"))
        for mod in [m for m in sys.modules if m.startswith("mixed_user_pkg")]:
            del sys.modules[mod]


MIXED_PAIRS = [("small_cnn/standard", "small_cnn/pgd_at"), ("small_cnn/standard", "mlp-robustness"),
               ("mlp-robustness", "user-cnn")]


def test_mixed_study_writes_every_table_and_the_report_with_all_four_models(mixed_run):
    res = load(mixed_run["run"].path)
    assert set(res.tables) == set(TABLES)
    for name, df in res.tables.items():
        # one seed: no replicates (the table is written empty, with its columns)
        # the cascade's per-example rows exist only where APGD had examples left to attack
        assert len(df) or (name == "replicates" and not res.study.replicated) or (
            name == "worst_case_per_example" and res.tables["worst_case_cascade"]["candidates"].sum() == 0), name
        if name not in OPEN:
            assert list(df.columns) == list(TABLES[name][1]), name
    ids = ["small_cnn/standard", "small_cnn/pgd_at", "mlp-robustness", "user-cnn"]
    assert list(res.models.model) == ids
    for name in ("robustness", "soundness", "lipschitz", "linearity", "linear_probe", "saliency_metrics"):
        assert set(res.tables[name].model) == set(ids), name
    html = (mixed_run["run"].path / "index.html").read_text()
    assert all(i in html for i in ids)
    assert "loaded: python:mixed_user_pkg.nets:tiny_cnn" in html
    # every figure drew, across architectures too (CKA heatmaps of pairs with different layers)
    from workbench.report import figures as F

    assert "drawing failed" not in html
    # a figure drawn from a file of arrays/ applies only where the run wrote that file
    # (derived_samples: models trained on a derived set, none here)
    run = mixed_run["run"].path
    expected = [s for s in figures() if s.arrays is None or (run / "arrays" / s.arrays).is_file()]
    assert {s.name for s in figures()} - {s.name for s in expected} == {"derived_samples"}
    missing = [s.name for s in expected if not (run / "figures" / f"{s.name}.png").is_file()]
    assert not missing, missing


def test_models_table_records_source_file_and_sha256_of_loaded_models(mixed_run):
    mt = load(mixed_run["run"].path).models.set_index("model")
    base = mixed_run["base"]
    for mid, fname in (("mlp-robustness", "mlp.pt"), ("user-cnn", "cnn.safetensors")):
        row = mt.loc[mid]
        assert row.role == "loaded" and row.file == str(base / fname)
        assert row.sha256 == hashlib.sha256((base / fname).read_bytes()).hexdigest()
    assert mt.loc["user-cnn", "source"] == "python:mixed_user_pkg.nets:tiny_cnn"
    assert mt.loc["small_cnn/standard", "source"] == "" and mt.loc["small_cnn/standard", "role"] == "reference"


def test_pairs_transfer_cka_and_saliency_follow_the_declared_pairs(mixed_run):
    res = load(mixed_run["run"].path)
    assert [(r.reference, r.model) for r in res.pairs.itertuples()] == MIXED_PAIRS
    assert list(res.pairs.architecture) == ["small_cnn", "small_cnn~loaded", "loaded"]
    both_ways = {p for a, b in MIXED_PAIRS for p in ((a, b), (b, a))}
    assert set(zip(res.transfer.source, res.transfer.target)) == both_ways
    cka_pairs = set(zip(res.cka.model_a, res.cka.model_b))
    assert cka_pairs == set(MIXED_PAIRS) | {(m, m) for m in res.models.model}
    # across architectures the layers differ: the user CNN's named layers against the mlp's
    cross = res.cka[(res.cka.model_a == "mlp-robustness") & (res.cka.model_b == "user-cnn")]
    assert set(cross.layer_b) == {"conv1", "conv2", "pool", "logits"}
    assert set(zip(res.saliency_agreement.reference, res.saliency_agreement.model)) == set(MIXED_PAIRS)


def test_loaded_models_score_as_their_own_networks(mixed_run):
    """The run's clean accuracy of a loaded model is the original network's on the same examples."""
    from workbench.evaluation import evaluation_subset

    run, data = mixed_run["run"], mixed_run["data"]
    idx = evaluation_subset(len(data.test_y), 60, 0)
    x, y = data.test_x[idx], data.test_y[idx]
    rob = run.tables["robustness"]
    clean = rob[rob.attack == "clean"].set_index("model").accuracy
    with torch.no_grad():
        am_acc = (mixed_run["am"](x).argmax(1) == y).float().mean().item()
        norm = (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
        cnn_acc = (mixed_run["cnn"](norm).argmax(1) == y).float().mean().item()
    assert clean["mlp-robustness"] == pytest.approx(am_acc) and clean["user-cnn"] == pytest.approx(cnn_acc)
    assert am_acc > 0.5 and cnn_acc > 0.5  # they were trained, so the comparison means something


def test_a_rerun_reuses_every_result_and_results_give_the_models_back(mixed_run):
    rerun = mixed_run["rerun"]
    assert "evaluate" in rerun.cached_stages and "probe:cka" in rerun.cached_stages
    res = load(mixed_run["run"].path)
    x = mixed_run["data"].test_x[:8]
    for mid in ("mlp-robustness", "user-cnn", "small_cnn/pgd_at"):
        sys.path.insert(0, str(mixed_run["base"] / "code"))
        try:
            m = res.model(mid, store=mixed_run["base"] / "store")
        finally:
            sys.path.remove(str(mixed_run["base"] / "code"))
        run = mixed_run["run"]
        original = run.models[mid].model if mid in run.models else run.loaded[mid].model
        with torch.no_grad():
            assert torch.allclose(m(x), original(x), atol=1e-6)


# --------------------------------------------------------------------------- study validation


def test_pairs_all_and_unknown_pair_members():
    raw = {"name": "s", "architectures": ["small_cnn"], "recipes": ["standard", {"name": "pgd_at", "eps": 0.1}],
           "models": [{"id": "zoo", "source": "mlp"}], "pairs": "all"}
    s = study_from_dict(raw)
    assert [p[1:] for p in s.pairs()] == [("small_cnn/standard", "small_cnn/pgd_at"), ("small_cnn/standard", "zoo"),
                                          ("small_cnn/pgd_at", "zoo")]
    assert study_from_dict({**raw, "pairs": "reference"}).pairs() == [("small_cnn", "small_cnn/standard", "small_cnn/pgd_at")]
    with pytest.raises(StudyError, match=r"pairs\[0\].*unknown model 'nope'"):
        study_from_dict({**raw, "pairs": [["zoo", "nope"]]})
    with pytest.raises(StudyError, match="models.*twice"):
        study_from_dict({**raw, "models": [{"id": "zoo", "source": "mlp"}, {"id": "zoo", "source": "mlp"}]})
    with pytest.raises(StudyError, match=r"models\[0\]\.source.*exactly one"):
        study_from_dict({**raw, "models": [{"id": "x", "source": {"checkpoint": "a.pt"}}]})
    # the study round-trips through its YAML (run folders store it)
    assert study_from_dict(yaml_roundtrip(s)).pairs() == s.pairs()


def yaml_roundtrip(s):
    import yaml

    return yaml.safe_load(s.to_yaml())


def test_shipped_zoo_and_imagenet_studies_validate():
    zoo = load_study(ROOT / "studies" / "zoo_cifar10.yaml")
    assert [m.source.robustbench for m in zoo.loaded] == ["Standard", "Wong2020Fast", "Engstrom2019Robustness",
                                                         "Zhang2019Theoretically"]
    assert len(zoo.pairs()) == 6 and zoo.evaluation.examples == 1000 and not zoo.architectures
    inet = load_study(ROOT / "studies" / "imagenet_resnet50.yaml")
    std, linf, l2 = inet.loaded
    assert std.source.pretrained and std.mean is not None
    assert linf.mean is None and l2.mean is None  # the robustness checkpoints carry their own
    assert {m.source.arch for m in inet.loaded} == {"torchvision:resnet50"}


def _image_folder(root: Path, classes: int = 10, per_class: int = 4, size: int = 32) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def test_zoo_study_runs_shrunk_on_zoo_files_made_here(tmp_path, monkeypatch):
    from workbench.models import zoo as zoo_mod

    zoo_mod._rb()
    from robustbench.utils import load_model

    monkeypatch.setenv("ROBUSTBENCH_DIR", str(tmp_path / "zoo"))
    names = ["Wong2020Fast", "Engstrom2019Robustness"]  # the two smaller networks of the four: CPU time
    for i, name in enumerate(names):
        robustbench_file(tmp_path / "zoo", name, seed=i)
    raw_models = [m for m in load_study(ROOT / "studies" / "zoo_cifar10.yaml").to_dict()["models"]
                  if m["id"] in names]
    over = {
        "data": {"name": "imagefolder", "root": str(_image_folder(tmp_path / "images")), "test_fraction": 0.4},
        "models": raw_models,
        "evaluation.examples": 6, "evaluation.batch_size": 6, "evaluation.eps": [8 / 255],
        "evaluation.attacks": ["fgsm", {"name": "pgd", "steps": 2}],
        "evaluation.soundness": {"enabled": False},
        "probes": {"examples": 6, "cka": {}, "lipschitz": {"steps": 2, "eps": [8 / 255], "norms": ["linf"],
                                                             "kinds": ["loss", "rand"], "logit_lipschitz": False}},
    }
    run = run_study(load_study(ROOT / "studies" / "zoo_cifar10.yaml", over), tmp_path / "run", progress=False,
                    threads=1, report=False)
    assert list(run.tables["models"].model) == names
    assert set(zip(run.tables["cka"].model_a, run.tables["cka"].model_b)) >= {tuple(names)}
    # clean predictions through the study equal robustbench's own loader on the same file
    ref = load_model("Wong2020Fast", model_dir=str(tmp_path / "zoo"), dataset="cifar10", threat_model="Linf").eval()
    x = run.data.test_x[:6]
    with torch.no_grad():
        assert torch.allclose(run.loaded["Wong2020Fast"].model(x), ref(x), atol=1e-5)


def test_imagenet_study_runs_shrunk_on_checkpoints_made_here(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ROBUSTNESS_DIR", str(tmp_path / "robustness"))
    monkeypatch.setenv("IMAGENET_VAL", str(_image_folder(tmp_path / "val")))
    (tmp_path / "robustness").mkdir()
    robustness_checkpoint(tmp_path / "robustness" / "imagenet_linf_4.pt", arch="resnet50", seed=1)
    robustness_checkpoint(tmp_path / "robustness" / "imagenet_l2_3_0.pt", arch="resnet50", seed=2)
    cache = tmp_path / "torch" / "hub" / "checkpoints" / Path(torchvision.models.ResNet50_Weights.DEFAULT.url).name
    cache.parent.mkdir(parents=True)
    torch.manual_seed(3)
    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), cache)
    over = {
        "data.options": {"image_size": 32}, "data.limit_train": None, "data.limit_test": None,
        "evaluation.examples": 6, "evaluation.batch_size": 6, "evaluation.eps": [4 / 255], "evaluation.eps_l2": [1.0],
        "evaluation.attacks": ["fgsm"], "evaluation.soundness": {"enabled": False},
        "probes": {"examples": 6, "cka": {"layers": ["layer1", "layer2", "layer3", "layer4", "avgpool"]}},
    }
    run = run_study(load_study(ROOT / "studies" / "imagenet_resnet50.yaml", over), tmp_path / "run", progress=False,
                    threads=1, report=False)
    mt = run.tables["models"].set_index("model")
    assert mt.loc["standard", "file"] == str(cache)
    robust = run.loaded["robust-linf-4"].model
    assert robust.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    cka = run.tables["cka"]
    pairs = {("standard", "robust-linf-4"), ("standard", "robust-l2-3"), ("robust-linf-4", "robust-l2-3")}
    assert pairs <= set(zip(cka.model_a, cka.model_b))
    assert set(cka.layer_a) == {"layer1", "layer2", "layer3", "layer4", "avgpool"}
