"""Shared fixtures: a local HTTP server, a copy of the workflow, a way to run its commands."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "workflow", "envs", "config", "profiles", "dvc.yaml", "src"]


def tool_env() -> dict[str, str]:
    """The environment for pipeline commands: this interpreter's `frelon` and `snakemake` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command, capturing output; on an unexpected failure show what it printed."""
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@contextlib.contextmanager
def started(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
    """`cmd` running in the background for the with-block, its output in `log`; killed if it still runs at the
    block's end. `succeeded` waits for it."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or tool_env(), stdout=out, stderr=subprocess.STDOUT)
    proc.log = log
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def succeeded(proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait for a command `started` in the background; on a failure show the end of its log."""
    assert proc.wait(timeout=timeout) == 0, proc.log.read_text()[-4000:]


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (no data, no results), as a user's clone would be."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `server.root`, with `Range: bytes=N-` requests (206) like a real file
    server; `server.cuts[path] = n` makes the next response for `path` stop after n bytes."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        path = self.server.root / urllib.parse.unquote(self.path.lstrip("/"))
        asked = self.headers.get("Range")
        self.server.requests.append((self.path, asked))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(re.fullmatch(r"bytes=(\d+)-", asked)[1]) if asked else 0
        if asked and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cuts.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the connection closes after

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server(tmp_path):
    """A file server on 127.0.0.1: `.root` (folder), `.url`, `.cuts` and `.requests` (see above)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.root, server.cuts, server.requests = root, {}, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def http_root(http_server):
    """(folder, base URL): files put in the folder are served on 127.0.0.1."""
    return http_server.root, http_server.url


def shorten_demo(config: dict) -> None:
    """The demo with fewer epochs and steps: every job, study, experiment and seed of it, each trained for
    less (`make demo`, which CI also runs, trains the demo in full and checks its bars)."""
    config["demo"]["pretrain"]["train"]["epochs"] = 8
    studies = config["studies"]
    studies["finetune"]["train"]["epochs"] = 3
    studies["finetune"]["experiments"]["pretrained-augmented"]["train"]["epochs"] = 1  # a third, as in the demo
    studies["augmentation"]["train"]["epochs"] = 2
    studies["ingredients"]["train"]["epochs"] = 2
    studies["detection"]["train"]["epochs"] = 4
    config["adversarial"].update(patch_steps=10, pgd_steps=3)
    config["checkpointing"].update(steps=2)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo pipeline, shortened (shorten_demo), run once in a fresh copy of the workflow."""
    work = copy_workflow(tmp_path_factory.mktemp("demo"))
    path = work / "config" / "demo.yaml"
    config = yaml.safe_load(path.read_text())
    shorten_demo(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run(["snakemake", "--cores", "2", "--configfile", "config/demo.yaml"], cwd=work)
    return work


@pytest.fixture(scope="session", autouse=True)
def warm_servers(tmp_path_factory):
    """The tests' CPU runs share warm servers (frelon.launch.warm) in a folder of their own, stopped at the end."""
    from frelon.launch import warm

    folder = tmp_path_factory.mktemp("warm")
    folder.chmod(0o700)
    previous = os.environ.get(warm.DIR_VAR)
    os.environ[warm.DIR_VAR] = str(folder)
    yield folder
    warm.stop(folder)
    if previous is None:
        os.environ.pop(warm.DIR_VAR, None)
    else:
        os.environ[warm.DIR_VAR] = previous
