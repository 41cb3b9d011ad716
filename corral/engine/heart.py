"""The engine's heart: echoes the Hub's pings as pongs, on a thread of its own, in C.

The echo is a zmq proxy (SUB from the Hub's ping PUB to a DEALER on its pong ROUTER) that runs
without the GIL, so pongs continue while user code holds it: a busy engine is not taken for a
dead one. The proxy's sockets belong to the heart's thread; its owner (the engine's I/O thread)
stops it by terminating the heart's own context (the proxy then ends with ETERM and the thread
closes its sockets) and joins it.
"""

from __future__ import annotations

import threading
from typing import Any

import zmq

from corral.security import CurveKeys, make_client


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
        self._context: zmq.Context[Any] = zmq.Context()  # its own: stop() terminates it
        self._thread = threading.Thread(target=self._run, name="corral-engine-heart", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the proxy and join its thread (at most ``timeout`` seconds).

        Terminating the heart's own context makes the proxy's poll fail with ETERM on the
        heart's thread, which then closes its sockets itself; the termination returns once
        they are closed."""
        self._context.term()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        sockets: list[zmq.Socket[Any]] = []
        try:
            pings: zmq.Socket[Any] = self._context.socket(zmq.SUB)
            sockets.append(pings)
            pongs: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
            sockets.append(pongs)
            for sock in sockets:
                sock.linger = 0
                if self.curve is not None:
                    make_client(sock, self.curve)
            pings.setsockopt(zmq.SUBSCRIBE, b"")
            pongs.setsockopt(zmq.IDENTITY, self.identity)
            pings.connect(self.ping_address)
            pongs.connect(self.pong_address)
            zmq.proxy(pings, pongs)
        except zmq.ContextTerminated:
            pass  # stop()
        except BaseException as err:
            if not self._context.closed:  # after stop(), an error is the stop itself
                self.failure = err
        finally:
            for sock in sockets:
                sock.close(linger=0)
