import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import tool_env
from frelon.errors import FrelonError
from frelon.parallel import gpu_locks, parentage
from frelon.launch import launcher
from frelon.parallel.gpu_locks import gpu_slots
from frelon.launch.launcher import visible_gpus


def test_concurrent_jobs_get_disjoint_gpus(tmp_path):
    with gpu_slots(2, ["0", "1", "2", "3"], tmp_path) as first:
        with gpu_slots(2, ["0", "1", "2", "3"], tmp_path) as second:
            assert len(first.gpus) == len(second.gpus) == 2
            assert not set(first.gpus) & set(second.gpus)


def test_gpus_are_free_again_after_a_job(tmp_path):
    with gpu_slots(2, ["0", "1"], tmp_path):
        pass
    with gpu_slots(2, ["0", "1"], tmp_path) as again:
        assert again.gpus == ["0", "1"]


def test_a_job_waits_no_longer_than_its_timeout_when_gpus_are_taken(tmp_path):
    with gpu_slots(1, ["0"], tmp_path):
        with pytest.raises(FrelonError, match="no 1 free GPUs"):
            with gpu_slots(1, ["0"], tmp_path, timeout_s=0.2, poll_s=0.05):
                pass


def test_world_size_larger_than_the_gpus_fails_before_training(tmp_path):
    with pytest.raises(FrelonError, match="world_size 4 needs 4 GPUs but only 2 are visible"):
        with gpu_slots(4, ["0", "1"], tmp_path):
            pass


def test_a_gpu_whose_rank_still_runs_is_not_given_out_although_its_launcher_is_gone(tmp_path):
    rank = gpu_locks._open_lock(tmp_path / "frelon-gpu0.rank.lock")  # a rank of a launch that was killed
    fcntl.flock(rank, fcntl.LOCK_EX)
    try:
        with gpu_slots(1, ["0", "1"], tmp_path) as claim:
            assert claim.gpus == ["1"]
        with pytest.raises(FrelonError, match="no 2 free GPUs"):
            with gpu_slots(2, ["0", "1"], tmp_path, timeout_s=0.2, poll_s=0.05):
                pass
    finally:
        os.close(rank)
    with gpu_slots(2, ["0", "1"], tmp_path) as claim:
        assert claim.gpus == ["0", "1"]


def test_a_claim_tells_the_ranks_their_lock_files_and_the_lease(tmp_path):
    with gpu_slots(2, ["3", "1", "2"], tmp_path) as claim:
        assert claim.gpus == ["3", "1"]
        assert claim.env["FRELON_GPU_LOCKS"].split(os.pathsep) == [str(tmp_path / "frelon-gpu3.rank.lock"),
                                                                    str(tmp_path / "frelon-gpu1.rank.lock")]
        lease = claim.env["FRELON_GPU_LEASE"]
        assert not gpu_locks._lease_expired(lease) and len(claim.fds) == 3  # the lease and two claims
    assert gpu_locks._lease_expired(lease)  # removed with the claim


@pytest.fixture
def rank_env(tmp_path, monkeypatch):
    """A rank's environment as a launcher sets it; yields (rank-lock path, lease path)."""
    path, lease = tmp_path / "frelon-gpu0.rank.lock", tmp_path / "lease"
    lease.touch()
    monkeypatch.setenv("FRELON_GPU_LOCKS", str(path))
    monkeypatch.setenv("FRELON_GPU_LEASE", str(lease))
    monkeypatch.setattr(gpu_locks, "_HELD_BY_THIS_RANK", held := [])
    yield path, lease
    for fd in held:
        os.close(fd)


def test_a_rank_holds_its_gpu_lock_while_its_launch_lives(rank_env):
    path, lease = rank_env
    holder = os.open(lease, os.O_RDONLY)  # the launcher (or torchrun) holds the lease
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        gpu_locks.hold_gpu(0)
        assert gpu_locks._in_use(path)
    finally:
        os.close(holder)


def test_a_rank_starting_after_its_launcher_and_torchrun_died_gives_the_gpu_back(rank_env):
    path, lease = rank_env  # nobody holds the lease: another launcher may have claimed the GPU since
    with pytest.raises(FrelonError, match="gone, so the GPU may be another job's"):
        gpu_locks.hold_gpu(0)
    assert not gpu_locks._in_use(path)


