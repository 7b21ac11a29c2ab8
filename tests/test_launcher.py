import pytest

from frelon.errors import FrelonError
from frelon.train.launcher import gpu_slots


def test_concurrent_jobs_get_disjoint_gpus(tmp_path):
    with gpu_slots(2, ["0", "1", "2", "3"], tmp_path) as first:
        with gpu_slots(2, ["0", "1", "2", "3"], tmp_path) as second:
            assert len(first) == len(second) == 2
            assert not set(first) & set(second)


def test_gpus_are_free_again_after_a_job(tmp_path):
    with gpu_slots(2, ["0", "1"], tmp_path):
        pass
    with gpu_slots(2, ["0", "1"], tmp_path) as again:
        assert again == ["0", "1"]


def test_a_job_waits_no_longer_than_its_timeout_when_gpus_are_taken(tmp_path):
    with gpu_slots(1, ["0"], tmp_path):
        with pytest.raises(FrelonError, match="no 1 free GPUs"):
            with gpu_slots(1, ["0"], tmp_path, timeout_s=0.2, poll_s=0.05):
                pass


def test_world_size_larger_than_the_gpus_fails_before_training(tmp_path):
    with pytest.raises(FrelonError, match="world_size 4 needs 4 GPUs but only 2 are visible"):
        with gpu_slots(4, ["0", "1"], tmp_path):
            pass


def test_one_process_starts_the_worker_directly_and_n_processes_go_through_torchrun(monkeypatch):
    from frelon.train import launcher

    calls = []
    monkeypatch.setattr(launcher, "_run_forwarding_signals", lambda cmd, env: calls.append((cmd, env)) or 0)
    launcher.launch(["train", "spec.json"], 1, "cpu", threads=2)
    launcher.launch(["train", "spec.json"], 2, "cpu", threads=2)
    (single, single_env), (multi, multi_env) = calls
    assert single[1:] == ["-m", "frelon.train.worker", "train", "spec.json"]
    assert (single_env["RANK"], single_env["WORLD_SIZE"], single_env["OMP_NUM_THREADS"]) == ("0", "1", "2")
    assert multi[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=2" in multi
    assert multi_env["OMP_NUM_THREADS"] == "1"
