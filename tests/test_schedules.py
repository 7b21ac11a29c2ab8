import math

import pytest
import torch

from frelon.train.schedules import build_scheduler, lr_factor, scaled_lr, warmup_start_factor

EPOCH = 10  # optimizer steps per epoch in these tables


def table(policy, epochs=10):
    return [lr_factor(s, policy, EPOCH, epochs * EPOCH) for s in range(epochs * EPOCH + 1)]


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 256, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 8192, 256) == pytest.approx(3.2)  # Goyal et al.: 32x batch, 32x lr
    assert scaled_lr(0.02, 32, 64) == pytest.approx(0.01)


def test_warmup_runs_linearly_from_the_start_factor_to_one():
    f = table({"warmup_epochs": 1, "warmup_start_factor": 0.1, "decay": "constant"})
    assert f[0] == pytest.approx(0.1)
    assert f[5] == pytest.approx(0.55)
    assert f[10] == pytest.approx(1.0) and f[60] == 1.0


def test_by_default_warmup_starts_from_the_unscaled_lr_under_linear_scaling_and_from_zero_without():
    assert warmup_start_factor("linear", 1024, 256) == 0.25  # Goyal et al.: base_lr, then up to 4x base_lr
    assert warmup_start_factor("linear", 128, 256) == 1.0  # the lr is scaled down: nothing to warm up from
    assert warmup_start_factor("none", 1024, 256) == 0.0
    assert table({"warmup_epochs": 1, "decay": "constant"})[0] == 0.0  # a policy that does not say


def test_warmup_in_iterations_overrides_epochs():
    f = table({"warmup_epochs": 5, "warmup_iterations": 4, "warmup_start_factor": 0.0, "decay": "constant"})
    assert f[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_cosine_decays_to_the_final_factor():
    f = table({"warmup_epochs": 1, "warmup_start_factor": 0.1, "decay": "cosine", "final_factor": 0.01})
    assert f[55] == pytest.approx(0.01 + 0.99 * 0.5)
    assert f[100] == pytest.approx(0.01)
    assert all(f[s] >= f[s + 1] for s in range(10, 100))


def test_step_decay_every_n_epochs():
    f = table({"decay": "step", "step_epochs": 3, "gamma": 0.1})
    assert f[29] == 1.0 and f[30] == pytest.approx(0.1) and f[60] == pytest.approx(0.01)


def test_multistep_decay_at_milestones_after_warmup():
    # Goyal et al.: 5 warmup epochs, then x0.1 at epochs 30, 60, 80 (here 3, 6, 8)
    f = table({"warmup_epochs": 0.5, "warmup_start_factor": 0.0, "decay": "multistep",
               "milestones": [3, 6, 8], "gamma": 0.1})
    assert f[0] == 0.0 and f[5] == 1.0
    assert f[29] == 1.0 and f[30] == pytest.approx(0.1) and f[60] == pytest.approx(0.01)
    assert f[80] == pytest.approx(0.001)


def test_polynomial_decay():
    f = table({"decay": "poly", "power": 2.0, "final_factor": 0.0})
    assert f[0] == 1.0 and f[50] == pytest.approx(0.25) and f[100] == 0.0


def test_scheduler_steps_the_optimizer_per_iteration():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    policy = {"warmup_iterations": 4, "warmup_start_factor": 0.25, "decay": "cosine", "final_factor": 0.0}
    sched = build_scheduler(opt, policy, steps_per_epoch=5, total_steps=20)
    seen = []
    for _ in range(21):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.1)
    assert seen[4] == pytest.approx(0.4)
    assert seen[12] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert seen[20] == pytest.approx(0.0, abs=1e-12)


def test_a_policy_that_says_nothing_decays_by_cosine_to_zero_without_warmup():
    f = table({})
    assert f[0] == 1.0 and f[50] == pytest.approx(0.5) and f[100] == 0.0


def test_after_the_last_step_the_factor_stays_at_the_final_one():
    policy = {"decay": "cosine", "final_factor": 0.2}
    assert lr_factor(150, policy, EPOCH, 100) == pytest.approx(0.2)
    assert lr_factor(150, {"decay": "poly", "final_factor": 0.2}, EPOCH, 100) == pytest.approx(0.2)


def test_a_decay_of_one_step_after_warmup_ends_at_its_next_step():
    policy = {"warmup_iterations": 2, "warmup_start_factor": 0.0, "decay": "cosine", "final_factor": 0.0}
    assert [lr_factor(s, policy, EPOCH, 3) for s in range(4)] == pytest.approx([0.0, 0.5, 1.0, 0.0])


def test_polynomial_decay_is_linear_by_default_and_ends_at_its_final_factor():
    f = table({"decay": "poly", "final_factor": 0.1})
    assert f[0] == 1.0 and f[50] == pytest.approx(0.1 + 0.9 * 0.5) and f[100] == pytest.approx(0.1)
    f = table({"decay": "poly", "power": 3.0, "final_factor": 0.1})
    assert f[50] == pytest.approx(0.1 + 0.9 * 0.5**3)


def test_step_and_multistep_divide_by_ten_unless_told_another_gamma():
    assert table({"decay": "step", "step_epochs": 3})[30] == pytest.approx(0.1)
    assert table({"decay": "step", "step_epochs": 3, "gamma": 0.5})[60] == pytest.approx(0.25)
    assert table({"decay": "multistep", "milestones": [2, 5]})[50] == pytest.approx(0.01)
    assert table({"decay": "multistep", "milestones": [2, 5], "gamma": 0.5})[49] == pytest.approx(0.5)


def test_an_unknown_decay_is_named_with_the_choices():
    from frelon.errors import FrelonError

    with pytest.raises(FrelonError, match="train.lr_schedule.decay 'exp' is unknown: choose one of cosine, step, "
                                          "multistep, poly, constant$"):
        lr_factor(0, {"decay": "exp"}, EPOCH, 100)


def test_the_scheduler_counts_warmup_epochs_in_its_steps_per_epoch():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = build_scheduler(opt, {"warmup_epochs": 1, "warmup_start_factor": 0.0, "decay": "constant"},
                            steps_per_epoch=4, total_steps=8)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
