"""The Client: connection to a controller, the engine table, Hub queries and control calls.

A Client reads the cluster's ``corral-client.json``, starts its one I/O thread
(:mod:`corral.client.ioloop`), asks the Hub for the engine table and then keeps that table
current from registration notifications, never by polling. Views (:mod:`corral.client.view`)
build requests through it; :mod:`corral.client.records` keeps what it learns of them.

Timeouts: any Hub query unanswered after ``timeout`` seconds raises ConnectionError, and a
control call (abort, clear, signal, shutdown) unanswered by an engine raises TimeoutError, so
no call on a Client waits forever on a controller that is gone. Results are different: a task
may legitimately run for days, so ``AsyncResult.get()`` waits as long as it is told to.

Controller outage: the I/O thread sees the connection drop (socket monitors). Hub queries then
wait up to ``timeout`` for it to come back and raise ConnectionError if it does not, as does
``wait_for_engines`` and a control call that times out meanwhile. zmq reconnects by itself when
the controller returns on the same ports (``--restore``); the client then asks for the engine
table again, and the same Client object goes on working.
"""

from __future__ import annotations

import getpass
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any

from corral.client.asyncresult import AsyncResult
from corral.client.connection import (
    DEFAULT_TIMEOUT,
    client_addresses,
    find_connection_file,
    read_connection_file,
)
from corral.client.ioloop import ClientIO
from corral.client.records import Records, parse_date
from corral.errors import (
    ConnectionError,
    EngineError,
    InvalidTarget,
    NoEnginesRegistered,
    QueryError,
    TimeoutError,
)
from corral.protocol.session import Frame, Message, Session
from corral.security import CurveKeys

if TYPE_CHECKING:
    from corral.client.view import DirectView, LoadBalancedView

__all__ = ["Client", "Target", "Targets"]

_DB_DATE_KEYS = ("submitted", "started", "completed", "received")

Target = tuple[int, str]  # (engine id, engine uuid)
Targets = int | Sequence[int] | slice | str | None  # an id, ids, a slice of ids, or "all"


