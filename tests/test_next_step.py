"""The README's next step: CIFAR-10 as an image folder (examples/cifar10_to_folder.py) and
studies/cifar10_laptop.yaml, which runs on one's own image folder by changing `root` alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_data import _fake_cifar  # noqa: E402  (tests/ is on sys.path under pytest's default import mode)

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "cifar10_laptop.yaml"


def converter():
    spec = importlib.util.spec_from_file_location("cifar10_to_folder", ROOT / "examples" / "cifar10_to_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cifar10_to_folder_writes_the_imagefolder_layout_with_exact_pixels(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar
    from PIL import Image

    from workbench.data import load_dataset

    files = _fake_cifar(tmp_path / "download", per_batch=6)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)  # fake files, no md5 match
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    counts = converter().convert(tmp_path / "cifar10", tmp_path / "download", download=False)
    assert counts == {"train": 30, "test": 6}
    first = np.asarray(Image.open(next((tmp_path / "cifar10" / "test").glob("*/00000.png"))))
    assert (first == files["test_batch"][0].reshape(3, 32, 32).transpose(1, 2, 0)).all()
    s = load_dataset("imagefolder", root=tmp_path / "cifar10", val_fraction=0.0, cache_dir=tmp_path / "cache")
    assert len(s.test_y) == 6 and set(s.classes) <= {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


def test_laptop_study_runs_on_ones_own_folder_by_changing_root_alone(tmp_path, monkeypatch):
    from PIL import Image

    from workbench.runner import run_study
    from workbench.study import load_study

    rng = np.random.default_rng(0)
    own = tmp_path / "my_photos"
    for c, cls in enumerate(["cats", "dogs", "owls"]):
        (own / cls).mkdir(parents=True)
        for i in range(24):  # photos of another size than CIFAR's, in one tree (no train/test)
            base = np.full((40, 50, 3), 60 * c, dtype=np.uint8)
            Image.fromarray((base + rng.integers(0, 60, base.shape)).astype(np.uint8)).save(own / cls / f"{i}.jpg")
    raw = yaml.safe_load(STUDY.read_text())
    assert STUDY.read_text().count(f"root: {raw['data']['root']}") == 1  # the one line to change
    mine = tmp_path / "mine.yaml"
    mine.write_text(STUDY.read_text().replace(f"root: {raw['data']['root']}", f"root: {own}"))
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shrink = {"train.epochs": 1, "evaluation.examples": 12, "evaluation.soundness.examples": 12,
              "probes.examples": 8, "data.val_fraction": 0.1}
    run = run_study(load_study(mine, shrink), tmp_path / "run", device="cpu", threads=1, report=False)
    assert run.data.num_classes == 3 and tuple(run.data.test_x.shape[1:]) == (3, 32, 32)
    assert set(run.tables["robustness"]["model"]) == {"small_cnn/standard", "small_cnn/fgsm_rs"}
    assert {"lipschitz", "cka", "soundness"} <= set(run.tables)


def test_readme_bring_your_own_model_walkthrough_loads_as_written(tmp_path, monkeypatch):
    """The README's mynets.py and mine.yaml, written as they are: the study validates and its
    model loads from the factory and a checkpoint saved as the comment says."""
    import re
    import sys

    import torch

    from workbench.models.sources import load_source
    from workbench.study import load_study

    readme = (ROOT / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)\n```", readme, flags=re.S) if b.startswith("# mynets.py"))
    study = next(b for b in re.findall(r"```yaml\n(.*?)\n```", readme, flags=re.S) if b.startswith("# mine.yaml"))
    (tmp_path / "mynets.py").write_text(code)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "cifar10_laptop.yaml").write_text(STUDY.read_text())
    (tmp_path / "mine.yaml").write_text(study)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mynets", None)
    import mynets

    torch.manual_seed(0)
    net = mynets.build(width=32).eval()
    torch.save(net.state_dict(), "mine.pt")
    s = load_study("mine.yaml")
    assert s.name == "mine" and [m.id for m in s.loaded] == ["mine"] and len(s.model_ids()) == 3
    lm = load_source(s.loaded[0].source, num_classes=10, in_shape=(3, 32, 32))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), net(x))
    assert len(lm.model.layer_names()) >= 3
