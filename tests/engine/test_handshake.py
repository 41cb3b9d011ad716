"""The engine starts beating, and registers again after a controller restart, only once its
queue sockets are connected (corral.engine.handshake): real sockets on loopback, a real loop
thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

from corral.engine.handshake import QueueLinks
from corral.loop import Loop, LoopThread

WAIT = 10.0  # every wait bounded


def free_port() -> int:
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as probe:
        return probe.bind_to_random_port("tcp://127.0.0.1")


@contextmanager
def watched_dealers(
    identities: list[bytes],
    port: int,
    patience: float = 10.0,
    watch: list[QueueLinks] | None = None,
) -> Iterator[tuple[threading.Event, list[zmq.Socket[Any]]]]:
    """DEALERs connecting to ``port`` on a loop thread, watched; yields (ready, sockets). The
    QueueLinks is appended to ``watch`` when given."""
    ready = threading.Event()
    ctx: zmq.Context[Any] = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []
    watch = [] if watch is None else watch

    def setup(loop: Loop) -> None:
        for identity in identities:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, identity)
            sockets.append(sock)
        watch.append(QueueLinks(loop, sockets, patience))
        watch[0].when_connected(ready.set)
        for sock in sockets:
            sock.connect(f"tcp://127.0.0.1:{port}")

    def teardown() -> None:
        watch[0].close()
        for sock in sockets:
            sock.close(linger=0)

    thread = LoopThread("handshake-test", setup, teardown)
    thread.start()
    try:
        yield ready, sockets
    finally:
        thread.stop()
        ctx.term()


def test_ready_only_once_the_peer_listens_and_then_it_routes_to_every_identity() -> None:
    port = free_port()
    identities = [b"mux-engine", b"control-engine", b"task-engine"]
    with (
        watched_dealers(identities, port) as (ready, _),
        zmq.Context() as ctx,
        ctx.socket(zmq.ROUTER) as router,
    ):
        # nothing listens yet: the connections retry, the heart must not start
        assert not ready.wait(0.3)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown identity: EHOSTUNREACH, no drop
        router.bind(f"tcp://127.0.0.1:{port}")
        assert ready.wait(WAIT), "the handshakes were not reported"
        # what the Hub's announcement leads to: requests to each identity are routed, not
        # dropped (with ROUTER_MANDATORY an unknown identity raises instead)
        deadline = threading.Event()
        for identity in identities:
            for _ in range(100):  # the router's own side attaches the pipe in its next call
                try:
                    router.send_multipart([identity, b"request"])
                    break
                except zmq.ZMQError as err:
                    assert err.errno == zmq.EHOSTUNREACH
                    deadline.wait(0.001)
            else:
                pytest.fail(f"{identity!r} not routable after the watch reported ready")


def test_gives_up_after_its_patience_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing will listen there
    with caplog.at_level(logging.WARNING, logger="corral.engine.handshake"):
        with watched_dealers([b"lonely"], port, patience=0.2) as (ready, _):
            assert ready.wait(WAIT)
    assert any("not established after 0.2 s" in r.getMessage() for r in caplog.records)


def test_a_handshake_done_before_the_loop_turns_is_not_missed() -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        for _ in range(20):  # loopback handshakes end at once: the watch is attached first
            with watched_dealers([b"quick"], port) as (ready, _):
                assert ready.wait(WAIT)


def _routable(router: zmq.Socket[Any], identity: bytes) -> bool:
    """A ROUTER_MANDATORY send to ``identity`` goes through (the router's side attaches a new
    pipe in its next call: a few tries)."""
    pause = threading.Event()
    for _ in range(100):
        try:
            router.send_multipart([identity, b"request"])
            return True
        except zmq.ZMQError as err:
            assert err.errno == zmq.EHOSTUNREACH
            pause.wait(0.001)
    return False


def test_the_warning_is_logged_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    """A long outage: every registration attempt waits again and gives up again; only the
    first give-up is a warning, the others are debug lines."""
    port = free_port()  # nothing will listen there
    gave_up = [threading.Event() for _ in range(3)]
    watch: list[QueueLinks] = []
    with caplog.at_level(logging.DEBUG, logger="corral.engine.handshake"):
        with watched_dealers([b"lonely"], port, patience=0.1, watch=watch) as (ready, _):
            assert ready.wait(WAIT)
            links = watch[0]
            for event in gave_up:
                links.loop.call_soon_threadsafe(links.when_connected, event.set)
                assert event.wait(WAIT)
    levels = [r.levelno for r in caplog.records if "not established" in r.getMessage()]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 3


def test_after_the_peer_restarts_a_wait_ends_only_once_reconnected() -> None:
    """A controller restart: the ROUTER goes, the DEALER notices; a callback asked for then
    (the engine's registration again) runs only once the new ROUTER can route to it."""
    port = free_port()
    ctx: zmq.Context[Any] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"engine-mux")
    dealer.setsockopt(zmq.RECONNECT_IVL, 50)
    links: list[QueueLinks] = []
    first, again = threading.Event(), threading.Event()
    routed_when_called: list[bool] = []

    def setup(loop: Loop) -> None:
        links.append(QueueLinks(loop, [dealer]))
        links[0].when_connected(first.set)
        dealer.connect(f"tcp://127.0.0.1:{port}")

    def teardown() -> None:
        links[0].close()
        dealer.close(linger=0)

    thread = LoopThread("queue-links-test", setup, teardown)
    try:
        with ctx.socket(zmq.ROUTER) as old:
            old.bind(f"tcp://127.0.0.1:{port}")
            thread.start()
            assert first.wait(WAIT)
        # the old controller is gone: wait until the watch has seen the connection drop
        deadline = threading.Event()
        for _ in range(1000):
            thread.loop.call_soon_threadsafe(lambda: None)  # a turn reads the monitor
            if not links[0].connected:
                break
            deadline.wait(0.01)
        assert not links[0].connected
        with ctx.socket(zmq.ROUTER) as new:
            new.setsockopt(zmq.ROUTER_MANDATORY, 1)

            def registration() -> None:
                routed_when_called.append(_routable(new, b"engine-mux"))
                again.set()

            thread.loop.call_soon_threadsafe(links[0].when_connected, registration)
            assert not again.wait(0.3), "ran while the queue was disconnected"
            new.bind(f"tcp://127.0.0.1:{port}")
            assert again.wait(WAIT)
            assert routed_when_called == [True]
    finally:
        thread.stop()
        ctx.term()
