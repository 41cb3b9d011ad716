"""A real one-node Slurm for the launcher tests and benchmarks: munged, slurmctld and slurmd.

Debian's ``slurm-wlm`` and ``munge`` (installed by ``make sysdeps``), run as root in a folder of
the caller's, with a private munge socket and key and a minimal ``slurm.conf`` on free loopback
ports, so it touches no system-wide Slurm or munge. The node claims more CPUs than the machine
has (``config_overrides``) so that a 128-task job fits on a 2-core test machine. On exit every
job is cancelled and waited for, then the three daemons are stopped, SIGKILL if they linger;
this runs even when the caller failed. Test-time tooling only, never a dependency of corral.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("slurm-wlm", "munge")
STOP_TIMEOUT = 20.0
CPUS = 256  # what the node claims (config_overrides): tasks, not real cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def missing() -> str | None:
    """Why a Slurm cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a private Slurm needs root (slurmd starts job steps as their user)"
    for tool in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (tools/apt-install.sh {' '.join(PACKAGES)})"
    return None


def install(packages: tuple[str, ...] = PACKAGES) -> None:
    """Install Debian packages (by default Slurm and munge) that are missing; needs root."""
    subprocess.run([str(REPO_ROOT / "tools" / "apt-install.sh"), *packages], check=True)


def slurm_conf(folder: Path, node: str, munge_socket: Path) -> str:
    ctld_port, slurmd_port = free_port(), free_port()
    return f"""\
ClusterName=corral{os.getpid()}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
PlugStackConfig={folder}/plugstack.conf
KillWait=5
MinJobAge=60
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=1000 State=UNKNOWN
PartitionName=corral Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait(
    predicate: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"slurm fixture: timed out waiting for {what}\n{tail}")
        time.sleep(0.1)  # polling daemons that offer no event to wait on


def jobs(env: dict[str, str]) -> list[str]:
    """Job ids squeue lists (any state), or [] if it cannot answer."""
    done = subprocess.run(
        ["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, timeout=30
    )
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _stepds_since(started: float, conf: Path) -> list[int]:
    """slurmstepd processes born since ``started`` of the Slurm configured by ``conf`` (they
    inherit slurmd's SLURM_CONF), so another test session's private Slurm on the same machine
    keeps its own."""
    import psutil

    found = []
    for process in psutil.process_iter(["name", "create_time"]):
        if process.info["name"] != "slurmstepd" or process.info["create_time"] < started:
            continue
        try:
            if process.environ().get("SLURM_CONF") == str(conf):
                found.append(process.pid)
        except psutil.Error:
            continue  # gone meanwhile
    return found


@contextmanager
def running_slurm(folder: Path) -> Iterator[dict[str, str]]:
    """The environment (``SLURM_CONF`` set) in which sbatch/squeue/scancel use a fresh one-node
    Slurm living in ``folder``; the node is idle and ready when this yields."""
    started = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(exist_ok=True, mode=0o700)
    (folder / "plugstack.conf").write_text("")
    munge_socket = folder / "munge" / "munge.socket"
    key = folder / "munge" / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, timeout=60)
    node = socket.gethostname()
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, node, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    with ExitStack() as stack:
        logs = {name: open(folder / f"{name}.out", "ab") for name in ("munged", "ctld", "slurmd")}
        for handle in logs.values():
            stack.callback(handle.close)

        def daemon(argv: list[str], log: str) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                argv, env=env, stdout=logs[log], stderr=subprocess.STDOUT, start_new_session=True
            )
            stack.callback(_stop, process)
            return process

        daemon(
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={folder / 'munge' / 'munged.pid'}",
                f"--log-file={folder / 'munge' / 'munged.log'}",
                f"--seed-file={folder / 'munge' / 'munged.seed'}",
                "--num-threads=2",
            ],
            "munged",
        )
        _wait(munge_socket.exists, 30, "munged's socket", folder / "munged.out")
        ctld = daemon(["slurmctld", "-D", "-i", "-f", str(conf)], "ctld")
        daemon(["slurmd", "-D", "-N", node, "-f", str(conf)], "slurmd")

        def idle() -> bool:
            if ctld.poll() is not None:
                raise RuntimeError(f"slurmctld exited: {(folder / 'slurmctld.log').read_text()}")
            done = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
            )
            return done.stdout.strip() == "idle"

        _wait(idle, 60, "the node to be idle", folder / "slurmd.log")

        def cancel_all() -> None:
            try:
                ids = jobs(env)
                if ids:
                    subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=30)
                _wait(lambda: not jobs(env), 60, "every job to end")
            finally:
                for pid in _stepds_since(started, conf):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        stack.callback(cancel_all)  # runs first: jobs end while the daemons still run
        yield env
