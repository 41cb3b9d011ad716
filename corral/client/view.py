"""Views: how work is addressed. DirectView names engines; LoadBalancedView lets the scheduler
choose.

Every submission serializes the call once (:func:`~corral.protocol.serialize.pack_apply_message`,
zero-copy for large buffers), sends one request per engine or per task through the client, and
returns an :class:`~corral.client.asyncresult.AsyncResult` (or, with ``block``, its value).
Data movement on a DirectView (push, pull, scatter, gather) is itself ``apply`` of the small
functions in :mod:`corral.client.remote` that read and write the engine's namespace.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from corral.client.asyncresult import AsyncMapResult, AsyncResult
from corral.client.dependencies import as_dependency, prune_after, prune_follow
from corral.client.mapping import as_sequence, chunk, common_length, partition
from corral.client.remote import map_chunk, pull_namespace, push_namespace
from corral.client.remotefunction import ParallelFunction, RemoteFunction
from corral.errors import ImpossibleDependency
from corral.protocol.serialize import pack_apply_message

if TYPE_CHECKING:
    from corral.client.client import Client, Targets

__all__ = ["DirectView", "LoadBalancedView", "View"]


def _name(f: Callable[..., Any]) -> str:
    return getattr(f, "__name__", type(f).__name__)


class View:
    """What both views share: flags, the apply and map spellings, decorators, history.

    Flags are attributes (``view.block = True``); :meth:`set_flags` sets several and
    :meth:`temp_flags` sets them for a ``with`` block only. ``time_limit`` (seconds, None: no
    limit) bounds how long each task may run: one that runs longer is interrupted and fails
    with TaskTimeout; if the interrupt does not stop it, its engine is stopped (a supervised
    cluster starts it again under its id).
    """

    _flags: tuple[str, ...] = ("block", "targets", "time_limit")

    def __init__(self, client: Client, targets: Any, block: bool = False) -> None:
        self.client = client
        self.targets = targets
        self.block = block
        self.time_limit: float | None = None
        self.history: list[str] = []
        client._views.add(self)  # purge_local_results trims every view's history too

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
        return f"<{type(self).__name__} {self.targets!r}>"

    # ------------------------------------------------------------------ flags

    def set_flags(self, **flags: Any) -> None:
        """Set several flags at once; an unknown name is a TypeError."""
        unknown = sorted(set(flags) - set(self._flags))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no flags {unknown}; flags: {self._flags}")
        for name, value in flags.items():
            setattr(self, name, value)

    @contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[View]:
        """Set flags for the duration of a ``with`` block, then restore them."""
        saved = {name: getattr(self, name) for name in flags if name in self._flags}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            self.set_flags(**saved)

    # ------------------------------------------------------------------ apply

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
    ) -> Any:
        raise NotImplementedError

    def apply(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` remotely; the result if ``block``, else an AsyncResult."""
        return self._apply(f, args, kwargs, block=self.block)

    def apply_async(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> AsyncResult:
        """Call ``f(*args, **kwargs)`` remotely; an AsyncResult at once."""
        result: AsyncResult = self._apply(f, args, kwargs, block=False)
        return result

    def apply_sync(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` remotely and wait for the result."""
        return self._apply(f, args, kwargs, block=True)

    def map(
        self,
        f: Callable[..., Any],
        *sequences: Any,
        block: bool | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
    ) -> Any:
        """``f`` applied to every element of ``sequences`` (zipped), in parallel: the list of
        results if ``block``, else an AsyncMapResult."""
        return self._map(
            map_chunk,
            f,
            sequences,
            block=self.block if block is None else block,
            chunksize=chunksize,
            ordered=ordered,
        )

    def map_async(
        self,
        f: Callable[..., Any],
        *sequences: Any,
        chunksize: int | None = None,
        ordered: bool = True,
    ) -> AsyncMapResult:
        """:meth:`map`, returning an AsyncMapResult at once."""
        result: AsyncMapResult = self.map(
            f, *sequences, block=False, chunksize=chunksize, ordered=ordered
        )
        return result

    def map_sync(
        self,
        f: Callable[..., Any],
        *sequences: Any,
        chunksize: int | None = None,
        ordered: bool = True,
    ) -> list[Any]:
        """:meth:`map`, waiting for the list of results."""
        result: list[Any] = self.map(
            f, *sequences, block=True, chunksize=chunksize, ordered=ordered
        )
        return result

    def remote(self, block: bool | None = None) -> Callable[[Callable[..., Any]], RemoteFunction]:
        """Decorator: calling the function runs it remotely through this view."""
        return lambda f: RemoteFunction(self, f, block)

    def parallel(
        self,
        dist: str = "b",
        block: bool | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
    ) -> Callable[[Callable[..., Any]], ParallelFunction]:
        """Decorator: calling the function on sequences runs it on parts of them in parallel
        and joins the parts; ``.map`` applies it element by element."""
        return lambda f: ParallelFunction(self, f, dist, block, chunksize, ordered)

    # ------------------------------------------------------------------ bookkeeping

    def _result(self, msg_ids: list[str], fname: str, single: bool = False) -> AsyncResult:
        self.history.extend(msg_ids)
        return AsyncResult(
            self.client._records, msg_ids, fname=fname, single=single, client=self.client
        )

    def _map_result(self, msg_ids: list[str], fname: str, ordered: bool) -> AsyncMapResult:
        self.history.extend(msg_ids)
        return AsyncMapResult(
            self.client._records, msg_ids, fname=fname, ordered=ordered, client=self.client
        )

    @property
    def outstanding(self) -> set[str]:
        """msg_ids this view sent that are not answered yet."""
        return set(self.history) & self.client.outstanding

    def wait(self, jobs: Any = None, timeout: float | None = None) -> bool:
        """Wait for ``jobs`` (default: everything this view sent); True if all finished."""
        return self.client.wait(self.history if jobs is None else jobs, timeout)

    def get_result(self, indices_or_msg_ids: Any = -1, block: bool | None = None) -> Any:
        """Like :meth:`Client.get_result`, with int indices into this view's history."""
        if isinstance(indices_or_msg_ids, int):
            indices_or_msg_ids = self.history[indices_or_msg_ids]
        return self.client.get_result(indices_or_msg_ids, block=block)

    def abort(self, jobs: Any = None, targets: Targets = None, block: bool | None = None) -> Any:
        """Abort ``jobs`` (default: this view's outstanding requests): queued ones never
        start, running ones are interrupted (see :meth:`Client.abort`)."""
        jobs = sorted(self.outstanding) if jobs is None else jobs
        if not jobs:
            return None
        return self.client.abort(jobs, targets, block)


class DirectView(View):
    """Requests to named engines: ``targets`` is an id, a list of ids, or ``"all"`` (the
    engines registered at each call). With an int target results are single values; with
    several, lists in target order."""

    def __init__(self, client: Client, targets: Targets = "all", block: bool = False) -> None:
        super().__init__(client, "all" if targets is None else targets, block)

    def _resolve(self, targets: Targets) -> tuple[list[tuple[int, str]], bool]:
        targets = self.targets if targets is None else targets
        single = isinstance(targets, int) and not isinstance(targets, bool)
        return self.client.resolve_targets(targets), single

    def _send_all(
        self, calls: Iterable[tuple[Callable[..., Any], tuple[Any, ...], tuple[int, str]]]
    ) -> list[str]:
        """Send ``f(*args)`` to each target. Every call is serialized before the first is
        sent, so one argument that cannot be pickled fails the whole call at the caller with
        SerializationError and nothing is sent."""
        packed = [(pack_apply_message(f, args, {}), target) for f, args, target in calls]
        return [
            self.client.send_request(
                "mux", "apply_request", {}, buffers=buffers, target=target, metadata=self._limit()
            )
            for buffers, target in packed
        ]

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
        msg_ids = [
            self.client.send_request(
                "mux", "apply_request", {}, buffers=buffers, target=target, metadata=self._limit()
            )
            for target in resolved
        ]
        result = self._result(msg_ids, _name(f), single)
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
    ) -> Any:
        resolved, _ = self._resolve(None)
        values = [as_sequence(seq) for seq in sequences]
        common_length(values)
        parts = [partition(seq, len(resolved)) for seq in values]
        msg_ids = self._send_all(
            (part_function, (f, *chunks), target)
            for target, *chunks in zip(resolved, *parts, strict=True)
            if len(chunks[0])
        )
        result = self._map_result(msg_ids, _name(f), ordered)
        return result.get() if block else result

    def _block(self, block: bool | None) -> bool:
        return self.block if block is None else block

    # ------------------------------------------------------------------ code and data

    def execute(
        self, code: str, silent: bool = False, targets: Targets = None, block: bool | None = None
    ) -> Any:
        """Run ``code`` in each engine's namespace; output lands in the metadata's ``stdout``
        and a trailing expression's value in ``execute_result``."""
        resolved, single = self._resolve(targets)
        msg_ids = [
            self.client.send_request(
                "mux",
                "execute_request",
                {"code": code, "silent": silent},
                target=target,
                metadata=self._limit(),
            )
            for target in resolved
        ]
        result = self._result(msg_ids, "execute", single)
        return result.get() if self._block(block) else result

    def run(self, filename: str, targets: Targets = None, block: bool | None = None) -> Any:
        """Execute the code of a local file on the engines."""
        with open(filename, encoding="utf-8") as source:
            return self.execute(source.read(), targets=targets, block=block)

    def push(self, ns: dict[str, Any], targets: Targets = None, block: bool | None = None) -> Any:
        """Assign every name of ``ns`` in the engines' namespaces."""
        if not isinstance(ns, dict):
            raise TypeError(f"push takes a dict of names to values, not {type(ns).__name__}")
        return self._apply(push_namespace, (ns,), {}, block=self._block(block), targets=targets)

    def pull(
        self, names: str | Sequence[str], targets: Targets = None, block: bool | None = None
    ) -> Any:
        """The value of ``names`` (a name, or a list: a list of values) on each engine."""
        wanted = names if isinstance(names, str) else list(names)
        return self._apply(pull_namespace, (wanted,), {}, block=self._block(block), targets=targets)

    def update(self, ns: dict[str, Any]) -> Any:
        """``push(ns)`` with the view's ``block``."""
        return self.push(ns)

    def get(self, names: str | Sequence[str]) -> Any:
        """``pull(names, block=True)``."""
        return self.pull(names, block=True)

    def __setitem__(self, name: str, value: Any) -> None:
        self.push({name: value}, block=True)

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str):
            raise TypeError(f"index a DirectView by a name in the engines' namespace, not {name!r}")
        return self.pull(name, block=True)

    def scatter(
        self,
        key: str,
        seq: Iterable[Any],
        dist: str = "b",
        flatten: bool = False,
        targets: Targets = None,
        block: bool | None = None,
    ) -> Any:
        """Cut ``seq`` into one contiguous part per engine and assign each part to ``key``
        there (numpy arrays are sent as views, without a copy). ``flatten``: a part of one
        element is assigned as that element."""
        if dist != "b":
            raise ValueError(f"only dist='b' (contiguous blocks) is supported, not {dist!r}")
        resolved, _ = self._resolve(targets)
        msg_ids = self._send_all(
            (push_namespace, ({key: part[0] if flatten and len(part) == 1 else part},), target)
            for part, target in zip(partition(seq, len(resolved)), resolved, strict=True)
        )
        result = self._result(msg_ids, "scatter")
        if self._block(block):
            result.get()
            return None
        return result

    def gather(
        self, key: str, dist: str = "b", targets: Targets = None, block: bool | None = None
    ) -> Any:
        """The parts of ``key`` on each engine joined in engine order (the inverse of
        :meth:`scatter`)."""
        if dist != "b":
            raise ValueError(f"only dist='b' (contiguous blocks) is supported, not {dist!r}")
        resolved, _ = self._resolve(targets)
        msg_ids = self._send_all((pull_namespace, (key,), target) for target in resolved)
        result = self._map_result(msg_ids, "gather", ordered=True)
        return result.get() if self._block(block) else result

    # ------------------------------------------------------------------ control

    def clear(self, targets: Targets = None, block: bool | None = None) -> Any:
        """Empty the namespaces of this view's engines."""
        return self.client.clear(self.targets if targets is None else targets, block)

    def shutdown(
        self, targets: Targets = None, hub: bool = False, block: bool | None = None
    ) -> None:
        """Stop this view's engines (and the controller, with ``hub=True``)."""
        self.client.shutdown(self.targets if targets is None else targets, hub, block)

    def abort(self, jobs: Any = None, targets: Targets = None, block: bool | None = None) -> Any:
        return super().abort(jobs, self.targets if targets is None else targets, block)


class LoadBalancedView(View):
    """Tasks the scheduler places on whichever engine is free.

    Flags: ``targets`` (engine ids the tasks may use; None: any), ``retries`` (resubmissions
    after a failure), ``after`` (run once these tasks finished) and ``follow`` (run where these
    ran) as msg_ids, AsyncResults or a :class:`Dependency`, and ``timeout`` (seconds the
    dependencies may take), and ``priority`` (an int, default 0: while tasks wait for a free
    engine, higher priorities leave the queue first, equal ones in submission order).
    Dependencies this client already knows to be met are left out of the request; one that can
    no longer be met fails the task at once with ImpossibleDependency, without sending it.
    """

    _flags = (
        "block",
        "targets",
        "time_limit",
        "retries",
        "after",
        "follow",
        "timeout",
        "priority",
    )

    def __init__(
        self,
        client: Client,
        targets: int | Sequence[int] | None = None,
        block: bool = False,
        retries: int = 0,
        after: Any = None,
        follow: Any = None,
        timeout: float | None = None,
        priority: int = 0,
    ) -> None:
        super().__init__(client, targets, block)
        self.retries = retries
        self.after = after
        self.follow = follow
        self.timeout = timeout
        self.priority = priority

    @property
    def priority(self) -> int:
        return self._priority

    @priority.setter
    def priority(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"priority must be an int, not {value!r}")
        self._priority = value

    @property
    def retries(self) -> int:
        return self._retries

    @retries.setter
    def retries(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"retries must be an int >= 0, not {value!r}")
        self._retries = value

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        if value is not None and not (isinstance(value, int | float) and value >= 0):
            raise ValueError(f"timeout must be None or seconds >= 0, not {value!r}")
        self._timeout = value

    # ------------------------------------------------------------------ submission

    def _task_metadata(self) -> dict[str, Any]:
        """Request metadata from the flags, dependencies pruned against what this client
        knows; raises ImpossibleDependency for one that can never be met."""
        targets = None
        if self.targets is not None:
            targets = {uuid for _, uuid in self.client.resolve_targets(self.targets)}
        metadata: dict[str, Any] = {}
        records = self.client._records
        after = prune_after(records, as_dependency(self.after))
        follow, targets = prune_follow(
            records, set(self.client._uuids), as_dependency(self.follow), targets
        )
        if after is not None:
            metadata["after"] = after.as_dict()
        if follow is not None:
            metadata["follow"] = follow.as_dict()
        if targets is not None:
            metadata["targets"] = sorted(targets)
        if self.retries:
            metadata["retries"] = self.retries
        if self.timeout is not None:
            metadata["timeout"] = self.timeout
        if self.priority:
            metadata["priority"] = self.priority
        metadata.update(self._limit())
        return metadata

    def _submit(self, calls: Iterable[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[str]:
        # every call is serialized before the first is sent: one that cannot be pickled fails
        # the whole call at the caller, and nothing is sent
        packed = [pack_apply_message(f, args, {}) for f, args in calls]
        try:
            metadata = self._task_metadata()
        except ImpossibleDependency as error:
            return [self.client.fail_request("apply_request", {}, error) for _ in packed]
        return [
            self.client.send_request(
                "task", "apply_request", {}, metadata=metadata, buffers=buffers
            )
            for buffers in packed
        ]

    def _apply(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, block: bool
    ) -> Any:
        buffers = pack_apply_message(f, args, kwargs)
        try:
            metadata = self._task_metadata()
        except ImpossibleDependency as error:
            msg_id = self.client.fail_request("apply_request", {}, error)
        else:
            msg_id = self.client.send_request(
                "task", "apply_request", {}, metadata=metadata, buffers=buffers
            )
        result = self._result([msg_id], _name(f), single=True)
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
    ) -> Any:
        values = [as_sequence(seq) for seq in sequences]
        common_length(values)
        chunks = [chunk(seq, chunksize or 1) for seq in values]
        msg_ids = self._submit((part_function, (f, *parts)) for parts in zip(*chunks, strict=True))
        result = self._map_result(msg_ids, _name(f), ordered)
        return result.get() if block else result

    def imap(
        self,
        f: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        max_outstanding: int | str = "auto",
    ) -> Iterator[Any]:
        """Lazily map ``f`` over (possibly endless) iterables, one task per element, keeping
        at most ``max_outstanding`` tasks in flight (``"auto"``: twice the engine count)."""
        limit = max(2, 2 * len(self.client)) if max_outstanding == "auto" else max_outstanding
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_outstanding must be 'auto' or an int >= 1, not {limit!r}")
        window: collections.deque[AsyncResult] = collections.deque()
        for args in zip(*iterables):  # noqa: B905 - stops at the shortest, like map
            window.append(self._result(self._submit([(f, args)]), _name(f), single=True))
            while len(window) >= limit:
                yield from _drain(window, ordered)
        while window:
            yield from _drain(window, ordered)


def _drain(window: collections.deque[AsyncResult], ordered: bool) -> Iterator[Any]:
    """Yield at least one finished result from the window (the oldest, if ``ordered``)."""
    if ordered:
        yield window.popleft().get()
        return
    done, _ = futures.wait(window, return_when=futures.FIRST_COMPLETED)
    for result in list(window):
        if result in done:
            window.remove(result)
            yield result.get()
