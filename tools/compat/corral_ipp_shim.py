"""pytest plugin: run ipyparallel's own shipped test suite against corral.

Loaded with ``-p corral_ipp_shim`` (see ``make compat`` and tools/compat/run.py). Before any
test module is imported it

- points every public top-level name of the installed ``ipyparallel`` package at corral's
  object of the same name, and removes the names corral does not have, so a test that needs
  one fails instead of silently testing ipyparallel itself;
- replaces the cluster helpers of ``ipyparallel.tests`` (``setup``, ``teardown``,
  ``add_engines``) with ones that start a corral controller and corral engines, found by
  ``Client(profile="iptest")``; on those engines ``ipyparallel.datapub`` (which tasks import
  to publish data) is corral's (engine_site/sitecustomize.py).

Submodules (``ipyparallel.serialize``, ``ipyparallel.cluster.launcher`` ...) are left alone:
tests that import them test ipyparallel's internals, and run.py does not count them.
Nothing of ipyparallel is copied here; its tests run unmodified from the installed wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import ipyparallel
import ipyparallel.tests as ipp_tests
import ipyparallel.util
import pytest

import corral
from corral.cluster.cluster import Cluster

PROFILE = "iptest"
ENGINE_SITE = Path(__file__).resolve().parent / "engine_site"  # the cluster's sitecustomize
HEARTBEAT = 0.25  # the peer's test controller runs with --ping=250

_state: dict[str, Any] = {"cluster": None, "dir": None}


def _redirect_in(module_name: str) -> bool:
    """Whether to point a name at corral in the ipyparallel submodule defining it too. Not in
    its serializer: tests importing ``ipyparallel.serialize`` test that (run.py skips them),
    and its own functions there call each other through the module's globals."""
    return module_name.startswith("ipyparallel.") and not module_name.startswith(
        "ipyparallel.serialize"
    )


def _point_public_names_at_corral() -> list[str]:
    """Replace ipyparallel's public names by corral's; return the ones corral lacks."""
    missing = []
    for name in [n for n in dir(ipyparallel) if not n.startswith("_")]:
        value = getattr(ipyparallel, name)
        if isinstance(value, types.ModuleType) and name != "error":
            continue  # submodules and stdlib imports: ipyparallel internals
        try:
            replacement = getattr(corral, name)
        except AttributeError:
            delattr(ipyparallel, name)
            missing.append(name)
        else:
            home = sys.modules.get(getattr(value, "__module__", "") or "")
            if home is not None and _redirect_in(home.__name__):
                setattr(home, name, replacement)  # e.g. ipyparallel.client.client.Client
            setattr(ipyparallel, name, replacement)
    # the one helper the peer's tests take from a submodule rather than the top level
    if hasattr(corral, "interactive"):
        ipyparallel.util.interactive = corral.interactive
    return missing


def _cluster() -> Cluster:
    cluster = _state["cluster"]
    if cluster is None:
        raise RuntimeError("the corral test cluster is not running (setup() was not called)")
    return cluster


def setup() -> None:
    """Start a corral controller and one engine, as the peer's setup() does with its own."""
    base = tempfile.mkdtemp(prefix="corral-compat-")
    os.environ["CORRAL_DIR"] = base
    path = _state["pythonpath"] = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ENGINE_SITE), path]))
    cluster = Cluster(
        n=0,
        cluster_id=PROFILE,
        cluster_dir=base,
        heartbeat_period=HEARTBEAT,
        db="memory",
        timeout=30,
    )
    cluster.start_controller()
    _state["cluster"], _state["dir"] = cluster, base
    add_engines(1)


def add_engines(n: int = 1, profile: str = PROFILE, total: bool = False) -> list[Any]:
    """Start ``n`` corral engines (``total``: only as many as needed to have ``n``) and wait
    until a client sees them; the engine processes, which the peer's tests may poll."""
    cluster = _cluster()
    client = cluster.connect()
    try:
        base = len(client.ids)
        if total:
            n = max(n - base, 0)
        started = cluster.start_engines(n)
        ipp_tests.launchers.extend(started)
        client.wait_for_engines(base + n, timeout=30)
    finally:
        client.close()
    return started


def teardown() -> None:
    """Stop the cluster and every engine started for it."""
    cluster = _state["cluster"]
    _state["cluster"] = None
    if cluster is not None:
        cluster.stop()
        for process in cluster.engines:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    ipp_tests.launchers.clear()
    base = _state.pop("dir", None)
    if base:
        shutil.rmtree(base, ignore_errors=True)
    os.environ.pop("CORRAL_DIR", None)
    path = _state.pop("pythonpath", None)
    if path is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = path


_missing: list[str] = []
_outcomes: dict[str, str] = {}
_collected: dict[str, int] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Point the names at corral before the peer's conftest and test modules are imported.
    With CORRAL_COMPAT_PEER=1 nothing is replaced: run.py counts the tests each file holds."""
    if os.environ.get("CORRAL_COMPAT_PEER") == "1":
        return
    _missing.extend(_point_public_names_at_corral())
    ipp_tests.setup = setup
    ipp_tests.teardown = teardown
    ipp_tests.add_engines = add_engines


# ---------------------------------------------------------------- outcome record for run.py


def _module(path: object) -> str:
    return Path(str(path)).stem


_modules: dict[str, str] = {}  # nodeid -> test module name (nodeids lack the path here)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if report.failed and isinstance(collector, pytest.Module):
        _outcomes[f"{_module(collector.path)}::<collection>"] = "error"
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = _module(item.path)
        _modules[item.nodeid] = module
        _collected[module] = _collected.get(module, 0) + 1


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = _modules.get(report.nodeid, "?")
    nodeid = f"{module}::{report.nodeid.split('::', 1)[-1]}"
    if report.when == "call" or report.outcome != "passed":
        previous = _outcomes.get(nodeid)
        if previous in (None, "passed"):
            _outcomes[nodeid] = "skipped" if report.skipped else report.outcome
            if report.when != "call" and report.failed:
                _outcomes[nodeid] = "error"


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("CORRAL_COMPAT_OUTCOMES")
    if target:
        Path(target).write_text(
            json.dumps(
                {"missing": _missing, "outcomes": _outcomes, "collected": _collected}, indent=1
            )
        )
