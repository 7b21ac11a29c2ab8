"""The training engine in one process: outputs, accumulation, NaN detection, refused state."""

import json
import math

import pandas as pd
import pytest
import torch

from engine_fixtures import make_spec, prepared_hornet
from frelon import tasks
from frelon.errors import FrelonError
from frelon.studies.checkpointing import policy_label as memory_label
from frelon.tasks.classification import ClassificationTask
from frelon.train import checkpoints, engine
from frelon.launch import worker
from frelon.parallel.distributed import World

CPU = World(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_hornet(tmp_path_factory.mktemp("hornet"))


def test_a_run_writes_history_iterations_tensorboard_lr_plot_and_model(data, tmp_path):
    spec = make_spec(data, tmp_path, epochs=2, world_size=1, batch_size=8)
    epochs = engine.fit(ClassificationTask(spec), spec, CPU).epochs
    history = pd.read_csv(tmp_path / "history.csv")
    iterations = pd.read_csv(tmp_path / "iterations.csv")
    assert list(history.epoch) == [1, 2] and history.equals(pd.DataFrame(epochs))
    for column in ("train_loss", "train_accuracy", "val_accuracy", "images_per_second", "peak_memory_mb"):
        assert (history[column] > 0).all(), column
    assert ((history.data_wait_fraction >= 0) & (history.data_wait_fraction < 1)).all()
    steps_per_epoch = math.ceil(len(ClassificationTask(spec).dataset("train")) / 8)
    assert list(iterations.step) == list(range(1, 2 * steps_per_epoch + 1))
    start = spec["train"]["lr_schedule"]["warmup_start_factor"]  # recorded in the spec by resolve
    assert iterations.lr.iloc[0] == pytest.approx(spec["train"]["lr"] * start)
    assert {"data_seconds", "compute_seconds", "images_per_second"} <= set(iterations.columns)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["spec"] == spec and (tmp_path / "state" / "finished.pt").exists()  # until the run is scored
    engine.finish(spec, CPU)
    assert not (tmp_path / "state").exists()


def test_accumulation_counts_optimizer_steps_and_the_effective_batch(data, tmp_path):
    spec = make_spec(data, tmp_path, epochs=1, world_size=1, batch_size=4, accumulate=3)
    engine.fit(ClassificationTask(spec), spec, CPU)
    iterations = pd.read_csv(tmp_path / "iterations.csv")
    assert len(iterations) == math.ceil(math.ceil(len(ClassificationTask(spec).dataset("train")) / 4) / 3)


def test_weight_decay_spares_norm_parameters_and_biases():
    from frelon.models.resnet import ResNet
    from frelon.train.optim import param_groups

    decay, no_decay = param_groups(ResNet("resnet18"), 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])


class ExplodingTask(ClassificationTask):
    """Classification whose loss turns NaN from the fourth batch on."""

    calls = 0

    def loss(self, model, batch):
        loss, stats = super().loss(model, batch)
        self.calls += 1
        return (loss * float("nan") if self.calls > 3 else loss), stats


def test_a_nan_loss_stops_the_run_naming_the_iteration_and_the_last_checkpoint(data, tmp_path):
    spec = make_spec(data, tmp_path, epochs=3, world_size=1, batch_size=8, checkpoint_every=2, log_every=1)
    with pytest.raises(FrelonError, match=r"NaN or infinite by iteration 4 .*last good checkpoint: .*state/last.pt"):
        engine.fit(ExplodingTask(spec), spec, CPU)
    saved = torch.load(tmp_path / "state" / "last.pt", weights_only=True)
    assert saved["step"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values())
    assert not (tmp_path / "model.pt").exists()


