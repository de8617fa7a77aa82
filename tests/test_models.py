"""Tests for workbench.models: the registry is the test matrix (every registered model,
plus one torchvision model, gets the forward/backward/NaN/capture checks), and a few
hand-checkable units pin down normalization, layer specs and option validation."""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import UnknownNameError, WorkbenchError
from workbench.models import (
    MODELS,
    WorkbenchModel,
    capture,
    check_model_options,
    create_model,
    extract_features,
    model_names,
    model_options,
    resolve_layers,
)

NUM_CLASSES = 10
BATCH = 4
# Small settings per model so the whole matrix runs in seconds on a CPU (full-size
# architectures are checked by parameter count on the meta device below); models not
# listed get the CIFAR shape and their defaults, so a newly registered model is tested too.
SMALL: dict[str, tuple[tuple[int, int, int], dict]] = {
    "mlp": ((1, 8, 8), {"hidden": (32, 16)}),
    "small_cnn": ((1, 8, 8), {}),
    "preact_resnet34": ((3, 32, 32), {"width": 8}),
    "wide_resnet": ((3, 32, 32), {"depth": 10, "width": 1}),
    "torchvision:resnet18": ((3, 32, 32), {}),
}
DEFAULT = ((3, 32, 32), {})
NAMES = [*MODELS.names(), "torchvision:resnet18"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: extra intra-op threads only add synchronisation, and on a
    loaded 2-core machine OpenMP spinning made a width-8 ResNet forward 100× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def setting(name: str) -> tuple[tuple[int, int, int], dict]:
    return SMALL.get(name, DEFAULT)


@functools.lru_cache(maxsize=None)
def _seeded(name: str, seed: int = 0) -> WorkbenchModel:
    in_shape, options = setting(name)
    torch.manual_seed(seed)
    return create_model(name, num_classes=NUM_CLASSES, in_shape=in_shape, **options)


def fresh(name: str) -> WorkbenchModel:
    """A private copy of the seeded model (building the big ones once saves seconds)."""
    return copy.deepcopy(_seeded(name))


def batch(name: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    in_shape, _ = setting(name)
    return torch.rand(BATCH, *in_shape, generator=g), torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)


# ------------------------------------------------------------------- registry matrix


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_layers(name):
    model = fresh(name)
    x, _ = batch(name)
    assert model(x).shape == (BATCH, NUM_CLASSES)
    layers = model.layer_names()
    assert layers[-1] == "logits" and len(layers) == len(set(layers)) >= 2
    assert model.penultimate in layers[:-1]
    assert model.name == name


@pytest.mark.parametrize("name", NAMES)
def test_backward_and_sgd_step(name):
    model = fresh(name).train()
    x, y = batch(name)
    F.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    after = list(model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(torch.isfinite(p).all() for p in after)
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", NAMES)
def test_no_inplace_modules(name):
    offenders = [n for n, m in fresh(name).named_modules() if getattr(m, "inplace", False)]
    assert offenders == []


@pytest.mark.parametrize("name", NAMES)
def test_capture_all_in_one_forward_matches_module_outputs(name):
    model = fresh(name).eval()
    x, _ = batch(name)
    # Independent record of every hooked module's output and call count.
    seen: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []
    for layer in model.layer_names():
        def record(_m, _i, out, layer=layer):
            seen[layer] = out.detach().clone()
            calls[layer] = calls.get(layer, 0) + 1
        handles.append(model.layer_module(layer).register_forward_hook(record))
    try:
        with capture(model, "all") as cap:
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    assert set(cap.feats) == set(model.layer_names())
    # One forward of the model runs each hooked module exactly once: nothing is shared
    # or re-run, so no capture is silently overwritten.
    assert calls == {layer: 1 for layer in model.layer_names()}
    for layer, feat in cap.feats.items():
        assert feat.dtype == torch.float32 and feat.dim() == 2 and feat.shape[0] == BATCH
        torch.testing.assert_close(feat, seen[layer].reshape(BATCH, -1))
    torch.testing.assert_close(cap.feats["logits"], logits)


@pytest.mark.parametrize("name", NAMES)
def test_capture_keeps_graph_and_removes_hooks(name):
    model = fresh(name).eval()
    x, _ = batch(name)
    x.requires_grad_(True)
    with capture(model, ["penultimate", "logits"]) as cap:
        model(x)
        (grad,) = torch.autograd.grad(cap.feats[model.penultimate].square().sum(), x)
    assert grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, "all"):
            raise RuntimeError("boom")
    leftover = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert leftover == []


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_init(name):
    in_shape, options = setting(name)
    a = _seeded(name)
    torch.manual_seed(0)
    b = create_model(name, num_classes=NUM_CLASSES, in_shape=in_shape, **options)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    other = _seeded(name, seed=1)
    assert any(not torch.equal(va, vb) for va, vb in zip(a.parameters(), other.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_normalization_inside(name):
    in_shape, options = setting(name)
    c = in_shape[0]
    mean, std = [0.1 * (i + 3) for i in range(c)], [0.2 + 0.05 * i for i in range(c)]
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, in_shape=in_shape, mean=mean, std=std,
                         **options).eval()
    assert model.mean.shape == model.std.shape == (1, c, 1, 1)
    x, _ = batch(name)
    z = (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)
    torch.testing.assert_close(model(x), model.net(z))


@pytest.mark.parametrize("name", NAMES)
def test_copy_state_dict_channels_last(name):
    model = fresh(name).eval()
    x, _ = batch(name)
    ref = model(x)
    torch.testing.assert_close(copy.deepcopy(model)(x), ref)
    other = _seeded(name, seed=1)
    other = copy.deepcopy(other).eval()
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(x), ref)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), ref,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_extract_features(name):
    model = fresh(name).train()
    x, _ = batch(name)
    feats = extract_features(model, x, "all", batch_size=3)  # 4 examples: batches of 3 and 1
    assert model.training and all(m.training for m in model.modules())
    assert list(feats) == model.layer_names()
    with torch.no_grad():
        logits = model.eval()(x)
    for layer, f in feats.items():
        assert f.device.type == "cpu" and f.dtype == torch.float32 and f.shape[0] == BATCH
        assert not f.requires_grad
    torch.testing.assert_close(feats["logits"], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_check_model_options_rejects_unknown(name):
    valid = model_options(name)
    check_model_options(name, dict(setting(name)[1]))
    with pytest.raises(WorkbenchError, match="no_such_option") as err:
        check_model_options(name, {"no_such_option": 1})
    if not name.startswith("torchvision:"):
        for option in valid:  # the message lists the valid options
            assert option in str(err.value)


@pytest.mark.parametrize("name", MODELS.names())
def test_builder_documented(name):
    assert MODELS.describe(name)


# ------------------------------------------------------------------- hand-checkable units


def tiny() -> WorkbenchModel:
    """Flatten then one linear unit with weights (1, −1) and bias 0.5, on 1×1×2 images."""
    fc = nn.Linear(2, 1)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, -1.0]]))
        fc.bias.fill_(0.5)
    net = nn.Sequential(OrderedDict(flat=nn.Flatten(), fc=fc))
    return WorkbenchModel(net, {"flat": "flat"}, "flat", in_shape=(1, 1, 2), num_classes=1,
                          mean=[0.5], std=[0.25])


