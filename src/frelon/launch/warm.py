"""Warm starts for CPU runs: one idle process keeps Python, torch and frelon imported, and forks each run.

A CPU run's own work can be seconds, while starting it costs more: the interpreter, `import torch`
(2.5 s here), `torch._dynamo` (imported by the first optimizer or checkpointed block, 2 s), pandas
and TensorBoard (1 s), then torchrun and its ranks doing it all again. The demo starts sixty such runs.
So the launcher hands a CPU run to a *warm server*: a process started on first use that has imported
all of that once and forks a *supervisor* per run, which forks the run's ranks (the same worker
`python -m frelon.launch.worker` runs, with torchrun's environment: RANK, WORLD_SIZE, MASTER_PORT...).
A fork takes milliseconds and shares the imported pages.

What stays as it was:
- The run's output goes where the launcher's goes: the client passes its stdin, stdout and stderr
  descriptors over the socket (SCM_RIGHTS); cwd, environment and the per-rank thread count are the
  client's (`torch.set_num_threads`, since OpenMP read OMP_NUM_THREADS once, at the server's import).
- Signals: SIGTERM/SIGINT/SIGUSR1 sent to the launcher reach the ranks (save, exit 75, resume on
  rerun). If the launcher dies, even of SIGKILL, the supervisor sees its socket close and sends the
  ranks SIGTERM; if the supervisor dies, the ranks get SIGTERM from the kernel (PR_SET_PDEATHSIG).
- A failed rank stops the others (SIGTERM, then SIGKILL after 30 s), as torchrun does; the exit
  code is 0, 75 when every rank stopped on request, else the first failure's.
- Numbers: the same code on the same threads; a test checks the weights are bit-identical to a cold start.

Never used on a GPU (forking after CUDA is unsafe, and a GPU run's start-up is noise there), under
SLURM, or with FRELON_WARM=0. If the server cannot be reached or started, the launcher starts the
run the cold way and says why on stderr.

One server per user, interpreter and code version: its socket is named after a hash of the Python
executable, frelon's source files (path, size, mtime: an edited file starts a new server), torch's
and torchvision's install and PYTHONPATH, in `$FRELON_WARM_DIR` (default /tmp/frelon-warm-<uid>,
mode 0700). It only serves its own user (SO_PEERCRED), and exits after FRELON_WARM_IDLE seconds
(default 120) without a request. `python -m frelon.launch.warm --stop` stops the servers of the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from frelon.parallel import parentage

DIR_VAR = "FRELON_WARM_DIR"
SWITCH_VAR = "FRELON_WARM"  # 0 / off / no / false: always start cold
IDLE_VAR = "FRELON_WARM_IDLE"
DEFAULT_IDLE_S = 120.0
START_TIMEOUT_S = 180.0  # the first server imports everything: slow on a loaded machine
STOP_GRACE_S = 30.0
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
DEFAULT_WORKER = "frelon.launch.worker"


def enabled(env: dict[str, str]) -> bool:
    return env.get(SWITCH_VAR, "1").strip().lower() not in ("0", "off", "no", "false")


def _folder(env: dict[str, str]) -> Path | None:
    """The user's private folder of sockets, or None when it is not ours alone (then: start cold)."""
    path = Path(env.get(DIR_VAR) or Path(tempfile.gettempdir()) / f"frelon-warm-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        print(f"frelon: no warm server: {exc}; starting cold", file=sys.stderr, flush=True)
        return None
    if not path.is_dir() or path.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        print(f"frelon: {path} is not a private folder of this user (mode {st.st_mode & 0o7777:o}, owner "
              f"{st.st_uid}): no warm server there; starting cold (set {DIR_VAR} to a folder of your own)",
              file=sys.stderr, flush=True)
        return None
    return path


def _key(env: dict[str, str]) -> str:
    """What the server's imported code depends on: a change gives another server."""
    import frelon

    digest = hashlib.sha256()
    package = Path(frelon.__file__).resolve().parent
    parts = [sys.executable, sys.version, str(package), env.get("PYTHONPATH", "")]
    for root, dirs, files in os.walk(package):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):  # lstat: an editor's dangling lock link (.#engine.py) is a name, not an error
                st = os.lstat(os.path.join(root, name))
                parts.append(f"{root}/{name}:{st.st_size}:{st.st_mtime_ns}")
    for module in ("torch", "torchvision"):
        spec = importlib.util.find_spec(module)
        if spec and spec.origin:
            st = os.stat(spec.origin)
            parts.append(f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}")
    # any package installed, upgraded or removed: pip and uv add and remove a `*.dist-info` folder in
    # site-packages, which changes that folder's mtime (only those folders: the working directory, also on
    # sys.path with `python -m`, changes with every file a pipeline writes)
    for entry in site_packages():
        with contextlib.suppress(OSError):
            parts.append(f"{entry}:{os.stat(entry).st_mtime_ns}")
    # what the interpreter fixed at its start: a server started with another hash seed hashes otherwise
    parts.append(f"PYTHONHASHSEED={env.get('PYTHONHASHSEED', '')}")
    digest.update("\n".join(parts).encode())
    return digest.hexdigest()[:20]


