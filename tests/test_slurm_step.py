"""What a SLURM training step runs on each node (frelon.launch.node): a unit test of the command lines.
The real thing, on a real SLURM, is tests/test_slurm.py."""

import argparse
import os

import pytest

from frelon.errors import FrelonError
from frelon.launch import node


def args(world_size, nodes=1, device="auto"):
    return argparse.Namespace(world_size=world_size, nodes=nodes, device=device, rendezvous="vm:29400",
                              rendezvous_id="frelon-7", worker_args=["train", "s/spec.json"])


def test_one_node_starts_one_rank_per_gpu_slurm_gave_it_with_an_equal_share_of_its_cpus():
    cmd, env = node.command(args(2), {"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_CPUS_ON_NODE": "8"})
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[-3:] == ["frelon.launch.worker", "train", "s/spec.json"]
    assert env["OMP_NUM_THREADS"] == "4" and env["LOCAL_PROCESSES"] == "2"


def test_a_single_process_is_the_worker_itself():
    cmd, env = node.command(args(1), {"CUDA_VISIBLE_DEVICES": "0", "SLURM_CPUS_ON_NODE": "3"})
    assert cmd[1:3] == ["-m", "frelon.launch.worker"] and "torch.distributed.run" not in cmd
    assert (env["RANK"], env["WORLD_SIZE"], env["OMP_NUM_THREADS"]) == ("0", "1", "3")


def test_several_nodes_meet_in_a_c10d_rendezvous_on_the_first():
    cmd, env = node.command(args(8, nodes=2), {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "SLURM_CPUS_ON_NODE": "32"})
    assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--rdzv-backend") + 1] == "c10d"
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "vm:29400" and "--nproc-per-node=4" in cmd
    assert cmd[cmd.index("--rdzv-id") + 1] == "frelon-7" and "--standalone" not in cmd


def test_without_gpus_the_nodes_share_the_world_size():
    cmd, _ = node.command(args(4, nodes=2, device="cpu"), {"CUDA_VISIBLE_DEVICES": "0", "SLURM_CPUS_ON_NODE": "4"})
    assert "--nproc-per-node=2" in cmd
    with pytest.raises(FrelonError, match="world_size 3 does not divide into 2 nodes"):
        node.command(args(3, nodes=2, device="cpu"), {})


def test_an_allocation_with_the_wrong_number_of_gpus_is_an_error_naming_the_fix():
    with pytest.raises(FrelonError, match=r"world_size 2 but the allocation has 1 GPUs \(0\); ask SLURM for --gpus=2"):
        node.command(args(2), {"CUDA_VISIBLE_DEVICES": "0"})


def test_the_profile_sends_every_launched_rule_to_the_gpu_partition_with_the_warning_signal():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    profile = yaml.safe_load((root / "profiles" / "slurm" / "profile.yaml").read_text())
    rules_text = "".join(p.read_text() for p in (root / "rules").glob("*.smk"))
    launched = {"train", "train_detection", "train_pretrain", "train_attacked"}
    assert all(f"rule {name}:" in rules_text or f"as {name} with:" in rules_text for name in launched)
    for name in launched:
        rule = profile["set-resources"][name]
        assert rule["slurm_partition"] != profile["default-resources"]["slurm_partition"]
        assert "--signal=USR1@" in rule["slurm_extra"] and "B:" not in rule["slurm_extra"]
        assert rule["mpi"] == 0   # the launcher starts its own job step
    assert "--exclusive" in profile["set-resources"]["checkpointing_study"]["slurm_extra"]
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    marked = [line for line in (root / "profiles" / "slurm" / "profile.yaml").read_text().splitlines() if "<──" in line]
    assert {"slurm_account", "slurm_partition", "runtime", "gpu_model", "mem_mb_per_cpu"} <= {
        line.strip().lstrip("# ").split(":")[0] for line in marked}


def test_each_node_task_of_the_step_gets_the_jobs_cpus_and_gpus_there():
    """srun gives a task one CPU unless told (and since SLURM 22.05 no longer takes the job's
    --cpus-per-task): with CPU binding, a node's ranks and loader workers would share that one."""
    from frelon.launch import slurm

    one = slurm.step_command(["train", "s.json"], 2, 1, "auto", 10, endpoint="vm:1", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert "--cpus-per-task=10" in one and "--gpus-per-node=2" in one
    spread = slurm.step_command(["train", "s.json"], 8, 2, "auto", 12, endpoint="vm:1",
                                env={"SLURM_GPUS_PER_NODE": "a100:4"})
    assert "--cpus-per-task=12" in spread and "--gpus-per-node=4" in spread
    uneven = slurm.step_command(["train", "s.json"], 8, 2, "auto", 6, endpoint="vm:1",
                                env={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4"})
    assert "--cpus-per-task=6" in uneven and not any(a.startswith("--gpus-per-node") for a in uneven)
    cpu = slurm.step_command(["train", "s.json"], 2, 1, "cpu", 4, endpoint="vm:1", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert not any(a.startswith("--gpus-per-node") for a in cpu)


def test_the_jobs_nodes_and_cpus_per_node_come_from_its_variables_or_squeue(tmp_path, monkeypatch):
    """The SLURM executor's job step removes SLURM_JOB_NUM_NODES and SLURM_JOB_CPUS_PER_NODE."""
    from frelon.launch import slurm

    assert slurm.allocation("7", {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_CPUS_PER_NODE": "16(x1),12"}) == (2, 12)
    (tmp_path / "squeue").write_text("#!/bin/sh\necho '2 24'\n")
    (tmp_path / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert slurm.allocation("7", {}) == (2, 12)
    (tmp_path / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id' >&2\n")
    assert slurm.allocation("7", {"SLURM_JOB_NUM_NODES": "3"}) == (3, None)
    with pytest.raises(FrelonError, match="cannot tell how many nodes SLURM job 7 has .*Invalid job id"):
        slurm.allocation("7", {})
