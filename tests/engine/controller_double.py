"""A stand-in for the controller's engine-facing sockets, and engine processes to test against.

The test plays every controller socket an engine talks to (docs/wire-flows.md): the Hub's
registration ROUTER, the engine-facing ROUTERs of mux, control and task, the iopub SUB, and the
heartbeat PUB/ROUTER pair. Nothing here sleeps to synchronise: every wait polls a socket with a
deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import zmq

from corral.protocol.messages import RESENT
from corral.protocol.session import Message, Session
from tests.wire import readable, recv_one, send_msg

KEY = "engine-test-key-0123456789"
LOCALHOST = "tcp://127.0.0.1"
WAIT = 10.0


class EngineProcess:
    """A ``python -m corral.engine`` subprocess and its log."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "corral.engine", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"engine did not exit; log:\n{self.log()}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self._log.close()


class FakeController:
    """The controller's sockets, bound on loopback, driven by the test."""

    def __init__(self, folder: Path, heartbeat_period: float = 5.0) -> None:
        self.folder = folder
        self.heartbeat_period = heartbeat_period
        self.context: zmq.Context[Any] = zmq.Context()
        self.session = Session(KEY, check_msg_type=False)
        self.registration = self._bind(zmq.ROUTER)
        self.mux = self._bind(zmq.ROUTER, mandatory=True)
        self.control = self._bind(zmq.ROUTER, mandatory=True)
        self.task = self._bind(zmq.ROUTER, mandatory=True)
        self.iopub = self._bind(zmq.SUB)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.hb_ping = self._bind(zmq.PUB)
        self.hb_pong = self._bind(zmq.ROUTER)
        self.engines: list[EngineProcess] = []
        self.uuid = ""
        self.engine_id = 0
        self.connection_file = folder / "cluster" / "corral-engine.json"
        self.connection_file.parent.mkdir()
        self.connection_file.write_bytes(
            orjson.dumps(
                {
                    "cluster_id": "cluster",
                    "key": KEY,
                    "signature_scheme": "hmac-sha256",
                    "transport": "tcp",
                    "ip": "127.0.0.1",
                    "registration": self.port(self.registration),
                    "heartbeat_period": heartbeat_period,
                }
            )
        )
        self._beat = 0

    def _bind(self, kind: int, mandatory: bool = False) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.linger = 0
        if mandatory:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(f"{LOCALHOST}:0")
        return sock

    @staticmethod
    def port(sock: zmq.Socket[Any]) -> int:
        return int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])

    def addresses(self) -> dict[str, str]:
        sockets = {
            "mux": self.mux,
            "control": self.control,
            "task": self.task,
            "iopub": self.iopub,
            "hb_ping": self.hb_ping,
            "hb_pong": self.hb_pong,
        }
        return {name: f"{LOCALHOST}:{self.port(sock)}" for name, sock in sockets.items()}

    def close(self) -> None:
        for engine in self.engines:
            engine.kill()
        self.context.destroy(linger=0)

    # ------------------------------------------------------------------ engines

    def start_engine(self, *args: str) -> EngineProcess:
        log_path = self.folder / f"engine-{len(self.engines)}.log"
        engine = EngineProcess(["--file", str(self.connection_file), *args], log_path)
        self.engines.append(engine)
        return engine

    def recv(
        self, sock: zmq.Socket[Any], timeout: float = WAIT, session: Session | None = None
    ) -> Message:
        """The next message on ``sock`` (identities in ``idents``), or AssertionError."""
        if not readable(sock, int(timeout * 1000)):
            logs = "\n".join(engine.log() for engine in self.engines)
            raise AssertionError(f"nothing received within {timeout} s; engine logs:\n{logs}")
        return (session or self.session).feed(recv_one(sock))

    def recv_type(self, sock: zmq.Socket[Any], msg_type: str, timeout: float = WAIT) -> Message:
        """The next message of ``msg_type`` on ``sock``, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(sock, max(deadline - time.monotonic(), 0.001))
            if msg.msg_type == msg_type:
                return msg

    def register(self, engine_id: int = 0, period: float | None = None) -> Message:
        """Answer the engine's registration_request; returns the request."""
        request = self.recv_type(self.registration, "registration_request")
        self.uuid = request.content["uuid"]  # type: ignore[index]
        assert request.idents == (self.uuid.encode(),)
        self.engine_id = engine_id
        content = {
            "status": "ok",
            "id": engine_id,
            "heartbeat_period": period or self.heartbeat_period,
            **self.addresses(),
        }
        send_msg(
            self.session,
            self.registration,
            "registration_reply",
            content,
            parent=request,
            idents=request.idents,
        )
        return request

    def ping(self) -> bytes:
        self._beat += 1
        beat = str(self._beat).encode()
        self.hb_ping.send(beat)
        return beat

    def wait_pong(self, timeout: float = WAIT) -> float:
        """Ping until a pong for the latest ping comes back; its round-trip time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent = time.monotonic()
            beat = self.ping()
            while self.hb_pong.poll(50):
                identity, echoed = self.hb_pong.recv_multipart()
                assert identity == self.uuid.encode()
                if echoed == beat:
                    return time.monotonic() - sent
        raise AssertionError("no pong within the deadline")

    # ------------------------------------------------------------------ requests

    def send(
        self,
        channel: str,
        msg_type: str | Message,
        content: dict[str, Any] | None = None,
        buffers: Any = (),
        session: Session | None = None,
        client: bytes = b"client-1",
    ) -> Message:
        """Send to the engine on ``channel`` as its queue would: ``[uuid, client_id, MSG]``.

        Retries while the engine's DEALER is not yet connected (ROUTER_MANDATORY).
        """
        session = session or self.session
        sock: zmq.Socket[Any] = getattr(self, channel)
        if isinstance(msg_type, Message):
            msg = msg_type
        else:
            msg = session.msg(msg_type, content, buffers=buffers)
        frames = session.serialize(msg, [self.uuid.encode(), client])
        deadline = time.monotonic() + WAIT
        while True:
            try:
                sock.send_multipart(frames, copy=False)
                return msg
            except zmq.error.ZMQError as err:
                if err.errno != zmq.EHOSTUNREACH or time.monotonic() > deadline:
                    raise
                sock.poll(20)  # wait a little for the engine's connection

    def reply_to(self, channel: str, request: Message, timeout: float = WAIT) -> Message:
        """The reply to ``request`` on ``channel``; fails on any other message first, except
        a reply the engine sends again after registering anew (``resent`` in its metadata):
        one sent while it re-registered may come again, and a client ignores it."""
        reply = self.recv(getattr(self, channel), timeout)
        while reply.metadata.get(RESENT) and reply.parent_header.get("msg_id") != request.msg_id:
            reply = self.recv(getattr(self, channel), timeout)
        assert reply.idents == (self.uuid.encode(), b"client-1")
        assert reply.parent_header.get("msg_id") == request.msg_id, (reply.msg_type, reply.content)
        return reply

    def call(
        self, channel: str, msg_type: str, content: dict[str, Any] | None = None, **kw: Any
    ) -> Message:
        return self.reply_to(channel, self.send(channel, msg_type, content, **kw))

    def iopub_until(
        self, done: Callable[[Message], bool], timeout: float = WAIT
    ) -> list[tuple[bytes, Message]]:
        """iopub messages up to and including the first for which ``done`` is true, without the
        engine's once-a-second ``engine_stats`` (published because this subscribes to every
        topic; they belong to no request, and a slow machine puts one among a request's)."""
        received = []
        deadline = time.monotonic() + timeout
        while True:
            if not self.iopub.poll(int(max(deadline - time.monotonic(), 0) * 1000)):
                logs = "\n".join(engine.log() for engine in self.engines)
                raise AssertionError(
                    f"iopub: condition not met; got {received}; engine logs:\n{logs}"
                )
            topic, *frames = self.iopub.recv_multipart()
            msg = self.session.feed(frames)
            if msg.msg_type == "engine_stats":
                continue
            received.append((topic, msg))
            if done(msg):
                return received

    def warm_iopub(self) -> None:
        """Wait until the engine's iopub PUB has our subscription (a PUB drops until then):
        until the idle status of one of our requests arrives. Any message arriving is not
        enough (an engine_stats published after the subscription, while the request's idle
        went before it and was dropped): another request is sent until its idle comes."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            request = self.send("mux", "execute_request", {"code": "None", "silent": True})
            self.reply_to("mux", request)
            wait_until = time.monotonic() + 0.5
            while (left := wait_until - time.monotonic()) > 0 and self.iopub.poll(
                int(left * 1000) + 1
            ):
                _, *frames = self.iopub.recv_multipart()
                if is_idle(self.session.feed(frames), request):
                    return
        raise AssertionError("the engine's iopub never delivered")

    def started(self) -> EngineProcess:
        """An engine that is registered, beating, and publishing to us."""
        engine = self.start_engine()
        self.register()
        self.wait_pong()
        self.warm_iopub()
        return engine


def is_idle(msg: Message, request: Message) -> bool:
    """Whether ``msg`` is the iopub ``idle`` status that ends ``request``."""
    return (
        msg.msg_type == "status"
        and msg.parent_header.get("msg_id") == request.msg_id
        and msg.content == {"execution_state": "idle"}
    )
