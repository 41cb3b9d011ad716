"""Engines started over a real sshd (loopback port, throw-away keys), options from the
per-cluster config file; refused and unauthorized connections fail fast with ssh's words."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from corral.client.client import Client
from tools.sshd import SSHServer

from .conftest import corral
from .test_mpi import processes_mentioning


def write_config(path: Path, options: dict[str, object], n: int) -> None:
    lines = ["[start]", 'engines = "ssh"', f"n = {n}", "", "[ssh]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.timeout(180)
def test_engines_over_ssh_from_the_cluster_config(tmp_path: Path, sshd: SSHServer) -> None:
    remote = tmp_path / "far-side"
    options = {**sshd.options(), "remote_dir": str(remote)}
    write_config(tmp_path / "ssh2.toml", options, n=2)
    env_args = ["--cluster-dir", str(tmp_path), "--cluster-id", "ssh2"]
    start = corral("start", "--daemon", "--heartbeat-period", "0.5", *env_args)
    try:
        assert start.returncode == 0, start.stderr
        # the connection file went over the ssh channel, private to its owner
        assert (remote / "corral-engine.json").stat().st_mode & 0o777 == 0o600
        folder = tmp_path / "ssh2"
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
            info = rc.engine_info()
            assert {e["launcher"] for e in info.values()} == {"ssh"}
            assert {e["host"] for e in info.values()} == {socket.gethostname()}
            assert rc[:].apply_sync(lambda: "over ssh") == ["over ssh"] * 2
        listing = corral("list", "--cluster-dir", str(tmp_path))
        assert "ssh launcher, 2 engines" in listing.stdout
    finally:
        stop = corral("stop", *env_args)
    assert stop.returncode == 0, stop.stderr
    assert not remote.exists()  # nothing left on the far side
    assert processes_mentioning(tmp_path) == []


@pytest.mark.timeout(180)
def test_stop_after_a_killed_manager_and_controller_cleans_the_far_side(
    tmp_path: Path, sshd: SSHServer
) -> None:
    """The manager and the controller SIGKILLed: nothing asks the engines to leave, and
    killing the local ssh sessions does not end them (no terminal, no hangup). ``corral
    stop`` ends them by the pids they announced and removes the copied connection file
    (its key), as the manager's own stop does. On 73d62bb both stayed on the far side."""
    remote = tmp_path / "far-side"
    write_config(tmp_path / "orphan.toml", {**sshd.options(), "remote_dir": str(remote)}, n=2)
    env_args = ["--cluster-dir", str(tmp_path), "--cluster-id", "orphan"]
    start = corral("start", "--daemon", "--heartbeat-period", "0.5", *env_args)
    try:
        assert start.returncode == 0, start.stderr
        folder = tmp_path / "orphan"
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
            far_pids = sorted(rc[:].apply_sync(os.getpid))
        state = json.loads((folder / "cluster.json").read_text())
        for role in ("manager_pid", "controller_pid"):
            os.kill(state[role], signal.SIGKILL)
        assert (remote / "corral-engine.json").exists()
        assert all(psutil.pid_exists(pid) for pid in far_pids)
    finally:
        stop = corral("stop", *env_args)
    assert stop.returncode == 0, stop.stderr
    assert not remote.exists()
    psutil.wait_procs([p for p in map(_process, far_pids) if p is not None], timeout=15)
    assert processes_mentioning(tmp_path) == []


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("problem", ["refused", "unauthorized"])
def test_ssh_that_cannot_connect_fails_fast_with_its_words(
    tmp_path: Path, sshd: SSHServer, problem: str
) -> None:
    options = {**sshd.options(), "remote_dir": str(tmp_path / "far-side")}
    if problem == "refused":
        options["port"] = closed_port()
        says = "Connection refused"
    else:
        stranger = tmp_path / "stranger_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
            check=True,
            timeout=60,
        )
        options["identity"] = str(stranger)
        says = "Permission denied"
    write_config(tmp_path / "bad.toml", options, n=1)
    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "bad"]
    began = time.monotonic()
    try:
        result = corral("start", *where, timeout=60)
    finally:
        corral("stop", *where)
    assert result.returncode == 1
    assert says in result.stderr, result.stderr
    assert "copying the engine connection file to 127.0.0.1 over ssh failed" in result.stderr
    assert time.monotonic() - began < 20
    assert processes_mentioning(tmp_path / "bad") == []


@pytest.mark.timeout(180)
def test_controller_over_ssh_with_local_engines(tmp_path: Path, sshd: SSHServer) -> None:
    import sys

    far = tmp_path / "login-node"
    options = {**sshd.options(), "python": sys.executable, "remote_dir": str(far)}
    del options["hosts"]
    write_config(tmp_path / "remote.toml", options, n=2)
    (tmp_path / "remote.toml").write_text(
        (tmp_path / "remote.toml").read_text().replace('engines = "ssh"', 'engines = "local"')
    )
    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "remote"]
    start = corral(
        "start", "--daemon", "--controller", "ssh", "--host", sshd.host,
        "--heartbeat-period", "0.5", *where,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr
        far_files = json.loads((far / "remote" / "corral-client.json").read_text())
        near_files = json.loads((tmp_path / "remote" / "corral-client.json").read_text())
        # mirrored over the ssh channel; the dashboard runs beside this side's manager and
        # adds its URL to the near copy only
        near_files.pop("dashboard", None)
        assert far_files == near_files
        # by default it listens where this host reaches it, with CurveZMQ on
        assert far_files["ip"] not in ("127.0.0.1", "0.0.0.0") and "curve" in far_files
        assert (tmp_path / "remote" / "corral-client.json").stat().st_mode & 0o777 == 0o600
        with Client(connection_file=tmp_path / "remote" / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
            assert rc[:].apply_sync(lambda: 2) == [2, 2]
        # listed as running by its ssh session, shown with its far pid and host
        listing = corral("list", "--cluster-dir", str(tmp_path)).stdout
        row = next(line.split() for line in listing.splitlines() if line.startswith("remote "))
        assert row[1] == f"{far_files['controller_pid']}@{sshd.host}", listing
    finally:
        stop = corral("stop", *where)
    assert stop.returncode == 0, stop.stderr
    assert not (far / "remote" / "corral-client.json").exists()
    assert processes_mentioning(tmp_path) == []
    # like a local cluster's folder, the far one keeps the store until it is cleaned
    assert (far / "remote" / "tasks.db").exists()
    assert "no running clusters" in corral("list", "--cluster-dir", str(tmp_path)).stdout
    clean = corral("clean", "--cluster-id", "remote", "--cluster-dir", str(tmp_path))
    assert clean.returncode == 0, clean.stderr
    assert not (far / "remote").exists(), sorted(p.name for p in (far / "remote").iterdir())
    assert not (tmp_path / "remote").exists()


@pytest.mark.timeout(60)
def test_controller_over_ssh_needs_a_host(tmp_path: Path) -> None:
    result = corral("start", "--controller", "ssh", "--cluster-dir", str(tmp_path), timeout=60)
    assert result.returncode == 1
    assert "--controller ssh needs the controller's host: --host HOST" in result.stderr
