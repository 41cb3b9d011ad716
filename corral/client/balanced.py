"""LoadBalancedView: tasks the task scheduler places on whichever engine is free.

What is particular to it lives here: its flags (``retries``, ``after``, ``follow``,
``timeout``, ``priority``), the request metadata they become (dependencies pruned against what
the client already knows, see :mod:`corral.client.dependencies`), chunked maps and the lazy
``imap``. Submission, flags and results common to every view are in :mod:`corral.client.view`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from corral.client.deferred import direct_pending, submit_when_done
from corral.client.dependencies import as_dependency, prune_after, prune_follow
from corral.client.lazymap import LazyMap
from corral.client.mapping import chunk, default_chunksize
from corral.client.remote import results_per_part
from corral.client.view import View, cut_to_shortest, function_name
from corral.errors import ImpossibleDependency
from corral.protocol.serialize import pack_apply_message

if TYPE_CHECKING:
    from corral.client.submitter import Submitter, Targets

__all__ = ["LoadBalancedView"]


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

    _flags = (*View._flags, "retries", "after", "follow", "timeout", "priority")

    def __init__(
        self,
        client: Submitter,
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

    def __len__(self) -> int:
        if self.targets is None:
            return len(self.client.ids)
        return len(self.client.resolve_targets(self.targets))

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

    def _status_targets(self, targets: Targets) -> Targets:
        return targets if targets is not None else self.targets

    # ------------------------------------------------------------------ submission

    def _flag_snapshot(self) -> dict[str, Any]:
        """The flags a task's metadata is made of, as they are now (a held task is sent
        later, with the flags of its submission)."""
        return {
            "targets": self.targets,
            "label": self.label,
            "after": self.after,
            "follow": self.follow,
            "retries": self._retries,
            "timeout": self._timeout,
            "priority": self._priority,
            "time_limit": self._time_limit,
        }

    def _flagged(self) -> bool:
        """Whether any flag puts something in a task's metadata (False: it is empty, as
        :meth:`_task_metadata` makes it, without the snapshot, for nearly every task)."""
        return not (
            self.targets is None
            and not self.label
            and self.after is None
            and self.follow is None
            and not self._retries
            and self._timeout is None
            and not self._priority
            and self._time_limit is None
        )

    def _task_metadata(self, flags: dict[str, Any]) -> dict[str, Any]:
        """Request metadata from the ``flags`` (a snapshot), dependencies pruned against what
        this client knows; raises ImpossibleDependency for one that can never be met."""
        targets = None
        if flags["targets"] is not None:
            targets = {uuid for _, uuid in self.client.resolve_targets(flags["targets"])}
        metadata = {"label": flags["label"]} if flags["label"] else {}
        after = follow = None
        if flags["after"] is not None:
            after = prune_after(self.client.records, as_dependency(flags["after"]))
        if flags["follow"] is not None:
            follow, targets = prune_follow(
                self.client.records,
                self.client.engine_uuids(),
                as_dependency(flags["follow"]),
                targets,
            )
        if after is not None:
            metadata["after"] = after.as_dict()
        if follow is not None:
            metadata["follow"] = follow.as_dict()
        if targets is not None:
            metadata["targets"] = sorted(targets)
        if flags["retries"]:
            metadata["retries"] = flags["retries"]
        if flags["timeout"] is not None:
            metadata["timeout"] = flags["timeout"]
        if flags["priority"]:
            metadata["priority"] = flags["priority"]
        if flags["time_limit"] is not None:
            metadata["time_limit"] = flags["time_limit"]
        return metadata

    def _submit(self, packed: list[list[Any]]) -> list[str]:
        flags = self._flag_snapshot()
        waits = []
        if self.after is not None or self.follow is not None:
            named = frozenset().union(
                *(dep.msg_ids for dep in map(as_dependency, (self.after, self.follow)) if dep)
            )
            waits = direct_pending(self.client, named)
        if waits:  # held here until those direct tasks answer (see corral.client.deferred)
            return submit_when_done(
                self.client, packed, waits, lambda: self._task_metadata(flags), self.track
            )
        try:
            metadata = self._task_metadata(flags)
        except ImpossibleDependency as error:
            return [self.client.fail_request("apply_request", {}, error) for _ in packed]
        return [
            self.client.send_request(
                "task",
                "apply_request",
                {},
                metadata=metadata,
                buffers=buffers,
                track=self.track,
            )
            for buffers in packed
        ]

    def _apply(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, block: bool
    ) -> Any:
        buffers = pack_apply_message(f, args, kwargs)
        if self.track or self.after is not None or self.follow is not None:
            (msg_id,) = self._submit([buffers])  # may be held, or failed without a send
            result = self._result([msg_id], function_name(f), single=True)
        else:  # the usual task: its AsyncResult built before it is sent
            metadata = self._task_metadata(self._flag_snapshot()) if self._flagged() else {}
            result = self._apply_one("task", metadata, buffers, None, function_name(f), True)
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
        values = cut_to_shortest(sequences)
        if not chunksize:
            # with return_exceptions every item must fail alone: one task per item
            items = len(values[0])
            chunksize = 1 if return_exceptions else default_chunksize(items, len(self))
        chunks = [chunk(seq, chunksize) for seq in values]
        # every call is serialized before the first is sent: one that cannot be pickled fails
        # the whole call at the caller, and nothing is sent
        packed = [
            pack_apply_message(part_function, (f, *parts), {})
            for parts in zip(*chunks, strict=True)
        ]
        counts = [
            results_per_part(part_function, len(parts[0])) for parts in zip(*chunks, strict=True)
        ]
        msg_ids = self._submit(packed)
        result = self._map_result(msg_ids, function_name(f), ordered, counts, return_exceptions)
        return result.get() if block else result

    def imap(
        self,
        f: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        max_outstanding: int | str = "auto",
        return_exceptions: bool = False,
    ) -> LazyMap:
        """Lazily map ``f`` over (possibly endless) iterables, one task per element,
        keeping at most ``max_outstanding`` in flight (``"auto"``: twice the engine count).
        The iterator's ``cancel()`` stops submitting."""
        limit = max(2, 2 * len(self)) if max_outstanding == "auto" else max_outstanding
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_outstanding must be 'auto' or an int >= 1, not {limit!r}")
        return LazyMap(
            lambda args: self._apply(f, args, {}, block=False),
            iterables,
            limit,
            ordered,
            return_exceptions,
        )

    def shutdown(
        self,
        targets: Targets = None,
        restart: bool = False,
        hub: bool = False,
        block: bool | None = None,
    ) -> None:
        """Stop the engines this view may use (``targets``, else the view's, else all), and
        the controller too with ``hub=True``."""
        chosen = targets if targets is not None else self.targets
        self.client.shutdown(
            "all" if chosen is None else chosen, restart=restart, hub=hub, block=block
        )
