"""The optimizers: no weight decay on norms and biases, and the fused kernels, which update as the loop does."""

import torch
from torch import nn

from frelon.train.optim import build_optimizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))


def test_fused_sgd_takes_the_steps_of_the_loop_bit_for_bit_and_keeps_norms_and_biases_undecayed():
    cfg = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-3}
    models = [_model(), _model()]
    fused = build_optimizer(models[0], cfg)
    assert fused.defaults["fused"] and [g["weight_decay"] for g in fused.param_groups] == [1e-3, 0.0]
    loop = torch.optim.SGD([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in
                            build_optimizer(models[1], cfg).param_groups], lr=0.05, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 1, 0])
    for _ in range(4):
        for model, optimizer in zip(models, (fused, loop)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
