import math

import pytest
import torch

from frelon.train.schedules import build_scheduler, scaled_lr, warmup_cosine


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 256, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 8192, 256) == pytest.approx(3.2)  # Goyal et al.: 32x batch, 32x lr
    assert scaled_lr(0.02, 32, 64) == pytest.approx(0.01)


def test_warmup_starts_at_start_factor_and_reaches_one():
    f = lambda step: warmup_cosine(step, total_steps=100, warmup_steps=10, start_factor=0.1, final_factor=0.0)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx(1.0)


def test_cosine_decays_to_final_factor():
    f = lambda step: warmup_cosine(step, total_steps=100, warmup_steps=10, start_factor=0.1, final_factor=0.01)
    assert f(55) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(100) == pytest.approx(0.01)
    assert f(150) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_scheduler_steps_the_optimizer_per_iteration():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4, start_factor=0.25, final_factor=0.0)
    seen = []
    for _ in range(21):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.1)
    assert seen[4] == pytest.approx(0.4)
    assert seen[12] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert seen[20] == pytest.approx(0.0, abs=1e-12)