def test_lock_files_and_folder_are_usable_by_every_user_whatever_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        with gpu_slots(1, ["0"], tmp_path / "locks"):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "locks").stat().st_mode) == 0o1777
    for name in ("frelon-gpu0.lock", "frelon-gpu0.rank.lock"):
        assert stat.S_IMODE((tmp_path / "locks" / name).stat().st_mode) == 0o666


@pytest.mark.skipif(os.geteuid() == 0, reason="root may open any file read-write")
def test_a_lock_file_that_cannot_be_written_is_locked_read_only(tmp_path):
    (tmp_path / "frelon-gpu0.lock").touch(0o444)
    fd = gpu_locks._open_lock(tmp_path / "frelon-gpu0.lock")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    finally:
        os.close(fd)
    with gpu_slots(1, ["0"], tmp_path) as claim:
        assert claim.gpus == ["0"]
        with pytest.raises(FrelonError, match="no 1 free GPUs"):
            with gpu_slots(1, ["0"], tmp_path, timeout_s=0.1, poll_s=0.05):
                pass


def claim(n, candidates, lock_dir) -> list[str]:
    with gpu_slots(n, candidates, lock_dir, timeout_s=5, poll_s=0.05) as got:
        return got.gpus


def _as_another_user(func) -> str:
    """Run `func` in a forked child as user nobody (umask 077); its result, or its error, as text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.umask(0o077)
            os.write(write, repr(func()).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    assert os.waitpid(pid, 0)[1] == 0, out
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user")
def test_a_second_user_shares_the_lock_folder_with_the_first():
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # not under pytest's 0700 folder: nobody must reach it
    try:
        base.chmod(0o755)
        locks = base / "locks"
        previous = os.umask(0o077)
        try:
            with gpu_slots(1, ["0"], locks):  # the first user makes the folder
                pass
            legacy = locks / "frelon-gpu1.lock"  # as an older version left it (0644, the first user's) and holds it
            legacy.touch()
            legacy.chmod(0o644)
            older = os.open(legacy, os.O_RDWR)
            fcntl.flock(older, fcntl.LOCK_EX)
            try:  # the second user can only open it read-only, and must find it locked
                got = _as_another_user(lambda: claim(2, ["0", "1", "2"], locks))
            finally:
                os.close(older)
            assert got == "['0', '2']"
        finally:
            os.umask(previous)
        assert (locks / "frelon-gpu2.lock").stat().st_uid == 65534  # created by the second user, usable by all
        assert stat.S_IMODE((locks / "frelon-gpu2.lock").stat().st_mode) == 0o666
        assert stat.S_IMODE((locks / "frelon-gpu2.rank.lock").stat().st_mode) == 0o666
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's folder")
def test_a_lock_folder_whose_owner_could_remove_others_locks_is_refused_and_roots_sticky_one_is_used(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o1777)
    theirs.chmod(0o1777)
    os.chown(theirs, 65534, 65534)  # another user's: the sticky bit does not stop its owner
    with pytest.raises(FrelonError, match=r"belongs to user .*\(65534\), who can remove the lock.*sudo install"):
        claim(1, ["0"], theirs)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)  # root's, but anybody may remove anybody's files
    with pytest.raises(FrelonError, match="without the sticky bit.*chmod 1777"):
        claim(1, ["0"], open_to_all)
    assert gpu_locks.DEFAULT_LOCK_DIR == "/tmp" and os.stat("/tmp").st_uid == 0
    assert claim(1, ["0"], tmp_path / "made") == ["0"]  # missing: made 1777, by us
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o1777
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == ["frelon-gpu0.lock", "frelon-gpu0.rank.lock"]


def test_pretended_gpus_come_from_the_count_or_from_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FRELON_FAKE_GPUS", "4")
    assert visible_gpus("auto") == visible_gpus("cuda") == ["0", "1", "2", "3"]
    assert visible_gpus("cpu") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # as SLURM sets it: trusted whatever the count
    monkeypatch.setenv("FRELON_FAKE_GPUS", "1")
    assert visible_gpus("auto") == ["0", "1"] and launcher.gpu_count() == 2
    monkeypatch.setenv("FRELON_FAKE_GPUS", "many")
    with pytest.raises(FrelonError, match="FRELON_FAKE_GPUS='many'"):
        visible_gpus("auto")


def test_frelon_gpus_prints_the_count_without_importing_torch():
    check = ("import sys; from frelon.cli import main; main(['gpus']); "
             "assert 'torch' not in sys.modules, 'torch imported'")
    for extra, expected in (({"FRELON_FAKE_GPUS": "4"}, "4"),
                            ({"FRELON_FAKE_GPUS": "1", "CUDA_VISIBLE_DEVICES": "0,1"}, "2")):
        env = {k: v for k, v in tool_env().items() if k != "CUDA_VISIBLE_DEVICES"} | extra
        out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


@pytest.fixture
def workstation(tmp_path, monkeypatch):
    """Four pretended GPUs, this test's own lock folder and launch record; launches are recorded,
    not run: yields the list of (cmd, env, inherited fds, whether GPU 0 was claimed meanwhile)."""
    for name in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRELON_FAKE_GPUS", "4")
    monkeypatch.setenv("FRELON_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("FRELON_LAUNCH_RECORD", str(tmp_path / "launches.jsonl"))
    calls = []

    def run(cmd, env, pass_fds=()):
        claimed = (tmp_path / "locks").exists() and gpu_locks._in_use(tmp_path / "locks" / "frelon-gpu0.lock")
        calls.append((cmd, env, list(pass_fds), claimed))
        return 0

    monkeypatch.setattr(launcher, "_run_forwarding_signals", run)
    return calls


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "launches.jsonl").read_text().splitlines()]


def test_one_process_starts_the_worker_directly_and_n_processes_go_through_torchrun(workstation, monkeypatch):
    monkeypatch.delenv("FRELON_FAKE_GPUS")
    monkeypatch.setenv("FRELON_WARM", "0")  # the cold start's commands (tests/test_warm.py: the warm one)
    launcher.launch(["train", "spec.json"], 1, "cpu", threads=2)
    launcher.launch(["train", "spec.json"], 2, "cpu", threads=2)
    (single, single_env, fds, _), (multi, multi_env, _, _) = workstation
    assert single[1:] == ["-m", "frelon.launch.worker", "train", "spec.json"]
    assert (single_env["RANK"], single_env["WORLD_SIZE"], single_env["OMP_NUM_THREADS"]) == ("0", "1", "2")
    assert multi[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=2" in multi
    assert multi_env["OMP_NUM_THREADS"] == "1"
    assert fds == [] and "FRELON_GPU_LOCKS" not in single_env


def test_a_workstation_launch_claims_gpus_hands_them_to_its_ranks_and_records_them(workstation, tmp_path):
    launcher.launch(["train", "spec.json"], 2, "auto", threads=4)
    [(cmd, env, fds, claimed)] = workstation
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and claimed and len(fds) == 3
    assert env["FRELON_GPU_LOCKS"].split(os.pathsep) == [str(tmp_path / "locks" / f"frelon-gpu{i}.rank.lock") for i in "01"]
    assert env["OMP_NUM_THREADS"] == "2"  # pretended GPUs: the ranks share the CPU
    [record] = records(tmp_path)
    assert record["cuda_visible_devices"] == "0,1" and record["world_size"] == 2 and record["slurm_job_id"] is None
    assert record["pid"] == os.getpid() and record.keys() >= {"host", "time", "gpus"}
    assert not gpu_locks._in_use(tmp_path / "locks" / "frelon-gpu0.lock")  # given back after the job


def test_under_slurm_the_ranks_run_in_a_job_step_of_their_own_and_nothing_is_locked(workstation, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("FRELON_FAKE_GPUS", "1")
    monkeypatch.setenv("FRELON_GPU_LOCKS", "/elsewhere/frelon-gpu0.rank.lock")  # an enclosing launch's
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.chdir(tmp_path)
    launcher.launch(["train", "spec.json"], 4, "auto")
    [(cmd, env, fds, _)] = workstation
    assert cmd[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert cmd[cmd.index("-m") + 1] == "frelon.launch.node" and cmd[-3:] == ["--", "train", "spec.json"]
    assert {"--world-size=4", "--rendezvous-id=frelon-4242"} <= set(cmd)
    # the preemption marker is on the shared file system (rank 0 may be on another node), and removed after
    assert Path(env["FRELON_PREEMPTED_MARKER"]).parent.parent == tmp_path and not list(tmp_path.glob(".frelon-*"))
    assert fds == [] and "FRELON_GPU_LOCKS" not in env and not (tmp_path / "locks").exists()
    assert not (tmp_path / "launches.jsonl").exists()  # each node records its part (frelon.launch.node)

def test_a_lock_file_planted_as_a_symlink_is_refused_and_its_target_left_alone(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "frelon-gpu0.lock").symlink_to(secret)
    with pytest.raises(FrelonError, match="frelon-gpu0.lock is a symlink; remove it"):
        with gpu_slots(1, ["0"], tmp_path / "locks"):
            pass
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    (tmp_path / "dir-link").symlink_to(tmp_path / "locks")
    with pytest.raises(FrelonError, match="is not a folder"):
        with gpu_slots(1, ["0"], tmp_path / "dir-link"):
            pass


def test_in_an_allocation_with_more_gpus_than_the_run_runs_share_them_with_locks(workstation, tmp_path, monkeypatch):
    # Snakemake run inside `salloc --gpus=4`: a world-size-1 run takes one of the allocation's GPUs
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setenv("FRELON_FAKE_GPUS", "1")
    launcher.launch(["train", "spec.json"], 1, "auto")
    [(cmd, env, fds, claimed)] = workstation
    assert cmd[0] != "srun" and env["CUDA_VISIBLE_DEVICES"] == "4" and fds


def test_signals_reach_the_ranks_as_what_each_launcher_passes_on(monkeypatch):
    sent = []

    class Child:
        def __init__(self, cmd, env, pass_fds, preexec_fn):
            self.cmd = cmd
            assert preexec_fn is parentage.die_with_parent  # it dies with the launcher

        def send_signal(self, signum):
            sent.append(signum)

        def wait(self):
            for sig in (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM):
                signal.getsignal(sig)(sig, None)
            return 0

    monkeypatch.setattr(launcher.subprocess, "Popen", Child)
    launcher._run_forwarding_signals(["python", "-m", "torch.distributed.run", "-m", "w"], {})
    assert sent == [signal.SIGTERM, signal.SIGINT, signal.SIGTERM]   # torchrun would die of USR1
    sent.clear()
    launcher._run_forwarding_signals(["srun", "python", "-m", "frelon.launch.node"], {})
    assert sent == [signal.SIGUSR1, signal.SIGTERM, signal.SIGTERM]  # srun answers INT with a status line


NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "-L" ]; then
  echo "GPU 0: Tesla V100-SXM2-16GB (UUID: GPU-1)"
  echo "GPU 1: Tesla V100-SXM2-16GB (UUID: GPU-2)"
else
  echo "| NVIDIA-SMI 470.57.02    Driver Version: 470.57.02    CUDA Version: 11.4     |"
fi
"""


