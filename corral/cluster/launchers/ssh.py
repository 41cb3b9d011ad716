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
        ssh = ssh_base(self.spec.options, self._tool)
        for host, process, log in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                end_remote_engine(ssh, host, log, self.remote_file)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    terminate(process)
        for host in sorted(self.copied):
            remove_remote_files(ssh, host, self.remote_file, self.remote_dir)
        self.copied.clear()

    def state(self) -> dict[str, Any]:
        """What ``corral stop`` needs after a killed manager (:func:`clean_recorded`): the
        ssh sessions' pids, and how to reach each far side, its engines' logs (their pids)
        and the files copied there."""
        return {
            **super().state(),
            "hosts": sorted({host for host, _, _ in self.processes}),
            "pids": [p.pid for _, p, _ in self.processes if p.poll() is None],
            "ssh": ssh_base(self.spec.options, self._tool),
            "remote_dir": self.remote_dir,
            "copied": sorted(self.copied),
            "engine_logs": [[host, str(log)] for host, _, log in self.processes],
        }


def _run_remote(ssh: list[str], host: str, command: str) -> None:
    """``command`` on ``host`` (its output and failure ignored: a host gone is nothing to
    clean), bounded."""
    try:
        subprocess.run(
            [*ssh, host, command],
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        pass


def announced_pid(log: Path) -> int | None:
    """The pid an engine's ssh session announced in its log (None: none, or no log)."""
    try:
        match = PID_LINE.search(log.read_bytes())
    except OSError:
        return None
    return int(match.group(1)) if match is not None else None


def end_engines_command(pids: list[int], remote_file: str) -> str:
    """The far side's shell line that sends SIGTERM to each of ``pids`` still running with
    the engine's connection file (a pid reused by another process since is left alone, and
    so is every pid on a host without ``/proc``)."""
    file = shlex.quote(remote_file)
    return "".join(
        f"grep -qF -- {file} /proc/{pid}/cmdline 2>/dev/null && kill -TERM {pid}; " for pid in pids
    )


def remove_files_command(remote_file: str, remote_dir: str) -> str:
    """The far side's shell line that removes the copied connection file, and its folder if
    now empty."""
    return f"rm -f {shlex.quote(remote_file)}; rmdir {shlex.quote(remote_dir)} 2>/dev/null; "


def end_remote_engine(ssh: list[str], host: str, log: Path, remote_file: str) -> None:
    """SIGTERM to the engine an ssh session started on ``host``, by the pid it announced
    (:func:`end_engines_command`)."""
    pid = announced_pid(log)
    if pid is not None:
        _run_remote(ssh, host, end_engines_command([pid], remote_file) + "true")


def remove_remote_files(ssh: list[str], host: str, remote_file: str, remote_dir: str) -> None:
    """The engine connection file copied to ``host``, and its folder if now empty."""
    _run_remote(ssh, host, remove_files_command(remote_file, remote_dir) + "true")


def clean_recorded(record: Mapping[str, Any]) -> None:
    """After a killed manager (``corral stop``, knowing only the state file's launcher
    record): what :meth:`SSHLauncher.stop` would have done on the far sides, its engines
    ended (those still running) and the copied files removed. A malformed record (a state
    file written by hand, or by an older corral without these fields) is skipped."""
    ssh, remote_dir = record.get("ssh"), record.get("remote_dir")
    logs, copied = record.get("engine_logs", []), record.get("copied", [])
    if (
        not isinstance(ssh, list)
        or not all(isinstance(word, str) for word in ssh)
        or not isinstance(remote_dir, str)
        or not isinstance(logs, list)
        or not isinstance(copied, list)
    ):
        return
    remote_file = f"{remote_dir}/{ENGINE_FILE}"
    pids: dict[str, list[int]] = {}  # one ssh command per host, not per engine
    for entry in logs:
        if isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
            pid = announced_pid(Path(entry[1]))
            if pid is not None:
                pids.setdefault(entry[0], []).append(pid)
    for host in dict.fromkeys([*pids, *(h for h in copied if isinstance(h, str))]):
        command = end_engines_command(pids.get(host, []), remote_file)
        if host in copied:
            command += remove_files_command(remote_file, remote_dir)
        _run_remote(ssh, host, command + "true")
