"""Shared fixtures: real clusters on loopback, and a guard against leftover processes."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import settings

# Hypothesis's per-example deadline is a timing assertion: on a loaded 2-core machine a slow
# example says nothing about correctness, and pytest-timeout still bounds every test.
settings.register_profile("corral", deadline=None)
settings.load_profile("corral")

HEARTBEAT = 0.25  # seconds: short, so engine death is seen in about a second


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every process a test started must be gone when the suite ends."""
    yield
    children = psutil.Process().children(recursive=True)
    gone, alive = psutil.wait_procs(children, timeout=10)
    for process in alive:
        process.kill()
    assert not alive, f"processes left running: {[p.pid for p in alive]}"


@pytest.fixture(scope="session", autouse=True)
def no_leftover_segments() -> Iterator[None]:
    """No shared-memory segment name this test process wrote is left when the suite ends
    (the processes it started are checked by their clusters' stop and the sweeps)."""
    yield
    gc.collect()
    from corral.protocol.shm import parse_link
    from corral.sharedmem import SHM_DIR

    mine = [
        name
        for name in (os.listdir(SHM_DIR) if SHM_DIR.is_dir() else [])
        if (parsed := parse_link(name)) is not None and parsed.writer == os.getpid()
    ]
    assert not mine, f"shared-memory names left in {SHM_DIR}: {mine}"


def start_cluster(base: Path, n: int, **kwargs: object):  # type: ignore[no-untyped-def]
    from corral.cluster.cluster import Cluster

    kwargs.setdefault("heartbeat_period", HEARTBEAT)
    kwargs.setdefault("restart", False)  # tests that kill processes restart them themselves
    return Cluster(n=n, cluster_dir=base, timeout=30, **kwargs)  # type: ignore[arg-type]


def kill_and_restore_controller(cluster: Any) -> None:
    """SIGKILL the cluster's controller and start it again with ``--restore`` (its ports, key
    and stored records), as its supervisor would."""
    assert cluster.controller is not None
    cluster.controller.send_signal(signal.SIGKILL)
    cluster.controller.wait()
    if "--restore" not in cluster.controller_args:
        cluster.controller_args.append("--restore")
    cluster.start_controller()


@contextmanager
def running_cluster(base: Path, n: int, **kwargs: object) -> Iterator[Any]:
    """A started cluster (controller and ``n`` engines), stopped on exit even if the body fails."""
    cluster = start_cluster(base, n, **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A controller and 2 engines shared by a test module (starting one costs ~1 s)."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), 2) as started:
        yield started


@pytest.fixture
def rc(cluster):  # type: ignore[no-untyped-def]
    """The module cluster's client, with both engines present."""
    client = cluster.client
    client.wait_for_engines(2, timeout=30)
    return client


# One private Slurm serves every test that submits jobs: their modules run on one worker.
SHARED_SYSTEM_GROUPS = {"test_slurm.py": "slurm", "test_pbs_on_slurm.py": "slurm"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist's ``--dist loadgroup`` (``make test``), a module's tests run in file
    order on one worker, so its module-scoped cluster starts once and tests that build on the
    one before (the dashboard's browser tests) see what they expect."""
    for item in items:
        group = SHARED_SYSTEM_GROUPS.get(item.path.name, str(item.path))
        item.add_marker(pytest.mark.xdist_group(group))
