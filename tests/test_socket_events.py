"""corral.socket_events: a real monitor's events read without zmq.utils.monitor."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from corral.errors import ProtocolError
from corral.socket_events import MonitorEvent, parse_monitor_event, read_monitor_event


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_a_connection_and_its_end_as_a_monitor_reports_them(context: zmq.Context[Any]) -> None:
    server = context.socket(zmq.ROUTER)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    monitor = dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    assert monitor.poll(10_000), "no handshake event within 10 s"
    event = read_monitor_event(monitor)
    assert event.event == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert event.endpoint == f"tcp://127.0.0.1:{port}".encode()
    server.close(linger=0)
    assert monitor.poll(10_000), "no disconnection event within 10 s"
    gone = read_monitor_event(monitor)
    assert gone.event == zmq.EVENT_DISCONNECTED and gone.value > 0  # the descriptor
    dealer.disable_monitor()
    monitor.close(linger=0)
    dealer.close(linger=0)


def test_a_message_of_another_shape_is_a_protocol_error() -> None:
    assert parse_monitor_event([b"\x01\x00\x07\x00\x00\x00", b"ep"]) == MonitorEvent(
        int.from_bytes(b"\x01\x00", sys.byteorder),
        int.from_bytes(b"\x07\x00\x00\x00", sys.byteorder),
        b"ep",
    )
    for frames in ([], [b"\x01\x00"], [b"short", b"ep"], [b"\x00" * 6, b"ep", b"more"]):
        with pytest.raises(ProtocolError, match="not a zmq monitor event"):
            parse_monitor_event(frames)


def test_engines_and_clients_do_not_import_asyncio() -> None:
    """zmq.utils.monitor and zmq.auth.thread import asyncio and ssl (5 MB of modules in each
    process); an engine and a client need neither."""
    code = (
        "import sys, corral.engine.engine, corral.client\n"
        "print(sorted(m for m in ('asyncio', 'ssl', 'IPython') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert found.stdout.strip() == "[]"
