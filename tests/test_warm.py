"""Warm starts (frelon.launch.warm): a CPU run forked from a server that imported everything once trains
the weights a cold start trains, on one process or two; a killed launcher's ranks save and the rerun
resumes; the server is shared, private to its user and optional."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import tool_env
from engine_fixtures import make_spec, prepared_hornet
from frelon.launch import warm

TRAIN = {"epochs": 2, "batch_size": 4, "base_batch": 8}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_hornet(tmp_path_factory.mktemp("hornet"), presence=10, absence=14)


def train(run_dir, warm_start: bool, threads: int = 2, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "frelon.cli", "train", str(run_dir / "spec.json"), "--metrics",
                             str(run_dir / "metrics.json"), "--threads", str(threads)],
                            env={**tool_env(), "FRELON_WARM": "1" if warm_start else "0", **env},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, code: int = 0) -> str:
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == code, output
    return output


def weights(run_dir) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True)["model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def server_pids(folder) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("*.pid")]


def cold_and_warm(data, tmp_path, world_size):
    runs = {}
    for name in ("cold", "warm"):
        runs[name] = tmp_path / name
        make_spec(data, runs[name], world_size=world_size, **TRAIN)
        finish(train(runs[name], warm_start=name == "warm", FRELON_LAUNCH_RECORD=str(tmp_path / "launches.jsonl")))
    assert_same(weights(runs["cold"]), weights(runs["warm"]))
    metrics = [json.loads((runs[n] / "metrics.json").read_text()) for n in runs]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[0]["experiment"] == metrics[1]["experiment"]
    records = [json.loads(line) for line in (tmp_path / "launches.jsonl").read_text().splitlines()]
    assert [r.get("warm", False) for r in records] == [False, True]
    return runs


@pytest.mark.slow  # a cold torchrun start and three runs: seconds
def test_a_warm_run_trains_the_weights_of_a_cold_start_and_later_runs_share_its_server(data, tmp_path,
                                                                                          warm_servers):
    runs = cold_and_warm(data, tmp_path, world_size=1)
    servers = set(server_pids(warm_servers))  # this session's (an earlier test's may serve other code)
    again = tmp_path / "again"
    make_spec(data, again, world_size=1, **TRAIN)
    finish(train(again, warm_start=True))
    assert set(server_pids(warm_servers)) == servers  # the same server: nothing imported twice
    assert_same(weights(again), weights(runs["warm"]))
    assert all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in servers)


@pytest.mark.slow  # a cold torchrun start: about 15 s
def test_two_warm_ranks_train_the_weights_of_torchrun_ranks(data, tmp_path):
    cold_and_warm(data, tmp_path, world_size=2)


def descendants(folder) -> list[psutil.Process]:
    return [child for pid in server_pids(folder) for child in psutil.Process(pid).children(recursive=True)]


@pytest.mark.slow  # three trainings: about 20 s
def test_a_killed_launchers_warm_ranks_save_and_the_rerun_resumes_to_the_same_weights(data, tmp_path, warm_servers):
    settings = {**TRAIN, "epochs": 4, "world_size": 2}
    whole = tmp_path / "whole"
    make_spec(data, whole, **settings)
    finish(train(whole, warm_start=True))

    run = tmp_path / "killed"
    make_spec(data, run, **settings)
    proc = train(run, warm_start=True)
    deadline = time.monotonic() + 120
    while not (run / "state" / "last.pt").exists():  # a state saved: an epoch is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    ranks = descendants(warm_servers)
    assert len(ranks) >= 2  # the supervisor and its ranks: children of the server, not of the launcher
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(ranks, timeout=60)  # they saw the launcher go, saved and exited
    assert not alive
    assert not (run / "model.pt").exists() and (run / "state" / "last.pt").exists()

    output = finish(train(run, warm_start=True))
    assert "resumed from" in output
    assert_same(weights(run), weights(whole))


def test_sigterm_reaches_warm_ranks_which_save_and_exit_75(data, tmp_path):
    make_spec(data, tmp_path, **{**TRAIN, "epochs": 50, "world_size": 1})
    proc = train(tmp_path, warm_start=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "state" / "last.pt").exists():  # training, past its first epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as SLURM or Snakemake would
    output = finish(proc, code=75)
    assert "state saved" in output and (tmp_path / "state" / "last.pt").exists()


@pytest.mark.slow  # a cold start or several processes: seconds
def test_no_warm_server_where_the_folder_is_not_the_users_alone(data, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    run = tmp_path / "run"
    make_spec(data, run, world_size=1, epochs=1, batch_size=4, base_batch=8)
    output = finish(train(run, warm_start=True, FRELON_WARM_DIR=str(shared)))
    assert "not a private folder" in output and "starting cold" in output
    assert not list(shared.iterdir())


def test_stop_ends_the_servers_of_a_folder_and_no_other_process_a_leftover_pid_file_names(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir(mode=0o700)
    # a server's command line: python -m frelon.launch.warm --serve <socket> <frelon>
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "frelon.launch.warm", "--serve",
                               str(folder / "x.sock")])
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the pid reused since
    (folder / "x.pid").write_text(str(server.pid))
    (folder / "y.pid").write_text(str(stranger.pid))
    try:
        assert warm.stop(folder) == 1
        assert server.wait(timeout=10) == -signal.SIGTERM and not list(folder.glob("*.pid"))
        assert stranger.poll() is None
    finally:
        stranger.kill()
        server.kill()


# -- failures: each falls back to a cold start, or stops the ranks -----------------------------------------------

def test_a_socket_path_too_long_for_unix_sockets_starts_cold_at_once(tmp_path, capsys):
    folder = tmp_path / ("x" * 100)
    folder.mkdir(mode=0o700)
    began = time.monotonic()
    assert warm._server(folder, "k" * 20, dict(os.environ)) is None
    assert time.monotonic() - began < 1 and not list(folder.iterdir())  # no server started, no log
    assert "longer than a Unix socket's 107 bytes; starting cold" in capsys.readouterr().err


def test_the_server_binds_before_it_imports_and_frees_its_lock_as_it_exits(tmp_path, monkeypatch):
    import frelon

    path = tmp_path / "k.sock"
    seen = {}

    def preload():  # what cannot work fails before the imports, and a failure frees the lock at once
        seen["bound"] = path.exists() and warm._connect(path) is not None
        raise RuntimeError("stop here")

    monkeypatch.setattr(warm, "_preload", preload)
    with pytest.raises(RuntimeError, match="stop here"):
        warm._serve(path, str(os.path.realpath(frelon.__file__)))
    assert seen == {"bound": True}
    assert not path.exists() and not path.with_suffix(".pid").exists()
    assert warm._lock_free(path.with_suffix(".lock"))  # not held until the interpreter's teardown


def test_the_key_covers_installed_packages_and_the_hash_seed(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(warm, "site_packages", lambda: [str(site)])
    env = dict(os.environ)
    before = warm._key(env)
    assert warm._key({**env, "PYTHONHASHSEED": "7"}) != before
    os.utime(site, ns=(1, 1))
    (site / "numpy-9.9.dist-info").mkdir()  # pip upgrading a package
    assert warm._key(env) != before
    monkeypatch.undo()
    assert warm.site_packages() and all(f.endswith("-packages") for f in warm.site_packages())


def test_peer_credentials_read_user_ids_above_two_to_the_31(tmp_path):
    assert warm.PEERCRED.unpack(warm.PEERCRED.pack(12, 2**31 + 5, 2**32 - 1))[1:] == (2**31 + 5, 2**32 - 1)
    a, b = __import__("socket").socketpair()
    with a, b:
        assert warm.peer_uid(a) == os.getuid()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to listen as another user")
def test_a_socket_served_by_another_user_is_not_used():
    import socket

    import shutil
    import tempfile

    shared = tempfile.mkdtemp(prefix="frelon-shared-", dir="/tmp")  # a folder every user reaches (tmp_path: not)
    os.chmod(shared, 0o777)
    path = os.path.join(shared, "k.sock")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(65534)  # nobody
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(1)
            os.write(ready_w, b"1")
            time.sleep(10)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)  # it listens ...
        sock.close()
        assert warm._connect(path) is None  # ... but as another user: not ours to hand a run to
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.slow  # a cold start or several processes: seconds
def test_any_failure_of_the_warm_path_starts_the_run_cold_with_one_line_saying_why(data, tmp_path, monkeypatch,
                                                                                  capsys):
    from frelon.launch import launcher

    def broken(*args, **kwargs):  # e.g. an editor's dangling lock link in the package, or no inode left in /tmp
        raise FileNotFoundError(2, "No such file or directory", ".#engine.py")

    monkeypatch.setattr(launcher.warm, "run", broken)
    monkeypatch.setenv("FRELON_WARM", "1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    make_spec(data, tmp_path, world_size=1, epochs=1, batch_size=4, base_batch=8)
    code = launcher.launch(["train", str(tmp_path / "spec.json"), "--out", str(tmp_path / "metrics.json")], 1, "cpu",
                           threads=1)
    assert code == 0 and (tmp_path / "metrics.json").exists()
    assert "no warm server (FileNotFoundError: [Errno 2] No such file or directory: '.#engine.py'); starting cold" \
        in capsys.readouterr().err



@pytest.mark.slow  # a server's start-up and a run's: about 10 s
def test_a_launcher_gone_as_its_run_starts_leaves_no_rank_training(data, tmp_path, warm_servers):
    make_spec(data, tmp_path, **{**TRAIN, "epochs": 50, "world_size": 2})
    env = {**tool_env(), "FRELON_WARM": "1"}
    key = warm._key(env)
    sock = warm._server(warm_servers, key, env)
    server, path = int((warm_servers / f"{key}.pid").read_text()), str(warm_servers / f"{key}.sock")

    def forked_from_the_server() -> list[psutil.Process]:  # supervisor and ranks, re-parented or not
        return [p for p in psutil.process_iter(["pid", "cmdline", "status"]) if p.info["pid"] != server
                and path in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]

    request = {"module": warm.DEFAULT_WORKER, "world_size": 2, "env": env, "cwd": str(tmp_path), "threads": 1,
               "args": ["train", str(tmp_path / "spec.json"), "--out", str(tmp_path / "metrics.json")],
               "state": warm.process_state()}
    with open(os.devnull, "w") as quiet:
        warm._send(sock, request, [quiet.fileno()] * 3)
    sock.close()  # the launcher is gone before the supervisor says the run started (Ctrl-C at start-up)
    time.sleep(1)
    deadline = time.monotonic() + 60
    while forked_from_the_server():  # the supervisor and its ranks stop; none is left training as an orphan
        assert time.monotonic() < deadline, [(p.pid, p.ppid()) for p in forked_from_the_server()]
        time.sleep(0.2)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.pt").exists()


@pytest.mark.slow  # a server's start-up: about 5 s
def test_a_server_exiting_for_idleness_as_a_client_arrives_costs_no_wait(tmp_path, monkeypatch):
    folder = tmp_path / "w"
    folder.mkdir(mode=0o700)
    env = dict(tool_env())
    key = warm._key(env)
    lock = folder / f"{key}.lock"
    holder = subprocess.Popen(  # a server on its way out: it holds the lock a moment longer, its socket gone
        [sys.executable, "-c", f"import fcntl, os, time; fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT); "
                               f"fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setattr(warm, "START_TIMEOUT_S", 60.0)
    began = time.monotonic()
    sock = warm._server(folder, key, env)
    try:
        assert sock is not None and time.monotonic() - began < 40  # a new server, not a wait for the timeout
    finally:
        if sock:
            sock.close()
        holder.wait()
        warm.stop(folder)


@pytest.mark.slow  # a run through the server: about 5 s
def test_a_warm_run_gets_the_launchers_umask_limits_cpus_and_nice_value(tmp_path, warm_servers):
    (tmp_path / "probe.py").write_text(
        "import json, os, resource\nfrom frelon.atomic import current_umask\n"
        "json.dump({'umask': current_umask(), 'nofile': resource.getrlimit(resource.RLIMIT_NOFILE)[0],\n"
        "           'cpus': sorted(os.sched_getaffinity(0)), 'nice': os.getpriority(os.PRIO_PROCESS, 0)},\n"
        "          open('probe.json', 'w'))\n")
    client = ("import json, os, resource\nfrom frelon.launch import warm\nos.umask(0o077)\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (200, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
              "os.sched_setaffinity(0, {0})\nos.nice(3)\n"
              "code = warm.run('probe', [], 1, dict(os.environ), 1)\n"
              "print(json.dumps({'code': code, 'nice': os.getpriority(os.PRIO_PROCESS, 0)}))\n")
    out = subprocess.run([sys.executable, "-c", client], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**tool_env(), "FRELON_WARM": "1", warm.DIR_VAR: str(warm_servers)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, out.stderr  # through the server, not cold
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe == {"umask": 0o077, "nofile": 200, "cpus": [0], "nice": result["nice"]}
