"""A cluster across hosts: controller, two engines and a client each in its own network
namespace on a bridge, with CurveZMQ on (the default beyond loopback). The connection file
carries the controller's reachable address; an engine without the cluster's keys cannot join."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import until
from tools import netns

HOSTS = ("controller", "engine1", "engine2", "client", "intruder")

CLIENT_SCRIPT = """
import json, sys
from corral.client.client import Client
with Client(connection_file=sys.argv[1], timeout=30) as rc:
    rc.wait_for_engines(2, timeout=60)
    hosts = rc[:].apply_sync(lambda: __import__("psutil").net_if_addrs()["eth0"][0].address)
    print(json.dumps({"ids": rc.ids, "engine_addresses": sorted(hosts)}))
"""


@pytest.fixture
def hosts() -> Iterator[dict[str, tuple[str, str]]]:
    why = netns.missing()
    if why is not None:
        pytest.skip(why)
    with netns.bridged_namespaces(HOSTS) as found:
        yield found


def copy_to_host(tmp_path: Path, host: str, engine_file: Path) -> Path:
    """What an operator copies to another machine: the engine connection file, nothing else."""
    folder = tmp_path / host
    folder.mkdir(mode=0o700)
    target = folder / "corral-engine.json"
    shutil.copy(engine_file, target)
    return target


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.timeout(180)
def test_cluster_across_namespaces_with_curve(
    tmp_path: Path, hosts: dict[str, tuple[str, str]]
) -> None:
    python = [sys.executable, "-m", "corral"]
    controller_ns, controller_address = hosts["controller"]
    processes: list[subprocess.Popen[bytes]] = []

    def run(host: str, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "ab") as out:
            process = subprocess.Popen(
                netns.in_namespace(hosts[host][0], argv), stdout=out, stderr=subprocess.STDOUT
            )
        processes.append(process)
        return process

    try:
        controller = run(
            "controller",
            [*python, "controller", "--cluster-dir", str(tmp_path), "--cluster-id", "nets",
             "--ip", "0.0.0.0", "--heartbeat-period", "0.5"],
            "controller.log",
        )  # fmt: skip
        engine_file = tmp_path / "nets" / "corral-engine.json"

        def written() -> bool:
            assert controller.poll() is None, (tmp_path / "controller.log").read_text()
            return engine_file.exists()

        until(written, 60, "the controller to write its connection file")
        info = json.loads(engine_file.read_text())
        assert info["ip"] == controller_address  # reachable, never 0.0.0.0
        assert "curve" in info  # on by default beyond loopback
        assert "CurveZMQ is on" in (tmp_path / "controller.log").read_text()

        for host in ("engine1", "engine2"):
            copied = copy_to_host(tmp_path, host, engine_file)
            run(host, [*python, "engine", "--file", str(copied)], f"{host}.log")

        client_file = tmp_path / "client-host.json"
        shutil.copy(tmp_path / "nets" / "corral-client.json", client_file)
        client = subprocess.run(
            netns.in_namespace(hosts["client"][0], [sys.executable, "-c", CLIENT_SCRIPT,
                                                    str(client_file)]),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        seen = json.loads(client.stdout)
        assert seen["engine_addresses"] == sorted([hosts["engine1"][1], hosts["engine2"][1]])

        # the intruder has the signing key and the address, but not the curve keys
        keyless = copy_to_host(tmp_path, "intruder", engine_file)
        stripped = json.loads(keyless.read_text())
        del stripped["curve"]
        keyless.write_text(json.dumps(stripped))
        intruder = subprocess.run(
            netns.in_namespace(hosts["intruder"][0], [*python, "engine", "--file", str(keyless),
                                                      "--timeout", "3"]),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert intruder.returncode != 0
        assert "registration" in intruder.stderr.lower(), intruder.stderr
        recheck = subprocess.run(
            netns.in_namespace(hosts["client"][0], [sys.executable, "-c", CLIENT_SCRIPT,
                                                    str(client_file)]),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert json.loads(recheck.stdout)["ids"] == seen["ids"]  # still the two engines
    finally:
        for process in reversed(processes):
            stop(process)
