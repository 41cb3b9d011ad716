"""A real sshd on a loopback port with throw-away keys, for the SSH launcher tests.

Debian's ``openssh-server`` (installed by ``make sysdeps``), run in the foreground from a folder
of the caller's with its own host key, its own config and one authorized client key, so no
system sshd, host key or ``~/.ssh`` is used or changed. Yields the ssh options a client needs;
the server is stopped on exit, even when the caller failed. Test-time tooling only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("openssh-server", "openssh-client")
SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SSHServer:
    host: str
    port: int
    identity: Path
    ssh_args: tuple[str, ...]  # no host-key prompts, no known_hosts writes

    def options(self) -> dict[str, object]:
        """Options for corral's ssh launcher."""
        return {
            "hosts": [self.host],
            "port": self.port,
            "identity": str(self.identity),
            "ssh_args": list(self.ssh_args),
        }


def missing() -> str | None:
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        return f"sshd is not installed (tools/apt-install.sh {' '.join(PACKAGES)})"
    return None


def install() -> None:
    if missing() is not None:
        subprocess.run([str(REPO_ROOT / "tools" / "apt-install.sh"), *PACKAGES], check=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, timeout=60
    )


@contextmanager
def running_sshd(folder: Path) -> Iterator[SSHServer]:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    _keygen(folder / "host_key")
    _keygen(folder / "client_key")
    authorized = folder / "authorized_keys"
    authorized.write_text((folder / "client_key.pub").read_text())
    os.chmod(authorized, 0o600)
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        f"PidFile {folder / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "MaxStartups 200\n"
        "MaxSessions 200\n"
        "LogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation folder sshd insists on
    log = open(folder / "sshd.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = SSHServer(
        "127.0.0.1",
        port,
        folder / "client_key",
        (
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(folder / 'sshd.log').read_text()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("sshd did not listen within 30 s")
            time.sleep(0.05)  # polling a port: sshd offers no readiness signal
        yield server
    finally:
        if process.poll() is None:
            # the listener first; then every session child sshd forked is in its process group
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        log.close()