def test_with_on_divergence_stop_a_nan_loss_ends_the_run_as_diverged_and_evaluation_scores_nothing(data, tmp_path,
                                                                                                 monkeypatch):
    spec = make_spec(data, tmp_path, epochs=3, world_size=1, batch_size=8, log_every=1, on_divergence="stop")
    monkeypatch.setattr(tasks, "build", ExplodingTask)
    worker.train(spec, str(tmp_path / "metrics.json"), CPU)
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert final["diverged"] == {"step": 4, "epoch": 1}
    assert final["preprocessing"] == spec["data"]["preprocessing"]
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == 1 and history.step.tolist() == [4] and "val_accuracy" not in history
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["diverged"] == {"step": 4, "epoch": 1} and "accuracy" not in metrics
    assert not (tmp_path / "state").exists()
    worker.evaluate(spec, str(tmp_path / "model.pt"), str(tmp_path / "evaluated.json"), CPU)  # from the file
    assert json.loads((tmp_path / "evaluated.json").read_text()) == metrics


def test_evaluation_refuses_a_checkpoint_trained_with_other_preprocessing(data, tmp_path):
    spec = make_spec(data, tmp_path, epochs=1, world_size=1, batch_size=8)
    engine.fit(ClassificationTask(spec), spec, CPU)
    spec["data"]["preprocessing"]["mean"] = [0.5, 0.5, 0.5]
    with pytest.raises(FrelonError, match="trained with preprocessing .* retrain it"):
        worker.evaluate(spec, str(tmp_path / "model.pt"), str(tmp_path / "metrics.json"), CPU)
    assert not (tmp_path / "metrics.json").exists()


