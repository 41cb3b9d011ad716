"""A controller's sockets bound on loopback and a real ClientIO connected to them: the client's
I/O shell tested against frames the test sends and reads itself, no controller process."""

from __future__ import annotations

from typing import Any, Self

import zmq

from corral.client.io_shell import ClientIO, Handler
from corral.protocol.session import Session

KINDS = {
    "hub": zmq.ROUTER,
    "notification": zmq.PUB,
    "mux": zmq.ROUTER,
    "control": zmq.ROUTER,
    "task": zmq.ROUTER,
    "iopub": zmq.PUB,
}


class ControllerStandIn:
    """Every socket a ClientIO connects to, bound on loopback, and that ClientIO, started
    with ``handler`` and a session of ``key``."""

    def __init__(self, key: bytes, handler: Handler, bound: float) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        addresses = {}
        for name, kind in KINDS.items():
            sock = self.context.socket(kind)
            sock.linger = 0
            sock.sndhwm = sock.rcvhwm = 0
            addresses[name] = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
            self.sockets[name] = sock
        self.session = Session(key)
        self.io = ClientIO(self.session, addresses, handler)
        self.io.start(bound)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.io.close()
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.context.term()
