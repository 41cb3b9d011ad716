"""The engine's heart: echoes the Hub's pings as pongs, on a thread of its own, in C.

The echo is a zmq proxy (SUB from the Hub's ping PUB to a DEALER on its pong ROUTER) that runs
without the GIL, so pongs continue while user code holds it: a busy engine is not taken for a
dead one. The proxy's sockets and context belong to the heart's thread; its owner (the engine's
I/O thread) stops it through a control socket (``TERMINATE``) and joins it.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import zmq

from corral.security import CurveKeys, make_client

_names = itertools.count()


class Heart:
    """A ping-to-pong forwarder for one engine: :meth:`start` once, :meth:`stop` once done."""

    def __init__(
        self, ping_address: str, pong_address: str, identity: bytes, curve: CurveKeys | None
    ) -> None:
        self.ping_address = ping_address
        self.pong_address = pong_address
        self.identity = identity
        self.curve = curve
        self.failure: BaseException | None = None
        self._context: zmq.Context[Any] = zmq.Context()  # its own: never blocks another term()
        self._control = f"inproc://corral-heart-{next(_names)}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corral-engine-heart", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the proxy and join its thread (each wait at most ``timeout`` seconds)."""
        if self._thread.ident is None:
            self._context.term()
            return
        if self._ready.wait(timeout):
            steer: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
            try:
                steer.connect(self._control)
                steer.send(b"TERMINATE")
            finally:
                steer.close(linger=int(timeout * 1000))
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._context.term()

    def _run(self) -> None:
        pings: zmq.Socket[Any] = self._context.socket(zmq.SUB)
        pongs: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        control: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
        try:
            for sock in (pings, pongs):
                sock.linger = 0
                if self.curve is not None:
                    make_client(sock, self.curve)
            pings.setsockopt(zmq.SUBSCRIBE, b"")
            pongs.setsockopt(zmq.IDENTITY, self.identity)
            control.bind(self._control)
            pings.connect(self.ping_address)
            pongs.connect(self.pong_address)
            self._ready.set()
            zmq.proxy_steerable(pings, pongs, None, control)
        except BaseException as err:  # reported to the owner, which logs it
            self.failure = err
        finally:
            self._ready.set()
            for sock in (pings, pongs, control):
                sock.close(linger=0)
