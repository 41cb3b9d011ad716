"""The engine's heart (corral/engine/heart.py) against real Hub-side sockets on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from corral.engine.heart import Heart

WAIT = 10.0


@pytest.fixture
def hub() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    context: zmq.Context[Any] = zmq.Context()
    pings = context.socket(zmq.PUB)
    pongs = context.socket(zmq.ROUTER)
    for sock in (pings, pongs):
        sock.linger = 0
        sock.bind("tcp://127.0.0.1:0")
    try:
        yield pings, pongs
    finally:
        context.destroy(linger=0)


def _address(sock: zmq.Socket[Any]) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def test_pings_come_back_as_pongs_until_stopped(
    hub: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    pings, pongs = hub
    heart = Heart(_address(pings), _address(pongs), b"engine-1", None)
    heart.start()
    try:
        deadline = time.monotonic() + WAIT
        echoed = None
        while echoed is None:  # a PUB drops pings until the heart's subscription arrives
            assert time.monotonic() < deadline, "no pong within the deadline"
            pings.send(b"1.hub")
            if pongs.poll(50):
                echoed = pongs.recv_multipart()
        assert echoed == [b"engine-1", b"1.hub"]
    finally:
        heart.stop(timeout=WAIT)
    assert not heart.is_alive()
    assert heart.failure is None


def test_a_heart_never_started_stops_at_once() -> None:
    heart = Heart("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", b"engine-1", None)
    started = time.monotonic()
    heart.stop(timeout=WAIT)
    assert time.monotonic() - started < WAIT
    assert not heart.is_alive()
