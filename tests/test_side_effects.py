"""Library calls leave the caller's process as they found it: torch's thread count, the
BLAS thread limits (threadpoolctl) and torch's global RNG."""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_info

import workbench.runner as runner_mod
from workbench.probes.linearity import local_linearity
from workbench.probes.lipschitz import lipschitz, logit_lipschitz
from workbench.runner import load_study_data, run_study
from workbench.state import cpu_threads, cudnn_benchmark, eval_mode, seeded_rng
from workbench.study import study_from_dict
from workbench.training import build_model

from test_training import tiny_study


def _blas_limits() -> list[tuple[str, int]]:
    return sorted((p["internal_api"], p["num_threads"]) for p in threadpool_info())


def test_run_study_restores_threads_blas_limits_and_the_global_rng(tmp_path, monkeypatch):
    study = study_from_dict({
        **tiny_study(("standard", "pgd_at"), train={"epochs": 1}).to_dict(),
        "evaluation": {"examples": 32, "eps": [0.1], "attacks": ["fgsm", {"name": "pgd", "steps": 2, "restarts": 2}],
                       "soundness": {"enabled": True, "examples": 16, "noise_draws": 1}, "batch_size": 16},
        "probes": {"examples": 16, "batch_size": 16, "lipschitz": {"steps": 2, "eps": [0.1], "eps_l2": [0.5]},
                   "linearity": {"steps": 2, "eps": [0.1], "surface": {"grid": 3, "examples": 1}}},
    })
    torch.manual_seed(1234)
    torch.rand(3)  # a state that no seeding call would produce
    rng, threads, blas = torch.get_rng_state(), torch.get_num_threads(), _blas_limits()
    assert threads == 1  # conftest; the run below asks for 2
    seen = {}
    real_train = runner_mod.train_models

    def spy(*args, **kw):  # the setting is in force during the run...
        seen["threads"], seen["blas"] = torch.get_num_threads(), {n for _, n in _blas_limits()}
        return real_train(*args, **kw)

    monkeypatch.setattr(runner_mod, "train_models", spy)
    run_study(study, tmp_path / "run", store=tmp_path / "store", progress=False, threads=2, device="cpu")
    assert seen == {"threads": 2, "blas": {2}}
    # ...and gone afterwards
    assert torch.get_num_threads() == threads
    assert _blas_limits() == blas
    assert torch.equal(torch.get_rng_state(), rng)


def test_build_model_keeps_the_callers_rng_and_still_pairs_weights():
    study = tiny_study(("standard", "pgd_at"))
    data = load_study_data(study, torch.device("cpu"))
    torch.manual_seed(99)
    before = torch.get_rng_state()
    a, b = (build_model(s, data) for s in study.models())
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # the weights are the seeded draw, not whatever the caller's stream held
    torch.manual_seed(7)
    c = build_model(study.models()[0], data)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_probes_called_directly_leave_the_global_rng_alone():
    study = tiny_study()
    data = load_study_data(study, torch.device("cpu"))
    model = build_model(study.models()[0], data).eval()
    x, y = data.test_x[:8], data.test_y[:8]
    torch.manual_seed(5)
    before = torch.get_rng_state()
    lipschitz(model, x, y, "all", [0.1], "linf", steps=2)
    logit_lipschitz(model, x, 0.1, 2)
    local_linearity(model, x, y, 0.1, 2)
    assert torch.equal(torch.get_rng_state(), before)


def test_scoped_state_helpers_restore_on_exceptions():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    model.train()
    model[0].eval()  # a mixed state comes back exactly
    torch.manual_seed(3)
    rng, bench = torch.get_rng_state(), torch.backends.cudnn.benchmark
    try:
        with eval_mode(model), seeded_rng(11), cpu_threads(2), cudnn_benchmark(not bench):
            assert not any(m.training for m in model.modules())
            assert torch.get_num_threads() == 2 and torch.backends.cudnn.benchmark is not bench
            first = torch.rand(2)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert [m.training for m in model.modules()] == [True, False, True]
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == 1
    assert torch.backends.cudnn.benchmark is bench
    with seeded_rng(11):
        assert torch.equal(torch.rand(2), first)  # the seed alone decides the draws inside
