"""An engine whose heart first beats after its registration lapsed (its sockets slow to
reconnect after a controller restart, its process starved or paused) is registered then: it had
its registration reply and counts itself registered, and the same controller's pings never tell
it to ask again, so a Hub that forgot it lost it for ever (bench/README.md, round twenty-seven).

The engine here is the test itself, speaking the wire (docs/wire-flows.md, "Registration"), so
that its heart beats exactly when the test says: a real controller, real sockets."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import zmq

from corral.protocol.session import Session
from tests.conftest import running_cluster
from tests.polling import until


@pytest.mark.timeout(120)
def test_an_engine_whose_heart_beats_after_its_registration_lapsed_is_registered(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, 0) as cluster:
        info = json.loads((cluster.path / "corral-engine.json").read_text())
        session = Session(info["key"].encode(), username="engine")
        identity = str(uuid.uuid4())
        context: zmq.Context[Any] = zmq.Context()
        sockets: list[zmq.Socket[Any]] = []

        def socket(kind: int) -> zmq.Socket[Any]:
            sock = context.socket(kind)
            sock.linger = 0
            sockets.append(sock)
            return sock

        try:
            registration = socket(zmq.DEALER)
            registration.identity = identity.encode()
            registration.connect(f"tcp://127.0.0.1:{info['registration']}")
            request = session.msg("registration_request", {"uuid": identity})
            registration.send_multipart(session.serialize(request))
            assert registration.poll(30_000), "no registration reply within 30 s"
            reply = session.feed(registration.recv_multipart()).content
            assert reply["status"] == "ok", reply
            log = cluster.path / "controller.log"
            until(
                lambda: "registered but its heart never beat" in log.read_text(),
                30,
                "the registration to lapse",
            )
            assert cluster.client.ids == []
            # the heart, late: every ping sent back as it came, on a DEALER named by the uuid
            pings = socket(zmq.SUB)
            pings.subscribe(b"")
            pings.connect(reply["hb_ping"])
            pongs = socket(zmq.DEALER)
            pongs.identity = identity.encode()
            pongs.connect(reply["hb_pong"])
            deadline = time.monotonic() + 30
            while cluster.client.ids != [reply["id"]]:
                assert time.monotonic() < deadline, "the late heart was never registered"
                if pings.poll(100):
                    pongs.send_multipart(pings.recv_multipart())
            assert "heart beat after its registration lapsed; registered" in log.read_text()
        finally:
            for sock in sockets:
                sock.close()
            context.term()
