"""Models from anywhere: every checkpoint layout, torchvision/timm/robustbench/user code,
safe loading, mismatches, layers. Each loaded model's logits are compared with the original
network's (or its own library's loader's) on the same inputs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.errors import CheckpointError, WorkbenchError
from workbench.models import capture, create_model, load, load_source, wrap
from workbench.models.checkpoint import convert_checkpoint

TOL = 1e-6


def _x(shape, n=4, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL * max(1.0, b.abs().max().item())


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    m = create_model("small_cnn", num_classes=10, in_shape=(3, 16, 16), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    return m.eval()


# --------------------------------------------------------------------------- layouts


LAYOUTS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3, "best_acc": 0.9},
    "model": lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
    "state_dict_ema": lambda sd: {"state_dict_ema": sd, "args": "a string"},
    "module.": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "module.model.": lambda sd: {"state_dict": {f"module.model.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_wrapper_and_prefix_layout_loads_to_the_same_logits(layout, small, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(LAYOUTS[layout](small.net.state_dict()), path)
    lm = load_source({"arch": "small_cnn", "checkpoint": str(path)}, num_classes=10, in_shape=(3, 16, 16),
                     mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    x = _x((3, 16, 16))
    with torch.no_grad():
        _same(lm.model(x), small(x))
    assert lm.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert lm.file == str(path)


def test_a_prefix_is_kept_where_it_is_part_of_the_network(tmp_path):
    # a network whose own keys start with "model.": nothing may be stripped
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))

        def forward(self, x):
            return self.model(x)

    torch.manual_seed(0)
    net = Net().eval()
    sd = net.state_dict()
    assert all(k.startswith("model.") for k in sd)
    from workbench.models.checkpoint import fit_state_dict

    fitted = fit_state_dict({"state_dict": sd}, Net(), "f.pt")
    assert set(fitted.state) == set(sd)
    m = wrap(Net(), in_shape=(3, 2, 2), layers=["model.0"])
    m.net.load_state_dict(fitted.state)
    x = _x((3, 2, 2))
    with torch.no_grad():
        _same(m(x), net(x))


def test_safetensors_file_loads_to_the_same_logits(small, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in small.net.state_dict().items()}, str(path))
    m = load({"arch": "small_cnn", "checkpoint": str(path)}, num_classes=10, in_shape=(3, 16, 16),
             mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    x = _x((3, 16, 16))
    with torch.no_grad():
        _same(m(x), small(x))


# --------------------------------------------------------------------------- robustness library layout


class InputNormalize(nn.Module):
    """The `robustness` library's normaliser (robustness/helpers.py), as it stores itself."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("new_mean", torch.tensor(mean)[..., None, None])
        self.register_buffer("new_std", torch.tensor(std)[..., None, None])

    def forward(self, x):
        x = torch.clamp(x, 0, 1)
        return (x - self.new_mean) / self.new_std


class Attacker(nn.Module):
    def __init__(self, model, normalizer):
        super().__init__()
        self.normalize = normalizer
        self.model = model


class AttackerModel(nn.Module):
    """robustness.attacker.AttackerModel's module structure: normalizer, model, attacker."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.normalizer = InputNormalize(mean, std)
        self.model = model
        self.attacker = Attacker(model, self.normalizer)

    def forward(self, x):
        return self.model(self.normalizer(x))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def robustness_checkpoint(path: Path, arch: str = "resnet18", seed: int = 0, num_classes: int = 10) -> AttackerModel:
    """A file as the `robustness` library's training writes it (DataParallel: 'module.')."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    am = AttackerModel(net, IMAGENET_MEAN, IMAGENET_STD).eval()
    sd = {f"module.{k}": v for k, v in am.state_dict().items()}
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "schedule": None, "epoch": 90}, path)
    return am


def robustness_reference(path: Path, arch: str = "resnet18", num_classes: int = 10) -> AttackerModel:
    """The library's own restore logic (model_utils.make_and_restore_model): take
    checkpoint['model'] (else ['state_dict']), strip 'module.', load into an AttackerModel."""
    import torchvision

    ck = torch.load(path, weights_only=True)
    sd = ck["model" if "model" in ck else "state_dict"]
    sd = {k[len("module."):]: v for k, v in sd.items()}
    am = AttackerModel(torchvision.models.get_model(arch, weights=None, num_classes=num_classes), (0.0,) * 3, (1.0,) * 3)
    am.load_state_dict(sd)
    return am.eval()


