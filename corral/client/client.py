"""The Client: connection to a controller, the engine table, Hub queries and control calls.

A Client reads the cluster's ``corral-client.json``, starts its one I/O thread
(:mod:`corral.client.io_shell`), asks the Hub for the engine table and then keeps that table
current from registration notifications, never by polling (:mod:`corral.client.link`). Views
(:mod:`corral.client.view`, :mod:`corral.client.balanced`) build requests through it, seeing
only the :class:`~corral.client.submitter.Submitter` protocol; :mod:`corral.client.records`
keeps what it learns of them. Small results are settled by the I/O thread that reads them
(:mod:`corral.client.requestfuture`); larger ones are deserialized and settled, and users'
done-callbacks run, on two worker threads the client owns (:mod:`corral.client.completion`),
never on the I/O thread. ``close()`` stops and joins every thread the client started.

Timeouts: any Hub query unanswered after ``timeout`` seconds raises ConnectionError, and a
control call (abort, clear, signal, shutdown) unanswered by an engine raises TimeoutError, so
no call on a Client waits forever on a controller that is gone. Results are different: a task
may legitimately run for days, so ``AsyncResult.get()`` waits as long as it is told to, but
not for a controller that is gone: once it has been unreachable for ``outage_grace`` seconds
(default: ``timeout``) every wait for results raises ConnectionError (the results stay pending
and are still delivered if it comes back later).

Controller outage: the I/O thread sees the connection drop (socket monitors). Hub queries then
wait up to ``timeout`` for it to come back and raise ConnectionError if it does not, as does
``wait_for_engines`` and a control call that times out meanwhile. zmq reconnects by itself when
the controller returns on the same ports (``--restore``); the client then asks for the engine
table again, and the same Client object goes on working.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from corral import heap
from corral.client.cache import MetadataCache, ResultsCache
from corral.client.completion import Worker
from corral.client.control import ControlCalls
from corral.client.io_shell import ClientIO
from corral.client.link import ControllerLink, IOHandler
from corral.client.queries import PURGE_TRIM_SCHEDULE, HubQueries
from corral.client.records import Records
from corral.client.recovery import Resender
from corral.client.sending import RequestSending
from corral.client.submitter import Target, Targets
from corral.errors import (
    ConnectionError,
    InvalidTarget,
    NoEnginesRegistered,
    QueryError,
    ResultPurged,
)
from corral.protocol.connection_files import (
    CLIENT_FILE,
    ClientConnection,
    cluster_dir_from,
    cluster_folder,
)
from corral.protocol.session import Message, Session
from corral.protocol.shm import Settings
from corral.sharedmem import SharedMemory

if TYPE_CHECKING:
    from corral.client.balanced import LoadBalancedView
    from corral.client.broadcast import BroadcastView
    from corral.client.executor import ViewExecutor
    from corral.client.view import DirectView, View
    from corral.cluster.cluster import Cluster

__all__ = ["Client", "Target", "Targets"]

log = logging.getLogger("corral.client")

DEFAULT_TIMEOUT = 10.0  # seconds a call waits on an unreachable controller


class Client(ControllerLink, RequestSending, ControlCalls, HubQueries):
    """A connection to one cluster's controller (see the module doc).

    ``rc.ids`` lists the registered engines; ``rc[0]``, ``rc[:]``, ``rc[::2]``, ``rc[[0, 2]]``
    give DirectViews on some of them and ``rc.load_balanced_view()`` a view that lets the
    scheduler choose. ``history``, ``outstanding``, ``results`` and ``metadata`` record every
    request this client sent. Use it as a context manager, or call :meth:`close`.
    ``rc.block`` (default False), as ipyparallel's, is the ``block`` flag each view made
    afterwards starts with, and what :meth:`get_result` and :meth:`resubmit` do by default.

    ``shm_threshold`` overrides the cluster's size (bytes) from which buffers travel through
    shared memory to and from engines on this host (0: never, for this client). A request's
    segments live until the request settles; closing the client releases them, so a task the
    scheduler still holds then fails with SharedMemoryRefused on its engine.

    Finding the cluster: ``connection_info_or_file`` is the path of its ``corral-client.json``
    or that file's content as a dict (``url_file``/``connection_file`` are other names for
    the path); otherwise ``<cluster_dir>/<cluster_id>/corral-client.json``. For ipyparallel
    programs, ``profile`` names the cluster when no ``cluster_id`` is given, ``profile_dir``
    is the cluster's own folder and ``ipython_dir`` the folder of clusters. ``context`` and
    ``debug`` are accepted and unused (the I/O thread owns its own zmq context); SSH tunnels
    (``sshserver``...) are refused: use ``--curve`` and ``--ip`` on the controller instead.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Client:
        """Defined so that a test patching ``Client.__new__`` (as ipyparallel's own tests
        do with ``mock.patch.object``) can undo it: removing a patched ``__new__`` from a
        class that inherits ``object.__new__`` leaves CPython calling that with arguments."""
        return super().__new__(cls)

    def __init__(
        self,
        connection_info_or_file: str | os.PathLike[str] | dict[str, Any] | None = None,
        profile: str | None = None,
        profile_dir: str | os.PathLike[str] | None = None,
        ipython_dir: str | os.PathLike[str] | None = None,
        context: object = None,
        debug: bool = False,
        sshserver: str | None = None,
        sshkey: str | None = None,
        password: str | None = None,
        paramiko: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cluster_id: str | None = None,
        *,
        url_file: str | os.PathLike[str] | None = None,
        connection_file: str | os.PathLike[str] | None = None,
        cluster_dir: str | os.PathLike[str] | None = None,
        outage_grace: float | None = None,
        shm_threshold: int | None = None,
        direct: bool = True,
    ) -> None:
        if sshserver or sshkey or password or paramiko:
            raise ValueError(
                "corral does not tunnel over SSH; start the controller with --ip and --curve "
                "to reach it across machines with encryption and authentication"
            )
        source = connection_info_or_file or url_file or connection_file
        self.connection_file: Path | None = None
        if isinstance(source, dict):
            info = ClientConnection.from_json(source, "the connection info given")
        else:
            if source is None and profile_dir is not None:
                source = Path(profile_dir) / CLIENT_FILE
            if source is None:
                # Client() is an entry point like the CLI: it alone reads $CORRAL_DIR here
                base = cluster_dir or ipython_dir or cluster_dir_from(os.environ)
                source = cluster_folder(base, cluster_id or profile) / CLIENT_FILE
            self.connection_file = Path(source).expanduser()
            info = ClientConnection.read(self.connection_file)
        self._shm = SharedMemory(_shm_settings(info.shm, shm_threshold))
        self._shm_hosts: dict[str, str] = {}  # engine uuid -> host identity
        self._direct_offers: dict[str, str] = {}  # engine uuid -> its direct address
        # msg_id -> the shm references of an unsettled request that has segments
        self._request_segments: dict[str, list[dict[str, Any]]] = {}
        # the latest msg_ids this client purged from the Hub (queries.py, bounded)
        self._purged_from_hub: dict[str, None] = {}
        # engines absent after an outage whose direct address was dropped (link.py)
        self._absent_direct: set[str] = set()
        # engines a restarted Hub's table lacked, named to it, until their end is announced
        # or they register again (link.py, _name_absent): uuid -> id
        self._absent_named: dict[str, int] = {}
        # reports of lost direct tasks a restarted Hub awaited the engine of instead of
        # recording, told again when its end is announced (link.py, _keep_awaited)
        self._awaited_reports: dict[str, tuple[list[list[Any]], list[list[Any]]]] = {}
        self._shm_reader = self._shm.reader_metadata()  # in each apply request (empty: off)
        self._shm_reader_json = Session.json_frame(self._shm_reader)  # its JSON, written once
        settings = self._shm.settings
        self._shm_threshold = settings.threshold if settings is not None else 0
        # whether every engine of a table (the _uuids dict) shares this host: asked per task
        self._all_share_host: tuple[dict[str, int], int, bool] | None = None
        self.timeout = timeout
        # as ipyparallel's Client.block: the flag each new view starts with, and what
        # get_result and resubmit do when not told
        self.block = False
        self.outage_grace = timeout if outage_grace is None else outage_grace
        self.cluster_id: str = info.cluster_id
        self.cluster: Cluster | None = None  # the Cluster that connected it, as ipyparallel's
        self.session = Session(
            info.key,
            signature_scheme=info.signature_scheme,
            username=getpass.getuser(),
        )
        self.addresses = info.addresses()
        # off the I/O thread: deserializing and settling results, and users' done-callbacks
        self._results_worker = Worker(f"corral-client-results-{self.session.session_id[:8]}")
        self._callbacks_worker = Worker(f"corral-client-callbacks-{self.session.session_id[:8]}")
        self._resender = Resender()  # unanswered load-balanced requests, to send again
        self._records = Records(self._results_worker.submit, self._resender.release)
        self._trim = heap.TrimSchedule(*PURGE_TRIM_SCHEDULE)  # after purges: queries.py
        self._engines: dict[int, str] = {}
        self._uuids: dict[str, int] = {}
        self._gone: set[str] = set()
        self._engines_changed = threading.Condition()  # also notified when the link changes
        self._link_lost_at: float | None = None  # monotonic time the controller link dropped
        self._resync: set[str] | None = None  # engines announced since the table was re-asked
        self._asked_before_outage: set[str] = set()  # Hub queries unanswered at a drop
        self._controller: str | None = None  # the run of the controller last connected to
        self._views: weakref.WeakSet[View] = weakref.WeakSet()
        self._helpers: set[threading.Thread] = set()  # owned, joined by close()
        self._io = ClientIO(
            self.session, self.addresses, IOHandler(self), info.curve, direct=direct
        )
        try:
            self._io.start(timeout)
        except BaseException:
            self._results_worker.close()
            self._callbacks_worker.close()
            raise
        try:
            reply = self._query("connection_request", {})
        except BaseException as exc:
            self.close()
            if not isinstance(exc, ConnectionError):
                raise
            raise ConnectionError(
                f"no controller answered at {self.addresses['hub']} within {timeout} s: is the "
                "cluster running? Start one with `corral start`, or check the connection file "
                f"{self.connection_file}"
            ) from None
        with self._engines_changed:
            self._controller = (reply.content or {}).get("controller")
            self._shm_hosts.update((reply.content or {}).get("engine_hosts") or {})
            self._direct_offers.update((reply.content or {}).get("engine_direct") or {})
            for engine_id, uuid in (reply.content or {}).get("engines", {}).items():
                self._add_engine(int(engine_id), uuid)
        from corral.client.magics import activate_default

        activate_default(self)

    # ------------------------------------------------------------------ lifetime

    def close(self, linger: int | None = None) -> None:
        """Stop the I/O thread and close every socket; unanswered requests fail with
        ConnectionError. Calling it again does nothing. ``linger`` (ipyparallel's) is
        accepted: queued sends are always flushed for a bounded time before closing."""
        self._io.close()  # wakes every wait for engines: they raise, their helpers end
        self._join_helpers()
        self._results_worker.close()  # settles what the I/O thread failed on its way out
        self._callbacks_worker.close()
        self._shm.close()

    @property
    def closed(self) -> bool:
        """Whether requests are refused: after :meth:`close`, or once the I/O thread failed."""
        return self._io.closed

    @property
    def records(self) -> Records:
        """What this client knows of every request it sent (see corral.client.records)."""
        return self._records

    def engine_uuids(self) -> set[str]:
        """The uuids of the engines registered now."""
        return set(self._uuids)

    def take_trackers(self, msg_ids: Iterable[str]) -> list[zmq.MessageTracker]:
        """The MessageTrackers of ``msg_ids`` sent with ``track``; each handed over once."""
        trackers = self._records.trackers
        if not trackers:  # nothing sent with ``track``: the usual case, once per submission
            return []
        return [trackers.pop(m) for m in msg_ids if m in trackers]

    def register_view(self, view: View) -> None:
        """Remember ``view`` (weakly) so that purging results trims its history too."""
        self._views.add(view)

    def run_callback(self, call: Callable[[], None]) -> None:
        """Run ``call`` on this client's callbacks thread (an AsyncResult's done-callbacks),
        after those handed over before it."""
        self._callbacks_worker.submit(call)

    def spin(self) -> None:
        """Nothing to do: corral's I/O thread handles incoming messages as they arrive
        (ipyparallel programs call this to flush them)."""

    def spin_thread(self, interval: float = 1) -> None:
        """Nothing to start: the I/O thread already runs (see :meth:`spin`)."""

    def stop_spin_thread(self) -> None:
        """Nothing to stop (see :meth:`spin_thread`)."""

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
            resolved = [engine_id for engine_id, _ in self.resolve_targets(key)]
            return self.direct_view(resolved[0] if isinstance(key, int) else resolved)
        raise TypeError(f"index a Client with an int, a slice or a list of ints, not {key!r}")

    def direct_view(self, targets: Targets = "all", **flags: Any) -> DirectView:
        """A DirectView on ``targets`` (``"all"``: whichever engines are registered at each
        call; a negative int counts from the last engine); ``flags`` (``block``) are set on
        it."""
        from corral.client.view import DirectView

        if isinstance(targets, int) and not isinstance(targets, bool) and targets < 0:
            targets = self.resolve_targets(targets)[0][0]

        view = DirectView(self, targets, block=self.block)
        view.set_flags(**flags)
        return view

    def load_balanced_view(
        self, targets: int | Sequence[int] | str | None = None, **flags: Any
    ) -> LoadBalancedView:
        """A view whose tasks the scheduler places, on any engine or only on ``targets``
        (``"all"``: any); ``flags`` (``block``, ``retries``, ``after``, ``follow``,
        ``timeout``, ``track``, ``label``) are set on it."""
        from corral.client.balanced import LoadBalancedView

        if targets == "all":
            targets = None
        elif isinstance(targets, int) and not isinstance(targets, bool):
            targets = [engine_id for engine_id, _ in self.resolve_targets(targets)]
        view = LoadBalancedView(self, targets, block=self.block)  # type: ignore[arg-type]
        view.set_flags(**flags)
        return view

    def broadcast_view(
        self, targets: Targets = "all", is_coalescing: bool = False, **flags: Any
    ) -> BroadcastView:
        """A DirectView-like view whose requests go to all ``targets`` as one message
        (see :mod:`corral.client.broadcast`)."""
        from corral.client.broadcast import BroadcastView

        view = BroadcastView(self, targets, block=self.block, is_coalescing=is_coalescing)
        view.set_flags(**flags)
        return view

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
            if targets < 0:  # as in ipyparallel: counted from the last engine
                ordered = sorted(engines)
                if -targets > len(ordered):
                    raise InvalidTarget(f"no engine {targets}: {len(ordered)} are registered")
                ids = [ordered[targets]]
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

    def _query(self, msg_type: str, content: dict[str, Any], refused: bool = False) -> Message:
        """A Hub request and its ``ok`` reply: ConnectionError if none within ``timeout``,
        QueryError if the Hub refused it (``refused``: the refusal is returned instead)."""
        deadline = time.monotonic() + self.timeout
        self._wait_for_link(deadline, msg_type)
        metadata = self._shm.reader_metadata() if msg_type in _BUFFER_QUERIES else None
        msg = self.session.msg(msg_type, content, metadata=metadata)
        future = self._records.track_service(msg.msg_id, "hub", request=msg)
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
        if reply_content.get("status") != "ok" and not refused:
            ename = reply_content.get("ename", "error")
            # a purge the Hub names is the error get_result raises for it (a QueryError too)
            kind = ResultPurged if ename == "ResultPurged" else QueryError
            raise kind(f"{msg_type} refused: {ename}: {reply_content.get('evalue', '')}")
        return reply

    def msg_ids_of(self, jobs: Any) -> list[str]:
        """msg_ids from a msg_id, an int index into ``history``, an AsyncResult, or any
        iterable of those (see :func:`job_items`)."""
        msg_ids: list[str] = []
        for item in job_items(jobs):
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
    def results(self) -> ResultsCache:
        """msg_id -> result value, or the RemoteError it raised; without the requests an
        owning AsyncResult has finished (it holds them: corral.client.cache)."""
        return ResultsCache(self._records)

    @property
    def metadata(self) -> MetadataCache:
        """msg_id -> Metadata (engine, times, captured output); empty for a msg_id it does not
        hold (unknown, or taken by its owning AsyncResult, as in ipyparallel)."""
        return MetadataCache(self._records)

    def wait(self, jobs: Any = None, timeout: float | None = None) -> bool:
        """Wait for ``jobs`` (msg_ids, AsyncResults, any concurrent Futures; default:
        everything outstanding); True if all finished within ``timeout`` seconds."""
        given = [] if jobs is None else job_items(jobs)
        waited: list[futures.Future[Any]] = [
            job for job in given if isinstance(job, futures.Future) and not hasattr(job, "msg_ids")
        ]
        others = [job for job in given if not any(job is w for w in waited)]
        msg_ids = list(self._records.outstanding) if jobs is None else self.msg_ids_of(others)
        pending = waited + [self._records.futures[m] for m in msg_ids if m in self._records.futures]
        return self.wait_for_futures(pending, timeout, "waiting for results")

    def wait_interactive(
        self, jobs: Any = None, interval: float = 0.1, timeout: float | None = None
    ) -> bool:
        """:meth:`wait` with a progress bar of the requests answered (corral.client.progress);
        True if all finished within ``timeout``."""
        from corral.client.progress import wait_for_futures

        msg_ids = list(self._records.outstanding) if jobs is None else self.msg_ids_of(jobs)
        pending = [self._records.futures[m] for m in msg_ids if m in self._records.futures]
        return wait_for_futures(pending, interval=interval, timeout=timeout)

    def executor(self, targets: int | Sequence[int] | None = None, **flags: Any) -> ViewExecutor:
        """A ``concurrent.futures.Executor`` over a load-balanced view (on ``targets``)."""
        return self.load_balanced_view(targets, **flags).executor

    def activate(self, targets: Targets = "all", suffix: str = "") -> DirectView:
        """A blocking DirectView on ``targets`` (as ipyparallel's), made the one IPython's
        %px magics use."""
        view = self.direct_view(targets)
        view.block = True
        view.activate(suffix)
        return view


_BUFFER_QUERIES = frozenset({"result_request", "db_request"})  # replies that carry buffers


def _shm_settings(section: object, threshold: int | None) -> Settings | None:
    """The cluster's fast-path settings from the connection file, with this client's own
    ``threshold`` if given (0: off for this client)."""
    settings = Settings.from_json(section)
    if settings is None or threshold is None:
        return settings
    return replace(settings, threshold=threshold) if threshold > 0 else None


def job_items(jobs: Any) -> list[Any]:
    """The jobs named by a ``jobs`` argument: one msg_id, history index, AsyncResult or
    Future, or any other iterable of them (a list, a set, a generator, ``dict.values()``:
    ``view.wait(results.values())`` is how ipyparallel's DAG tutorial waits on a dict of
    AsyncResults). An AsyncResult is iterable (its results), so it counts as one job."""
    if isinstance(jobs, str | bytes | int | futures.Future) or hasattr(jobs, "msg_ids"):
        return [jobs]
    if isinstance(jobs, Iterable):
        return list(jobs)
    return [jobs]
