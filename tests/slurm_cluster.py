"""A real single-host SLURM cluster for the tests: munge, slurmctld and two slurmd (nodes n1, n2 on this
host), each node with four fake GPUs. SLURM hands them out as it would real ones (CUDA_VISIBLE_DEVICES
per job, disjoint between jobs), while the training itself runs on the CPU.

Fake GPUs are character devices `/dev/nvidia0..3` (major 195, as NVIDIA's): SLURM's gres plugin sets
CUDA_VISIBLE_DEVICES only for device files, and a node whose `File=` is missing drains. The config goes
to /etc/slurm, where SLURM commands look by default: the SLURM executor plugin runs `srun` inside jobs
with SLURM_CONF removed from the environment. Everything the cluster adds is removed at the end and the
daemons it started are stopped by PID. It runs only where no SLURM is configured (no
/etc/slurm/slurm.conf, no slurmctld). It uses the machine's munged if one runs; munge's key
(/etc/munge/munge.key, made by the Debian package) and /run/munge stay, as the package left them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODES = ("n1", "n2")
GPUS_PER_NODE = 4
CPUS_PER_NODE = 8    # more than this host has: SlurmdParameters=config_overrides lets SLURM believe it


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    absent = [d for d in DAEMONS if not (shutil.which(d) or Path("/usr/sbin", d).exists())]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing): .ci/run installs slurm-wlm and munge"
    if os.geteuid() != 0:
        return "starting slurmd and making fake GPU devices needs root"
    if Path("/etc/slurm/slurm.conf").exists() or subprocess.run(["pgrep", "-x", "slurmctld"],
                                                               capture_output=True).returncode == 0:
        return "this machine has a SLURM of its own (/etc/slurm/slurm.conf or a slurmctld): not replaced by a test's"
    return None


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.host = socket.gethostname()
        self.pids: list[int] = []
        self.made_devices: list[Path] = []
        self.saved: dict[Path, bytes | None] = {}
        self.env = dict(os.environ)

    # ── start ───────────────────────────────────────────────────────────────────────────────────────
    def start(self) -> "Cluster":
        try:
            self._devices()
            self._config()
            self._munge()
            self._daemon(["slurmctld", "-i"], self.dir / "slurmctld.pid")
            for node in NODES:
                self._daemon(["slurmd", "-N", node], self.dir / f"slurmd-{node}.pid")
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _devices(self) -> None:
        for i in range(GPUS_PER_NODE):
            dev = Path(f"/dev/nvidia{i}")
            if not dev.exists():
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(195, i))
                self.made_devices.append(dev)

    def _write(self, path: Path, text: str) -> None:
        if path not in self.saved:
            self.saved[path] = path.read_bytes() if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def _config(self) -> None:
        d = self.dir
        (d / "state").mkdir(parents=True, exist_ok=True)
        nodes = f"n[1-{len(NODES)}]"
        self._write(Path("/etc/slurm/slurm.conf"), f"""\
ClusterName=frelontest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort=16917
SlurmdPort=16918
AuthType=auth/munge
SlurmUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
TaskPluginParam=Cores
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MinJobAge=300
KillWait=20
ReturnToService=2
NodeName={nodes} NodeHostname={self.host} NodeAddr=127.0.0.1 Port=16921-16922 CPUs={CPUS_PER_NODE} RealMemory=16000 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN
PartitionName=gpu Nodes={nodes} Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes={nodes} MaxTime=INFINITE State=UP
""")
        self._write(Path("/etc/slurm/gres.conf"),
                    f"AutoDetect=off\nNodeName={nodes} Name=gpu File=/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n")

    def _munge(self) -> None:
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged is already running (the machine's own): use it, do not stop it
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        # munged, running as munge, must reach its PID file's folder: pytest's tmp folders are root's 0700
        pidfile = run_dir / "frelon-test-munged.pid"
        pidfile.unlink(missing_ok=True)
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--pid-file={pidfile}"], check=True)
        self._record(pidfile)

    def _daemon(self, cmd: list[str], pidfile: Path) -> None:
        subprocess.run(cmd, check=True, capture_output=True)
        self._record(pidfile)

    def _record(self, pidfile: Path) -> None:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pidfile} did not appear; see the logs in {self.dir}")
            time.sleep(0.1)
        self.pids.append(int(pidfile.read_text()))

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            if len(states) == len(NODES) and all(s.startswith("idle") for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"SLURM nodes not idle after {timeout:.0f} s: {states}; see {self.dir}")
            time.sleep(0.5)

    # ── stop ────────────────────────────────────────────────────────────────────────────────────────
    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for pid in self.pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        for dev in self.made_devices:
            dev.unlink(missing_ok=True)
        self.made_devices.clear()
        for path, content in self.saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        self.saved.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own child, not yet reaped) is gone for this purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
