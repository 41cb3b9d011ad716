"""The one receive loop step shared by the controller's socket shells (Hub and scheduler)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from corral.errors import CorralError

DRAIN_BATCH = 1000


def drain(
    sock: zmq.Socket[Any],
    handle: Callable[[list[zmq.Frame]], None],
    counts: dict[str, int],
    log: logging.Logger,
    limit: int = DRAIN_BATCH,
) -> None:
    """Handle up to ``limit`` waiting messages, each in isolation.

    Readiness is read from ``zmq.EVENTS`` rather than by catching ``zmq.Again``: raising that
    exception on every empty socket cost tens of microseconds per loop turn. A message that
    cannot be handled is counted in ``counts["rejected"]`` and logged; it never stops the loop.
    """
    for _ in range(limit):
        if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            return
        frames = sock.recv_multipart(copy=False)
        try:
            handle(frames)
        except CorralError as err:
            counts["rejected"] += 1
            log.warning("dropped a message: %s", err)
        except Exception:  # a bug must cost one message, never the process
            counts["rejected"] += 1
            log.exception("error while handling a message; dropped it")
