"""A run answers to its launcher: killed, the launcher takes its ranks down, and a rank whose launcher (or, in a
pipeline job, the launcher's job shell) is gone writes no output into the run folder (frelon.parallel.parentage)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import tool_env
from engine_fixtures import make_spec, prepared_hornet
from frelon.parallel import parentage

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")

# prints what a launcher started by a shell would give its ranks, then waits
MARKING = ("import sys, time; from frelon.parallel import parentage; env = {}; "
           "parentage.mark(env, with_parent=sys.argv[1] == '1'); print(env[parentage.LAUNCH_VAR], flush=True); "
           "time.sleep(60)")


def _launcher_under_a_shell(with_parent: bool):
    """A shell (the job's) running a Python process that marks itself as a launcher: (shell, its mark)."""
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{MARKING}" {int(with_parent)}; exit 0'],
                             env=tool_env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    return shell, shell.stdout.readline().strip()


@pytest.mark.parametrize("with_parent", [True, False], ids=["pipeline job", "by hand"])
def test_a_launch_is_gone_when_its_launcher_exits_and_for_a_job_when_its_shell_dies(with_parent):
    shell, mark = _launcher_under_a_shell(with_parent)
    launcher = psutil.Process(shell.pid).children()[0]
    try:
        env = {parentage.LAUNCH_VAR: mark}
        assert parentage.gone(env) is None
        shell.kill()  # the job's shell: Snakemake now reports the job failed
        shell.wait()
        time.sleep(0.2)
        if with_parent:
            assert "lost its job shell" in parentage.gone(env)
        else:  # started by hand (nohup): only its own end counts
            assert parentage.gone(env) is None
        launcher.kill()
        launcher.wait(10)
        assert "has exited" in parentage.gone(env)
    finally:
        for process in (launcher,):
            if process.is_running():
                process.kill()
    assert parentage.gone({parentage.LAUNCH_VAR: mark.replace(mark.split()[0], "elsewhere", 1)}) is None
    assert parentage.gone({}) is None


def test_a_process_that_dies_with_its_parent_gets_sigterm_when_the_parent_is_killed(tmp_path):
    flag = tmp_path / "got-sigterm"
    child = (f"import signal, sys, time; from frelon.parallel import parentage\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(flag)!r}, 'w').close(), sys.exit(0)))\n"
             f"parentage.die_with_parent(); print('ready', flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"],
                              env=tool_env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout.readline().strip() == "ready"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while not flag.exists():
        assert time.monotonic() < deadline, "the orphan never got SIGTERM"
        time.sleep(0.05)


@pytest.mark.slow  # a real training or several Snakemake runs: seconds
def test_a_rank_whose_launcher_is_gone_writes_no_output_and_says_why(tmp_path):
    data = prepared_hornet(tmp_path / "hornet", presence=6, absence=6)
    run = tmp_path / "run"
    make_spec(data, run, epochs=2, batch_size=4, base_batch=8)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a launcher that is gone
    env = {**tool_env(), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           parentage.LAUNCH_VAR: f"{os.uname().nodename} {dead.pid} 1 0"}
    proc = subprocess.run([sys.executable, "-m", "frelon.launch.worker", "train", str(run / "spec.json"), "--out",
                           str(run / "metrics.json")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr
    assert "has exited: its job was ended, so history.csv is not written" in proc.stderr
    assert not [p.name for p in run.iterdir() if p.name in ("model.pt", "history.csv", "metrics.json")]
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow  # a two-rank cold start: seconds
@pytest.mark.parametrize("warm_start", [False, True], ids=["cold", "warm"])
def test_a_killed_launcher_takes_its_ranks_down_and_nothing_is_written_after(tmp_path, warm_start, warm_servers):
    data = prepared_hornet(tmp_path / "hornet", presence=10, absence=14)
    run = tmp_path / "run"
    make_spec(data, run, epochs=12, batch_size=4, base_batch=8, world_size=2)
    proc = subprocess.Popen([sys.executable, "-m", "frelon.cli", "train", str(run / "spec.json"), "--metrics",
                             str(run / "metrics.json"), "--threads", "2"],
                            env={**tool_env(), "FRELON_WARM": "1" if warm_start else "0"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (run / "state" / "last.pt").exists():  # training, past its first epoch
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    if warm_start:  # a supervisor and its ranks, forked by the warm server
        servers = [int(p.read_text()) for p in warm_servers.glob("*.pid")]
        tree = [child for pid in servers for child in psutil.Process(pid).children(recursive=True)]
    else:  # torchrun and its ranks
        tree = psutil.Process(proc.pid).children(recursive=True)
    assert len(tree) >= 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    _, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, [p.cmdline() for p in alive]  # they saw the launcher go and stopped, not trained on
    assert not (run / "model.pt").exists() and not (run / "metrics.json").exists()
    assert (run / "history.csv").stat().st_mtime <= killed_at