@pytest.fixture
def old_driver(tmp_path, monkeypatch):
    """A machine whose nvidia-smi lists two V100s on a CUDA 11.4 driver, while torch sees no GPU (as here)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvidia-smi").write_text(NVIDIA_SMI)
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for name in ("FRELON_FAKE_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launcher, "GPU_DRIVER_FILES", (str(tmp_path / "bin" / "nvidia-smi"),))  # "a driver"


def test_gpus_that_torch_cannot_use_are_said_loudly_with_the_driver_the_build_and_the_fix(old_driver, capsys,
                                                                                          monkeypatch):
    import torch

    reason = launcher.unusable_gpus()
    assert "2 NVIDIA GPU(s) (Tesla V100-SXM2-16GB; driver 470.57.02)" in reason
    assert f"torch {torch.__version__}" in reason and "sees none" in reason and "make install TORCH=" in reason
    assert launcher.gpu_count() == 0
    assert "WARNING: this machine has 2 NVIDIA GPU(s)" in capsys.readouterr().err
    with pytest.raises(FrelonError, match="sees none"):  # device: cuda fails with the reason
        visible_gpus("cuda")
    monkeypatch.setattr(launcher, "_run_forwarding_signals", lambda cmd, env, pass_fds=(): 0)
    monkeypatch.setenv("FRELON_WARM", "0")
    launcher.launch(["train", "spec.json"], 1, "auto", threads=1)  # device: auto trains on the CPU, and says so
    assert "WARNING: this machine has 2 NVIDIA GPU(s)" in capsys.readouterr().err
    launcher.launch(["train", "spec.json"], 1, "cpu", threads=1)  # asked for the CPU: nothing to say
    assert "WARNING" not in capsys.readouterr().err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU for this job, on purpose
    assert launcher.unusable_gpus() is None


def test_without_nvidia_smi_or_its_gpus_nothing_is_said(old_driver, tmp_path, monkeypatch):
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\n")
    assert launcher.unusable_gpus() is None
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert launcher.unusable_gpus() is None
