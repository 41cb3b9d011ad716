"""Engines on named hosts, started over SSH; the engine connection file goes over the same
channel (``cat > file`` on the far side), so no shared filesystem or scp is needed.

Options: ``hosts`` (a list or a comma-separated string of ``[user@]host[:count]``; engines are
dealt round-robin over them when counts are not given), ``port``, ``identity`` (a key file),
``ssh_args`` (more ssh words), ``python`` (the far side's interpreter, default this one's path),
``remote_dir`` (where the connection file goes; default ``.corral/<cluster-id>`` under the far
home). ssh runs with BatchMode, so a host that asks for a password fails at once with ssh's own
message instead of hanging.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import LaunchError
from corral.protocol.connection_files import ENGINE_FILE

from .base import EngineLauncher, LaunchSpec, log_tail, require_tool, run_tool
from .local import spawn, terminate
from .mpi import option_list

PID_LINE = re.compile(rb"^corral-engine-pid (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class SSHTarget:
    host: str  # [user@]host as ssh takes it
    count: int | None = None


def parse_hosts(value: Any) -> list[SSHTarget]:
    """``"a,b:2"``, ``["a", "b:2"]`` or ``{"a": 1, "b": 2}`` (ipyparallel's engines dict of
    host to count; a TOML table) -> targets; LaunchError for an empty list or bad count."""
    if isinstance(value, Mapping):
        return parse_hosts([_host_count(host, count) for host, count in value.items()])
    words = value.split(",") if isinstance(value, str) else list(value or [])
    targets = []
    for word in (str(w).strip() for w in words):
        if not word:
            continue
        host, _, count = word.rpartition(":") if ":" in word else (word, "", "")
        if count and not count.isdigit():
            raise LaunchError(f"ssh host {word!r}: the part after ':' must be an engine count")
        targets.append(SSHTarget(host, int(count) if count else None))
    if not targets:
        raise LaunchError("the ssh launcher needs hosts: --ssh-hosts HOST[:COUNT],...")
    return targets


def _host_count(host: object, count: object) -> str:
    """``host:count`` from one entry of a hosts mapping; the count must be a number of
    engines (ipyparallel's per-host tuples and dicts of engine arguments are not taken: every
    host runs the same engine command)."""
    if isinstance(count, bool) or not isinstance(count, int | str) or not str(count).isdigit():
        raise LaunchError(
            f"ssh host {host!r}: give a number of engines, not {count!r} (per-host engine "
            "arguments are not supported; engine_args apply to every host)"
        )
    return f"{host}:{count}"


def assign_engines(targets: list[SSHTarget], n: int) -> list[str]:
    """One host per engine: the given counts first, the rest dealt round-robin."""
    hosts = [t.host for t in targets for _ in range(t.count or 0)][:n]
    rest = [t.host for t in targets if t.count is None] or [t.host for t in targets]
    while len(hosts) < n:
        hosts.append(rest[(len(hosts)) % len(rest)])
    return hosts


def ssh_base(options: Any, ssh: str = "ssh") -> list[str]:
    """``ssh`` with batch mode, the port and key from the options, and ``ssh_args``."""
    argv = [ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if options.get("port"):
        argv += ["-p", str(options["port"])]
    if options.get("identity"):
        argv += ["-i", str(options["identity"])]
    return argv + option_list(options.get("ssh_args"))


def remote_engine_command(spec: LaunchSpec, remote_file: str, python: str) -> str:
    """The shell line the far side runs: say its pid, then become the engine."""
    engine = shlex.join(spec.engine_command(engine_file=remote_file, python=python))
    return f"echo corral-engine-pid $$; CORRAL_LAUNCHER=ssh exec {engine}"


class SSHLauncher(EngineLauncher):
    name = "ssh"

    def __init__(self, spec: LaunchSpec) -> None:
        super().__init__(spec)
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.copied: set[str] = set()
        self._tool = str(self.spec.option("ssh", "ssh"))

    @property
    def remote_dir(self) -> str:
        return str(self.spec.option("remote_dir", f".corral/{self.spec.cluster_id}"))

    @property
    def remote_file(self) -> str:
        return f"{self.remote_dir}/{ENGINE_FILE}"

    def _ssh(self, host: str, command: str) -> list[str]:
        return [*ssh_base(self.spec.options, self._tool), host, command]

    def start(self) -> None:
        self._tool = require_tool(str(self.spec.option("ssh", "ssh")), self.name)
        hosts = assign_engines(parse_hosts(self.spec.option("hosts")), self.spec.n)
        contents = self.spec.engine_file.read_text()
        folder = shlex.quote(self.remote_dir)
        target = shlex.quote(self.remote_file)
        for host in dict.fromkeys(hosts):
            run_tool(
                self._ssh(host, f"umask 077 && mkdir -p {folder} && cat > {target}"),
                f"copying the engine connection file to {host} over ssh",
                input_text=contents,
            )
            self.copied.add(host)
        python = str(self.spec.option("python", self.spec.python))
        command = remote_engine_command(self.spec, self.remote_file, python)
        for index, host in enumerate(hosts):
            log = self.spec.cluster_path / f"engine-ssh-{index}.log"
            self.processes.append((host, spawn(self._ssh(host, command), log), log))

    def failure(self) -> str | None:
        for host, process, log in self.processes:
            code = process.poll()
            if code is not None and code != 0:
                return f"ssh {host} exited with {code}: {log_tail(log, 1000)}"
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Engines asked to shut down end their ssh sessions; any still there after
        ``timeout`` get SIGTERM on their host (by the pid they announced), then their ssh
        session is closed; finally the copied files are removed."""
        deadline = time.monotonic() + timeout
        for host, process, log in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                match = PID_LINE.search(log.read_bytes()) if log.exists() else None
                if match is not None:
                    subprocess.run(
                        self._ssh(host, f"kill -TERM {int(match.group(1))}"),
                        capture_output=True,
                        timeout=30,
                        stdin=subprocess.DEVNULL,
                    )
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    terminate(process)
        for host in sorted(self.copied):
            subprocess.run(
                self._ssh(
                    host,
                    f"rm -f {shlex.quote(self.remote_file)}; "
                    f"rmdir {shlex.quote(self.remote_dir)} 2>/dev/null; true",
                ),
                capture_output=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
        self.copied.clear()

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "hosts": sorted({host for host, _, _ in self.processes}),
            "pids": [p.pid for _, p, _ in self.processes if p.poll() is None],
        }
