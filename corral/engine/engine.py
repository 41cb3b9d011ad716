"""The engine process: user code and the task sockets on the main thread, the rest on an I/O thread.

:class:`Engine` wires the parts together. Cores (no sockets, no clock) keep plain names:
:mod:`.link` (registration, controller loss, re-registration, replies kept), :mod:`.runner`
(one request's messages and reply), :mod:`.replies`, :mod:`.interrupts`. Two socket shells:
:mod:`.task_shell`, the main thread's loop over the mux and task sockets, which reads requests
and runs them with :class:`~corral.engine.runner.TaskRunner` between its turns (no other
thread is woken per task); and :mod:`.io_shell`, a :class:`~corral.loop.LoopThread` that owns
every other socket (registration, control, pings, iopub) and performs the link core's
actions, borrowing the task sockets when it must (aborts, resends, exit). Threads, each with
an owner that stops and joins it: the I/O thread (owned by :class:`Engine`), the heart
(:mod:`.heart`) and the output flusher (:class:`~.namespace.OutputCapture`), both stopped by
the I/O thread at shutdown. Signals:
SIGINT raises KeyboardInterrupt in the running task only (ignored while idle); SIGTERM, or the
end of the process that started it (``--owner-pid``, watched on the I/O loop), makes the I/O
thread unregister and exit, even while a task runs.

    python -m corral.engine --file PATH
    python -m corral.engine [--cluster-id ID] [--cluster-dir DIR]   # <DIR>/<ID>/corral-engine.json
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from corral.engine_options import add_engine_options
from corral.errors import CorralError
from corral.protocol.connection_files import (
    ENGINE_FILE,
    EngineConnection,
    cluster_dir_from,
    cluster_folder,
)
from corral.protocol.session import Frame, Session
from corral.sharedmem import SharedMemory

from . import datapub
from .alarm import open_alarm
from .capture import OutputCapture
from .cpu_policy import use_batch_scheduling
from .interrupts import InterruptGate
from .io_shell import EngineParts, IOSettings, IOShell
from .ipython import load_shell
from .link import LinkSettings
from .namespace import Namespace
from .placement import engine_placement
from .runner import AbortList, EngineIdentity, Request, TaskRunner
from .task_shell import TASK_CHANNELS, TaskShell

ConnectionSource = str | os.PathLike[str] | Mapping[str, Any] | EngineConnection


class Engine:
    """One engine: registers with the controller found in ``connection`` and serves it.

    ``connection`` is the path of ``corral-engine.json``, its parsed contents, or an
    :class:`EngineConnection`. ``requested_id`` asks the Hub for a particular engine id
    (the one this engine had before a controller restart); ``preferred_id`` asks for one but
    takes another if it is in use (an MPI rank). ``max_result_bytes`` bounds the
    serialized size of an apply result (larger: an error reply). :meth:`run` never returns: the
    process ends from the I/O thread on shutdown_request, SIGTERM or loss of registration.
    ``direct=False``: requests come through the controller's MUX only (no direct ROUTER).
    ``lanes=False``: the direct ROUTER without a lane beside it (:mod:`corral.lane`).
    """

    def __init__(
        self,
        connection: ConnectionSource,
        *,
        engine_uuid: str | None = None,
        requested_id: int | None = None,
        preferred_id: int | None = None,
        log: logging.Logger | None = None,
        registration_timeout: float = 10.0,
        unregister_timeout: float = 1.0,
        missed_beats: int = 5,
        max_result_bytes: int | None = None,
        use_ipython: bool = True,
        placement: Mapping[str, Any] | None = None,
        owner_pid: int | None = None,
        direct: bool = True,
        lanes: bool = True,
    ) -> None:
        if isinstance(connection, EngineConnection):
            info = connection
        elif isinstance(connection, Mapping):
            info = EngineConnection.from_json(connection)
        else:
            info = EngineConnection.read(connection)
        self.info = info
        self.log = log or logging.getLogger("corral.engine")
        if not info.key:
            self.log.warning("the connection file has an empty key: messages are not signed")
        self.identity = EngineIdentity(
            engine_uuid or str(uuid.uuid4()),
            placement=dict(engine_placement({}) if placement is None else placement),
        )
        self.session = Session(
            info.key,
            signature_scheme=info.signature_scheme,
            session_id=self.identity.uuid,
            check_msg_type=False,  # unknown types are answered with an error, not dropped
        )
        self.requested_id = requested_id
        self.preferred_id = preferred_id
        self.owner_pid = owner_pid  # its parent (--owner-pid): the engine ends with it
        self.direct = direct  # offer clients on this host the direct path (not under curve)
        self.lanes = lanes  # and a lane for it (Linux)
        self.use_ipython = use_ipython
        self.registration_timeout = registration_timeout
        self.unregister_timeout = unregister_timeout
        self.missed_beats = missed_beats
        self.gate = InterruptGate()
        self.shm = SharedMemory()  # the registration reply turns it on (same host, enabled)
        self.capture = OutputCapture(log=self.log)
        self.runner = TaskRunner(
            self.session,
            self.identity,
            self._post,
            namespace=Namespace(),
            capture=self.capture,
            aborts=AbortList(),
            gate=self.gate,
            log=self.log,
            max_result_bytes=max_result_bytes,
            shm=self.shm,
            mark_queue=self._mark_queue,
            reply=self._post_reply,
        )
        datapub.install(self.runner.publish_data)
        self._io: IOShell | None = None
        self.tasks = TaskShell(
            self.session,
            self.identity,
            self.shm,
            self.log,
            watch_time_limit=self._watch_time_limit,
            on_failure=self._task_loop_failed,
            hold_until=self._send_held_at,
            alarm=open_alarm(),
        )

    @property
    def namespace(self) -> Namespace:
        return self.runner.namespace

    def run(self) -> NoReturn:
        """Register, then run tasks on this (the main) thread until the process exits.

        Raises corral.errors.ConnectionError if the controller refuses or never answers the
        registration.
        """
        settings = IOSettings(
            self.info,
            LinkSettings(
                self.requested_id,
                self.registration_timeout,
                self.missed_beats,
                preferred_id=self.preferred_id,
            ),
            unregister_timeout=self.unregister_timeout,
            direct=self.direct,
            lanes=self.lanes,
        )
        parts = EngineParts(
            self.session,
            self.identity,
            self.tasks,
            self.runner.aborts,
            self.gate,
            self.shm,
            self.log,
            self.capture,
        )
        io = IOShell(settings, parts)
        if self.tasks.alarm is not None:
            io.loop.add_reader(self.tasks.alarm.fd, self.tasks.on_alarm)
        self._install_signal_handlers(io)
        io.end_with_owner(self.owner_pid)
        io.start()
        io.wait_registered()
        self._io = io
        if self.use_ipython and importlib.util.find_spec("IPython") is not None:
            # IPython syntax, display(), rich results, made at first use: corral.engine.ipython
            user_ns, log = self.runner.namespace.user_ns, self.log
            self.runner.defer_shell(lambda: load_shell(user_ns, log))
        self.tasks.run(self.runner)  # returns only if its loop failed: the I/O thread exits
        threading.Event().wait()
        raise AssertionError("unreachable: the I/O thread ends the process")

    def _post(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """A reply (mux, task) to the main thread's sockets; anything else (control, iopub)
        to the I/O thread. From the main thread, and the output flusher (iopub only)."""
        if channel in TASK_CHANNELS:
            with self.gate.shielded():
                self.tasks.reply(channel, frames)
            return
        io = self._io
        if io is not None:
            with self.gate.shielded():
                io.post(channel, frames)

    def _post_reply(self, channel: bytes, frames: Sequence[Frame], answers: str) -> None:
        """A request's reply: as :meth:`_post`, naming the request it answers (a task reply is
        kept by that msg_id until the Hub recorded it). From the main thread."""
        if channel in TASK_CHANNELS:
            with self.gate.shielded():
                self.tasks.reply(channel, frames, answers)
            return
        self._post(channel, frames)

    def _mark_queue(self) -> None:
        """Put a QueueMark behind the requests that reached this engine (stop_on_error); from
        the main thread."""
        self.tasks.mark_queue()

    def _watch_time_limit(self, request: Request) -> None:
        """(Main thread.) A request with a time limit: the I/O thread enforces it."""
        self._to_io_thread(lambda io: io.limits.watch(request))

    def _send_held_at(self, deadline: float) -> None:
        """(Main thread.) A task starts while replies are held: the I/O thread sends them at
        ``deadline`` (a ``time.monotonic`` value) if they are still held then."""
        self._to_io_thread(lambda io: io.loop.call_at(deadline, self.tasks.send_held))

    def _task_loop_failed(self, reason: str) -> None:
        self._to_io_thread(lambda io: io.shutdown(1, reason))

    def _to_io_thread(self, call: Callable[[IOShell], object]) -> None:
        """Run ``call(io)`` on the I/O thread; nothing once it stopped (the process ends)."""
        io = self._io
        if io is not None:
            try:
                io.loop.call_soon_threadsafe(call, io)
            except ConnectionError:
                pass

    def _install_signal_handlers(self, io: IOShell) -> None:
        """SIGINT -> the interrupt gate (a KeyboardInterrupt in the running task); SIGTERM ->
        the I/O loop's signal wake-up, which works even while the main thread is inside a
        long call. Only possible on the main thread."""
        if threading.current_thread() is not threading.main_thread():
            self.log.warning("engine not on the main thread: SIGINT/SIGTERM handling disabled")
            return
        signal.signal(signal.SIGINT, self.gate.handle_sigint)
        io.handle_signals()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corral.engine``: start one engine; the exit status on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m corral.engine",
        description="Start a corral engine that registers with a running controller.",
    )
    parser.add_argument("--file", help="the engine connection file (corral-engine.json)")
    parser.add_argument("--cluster-id", help="find the file in <cluster-dir>/<cluster-id>/")
    parser.add_argument("--cluster-dir", help="cluster folder (default $CORRAL_DIR or ~/.corral)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    add_engine_options(parser)
    args = parser.parse_args(argv)
    if args.work_dir:
        os.chdir(os.path.expanduser(args.work_dir))
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s corral.engine[%(process)d] %(levelname)s %(message)s",
    )
    if args.batch_scheduling:  # before any thread starts: they inherit it
        use_batch_scheduling(logging.getLogger("corral.engine"))
    cluster_dir = args.cluster_dir or cluster_dir_from(os.environ)
    path = args.file or cluster_folder(cluster_dir, args.cluster_id) / ENGINE_FILE
    # as ipyparallel's engines (and IPython): modules are found in the working directory,
    # the one a task moved to too (its daVinci example runs view.apply(os.chdir, ...), then
    # functions of a module there); `python -m` put only the starting directory's path there
    sys.path.insert(0, "")
    try:
        mpi = _init_mpi() if args.mpi else None
        rank = None if mpi is None else int(mpi["mpi_rank"])
        placement = engine_placement(os.environ, mpi_rank=rank)
        engine = Engine(
            path,
            engine_uuid=args.uuid,
            requested_id=args.id,
            # as ipyparallel's engines: the MPI rank is the engine id when it is free
            preferred_id=rank if mpi is not None and mpi["mpi_size"] > 1 else None,
            registration_timeout=args.timeout,
            max_result_bytes=args.max_result_bytes,
            use_ipython=not args.no_ipython,
            placement=placement,
            owner_pid=args.owner_pid,
            direct=not args.no_direct,
            lanes=not args.no_lanes,
        )
        if mpi is not None:  # ipyparallel's init_mpi: MPI, mpi_rank, mpi_size for tasks
            engine.namespace.user_ns.update(mpi)
        _run_startup(engine.namespace.user_ns, args.startup_script, args.startup_command)
        engine.run()
    except CorralError as err:
        print(f"corral engine: {err}", file=sys.stderr)
        return 1


def _run_startup(user_ns: dict[str, Any], script: str | None, command: str | None) -> None:
    """Run the startup script, then the startup command, in the engine's namespace, before it
    registers (so before any task; again after a supervised restart). A failure is logged
    with its traceback and the engine goes on, as an IPython startup line's would: a typo
    must not make the supervisor restart the engine over and over."""
    log = logging.getLogger("corral.engine")
    sources = []
    if script:
        path = os.path.expanduser(script)
        try:
            with open(path, encoding="utf-8") as handle:
                sources.append((handle.read(), path))
        except OSError as err:
            log.error("startup script %s: %s", path, err)
    if command:
        sources.append((command, "<startup command>"))
    for source, name in sources:
        try:
            exec(compile(source, name, "exec"), user_ns)  # noqa: S102 - the user's own code
        except Exception:  # noqa: BLE001 - logged; the engine serves tasks anyway
            log.exception("%s failed", name)


def _init_mpi() -> dict[str, Any] | None:
    """Initialise MPI on the main thread (the one that runs tasks) and return the names
    ipyparallel's ``--mpi`` engines define in their namespace: ``MPI`` (mpi4py's module),
    ``mpi_rank`` and ``mpi_size`` (of COMM_WORLD); None with a warning when mpi4py is missing
    (the rank then comes from the environment)."""
    try:
        from mpi4py import MPI
    except ImportError:
        logging.getLogger("corral.engine").warning(
            "--mpi: mpi4py is not installed (pip install 'corral[mpi]'); MPI is not initialised"
        )
        return None
    world = MPI.COMM_WORLD
    return {"MPI": MPI, "mpi_rank": int(world.Get_rank()), "mpi_size": int(world.Get_size())}
