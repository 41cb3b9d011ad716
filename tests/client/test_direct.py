"""Direct requests straight to an engine on the client's host (corral.client.direct): which
engines the client chooses (a pure function), and on a real cluster that the requests skip the
MUX, keep their order, and are still recorded by the Hub for another client to read, while a
``Client(direct=False)`` keeps the MUX."""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import pytest

from corral.client.client import Client
from corral.client.direct import direct_address
from corral.protocol.direct_offer import make_offer, network_namespace, read_offer

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 30.0  # seconds: every wait bounded
HOST = "host-a"
NET = "4026531840"
OFFER = f"tcp://127.0.0.1:40001?net={NET}"
ADDRESS = "tcp://127.0.0.1:40001"


@pytest.mark.parametrize(
    ("enabled", "offered", "engine_host", "own_host", "expected"),
    [
        (True, OFFER, HOST, HOST, ADDRESS),  # same host and namespace, loopback: direct
        (False, OFFER, HOST, HOST, None),  # Client(direct=False)
        (True, None, HOST, HOST, None),  # the engine offers none (--no-direct, --curve)
        (True, OFFER, "host-b", HOST, None),  # another host: its loopback is not ours
        (True, OFFER, None, HOST, None),  # the engine's host is not known
        (True, OFFER, HOST, None, None),  # ours is not known (no usable /dev/shm)
        (True, f"tcp://10.0.0.5:40001?net={NET}", HOST, HOST, None),  # only loopback
        (True, f"tcp://127.0.0.1:0?net={NET}", HOST, HOST, None),  # not a port
        (True, f"tcp://127.0.0.1:x?net={NET}", HOST, HOST, None),
        (True, 40001, HOST, HOST, None),  # not an address
        # same host, another network namespace (ip netns exec): another loopback
        (True, "tcp://127.0.0.1:40001?net=4026532001", HOST, HOST, None),
        (True, ADDRESS, HOST, HOST, None),  # no namespace named: not taken
        (True, "tcp://127.0.0.1:40001?net=", HOST, HOST, None),
    ],
)
def test_which_engines_get_direct_requests(
    enabled: bool, offered: object, engine_host: object, own_host: str | None, expected: str | None
) -> None:
    assert direct_address(enabled, offered, engine_host, own_host, NET) == expected


def test_an_engine_offers_its_namespace_and_a_client_in_the_same_one_takes_it() -> None:
    offered = make_offer(40001)
    assert read_offer(offered) == (ADDRESS, network_namespace())
    assert direct_address(True, offered, HOST, HOST) == ADDRESS  # this process's namespace


def record(key: str, n: int) -> list[int]:
    """Append ``n`` to a list the engine process keeps under ``key``; the list so far."""
    seen: list[int] = sys.__dict__.setdefault(key, [])
    seen.append(n)
    return list(seen)


def test_direct_requests_skip_the_mux_and_the_hub_records_them(rc: Client, cluster: Any) -> None:
    assert rc._io.direct_enabled  # noqa: SLF001
    uuid = rc._engines[0]  # noqa: SLF001
    direct_gate = rc._io.gate_of("mux", uuid)  # noqa: SLF001
    mux_gate = rc._io._gates[b"mux"]  # noqa: SLF001
    assert direct_gate is rc._io._gates[b"direct"]  # noqa: SLF001
    rc.wait(timeout=BOUND)
    sent_direct, sent_mux = direct_gate.sent_at_once, mux_gate.sent_at_once
    results = []
    for n in range(5):  # one in flight at a time: each sent by this thread at once
        results.append(rc[0].apply_async(abs, -n))
        assert results[-1].get(BOUND) == n
    assert direct_gate.sent_at_once == sent_direct + 5
    assert mux_gate.sent_at_once == sent_mux
    with Client(cluster.path / "corral-client.json", timeout=BOUND, direct=False) as other:
        assert not other._io.direct_enabled  # noqa: SLF001
        # the engine's copies reached the Hub: another client reads the result there
        assert other.get_result(results[-1].msg_ids[0]).get(BOUND) == 4
        other_mux = other._io._gates[b"mux"]  # noqa: SLF001
        before = other_mux.sent_at_once
        assert other[0].apply_async(abs, -7).get(BOUND) == 7  # through the MUX
        assert other_mux.sent_at_once == before + 1
    status = rc.queue_status(targets=[0])
    assert status[0]["queue"] == 0


def test_direct_requests_to_one_engine_keep_their_order(rc: Client) -> None:
    """A burst (handed to the I/O thread, bundled) and requests sent at once all arrive in
    the order they were submitted."""
    key = "_corral_direct_order_test"
    view = rc[1]
    burst = [view.apply_async(record, key, n) for n in range(200)]
    last = burst[-1].get(BOUND)
    assert last == list(range(200))
    assert view.apply_async(record, key, 200).get(BOUND) == list(range(201))