def test_tiny_model_by_hand():
    model = tiny()
    x = torch.tensor([[[[0.2, 0.9]]]])
    with capture(model, "all") as cap:
        out = model(x)
    # (0.2 − 0.5)/0.25 = −1.2, (0.9 − 0.5)/0.25 = 1.6; logit = −1.2 − 1.6 + 0.5 = −2.3
    torch.testing.assert_close(cap.feats["flat"], torch.tensor([[-1.2, 1.6]]))
    torch.testing.assert_close(out, torch.tensor([[-2.3]]))
    torch.testing.assert_close(cap["logits"], out)


def test_capture_feats_is_fresh_per_forward():
    model = tiny()
    with capture(model, "flat") as cap:
        model(torch.zeros(1, 1, 1, 2))
        first = cap.feats
        model(torch.ones(1, 1, 1, 2))
    torch.testing.assert_close(first["flat"], torch.tensor([[-2.0, -2.0]]))
    torch.testing.assert_close(cap.feats["flat"], torch.tensor([[2.0, 2.0]]))


def test_resolve_layers():
    model = _seeded("small_cnn")
    assert model.layer_names() == ["conv1", "conv2", "conv3", "fc1", "logits"]
    assert resolve_layers(model, "conv*") == ["conv1", "conv2", "conv3"]
    assert resolve_layers(model, ["logits", "conv2", "conv?", "conv2"]) == ["conv1", "conv2", "conv3", "logits"]
    assert resolve_layers(model, "penultimate") == ["fc1"]
    assert resolve_layers(model, "all") == model.layer_names()
    for bad in ("conv9", "layer*"):
        with pytest.raises(UnknownNameError) as err:
            resolve_layers(model, ["conv1", bad])
        assert err.value.kind == "layer" and bad in str(err.value) and "fc1" in err.value.valid
    with pytest.raises(WorkbenchError):
        resolve_layers(model, [])


