"""What a controller restart (``--restore``) means to the Hub (part of the Hub core).

A restored Hub re-marks the tasks its store still has pending: engines that survived may still
answer them, and an engine that registers again names the tasks it holds (``tasks`` in its
``registration_request``). After ``2 * max_misses`` beats, every restored task no engine named
can never be answered and is failed; a load-balanced one that never ran, or has retries left, is
marked so its client may send it again (:data:`~corral.protocol.messages.RESENDABLE`). All of it
returns store writes for the shell to apply, like the rest of the core.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from corral.controller.hub_actions import Action, AddRecord, UpdateRecord
from corral.controller.hub_gone import await_engine
from corral.controller.hub_queries import MAX_QUERY_IDS
from corral.controller.hub_records import iso_date
from corral.errors import EngineError, InvalidContent, error_content
from corral.protocol.messages import RESENDABLE

if TYPE_CHECKING:
    from corral.controller.hub import Hub

log = logging.getLogger("corral.hub")


def restore(hub: Hub) -> None:
    """After a restart: tasks the store still has pending may yet be answered by engines
    that survived, so their replies must be recorded when they come."""
    keys = ["engine_uuid", "engine_id", "queue", "metadata"]
    engines: dict[str, int | None] = {}
    for record in hub.store.find_records({"status": "pending"}, keys):
        engine_uuid = record.get("engine_uuid")
        hub.pending[record["msg_id"]] = engine_uuid
        if isinstance(engine_uuid, str) and engine_uuid:
            engine_id = record.get("engine_id")
            engines[engine_uuid] = engine_id if isinstance(engine_id, int) else None
        if record.get("queue") == "task":
            retries = (record.get("metadata") or {}).get("retries")
            hub.balanced[record["msg_id"]] = retries if isinstance(retries, int) else 0
    hub.restored = dict(hub.pending)
    hub.restored_until_beat = hub.hearts.beat + 2 * hub.hearts.max_misses
    # an engine of those tasks that does not come back within the window is gone: its
    # clients must hear so, to stop using its direct address (hub_gone.settle_awaited)
    for engine_uuid, engine_id in engines.items():
        await_engine(hub, engine_uuid, None, engine_id, hub.restored_until_beat)
    # new engines get ids above every id in the stored records
    records = hub.store.find_records({"engine_id": {"$ne": None}}, ["engine_id"])
    ids = [r["engine_id"] for r in records if isinstance(r.get("engine_id"), int)]
    hub.next_id = max([hub.next_id, *(engine_id + 1 for engine_id in ids)])


def settle_restored(hub: Hub, now: float) -> list[Action]:
    """Tasks pending before the restart whose engine did not come back in time (or that
    waited in the old scheduler, which is gone) can never be answered: fail them, so that
    no client waits for them for ever."""
    date = iso_date(now)
    writes: list[Action] = []
    for msg_id, engine_uuid in hub.restored.items():
        if msg_id not in hub.pending or msg_id in hub.reported:
            continue
        del hub.pending[msg_id]
        if engine_uuid and engine_uuid not in hub.by_uuid:
            # its client may have the answer (a direct reply comes straight from the engine,
            # also while the controller is down) and report it once the engine's end is
            # announced: the answer then replaces this failure (GoneEngines.take_answer)
            hub.gone.failed(msg_id, engine_uuid)
        if engine_uuid in hub.by_uuid:
            where = f"its engine {engine_uuid} came back without it: it never reached it"
        elif engine_uuid:
            where = f"its engine {engine_uuid} did not come back"
        else:
            where = "it waited in the task scheduler, which restarted empty"
        content = error_content(
            EngineError("EngineError", f"lost in a controller restart: {where}"), None, None
        )
        # a load-balanced task that never reached an engine, or may be retried: the client
        # that still holds the request sends it again (see corral.client.recovery)
        never_ran = engine_uuid is None or engine_uuid in hub.by_uuid
        resendable = lost_balanced(hub, msg_id, never_ran)
        changes = {
            "status": "error",
            "result_content": content,
            "completed": date,
            "result_metadata": {
                "status": "error",
                "engine_uuid": engine_uuid,
                **({RESENDABLE: True} if resendable else {}),
            },
        }
        writes.append(UpdateRecord(msg_id, changes))
        log.warning("hub: task %s %s", msg_id, f"lost in the restart: {where}")
    hub.restored = {}
    hub.reported.clear()
    return writes


def lost_balanced(hub: Hub, msg_id: str, never_ran: bool) -> bool:
    """Whether a restored task, now failed, is load-balanced and may be sent again: it
    never reached an engine, or its ``retries`` allow another attempt."""
    retries = hub.balanced.pop(msg_id, None)
    if retries is None or not (never_ran or retries > 0):
        return False
    hub.resendable.add(msg_id)
    return True


def expect_answers(hub: Hub, uuid: str, msg_ids: Any, balanced: Any = None) -> list[Action]:
    """An engine back after a restart holds these tasks or sends their replies again:
    the replies must be recorded, also of tasks this controller never saw recorded.
    ``balanced``: those it holds that came load-balanced, with their ``retries``: one this
    controller has no pending record of is marked so, and if the engine dies holding it its
    client may send it again (:func:`lost_balanced`), as for a restored one."""
    if not isinstance(msg_ids, list) or not all(isinstance(m, str) for m in msg_ids):
        raise InvalidContent("tasks must be a list of msg_ids")
    if balanced is None:
        balanced = {}
    if not isinstance(balanced, dict) or not all(
        isinstance(m, str) and type(r) is int and r >= 0 for m, r in balanced.items()
    ):
        raise InvalidContent("balanced must map msg_ids to their retries (integers >= 0)")
    msg_ids = msg_ids[:MAX_QUERY_IDS]
    known = hub.store.recorded_or_purged([m for m in msg_ids if m not in hub.pending])
    hub.expected_from[uuid] = msg_ids
    writes: list[Action] = []
    for msg_id in msg_ids:
        if msg_id in hub.pending:
            hub.pending[msg_id] = uuid
            hub.reported.add(msg_id)
        elif msg_id not in known:
            hub.pending[msg_id] = uuid
            hub.reported.add(msg_id)
            retries = balanced.get(msg_id)
            if retries is not None:
                hub.balanced.setdefault(msg_id, retries)
            record = {
                "msg_id": msg_id,
                "header": {"msg_id": msg_id},
                "metadata": {} if retries is None else {"retries": retries},
                "content": {},
                "queue": None if retries is None else "task",
                "client_uuid": None,
                "engine_uuid": uuid,
                "engine_id": None,
                "submitted": None,
                "status": "pending",
                "started": None,
                "completed": None,
                "received": None,
                "resubmitted": False,
            }
            writes.append(AddRecord(msg_id, record))
    return writes
