"""What the Hub core (:mod:`corral.controller.hub`) asks its shell to do, as values.

The Hub decides; its shell (:mod:`corral.controller.hub_shell`) sends the messages and applies
the store writes, in the order the Hub returned them. Writes being values keeps the core free of
I/O and lets a test replay exactly what a controller would write (:func:`apply_writes` is the one
place that turns them into store calls, for the shell and the tests alike). The store stays
injected into the Hub for reads: a query sees every write the shell applied before it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from corral.controller.store.base import MessageJSON, ResultStore
from corral.errors import StoreError
from corral.protocol.session import Frame

log = logging.getLogger("corral.hub")


@dataclass(frozen=True)
class Send:
    """A message for the shell to send: on the registration ROUTER (``idents`` first) or the
    notification PUB."""

    channel: str
    msg_type: str
    content: dict[str, Any]
    parent: dict[str, Any] | None = None
    idents: tuple[bytes, ...] = ()
    buffers: tuple[Frame, ...] = ()


@dataclass(frozen=True)
class Resubmit:
    """A recorded request to send again, signed by the Hub with the ``header`` given (the
    original's with a new msg_id and date): on the task queue through the scheduler, or on the
    MUX queue to the engine ``engine_uuid``. The replies come back to the Hub's own sockets
    and are dropped there: the Hub records them from the queues' copies, like any reply."""

    queue: str  # "task" or "mux"
    engine_uuid: str | None
    header: dict[str, Any]
    metadata: dict[str, Any]
    content: dict[str, Any]
    buffers: tuple[Frame, ...] = ()


@dataclass(frozen=True)
class Stop:
    """The Hub was asked to shut the controller down (after its reply is sent)."""


@dataclass(frozen=True, slots=True, init=False)
class AddRecord:
    """Record a task the Hub learnt of (a request's copy, or one an engine reported).

    Its ``__init__`` written out (as :class:`~corral.controller.scheduling_state.Task`'s): the
    Hub makes one or two of these per task, and a dataclass compiled by mypyc builds through
    the interpreted ``__init__`` that :mod:`dataclasses` writes (about 4,800 instructions
    each, and 2,800 more to free it, in the Hub's thread)."""

    msg_id: str
    record: dict[str, Any]
    #: The JSON frames, as received, of the message the record's header, metadata and content
    #: were decoded from (None: not known): a store that keeps JSON text may keep them as they
    #: came instead of encoding the dicts again (:meth:`ResultStore.add_decoded_record`).
    json_texts: MessageJSON | None

    def __init__(
        self, msg_id: str, record: dict[str, Any], json_texts: MessageJSON | None = None
    ) -> None:
        object.__setattr__(self, "msg_id", msg_id)
        object.__setattr__(self, "record", record)
        object.__setattr__(self, "json_texts", json_texts)


@dataclass(frozen=True, slots=True, init=False)
class UpdateRecord:
    """Merge fields into a task's record (destination, result, failure); its ``__init__``
    written out, as :class:`AddRecord`'s and why."""

    msg_id: str
    changes: dict[str, Any]
    #: As :attr:`AddRecord.json_texts`, for a reply's result fields in ``changes``.
    json_texts: MessageJSON | None

    def __init__(
        self, msg_id: str, changes: dict[str, Any], json_texts: MessageJSON | None = None
    ) -> None:
        object.__setattr__(self, "msg_id", msg_id)
        object.__setattr__(self, "changes", changes)
        object.__setattr__(self, "json_texts", json_texts)


@dataclass(frozen=True, slots=True)
class SetEngines:
    """Where tasks went: ``(msg_id, engine_uuid, engine_id)`` each, the engine fields of
    their records (a scheduler turn's ``task_dest`` copy names many: one write for them all,
    :meth:`ResultStore.set_engines <corral.controller.store.base.ResultStore.set_engines>`)."""

    destinations: tuple[tuple[str, str, int | None], ...]


@dataclass(frozen=True, slots=True)
class DropRecords:
    """Forget these tasks (a purge by msg_id)."""

    msg_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DropMatching:
    """Forget every task matching a query (a purge of everything, or of one engine's)."""

    query: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExpireResults:
    """Once per beat: let the store purge what outlived its time to live, then tell the Hub
    which msg_ids went (:meth:`Hub.forget_purged`), so its tables stay as bounded as the store."""


@dataclass(frozen=True, slots=True)
class ForgetSegments:
    """Remove the Hub's links to these shared-memory segments (``refs``: a request's ``shm``
    references, as they came): the copy that would have released them will never come (its
    engine died first, and its client reported the task lost). A link the Hub maps is left to
    its mapping (:meth:`corral.shmread.SegmentReading.forget_named`)."""

    refs: list[Any]


StoreWrite: TypeAlias = (
    AddRecord | UpdateRecord | SetEngines | DropRecords | DropMatching | ExpireResults
)
Action: TypeAlias = Send | Resubmit | Stop | ForgetSegments | StoreWrite
Message: TypeAlias = Send | Resubmit | Stop | ForgetSegments


def apply_record_write(store: ResultStore, action: Action) -> bool:
    """Apply ``action`` if it is a record's write (:class:`AddRecord`, :class:`UpdateRecord`),
    as :func:`apply_writes` does; False for any other action, left alone. Nearly every copy
    the Hub reads makes exactly one such write: its shell applies it so, without
    :func:`apply_writes`' list and dispatch (about 1 us per task of the Hub's thread)."""
    if isinstance(action, (AddRecord, UpdateRecord)):
        _write_record(store, action)
        return True
    return False


def _write_record(store: ResultStore, action: AddRecord | UpdateRecord) -> None:
    """A record's write; one the store refuses is logged and costs itself."""
    try:
        if isinstance(action, AddRecord):
            if action.json_texts is None:
                store.add_record(action.msg_id, action.record)
            else:
                store.add_decoded_record(action.msg_id, action.record, action.json_texts)
        elif action.json_texts is None:
            store.update_record(action.msg_id, action.changes)
        else:
            store.update_decoded_record(action.msg_id, action.changes, action.json_texts)
    except StoreError as err:
        log.error("hub: result store: %s failed: %s", type(action).__name__, err)


def apply_writes(
    store: ResultStore,
    actions: Iterable[Action],
    forget_purged: Callable[[list[str]], None],
) -> list[Message]:
    """Apply the store writes among ``actions`` in order; return the rest (what to send).

    A write the store refuses is logged and costs that write only, as a message that cannot be
    handled costs that message only; a failing purge never stops the heartbeat.
    """
    messages: list[Message] = []
    for action in actions:
        if isinstance(action, (AddRecord, UpdateRecord)):
            _write_record(store, action)
            continue
        try:
            if isinstance(action, SetEngines):
                store.set_engines(action.destinations)
            elif isinstance(action, DropRecords):
                store.drop_records(list(action.msg_ids))
            elif isinstance(action, DropMatching):
                store.drop_matching_records(action.query)
            elif isinstance(action, ExpireResults):
                forget_purged(store.expire_results())
            else:
                messages.append(action)
        except StoreError as err:
            log.error("hub: result store: %s failed: %s", type(action).__name__, err)
    return messages
