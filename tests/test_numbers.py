"""Numbers that are right: where warmup starts, the epoch's last accumulation group, the throughput of a
resumed epoch, and the course's detection recipe."""

import pytest
import torch
import yaml
from torch import nn

from conftest import REPO
from engine_fixtures import make_spec, prepared_hornet
from frelon.config import validate
from frelon.spec import resolve
from frelon.tasks.classification import ClassificationTask
from frelon.train import engine
from frelon.parallel.distributed import World
from frelon.train.schedules import build_scheduler

CPU = World(0, 1, 0, torch.device("cpu"))
SCHEMA = REPO / "config" / "schema.yaml"
SCALING = "results/runs/scaling"  # demo: base_batch 16, batch 16 per process, base_lr 0.01, 1 warmup epoch


@pytest.fixture
def demo():
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["train"]["lr_schedule"].pop("warmup_start_factor", None)  # where warmup starts left to the default
    return config


def first_lrs(train: dict, steps: int) -> list[float]:
    """The lr of the first `steps` optimizer steps of a run with 4 steps per epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train["lr"])
    scheduler = build_scheduler(optimizer, train["lr_schedule"], steps_per_epoch=4, total_steps=4 * train["epochs"])
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_under_linear_scaling_warmup_starts_from_the_unscaled_lr_as_in_goyal_et_al(demo):
    train = resolve(validate(demo, SCHEMA), f"{SCALING}/w2-linear-warmup")["train"]
    assert train["global_batch"] == 32 and train["lr"] == pytest.approx(2 * train["base_lr"])
    assert train["lr_schedule"]["warmup_start_factor"] == pytest.approx(0.5)  # spec.json says what ran
    lrs = first_lrs(train, 5)
    assert lrs[0] == pytest.approx(train["base_lr"]) and lrs[4] == pytest.approx(train["lr"])


def test_an_explicit_start_factor_wins_and_without_scaling_warmup_starts_from_zero(demo):
    demo["studies"]["scaling"]["experiments"]["w2-linear-warmup"]["train"]["lr_schedule"]["warmup_start_factor"] = 0.1
    config = validate(demo, SCHEMA)
    linear = resolve(config, f"{SCALING}/w2-linear-warmup")["train"]
    assert first_lrs(linear, 1)[0] == pytest.approx(0.1 * linear["lr"])
    fixed = resolve(config, f"{SCALING}/w2-fixed-warmup")["train"]
    assert fixed["lr_schedule"]["warmup_start_factor"] == 0.0 and first_lrs(fixed, 1) == [0.0]


def test_a_global_batch_below_the_base_batch_has_nothing_to_warm_up_from(demo):
    demo["studies"]["scaling"]["experiments"]["w2-linear-warmup"]["train"]["batch_size"] = 4  # global batch 8
    train = resolve(validate(demo, SCHEMA), f"{SCALING}/w2-linear-warmup")["train"]
    assert train["lr"] == pytest.approx(train["base_lr"] / 2)
    assert train["lr_schedule"]["warmup_start_factor"] == 1.0
    assert first_lrs(train, 4) == pytest.approx([train["lr"]] * 4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_hornet(tmp_path_factory.mktemp("hornet"))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


class SmallNetTask(ClassificationTask):
    """Classification with a net without batch norm (a micro-batch's gradient is its own), keeping its batches."""

    def __init__(self, spec):
        super().__init__(spec)
        self.batches = []

    def build_model(self, pretrained):
        return small_net()

    def loss(self, model, batch):
        self.batches.append([t.clone() for t in batch])
        return super().loss(model, batch)


def test_the_last_accumulation_group_of_an_epoch_averages_over_its_own_micro_batches(data, tmp_path, monkeypatch):
    spec = make_spec(data, tmp_path, epochs=1, world_size=1, batch_size=4, accumulate=3, lr=0.0,
                     precision="fp32")  # weights stay; float32 like the reference below
    grads, optimizer_step = [], engine._optimizer_step

    def recording(model, *args):
        grads.append([p.grad.clone() for p in model.parameters()])
        return optimizer_step(model, *args)

    monkeypatch.setattr(engine, "_optimizer_step", recording)
    task = SmallNetTask(spec)
    engine.fit(task, spec, CPU)
    last = len(task.batches) % 3  # micro-batches in the epoch's last group
    assert last and len(grads) == len(task.batches) // 3 + 1
    for group, batches in ((0, task.batches[:3]), (len(grads) - 1, task.batches[-last:])):
        model = small_net()
        for x, y in batches:
            (nn.functional.cross_entropy(model(x), y) / len(batches)).backward()
        for ours, reference in zip(grads[group], model.parameters()):
            torch.testing.assert_close(ours, reference.grad, msg=f"group {group + 1}")


class Interrupted(Exception):
    """The process dies."""


class InterruptedTask(SmallNetTask):
    """Dies at its fifth batch, after the state of step 4 was saved."""

    def loss(self, model, batch):
        if len(self.batches) == 4:
            raise Interrupted()
        return super().loss(model, batch)


def test_a_resumed_epoch_reports_the_throughput_of_the_batches_it_timed(data, tmp_path):
    spec = make_spec(data, tmp_path / "resumed", epochs=1, world_size=1, batch_size=4, checkpoint_every=4)
    with pytest.raises(Interrupted):
        engine.fit(InterruptedTask(spec), spec, CPU)
    row = engine.fit(SmallNetTask(spec), spec, CPU).epochs[0]
    images = len(SmallNetTask(spec).dataset("train"))
    assert row["timed_images"] == images - 4 * 4  # from batch 5: the first 4 ran in the process that died
    assert row["images_per_second"] == pytest.approx(row["timed_images"] / row["epoch_seconds"])
    whole = make_spec(data, tmp_path / "whole", epochs=1, world_size=1, batch_size=4, checkpoint_every=4)
    uninterrupted = engine.fit(SmallNetTask(whole), whole, CPU).epochs[0]
    assert uninterrupted["timed_images"] == images
    assert row["train_loss"] == pytest.approx(uninterrupted["train_loss"])  # the means cover the whole epoch


@pytest.mark.parametrize("experiment, global_batch, lr", [
    *[(f"voc{size}-{decoder}", 32, 1.25e-4) for size in (384, 512) for decoder in ("deconv", "dcn", "unet")],
    *[(f"coco512-{decoder}", 128, 5e-4) for decoder in ("deconv", "dcn", "unet")]])
def test_the_course_trains_detection_with_the_papers_batches_and_learning_rates(experiment, global_batch, lr):
    """The official scripts: VOC at batch 32 and lr 1.25e-4 (about 36 k steps in 70 epochs), COCO at 128 and
    5e-4; each on 4 GPUs."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["datasets"]["hornet"]["source"] = str(REPO)  # the course data need not exist to resolve a spec
    train = resolve(config, f"results/runs/detection/{experiment}")["train"]
    assert (train["world_size"], train["global_batch"]) == (4, global_batch)
    assert train["lr"] == pytest.approx(lr)
