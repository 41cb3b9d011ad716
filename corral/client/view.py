"""Views: how work is addressed. DirectView names engines; LoadBalancedView
(:mod:`corral.client.balanced`) lets the scheduler choose.

Every submission serializes the call once (:func:`~corral.protocol.serialize.pack_apply_message`,
zero-copy for large buffers), sends one request per engine or per task through the client, and
returns an :class:`~corral.client.asyncresult.AsyncResult` (or, with ``block``, its value).
Data movement on a DirectView (push, pull, scatter, gather) is itself ``apply`` of the small
functions in :mod:`corral.client.remote` that read and write the engine's namespace; it lives
in :mod:`corral.client.dataview`. Flags common to both views: ``block``, ``track`` (a
MessageTracker on the zero-copy buffers, see ``AsyncResult.sent``) and ``label`` (stored with
the task in the Hub, for ``db_query``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from corral.client import pickling
from corral.client.asyncmapresult import AsyncMapResult
from corral.client.asyncresult import AsyncResult
from corral.client.dataview import DataMovement
from corral.client.mapping import as_sequence, join, partition
from corral.client.remote import map_chunk, results_per_part
from corral.client.remotefunction import ParallelFunction, RemoteFunction
from corral.errors import UnknownFlag
from corral.protocol.serialize import pack_apply_message

if TYPE_CHECKING:
    from corral.client.executor import ViewExecutor
    from corral.client.submitter import Submitter, Targets

__all__ = ["DirectView", "View"]


def function_name(f: Callable[..., Any]) -> str:
    name = getattr(f, "__name__", None)  # the type's name only when needed: once per call
    return name if isinstance(name, str) else type(f).__name__


def cut_to_shortest(sequences: Sequence[Any]) -> list[Sequence[Any]]:
    """The sequences of a map, cut to the shortest (as the builtin ``map`` and ipyparallel
    do); ValueError without any."""
    if not sequences:
        raise ValueError("map needs at least one sequence")
    values = [as_sequence(seq) for seq in sequences]
    shortest = min(len(seq) for seq in values)
    return [seq if len(seq) == shortest else seq[:shortest] for seq in values]


class View:
    """What both views share: flags, the apply and map spellings, decorators, history.

    Flags are attributes (``view.block = True``); :meth:`set_flags` sets several (and returns
    the view, so ``view.set_flags(label="x").apply_async(...)`` works) and :meth:`temp_flags`
    sets them for a ``with`` block only. ``time_limit`` (seconds, None: no limit) bounds how
    long each task may run: one that runs longer is interrupted and fails with TaskTimeout; if
    the interrupt does not stop it, its engine is stopped (a supervised cluster starts it again
    under its id).
    """

    _flags: tuple[str, ...] = ("block", "targets", "track", "label", "time_limit")

    def __init__(self, client: Submitter, targets: Any, block: bool = False) -> None:
        self.client = client
        self.targets = targets
        self.block = block
        self.track = False
        self.label: str | None = None
        self.time_limit: float | None = None
        self.history: list[str] = []
        self._compactions = 0  # the records' compactions this history was trimmed for
        client.register_view(self)  # purge_local_results trims every view's history too

    @property
    def time_limit(self) -> float | None:
        return self._time_limit

    @time_limit.setter
    def time_limit(self, value: float | None) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
        ):
            raise ValueError(f"time_limit must be None or seconds > 0, not {value!r}")
        self._time_limit = value

    def _limit(self) -> dict[str, Any]:
        """The request metadata of the ``time_limit`` flag."""
        return {} if self._time_limit is None else {"time_limit": self._time_limit}

    def __repr__(self) -> str:
        """``<DirectView [0, 1, 2, 3]>``, ``<DirectView all>``: the targets as ipyparallel
        shows them, a list longer than 16 characters cut after its 12th (``[0, 1, 2, 3,...]``)
        so that a view of hundreds of engines stays one short line."""
        shown = str(self.targets)
        if len(shown) > 16:
            shown = f"{shown[:12]}...]"
        return f"<{type(self).__name__} {shown}>"

    def __len__(self) -> int:
        """How many engines the view's requests may go to now."""
        raise NotImplementedError

    # ------------------------------------------------------------------ flags

    def set_flags(self, **flags: Any) -> View:
        """Set several flags at once; an unknown name is an UnknownFlag (a KeyError, as in
        ipyparallel, and a TypeError). Returns the view."""
        unknown = sorted(set(flags) - set(self._flags))
        if unknown:
            raise UnknownFlag(f"{type(self).__name__} has no flags {unknown}; flags: {self._flags}")
        for name, value in flags.items():
            setattr(self, name, value)
        return self

    @contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[View]:
        """Set flags for the duration of a ``with`` block, then restore them."""
        saved = {name: getattr(self, name) for name in flags if name in self._flags}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            self.set_flags(**saved)

    def _request_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"label": self.label} if self.label else {}
        metadata.update(self._limit())
        return metadata

    # ------------------------------------------------------------------ apply and map

    def _apply(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, block: bool
    ) -> Any:
        raise NotImplementedError

    def _map(
        self,
        part_function: Callable[..., Any],
        f: Callable[..., Any],
        sequences: Sequence[Any],
        *,
        block: bool,
        chunksize: int | None,
        ordered: bool,
        return_exceptions: bool = False,
    ) -> Any:
        raise NotImplementedError

    def apply(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` remotely; the result if ``block``, else an AsyncResult."""
        return self._apply(f, args, kwargs, block=self.block)

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        """Call ``f(*args, **kwargs)`` remotely; an AsyncResult at once."""
        result: AsyncResult = self._apply(f, args, kwargs, block=False)
        return result

    def apply_sync(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` remotely and wait for the result."""
        return self._apply(f, args, kwargs, block=True)

    def map(
        self,
        f: Callable[..., Any],
        *sequences: Any,
        block: bool | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
    ) -> Any:
        """``f`` applied to every element of ``sequences`` (zipped, up to the shortest), in
        parallel: the list of results if ``block``, else an AsyncMapResult. With
        ``return_exceptions`` a failed element's error stands in its place. A load-balanced
        map without ``chunksize`` sends ``mapping.default_chunksize`` items per task (one per
        item for short maps and with ``return_exceptions``)."""
        return self._map(
            map_chunk,
            f,
            sequences,
            block=self.block if block is None else block,
            chunksize=chunksize,
            ordered=ordered,
            return_exceptions=return_exceptions,
        )

    def map_async(self, f: Callable[..., Any], *sequences: Any, **kwargs: Any) -> AsyncMapResult:
        """:meth:`map`, returning an AsyncMapResult at once."""
        result: AsyncMapResult = self.map(f, *sequences, **{**kwargs, "block": False})
        return result

    def map_sync(self, f: Callable[..., Any], *sequences: Any, **kwargs: Any) -> list[Any]:
        """:meth:`map`, waiting for the list of results."""
        result: list[Any] = self.map(f, *sequences, **{**kwargs, "block": True})
        return result

    def imap(self, f: Callable[..., Any], *sequences: Any, **kwargs: Any) -> Iterator[Any]:
        """``map_async`` as an iterator over the results, each as soon as its part is in."""
        return iter(self.map_async(f, *sequences, **kwargs))

    def remote(self, block: bool | None = None, **flags: Any) -> Callable[..., RemoteFunction]:
        """Decorator: calling the function runs it remotely through this view, with ``flags``
        set for the call."""
        return lambda f: RemoteFunction(self, f, block, **flags)

    def parallel(
        self,
        dist: str = "b",
        block: bool | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        **flags: Any,
    ) -> Callable[..., ParallelFunction]:
        """Decorator: calling the function on sequences runs it on parts of them in parallel
        and joins the parts; ``.map`` applies it element by element."""
        return lambda f: ParallelFunction(self, f, dist, block, chunksize, ordered, **flags)

    # ------------------------------------------------------------------ serialization

    def use_cloudpickle(self) -> None:
        """Functions travel by value with cloudpickle (corral's default; see
        :mod:`corral.client.pickling`)."""
        pickling.use_cloudpickle()

    def use_pickle(self) -> None:
        """Back to the default serialization (see :mod:`corral.client.pickling`)."""
        pickling.use_pickle()

    def use_dill(self) -> None:
        """Refused: see :func:`corral.client.pickling.use_dill`."""
        pickling.use_dill()

    # ------------------------------------------------------------------ other interfaces

    @property
    def executor(self) -> ViewExecutor:
        """A ``concurrent.futures.Executor`` running its work through this view."""
        from corral.client.executor import ViewExecutor

        return ViewExecutor(self)

    def register_joblib_backend(self, name: str = "corral", make_default: bool = False) -> None:
        """Make this view joblib backend ``name``: ``joblib.parallel_config(backend=name)``
        then runs ``joblib.Parallel`` on its engines (see corral.client.joblib_backend)."""
        from corral.client.joblib_backend import register_view_backend

        register_view_backend(self, name, make_default)

    # ------------------------------------------------------------------ bookkeeping

    def _remember(self, msg_ids: list[str]) -> None:
        """Add to ``history``, first leaving out what the records forgot (released results)
        if they did since the last time: the history stays as bounded as the records."""
        records = self.client.records
        if records.compactions != self._compactions:
            self._compactions = records.compactions
            kept = records.futures
            self.history = [msg_id for msg_id in self.history if msg_id in kept]
        self.history.extend(msg_ids)

    def _result(
        self,
        msg_ids: list[str],
        fname: str,
        single: bool = False,
        owner: bool = True,
        *,
        sent: bool = True,
    ) -> AsyncResult:
        """The AsyncResult of ``msg_ids``, remembered in ``history``; with the trackers their
        sends made, unless not ``sent`` yet (then none exists, and none is asked for)."""
        self._remember(msg_ids)
        return AsyncResult(
            self.client.records,
            msg_ids,
            fname=fname,
            single=single,
            client=self.client,
            owner=owner,
            trackers=self._trackers(msg_ids) if sent else (),
        )

    def _apply_one(
        self,
        channel: str,
        metadata: dict[str, Any],
        buffers: Sequence[Any],
        target: tuple[int, str] | None,
        fname: str,
        single: bool,
    ) -> AsyncResult:
        """Send one apply_request, its AsyncResult built before the request leaves: then the
        submitting thread has nothing left to do but return (or wait in ``get()``) while the
        request is in transit, instead of taking a core from the processes and threads it
        goes through. Not for ``track`` (the tracker is made by the send). A send that fails
        leaves no msg_id in this view's history, as when the result was built after it; an
        error between the two halves (Ctrl-C) fails the request, never sent, so that nothing
        waits for it for ever."""
        client = self.client
        request = client.prepare_request(
            channel, "apply_request", {}, buffers=buffers, metadata=metadata, target=target
        )
        try:
            result = self._result([request.msg_id], fname, single, sent=False)
            client.dispatch_request(request)
        except BaseException as error:
            client.records.fail(request.msg_id, error, at_once=True)  # unless the send did
            history = self.history
            if history and history[-1] == request.msg_id:
                history.pop()
            raise
        return result

    def _map_result(
        self,
        msg_ids: list[str],
        fname: str,
        ordered: bool,
        item_counts: list[int],
        return_exceptions: bool = False,
        joiner: Callable[[Sequence[Any]], Any] = join,
    ) -> AsyncMapResult:
        """The joiner is given here, never set afterwards: the parts may all have arrived
        (and been joined) before this returns."""
        self._remember(msg_ids)
        return AsyncMapResult(
            self.client.records,
            msg_ids,
            fname=fname,
            ordered=ordered,
            client=self.client,
            item_counts=item_counts,
            return_exceptions=return_exceptions,
            joiner=joiner,
            trackers=self._trackers(msg_ids),
        )

    def _trackers(self, msg_ids: list[str]) -> list[Any]:
        return self.client.take_trackers(msg_ids)

    @property
    def outstanding(self) -> set[str]:
        """msg_ids this view sent that are not answered yet."""
        return set(self.history) & self.client.outstanding

    @property
    def results(self) -> MutableMapping[str, Any]:
        """The client's results (msg_id -> value or error; see Client.results)."""
        return self.client.results

    def spin(self) -> None:
        """The client's :meth:`~corral.client.client.Client.spin` (nothing to do)."""
        self.client.spin()

    def wait(self, jobs: Any = None, timeout: float | None = -1) -> bool:
        """Wait for ``jobs`` (default: everything this view sent); True if all finished."""
        return self.client.wait(self.history if jobs is None else jobs, timeout)

    def get_result(
        self, indices_or_msg_ids: Any = None, block: bool | None = None, owner: bool = False
    ) -> Any:
        """Like :meth:`Client.get_result`, with int indices into this view's history."""
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        if isinstance(indices_or_msg_ids, int):
            indices_or_msg_ids = self.history[indices_or_msg_ids]
        return self.client.get_result(indices_or_msg_ids, block=block, owner=owner)

    def queue_status(self, targets: Targets = None, verbose: bool = False) -> dict[Any, Any]:
        """The Hub's queue status of this view's engines (see :meth:`Client.queue_status`)."""
        return self.client.queue_status(self._status_targets(targets), verbose=verbose)

    def _status_targets(self, targets: Targets) -> Targets:
        return self.targets if targets is None else targets

    def purge_results(self, jobs: Any = (), targets: Any = ()) -> None:
        """Forget results here and in the Hub (see :meth:`Client.purge_results`)."""
        self.client.purge_results(jobs, targets)

    def abort(self, jobs: Any = None, targets: Targets = None, block: bool | None = None) -> Any:
        """Abort ``jobs`` (default: this view's outstanding requests): queued ones never
        start, running ones are interrupted (see :meth:`Client.abort`)."""
        jobs = sorted(self.outstanding) if jobs is None else jobs
        if not jobs:
            return None
        return self.client.abort(jobs, targets, block)


class DirectView(DataMovement, View):
    """Requests to named engines: ``targets`` is an id, a list of ids, or ``"all"`` (the
    engines registered at each call). With an int target results are single values; with
    several, lists in target order."""

    def __init__(self, client: Submitter, targets: Targets = "all", block: bool = False) -> None:
        super().__init__(client, "all" if targets is None else targets, block)

    def __len__(self) -> int:
        return len(self._resolve(None)[0])

    def _resolve(self, targets: Targets) -> tuple[list[tuple[int, str]], bool]:
        targets = self.targets if targets is None else targets
        single = isinstance(targets, int) and not isinstance(targets, bool)
        return self.client.resolve_targets(targets), single

    def _send(
        self, msg_type: str, content: dict[str, Any], buffers: Any, target: tuple[int, str]
    ) -> str:
        return self.client.send_request(
            "mux",
            msg_type,
            content,
            buffers=buffers,
            metadata=self._request_metadata(),
            target=target,
            track=self.track,
        )

    def _send_all(
        self, calls: Iterable[tuple[Callable[..., Any], tuple[Any, ...], tuple[int, str]]]
    ) -> list[str]:
        """Send ``f(*args)`` to each target. Every call is serialized before the first is
        sent, so one argument that cannot be pickled fails the whole call at the caller with
        SerializationError and nothing is sent."""
        packed = [(pack_apply_message(f, args, {}), target) for f, args, target in calls]
        return [self._send("apply_request", {}, buffers, target) for buffers, target in packed]

    def _apply(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        block: bool,
        targets: Targets = None,
    ) -> Any:
        resolved, single = self._resolve(targets)
        buffers = pack_apply_message(f, args, kwargs)
        if len(resolved) == 1 and not self.track:
            metadata = self._request_metadata()
            result = self._apply_one(
                "mux", metadata, buffers, resolved[0], function_name(f), single
            )
        else:
            msg_ids = [self._send("apply_request", {}, buffers, target) for target in resolved]
            result = self._result(msg_ids, function_name(f), single)
        return result.get() if block else result

    def _map(
        self,
        part_function: Callable[..., Any],
        f: Callable[..., Any],
        sequences: Sequence[Any],
        *,
        block: bool,
        chunksize: int | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
    ) -> Any:
        resolved, _ = self._resolve(None)
        values = cut_to_shortest(sequences)
        parts = [partition(seq, len(resolved)) for seq in values]
        calls = [
            (part_function, (f, *chunks), target)
            for target, *chunks in zip(resolved, *parts, strict=True)
            if len(chunks[0])
        ]
        msg_ids = self._send_all(calls)
        counts = [results_per_part(part_function, len(args[1])) for _, args, _ in calls]
        result = self._map_result(msg_ids, function_name(f), ordered, counts, return_exceptions)
        return result.get() if block else result

    def _block(self, block: bool | None) -> bool:
        return self.block if block is None else block

    # ------------------------------------------------------------------ code

    def execute(
        self, code: str, silent: bool = True, targets: Targets = None, block: bool | None = None
    ) -> AsyncResult:
        """Run ``code`` in each engine's namespace; an AsyncResult of ExecuteReplies (also
        with ``block``, which waits for it and raises a remote error). Output lands in the
        metadata's ``stdout``; unless ``silent``, a trailing expression's value is the reply's
        ``execute_result``."""
        resolved, single = self._resolve(targets)
        msg_ids = [
            self._send("execute_request", {"code": code, "silent": silent}, [], target)
            for target in resolved
        ]
        result = self._result(msg_ids, "execute", single)
        if self._block(block):
            result.get()
        return result

    def run(self, filename: str, targets: Targets = None, block: bool | None = None) -> Any:
        """Execute the code of a local file on the engines (see :meth:`execute`)."""
        with open(filename, encoding="utf-8") as source:
            code = source.read()
        return self.execute(
            code if code.endswith("\n") else code + "\n", targets=targets, block=block
        )

    def activate(self, suffix: str = "") -> None:
        """Make this view the one IPython's ``%px``, ``%%px``, ``%autopx``, ``%pxresult`` and
        ``%pxconfig`` use (``suffix``: register them as ``%px<suffix>`` ... instead, so that
        several views can each have their own). Needs IPython (corral[ipython])."""
        from corral.client.magics import activate

        activate(self, suffix)

    # ------------------------------------------------------------------ control

    def clear(self, targets: Targets = None, block: bool | None = None) -> Any:
        """Empty the namespaces of this view's engines."""
        return self.client.clear(self.targets if targets is None else targets, block)

    def shutdown(
        self,
        targets: Targets = None,
        restart: bool = False,
        hub: bool = False,
        block: bool | None = None,
    ) -> None:
        """Stop this view's engines (and the controller, with ``hub=True``)."""
        self.client.shutdown(
            self.targets if targets is None else targets, restart=restart, hub=hub, block=block
        )

    def abort(self, jobs: Any = None, targets: Targets = None, block: bool | None = None) -> Any:
        return super().abort(jobs, self.targets if targets is None else targets, block)
