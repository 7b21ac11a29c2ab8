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
