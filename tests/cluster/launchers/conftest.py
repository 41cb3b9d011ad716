"""Real launch systems for the launcher tests: a one-node Slurm and a loopback sshd, each
installed (Debian packages, root) and started by the fixture, stopped even when a test fails;
and the `corral` command run as a separate process, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping

import pytest

from tools import slurm as slurm_tool
from tools import sshd as sshd_tool


def corral(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m corral ARGS`` to completion and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a running private Slurm (SLURM_CONF set), for the whole session."""
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root; CI runs as root")
    slurm_tool.install()
    with slurm_tool.running_slurm(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd_tool.SSHServer]:
    if os.geteuid() != 0:
        pytest.skip("sshd with root login needs root; CI runs as root")
    sshd_tool.install()
    with sshd_tool.running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