class _Handler:
    """The I/O thread's view of a Client: where each decoded message goes."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def on_reply(self, msg: Message) -> None:
        self.client._records.handle_reply(msg)

    def on_notification(self, msg: Message) -> None:
        content = msg.content or {}
        if msg.msg_type == "registration_notification":
            self.client._engine_registered(content["id"], content["uuid"])
        elif msg.msg_type == "unregistration_notification":
            self.client._engine_unregistered(content["id"], content["uuid"])

    def on_iopub(self, msg: Message) -> None:
        self.client._records.handle_iopub(msg)

    def on_closed(self) -> None:
        self.client._records.fail_all(
            lambda: ConnectionError("the client was closed before this request was answered")
        )

    def on_link(self, up: bool) -> None:
        self.client._link_changed(up)


class Client:
    """A connection to one cluster's controller (see the module doc).

    ``rc.ids`` lists the registered engines; ``rc[0]``, ``rc[:]``, ``rc[::2]``, ``rc[[0, 2]]``
    give DirectViews on some of them and ``rc.load_balanced_view()`` a view that lets the
    scheduler choose. ``history``, ``outstanding``, ``results`` and ``metadata`` record every
    request this client sent. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        connection_file: str | os.PathLike[str] | None = None,
        *,
        cluster_id: str | None = None,
        cluster_dir: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.connection_file = find_connection_file(connection_file, cluster_id, cluster_dir)
        info = read_connection_file(self.connection_file)
        self.timeout = timeout
        self.cluster_id: str = info.get("cluster_id") or cluster_id or "default"
        self.session = Session(
            info["key"],
            signature_scheme=info.get("signature_scheme", "hmac-sha256"),
            username=getpass.getuser(),
        )
        self.addresses = client_addresses(info)
        self._records = Records()
        self._engines: dict[int, str] = {}
        self._uuids: dict[str, int] = {}
        self._gone: set[str] = set()
        self._engines_changed = threading.Condition()  # also notified when the link changes
        self._link_lost_at: float | None = None  # monotonic time the controller link dropped
        self._resync: set[str] | None = None  # engines announced since the table was re-asked
        curve = CurveKeys.from_connection(info)
        self._io = ClientIO(self.session, self.addresses, _Handler(self), curve)
        self._io.start(timeout)
        try:
            reply = self._query("connection_request", {})
        except BaseException as exc:
            self._io.close()
            if not isinstance(exc, ConnectionError):
                raise
            raise ConnectionError(
                f"no controller answered at {self.addresses['hub']} within {timeout} s: is the "
                "cluster running? Start one with `corral start`, or check the connection file "
                f"{self.connection_file}"
            ) from None
        with self._engines_changed:
            for engine_id, uuid in (reply.content or {}).get("engines", {}).items():
                self._add_engine(int(engine_id), uuid)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop the I/O thread and close every socket; unanswered requests fail with
        ConnectionError. Calling it again does nothing."""
        self._io.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._io.closed else f"{len(self._engines)} engines"
        return f"<Client {self.cluster_id!r} at {self.addresses['hub']}: {state}>"

    # ------------------------------------------------------------------ engines

    @property
    def ids(self) -> list[int]:
        """The ids of the registered engines, sorted."""
        return sorted(self._engines)

    def engine_info(self) -> dict[int, dict[str, Any]]:
        """Where each registered engine runs, asked of the Hub now: ``{id: {"uuid", "host",
        "pid", "mpi_rank", "mpi_size", "launcher", "job_id"}}`` (fields an engine did not
        report are absent)."""
        reply = self._query("connection_request", {})
        info = (reply.content or {}).get("engine_info", {})
        return {int(engine_id): dict(fields) for engine_id, fields in info.items()}

    def __len__(self) -> int:
        return len(self._engines)

    def __iter__(self) -> Iterator[DirectView]:
        """A DirectView on each engine, in id order."""
        return (self.direct_view(engine_id) for engine_id in self.ids)

    def __getitem__(self, key: int | slice | Sequence[int]) -> DirectView:
        """``rc[0]``: one engine; ``rc[:]``, ``rc[1::2]``: a slice of ``ids``; ``rc[[0, 2]]``."""
        if isinstance(key, slice):
            ids = self.ids[key]
            if not ids:
                raise NoEnginesRegistered(
                    f"no engines in {key} of the registered engines {self.ids}; start engines "
                    "or wait for them with rc.wait_for_engines(n)"
                )
            return self.direct_view(ids)
        if isinstance(key, int | list | tuple | range):
            self.resolve_targets(key)
            return self.direct_view(key if isinstance(key, int) else list(key))
        raise TypeError(f"index a Client with an int, a slice or a list of ints, not {key!r}")

    def direct_view(self, targets: Targets = "all", **flags: Any) -> DirectView:
        """A DirectView on ``targets`` (``"all"``: whichever engines are registered at each
        call); ``flags`` (``block``) are set on it."""
        from corral.client.view import DirectView

        view = DirectView(self, targets)
        view.set_flags(**flags)
        return view

    def load_balanced_view(
        self, targets: int | Sequence[int] | None = None, **flags: Any
    ) -> LoadBalancedView:
        """A view whose tasks the scheduler places, on any engine or only on ``targets``;
        ``flags`` (``block``, ``retries``, ``after``, ``follow``, ``timeout``) are set on it."""
        from corral.client.view import LoadBalancedView

        view = LoadBalancedView(self, targets)
        view.set_flags(**flags)
        return view

    def wait_for_engines(self, n: int, timeout: float | None = None) -> None:
        """Block until at least ``n`` engines are registered; TimeoutError after ``timeout``
        seconds (None or negative: wait forever), ConnectionError once the controller has been
        unreachable for the client's own ``timeout`` (while it is, the engine table is stale and
        does not count)."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with self._engines_changed:
            while len(self._engines) < n or self._link_lost_at is not None:
                now = time.monotonic()
                wait = None if deadline is None else deadline - now
                if wait is not None and wait <= 0:
                    raise TimeoutError(
                        f"{len(self._engines)} of {n} engines registered after {timeout} s"
                    )
                if self._link_lost_at is not None:
                    link_left = self._link_lost_at + self.timeout - now
                    if link_left <= 0:
                        raise self._unreachable(f"waiting for {n} engines")
                    wait = link_left if wait is None else min(wait, link_left)
                self._engines_changed.wait(wait)

    def _unreachable(self, doing: str) -> ConnectionError:
        lost = self._link_lost_at
        since = f"{time.monotonic() - lost:.1f} s ago" if lost is not None else "just now"
        return ConnectionError(
            f"{doing}: the controller at {self.addresses['hub']} did not answer: it is "
            f"unreachable (the connection dropped {since} and did not come back within "
            f"{self.timeout} s). Is it running? A controller restarted with --restore is found "
            "again by this client by itself."
        )

    def _wait_for_link(self, deadline: float, doing: str) -> None:
        """Return once the controller link is up; ConnectionError if not by ``deadline``."""
        with self._engines_changed:
            while self._link_lost_at is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._unreachable(doing)
                self._engines_changed.wait(left)

    def _link_changed(self, up: bool) -> None:
        """(I/O thread) The controller link dropped, or its sockets are connected again. The
        client counts as reconnected only once the Hub has sent the engine table again:
        registrations published meanwhile never reached it, and a direct request to an engine
        that has not re-registered yet would be dropped by the new MUX."""
        if up:
            with self._engines_changed:
                self._resync = set()
            self._request_engine_table()
            return
        with self._engines_changed:
            if self._link_lost_at is None:
                self._link_lost_at = time.monotonic()
            self._resync = None
            self._engines_changed.notify_all()

    def _request_engine_table(self) -> None:
        """(I/O thread) connection_request; the reply replaces the engine table, keeping the
        engines announced while it was on its way, and ends the outage. Asked again while the
        sockets stay connected and no reply comes."""
        msg = self.session.msg("connection_request", {})

        def on_reply(reply: Message) -> None:
            content = reply.content or {}
            with self._engines_changed:
                if content.get("status") != "ok" or self._resync is None:
                    return
                announced, self._resync = self._resync, None
                engines = {
                    int(engine_id): uuid
                    for engine_id, uuid in content.get("engines", {}).items()
                    if uuid not in self._gone
                }
                engines.update({i: u for i, u in self._engines.items() if u in announced})
                self._engines = engines
                self._uuids = {u: i for i, u in engines.items()}
                self._link_lost_at = None
                self._engines_changed.notify_all()

        def on_timeout() -> None:
            if self._records.pending.pop(msg.msg_id, None) is not None and self._io.link_up:
                self._request_engine_table()

        self._records.track_service(msg.msg_id, "hub", on_reply=on_reply)
        self._io.send_now("hub", self.session.serialize(msg))
        self._io.call_later(self.timeout, on_timeout)

    def resolve_targets(self, targets: Targets) -> list[Target]:
        """``(engine_id, engine_uuid)`` for each target; InvalidTarget for an id that is not
        registered, NoEnginesRegistered when ``"all"`` finds none."""
        engines = self._engines
        if targets is None or targets == "all":
            if not engines:
                raise NoEnginesRegistered(
                    "no engines are registered; start some, or wait for them with "
                    "rc.wait_for_engines(n)"
                )
            return sorted(engines.items())
        if isinstance(targets, slice):
            ids: list[Any] = sorted(engines)[targets]
        elif isinstance(targets, int) and not isinstance(targets, bool):
            ids = [targets]
        elif isinstance(targets, list | tuple | range):
            ids = list(targets)
        else:
            raise InvalidTarget(f"targets must be an engine id, ids, a slice or 'all': {targets!r}")
        resolved = []
        for engine_id in ids:
            if isinstance(engine_id, bool) or not isinstance(engine_id, int):
                raise InvalidTarget(f"engine ids are ints, not {engine_id!r}")
            uuid = engines.get(engine_id)
            if uuid is None:
                raise InvalidTarget(
                    f"engine {engine_id} is not registered (registered: {sorted(engines)})"
                )
            resolved.append((engine_id, uuid))
        return resolved

    def _add_engine(self, engine_id: int, uuid: str) -> None:
        if uuid in self._gone:
            return
        self._engines = {**self._engines, engine_id: uuid}
        self._uuids = {**self._uuids, uuid: engine_id}
        self._engines_changed.notify_all()

    def _engine_registered(self, engine_id: int, uuid: str) -> None:
        with self._engines_changed:
            self._add_engine(engine_id, uuid)
            if self._resync is not None:
                self._resync.add(uuid)

    def _engine_unregistered(self, engine_id: int, uuid: str) -> None:
        with self._engines_changed:
            self._gone.add(uuid)
            self._engines = {i: u for i, u in self._engines.items() if u != uuid}
            self._uuids = {u: i for i, u in self._engines.items()}
            self._engines_changed.notify_all()
        self._records.fail_engine(uuid, lambda: _engine_gone(engine_id, uuid))

    # ------------------------------------------------------------------ sending

    def send_request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        buffers: Sequence[Frame] = (),
        metadata: dict[str, Any] | None = None,
        target: Target | None = None,
        in_history: bool = True,
    ) -> str:
        """Sign, track and hand off one request; its msg_id. With a ``target`` it goes to
        that engine (mux or control); a target already gone fails at once with EngineError.
        While the controller is unreachable such a request waits up to ``timeout`` for it, then
        raises ConnectionError; load-balanced ones are queued (the scheduler holds them until
        engines are back)."""
        if target is not None and self._link_lost_at is not None:
            self._wait_for_link(time.monotonic() + self.timeout, msg_type)
        session = self.session
        msg = session.msg(msg_type, content, metadata=metadata, buffers=buffers)
        idents = (target[1].encode(),) if target is not None else ()
        frames = session.serialize(msg, idents)
        engine_id, uuid = target if target is not None else (None, None)
        self._records.track(msg, channel, uuid, engine_id, in_history=in_history)
        if uuid is not None and uuid not in self._uuids:
            self._records.fail(msg.msg_id, _engine_gone(engine_id, uuid))
            return msg.msg_id
        try:
            self._io.send(channel.encode(), frames)
        except Exception as exc:
            self._records.fail(msg.msg_id, exc)
            raise
        return msg.msg_id

    def fail_request(self, msg_type: str, metadata: dict[str, Any], error: BaseException) -> str:
        """Record a request that is never sent because it is known to fail (an impossible
        dependency): it gets a msg_id, a failed result, and later tasks can depend on it."""
        msg = self.session.msg(msg_type, {}, metadata=metadata)
        self._records.track(msg, "task")
        self._records.fail(msg.msg_id, error)
        return msg.msg_id

    def _query(self, msg_type: str, content: dict[str, Any]) -> Message:
        """A Hub request and its ``ok`` reply: ConnectionError if none within ``timeout``,
        QueryError if the Hub refused it."""
        deadline = time.monotonic() + self.timeout
        self._wait_for_link(deadline, msg_type)
        msg = self.session.msg(msg_type, content)
        future = self._records.track_service(msg.msg_id, "hub")
        try:
            self._io.send(b"hub", self.session.serialize(msg))
        except ConnectionError:
            self._records.pending.pop(msg.msg_id, None)
            raise
        try:
            reply: Message = future.result(max(0.0, deadline - time.monotonic()))
        except futures.TimeoutError:
            self._records.pending.pop(msg.msg_id, None)
            if self._link_lost_at is not None:
                raise self._unreachable(msg_type) from None
            raise ConnectionError(
                f"the Hub at {self.addresses['hub']} did not answer {msg_type} within "
                f"{self.timeout} s: the controller may be gone or overloaded"
            ) from None
        reply_content = reply.content or {}
        if reply_content.get("status") != "ok":
            raise QueryError(
                f"{msg_type} refused: {reply_content.get('ename', 'error')}: "
                f"{reply_content.get('evalue', '')}"
            )
        return reply

    def msg_ids_of(self, jobs: Any) -> list[str]:
        """msg_ids from a msg_id, an int index into ``history``, an AsyncResult, or a list of
        those."""
        items = jobs if isinstance(jobs, list | tuple | set | frozenset) else [jobs]
        msg_ids: list[str] = []
        for item in items:
            if isinstance(item, str):
                msg_ids.append(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                msg_ids.append(self._records.history[item])
            elif hasattr(item, "msg_ids"):
                msg_ids.extend(item.msg_ids)
            else:
                raise TypeError(f"cannot find msg_ids in a {type(item).__name__}")
        return msg_ids

    # ------------------------------------------------------------------ records

    @property
    def history(self) -> list[str]:
        """msg_ids of every apply/execute this client sent, in order."""
        return self._records.history

    @property
    def outstanding(self) -> set[str]:
        """msg_ids sent and not yet answered (a snapshot)."""
        return set(self._records.outstanding)

    @property
    def results(self) -> dict[str, Any]:
        """msg_id -> result value, or the RemoteError it raised."""
        return self._records.results

    @property
    def metadata(self) -> dict[str, Any]:
        """msg_id -> Metadata (engine, times, captured output)."""
        return self._records.metadata

    def wait(self, jobs: Any = None, timeout: float | None = None) -> bool:
        """Wait for ``jobs`` (msg_ids, AsyncResults; default: everything outstanding); True if
        all finished within ``timeout`` seconds."""
        msg_ids = list(self._records.outstanding) if jobs is None else self.msg_ids_of(jobs)
        pending = [self._records.futures[m] for m in msg_ids if m in self._records.futures]
        if timeout is not None and timeout < 0:
            timeout = None
        _, not_done = futures.wait(pending, timeout)
        return not not_done

    # ------------------------------------------------------------------ control calls

    def _control(
        self,
        msg_type: str,
        content: dict[str, Any],
        targets: Targets,
        block: bool | None,
        ignore: type[BaseException] | None = None,
    ) -> AsyncResult | None:
        resolved = self.resolve_targets(targets)
        msg_ids = [
            self.send_request("control", msg_type, content, target=target, in_history=False)
            for target in resolved
        ]
        result = AsyncResult(self._records, msg_ids, fname=msg_type, client=self)
        if block is False:
            return result
        if not result.wait(self.timeout):
            if self._link_lost_at is not None:
                raise self._unreachable(msg_type)
            late = [
                i
                for (i, _), m in zip(resolved, msg_ids, strict=True)
                if not self._records.futures[m].done()
            ]
            raise TimeoutError(
                f"engine(s) {late} did not answer {msg_type} within {self.timeout} s"
            )
        for msg_id in msg_ids:
            error = self._records.futures[msg_id].exception()
            if error is not None and not (ignore and isinstance(error, ignore)):
                result.get()
        return None

    def abort(
        self, jobs: Any = None, targets: Targets = None, block: bool | None = None
    ) -> AsyncResult | None:
        """Abort ``jobs`` (default: everything queued) on ``targets`` (default: all engines).
        Named jobs that are queued never start, and one that is running is interrupted (as by
        SIGINT); each fails with TaskAborted. ``jobs=None`` leaves running tasks alone. Waits
        for the engines' answers unless ``block=False``."""
        msg_ids = None if jobs is None else self.msg_ids_of(jobs)
        return self._control("abort_request", {"msg_ids": msg_ids}, targets, block)

    def clear(self, targets: Targets = None, block: bool | None = None) -> AsyncResult | None:
        """Empty the engines' namespaces."""
        return self._control("clear_request", {}, targets, block)

    def send_signal(
        self, sig: int, targets: Targets = None, block: bool | None = None
    ) -> AsyncResult | None:
        """Deliver signal ``sig`` to the engine processes (SIGINT interrupts the running task)."""
        return self._control("signal_request", {"sig": int(sig)}, targets, block)

    def shutdown(
        self, targets: Targets = "all", hub: bool = False, block: bool | None = None
    ) -> None:
        """Stop the engines in ``targets`` (None: none), then, with ``hub=True``, the
        controller itself. Engines that vanish while being asked count as stopped."""
        if targets is not None and not (targets == "all" and not self._engines):
            self._control("shutdown_request", {}, targets, True if hub else block, EngineError)
        if hub:
            self._query("hub_shutdown_request", {})

    # ------------------------------------------------------------------ Hub queries

    def queue_status(self, targets: Targets = None, verbose: bool = False) -> dict[Any, Any]:
        """Per engine id: counts (or msg_ids, ``verbose``) of ``queue`` (sent directly, not
        answered), ``tasks`` (load-balanced, running) and ``completed``; plus ``unassigned``
        tasks the scheduler still holds. One engine's dict alone if ``targets`` is an int."""
        ids = (
            None
            if targets is None or targets == "all"
            else [engine_id for engine_id, _ in self.resolve_targets(targets)]
        )
        content = self._query("queue_request", {"targets": ids, "verbose": verbose}).content or {}
        status: dict[Any, Any] = {}
        for key, value in content.items():
            if key != "status":
                status[int(key) if key.isdigit() else key] = value
        if isinstance(targets, int) and not isinstance(targets, bool):
            return dict(status[targets])
        return status

    def result_status(self, msg_ids: Any, status_only: bool = True) -> dict[str, list[str]]:
        """Which of ``msg_ids`` the Hub has seen answered (``completed``) or not (``pending``).
        With ``status_only=False`` the completed results are fetched into ``results`` too."""
        ids = self.msg_ids_of(msg_ids)
        reply = self._query("result_request", {"msg_ids": ids, "statusonly": status_only})
        content = reply.content or {}
        if not status_only:
            self._store_hub_results(content, reply.buffers)
        return {
            "pending": list(content.get("pending", [])),
            "completed": list(content.get("completed", [])),
        }

    def get_result(self, indices_or_msg_ids: Any = -1, block: bool | None = None) -> Any:
        """An AsyncResult for earlier requests: an index into ``history``, a msg_id, or a list.

        Requests this client sent resolve as they would anyway; others (sent by another
        client) are fetched from the Hub, which is asked again until they are done.
        """
        single = isinstance(indices_or_msg_ids, str | int)
        msg_ids = self.msg_ids_of(indices_or_msg_ids)
        unknown = [m for m in msg_ids if self._records.future_for(m)[1]]
        if unknown:
            self._io.call_soon(lambda: self._fetch_results(unknown, 0.0))
        result = AsyncResult(self._records, msg_ids, fname="get_result", single=single, client=self)
        return result.get() if block else result

    def _fetch_results(self, msg_ids: list[str], delay: float) -> None:
        """(I/O thread) Ask the Hub for results; ask again, backing off, while some are pending.
        No answer within ``timeout`` fails them with ConnectionError."""
        msg = self.session.msg("result_request", {"msg_ids": msg_ids, "statusonly": False})
        records = self._records

        def on_reply(reply: Message) -> None:
            content = reply.content or {}
            if content.get("status") != "ok":
                error = QueryError(
                    f"result_request refused: {content.get('ename')}: {content.get('evalue')}"
                )
                for msg_id in msg_ids:
                    records.complete_error(msg_id, error)
                return
            self._store_hub_results(content, reply.buffers)
            still_pending = set(content.get("pending", []))
            pending = [m for m in msg_ids if m in still_pending]
            if pending:
                later = min(max(delay * 2, 0.02), 1.0)
                self._io.call_later(later, lambda: self._fetch_results(pending, later))

        def on_timeout() -> None:
            if records.pending.pop(msg.msg_id, None) is not None:
                error = ConnectionError(
                    f"the Hub did not answer result_request within {self.timeout} s"
                )
                for msg_id in msg_ids:
                    records.complete_error(msg_id, error)

        records.track_service(msg.msg_id, "hub", on_reply=on_reply)
        self._io.send_now("hub", self.session.serialize(msg))
        self._io.call_later(self.timeout, on_timeout)

    def _store_hub_results(self, content: dict[str, Any], buffers: Sequence[Frame]) -> None:
        offset = 0
        for msg_id in content.get("completed", []):
            record = content.get(msg_id)
            if not isinstance(record, dict):
                continue
            count = int(record.get("buffer_count", 0))
            self._records.complete(
                msg_id,
                header=record.get("header") or {},
                content=record.get("content") or {},
                metadata=record.get("metadata") or {},
                buffers=buffers[offset : offset + count],
                submitted=(record.get("parent_header") or {}).get("date"),
            )
            offset += count

    def purge_results(self, jobs: Any = (), targets: Iterable[int] | int | str = ()) -> None:
        """Make the Hub forget results: of ``jobs`` (msg_ids, AsyncResults, or ``"all"``) and
        of everything that ran on ``targets`` (engine ids, or ``"all"``)."""
        msg_ids: list[str] | str = "all" if jobs == "all" else self.msg_ids_of(jobs)
        if not msg_ids and not targets:
            raise ValueError("say what to purge: jobs (msg_ids, AsyncResults or 'all') or targets")
        if targets == "all":
            engine_ids = self.ids
        elif isinstance(targets, int):
            engine_ids = [targets]
        else:
            engine_ids = list(targets)  # type: ignore[arg-type]
        self._query("purge_request", {"msg_ids": msg_ids, "engine_ids": engine_ids})

    def hub_history(self) -> list[str]:
        """Every msg_id the Hub has recorded, oldest first."""
        content = self._query("history_request", {}).content or {}
        return list(content.get("history", []))

    def db_query(
        self, query: dict[str, Any], keys: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Task records matching a MongoDB-style ``query`` (``{"completed": {"$ne": None}}``),
        with only ``keys`` if given. Dates come back as datetimes, buffers as frames."""
        content = {"query": query} if keys is None else {"query": query, "keys": keys}
        reply = self._query("db_request", content)
        records: list[dict[str, Any]] = list((reply.content or {}).get("records", []))
        offset = 0
        for record in records:
            for name in ("result_buffers", "buffers"):
                count_key = name.replace("buffers", "buffer_count")
                if count_key in record:
                    count = int(record.pop(count_key))
                    record[name] = list(reply.buffers[offset : offset + count])
                    offset += count
            for key in _DB_DATE_KEYS:
                if isinstance(record.get(key), str):
                    record[key] = parse_date(record[key])
        return records


def _engine_gone(engine_id: int | None, uuid: str) -> EngineError:
    return EngineError(
        "EngineError",
        f"engine {engine_id} ({uuid}) was unregistered while this request was outstanding: it "
        "stopped, died or missed its heartbeats",
        engine_id=engine_id,
        engine_uuid=uuid,
    )
