"""The controller on another host, started over SSH (``corral start --controller ssh --host
login1``): its connection files are read back over the same channel and written here, so
engines and clients started from here find it as if it were local.

The session runs with a forced terminal (``ssh -tt``): if this side goes away, sshd hangs up
and the far controller gets SIGHUP and ends, so no controller outlives its cluster. Options
(the ``[ssh]`` table, then ``[controller]``, then flags): ``host``, ``port``, ``identity``,
``ssh_args``, ``python``, ``remote_dir`` (the far cluster folder's parent; default
``.corral`` under the far home).

The far folder holds the controller's result store, so like a local cluster's folder it
outlives ``corral stop``; ``controller-remote.json`` in the near folder (written before the
controller starts, kept after it stops) says where it is, so that ``corral list`` can tell the
far controller runs (by its ssh session here, not by a pid of another host) and ``corral stop
--clean`` / ``corral clean`` remove the far folder too (:func:`remove_far_folder`).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.errors import ConnectionError, LaunchError
from corral.protocol.connection_files import (
    CLIENT_FILE,
    ENGINE_FILE,
    ClientConnection,
    EngineConnection,
    write_private_json,
)

from .base import log_tail, require_tool, run_tool
from .local import spawn, terminate
from .ssh import ssh_base

PID_LINE = re.compile(r"corral-controller-pid (\d+)")
SEPARATOR = "----corral-separator----"
REMOTE_RECORD = "controller-remote.json"  # in the near folder: where the far controller runs
SSH_KEYS = ("ssh", "port", "identity", "ssh_args")  # the options that reach the far host


class SSHController:
    """Runs ``python -m corral controller`` on ``options["host"]`` and mirrors its files."""

    def __init__(
        self, cluster_id: str, local_path: Path, args: Sequence[str], options: Mapping[str, Any]
    ) -> None:
        self.cluster_id = cluster_id
        self.local_path = local_path
        self.args = list(args)
        self.options = dict(options)
        host = self.options.get("host")
        if not host:
            raise LaunchError("--controller ssh needs the controller's host: --host HOST")
        self.host = str(host)
        self.remote_base = str(self.options.get("remote_dir") or ".corral")
        self.process: subprocess.Popen[bytes] | None = None
        self.log = local_path / "controller-ssh.log"

    def _ssh(self, command: str, tty: bool = False) -> list[str]:
        ssh = require_tool(str(self.options.get("ssh") or "ssh"), "ssh controller")
        return [*ssh_base(self.options, ssh), *(["-tt"] if tty else []), self.host, command]

    def start(self, timeout: float) -> subprocess.Popen[bytes]:
        """Start the far controller and wait for its files; LaunchError with ssh's or the
        controller's words if it does not come up."""
        python = str(self.options.get("python") or "python3")
        argv = [
            python, "-m", "corral", "controller", "--cluster-id", self.cluster_id,
            "--cluster-dir", self.remote_base, *self.args,
        ]  # fmt: skip
        command = f"echo corral-controller-pid $$; exec {shlex.join(argv)}"
        self.local_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_json(
            self.local_path / REMOTE_RECORD,
            {
                "host": self.host,
                "cluster_id": self.cluster_id,
                "remote_dir": self.remote_base,
                "python": python,
                **{key: self.options[key] for key in SSH_KEYS if self.options.get(key)},
            },
        )
        self.process = spawn(self._ssh(command, tty=True), self.log)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise LaunchError(
                    f"the controller on {self.host} exited ({self.process.returncode}): "
                    f"{log_tail(self.log)}"
                )
            match = PID_LINE.search(log_tail(self.log, 100_000))
            if match is not None and self._fetch(int(match.group(1))):
                return self.process
            if time.monotonic() > deadline:
                self.stop(0.0)
                raise LaunchError(
                    f"the controller on {self.host} wrote no connection files within "
                    f"{timeout:.0f} s: {log_tail(self.log)}"
                )
            time.sleep(0.5)  # polling files on another host: no event crosses ssh

    def _fetch(self, pid: int) -> bool:
        """Copy the far connection files here if this controller (``pid``) has written them."""
        folder = f"{self.remote_base}/{self.cluster_id}"
        command = (
            f"cat {shlex.quote(f'{folder}/{ENGINE_FILE}')} && echo {SEPARATOR} && "
            f"cat {shlex.quote(f'{folder}/{CLIENT_FILE}')}"
        )
        try:
            output = run_tool(self._ssh(command), f"reading the connection files on {self.host}")
            engine_text, client_text = output.split(SEPARATOR)
            engine, client = json.loads(engine_text), json.loads(client_text)
            pids = {
                EngineConnection.from_json(engine).controller_pid,
                ClientConnection.from_json(client).controller_pid,
            }
        except (LaunchError, ValueError, ConnectionError):
            return False  # not written yet, or half written
        if pids != {pid}:
            return False  # a former controller's files
        self.local_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_json(self.local_path / ENGINE_FILE, engine)
        write_private_json(self.local_path / CLIENT_FILE, client)
        return True

    def stop(self, timeout: float) -> None:
        """The controller was asked to shut down: wait for its session, else hang it up."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            terminate(self.process)
        for name in (ENGINE_FILE, CLIENT_FILE):
            (self.local_path / name).unlink(missing_ok=True)


def remote_record(near_path: Path) -> dict[str, Any] | None:
    """What ``controller-remote.json`` in a cluster folder says, or None for a controller
    that ran on this host."""
    try:
        record = json.loads((near_path / REMOTE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("host") else None


def remove_far_folder(near_path: Path) -> str | None:
    """Remove the far folder of a stopped cluster whose controller ran over ssh, by running
    ``corral clean`` there (so a far folder still in use is left alone, as here). None when
    it is gone or there was none; otherwise why it is still there, with its place."""
    record = remote_record(near_path)
    if record is None:
        return None
    host, cluster_id = str(record["host"]), str(record.get("cluster_id") or near_path.name)
    base = str(record.get("remote_dir") or ".corral")
    place = f"{host}:{base}/{cluster_id}"
    argv = [
        str(record.get("python") or "python3"), "-m", "corral", "clean",
        "--cluster-dir", base, "--cluster-id", cluster_id,
    ]  # fmt: skip
    try:
        ssh = require_tool(str(record.get("ssh") or "ssh"), "ssh controller")
        done = subprocess.run(
            [*ssh_base(record, ssh), host, shlex.join(argv)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (LaunchError, OSError, subprocess.TimeoutExpired) as err:
        return f"{place} was not removed: {err}"
    said = (done.stdout + done.stderr).strip()
    if "no cluster folder" in said:
        return None  # removed before, or never made
    if done.returncode != 0 or "it is running" in said:
        return f"{place} was not removed: {said[-1000:] or f'exit status {done.returncode}'}"
    return None
