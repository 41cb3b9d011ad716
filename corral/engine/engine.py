"""The engine process: user code on the main thread, every socket on one I/O thread.

:class:`Engine` wires the parts together. The I/O thread (:mod:`.iothread`) registers with the
Hub and owns all sockets; the main thread takes requests from a queue and runs them with
:class:`~corral.engine.runner.TaskRunner`, handing finished frames to the I/O thread over an
inproc PUSH socket. Signals: SIGINT raises KeyboardInterrupt in the running task only (ignored
while idle); SIGTERM makes the I/O thread unregister and exit, even while a task runs.

    python -m corral.engine --file PATH
    python -m corral.engine [--cluster-id ID] [--cluster-dir DIR]   # <DIR>/<ID>/corral-engine.json
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import zmq

from corral.errors import ConnectionError, CorralError
from corral.lifetime import exit_with_owner
from corral.protocol.connection_files import (
    ENGINE_FILE,
    EngineConnection,
    cluster_dir_from,
    cluster_folder,
)
from corral.protocol.session import Frame, Session
from corral.sharedmem import SharedMemory
from corral.sockets import send_frames

from .interrupts import InterruptGate
from .iothread import IOThread
from .namespace import Namespace, OutputCapture
from .placement import engine_placement
from .runner import AbortList, EngineIdentity, TaskRunner, WorkQueue
from .shell import load_shell

ConnectionSource = str | os.PathLike[str] | Mapping[str, Any] | EngineConnection


class Engine:
    """One engine: registers with the controller found in ``connection`` and serves it.

    ``connection`` is the path of ``corral-engine.json``, its parsed contents, or an
    :class:`EngineConnection`. ``requested_id`` asks the Hub for a particular engine id
    (the one this engine had before a controller restart). ``max_result_bytes`` bounds the
    serialized size of an apply result (larger: an error reply). :meth:`run` never returns: the
    process ends from the I/O thread on shutdown_request, SIGTERM or loss of registration.
    """

    def __init__(
        self,
        connection: ConnectionSource,
        *,
        engine_uuid: str | None = None,
        requested_id: int | None = None,
        log: logging.Logger | None = None,
        registration_timeout: float = 10.0,
        unregister_timeout: float = 1.0,
        missed_beats: int = 5,
        max_result_bytes: int | None = None,
        use_ipython: bool = True,
        placement: Mapping[str, Any] | None = None,
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
        self.use_ipython = use_ipython
        self.registration_timeout = registration_timeout
        self.unregister_timeout = unregister_timeout
        self.missed_beats = missed_beats
        self.context: zmq.Context[Any] = zmq.Context()
        self.work = WorkQueue()
        self.gate = InterruptGate()
        self.shm = SharedMemory()  # the registration reply turns it on (same host, enabled)
        self.runner = TaskRunner(
            self.session,
            self.identity,
            self._post,
            namespace=Namespace(),
            capture=OutputCapture(log=self.log),
            aborts=AbortList(),
            gate=self.gate,
            log=self.log,
            max_result_bytes=max_result_bytes,
            shm=self.shm,
        )
        self._inproc = f"inproc://corral-engine-{self.identity.uuid}"
        self._push: zmq.Socket[Any] | None = None
        self._push_lock = threading.Lock()

    @property
    def namespace(self) -> Namespace:
        return self.runner.namespace

    def run(self) -> NoReturn:
        """Register, then run tasks on this (the main) thread until the process exits.

        Raises corral.errors.ConnectionError if the controller refuses or never answers the
        registration.
        """
        wakeup_fd = self._install_signal_handlers()
        io = IOThread(
            context=self.context,
            session=self.session,
            identity=self.identity,
            info=self.info,
            work=self.work,
            aborts=self.runner.aborts,
            inproc=self._inproc,
            close_main_socket=self._close_push,
            sigint_seen=lambda: self.gate.seen,
            abort_running=self.gate.request_abort,
            wakeup_fd=wakeup_fd,
            requested_id=self.requested_id,
            registration_timeout=self.registration_timeout,
            unregister_timeout=self.unregister_timeout,
            missed_beats=self.missed_beats,
            log=self.log,
            shm=self.shm,
            gate=self.gate,
            running=lambda: self.gate.running,
        )
        io.start()
        io.registered.wait()
        if io.failure is not None:
            io.join()
            raise ConnectionError(io.failure)
        if self.use_ipython:  # IPython syntax, display(), rich results: corral.engine.shell
            shell = load_shell(self.runner.namespace.user_ns, self.log)
            if shell is not None:
                self.runner.use_shell(shell)
        push = self.context.socket(zmq.PUSH)
        push.connect(self._inproc)
        with self._push_lock:
            self._push = push
        while True:
            request = self.work.get()
            try:
                self.runner.run(request)
            except BaseException:  # the runner answers user errors; this is a last resort
                self.log.exception("failed to run %s", request.msg.msg_id)

    def _post(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """Hand frames to the I/O thread; called from the main thread and the output flusher."""
        with self.gate.shielded(), self._push_lock:
            if self._push is not None:
                send_frames(self._push, [channel, *frames])

    def _close_push(self, timeout: float) -> bool:
        """Close the main thread's socket from the I/O thread at exit; False if it is busy."""
        if not self._push_lock.acquire(timeout=timeout):
            return False
        try:
            if self._push is not None:
                self._push.close(linger=0)
                self._push = None
        finally:
            self._push_lock.release()
        return True

    def _install_signal_handlers(self) -> int | None:
        """SIGINT -> the interrupt gate; SIGTERM -> a byte on the wakeup pipe for the I/O
        thread. The pipe is written by the C-level handler, so it works even while the main
        thread is inside a long call. Only possible on the main thread."""
        if threading.current_thread() is not threading.main_thread():
            self.log.warning("engine not on the main thread: SIGINT/SIGTERM handling disabled")
            return None
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self.gate.handle_sigint)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        return read_fd


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corral.engine``: start one engine; the exit status on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m corral.engine",
        description="Start a corral engine that registers with a running controller.",
    )
    parser.add_argument("--file", help="the engine connection file (corral-engine.json)")
    parser.add_argument("--cluster-id", help="find the file in <cluster-dir>/<cluster-id>/")
    parser.add_argument("--cluster-dir", help="cluster folder (default $CORRAL_DIR or ~/.corral)")
    parser.add_argument("--uuid", help="this engine's uuid (default: a fresh one)")
    parser.add_argument("--id", type=int, help="ask the controller for this engine id")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for registration"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--owner-pid", type=int, default=None, help="exit when this parent process is gone"
    )
    parser.add_argument(
        "--max-result-bytes",
        type=int,
        default=None,
        help="answer an apply whose serialized result is larger with an error (default: none)",
    )
    parser.add_argument(
        "--no-ipython",
        action="store_true",
        help="run plain Python even if IPython is installed (no %%magics, no display())",
    )
    parser.add_argument(
        "--mpi",
        action="store_true",
        help="initialise MPI (mpi4py) before registering, so tasks share COMM_WORLD",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s corral.engine[%(process)d] %(levelname)s %(message)s",
    )
    cluster_dir = args.cluster_dir or cluster_dir_from(os.environ)
    path = args.file or cluster_folder(cluster_dir, args.cluster_id) / ENGINE_FILE
    exit_with_owner(args.owner_pid)
    try:
        placement = engine_placement(os.environ, mpi_rank=_init_mpi() if args.mpi else None)
        engine = Engine(
            path,
            engine_uuid=args.uuid,
            requested_id=args.id,
            registration_timeout=args.timeout,
            max_result_bytes=args.max_result_bytes,
            use_ipython=not args.no_ipython,
            placement=placement,
        )
        engine.run()
    except CorralError as err:
        print(f"corral engine: {err}", file=sys.stderr)
        return 1


def _init_mpi() -> int | None:
    """Initialise MPI on the main thread (the one that runs tasks) and return this rank; None
    with a warning when mpi4py is missing (the rank then comes from the environment)."""
    try:
        from mpi4py import MPI
    except ImportError:
        logging.getLogger("corral.engine").warning(
            "--mpi: mpi4py is not installed (pip install 'corral[mpi]'); MPI is not initialised"
        )
        return None
    return int(MPI.COMM_WORLD.Get_rank())