def site_packages() -> list[str]:
    """The folders packages are installed into, for this interpreter (and the user's)."""
    import site

    folders = [*site.getsitepackages(), site.getusersitepackages()]
    return [f for f in dict.fromkeys(folders) if os.path.isdir(f)]


# --- the client: the launcher's side ---------------------------------------------------------------

def _send(sock: socket.socket, obj: dict, fds: list[int] = ()) -> None:
    data = json.dumps(obj).encode()
    payload = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [payload], list(fds))
    else:
        sock.sendall(payload)


def _receive_message(sock: socket.socket, with_fds: bool = False) -> tuple[dict | None, list[int]]:
    """One length-prefixed JSON message (and the descriptors sent with it); None at end of stream."""
    buffer, fds = b"", []
    while len(buffer) < 4 or len(buffer) < 4 + struct.unpack("!I", buffer[:4])[0]:
        if with_fds and not fds:
            chunk, got, _, _ = socket.recv_fds(sock, 1 << 16, 3)
            fds.extend(got)
        else:
            chunk = sock.recv(1 << 16)
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None, []
        buffer += chunk
    size = struct.unpack("!I", buffer[:4])[0]
    return json.loads(buffer[4:4 + size]), fds


PEERCRED = struct.Struct("iII")  # struct ucred: pid_t pid (signed), uid_t uid, gid_t gid (unsigned)
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last a NUL


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (SO_PEERCRED)."""
    return PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))[1]


def _connect(path: Path) -> socket.socket | None:
    """A connection to the server at `path`, if one listens there and runs as this user."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        if peer_uid(sock) != os.getuid():  # a socket another user put in a shared FRELON_WARM_DIR
            raise PermissionError(f"{path} is served by user {peer_uid(sock)}")
    except OSError:
        sock.close()
        return None
    return sock


def _lock_free(lock: Path) -> bool:
    """Whether no server holds `lock` (one that is starting, serving or exiting does)."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _server(folder: Path, key: str, env: dict[str, str]) -> socket.socket | None:
    """A connection to the running server, which is started if there is none."""
    path = folder / f"{key}.sock"
    sock = _connect(path)
    if sock:
        return sock
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:  # checked here: a server would import for 3 s, then fail to bind
        print(f"frelon: no warm server: its socket path {path} is longer than a Unix socket's {MAX_SOCKET_PATH} "
              f"bytes; starting cold (set {DIR_VAR} to a shorter folder)", file=sys.stderr, flush=True)
        return None
    import frelon

    log_name = folder / f"{key}.log"
    server_env = {k: v for k, v in env.items() if not k.startswith(("OMP_", "MKL_", "OPENBLAS_", "GOTO_", "VECLIB_",
                                                                     "NUMEXPR_", "CUDA_", "RANK", "LOCAL_RANK",
                                                                     "WORLD_SIZE", "FRELON_PREEMPTED",
                                                                     "FRELON_LAUNCH"))}
    server_env.pop("PYTHONSTARTUP", None)
    deadline = time.monotonic() + START_TIMEOUT_S
    process = None
    while time.monotonic() < deadline:
        if process is None or (process.poll() == 0 and _lock_free(path.with_suffix(".lock"))):
            # none started yet, or ours lost the race to a server that has exited since (idle) without
            # serving: start one (again)
            with open(log_name, "ab") as log:
                process = subprocess.Popen([sys.executable, "-m", "frelon.launch.warm", "--serve", str(path),
                                            str(Path(frelon.__file__).resolve())],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=server_env, cwd="/",
                                           start_new_session=True, close_fds=True)
        sock = _connect(path)
        if sock:
            return sock
        if process.poll() not in (None, 0):  # 0: another server won the race; wait for its socket
            print(f"frelon: the warm server did not start (exit {process.returncode}, see {log_name}); "
                  f"starting cold", file=sys.stderr, flush=True)
            return None
        time.sleep(0.05)
    print(f"frelon: no warm server after {START_TIMEOUT_S:.0f} s (see {log_name}); starting cold",
          file=sys.stderr, flush=True)
    return None


def run(module: str, worker_args: list[str], world_size: int, env: dict[str, str], threads: int) -> int | None:
    """Run `python -m module worker_args` on `world_size` ranks through the warm server; the exit code,
    or None when no server could take the run (then nothing was started: start it cold)."""
    folder = _folder(env)
    if folder is None:
        return None
    key = _key(env)
    request = {"module": module, "args": list(worker_args), "world_size": world_size, "env": env,
               "cwd": os.getcwd(), "threads": threads, "state": process_state()}
    for _ in range(3):  # a server that was just exiting for idleness closes without answering
        sock = _server(folder, key, env)
        if sock is None:
            return None
        with sock:
            try:
                _send(sock, request, [0, 1, 2])
                started, _ = _receive_message(sock)
            except OSError:
                started = None
            if started is None:
                continue
            pid = started["pid"]

            def forward(signum: int, _frame) -> None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

            previous = {sig: signal.signal(sig, forward) for sig in RELAYED}
            try:
                done, _ = _receive_message(sock)
            except OSError:  # the run has started: never start it again cold
                done = None
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            if done is None:
                print("frelon: the warm run's supervisor ended without an exit status", file=sys.stderr, flush=True)
                return 1
            return int(done["exit"])
    return None


def _is_server(pid: int, socket_path: Path) -> bool:
    """Whether process `pid` is this user's warm server of `socket_path` (a leftover .pid file can name a
    process that has nothing to do with it by now)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return False
    return owner == os.getuid() and b"frelon.launch.warm" in cmdline and os.fsencode(socket_path) in cmdline


