"""The ``direct`` field an engine registers with: where clients on its host may send it
direct requests, and in which network namespace that address is valid.

Loopback is per network namespace, not per host: two processes that share /dev/shm, pids and
user (:func:`corral.sharedmem.host_identity`) may still each have their own ``127.0.0.1``
(``ip netns exec``, some container set-ups). A client there that connected to the engine's
loopback port would reach nothing, or another process's port, and its requests would wait for
ever. So the offer names the namespace, and a client takes it only when the namespace is its
own (corral.client.direct)::

    tcp://127.0.0.1:<port>?net=<namespace>[&lane=<name>]

``lane``: the abstract Unix socket name of the engine's lane (:mod:`corral.lane`), which a
client on its host prefers to the port (no zmq I/O thread on either side); absent where the
engine has none (not Linux, or lanes turned off).

``<namespace>`` is the inode of ``/proc/self/ns/net`` (unique among the live namespaces of a
boot, which the host identity already pins), or ``none`` where there is no such file (no
Linux namespaces: one loopback per host). The Hub passes the field on as it came.
"""

from __future__ import annotations

import functools
import os

__all__ = ["LOOPBACK_PREFIX", "make_offer", "network_namespace", "read_lane", "read_offer"]

LOOPBACK_PREFIX = "tcp://127.0.0.1:"
_NET = "?net="
_LANE = "&lane="


@functools.cache
def network_namespace() -> str:
    """This process's network namespace (see the module doc); ``none`` if it has none."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "none"


def make_offer(port: int, lane: str | None = None) -> str:
    """The ``direct`` field for a ROUTER bound on loopback at ``port`` in this process, and
    the name of its lane if it listens on one."""
    offer = f"{LOOPBACK_PREFIX}{port}{_NET}{network_namespace()}"
    return offer if lane is None else f"{offer}{_LANE}{lane}"


def read_offer(offered: object) -> tuple[str, str] | None:
    """``(address, namespace)`` from a ``direct`` field, or None if it is not one (not a
    string, not loopback, not a port, no namespace)."""
    if not isinstance(offered, str) or not offered.startswith(LOOPBACK_PREFIX):
        return None
    rest = offered[len(LOOPBACK_PREFIX) :]
    port, sep, namespace = rest.partition(_NET)
    namespace = namespace.partition(_LANE)[0]
    if not sep or not namespace or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return LOOPBACK_PREFIX + port, namespace


def read_lane(offered: object) -> str | None:
    """The lane name a valid ``direct`` field names, or None (no lane, or not an offer)."""
    if read_offer(offered) is None:
        return None
    assert isinstance(offered, str)
    lane = offered.partition(_LANE)[2]
    return lane if lane and lane.isprintable() and "/" not in lane else None
