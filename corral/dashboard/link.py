"""The dashboard's connection to its cluster: a client of the Hub, on asyncio sockets.

It asks the Hub (the registration ROUTER, like any client) for ``status_request`` once per
tick; history searches read the SQLite store directly when there is one (:class:`History`),
else ask the Hub for pages of ``db_request``; it listens to the Hub's notifications
(engines coming and going) and to the engines' ``stats.`` messages on iopub; and it sends
control requests (abort, shutdown) to engines on the control queue. It never touches the task
queues, so a dashboard costs the cluster only these small messages.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from corral.controller.store import SQLiteStore
from corral.controller.store.base import KNOWN_FIELDS, REQUEST_BUFFERS_FIELD
from corral.controller.store.query import validate_query
from corral.errors import CorralError, ProtocolError, StoreError, TimeoutError
from corral.protocol.connection_files import ClientConnection
from corral.protocol.session import Frame, Message, Session, frame_view
from corral.security import make_client

log = logging.getLogger("corral.dashboard")

NotificationHandler = Callable[[Message], None]


class HubLink:
    """Request/reply with the Hub, plus the notification and stats streams.

    ``on_notification`` and ``on_stats`` are called from the link's reader tasks with each
    verified message. :meth:`request` raises :class:`~corral.errors.TimeoutError` when the Hub
    does not answer within ``timeout`` seconds (a stopped controller) and
    :class:`~corral.errors.CorralError` for an error reply.
    """

    def __init__(
        self,
        connection_file: Path,
        on_notification: NotificationHandler,
        on_stats: NotificationHandler,
        timeout: float = 10.0,
    ) -> None:
        info = ClientConnection.read(connection_file)
        self.info = info
        self.cluster_id = info.cluster_id
        self.key = info.key
        self.addresses = info.addresses()
        self.session = Session(
            self.key,
            signature_scheme=info.signature_scheme,
            username="dashboard",
            check_msg_type=False,
        )
        self.curve = info.curve
        self.timeout = timeout
        self.on_notification = on_notification
        self.on_stats = on_stats
        self.context = zmq.asyncio.Context()
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.hub = self._socket(zmq.DEALER, "hub")
        self.control = self._socket(zmq.DEALER, "control")
        self.control.setsockopt(zmq.IDENTITY, self.session.session_id.encode())
        self.notification = self._socket(zmq.SUB, "notification", subscribe=b"")
        self.stats = self._socket(zmq.SUB, "iopub", subscribe=b"stats.")

    def _socket(self, kind: int, channel: str, subscribe: bytes | None = None) -> Any:
        sock = self.context.socket(kind)
        sock.linger = 0
        if self.curve is not None:
            make_client(sock, self.curve)
        if subscribe is not None:
            sock.subscribe(subscribe)
        sock.connect(self.addresses[channel])
        return sock

    def start(self) -> None:
        """Start the reader tasks (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read(self.hub, self._on_reply)),
            loop.create_task(self._read(self.notification, self.on_notification)),
            loop.create_task(self._read(self.stats, self.on_stats)),
            loop.create_task(self._read(self.control, lambda msg: None)),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for future in self._waiting.values():
            future.cancel()
        self.context.destroy(linger=0)

    async def _read(self, sock: Any, handle: NotificationHandler) -> None:
        while True:
            frames = await sock.recv_multipart(copy=False)
            try:
                msg = self.session.feed(frames)
            except ProtocolError as err:
                log.warning("dashboard: dropped a message: %s", err)
                continue
            try:
                handle(msg)
            except Exception:
                log.exception("dashboard: failed to handle %s", msg.msg_type)

    def _on_reply(self, msg: Message) -> None:
        future = self._waiting.pop(msg.parent_id or "", None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(self, msg_type: str, content: dict[str, Any]) -> Message:
        """Send a Hub query and return its reply; error replies raise CorralError."""
        msg = self.session.msg(msg_type, content)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[msg.msg_id] = future
        try:
            await self.hub.send_multipart(self.session.serialize(msg), copy=False)
            reply = await asyncio.wait_for(future, self.timeout)
        except builtins.TimeoutError:
            raise TimeoutError(
                f"the Hub did not answer {msg_type} within {self.timeout:g} s"
            ) from None
        finally:
            self._waiting.pop(msg.msg_id, None)
        content = reply.content or {}
        if content.get("status") != "ok":
            raise CorralError(f"{content.get('ename', 'error')}: {content.get('evalue', content)}")
        return reply

    async def send_control(self, engine_uuid: str, msg_type: str, content: dict[str, Any]) -> None:
        """Send a control request to one engine (its reply is read and dropped)."""
        msg = self.session.msg(msg_type, content)
        frames: list[Frame] = self.session.serialize(msg, [engine_uuid.encode()])
        await self.control.send_multipart(frames, copy=False)


class History:
    """Where history searches are answered: the SQLite file itself when the controller
    names one (read-only, in a worker thread of this process, so a search over a long
    history never holds up the Hub), else the Hub's ``db_request``."""

    def __init__(self, link: HubLink) -> None:
        self.link = link
        path = link.info.sqlite_store
        self.path = Path(path) if path is not None else None
        self._store: SQLiteStore | None = None

    def _open(self) -> SQLiteStore | None:
        if self._store is None and self.path is not None and self.path.exists():
            try:
                self._store = SQLiteStore(self.path, read_only=True)
            except StoreError as err:
                log.warning("dashboard: reading %s through the Hub: %s", self.path, err)
                self.path = None
        return self._store

    async def page(
        self, query: dict[str, Any], keys: list[str], limit: int, skip: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of matching records, newest first, and the number of matches."""
        store = self._open()
        if store is not None:
            validate_query(query)
            return await asyncio.to_thread(
                store.find_page, query, keys, limit=limit, skip=skip, newest_first=True
            )
        content = {"query": query, "keys": keys, "limit": limit, "skip": skip}
        reply = await self.link.request("db_request", content)
        records = (reply.content or {}).get("records", [])
        return records, int((reply.content or {}).get("total", len(records)))

    async def record(self, msg_id: str) -> tuple[dict[str, Any] | None, list[bytes]]:
        """One task's whole record and its result buffers (None if unknown)."""
        store = self._open()
        if store is not None:
            records = await asyncio.to_thread(store.get_records, [msg_id])
            record = records.get(msg_id)
            if record is None:
                return None, []
            buffers = [bytes(b) for b in record.pop("result_buffers", None) or []]
            record.pop(REQUEST_BUFFERS_FIELD, None)  # the request's own: not shown
            return record, buffers
        # the Hub sends buffers only for keys asked for by name: ask for every stored field
        keys = sorted(KNOWN_FIELDS - {REQUEST_BUFFERS_FIELD})
        query = {"query": {"msg_id": msg_id}, "keys": keys}
        reply = await self.link.request("db_request", query)
        found = (reply.content or {}).get("records", [])
        if not found:
            return None, []
        count = int(found[0].get("result_buffer_count", 0))
        return found[0], [bytes(frame_view(b)) for b in reply.buffers[:count]]

    def close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except StoreError as err:
                log.warning("dashboard: closing %s: %s", self.path, err)
