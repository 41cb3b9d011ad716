"""The answered requests a client's records forgot, kept per engine for the report of that
engine's end (part of :class:`~corral.client.records.Records`).

``rc[0].apply_async(f).get()`` keeps no AsyncResult: the records forget the task as soon as
its value is read. The engine that answered sends the Hub its own copy of each reply; if it
dies before the Hub read them (the copies queued on its PUSH, or a controller killed since),
only this client knows the task was answered, and its report of the engine's end
(:func:`corral.client.link.answered_by`) must name it: without this table such a task was
never recorded (bench/chaos_mixed.py seed 34). A load-balanced reply reaches the Hub through
the scheduler, but a controller killed before its Hub wrote it loses it too, and if the
engine dies before it sends it again to the restarted controller, again only the client
knows (seed 68): those are kept as well. Kept per engine, so that an engine that hung
(its copies unsent) until it was found dead keeps its latest answers however many the other
engines gave meanwhile; bounded per engine and in all. No locking: the records' lock guards it.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Final

from corral.client.metadata_table import ENGINE_UUID, UNANSWERED, compact_value

__all__ = [
    "ANSWERS_KEPT",
    "ANSWERS_KEPT_IN_ALL",
    "ForgottenAnswers",
    "answering_engine",
    "is_balanced",
]

#: How many answered requests (direct and load-balanced) of each engine are kept (some 200
#: bytes each: the metadata entry the records held until then) ...
ANSWERS_KEPT: Final = 10_000
#: ... and of every engine together (the engines that answered longest ago lose theirs
#: first: ended engines whose end this client never heard of, say).
ANSWERS_KEPT_IN_ALL: Final = 100_000


class ForgottenAnswers:
    """engine uuid -> {msg_id: metadata entry}, the engines in the order they last answered.
    ``per_engine`` and ``in_all``: the bounds (tests lower them)."""

    def __init__(self, per_engine: int = ANSWERS_KEPT, in_all: int = ANSWERS_KEPT_IN_ALL) -> None:
        self.per_engine = per_engine
        self.in_all = in_all
        self._engines: dict[str, dict[str, Any]] = {}
        self._count = 0  # entries in all
        self._touched: dict[str, dict[str, Any]] = {}  # by the forget under way
        self._added = 0

    def add(self, msg_id: str, engine_uuid: str, entry: Any) -> None:
        """One forgotten answer of ``engine_uuid``; :meth:`bound` once the batch is added."""
        answers = self._touched.get(engine_uuid)
        if answers is None:  # moved last: the engines in the order they answered
            answers = self._touched[engine_uuid] = self._engines.pop(engine_uuid, {})
            self._engines[engine_uuid] = answers
        answers[msg_id] = entry
        self._added += 1

    def bound(self) -> None:
        """After a batch of :meth:`add`: keep the newest ``per_engine`` of each engine it
        touched, and ``in_all`` in all, the engines that answered longest ago losing theirs."""
        if not self._touched:
            return
        engines, kept = self._engines, self.per_engine
        total = self._count + self._added
        for answers in self._touched.values():
            excess = len(answers) - kept
            if excess > 0:
                for msg_id in list(islice(answers, excess)):
                    del answers[msg_id]
                total -= excess
        while total > self.in_all and len(engines) > 1:
            total -= len(engines.pop(next(iter(engines))))
        self._count, self._added = total, 0
        self._touched.clear()

    def of(self, engine_uuid: str) -> list[tuple[str, Any]]:
        """``(msg_id, metadata entry)`` of the engine's forgotten answers, oldest first."""
        return list(self._engines.get(engine_uuid, {}).items())

    def engines(self) -> list[str]:
        """The engines with forgotten answers kept."""
        return list(self._engines)

    def drop(self, engine_uuid: str) -> None:
        """The engine's end was reported: its answers need not be kept."""
        self._count -= len(self._engines.pop(engine_uuid, {}))

    def __len__(self) -> int:
        return self._count


def answering_engine(entry: Any) -> str | None:
    """The engine that answered a metadata entry's request, None if it has no answer: a
    compact entry names a direct request's engine from the request on, a load-balanced one's
    from its reply (:func:`is_balanced`); a full one (rare: read whole, or an unusual reply)
    when it names an engine and a completion."""
    if type(entry) is tuple:
        if len(entry) <= UNANSWERED:
            return None
        engine = entry[ENGINE_UUID]
        if engine is None:  # load-balanced: the engine its reply named
            engine = compact_value(entry, "engine_uuid", None)
        return engine if isinstance(engine, str) else None
    engine = entry.get("engine_uuid")
    return engine if isinstance(engine, str) and entry.get("completed") is not None else None


def is_balanced(entry: Any) -> bool:
    """Whether a metadata entry is a load-balanced request's: a compact entry knows (no
    engine named at the request); a full one is taken for a direct one."""
    return type(entry) is tuple and entry[ENGINE_UUID] is None