def stop(folder: str | os.PathLike | None = None) -> int:
    """Stop the warm servers whose sockets are in `folder` (default: this user's); their runs go on."""
    folder = Path(folder) if folder else _folder(dict(os.environ))
    stopped = 0
    for pid_file in Path(folder).glob("*.pid") if folder else []:
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if _is_server(pid, pid_file.with_suffix(".sock")):
                os.kill(pid, signal.SIGTERM)
                stopped += 1
        pid_file.unlink(missing_ok=True)
    return stopped


def process_state() -> dict:
    """What a cold start would inherit from the launcher's process beyond its environment: the umask, the
    resource limits, the CPUs it may run on and its nice value (`_apply_state` gives them to the run)."""
    import resource

    from frelon.atomic import current_umask

    limits = {name: resource.getrlimit(getattr(resource, name)) for name in RLIMITS if hasattr(resource, name)}
    return {"umask": current_umask(), "rlimits": limits, "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


RLIMITS = ("RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
           "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_MEMLOCK")


def _apply_state(state: dict) -> None:
    """The launcher's `process_state` on this process (the supervisor, before it forks the ranks)."""
    import resource

    os.umask(state["umask"])
    for name, (soft, hard) in state["rlimits"].items():
        with contextlib.suppress(ValueError, OSError):  # a hard limit above the server's cannot be raised
            resource.setrlimit(getattr(resource, name), (soft, hard))
    if state["cpus"] is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, state["cpus"])
    delta = state["nice"] - os.getpriority(os.PRIO_PROCESS, 0)
    if delta > 0:  # only lower: a user cannot raise a priority back
        os.nice(delta)


# --- the server -------------------------------------------------------------------------------------

# What runs import (torch._dynamo: the first optimizer or checkpointed block imports it, 2 s), and nothing
# that starts a thread: forking is only safe from a process with one.
PRELOAD = ("numpy", "pandas", "tqdm", "torch", "torch._dynamo", "torch.distributed", "torch.nn.parallel",
           "torch.utils.checkpoint", "torch.utils.tensorboard", "frelon.tasks.classification", "frelon.launch.worker")
