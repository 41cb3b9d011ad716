"""Network namespaces joined by a bridge, as separate "hosts" for multi-host tests.

Each host is a namespace with one veth interface (``eth0``) and an address on a private test
subnet; the other ends of the veths hang on a bridge that lives in a namespace of its own. The
links are made inside the namespaces (``ip -n NS link add ... peer ... netns OTHER``), so
nothing is added to the machine's own network, and no address or route exists outside them:
no packet can leave. Removed on exit, even when the caller failed. Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

SUBNET = "10.214.14"  # exists only inside the namespaces made here


def missing() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"corral-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"this machine cannot make network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextmanager
def bridged_namespaces(hosts: Sequence[str]) -> Iterator[dict[str, tuple[str, str]]]:
    """``{host: (namespace, address)}`` for namespaces on one bridge, removed on exit."""
    prefix = f"c14-{os.getpid()}"
    bridge_ns = f"{prefix}-br"
    made: list[str] = []
    try:
        for name in [bridge_ns, *(f"{prefix}-{host}" for host in hosts)]:
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        found = {}
        for index, host in enumerate(hosts, start=1):
            namespace = f"{prefix}-{host}"
            port = f"v{index}"
            _ip("-n", bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", namespace)  # fmt: skip
            _ip("-n", bridge_ns, "link", "set", port, "master", "br0")
            _ip("-n", bridge_ns, "link", "set", port, "up")
            address = f"{SUBNET}.{index}"
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            found[host] = (namespace, address)
        yield found
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def in_namespace(namespace: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]