def test_layer_names_per_model():
    expected = {
        "mlp": ["fc1", "fc2", "logits"],
        "small_cnn": ["conv1", "conv2", "conv3", "fc1", "logits"],
        "preact_resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", "pool", "logits"],
        "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", "pool", "logits"],
        "wide_resnet": ["stem", "block1", "block2", "block3", "pool", "logits"],
        "torchvision:resnet18": ["conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4",
                                 "avgpool", "logits"],
    }
    for name, layers in expected.items():
        assert _seeded(name).layer_names() == layers, name
    assert _seeded("torchvision:resnet18").penultimate == "avgpool"


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("resnet18", {}, 11_173_962),  # kuangliu/pytorch-cifar ResNet18
        # kuangliu's PreActResNet18 has 11,171,146; Wong et al.'s adds the final BN (+1,024)
        ("preact_resnet18", {}, 11_172_170),
        ("wide_resnet", {}, 36_479_194),  # WRN-28-10, "36.5M" (Zagoruyko & Komodakis 2016)
        ("wide_resnet", {"depth": 34}, 46_160_474),  # WRN-34-10 of Madry et al. and TRADES
    ],
)
def test_full_size_parameter_counts(name, options, expected):
    with torch.device("meta"):  # no memory, no initialisation cost
        model = create_model(name, num_classes=10, in_shape=(3, 32, 32), **options)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_model_options_and_names():
    assert model_options("small_cnn") == {"width": 32, "fc": 128}
    assert model_options("wide_resnet") == {"depth": 28, "width": 10, "dropout": 0.0}
    names = model_names()
    assert "torchvision:resnet18" in names and set(MODELS.names()) <= set(names)
    with pytest.raises(WorkbenchError, match="'num_classes'"):
        check_model_options("small_cnn", {"num_classes": 3})


def test_unknown_models():
    with pytest.raises(UnknownNameError, match="small_cnn"):
        create_model("small_cn", num_classes=10, in_shape=(1, 8, 8))
    with pytest.raises(UnknownNameError, match=r"torchvision:<name>") as err:
        check_model_options("torchvision:resnet181", {})
    assert "resnet18" in err.value.valid
    with pytest.raises(WorkbenchError, match="weights"):
        check_model_options("torchvision:resnet18", {"weights": "DEFAULT"})


