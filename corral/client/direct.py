"""Which engines a client sends its direct requests to straight, skipping the MUX device.

A direct request through the controller's MUX device takes two more hops than one straight to
its engine (the controller's zmq I/O thread and the device thread, each way): on two cores
about a quarter of an apply round trip. An engine therefore also binds a ROUTER of its own on
loopback and names it when it registers (``direct``); a client on the engine's host connects
to it and sends that engine's direct requests there. The engine gives the Hub the copies the
device would have published, so the Hub's records do not change (docs/wire-flows.md, "Direct
requests").

The choice is made once per engine, when the client first learns of it, before any request
to it leaves; an engine stays on its path for the client's life, so the requests a client
sends to one engine keep their order. The rules, as a pure function:

- the client's ``direct`` setting is on (``Client(direct=False)`` keeps every request on the
  MUX);
- the cluster does not use curve (an engine holds no server key, so it binds no direct socket
  under ``--curve``);
- the engine offered a loopback ``tcp://`` address in this client's network namespace
  (:mod:`corral.protocol.direct_offer`: loopback is per namespace, not per host);
- the engine runs on this client's host: its host identity (:func:`corral.sharedmem.
  host_identity`: the same /dev/shm, pids and user) equals the client's. A client that
  reaches the controller from another machine, or through a tunnel, keeps the MUX.
"""

from __future__ import annotations

__all__ = ["direct_address"]

from corral.protocol.direct_offer import network_namespace, read_offer


def direct_address(
    enabled: bool,
    offered: object,
    engine_host: object,
    own_host: str | None,
    own_namespace: str | None = None,
) -> str | None:
    """The address to send an engine's direct requests to, or None to keep the MUX (see the
    module doc). ``offered``: the engine's ``direct`` field as the Hub passed it on;
    ``engine_host``: its host identity (``shm_host``); ``own_host``: this client's;
    ``own_namespace``: this client's network namespace (default: this process's)."""
    if not enabled or own_host is None:
        return None
    offer = read_offer(offered)
    if offer is None:
        return None
    address, namespace = offer
    if namespace != (network_namespace() if own_namespace is None else own_namespace):
        return None
    if not isinstance(engine_host, str) or engine_host != own_host:
        return None
    return address
