"""The ascent engine on hand-made objectives whose maximiser is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.attacks.ascent import Ball, ascend, gaussian_start

W = torch.tensor([[1.0, -2.0, 0.0, 0.5]])


def linear(x_adv: torch.Tensor) -> torch.Tensor:
    """w·x′ per example: maximised over the L∞ box at x + ε·sign(w), over the L2 ball at x + ε·w/‖w‖."""
    return x_adv @ W[0]


def test_linf_and_l2_ascent_reach_the_closed_form_maximiser():
    x = torch.full((3, 4), 0.5)
    got = ascend(linear, x, 0.1, 3, norm="linf", starts=["clean"]).x
    torch.testing.assert_close(got, x + 0.1 * W.sign().expand_as(x), rtol=0, atol=1e-7)  # w₃ = 0 stays put
    top = x + 0.1 * (W / W.norm()).expand_as(x)
    got = ascend(linear, x, 0.1, 3, norm="l2", alpha=0.05, starts=["clean"]).x  # 2 steps to the sphere, then stays
    torch.testing.assert_close(got, top, rtol=0, atol=1e-6)
    # from a random start the part of δ across w shrinks every step (×ε/‖δ + αŵ‖)
    got = ascend(linear, x, 0.1, 40, norm="l2", alpha=0.05, starts=["random"], generator=torch.Generator().manual_seed(0)).x
    torch.testing.assert_close(got, top, rtol=0, atol=1e-5)


def test_the_unit_box_clips_every_iterate():
    x = torch.tensor([[0.95, 0.02, 0.5, 0.99]])
    for norm in ("linf", "l2"):
        got = ascend(linear, x, 0.2, 4, norm=norm, starts=["random"], generator=torch.Generator().manual_seed(1)).x
        assert got.min() >= 0 and got.max() <= 1
    got = ascend(linear, x, 0.2, 4, norm="linf", starts=["clean"]).x
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0, 0.5, 1.0]]), rtol=0, atol=1e-7)


def test_keep_best_returns_the_best_iterate_not_the_last():
    # ascend w·x′ but score iterates by −‖x′ − x‖∞: the start (the clean input) scores best
    x = torch.full((2, 4), 0.5)

    def objective(x_adv):
        return linear(x_adv), -(x_adv - x).abs().amax(1)

    found = ascend(objective, x, 0.1, 3, starts=["clean"], keep="best")
    assert torch.equal(found.x, x) and torch.equal(found.score, torch.zeros(2))
    # scored by the objective itself, the last (vertex) iterate wins, with its value as score
    found = ascend(linear, x, 0.1, 3, starts=["clean"], keep="best")
    assert found.score == pytest.approx([0.5 * (1 - 2 + 0 + 0.5) + 0.1 * 3.5] * 2)  # w·x + ε‖w‖₁


def test_restarts_keep_the_lexicographic_best_per_example():
    x = torch.zeros(3, 1)
    starts = [torch.full((3, 1), v) for v in (0.1, 0.2, 0.3)]
    # per start s and example i the score (fooled, loss) is scripted by the start's value
    table = {0.1: ([1, 0, 0], [0.0, 5.0, 1.0]), 0.2: ([0, 0, 1], [9.0, 6.0, 0.5]), 0.3: ([1, 0, 1], [0.5, 6.0, 0.4])}

    def score(x_adv):
        fooled, loss = table[round(float(x_adv[0, 0]), 1)]
        return torch.tensor(fooled, dtype=torch.bool), torch.tensor(loss)

    found = ascend(lambda xa: xa[:, 0], x, 1.0, 0, starts=starts, score=score)  # steps 0: the starts themselves
    # example 0: fooled at 0.1 and 0.3, higher loss at 0.3; example 1: nobody fooled, 6.0 first at 0.2
    # (ties keep the earlier start); example 2: fooled at 0.2 and 0.3, higher loss at 0.2
    assert found.x[:, 0].tolist() == pytest.approx([0.3, 0.2, 0.2])
    fooled, loss = found.score
    assert fooled.tolist() == [True, False, True] and loss.tolist() == pytest.approx([0.5, 6.0, 0.5])


def test_default_step_is_two_and_a_half_eps_over_steps():
    # one sign step of α from the clean input moves every coordinate with w ≠ 0 by exactly α
    x = torch.full((1, 4), 0.5)
    got = ascend(linear, x, 0.4, 1, starts=["clean"]).x  # α = 2.5·0.4/1 > ε: lands on the box
    torch.testing.assert_close(got, x + 0.4 * W.sign(), rtol=0, atol=1e-7)
    calls = []

    def recording(x_adv):
        calls.append(x_adv.clone())
        return linear(x_adv)

    ascend(recording, x, 0.4, 10, starts=["clean"])
    step = (calls[1] - calls[0]).abs().max().item()
    assert step == pytest.approx(2.5 * 0.4 / 10, abs=1e-6) and len(calls) == 10


def test_gaussian_start_lies_in_the_ball_and_is_seeded():
    x = torch.full((4, 8), 0.5)
    ball = Ball(x, 0.05, "linf")
    a = gaussian_start(1.0)(ball, torch.Generator().manual_seed(3))
    b = gaussian_start(1.0)(ball, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a - x).abs().max() <= 0.05 + 1e-7
    assert math.isclose(float((a - x).abs().max()), 0.05, abs_tol=1e-7)  # std ≫ ε: clipped to the box