def test_training_with_checkpointing_ends_with_the_weights_of_training_without(data, tmp_path):
    final = {}
    for policy in ("none", ["layer2", "layer4"]):
        spec = make_spec(data, tmp_path / memory_label(policy), epochs=1, world_size=1, batch_size=8,
                         checkpointing=policy)
        engine.fit(ClassificationTask(spec), spec, CPU)
        final[memory_label(policy)] = torch.load(tmp_path / memory_label(policy) / "model.pt", weights_only=True)["model"]
    for name, value in final["none"].items():
        torch.testing.assert_close(final["layer2+layer4"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_state_from_another_spec_is_refused_with_what_changed(tmp_path):
    spec = {"seed": 0, "output": "a", "train": {"epochs": 2, "lr": 0.1}}
    checkpoints.save(tmp_path / "last.pt", {"spec": spec})
    other = {"seed": 0, "output": "b", "train": {"epochs": 3, "lr": 0.1}}
    with pytest.raises(FrelonError, match=r"another spec \(train.epochs: 2 -> 3\).*delete"):
        checkpoints.load(tmp_path / "last.pt", other)
    assert checkpoints.load(tmp_path / "last.pt", {**spec, "output": "moved"})["spec"] == spec


def test_sync_batchnorm_on_cpu_asks_for_gpus(data, tmp_path):
    spec = make_spec(data, tmp_path, epochs=1, world_size=1, sync_bn=True)
    with pytest.raises(FrelonError, match="sync_bn needs GPUs"):
        engine.fit(ClassificationTask(spec), spec, CPU)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train_with_finite_losses(precision, data, tmp_path):
    spec = make_spec(data, tmp_path, epochs=1, world_size=1, batch_size=8, precision=precision,
                     channels_last=True, grad_clip=1.0, optimizer="adamw")
    epochs = engine.fit(ClassificationTask(spec), spec, CPU).epochs
    assert math.isfinite(epochs[0]["train_loss"])
    iterations = pd.read_csv(tmp_path / "iterations.csv")
    assert iterations.loss.map(math.isfinite).all()


def test_loader_workers_give_the_same_result_as_the_main_process(data, tmp_path):
    results = []  # two epochs: the workers, kept from the first, mirror with the second's draws
    for workers in (0, 2):
        spec = make_spec(data, tmp_path / f"w{workers}", epochs=2, world_size=1, batch_size=8, workers=workers)
        engine.fit(ClassificationTask(spec), spec, CPU)
        results.append(torch.load(tmp_path / f"w{workers}" / "model.pt", weights_only=True)["model"])
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_torch_compile_computes_what_eager_mode_computes(data, tmp_path):
    first_losses = []
    for compiled in (False, True):
        spec = make_spec(data, tmp_path / str(compiled), epochs=1, world_size=1, batch_size=8, compile=compiled,
                         precision="fp32", val_every=0)  # bf16 rounds differently once fused; no eval graph to compile
        engine.fit(ClassificationTask(spec), spec, CPU)
        first_losses.append(pd.read_csv(tmp_path / str(compiled) / "iterations.csv").loss.iloc[0])
    assert first_losses[1] == pytest.approx(first_losses[0], rel=1e-4)  # same batch, same weights


def test_rank_zero_shows_a_progress_bar(data, tmp_path, capsys):
    spec = make_spec(data, tmp_path, epochs=1, world_size=1, batch_size=8)
    engine.fit(ClassificationTask(spec), spec, CPU)
    assert "epoch 1/1" in capsys.readouterr().err


@pytest.mark.parametrize("minutes, saves", [(0, 2), (60, 0)])
def test_epoch_end_states_are_saved_at_most_every_checkpoint_minutes(minutes, saves, data, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(checkpoints, "save", lambda path, state: written.append(state["epoch"]))
    spec = make_spec(data, tmp_path, epochs=3, world_size=1, batch_size=8, checkpoint_minutes=minutes)
    engine.fit(ClassificationTask(spec), spec, CPU)
    assert written == [1, 2][:saves] and (tmp_path / "model.pt").exists()  # none after the last epoch


@pytest.mark.parametrize("flags, native", [
    ("flags\t\t: fpu avx512f avx512bw avx512_bf16 amx_tile", True),
    ("flags\t\t: fpu avx2 avx512f avx512bw avx512vl avx512dq", False),   # bf16 only emulated
    ("Features\t: fp asimd bf16 i8mm", True),                          # Arm
    ("processor\t: 0", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{flags}\n")
    assert engine.cpu_has_native_bf16(str(tmp_path / "cpuinfo")) is native
    assert engine.cpu_has_native_bf16(str(tmp_path / "absent")) is False


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_and_the_run_says_which(data, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda native=native: native)
        assert engine.resolve_precision("auto", cpu) == expected
        assert engine.resolve_precision("fp16", cpu) == "fp16" and engine.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.undo()
    spec = make_spec(data, tmp_path, epochs=1, world_size=1, batch_size=8, precision="auto")
    engine.fit(ClassificationTask(spec), spec, CPU)
    worker.evaluate(spec, str(tmp_path / "model.pt"), str(tmp_path / "metrics.json"), CPU)
    used = engine.resolve_precision("auto", cpu)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["precision"] == used
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == used


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_a_gpu_is_bf16_from_ampere_on_and_fp16_with_a_loss_scaler_before(capability, expected,
                                                                                            monkeypatch):
    """V100 (7.0) and T4/RTX 20xx (7.5) only emulate bf16, slower than fp32; the engine's GradScaler is on
    for fp16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert engine.resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert engine.resolve_precision("bf16", torch.device("cuda", 0)) == "bf16"  # asked for: as it is


def test_cudnn_picks_its_fastest_algorithms_on_a_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    engine.configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False  # CPU runs stay bit-reproducible
    engine.configure_backends(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True


def test_per_batch_counts_made_on_the_host_reach_the_device_without_a_blocking_copy(monkeypatch):
    """A blocking host-to-GPU copy waits for the device's queued work (the whole backward) every micro-batch."""
    copies = []
    to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        moved = to(self, *args, **kwargs)
        if moved.device != self.device:
            copies.append(kwargs.get("non_blocking", False))
        return moved

    monkeypatch.setattr(torch.Tensor, "to", spy)
    device = torch.device("meta")  # stands in for a GPU: any device other than the host's
    sums = {}
    for _ in range(2):
        engine._accumulate(sums, {"samples": torch.tensor(8), "loss": torch.tensor(3.0, device=device)}, device)
    monkeypatch.undo()
    assert sums["samples"].device == device and sums["samples"].dtype == torch.float64
    assert copies and all(copies)  # every host-to-device copy: non-blocking
    cpu = {}
    engine._accumulate(cpu, {"samples": torch.tensor(8)}, torch.device("cpu"))
    engine._accumulate(cpu, {"samples": torch.tensor(4)}, torch.device("cpu"))
    assert cpu["samples"].item() == 12.0


class RawTask(ClassificationTask):
    """Its training set hands uint8 batches (`RawBatch`), as the engine asks for on a GPU."""

    def dataset(self, split, train=False):
        dataset = super().dataset(split, train)
        dataset.raw = dataset.raw is None or dataset.raw
        return dataset


def test_uint8_batches_finished_where_the_model_is_train_the_weights_of_float_batches(data, tmp_path):
    """What a GPU run gets (uint8 to the device, mirrored and normalised there), on the CPU's tensors."""
    weights = []
    for name, task in (("float", ClassificationTask), ("uint8", RawTask)):
        spec = make_spec(data, tmp_path / name, epochs=2, world_size=1, batch_size=8, workers=1)
        assert task(spec).dataset("train", train=True).raw is (None if task is ClassificationTask else True)
        weights.append(engine.fit(task(spec), spec, CPU).model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow  # four training runs
@pytest.mark.parametrize("augment", [["mirror"], ["mirror", "affine", "colour", "noise", "erasing"]])
def test_uint8_batches_augmented_where_the_model_is_train_what_float_batches_train(augment, data, tmp_path):
    """Every online augmentation, batched on the device (here the CPU's tensors), trains the weights the
    loader workers' batches train (within float tolerance: the same draws, the same kernels)."""
    weights = []
    for name, task in (("float", ClassificationTask), ("uint8", RawTask)):
        spec = make_spec(data, tmp_path / name, epochs=1, world_size=1, batch_size=8, workers=1)
        spec["data"]["augment"] = augment
        weights.append(engine.fit(task(spec), spec, CPU).model.state_dict())
    close = torch.equal if augment == ["mirror"] else lambda a, b: torch.allclose(a.float(), b.float(), atol=1e-4)
    assert all(close(weights[0][k], weights[1][k]) for k in weights[0])


def test_auto_workers_are_none_on_a_cpu_and_the_ranks_share_of_the_cpus_on_a_gpu(data, tmp_path, monkeypatch):
    from frelon.data.dataset import loader_workers

    spec = make_spec(data, tmp_path, epochs=1, world_size=1, batch_size=8)
    mirror = ClassificationTask(spec).dataset("train", train=True)
    spec["data"]["augment"] = ["mirror", "colour"]
    colour = ClassificationTask(spec).dataset("train", train=True)
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 ranks on the machine: 8 CPUs each
    assert loader_workers(3, mirror, gpu) == 3 and loader_workers(0, mirror, cpu) == 0
    assert loader_workers("auto", mirror, cpu) == 0
    assert (loader_workers("auto", mirror, gpu), loader_workers("auto", colour, gpu)) == (0, 4)
    assert loader_workers("auto", object(), gpu) == 7  # JPEGs to decode: every CPU but the rank's own
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert loader_workers("auto", object(), gpu) == 0
    spec["train"]["workers"] = "auto"  # a CPU run: no worker processes
    assert engine.fit(ClassificationTask(spec), spec, CPU).epochs


def test_a_runs_metrics_say_its_images_per_second_and_its_wait_for_input(data, tmp_path):
    spec = make_spec(data, tmp_path, epochs=2, world_size=1, batch_size=8)
    worker.train(spec, str(tmp_path / "metrics.json"), CPU)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    history = pd.read_csv(tmp_path / "history.csv")
    assert metrics["images_per_second"] == pytest.approx(history.images_per_second.median(), rel=1e-3)
    assert metrics["data_wait_fraction"] == pytest.approx(history.data_wait_fraction.median(), abs=1e-4)
