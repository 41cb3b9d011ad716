"""Running one request on the engine's main thread, and the replies every request gets.

:class:`TaskRunner` turns an ``apply_request`` or ``execute_request`` into iopub messages and
exactly one reply, whatever the user code does. It also serves ``clear_request``: emptying the
namespace is done here, between tasks, never while a task runs in that namespace. It owns no
socket: it hands finished frames to a ``send(channel, frames)`` callback (the engine sends
replies from the main thread's loop, the rest through its I/O thread). The replies the shells
send themselves (control replies, aborted tasks) are built by :mod:`.reply_messages`, whose
names this module also exports, as it did when they lived here.

Jupyter's ``stop_on_error`` rule (an execute_request's content, true unless given): when a
non-silent execute_request fails, the execute requests already queued behind it on this engine
are answered as aborted instead of run, so that a cell never runs after one it was sent after
has failed (``%autopx`` and ``%%px`` with a non-blocking view queue cells that way). "Already
queued" ends at a :class:`QueueMark`: the runner asks for one before it sends the failure's
reply, and the task shell puts it behind every request that has reached the engine by then,
so a request sent on seeing the failure runs. apply_requests are never aborted by this rule
(as in IPython's kernel: a pull after a failed cell still answers).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from corral.errors import (
    InvalidContent,
    SerializationError,
    SharedMemoryError,
    TaskAborted,
    TaskTimeout,
)
from corral.protocol.serialize import serialize_object, unpack_apply_message
from corral.protocol.session import Frame, JSONDict, Message, Session, utcnow
from corral.protocol.shm import METADATA_KEY, SegmentRef, encode_refs
from corral.sharedmem import SharedMemory

from .capture import OutputCapture
from .interrupts import InterruptGate
from .ipython import EngineShell, on_first_use, use_inline_backend
from .namespace import Namespace, strip_engine_frames
from .reply_messages import EngineIdentity as EngineIdentity
from .reply_messages import aborted_reply_msg as aborted_reply_msg
from .reply_messages import error_reply_msg as error_reply_msg
from .reply_messages import failure_content as failure_content
from .reply_messages import iopub_error, json_safe_msg, stops_on_error
from .reply_messages import reply_metadata as reply_metadata
from .reply_messages import reply_type as reply_type
from .summary import describe_call

SendCallback = Callable[[bytes, Sequence[Frame]], None]
"""``send(channel, frames)``: channel is b"mux", b"task", b"control" or b"iopub"."""
ReplyCallback = Callable[[bytes, Sequence[Frame], str], None]
"""``reply(channel, frames, answers)``: a request's reply, and the msg_id of that request (the
engine keeps each reply by it until the Hub recorded it: given here, it is not parsed again
from the frames)."""

TASK_TYPES: Final = frozenset({"apply_request", "execute_request"})
MAIN_THREAD_CONTROL_TYPES: Final = frozenset({"clear_request"})
CONTROL_TYPES: Final = frozenset(
    {"clear_request", "abort_request", "signal_request", "shutdown_request"}
)
ABORT_MEMORY: Final = 100_000


@dataclass(frozen=True, slots=True, init=False)
class Request:
    """A decoded request and the channel (b"mux", b"task", b"control") it came on. (Its
    ``__init__`` written out: compiled, a dataclass's own is interpreted Python, called for
    every task.)"""

    channel: bytes
    msg: Message

    def __init__(self, channel: bytes, msg: Message) -> None:
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "msg", msg)


def time_limit(msg: Message) -> float | None:
    """The request's ``time_limit`` metadata in seconds, None if it has none; InvalidContent
    unless it is a number > 0."""
    value = msg.metadata.get("time_limit")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidContent(f"time_limit must be a number of seconds > 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class QueueMark:
    """Not a request: the end of what an execute failure aborts (see the module docstring).

    The runner stops aborting when it reaches the mark, so a request that arrives after it
    runs normally, however soon after the failure it was sent."""


QUEUE_MARK: Final = QueueMark()

WorkItem = Request | QueueMark


class WorkQueue:
    """The main thread's requests, oldest first, except those put with :meth:`put_next`.

    Control requests that touch the namespace go here (a task may be running in it), but ahead
    of queued tasks: the control channel is still served before queued work. Used by one thread
    at a time (the engine's task shell: its main loop, or the I/O thread while it holds the
    shell's lock), so it never blocks.
    """

    def __init__(self) -> None:
        self._items: collections.deque[WorkItem] = collections.deque()

    def put(self, item: WorkItem) -> None:
        """Queue ``item`` behind everything queued."""
        self._items.append(item)

    def put_next(self, request: Request) -> None:
        """Queue ``request`` to run as soon as the running task (if any) ends."""
        self._items.appendleft(request)

    def get_nowait(self) -> WorkItem:
        """The next item; ``queue.Empty`` if there is none (as ``queue.Queue`` raises)."""
        try:
            return self._items.popleft()
        except IndexError:
            raise queue.Empty from None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items


class AbortList:
    """msg_ids to abort when their task is reached, shared by the I/O and main threads.

    Ids may name tasks that have not arrived yet. Only the newest ``limit`` ids are kept, so
    aborting ids that never arrive cannot grow memory without bound.
    """

    def __init__(self, limit: int = ABORT_MEMORY) -> None:
        self.limit = limit
        self._ids: dict[str, None] = {}
        self._lock = threading.Lock()

    def add(self, msg_ids: Iterable[str]) -> None:
        with self._lock:
            for msg_id in msg_ids:
                self._ids.pop(msg_id, None)
                self._ids[msg_id] = None
            while len(self._ids) > self.limit:
                del self._ids[next(iter(self._ids))]

    def take(self, msg_id: str) -> bool:
        """Whether ``msg_id`` is to be aborted; forgets it either way. (Asked twice per task:
        while nothing is to be aborted the answer needs no lock, the emptiness of a dict being
        read in one step.)"""
        if not self._ids:
            return False
        with self._lock:
            return self._ids.pop(msg_id, 0) is None


class TaskRunner:
    """Runs apply and execute requests in the namespace; sends iopub messages and the reply.

    iopub order for one request: ``status: busy`` (execute only), ``execute_input`` (execute,
    not silent), ``stream`` chunks, ``execute_result`` or ``error``, then the reply on the
    request's channel, then ``status: idle`` (execute only). Apply tasks publish no status:
    for many small tasks those two messages were a sixth of the cluster's CPU per task.

    ``max_result_bytes`` bounds the serialized size of one apply result: a larger one is
    answered with a SerializationError instead (None: no limit). ``shm`` (the same-host fast
    path) puts a large result into shared memory when the requester can map it.
    """

    def __init__(
        self,
        session: Session,
        identity: EngineIdentity,
        send: SendCallback,
        *,
        namespace: Namespace | None = None,
        capture: OutputCapture | None = None,
        aborts: AbortList | None = None,
        gate: InterruptGate | None = None,
        log: logging.Logger | None = None,
        max_result_bytes: int | None = None,
        shm: SharedMemory | None = None,
        shell: EngineShell | None = None,
        mark_queue: Callable[[], None] | None = None,
        reply: ReplyCallback | None = None,
    ) -> None:
        self.shm = shm
        self.reply = reply  # None: replies go through send like the rest
        self.mark_queue = mark_queue
        self._running: Message | None = None  # the request whose user code runs (publish_data)
        self._data_messages = 0  # data_message sent for it
        self.aborting: str | None = None  # the failed execute whose queue is being aborted
        self.session = session
        self.max_result_bytes = max_result_bytes
        self.identity = identity
        self.send = send
        self.namespace = namespace or Namespace()
        self.log = log or logging.getLogger("corral.engine")
        self.capture = capture or OutputCapture(log=self.log)
        self.aborts = aborts or AbortList()
        self.gate = gate or InterruptGate()
        self.shell: EngineShell | None = None
        #: What makes the shell at its first use (defer_shell), until then.
        self._make_shell: Callable[[], EngineShell | None] | None = None
        self._remove_first_use: Callable[[], None] | None = None
        #: Where the running task's display bundles go (a shell made while it runs uses it).
        self._sink: Callable[[JSONDict, JSONDict], None] | None = None
        #: The running apply, described (summary.py) by _apply for its reply's metadata; reset
        #: by run, not by _run, so that _run's read of it is typed as what _apply may set.
        self.call: str | None = None
        if shell is not None:
            self.use_shell(shell)

    def use_shell(self, shell: EngineShell) -> None:
        """Run cells with IPython (syntax, display(), rich results): see corral.engine.ipython."""
        self.shell = shell
        shell.bind(self.namespace.user_ns)
        self.namespace.transform = shell.transform
        self.namespace.formatter = shell.format

    def defer_shell(self, make: Callable[[], EngineShell | None]) -> None:
        """Make the shell with ``make`` at its first use (corral.engine.ipython.on_first_use):
        the first cell, or user code importing IPython or calling ``display``/``get_ipython``."""
        self._make_shell = make
        self._remove_first_use = on_first_use(self.ensure_shell)
        use_inline_backend()

    def ensure_shell(self) -> None:
        """Make the deferred shell now, once (a failure is logged by ``make``: plain Python)."""
        make, self._make_shell = self._make_shell, None
        if make is None:
            return
        if self._remove_first_use is not None:
            self._remove_first_use()
            self._remove_first_use = None
        shell = make()
        if shell is not None:
            self.use_shell(shell)
            shell.sink = self._sink  # made by the running task: its displays are its own

    # ------------------------------------------------------------------ sending

    def frames(self, msg: Message, idents: Sequence[bytes] = ()) -> list[Frame]:
        """Signed frames of ``msg``; text JSON cannot hold (lone surrogates) is escaped."""
        try:
            return self.session.serialize(msg, idents)
        except TypeError:  # orjson.JSONEncodeError: e.g. print("\udcff") in user code
            return self.session.serialize(json_safe_msg(msg), idents)

    def send_msg(self, channel: bytes, msg: Message, idents: Sequence[bytes] = ()) -> None:
        self.send(channel, self.frames(msg, idents))

    def send_reply(self, channel: bytes, reply: Message, request: Message) -> None:
        """Send ``reply`` to ``request`` on the request's channel (to its sender)."""
        frames = self.frames(reply, request.idents)
        if self.reply is None:
            self.send(channel, frames)
        else:
            self.reply(channel, frames, request.msg_id)

    def publish(
        self, msg_type: str, content: JSONDict, parent: Message, buffers: Sequence[Any] = ()
    ) -> None:
        """Publish on iopub with topic ``engine.<id>.<msg_type>``."""
        msg = self.session.msg(msg_type, content, parent=parent, buffers=buffers)
        topic = f"engine.{self.identity.id}.{msg_type}".encode()
        self.send(b"iopub", [topic, *self.frames(msg)])

    # ------------------------------------------------------------------ running

    def run(self, request: WorkItem) -> None:
        """Answer one task request with exactly one reply; never raises for user code. A
        :class:`QueueMark` ends the aborting that a failed execute started."""
        if isinstance(request, QueueMark):
            self.aborting = None
            return
        msg = request.msg
        header = msg.header  # its fields are strings: the parse checked them
        msg_type: str = header["msg_type"]
        msg_id: str = header["msg_id"]
        is_execute = msg_type == "execute_request"
        if self.aborts.take(msg_id):
            self._answer_aborted(request)
            return
        if self.aborting is not None and is_execute:
            reason = (
                f"task {msg_id} was aborted: execute_request {self.aborting}, queued before "
                f"it on engine {self.identity.id}, failed (stop_on_error)"
            )
            self._answer_aborted(request, reason)
            return
        if not is_execute and msg_type in MAIN_THREAD_CONTROL_TYPES:
            self._control(request)
            return
        limit = time_limit(msg)
        self.gate.arm(msg_id, None if limit is None else time.monotonic() + limit)
        if self.aborts.take(msg_id):
            # an abort_request that came between the check above and arm(): the I/O thread
            # saw nothing running, so it left the abort here (see IOShell._abort)
            self.gate.disarm()
            self._answer_aborted(request)
            return
        refs: list[SegmentRef] = []
        self.call = None
        try:
            reply, refs = self._run(msg)
        except Exception as exc:  # a bug of the engine, not user code: still answer
            self.log.exception("engine error while running %s %s", msg_type, msg_id)
            reply = error_reply_msg(self.session, self.identity, msg, exc)
        finally:
            self.gate.disarm()
        if is_execute and stops_on_error(msg, reply):
            self._abort_queue(msg.msg_id)  # before the reply: a request sent on seeing it runs
        try:
            self.send_reply(request.channel, reply, msg)
        finally:
            if refs and self.shm is not None:
                self.shm.release(refs)  # the readers' own links keep the result alive
        if is_execute:
            self.publish("status", {"execution_state": "idle"}, msg)

    def _abort_queue(self, failed: str) -> None:
        """Abort the execute requests queued behind ``failed`` until the mark asked for here
        is reached. Without a ``mark_queue`` nothing can be queued behind it: nothing to do."""
        if self.mark_queue is None:
            return
        self.aborting = failed
        self.mark_queue()

    def publish_data(self, data: dict[str, Any]) -> None:
        """``publish_data(data)`` in user code (corral.engine.datapub): a ``data_message`` for
        the running task, after the text it printed before. RuntimeError if none runs;
        SerializationError (raised in the caller) if ``data`` cannot be pickled."""
        parent = self._running
        if parent is None:
            raise RuntimeError("publish_data() is called in a task; no task runs on this engine")
        buffers = serialize_object(data)
        self.capture.publish_now()
        self._data_messages += 1
        self.publish("data_message", {"keys": list(data)}, parent, buffers)

    def _answer_aborted(self, request: Request, reason: str | None = None) -> None:
        msg = request.msg
        if reason is None:
            reason = f"task {msg.msg_id} was aborted by an abort_request"
        reply = aborted_reply_msg(self.session, self.identity, msg, reason)
        self.send_reply(request.channel, reply, msg)

    def _control(self, request: Request) -> None:
        """A control request that must not overlap a task (``clear_request``); its reply."""
        msg = request.msg
        started = utcnow()
        try:
            self.namespace.clear()
        except Exception as exc:  # a user object's __del__ may raise while the names go
            reply = error_reply_msg(self.session, self.identity, msg, exc)
        else:
            metadata = reply_metadata(self.identity, "ok", started)
            reply = self.session.msg(
                reply_type(msg.msg_type), {"status": "ok"}, parent=msg, metadata=metadata
            )
        self.send_reply(request.channel, reply, msg)

    def _run(self, msg: Message) -> tuple[Message, list[SegmentRef]]:
        """Run the task with its output captured; the reply to send, and the shared-memory
        segments its buffers became (to release once it is sent)."""
        started = utcnow()
        content = msg.content or {}
        msg_type = msg.msg_type
        is_execute = msg_type == "execute_request"
        silent = is_execute and bool(content.get("silent"))
        if is_execute and self._make_shell is not None:
            self.ensure_shell()  # a cell: IPython syntax, rich results, its events
        if is_execute:  # front ends show busy/idle for cells; apply tasks skip two messages
            self.publish("status", {"execution_state": "busy"}, msg)
        if is_execute and not silent:
            count = self.namespace.execution_count + 1
            self.publish("execute_input", {"code": content["code"], "execution_count": count}, msg)

        failure: BaseException | None = None
        result: tuple[JSONDict, JSONDict] | None = None
        buffers: list[Any] = []
        displays: list[JSONDict] = []
        self._data_messages = 0
        with self.capture.capture(lambda name, text: self._stream(msg, name, text)) as output:
            self._sink = lambda data, md: self._display(msg, data, md, displays)
            if self.shell is not None:
                self.shell.sink = self._sink
            self._running = msg
            try:
                try:
                    self.gate.enter_task()
                    if is_execute:
                        code = content["code"]
                        if self.shell is None:
                            result = self.namespace.execute_result(code, silent=silent)
                        else:  # IPython's events around it, as a kernel's (inline figures)
                            with self.shell.executing():
                                result = self.namespace.execute_result(code, silent=silent)
                    else:
                        buffers = self._apply(msg)
                finally:
                    self.gate.leave_task()
            except BaseException as exc:  # user code may raise anything, SystemExit included
                failure = exc
            finally:
                self._running = None
                self._sink = None
                if self.shell is not None:
                    self.shell.sink = None
        refs: list[SegmentRef] = []
        if failure is None and buffers and self.shm is not None:
            try:
                buffers, refs = self.shm.export_reply(msg.metadata, buffers, hub_reads=True)
            except SharedMemoryError as exc:
                failure = exc
        if isinstance(failure, KeyboardInterrupt) and self.gate.aborted:
            failure = self._aborted_while_running(msg, failure, self.gate.timed_out)

        if failure is not None:
            reply_content = failure_content(failure, self.identity)
            self.publish("error", iopub_error(reply_content), msg)
            buffers = []
        else:
            reply_content = {"status": "ok"}
        completed = utcnow()
        metadata = reply_metadata(
            self.identity,
            reply_content["status"],
            started,
            completed,
            output.stdout,
            output.stderr,
        )
        if displays:
            metadata["outputs"] = displays
        if self._data_messages:
            metadata["data_messages"] = self._data_messages
        if self.call:
            metadata["call"] = self.call
        if refs and failure is None:
            metadata[METADATA_KEY] = encode_refs(refs)
        if is_execute:
            count = self.namespace.execution_count
            reply_content["execution_count"] = count
            data, result_metadata = result if failure is None and result else (None, {})
            metadata["execute_result"] = data
            if result_metadata:
                metadata["execute_result_metadata"] = result_metadata
            if data is not None and not silent:
                message = {"data": data, "metadata": result_metadata, "execution_count": count}
                self.publish("execute_result", message, msg)
        if failure is not None:  # content made from a user's exception: checked as ever
            reply = self.session.msg(
                reply_type(msg_type), reply_content, parent=msg, metadata=metadata
            )
            return reply, refs
        # {"status": "ok"} (and an int execution_count) is a valid reply by construction, and
        # the metadata dict is this reply's own: no check, no copy (every task makes one)
        header = self.session.header(reply_type(msg_type), completed)
        return Message(header, msg.header, metadata, reply_content, tuple(buffers)), refs

    def _aborted_while_running(
        self, msg: Message, interrupt: KeyboardInterrupt, timed_out: bool
    ) -> TaskAborted | TaskTimeout:
        """The error of a task an abort_request (or its time limit) interrupted: TaskAborted
        (TaskTimeout), with the traceback of where the interrupt stopped the user's code."""
        trace = traceback.format_exception(strip_engine_frames(interrupt))
        if timed_out:
            return TaskTimeout(
                "TaskTimeout",
                f"task {msg.msg_id} ran longer than its time limit of {time_limit(msg)} s and "
                "was interrupted",
                [line.rstrip("\n") for line in trace],
                engine_id=self.identity.id,
                engine_uuid=self.identity.uuid,
            )
        return TaskAborted(
            "TaskAborted",
            f"task {msg.msg_id} was interrupted while running by an abort_request",
            [line.rstrip("\n") for line in trace],
            engine_id=self.identity.id,
            engine_uuid=self.identity.uuid,
        )

    def _apply(self, msg: Message) -> list[Any]:
        """Unpack, call, serialize: the result's frames, or SerializationError naming the step."""
        try:
            f, args, kwargs = unpack_apply_message(msg.buffers)
        except SerializationError as err:
            raise SerializationError(
                f"the request could not be unpacked on engine {self.identity.id}: {err}. A "
                "function or class pickled by reference needs its module importable on the "
                "engine: install it there, or define it in __main__ (or mark it @interactive) "
                "so that it travels by value"
            ) from None
        self.call = describe_call(f, args, kwargs)
        result = self.namespace.apply(f, args, kwargs)
        try:
            frames = serialize_object(result)  # a new list: the caller's to change
        except Exception as err:  # MemoryError included: a result too large to serialize
            name = getattr(f, "__name__", "the function")
            raise SerializationError(
                f"the result of {name} could not be serialized: "
                f"{err if isinstance(err, SerializationError) else f'{type(err).__name__}: {err}'}"
            ) from None
        limit = self.max_result_bytes
        if limit is not None:
            size = sum(memoryview(frame).nbytes for frame in frames)
            if size > limit:
                name = getattr(f, "__name__", "the function")
                raise SerializationError(
                    f"the result of {name} is {size} bytes serialized, over this engine's limit "
                    f"of {limit} bytes (--max-result-bytes): return less, or store it elsewhere"
                )
        return frames

    def _display(
        self, parent: Message, data: JSONDict, metadata: JSONDict, displays: list[JSONDict]
    ) -> None:
        """display() in user code: published after the text printed before it, and kept for
        the reply's metadata (``outputs``), which, unlike iopub, cannot be missed."""
        self.capture.publish_now()
        content = {"data": data, "metadata": metadata}
        displays.append(content)
        self.publish("display_data", content, parent)

    def _stream(self, parent: Message, name: str, text: str) -> None:
        self.publish("stream", {"name": name, "text": text}, parent)