PRELOAD_IF_PRESENT = ("frelon.tasks.detection.task",)  # torchvision: detection only


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    for name in PRELOAD_IF_PRESENT:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _serve(path: Path, frelon_file: str) -> int:
    import frelon

    if str(Path(frelon.__file__).resolve()) != frelon_file:
        print(f"this interpreter imports {frelon.__file__}, the client {frelon_file}", file=sys.stderr)
        return 2
    lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another server of the same key is starting or running
    started = time.monotonic()
    pid_file = path.with_suffix(".pid")
    path.unlink(missing_ok=True)  # a dead server's: we hold the lock
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bound first: what cannot work (a path too long, a full disk) fails before seconds of imports
        listener.bind(str(path))
        listener.listen(64)
        pid_file.write_text(str(os.getpid()))
        _preload()  # clients that connect meanwhile wait in the backlog
        if threading.active_count() != 1:
            print(f"{threading.active_count()} threads after the imports: not forking from them", file=sys.stderr)
            return 3
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(f"[{time.strftime('%H:%M:%S')}] serving {path} (pid {os.getpid()}, ready in "
              f"{time.monotonic() - started:.1f} s)", flush=True)
        idle = float(os.environ.get(IDLE_VAR, DEFAULT_IDLE_S))
        last = time.monotonic()
        while True:
            ready, _, _ = select.select([listener], [], [], 1.0)
            if not ready:
                if time.monotonic() - last > idle:
                    return 0
                continue
            conn, _ = listener.accept()
            last = time.monotonic()
            if peer_uid(conn) != os.getuid():
                conn.close()
                continue
            if os.fork() == 0:
                code = 1
                try:
                    listener.close()
                    os.close(lock)
                    code = _supervise(conn)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            conn.close()
    finally:
        with contextlib.suppress(OSError):
            if pid_file.read_text() == str(os.getpid()):
                pid_file.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        listener.close()
        os.close(lock)  # at once, not at the end of the interpreter's teardown: a new server may start now


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _supervise(conn: socket.socket) -> int:
    """One run: take the client's descriptors, place, environment; fork the ranks; report their exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()  # a session of its own: not the server's
    request, fds = _receive_message(conn, with_fds=True)
    if request is None or len(fds) != 3:
        return 1
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _apply_state(request["state"])
    sys.path[0] = request["cwd"]  # as `python -m` started there would have it
    for entry in reversed(request["env"].get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(1, entry)
    world_size = request["world_size"]
    os.environ.update(WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size), GROUP_RANK="0",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    ranks: dict[int, int] = {}

    def relay(signum: int, _frame) -> None:
        for pid in list(ranks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in RELAYED:
        signal.signal(sig, relay)
    sys.stdout.flush()
    sys.stderr.flush()
    supervisor = os.getpid()
    for rank in range(world_size):
        pid = os.fork()
        if pid == 0:
            conn.close()
            parentage.die_with_parent(supervisor)  # no rank trains on without its supervisor
            _rank(rank, request)
        ranks[pid] = rank

    def watch_client() -> None:  # the launcher is gone (killed): stop the ranks, they save and exit
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        relay(signal.SIGTERM, None)

    try:
        _send(conn, {"pid": os.getpid()})
    except OSError:  # the launcher died as the run started (Ctrl-C at start-up): the ranks stop at once
        relay(signal.SIGTERM, None)
    else:
        threading.Thread(target=watch_client, daemon=True).start()
    codes: dict[int, int] = {}
    kill_at = None
    while len(codes) < world_size:
        pid, status = os.waitpid(-1, os.WNOHANG) if kill_at else os.waitpid(-1, 0)
        if pid == 0:
            if time.monotonic() > kill_at:
                for other in set(ranks) - set(codes):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(other, signal.SIGKILL)
            time.sleep(0.05)
            continue
        if pid not in ranks:
            continue
        code = os.waitstatus_to_exitcode(status)
        codes[pid] = code if code >= 0 else 128 - code
        if codes[pid] != 0 and len(codes) < world_size and kill_at is None:
            relay(signal.SIGTERM, None)  # the others would wait for it in a collective forever
            kill_at = time.monotonic() + STOP_GRACE_S
    by_rank = [codes[pid] for pid in sorted(ranks, key=ranks.get)]
    failures = [c for c in by_rank if c not in (0, 75)]
    code = failures[0] if failures else (75 if 75 in by_rank else 0)
    with contextlib.suppress(OSError):
        _send(conn, {"exit": code})
    return 0


def _rank(rank: int, request: dict) -> None:
    """A rank: torchrun's variables, the client's thread count, then the worker module as `__main__`."""
    code = 1
    try:
        for sig in RELAYED:
            signal.signal(sig, signal.SIG_DFL)
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
        import torch

        torch.set_num_threads(max(1, int(request["threads"])))
        sys.argv = [request["module"], *request["args"]]
        if request["module"] == DEFAULT_WORKER:
            from frelon.launch import worker

            code = worker.main(request["args"])
        else:
            import runpy

            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"] and len(argv) == 3:
        return _serve(Path(argv[1]), argv[2])
    if argv[:1] == ["--stop"]:
        print(f"stopped {stop(argv[1] if len(argv) > 1 else None)} warm server(s)")
        return 0
    print("usage: python -m frelon.launch.warm --stop [FOLDER]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