def test_robustness_layout_takes_the_normaliser_from_the_file_and_ignores_the_attacker_copy(tmp_path):
    path = tmp_path / "imagenet_linf_4.pt"
    robustness_checkpoint(path)
    ref = robustness_reference(path)
    lm = load_source({"arch": "torchvision:resnet18", "checkpoint": str(path)}, num_classes=10, in_shape=(3, 32, 32))
    assert "robustness" in lm.layout
    assert lm.model.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert lm.model.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    x = _x((3, 32, 32))
    with torch.no_grad():
        _same(lm.model(x), ref(x))


def test_normalisation_is_never_applied_twice(tmp_path):
    path = tmp_path / "r.pt"
    robustness_checkpoint(path)
    with pytest.raises(WorkbenchError, match="carries its own normalisation"):
        load_source({"arch": "torchvision:resnet18", "checkpoint": str(path)}, num_classes=10, in_shape=(3, 32, 32),
                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


# --------------------------------------------------------------------------- torchvision, timm


def test_torchvision_checkpoint_with_declared_normalisation_equals_the_torchvision_network(tmp_path):
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=7).eval()
    path = tmp_path / "tv.pt"
    torch.save(net.state_dict(), path)
    m = load({"arch": "torchvision:resnet18", "checkpoint": str(path)}, num_classes=7, in_shape=(3, 32, 32),
             mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = _x((3, 32, 32))
    norm = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        _same(m(x), net(norm))
    assert {"layer1", "layer2", "layer3", "layer4"} <= set(m.layer_names())


def test_torchvision_pretrained_reads_torchs_cache_folder_and_never_downloads(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    src = {"arch": "torchvision:squeezenet1_1", "pretrained": True}
    expected = tmp_path / "torch" / "hub" / "checkpoints" / Path(
        torchvision.models.get_model_weights("squeezenet1_1").DEFAULT.url).name
    with pytest.raises(CheckpointError) as e:
        load(src, num_classes=1000, in_shape=(3, 64, 64))
    assert str(expected) in str(e.value) and "\n" not in str(e.value)
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1().eval()
    expected.parent.mkdir(parents=True)
    torch.save(net.state_dict(), expected)
    m = load(src, num_classes=1000, in_shape=(3, 64, 64))
    x = _x((3, 64, 64), n=2)
    with torch.no_grad():
        _same(m(x), net(x))


def test_timm_model_from_safetensors_equals_timm_and_lists_its_feature_info_stages(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(4)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    path = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    lm = load_source({"arch": "timm:resnet10t", "checkpoint": str(path)}, num_classes=10, in_shape=(3, 32, 32))
    x = _x((3, 32, 32))
    with torch.no_grad():
        _same(lm.model(x), net(x))
    stages = [i["module"] for i in net.feature_info]
    assert lm.model.layer_names() == [*stages, "global_pool", "logits"]
    assert lm.model.penultimate == "global_pool"
    with capture(lm.model, "all") as cap:
        lm.model(x)
    assert cap.feats["global_pool"].shape == (4, net.num_features)


def test_timm_pretrained_reads_the_hub_cache_folder_and_never_downloads(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    src = {"arch": "timm:resnet10t", "pretrained": True}
    hub_id = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    repo = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--"))
    with pytest.raises(CheckpointError) as e:
        load(src, num_classes=1000, in_shape=(3, 32, 32))
    assert str(repo) in str(e.value) and "\n" not in str(e.value)
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False).eval()
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    m = load(src, num_classes=1000, in_shape=(3, 32, 32))
    x = _x((3, 32, 32), n=2)
    with torch.no_grad():
        _same(m(x), net(x))


# --------------------------------------------------------------------------- robustbench


def robustbench_file(model_dir: Path, name: str, seed: int = 0, prefix: str = "module.") -> nn.Module:
    """A zoo file with random weights in RobustBench's layout <dir>/<dataset>/<threat>/<name>.pt."""
    from workbench.models import zoo

    torch.manual_seed(seed)
    net = zoo.build(name, "cifar10", "Linf").eval()
    path = zoo.path_of(name, "cifar10", "Linf", model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"{prefix}{k}": v for k, v in net.state_dict().items()}}, path)
    return net


def test_robustbench_entry_equals_robustbenchs_own_load_model(tmp_path):
    from workbench.models import zoo

    zoo._rb()  # the test extra installs robustbench: a failing import fails the test
    from robustbench.utils import load_model

    robustbench_file(tmp_path, "Wong2020Fast", seed=5)
    ref = load_model("Wong2020Fast", model_dir=str(tmp_path), dataset="cifar10", threat_model="Linf").eval()
    lm = load_source({"robustbench": "Wong2020Fast", "model_dir": str(tmp_path)}, num_classes=10, in_shape=(3, 32, 32))
    x = _x((3, 32, 32))
    with torch.no_grad():
        _same(lm.model(x), ref(x))
    assert lm.model.mean.abs().max() == 0 and (lm.model.std == 1).all()  # zoo models take [0, 1]
    assert lm.source == "robustbench:cifar10/Linf/Wong2020Fast"


def test_robustbench_missing_file_names_the_path_and_downloads_nothing(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load({"robustbench": "Wong2020Fast", "model_dir": str(tmp_path)})
    assert str(tmp_path / "cifar10" / "Linf" / "Wong2020Fast.pt") in str(e.value)
    assert not any(tmp_path.rglob("*"))


# --------------------------------------------------------------------------- user code


USER_MODULE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def build(width=4):
    return Tiny(width)
'''


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "user_nets_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_nets_pkg.nets:build"
    for mod in [m for m in sys.modules if m.startswith("user_nets_pkg")]:
        del sys.modules[mod]


def test_user_factory_with_checkpoint_equals_the_users_network(user_pkg, tmp_path):
    import importlib

    nets = importlib.import_module("user_nets_pkg.nets")
    torch.manual_seed(6)
    net = nets.build(width=6).eval()
    path = tmp_path / "user.pt"
    torch.save({"model": net.state_dict()}, path)
    lm = load_source({"python": user_pkg, "options": {"width": 6}, "checkpoint": str(path)}, num_classes=10,
                     in_shape=(3, 8, 8))
    x = _x((3, 8, 8))
    with torch.no_grad():
        _same(lm.model(x), net(x))
    assert lm.model.layer_names() == ["features", "pool", "logits"]


def test_a_python_sources_key_covers_the_users_modules_it_imports_as_syntax(tmp_path, monkeypatch):
    # the factory module imports a helper module of the user's (and the standard library,
    # torch): editing the helper's behaviour gives a new model key, a comment or docstring
    # edit (anywhere) the same key
    (tmp_path / "my_helpers_i20.py").write_text('"""helpers"""\nimport math\n\nWIDTH = 4\n\n\ndef act():\n'
                                             '    from torch import nn\n    return nn.ReLU()\n')
    (tmp_path / "my_nets_i20.py").write_text("import torch\nfrom torch import nn\n\nimport my_helpers_i20 as h\n\n\n"
                                          "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, h.WIDTH),"
                                          " h.act(), nn.Linear(h.WIDTH, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store"))

    def key():
        for m in ("my_nets_i20", "my_helpers_i20"):
            sys.modules.pop(m, None)
        return load_source({"python": "my_nets_i20:build"}, num_classes=10, in_shape=(3, 8, 8)).key

    first = key()
    helper = tmp_path / "my_helpers_i20.py"
    helper.write_text(helper.read_text().replace('"""helpers"""', '"""helpers, documented"""\n# a comment'))
    (tmp_path / "my_nets_i20.py").write_text((tmp_path / "my_nets_i20.py").read_text() + "# the end\n")
    assert key() == first
    helper.write_text(helper.read_text().replace("nn.ReLU()", "nn.Tanh()"))
    second = key()
    assert second != first
    helper.write_text(helper.read_text().replace("WIDTH = 4", "WIDTH = 5"))
    assert key() not in (first, second)


def test_a_behaviour_edit_of_a_user_helper_recomputes_the_study_a_comment_edit_reuses_it(tmp_path, monkeypatch):
    from workbench.runner import run_study
    from workbench.study import study_from_dict

    (tmp_path / "my_helpers_j20.py").write_text("from torch import nn\n\n\ndef act():\n    return nn.ReLU()\n")
    (tmp_path / "my_nets_j20.py").write_text("import torch\nfrom torch import nn\n\nfrom my_helpers_j20 import act\n\n\n"
                                          "def build():\n    torch.manual_seed(0)\n"
                                          "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), act(), nn.Linear(16, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    study = study_from_dict({
        "name": "user-code", "data": {"name": "digits", "limit_train": 64, "limit_test": 32}, "architectures": [],
        "recipes": [], "models": [{"id": "user", "source": {"python": "my_nets_j20:build"}}],
        "evaluation": {"examples": 16, "eps": [0.1], "attacks": ["fgsm"], "soundness": {"enabled": False}},
        "probes": {}, "report": {"enabled": False},
    })

    def run(name):
        for m in ("my_nets_j20", "my_helpers_j20"):
            sys.modules.pop(m, None)
        return run_study(study, tmp_path / name, store=tmp_path / "store", device="cpu", progress=False, threads=1)

    first = run("first")
    helper = tmp_path / "my_helpers_j20.py"
    helper.write_text("# the activation\n" + helper.read_text())
    assert "evaluate" in run("comment").cached_stages
    helper.write_text(helper.read_text().replace("nn.ReLU()", "nn.Tanh()"))
    changed = run("behaviour")
    assert "evaluate" not in changed.cached_stages
    assert list(changed.tables["models"]["key"]) != list(first.tables["models"]["key"])


# --------------------------------------------------------------------------- refusals


def test_a_checkpoint_whose_unpickling_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError) as e:
        load({"arch": "small_cnn", "checkpoint": str(path)}, in_shape=(3, 16, 16))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "workbench convert-checkpoint" in msg and "--trust" in msg
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="--trust"):
        convert_checkpoint(path, tmp_path / "out.pt", trust=False)
    assert not marker.exists()
    # the CLI: one line, exit status 2, nothing run
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "convert-checkpoint", str(path), str(tmp_path / "o.pt")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and not marker.exists()


def test_convert_checkpoint_with_trust_gives_a_file_that_loads_safely(small, tmp_path):
    import argparse

    path = tmp_path / "pickled.pt"  # training scripts often pickle their argparse arguments beside the weights
    torch.save({"state_dict": small.net.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="convert-checkpoint"):
        load({"arch": "small_cnn", "checkpoint": str(path)}, in_shape=(3, 16, 16))
    out = convert_checkpoint(path, tmp_path / "plain.pt", trust=True)
    m = load({"arch": "small_cnn", "checkpoint": str(out)}, in_shape=(3, 16, 16), mean=(0.4, 0.5, 0.6),
             std=(0.2, 0.25, 0.3))
    x = _x((3, 16, 16))
    with torch.no_grad():
        _same(m(x), small(x))


def test_shape_mismatch_is_one_line_naming_the_file_and_the_key(small, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(small.net.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load({"arch": "small_cnn", "options": {"width": 16}, "checkpoint": str(path)}, in_shape=(3, 16, 16))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    first_conv = next(iter(small.net.state_dict()))
    assert f"shape of {first_conv}" in msg


def test_missing_and_unexpected_keys_are_named(small, tmp_path):
    sd = dict(small.net.state_dict())
    dropped = next(iter(sd))
    sd.pop(dropped)
    sd["extra.weight"] = torch.zeros(2)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load({"arch": "small_cnn", "checkpoint": str(path)}, in_shape=(3, 16, 16))
    msg = str(e.value)
    assert f"missing {dropped}" in msg and "unexpected extra.weight" in msg and "\n" not in msg


def test_wrong_number_of_classes_is_reported(tmp_path):
    import torchvision

    path = tmp_path / "tv.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(WorkbenchError, match="fc.weight"):
        load({"arch": "torchvision:resnet18", "checkpoint": str(path)}, num_classes=100, in_shape=(3, 32, 32))


# --------------------------------------------------------------------------- layers


def test_wrap_finds_top_level_blocks_and_accepts_named_layers():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    m = wrap(net, in_shape=(3, 8, 8))
    assert m.layer_names() == ["0", "2", "logits"] and m.penultimate == "2" and m.num_classes == 3
    named = wrap(net, in_shape=(3, 8, 8), layers={"conv": "0", "act": "1"}, mean=0.5, std=0.25)
    assert named.layer_names() == ["conv", "act", "logits"]
    x = _x((3, 8, 8))
    with torch.no_grad():
        _same(named(x), net((x - 0.5) / 0.25))
    with pytest.raises(WorkbenchError, match="no module 'nope'"):
        wrap(net, in_shape=(3, 8, 8), layers=["nope"])


def test_list_layers_of_torchvision_resnet50_shows_its_stages():
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "list", "layers", "torchvision:resnet50"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    names = [ln.split()[0] for ln in out.stdout.splitlines()[1:]]
    assert names == ["conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "logits"]
    assert "(penultimate)" in next(ln for ln in out.stdout.splitlines() if ln.split()[0] == "avgpool")
