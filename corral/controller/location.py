"""The address other hosts use to reach a controller, and whether its links must be encrypted.

A controller binds one interface (``--ip``) but must tell engines and clients an address they
can connect to: binding the wildcard 0.0.0.0 says nothing about where the controller is, so the
connection files carry ``--location`` when given, else this host's first address outside
loopback. Beyond loopback every link is on a network others may reach, so CurveZMQ is on unless
the user opts out, and the opt-out is logged as a warning every time.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

from corral.errors import CorralError

WILDCARDS = frozenset({"0.0.0.0", "*", "::", ""})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the loopback names; False for anything else (a name is
    not resolved: only the loopback names count)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS


def outside_addresses() -> list[str]:
    """This host's IPv4 addresses on interfaces that are up, loopback excluded, in the order the
    kernel lists the interfaces."""
    stats = psutil.net_if_stats()
    found = []
    for name, addresses in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for address in addresses:
            if address.family == socket.AF_INET and not is_loopback(address.address):
                found.append(address.address)
    return found


def reachable_address(ip: str, location: str | None = None) -> str:
    """The address written into connection files for a controller bound to ``ip``.

    ``location`` wins when given. A specific ``ip`` is its own answer. The wildcard becomes
    this host's first outside address; a host with none raises CorralError, since writing
    0.0.0.0 would send every engine to its own machine.
    """
    if location:
        if is_wildcard(location):
            raise CorralError(f"--location {location!r} is not an address other hosts can reach")
        return location
    if not is_wildcard(ip):
        return ip
    candidates = outside_addresses()
    if not candidates:
        raise CorralError(
            f"--ip {ip!r} listens on every interface, but this host has no address outside "
            "loopback to write into the connection files; pass --location HOST"
        )
    return candidates[0]


def curve_decision(ip: str, location: str | None, curve: bool, no_curve: bool) -> tuple[bool, str]:
    """Whether to run CurveZMQ, and what to log about it (empty: nothing to say).

    On by default whenever the controller listens beyond loopback; ``no_curve`` turns it off
    there with a warning that names the risk.
    """
    if curve and no_curve:
        raise CorralError("--curve and --no-curve contradict each other")
    beyond_loopback = not is_loopback(ip) or (location is not None and not is_loopback(location))
    if curve or not beyond_loopback:
        return curve, ""
    if no_curve:
        return False, (
            f"--no-curve: listening on {ip} without CurveZMQ. Messages are signed but NOT "
            "encrypted; anyone on the network can read every task, result and the data they "
            "carry, and anyone who obtains the key can run code on every engine"
        )
    return True, f"listening on {ip}, beyond loopback: CurveZMQ is on (--no-curve turns it off)"
