"""Hostile input at every socket of a live controller and an engine: nothing crashes, nothing
executes without the key, and results stored before are intact afterwards."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from corral.protocol.serialize import pack_apply_message
from corral.protocol.session import DELIMITER, Session
from tests.conftest import running_cluster
from tests.polling import until

ROUNDS_PER_SOCKET = 300
FLUSH_MS = 10_000  # closing with linger 0 would drop what zmq has not sent yet


def garbage(rng: random.Random, good: list[bytes]) -> list[bytes]:
    """One hostile multipart message, built from a valid one or from nothing."""
    kind = rng.randrange(8)
    frames = list(good)
    if kind == 0:  # random frames
        return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 9))]
    if kind == 1:  # truncated multipart
        return frames[: rng.randrange(0, len(frames))]
    if kind == 2:  # wrong signature
        frames[frames.index(DELIMITER) + 1] = rng.randbytes(32).hex().encode()
        return frames
    if kind == 3:  # replay of the same valid message
        return frames
    if kind == 4:  # huge header
        at = frames.index(DELIMITER) + 2
        frames[at] = b'{"x": "' + b"a" * 200_000 + b'"}'
        return frames
    if kind == 5:  # invalid JSON in a signed position
        at = frames.index(DELIMITER) + 2 + rng.randrange(4)
        frames[at] = b"{" + rng.randbytes(10)
        return frames
    if kind == 6:  # no delimiter
        return [f for f in frames if f != DELIMITER]
    return [b"\x00" * rng.randrange(1, 5)] + frames  # extra identity


@pytest.fixture(scope="module")
def fuzzed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with running_cluster(
        tmp_path_factory.mktemp("fuzz"), 2, log_level="INFO", keep=True
    ) as cluster:
        yield cluster


def wait_until_forwarded(pub: zmq.Socket, rc: object) -> None:
    """A PUB drops what it sends before its subscribers are connected: send junk until the
    client (subscribed through the iopub proxy) has rejected some, so the rounds that follow
    do reach it."""
    io = rc._io  # type: ignore[attr-defined]  # noqa: SLF001
    before = io.rejected

    def rejected_one() -> bool:
        if io.rejected != before:
            return True
        pub.send_multipart([b"engine.0.stream", b"not a message"])
        return False

    until(rejected_one, 10, "junk sent on iopub to reach the client")


def connection(cluster: object, name: str) -> dict:
    return json.loads((Path(cluster.path) / name).read_text())  # type: ignore[attr-defined]


def test_fuzz_every_socket_then_serve_correctly(fuzzed_cluster: object, tmp_path: Path) -> None:
    cluster = fuzzed_cluster
    rc = cluster.client  # type: ignore[attr-defined]
    stored = rc[:].apply_async(lambda x: x * 2, 21)
    assert stored.get(timeout=30) == [42, 42]
    client_info = connection(cluster, "corral-client.json")
    engine_info = connection(cluster, "corral-engine.json")
    url = f"tcp://{client_info['ip']}"
    targets = {
        "registration": (zmq.DEALER, client_info["registration"]),
        "mux": (zmq.DEALER, client_info["mux"]),
        "control": (zmq.DEALER, client_info["control"]),
        "task": (zmq.DEALER, client_info["task"]),
        "mux_engine": (zmq.DEALER, engine_info["mux_engine"]),
        "task_engine": (zmq.DEALER, engine_info["task_engine"]),
        "hb_pong": (zmq.DEALER, engine_info["hb_pong"]),
        "iopub_engine": (zmq.PUB, engine_info["iopub_engine"]),
    }
    marker = tmp_path / "executed"
    evil = Session(b"not-the-key")

    def touch() -> None:
        marker.write_text("the wrong key ran code")

    evil_request = evil.serialize(
        evil.msg("apply_request", {}, buffers=pack_apply_message(touch, (), {}))
    )
    rng = random.Random(1234)
    ctx = zmq.Context()
    sent = 0
    try:
        for name, (kind, port) in targets.items():
            sock = ctx.socket(kind)
            sock.linger = 0
            sock.connect(f"{url}:{port}")
            engine_uuid = rc._engines[rc.ids[0]].encode()  # noqa: SLF001
            prefix = [engine_uuid] if name in ("mux", "control") else []
            if kind == zmq.PUB:  # under the topic clients subscribe to (else the proxy drops it)
                prefix = [b"engine.0.stream"]
            if kind == zmq.PUB:
                wait_until_forwarded(sock, rc)
            for _ in range(ROUNDS_PER_SOCKET):
                frames = garbage(rng, evil_request) or [b""]
                try:
                    sock.send_multipart(prefix + frames, zmq.NOBLOCK)
                    sent += 1
                except zmq.ZMQError:
                    pass
            sock.send_multipart(prefix + evil_request)  # the wrong key, well formed
            sent += 1
            sock.close(linger=FLUSH_MS)  # what is queued still goes out
    finally:
        ctx.destroy(linger=FLUSH_MS)  # waits (at most FLUSH_MS) until all was sent
    print(f"fuzz: sent {sent} hostile messages to {len(targets)} sockets")

    # everything still serves valid work, and what was stored before is intact
    assert rc[:].apply_sync(lambda: "alive") == ["alive", "alive"]
    assert rc.load_balanced_view().apply_sync(lambda: 7) == 7
    assert rc.get_result(stored.msg_ids).get(timeout=30) == [42, 42]
    assert not marker.exists(), "a message signed with the wrong key was executed"
    assert all(p.poll() is None for p in cluster.engines)  # type: ignore[attr-defined]
    assert cluster.controller.poll() is None  # type: ignore[attr-defined]

    # how many each process turned away: the controller writes its counts (and the
    # scheduler's) when it stops, engines log theirs as they exit
    # what was published may still be on its way through the iopub proxy: wait (bounded)
    until(lambda: rc._io.rejected > ROUNDS_PER_SOCKET // 2, 30, "the client to see the junk")  # noqa: SLF001
    client_rejected = rc._io.rejected  # noqa: SLF001
    cluster.stop()  # type: ignore[attr-defined]
    folder = Path(cluster.path)  # type: ignore[attr-defined]
    stats = json.loads((folder / "controller-stats.json").read_text())
    engines = [
        int(match.group(1))
        for log in sorted(folder.glob("engine-*.log"))
        for match in re.finditer(r"\((\d+) messages rejected\)", log.read_text())
    ]
    controller, scheduler = stats["controller"], stats["scheduler"]
    print(
        f"fuzz: rejected: controller {controller['rejected']} (+{controller['hub_rejected']} "
        f"refused by the Hub; {controller['monitored']} monitor copies, {controller['queries']} "
        f"queries handled), scheduler {scheduler['rejected']}, engines {engines}, "
        f"client {client_rejected}"
    )
    assert controller["rejected"] > 0 and scheduler["rejected"] > 0
    assert len(engines) == 2 and max(engines) > 0  # hostile requests went to one engine
    assert client_rejected > ROUNDS_PER_SOCKET // 2  # most of what was published on iopub