def test_wide_resnet_options():
    with pytest.raises(WorkbenchError, match="6n"):
        create_model("wide_resnet", num_classes=10, in_shape=(3, 32, 32), depth=27)
    check_model_options("wide_resnet", {"depth": 27})  # names only
    with pytest.raises(WorkbenchError, match="6n"):  # values too, given the data shape
        check_model_options("wide_resnet", {"depth": 27}, num_classes=10, in_shape=(3, 32, 32))
    with pytest.raises(WorkbenchError, match="hidden"):  # a builder's TypeError, reworded
        create_model("mlp", num_classes=10, in_shape=(1, 8, 8), hidden=5)
    model = create_model("wide_resnet", num_classes=10, in_shape=(3, 32, 32), depth=16, width=1,
                         dropout=0.3)
    assert len(model.net.block1) == 2 and model.options["dropout"] == 0.3
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # dropout is off in eval mode


def test_mlp_linear_and_any_shape():
    model = create_model("mlp", num_classes=3, in_shape=(3, 5, 7), hidden=())
    assert model.layer_names() == ["flatten", "logits"] and model.penultimate == "flatten"
    assert model(torch.rand(2, 3, 5, 7)).shape == (2, 3)


def test_small_cnn_mnist_scale():
    model = create_model("small_cnn", num_classes=10, in_shape=(1, 28, 28), width=8, fc=16)
    feats = extract_features(model, torch.rand(3, 1, 28, 28), ["conv3", "penultimate"])
    assert feats["conv3"].shape == (3, 16 * 7 * 7) and feats["fc1"].shape == (3, 16)


def test_torchvision_grey_input_repeated():
    torch.manual_seed(0)
    model = create_model("torchvision:resnet18", num_classes=10, in_shape=(1, 32, 32), mean=[0.5],
                         std=[0.2]).eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model(x), model.net(((x - 0.5) / 0.2).repeat(1, 3, 1, 1)))
    with pytest.raises(WorkbenchError, match="3-channel"):
        create_model("torchvision:resnet18", num_classes=10, in_shape=(2, 32, 32))


def test_bad_normalization_rejected():
    with pytest.raises(WorkbenchError, match="mean"):
        create_model("small_cnn", num_classes=10, in_shape=(1, 8, 8), mean=[0.1, 0.2])
    with pytest.raises(WorkbenchError, match="std"):
        create_model("small_cnn", num_classes=10, in_shape=(1, 8, 8), std=[0.0])


class _RefPreActBlock(nn.Module):
    """The basic block as defined by He et al. 2016 (pre-activation) in the form of Wong et
    al.'s fast_adversarial code: BN-ReLU-conv, BN-ReLU-conv, plus a shortcut that is the
    identity or a strided 1x1 conv of the block input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False)) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        short = self.proj(x) if self.proj is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + short


class _RefPreActResNet(nn.Module):
    def __init__(self, blocks, width, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            layers.append(nn.Sequential(*[_RefPreActBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1)
                                          for j in range(n)]))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.nn.functional.avg_pool2d(out, 4).flatten(1))


@pytest.mark.parametrize("name,blocks", [("preact_resnet18", (2, 2, 2, 2)), ("preact_resnet34", (3, 4, 6, 3))])
def test_preact_resnets_compute_the_reference_network(name, blocks):
    torch.manual_seed(0)
    ref = _RefPreActResNet(blocks, width=8)
    ours = create_model(name, num_classes=10, in_shape=(3, 32, 32), width=8)  # mean 0, std 1: no-op normalisation
    ref_state, our_state = ref.state_dict(), ours.net.state_dict()
    assert [v.shape for v in ref_state.values()] == [v.shape for v in our_state.values()]
    # random BatchNorm statistics and affine parameters too, so that a block reading the
    # wrong tensor cannot agree by accident
    g = torch.Generator().manual_seed(1)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)
    ours.net.load_state_dict(dict(zip(our_state, ref.state_dict().values())))
    ref.eval(), ours.eval()
    x = torch.rand(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
        assert out.isfinite().all() and out.std() > 1e-3
